#!/usr/bin/env python3
"""Draw report figures from quantization comparisons and training runs.

    python create_comparison_plots.py [quantization_comparison.json ...] [--out DIR]

- comparison_plots.png (300 DPI) and comparison_plots_highres.png (600 DPI): the post-training
  quantization report (newest quantization_comparison.json under --outputs if none is given);
- robustness.png: accuracy vs corruption severity, one panel per corruption, one line per
  precision, where the comparison was run with --corruptions;
- training_comparison.png: test accuracy vs wall clock and vs round of the newest fp32, fp16
  and int8 training runs, where at least two exist (several seeds of one configuration: their
  mean, with a min-max band);
- transport_comparison.png: accuracy vs MB transmitted and vs round, one line per transport
  format, where runs with at least two formats exist;
- bits_accuracy.png and bits_parallel.png: the weight/activation bit-width sweep, where runs
  with compression_metrics.json exist.
Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eurosat.common.cli import one_line_errors
from eurosat.report.figures import draw_all

@one_line_errors(OSError, ValueError)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("reports", nargs="*", type=Path, help="quantization_comparison.json files [newest under --outputs]")
    parser.add_argument("--out", type=Path, help="output folder [the (first) JSON's folder, else --outputs]")
    parser.add_argument("--outputs", type=Path, default=Path(__file__).resolve().parent / "outputs", help="where to look for runs [%(default)s]")
    args = parser.parse_args(argv)
    written = draw_all(args.reports, args.outputs, args.out)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
