#!/usr/bin/env python3
"""Quantize a trained FP32 EuroSAT model (to FP16 and INT8, or the --precisions named), evaluate
each, and report sizes, accuracy drops, speed and the cost of sending each version in federated training.

    python compare_quantizations.py outputs/fp32/2025-11-15/14-30-00/final_model.pt
    python compare_quantizations.py MODEL --test-data /data/eurosat-winter --test-split test
    python compare_quantizations.py MODEL --corruptions all --severity 1..5

Writes model_<precision>.pt and quantization_comparison.json into --out-dir (with --export onnx
also model_<precision>.onnx, checked in ONNX Runtime: `runtimes` in the JSON; docs/deploy.md). The cost of sending
each version: where the checkpoint sits in a run folder (its metrics.json beside it), the bytes
that run really sent, measured for the transport it used, and for the other precisions a
what-if (its traffic scaled by each file's bytes); elsewhere, or with --clients/--rounds, a
what-if of clients x rounds. With --corruptions, every precision is also evaluated on the test
images under each corruption and severity (`robustness` in the JSON; see
eurosat/report/corruptions.py for what each severity means).
Exit status: 0 done, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from eurosat.common.cli import one_line_errors
from eurosat.report.compare import DEFAULT_PRECISIONS, RESULT_FILE, CompareOptions, compare, format_table, run_data
from eurosat.report.cost import WHAT_IF_CLIENTS, WHAT_IF_ROUNDS
from eurosat.fl.config import project_defaults
from eurosat.report.corruptions import CORRUPTIONS, parse_corruptions, parse_severities
from eurosat.data.loading import DATA_ENV, DataError
from eurosat.deploy.export import EXPORTERS, require_onnx
from eurosat.deploy.runtime import format_runtimes, runtimes
from eurosat.quant.registry import CONFIGS


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except None: those options say in their help what they fall back to."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    defaults = project_defaults()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=_Help)
    parser.add_argument("checkpoint", type=Path, help="FP32 Net state dict (final_model.pt, or the original final_model_fp32.pt)")
    parser.add_argument("--data", help="hub id or local parquet folder [the data the checkpoint's run trained on, "
                        f"where it sits in a run folder; else ${DATA_ENV}; else {defaults['data']}]")
    parser.add_argument("--out-dir", type=Path, help="output folder [the checkpoint's folder]")
    parser.add_argument("--clients", type=int, help=f"clients, for a what-if communication cost (clients x rounds "
                        f"instead of the checkpoint's run) [{WHAT_IF_CLIENTS}]")
    parser.add_argument("--rounds", type=int, help=f"rounds, for a what-if communication cost [{WHAT_IF_ROUNDS}]")
    parser.add_argument("--cost-per-mb", type=float, help="dollars per MB sent [the run's own cost-per-mb, else the "
                        f"run-config default {float(defaults['cost-per-mb']):g}]")
    parser.add_argument("--calibration-samples", type=int, default=1024, help="INT8 calibration images")
    parser.add_argument("--calibration-split", choices=["train", "validation"], default="train",
                        help="split the calibration images come from (never test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for FP32/FP16 evaluation (INT8 kernels run on the CPU)")
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    parser.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS),
                        help=f"comma-separated, from: {', '.join(CONFIGS)} (fp32 is always the baseline)")
    parser.add_argument("--test-data", help="evaluate on this folder's split instead (same parquet layout); "
                        "calibration still comes from --data")
    parser.add_argument("--test-split", default="test", help="the split evaluated (of --test-data, else --data)")
    parser.add_argument("--corruptions", default="", help=f"comma-separated, from: {', '.join(CORRUPTIONS)}, or all "
                        "[none: clean images only]")
    parser.add_argument("--severity", default="1..5", help="severities 1-5 for --corruptions: N, N,M or N..M")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions' randomness")
    parser.add_argument("--export", choices=["onnx"], help="also export each precision to model_<precision>.onnx, run "
                        "it in ONNX Runtime on the same test images (accuracy, agreement with PyTorch, batch-1 latency "
                        "and batch-64 throughput side by side) and add `runtimes` to the JSON; needs the extra: "
                        "pip install \".[deploy]\" [no export]")
    return parser.parse_args(argv)


@one_line_errors(DataError, ValueError)  # CheckpointError, OutputPathError: ValueErrors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.export:
        require_onnx("--export onnx")  # before any work: one line naming the extra
    opts = CompareOptions(
        args.data or run_data(args.checkpoint) or os.environ.get(DATA_ENV) or str(project_defaults()["data"]), args.out_dir or args.checkpoint.resolve().parent, args.clients, args.rounds, args.cost_per_mb,
        args.calibration_samples, args.calibration_split, args.device, args.batch_size,
        tuple(p.strip() for p in args.precisions.split(",") if p.strip()), args.test_data, args.test_split,
        parse_corruptions(args.corruptions) if args.corruptions else (), parse_severities(args.severity), args.seed)
    print(f"comparing {', '.join(['fp32'] + [p for p in opts.precisions if p != 'fp32'])} for {args.checkpoint}",
          flush=True)
    onnx_files = [f"model_{p}.onnx" for p in EXPORTERS if p == "fp32" or p in opts.precisions] if args.export else []
    report = compare(args.checkpoint, opts, [runtimes] if args.export else [], onnx_files)
    print(format_table(report))
    if "runtimes" in report:
        print(format_runtimes(report["runtimes"]))
    print(f"wrote {opts.out_dir / RESULT_FILE} and model files ({report['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
