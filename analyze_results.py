#!/usr/bin/env python3
"""One table over all training runs: bit-widths, size, compression, accuracy, time, folder.

    python analyze_results.py [outputs/] [--csv results.csv]

Sorted by weight bits (then activation bits), widest first. Runs in progress or failed are
listed with their state, not skipped. Also writes the table as CSV (default
<outputs>/results_summary.csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eurosat.common.cli import fail, one_line_errors
from eurosat.common.paths import OutputPathError, check_output_file
from eurosat.report.table import collect_rows, format_rows, write_csv


@one_line_errors(OutputPathError)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outputs", nargs="?", type=Path, default=Path(__file__).resolve().parent / "outputs", help="output root [%(default)s]")
    parser.add_argument("--csv", type=Path, help="CSV path [<outputs>/results_summary.csv]")
    args = parser.parse_args(argv)
    if not args.outputs.is_dir():
        return fail(f"{args.outputs}: {'is a file, expected a folder' if args.outputs.exists() else 'no such folder'}")
    csv_path = args.csv or args.outputs / "results_summary.csv"
    check_output_file(csv_path, "--csv")
    rows = collect_rows(args.outputs)
    if not rows:
        print(f"no training runs under {args.outputs}")
        return 0
    print(format_rows(rows))
    print(f"wrote {write_csv(rows, csv_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
