"""Quantized training, quantized transport and post-training quantization, side by side.

    .venv/bin/python bench/quantization_benchmarks.py [--data ../shared/data/eurosat] [--fraction 0.25] [--rounds 5]
        [--only fp32,tx-int4,...] [--set 'seed=43'] [--keep DIR]

Every run uses the same seed, rounds, 10 clients and a stratified `--fraction` slice of the
real train split (the whole real test split for evaluation), so they differ only in precision:
- transport: fp32, fp16, int8, int4 without and with error feedback: bytes per round and final accuracy;
- training: fp32 vs int8 QAT (W8A8) vs 4-bit weights (W4A32): accuracy, CPU time per step;
- PTQ: compare_quantizations on the fp32 run's model: INT8 size ratio, accuracy drop, speed;
- fp32 again with another seed: how far accuracy moves with the seed alone, the yardstick for
  the accuracy differences above.
Prints each ratio against its target. Runs go to a temporary folder unless --keep DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import make_slice  # noqa: E402
from eurosat.report.compare import CompareOptions, compare, format_table  # noqa: E402
from eurosat.launch.launcher import Resources, launch  # noqa: E402

RUNS = {
    "fp32": "",
    "fp32-seed43": "seed=43",  # not a precision: the run-to-run spread the other differences sit in
    "tx-fp16": 'transport="fp16"',
    "tx-int8": 'transport="int8"',
    "tx-int4": 'transport="int4"',  # no error feedback: what the feedback below buys
    "tx-int4-ef": 'transport="int4" transport-error-feedback=true',
    "qat-int8": 'precision="int8"',
    "qat-w4": "weight-bits=4",
}


def check(name: str, value: float, op: str, target: float) -> str:
    ok = value <= target if op == "<=" else value >= target
    return f"{name:<58}{value:>10.4f}  (target {op} {target}) {'PASS' if ok else 'MISS'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat")
    parser.add_argument("--fraction", type=float, default=0.25, help="fraction of the train split [0.25]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--client-cpus", type=int, default=1)
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(RUNS))
    parser.add_argument("--keep", type=Path, help="keep runs under this folder")
    parser.add_argument("--set", default="", help="run-config overrides added to every run, e.g. 'seed=43' "
                        "(a run's own setting wins)")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    work = args.keep or Path(tmp.name)
    data = make_slice(args.data.resolve(), Path(tmp.name) / "data", args.fraction)
    names = args.only.split(",") if args.only else list(RUNS)
    metrics: dict[str, dict] = {}
    dirs: dict[str, Path] = {}
    for name in names:
        started = time.perf_counter()
        code, run_dir = launch([f"num-server-rounds={args.rounds} time-limit-min=0 data='{data}' "
                                f"output-dir='{work / 'outputs'}' {args.set} {RUNS[name]}"], resources=Resources(client_cpus=args.client_cpus))
        if code != 0:
            print(f"{name}: run did not complete (exit {code})", file=sys.stderr)
            return 1
        dirs[name] = run_dir
        metrics[name] = json.loads((run_dir / "metrics.json").read_text())
        s = metrics[name]["summary"]
        print(f"== {name}: {100 * s['final_test_accuracy']:.2f}% after {s['rounds_completed']} rounds, "
              f"{s['total_bytes'] / 2**20:.1f} MB, {time.perf_counter() - started:.0f} s", flush=True)

    print(f"\n# {args.rounds} rounds, 10 clients, {args.fraction:.0%} of the train split, full test split\n")
    rows = []
    if "fp32" in metrics:
        base = metrics["fp32"]
        base_acc = 100 * base["summary"]["final_test_accuracy"]
        base_round = np.mean([r["bytes_sent"] + r["bytes_received"] for r in base["rounds"]])
        base_step = np.mean([r["client_train_seconds"] / r["client_train_images"] for r in base["rounds"]])
        print(f"{'run':<12}{'acc %':>8}{'MB/round':>10}{'bytes vs fp32':>15}{'ms/image (CPU)':>16}{'vs fp32':>9}")
        for name, m in metrics.items():
            acc = 100 * m["summary"]["final_test_accuracy"]
            per_round = np.mean([r["bytes_sent"] + r["bytes_received"] for r in m["rounds"]])
            step = np.mean([r["client_train_seconds"] / r["client_train_images"] for r in m["rounds"]])
            print(f"{name:<12}{acc:>8.2f}{per_round / 2**20:>10.2f}{per_round / base_round:>15.4f}"
                  f"{1000 * step:>16.3f}{step / base_step:>8.2f}x")
            limits = {"tx-fp16": (0.51, 0.5), "tx-int8": (0.27, 0.5), "tx-int4-ef": (0.15, 2.0),
                      "qat-int8": (None, 1.0), "qat-w4": (None, 3.0)}
            if name in limits:
                byte_limit, acc_limit = limits[name]
                if byte_limit:
                    rows.append(check(f"{name}: bytes per round / fp32", per_round / base_round, "<=", byte_limit))
                rows.append(check(f"{name}: accuracy drop vs fp32 (points, < 0 = better)", base_acc - acc, "<=", acc_limit))
        if "fp32-seed43" in metrics:
            spread = abs(base_acc - 100 * metrics["fp32-seed43"]["summary"]["final_test_accuracy"])
            rows.append(f"{'fp32 seed 42 vs seed 43: accuracy difference (points)':<58}{spread:>10.4f}  "
                        "(the yardstick for the drops above; no target)")
        for name in ("qat-int8", "qat-w4"):
            if name in dirs:
                comp = json.loads((dirs[name] / "compression_metrics.json").read_text())
                rows.append(check(f"{name}: packed file / ideal size", comp["files"]["packed_file_vs_ideal"], "<=", 1.02))
                rows.append(check(f"{name}: packed tensors / ideal size", comp["size_vs_ideal"], "<=", 1.02))
        if "qat-int8" in dirs:
            acc8 = 100 * metrics["qat-int8"]["summary"]["int8_model_test_accuracy"]
            rows.append(check("qat-int8: real INT8 model accuracy drop vs fp32", base_acc - acc8, "<=", 1.0))

        out = dirs["fp32"] / "ptq"
        report = compare(dirs["fp32"] / "final_model.pt", CompareOptions(data=str(data), out_dir=out))
        print("\nPTQ of the fp32 run's model:\n" + format_table(report))
        p = report["precisions"]
        rows.append(check("PTQ int8: FP32 file / INT8 file", p["int8"]["compression_ratio"], ">=", 3.9))
        rows.append(check("PTQ int8: accuracy drop (points)", p["int8"]["accuracy_drop_percent"], "<=", 0.3))
        rows.append(check("PTQ int8: CPU throughput / fp32", p["int8"]["throughput_images_per_s"]
                          / p["fp32"]["throughput_images_per_s"], ">=", 1.5))
        rows.append(check("PTQ: whole comparison seconds", report["seconds"], "<=", 30))
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
