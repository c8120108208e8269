#!/usr/bin/env python3
"""Quantize a trained FP32 EuroSAT model to FP16 and INT8, evaluate each, and report sizes,
accuracy drops, speed and the cost of sending each version in federated training.

    python compare_quantizations.py outputs/fp32/2025-11-15/14-30-00/final_model.pt

Writes model_<precision>.pt and quantization_comparison.json into --out-dir.
Exit status: 0 done, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from eurosat.compare import RESULT_FILE, CompareOptions, compare, format_table
from eurosat.config import project_defaults
from eurosat.data import DATA_ENV, DataError, resolve_source
from eurosat.ptq import CONFIGS
from eurosat.results import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    defaults = project_defaults()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="FP32 Net state dict (final_model.pt, or the original final_model_fp32.pt)")
    parser.add_argument("--data", default=os.environ.get(DATA_ENV) or defaults["data"],
                        help=f"hub id or local parquet folder (${DATA_ENV} wins over the run-config default)")
    parser.add_argument("--out-dir", type=Path, help="output folder [the checkpoint's folder]")
    parser.add_argument("--clients", type=int, default=10, help="clients, for the communication cost")
    parser.add_argument("--rounds", type=int, default=10, help="rounds, for the communication cost")
    parser.add_argument("--cost-per-mb", type=float, default=float(defaults["cost-per-mb"]), help="dollars per MB sent")
    parser.add_argument("--calibration-samples", type=int, default=1024, help="INT8 calibration images")
    parser.add_argument("--calibration-split", choices=["train", "validation"], default="train",
                        help="split the calibration images come from (never test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for FP32/FP16 evaluation (INT8 kernels run on the CPU)")
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    parser.add_argument("--precisions", default="fp32,fp16,int8",
                        help=f"comma-separated, from: {', '.join(CONFIGS)} (fp32 is always the baseline)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    try:
        unknown = [p for p in precisions if p not in CONFIGS]
        if unknown:
            raise ValueError(f"--precisions: unknown {', '.join(unknown)}; allowed: {', '.join(CONFIGS)}")
        for flag in ("clients", "rounds", "calibration_samples", "batch_size"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')}: must be >= 1")
        if args.cost_per_mb < 0:
            raise ValueError("--cost-per-mb: must be >= 0")
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {args.device}: CUDA is not available")
        from eurosat.compare import load_fp32_net

        load_fp32_net(args.checkpoint)
        resolve_source(args.data)
        out_dir = args.out_dir or args.checkpoint.resolve().parent
        opts = CompareOptions(args.data, out_dir, args.clients, args.rounds, args.cost_per_mb,
                              args.calibration_samples, args.calibration_split, args.device,
                              args.batch_size, precisions)
        print(f"comparing {', '.join(['fp32'] + [p for p in precisions if p != 'fp32'])} for {args.checkpoint}", flush=True)
        report = compare(args.checkpoint, opts)
    except (CheckpointError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"wrote {out_dir / RESULT_FILE} and model files ({report['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
