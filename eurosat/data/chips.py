"""Image chips out of a data folder, to try `python -m eurosat.predict` on.

The dataset ships as parquet, so a newcomer with a trained model has no image files to classify.
Each chip is written with its bytes untouched (it reads exactly as the evaluation reads it) and
named by its row and true class (`00017_Forest.jpg`), so a prediction can be checked by eye.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from eurosat.common.paths import OutputPathError, check_output_dir
from eurosat.data.check import check_source
from eurosat.data.loading import CLASS_NAMES, DataError, Source, raw_split

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif"}  # what predict reads; anything else becomes PNG


def write_chips(source: Source, out: Path, split: str = "test", count: int = 20, seed: int = 0) -> list[Path]:
    """`count` chips of `split` (a seeded sample, in row order) as files of the new folder `out`,
    written into a hidden folder beside it and renamed into place: `out` is whole or absent. An
    existing `out` that is not an empty folder is refused; nothing is overwritten. The options, `out`
    and the split's files (as `data check` checks them) are checked before anything is written."""
    if count < 1:
        raise DataError(f"chips: --count {count}: at least 1")
    if not 0 <= seed < 2**32:
        raise DataError(f"chips: --seed {seed}: must be in [0, 2^32 - 1]")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"chips: {out} exists and is not an empty folder; give a new one (nothing is overwritten)")
    try:
        check_output_dir(out, "chips: OUT")
    except OutputPathError as exc:
        raise DataError(str(exc)) from None
    check_source(source.only(split))
    from datasets import Image as ImageFeature

    ds = raw_split(source, split).cast_column("image", ImageFeature(decode=False))
    rows = sorted(np.random.default_rng(seed).choice(len(ds), size=min(count, len(ds)), replace=False).tolist())
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise DataError(f"chips: cannot write to {out.parent} ({exc.strerror or exc})") from None
    try:
        names = [_write_chip(staging, row, ds[row]) for row in rows]
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes 0700; chips are meant to be shared
        os.replace(staging, out)  # replaces an empty `out`
    except OSError as exc:
        raise DataError(f"chips: cannot write {out} ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]


def _write_chip(folder: Path, row: int, item: dict) -> str:
    data, label = item["image"]["bytes"], int(item["label"])
    with Image.open(io.BytesIO(data)) as image:
        ext = EXTENSIONS.get(image.format or "")
        if ext is None:  # another encoding: re-encoded losslessly
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
            data, ext = buffer.getvalue(), "png"
    name = f"{row:05d}_{CLASS_NAMES[label] if 0 <= label < len(CLASS_NAMES) else label}.{ext}"
    (folder / name).write_bytes(data)
    return name
