"""`python -m eurosat.data`: get the data onto a machine, or check a folder of it.

    python -m eurosat.data download DIR [--source tanganke/eurosat]
    python -m eurosat.data check DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eurosat.common.cli import one_line_errors
from eurosat.data.check import check_source
from eurosat.data.download import EXPECTED_ROWS, download
from eurosat.data.loading import HUB_DATASET, DataError, resolve_source


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eurosat.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="write the dataset as DIR/train.parquet and DIR/test.parquet",
                       description="Write the Hub's EuroSAT into DIR in the layout the project reads; check the "
                                   f"split names, the row counts ({', '.join(f'{k} {v:,}' for k, v in EXPECTED_ROWS.items())}) "
                                   "and every image before anything is put in place.")
    d.add_argument("dir", type=Path, help="folder to write into (made if missing; existing files are never overwritten)")
    d.add_argument("--source", default=HUB_DATASET,
                   help="what datasets.load_dataset reads: a Hub id or a mirror's folder [%(default)s]")
    c = sub.add_parser("check", help="check a data folder as the launcher does (every image decoded)",
                       description="Check a local data folder: splits, columns, labels, every image 64x64 RGB.")
    c.add_argument("dir", type=Path, help="a folder with train.parquet and test.parquet (or data/<split>-*.parquet)")
    return p


@one_line_errors(DataError)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "download":
        files = download(args.dir, args.source)
        print(f"wrote {len(files)} files to {args.dir}; use it with -c \"data='{args.dir}'\" or EUROSAT_DATA={args.dir}")
    else:
        source = resolve_source(str(args.dir))
        check_source(source)
        print(f"{args.dir}: ok ({', '.join(split for split, _ in source.files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
