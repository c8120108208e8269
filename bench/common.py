"""What the bench scripts share: a command line made from the script's own docstring."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "eurosat"


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The docstring's first paragraph as the description, the paragraphs after the usage as the
    epilog (so `--help` says what the script measures), and `--data`, the real EuroSAT folder."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc.split("\n\n", 2)[2])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real EuroSAT parquet folder [%(default)s]")
    return parser
