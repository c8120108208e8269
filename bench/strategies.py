"""Flower's strategies on hard non-IID data, paired by seed against FedAvg on the same partitions.

    .venv/bin/python bench/strategies.py [--data ../shared/data/eurosat] [--protocol alpha0.1]
        [--seeds 42,43,44] [--only fedavg,fedprox,...] [--set 'k=v ...'] [--out DIR]

Protocols (each in its own folder):
- `alpha0.1` (default): Dirichlet alpha 0.1 over 10 clients, every client every round, 1 local
  epoch, 20 rounds;
- `alpha0.3x100`: Dirichlet alpha 0.3 over 100 clients, 10 a round, 1 local epoch, 100 rounds.
Each row is a real `python -m eurosat.launch` run, no time limit (load does not change a result),
the rest from pyproject.toml; `--set` wins over the protocol. Rows (the default set is fedavg,
scaffold, fedprox, fedadam, fedavgm; any with --only): `fedavg`; `fedprox` (proximal-mu 0.01);
`fedprox-mu0.1`; `fedadam` (server-lr 0.01, tau 0.001, the values of Reddi et al. for CNNs);
`fedyogi`, `fedadagrad` (the same); `fedavgm` (server-lr 0.1, server-momentum 0.9: an effective
server rate of 1, Hsu et al.); `scaffold` (SCAFFOLD's control variates, eurosat/fl/scaffold.py);
`fedavg-balanced` (FedAvg, each client training with balanced softmax: `local-loss`).
The seed decides the partitions, the initial model and the batch order, so a row and FedAvg of one
seed train on the same partitions; each row's final accuracy (whole test split) is paired by seed
with FedAvg's and given a Student-t 95 % interval.

After every run the folder gets `strategies.json` (results; each run's provenance: commit, SHA-256
of the code, machine, resolved config, model digest; its learning curve), `strategies.csv`,
`strategies.png` (each row over the seeds) and `strategies_curves.png` (test accuracy against
megabytes sent and against round, mean and range over the seeds that every row has). An
interrupted benchmark resumes where it stopped; a folder of other code or protocol is refused, and
a seed left unfinished on another machine runs again here (bench/ledger.py). `--redraw` writes the
table and figures again from the folder's ledger alone, at any code, and runs nothing (curves of
runs made before the ledger kept them are read from their run folders where those still exist).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_parser, make_slice  # noqa: E402
from bench.ledger import (ProvenanceError, chosen_rows, curve_groups, fill_curves, format_paired,  # noqa: E402
                          launch_run, open_state, paired_rows, provenance_of, run_benchmark, run_curve, seeds_label,
                          seed_figure, write_csv)
from eurosat.common.cli import fail  # noqa: E402
from eurosat.common.files import read_json, write_json  # noqa: E402
from eurosat.fl.config import override_pairs  # noqa: E402
from eurosat.report.plots import curves_figure, save  # noqa: E402

NAME = "strategies"
PROTOCOLS = {
    "alpha0.1": ("partitioner='dirichlet' dirichlet-alpha=0.1 num-supernodes=10 fraction-train=1.0 local-epochs=1", 20),
    "alpha0.3x100": ("partitioner='dirichlet' dirichlet-alpha=0.3 num-supernodes=100 fraction-train=0.1 "
                     "local-epochs=1", 100),
}
ROWS = {
    "fedavg": "strategy='fedavg'",
    "fedprox": "strategy='fedprox' proximal-mu=0.01",
    "fedprox-mu0.1": "strategy='fedprox' proximal-mu=0.1",
    "fedadam": "strategy='fedadam' server-lr=0.01 tau=0.001",
    "fedyogi": "strategy='fedyogi' server-lr=0.01 tau=0.001",
    "fedadagrad": "strategy='fedadagrad' server-lr=0.01 tau=0.001",
    "fedavgm": "strategy='fedavgm' server-lr=0.1 server-momentum=0.9",
    "scaffold": "strategy='scaffold'",
    "fedavg-balanced": "strategy='fedavg' local-loss='balanced'",
}
DEFAULT = ["fedavg", "scaffold", "fedprox", "fedadam", "fedavgm"]


def row_keys(name: str) -> set[str]:
    """The keys a row may differ from FedAvg in and still be paired with it."""
    return {key for key, _ in override_pairs(ROWS[name])} | {"strategy", "server-lr"}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--protocol", default="alpha0.1", choices=sorted(PROTOCOLS), help="which setting [alpha0.1]")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds [42,43,44]")
    parser.add_argument("--only", help=f"comma-separated rows [{','.join(DEFAULT)}]; all: {', '.join(ROWS)}")
    parser.add_argument("--set", default="", help="run-config overrides for every run (part of the protocol)")
    parser.add_argument("--out", type=Path, help="results folder [outputs/bench/strategies-PROTOCOL]")
    parser.add_argument("--redraw", action="store_true",
                        help="write the table and figures again from the folder's ledger; run nothing")
    args = parser.parse_args(argv)
    try:
        seeds, names = chosen_rows(args, ROWS, DEFAULT, "fedavg")
    except ValueError as exc:
        return fail(str(exc))
    recipe, rounds = PROTOCOLS[args.protocol]
    out = args.out or ROOT / "outputs" / "bench" / f"{NAME}-{args.protocol}"
    state_path = out / f"{NAME}.json"
    protocol = {"protocol": args.protocol, "recipe": recipe, "rounds": rounds, "set": args.set,
                "data": str(args.data.resolve())}
    if args.redraw:
        if not state_path.is_file():
            return fail(f"--redraw: {state_path}: no ledger there")
        state = read_json(state_path)
        if state.get("protocol", {}).get("protocol") != args.protocol:
            return fail(f"--redraw: {state_path} holds protocol {state.get('protocol', {}).get('protocol')!r}, "
                        f"not {args.protocol!r}; pass --protocol")
    else:
        out.mkdir(parents=True, exist_ok=True)
        try:
            state = open_state(state_path, protocol)
        except ProvenanceError as exc:
            return fail(str(exc))

    def title() -> str:
        return f"{args.protocol}: {rounds} rounds; mean +- std over seeds {seeds_label(state['results'], seeds)}"

    def persist() -> list[dict]:
        rows = paired_rows(state["results"], seeds, state["provenance"], row_keys, "fedavg")
        state["summary"] = rows
        write_json(state_path, state)
        write_csv(out / f"{NAME}.csv", rows, ["row", "seeds", "mean", "std", "diff", "diff_low", "diff_high", "real"])
        save(seed_figure(rows, title()), out / f"{NAME}.png", 300)
        groups, common = curve_groups(state, [r["row"] for r in rows], seeds)
        if groups:
            curves_title = f"{args.protocol}: test accuracy; the seeds every row has: {', '.join(map(str, common))}"
            save(curves_figure(groups, "cumulative_mb", "data transmitted (MB)", curves_title), out / f"{NAME}_curves.png", 300)
        return rows

    def run_one(name: str, seed: int) -> float:
        overrides = [f"num-server-rounds={rounds} time-limit-min=0 data='{data}' seed={seed} "
                     f"output-dir='{out / 'runs'}' {recipe}", *[o for o in (ROWS[name], args.set) if o]]
        run_dir, metrics = launch_run(f"{name}@{seed}", overrides)
        state["runs"][f"{name}@{seed}"] = str(run_dir)
        state.setdefault("curves", {})[f"{name}@{seed}"] = run_curve(metrics)
        state["provenance"][f"{name}@{seed}"] = provenance_of(state, run_dir, metrics)
        return 100 * metrics["summary"]["final_test_accuracy"]

    def report(rows: list[dict]) -> str:
        return f"\n# {title()}\n\n{format_paired(rows, 'fedavg')}\n\nwrote {state_path}, .csv and .png"

    if args.redraw:
        missing = fill_curves(state)
        print(report(persist()) + (f"\nno curve for {', '.join(missing)} (run folders gone)" if missing else ""))
        return 0
    data = make_slice(args.data.resolve(), out / "data", 1.0)
    return run_benchmark(state, names, seeds, run_one, persist, lambda accuracy: f"{accuracy:.2f} %", report)


if __name__ == "__main__":
    sys.exit(main())
