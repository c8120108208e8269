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


def code_fingerprint(root: Path = ROOT) -> dict[str, str]:
    """What code a benchmark row ran: the commit (`-dirty` if the tree differs from it) and a SHA-256
    over the files that decide training (the package, pyproject.toml's defaults, the presets), so two
    rows are comparable only when both match."""
    import hashlib
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return ""

    digest = hashlib.sha256()
    for path in sorted([*root.glob("eurosat/**/*.py"), root / "pyproject.toml", *root.glob("configs/*.toml")]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "eurosat", "pyproject.toml", "configs"))
    return {"commit": (git("rev-parse", "--short=12", "HEAD") or "unknown") + ("-dirty" if dirty else ""),
            "code_sha256": digest.hexdigest()}


def machine() -> dict[str, object]:
    """What the arithmetic may depend on: torch, its threads and the CPU's vector instructions."""
    import platform

    import torch

    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        flags = set()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16")
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": _cpu_model() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": [f for f in wanted if f in flags]}


def _cpu_model() -> str:
    try:
        return next(line for line in open("/proc/cpuinfo") if line.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration, IndexError):
        return ""


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_slice(src: Path, dst: Path, fraction: float) -> Path:
    """A stratified `fraction` of the train split (the same rows for every run: rng seed 0), test and
    validation as they are, as a data folder `dst` the runs read; written atomically."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst.mkdir(parents=True, exist_ok=True)
    for split in ("test", "validation"):
        if not (dst / f"{split}.parquet").exists():
            (dst / f"{split}.parquet").symlink_to(src / f"{split}.parquet")
    if fraction >= 1:
        if not (dst / "train.parquet").exists():
            (dst / "train.parquet").symlink_to(src / "train.parquet")
        return dst
    table = pq.read_table(src / "train.parquet")
    labels = np.asarray(table.column("label"))
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: int(fraction * (labels == c).sum())]
                          for c in range(10)])
    partial = dst / "train.parquet.partial"
    pq.write_table(table.take(pa.array(np.sort(idx))), partial)
    partial.replace(dst / "train.parquet")
    return dst
