"""What one misbehaving client does to FedAvg, without and with the server's reply checks and robust aggregation.

    .venv/bin/python bench/poisoning.py [--data ../shared/data/eurosat] [--seeds 42,43,44]
        [--rounds 10] [--only clean,scaled-nochecks,...] [--set 'k=v ...'] [--out DIR]

Each row is a real `python -m eurosat.launch` run: 10 clients, every client every round, 1 local
epoch, `--rounds` rounds, no time limit (load does not change a result), `min-clients-fraction=0.8`;
`--set` wins over the protocol. In every row but `clean` the client of partition 3 misbehaves every
round through the test hook (`test-hook`, honoured because this script sets $EUROSAT_TEST_HOOKS=1):
`scaled` sends -10 x its true update, `noise` Gaussian noise of its update's norm, `examples` claims
10^9 examples (FedAvg's weight). `nochecks` rows run with the reply checks off (FedAvg as it was:
every reply believed); `trimmed` rows with the checks on and `aggregation="trimmed-mean"`
(Flower's FedTrimmedAvg, beta 0.2); `median` with the checks and Flower's FedMedian.

Each row's final accuracy (whole test split) is paired by seed with `clean` (same partitions, initial
model and batch order) and given a Student-t 95 % interval. After every run the folder gets
`poisoning.json` (results, each run's provenance: commit, SHA-256 of the code, machine, resolved
config, model digest, and what the server refused), `poisoning.csv` and `poisoning.png`. An
interrupted benchmark resumes where it stopped; a folder of other code, protocol or machine is refused.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_parser, make_slice  # noqa: E402
from bench.ledger import (ProvenanceError, chosen_rows, format_paired, launch_run, open_state,  # noqa: E402
                          paired_rows, provenance_of, run_benchmark, seeds_label, seed_figure, write_csv)
from eurosat.common.cli import fail  # noqa: E402
from eurosat.common.files import write_json  # noqa: E402
from eurosat.fl.config import override_pairs  # noqa: E402
from eurosat.fl.hooks import HOOKS_ENV  # noqa: E402
from eurosat.report.plots import save  # noqa: E402

ATTACKER = 3
ATTACKS = {"scaled": "scale=-10", "noise": "noise", "examples": "examples=1e9"}
DEFENCES = {"nochecks": "check-replies=false", "trimmed": "aggregation='trimmed-mean' trim-fraction=0.2",
            "median": "aggregation='median'"}
ROWS = {"clean": "", **{f"{a}-nochecks": f"test-hook='{h}@{ATTACKER}' {DEFENCES['nochecks']}" for a, h in ATTACKS.items()},
        **{f"{a}-trimmed": f"test-hook='{h}@{ATTACKER}' {DEFENCES['trimmed']}" for a, h in ATTACKS.items()},
        "scaled-median": f"test-hook='{ATTACKS['scaled']}@{ATTACKER}' {DEFENCES['median']}"}
NAME = "poisoning"
PROTOCOL_RECIPE = "num-supernodes=10 fraction-train=1.0 local-epochs=1 min-clients-fraction=0.8"


def row_keys(name: str) -> set[str]:
    return {key for key, _ in override_pairs(ROWS[name])} if ROWS.get(name) else set()


def refused(metrics: dict) -> dict[str, int]:
    """How often the server refused each partition's reply, by reason (its first words, numbers
    as N: "3: refused: update norm N above N x the round's median")."""
    counts: dict[str, int] = {}
    for record in metrics["rounds"]:
        for failure in record.get("client_failures", []):
            reason = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", failure["error"].split("(")[0].strip())[:60]
            key = f"{failure.get('partition')}: {reason}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds [42,43,44]")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per run [10]")
    parser.add_argument("--only", help="comma-separated rows [all]: " + ", ".join(ROWS))
    parser.add_argument("--set", default="", help="run-config overrides for every run, e.g. 'local-epochs=1'")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / NAME, help="results folder [%(default)s]")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        return fail("--rounds below 1")
    try:
        seeds, names = chosen_rows(args, ROWS, list(ROWS), "clean")
    except ValueError as exc:
        return fail(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / f"{NAME}.json"
    protocol = {"rounds": args.rounds, "set": args.set, "recipe": PROTOCOL_RECIPE, "attacker": ATTACKER,
                "data": str(args.data.resolve())}
    try:
        state = open_state(state_path, protocol)
    except ProvenanceError as exc:
        return fail(str(exc))
    results, runs, provenance = state["results"], state["runs"], state["provenance"]
    data = make_slice(args.data.resolve(), args.out / "data", 1.0)
    os.environ[HOOKS_ENV] = "1"  # the test hooks and check-replies=false are honoured in this process's runs only

    def persist() -> list[dict]:
        rows = paired_rows(results, seeds, provenance, row_keys, "clean")
        state["summary"] = rows
        write_json(state_path, state)
        write_csv(args.out / f"{NAME}.csv", rows, ["row", "seeds", "mean", "std", "diff", "diff_low", "diff_high", "real"])
        title = f"one attacker of 10 clients, {args.rounds} rounds; mean +- std over seeds {seeds_label(results, seeds)}"
        save(seed_figure(rows, title), args.out / f"{NAME}.png", 300)
        return rows

    def run_one(name: str, seed: int) -> float:
        overrides = [f"num-server-rounds={args.rounds} time-limit-min=0 data='{data}' seed={seed} "
                     f"output-dir='{args.out / 'runs'}' {PROTOCOL_RECIPE}", *[o for o in (args.set, ROWS[name]) if o]]
        run_dir, metrics = launch_run(f"{name}@{seed}", overrides, ok=(0, 3))  # 3: refused replies, as expected
        runs[f"{name}@{seed}"] = str(run_dir)
        provenance[f"{name}@{seed}"] = {**provenance_of(state, run_dir, metrics), "refused": refused(metrics)}
        return 100 * metrics["summary"]["final_test_accuracy"]

    def report(rows: list[dict]) -> str:
        return (f"\n# {args.rounds} rounds, 10 clients, partition {ATTACKER} attacking, seeds {seeds_label(results, seeds)}\n\n"
                f"{format_paired(rows, 'clean', 20)}\n\nwrote {state_path}, .csv and .png")

    return run_benchmark(state, names, seeds, run_one, persist, lambda accuracy: f"{accuracy:.2f}%", report)


if __name__ == "__main__":
    sys.exit(main())
