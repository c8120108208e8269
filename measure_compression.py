#!/usr/bin/env python3
"""Compression report for any EuroSAT checkpoint at any weight/activation bit-width.

    python measure_compression.py --checkpoint PATH --weight_bits 6 --activation_bits 6

PATH: an FP32 Net state dict (final_model.pt, final_model_fp32.pt) or a packed
final_model_{N}bit.pt. Prints a table and writes JSON (--out, default
compression_w{W}a{A}.json next to the checkpoint). Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eurosat.common.cli import one_line_errors
from eurosat.quant.compression import format_report, measure_checkpoint
from eurosat.quant.recipe import ACTIVATION_BITS, WEIGHT_BITS


@one_line_errors(ValueError)  # CheckpointError, OutputPathError: ValueErrors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="FP32 state dict or packed N-bit model")
    parser.add_argument("--weight_bits", "--weight-bits", type=int, default=8, help=f"one of {WEIGHT_BITS} [8]")
    parser.add_argument("--activation_bits", "--activation-bits", type=int, default=32,
                        help=f"one of {ACTIVATION_BITS} [32]")
    parser.add_argument("--out", type=Path, help="JSON path [compression_w{W}a{A}.json beside the checkpoint]")
    args = parser.parse_args(argv)
    report, out = measure_checkpoint(args.checkpoint, args.weight_bits, args.activation_bits, args.out)
    print(format_report(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
