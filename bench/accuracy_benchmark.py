"""Accuracy of every precision against FP32, with error bars: >= 3 seeds, paired by seed.

    .venv/bin/python bench/accuracy_benchmark.py [--data ../shared/data/eurosat] [--seeds 42,43,44]
        [--rounds 60] [--fraction 1.0] [--only fp32,tx-int8,...] [--skip fp16] [--set 'k=v ...'] [--out DIR]

Each row is a real `python -m eurosat.launch` run (10 clients, the recipe from pyproject.toml with
the benchmark's own `RECIPE` on top: one client a round training one local epoch without
augmentation, so 60 rounds are 6 epochs of the train split; no time limit; `--set` wins over both)
on a stratified `--fraction` of the real train split, evaluated on the whole real test split; `ptq-int8` is the fp32 run's model quantized to
real INT8 (compare_quantizations). Every row runs once per seed; the same seed means the same
partition, initial model and batch order, so each row's difference to FP32 is taken seed by seed
and given a Student-t 95% interval. A difference is real only when its interval excludes 0.

Writes `accuracy_benchmark.json`, `.csv` and `accuracy_benchmark.png` (mean and every seed per row)
into --out, after every run, so an interrupted benchmark resumes where it stopped: a (row, seed)
whose run completed is not run again. Every run records its provenance (commit, a SHA-256 of the
code, the resolved run config, the final model's SHA-256, the machine); a folder holds the runs of
one code only (resuming with other code is refused), and a row is paired with fp32 only where the
two runs' configs differ in nothing but the row's own keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eurosat.report.compare import CompareOptions, compare  # noqa: E402
from eurosat.common.files import write_json  # noqa: E402
from eurosat.report.plots import save  # noqa: E402
from bench.common import bench_parser, make_slice  # noqa: E402
from bench.ledger import (ProvenanceError, chosen_rows, launch_run, open_state, paired_rows,  # noqa: E402
                          provenance_of, run_benchmark, seeds_label, seed_figure, write_csv)
from eurosat.fl.config import override_pairs  # noqa: E402
from eurosat.common.cli import fail  # noqa: E402

ROWS = {
    "fp32": "",
    "tx-fp16": 'transport="fp16"',
    "tx-int8": 'transport="int8"',
    "tx-int4": 'transport="int4"',
    "tx-int4-ef": 'transport="int4" transport-error-feedback=true',
    "qat-int8": 'precision="int8"',
    "qat-w4": "weight-bits=4",
    "fp16": 'precision="fp16"',
    "ptq-int8": None,  # the fp32 run's model, quantized after training
}
NAME = "accuracy_benchmark"
# The protocol's own recipe, fixed so that its figures stay comparable when the project's defaults
# move: many short rounds (60 rounds are 6 epochs), where every row sees the same client order.
RECIPE = "local-epochs=1 augment='none'"


def row_keys(name: str) -> set[str]:
    return {key for key, _ in override_pairs(ROWS[name])} if ROWS.get(name) else set()


def summarize(results: dict[str, dict[str, float]], seeds: list[int],
              provenance: dict[str, dict] | None = None) -> list[dict]:
    """Per row: mean, std, and the difference to fp32 paired by seed (seeds both rows have, whose
    runs are pairable: see `ledger.check_pairable`; `ptq-int8` is fp32's own model, always paired)."""
    provenance = {k: v for k, v in (provenance or {}).items() if not k.startswith("ptq-int8@")}
    rows = paired_rows(results, seeds, provenance, row_keys, "fp32")
    for row in rows:
        if "diff" in row:
            row["diff_vs_fp32"] = row.pop("diff")
    return rows


def format_rows(rows: list[dict]) -> str:
    out = [f"{'row':<12}{'seeds':>6}{'accuracy % (mean +- std)':>27}{'vs fp32, paired (95% interval)':>34}  real?"]
    for r in rows:
        diff = (f"{r['diff_vs_fp32']:+.2f} [{r['diff_low']:+.2f}, {r['diff_high']:+.2f}]"
                if "diff_vs_fp32" in r else "")
        real = ("yes" if r["real"] else "no (interval includes 0)") if "real" in r else ""
        out.append(f"{r['row']:<12}{r['seeds']:>6}{r['mean']:>18.2f} +- {r['std']:<5.2f}{diff:>34}  {real}")
    return "\n".join(out)




def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds [42,43,44]")
    parser.add_argument("--rounds", type=int, default=60,
                        help="rounds per run [60: 6 epochs of the benchmark recipe, one client and one epoch a round; fp32 near 88 %%]")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of the train split [1.0]")
    parser.add_argument("--only", help="comma-separated rows [all]: " + ", ".join(ROWS))
    parser.add_argument("--skip", default="", help="comma-separated rows to leave out")
    parser.add_argument("--set", default="", help="run-config overrides for every run, e.g. 'local-epochs=1'")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / NAME, help="results folder [%(default)s]")
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1:
        return fail(f"--fraction {args.fraction}: outside (0, 1]")
    try:
        seeds, names = chosen_rows(args, ROWS, list(ROWS), "fp32")
    except ValueError as exc:
        return fail(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / f"{NAME}.json"
    protocol = {"rounds": args.rounds, "fraction": args.fraction, "set": args.set, "clients": 10,
                "data": str(args.data.resolve()), "recipe": RECIPE}
    try:
        state = open_state(state_path, protocol)
    except ProvenanceError as exc:
        return fail(str(exc))
    results: dict[str, dict[str, float]] = state["results"]
    runs: dict[str, str] = state["runs"]
    provenance: dict[str, dict] = state["provenance"]
    data = make_slice(args.data.resolve(), args.out / "data", args.fraction)

    def persist() -> list[dict]:
        rows = summarize(results, seeds, provenance)
        state["summary"] = rows
        write_json(state_path, state)
        write_csv(args.out / f"{NAME}.csv", rows, ["row", "seeds", "mean", "std", "diff_vs_fp32", "diff_low",
                                                   "diff_high", "real"])
        if rows:
            title = (f"{args.rounds} rounds, 10 clients, {args.fraction:.0%} of the train split; "
                     f"mean +- std over seeds {seeds_label(results, seeds)}")
            save(seed_figure(rows, title), args.out / f"{NAME}.png", 300)
        return rows

    def run_one(name: str, seed: int) -> float:
        key = f"{name}@{seed}"
        if name == "ptq-int8":  # the fp32 run's model, quantized after training
            fp32_dir = Path(runs[f"fp32@{seed}"])
            report = compare(fp32_dir / "final_model.pt",
                             CompareOptions(data=str(data), out_dir=fp32_dir / "ptq", precisions=("fp32", "int8")))
            runs[key] = str(fp32_dir / "ptq")
            return report["precisions"]["int8"]["accuracy"]
        extra = f"{args.set} {ROWS[name]}".strip()  # a later -c item wins over an earlier one
        run_dir, metrics = launch_run(key, [f"num-server-rounds={args.rounds} time-limit-min=0 data='{data}' "
                                            f"output-dir='{args.out / 'runs'}' seed={seed} {RECIPE}",
                                            *([extra] if extra else [])])
        runs[key] = str(run_dir)
        provenance[key] = provenance_of(state, run_dir, metrics)
        return 100 * metrics["summary"]["final_test_accuracy"]

    def report(rows: list[dict]) -> str:
        return (f"\n# {args.rounds} rounds, 10 clients, {args.fraction:.0%} of the train split, full test split, "
                f"seeds {seeds_label(results, seeds)}\n\n{format_rows(rows)}\n\nwrote {state_path}, .csv and .png")

    return run_benchmark(state, names, seeds, run_one, persist, lambda accuracy: f"{accuracy:.2f}%", report)


if __name__ == "__main__":
    sys.exit(main())
