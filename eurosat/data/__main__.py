"""`python -m eurosat.data`: get the data onto a machine, check a folder of it, or write image chips out of it.

    python -m eurosat.data download DIR [--source tanganke/eurosat]
    python -m eurosat.data check DIR
    python -m eurosat.data chips DIR OUT [--count 20] [--split test] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eurosat.common.cli import one_line_errors
from eurosat.data.check import check_source
from eurosat.data.chips import write_chips
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
    w = sub.add_parser("chips", help="write image chips of a split into a new folder, to try python -m eurosat.predict on",
                       description="Write a seeded sample of a split's images into the new folder OUT, each with its "
                                   "bytes untouched and named by its row and true class (00017_Forest.jpg).")
    w.add_argument("dir", type=Path, help="a data folder, as for check")
    w.add_argument("out", type=Path, help="a new (or empty) folder to write the chips into")
    w.add_argument("--count", type=int, default=20, help="how many chips [%(default)s]")
    w.add_argument("--split", default="test", help="which split [%(default)s]")
    w.add_argument("--seed", type=int, default=0, help="which sample [%(default)s]")
    return p


@one_line_errors(DataError)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "download":
        files = download(args.dir, args.source)
        print(f"wrote {len(files)} files to {args.dir}; use it with -c \"data='{args.dir}'\" or EUROSAT_DATA={args.dir}")
    elif args.command == "chips":
        chips = write_chips(resolve_source(str(args.dir), splits=(args.split,)), args.out, args.split, args.count, args.seed)
        print(f"wrote {len(chips)} {args.split} chips to {args.out} (e.g. {chips[0].name}); classify them with "
              f"python -m eurosat.predict MODEL {args.out}")
    else:
        source = resolve_source(str(args.dir))
        check_source(source)
        print(f"{args.dir}: ok ({', '.join(split for split, _ in source.files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
