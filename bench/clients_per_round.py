"""Accuracy against minutes for 1, 2, 5 and 10 clients a round, under the project's current recipe.

    .venv/bin/python bench/clients_per_round.py [--data ../shared/data/eurosat] [--clients 1,2,5,10]
        [--minutes 10] [--seed 42] [--set 'k=v ...'] [--out DIR]

Each setting is one real `python -m eurosat.launch` run of the default job (10 IID clients, the
defaults of pyproject.toml, `time-limit-min` minutes) with `fraction-train = clients / 10` and the
server evaluating every round, so that every round gives a point of accuracy against wall-clock
minutes. A timing figure: run it on a quiet machine, never beside another job; the settings run one
after another in one invocation so their curves are comparable with each other, not with other days.

Writes `clients_per_round.json` (each run's curve and provenance: commit, code SHA-256, resolved
config, machine) and `clients_per_round.png` into --out after every run; a rerun resumes, running
only the settings missing, and refuses a folder made by other code (its curves would not compare).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_parser, code_fingerprint, file_sha256, machine  # noqa: E402
from eurosat.common.cli import fail  # noqa: E402
from eurosat.common.files import read_json, write_json  # noqa: E402
from eurosat.launch.launcher import launch  # noqa: E402
from eurosat.report.plots import OKABE_ITO, save, styled, subplots  # noqa: E402

NAME = "clients_per_round"
NODES = 10


@styled
def figure(curves: dict[str, dict], title: str):
    fig, ax = subplots(figsize=(7.5, 4.5))
    for i, (clients, run) in enumerate(sorted(curves.items(), key=lambda kv: int(kv[0]))):
        points = [(r["elapsed_seconds"] / 60, 100 * r["server_test_accuracy"]) for r in run["rounds"]
                  if r.get("server_test_accuracy") is not None]
        label = f"{clients} client{'s' if clients != '1' else ''} a round: {points[-1][1]:.2f} % in {len(run['rounds'])} rounds"
        ax.plot(*zip(*points), marker="o", ms=3, color=OKABE_ITO[i % len(OKABE_ITO)], label=label)
    ax.set(xlabel="wall-clock minutes since the ServerApp started", ylabel="test accuracy (%)", title=title)
    ax.legend(loc="upper left")
    return fig


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--clients", default="1,2,5,10", help="clients a round, comma-separated [1,2,5,10]")
    parser.add_argument("--minutes", type=float, default=10.0, help="time-limit-min of every run [10]")
    parser.add_argument("--seed", type=int, default=42, help="run seed [42]")
    parser.add_argument("--set", default="", help="run-config overrides for every run")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / NAME, help="results folder [%(default)s]")
    args = parser.parse_args()
    try:
        settings = [int(c) for c in args.clients.split(",")]
    except ValueError:
        return fail(f"--clients: expected comma-separated integers, got {args.clients!r}")
    if not settings or any(not 1 <= c <= NODES for c in settings) or args.minutes <= 0:
        return fail(f"--clients must be in 1-{NODES} and --minutes > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / f"{NAME}.json"
    state = read_json(state_path) if state_path.exists() else {}
    code = code_fingerprint()
    protocol = {"minutes": args.minutes, "seed": args.seed, "set": args.set, "data": str(args.data.resolve())}
    if state.get("curves") and (state.get("code", {}).get("code_sha256") != code["code_sha256"]
                                or state.get("protocol") != protocol):
        return fail(f"{state_path} holds curves of {state.get('code', {}).get('commit')} with {state.get('protocol')}; "
                    "use another --out")
    state.update(protocol=protocol, code=state.get("code") or code)
    curves: dict[str, dict] = state.setdefault("curves", {})
    title = f"{args.minutes:g}-minute job, seed {args.seed}, {machine()['cpu']} ({state['code']['commit']})"
    for clients in settings:
        if str(clients) in curves:
            continue
        started = time.perf_counter()
        overrides = (f"time-limit-min={args.minutes} fraction-train={clients / NODES} server-eval-every=1 "
                     f"seed={args.seed} data='{args.data.resolve()}' output-dir='{args.out / 'runs'}'")
        code_, run_dir = launch([overrides, *([args.set] if args.set else [])])
        if code_ != 0:
            return fail(f"{clients} clients a round: run did not complete (exit {code_}); see {run_dir}")
        metrics = read_json(run_dir / "metrics.json")
        curves[str(clients)] = {
            "run_dir": str(run_dir), "date": time.strftime("%Y-%m-%d"), "machine": machine(),
            "config": metrics["config"], "final_model_sha256": file_sha256(run_dir / "final_model.pt"),
            "final_test_accuracy": metrics["summary"]["final_test_accuracy"],
            "rounds": [{k: r.get(k) for k in ("round", "elapsed_seconds", "server_test_accuracy", "clients")}
                       for r in metrics["rounds"]]}
        write_json(state_path, state)
        save(figure(curves, title), args.out / f"{NAME}.png", 300)
        print(f"== {clients} a round: {100 * curves[str(clients)]['final_test_accuracy']:.2f} % in "
              f"{len(metrics['rounds'])} rounds ({time.perf_counter() - started:.0f} s)", flush=True)
    for clients, run in sorted(curves.items(), key=lambda kv: int(kv[0])):
        print(f"{clients:>3} a round: {100 * run['final_test_accuracy']:6.2f} %  {len(run['rounds']):>3} rounds  {run['run_dir']}")
    print(f"wrote {state_path} and {NAME}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
