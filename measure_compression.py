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
import tempfile
from pathlib import Path

from eurosat.compression import compression_report, format_report
from eurosat.config import ACTIVATION_BITS, WEIGHT_BITS
from eurosat.model import Net
from eurosat.packed_model import is_packed, save_packed, unpack
from eurosat.qat import QATConfig, prepare_qat
from eurosat.files import CheckpointError, check_output_file, load_checkpoint, load_state_dict, save_torch, write_json


def load_model(path: Path, config: QATConfig):
    """FP32 weights from either file kind, re-quantized at the requested widths."""
    state = load_checkpoint(path)
    if is_packed(state):
        latent = {k: v for k, v in unpack(state, path).state_dict().items() if not k.endswith("act_range")}
    else:
        latent = load_state_dict(path)
    net = Net()
    try:
        net.load_state_dict(latent, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: not a EuroSAT Net checkpoint: {' '.join(str(exc).split())[:160]}") from None
    return prepare_qat(net, config).eval(), latent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="FP32 state dict or packed N-bit model")
    parser.add_argument("--weight_bits", "--weight-bits", type=int, default=8, help=f"one of {WEIGHT_BITS} [8]")
    parser.add_argument("--activation_bits", "--activation-bits", type=int, default=32,
                        help=f"one of {ACTIVATION_BITS} [32]")
    parser.add_argument("--out", type=Path, help="JSON path [compression_w{W}a{A}.json beside the checkpoint]")
    args = parser.parse_args(argv)
    try:
        if args.weight_bits not in WEIGHT_BITS or args.activation_bits not in ACTIVATION_BITS:
            raise ValueError(f"--weight_bits must be one of {WEIGHT_BITS} and --activation_bits one of {ACTIVATION_BITS}")
        if args.weight_bits == 32:
            raise ValueError("--weight_bits 32 is the FP32 baseline itself; choose 16 or fewer")
        model, latent = load_model(args.checkpoint, QATConfig(args.weight_bits, args.activation_bits))
        out = check_output_file(args.out or args.checkpoint.resolve().parent /
                                f"compression_w{args.weight_bits}a{args.activation_bits}.json", "--out")
    except (CheckpointError, ValueError) as exc:  # OutputPathError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:  # real files, to report bytes on disk too
        fp32_file = save_torch(Path(tmp) / "fp32.pt", latent)
        packed_file = save_packed(model, Path(tmp) / f"{args.weight_bits}bit.pt")
        report = compression_report(model, packed_file, fp32_file)
    report["checkpoint"] = str(args.checkpoint.resolve())
    for key in ("fp32_file", "packed_file"):
        report["files"].pop(key)
    write_json(out, report)
    print(format_report(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
