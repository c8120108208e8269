"""Validate a local EuroSAT folder before any process starts: every split opens, has an `image`
(struct with JPEG `bytes`) and an integer `label` column, every label is a class id, and every
image decodes to 64x64 RGB. A failure names the file and the row, in one line.

Decoding all 27,000 chips takes seconds, once: a file that passed is remembered by its path,
size and modification time under `$EUROSAT_CACHE` (default `~/.cache/eurosat`), so later runs
skip it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

from eurosat.data.loading import NUM_CLASSES, DataError, Source


CACHE_ENV = "EUROSAT_CACHE"
IMAGE_SIZE = (64, 64)
CHECK_VERSION = 1  # bump when the checks change, so old passes are not trusted


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "eurosat") / "data-checks"


def _stamp(path: Path) -> str:
    st = path.stat()
    key = f"{CHECK_VERSION}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def check_file(path: Path) -> int:
    """Check one parquet file of the layout; return its row count. Raises DataError."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"data: {path}: not a readable parquet file ({_first_line(exc)})") from None
    missing = [c for c in ("image", "label") if c not in table.column_names]
    if missing:
        raise DataError(f"data: {path}: no column {', '.join(missing)} (has {', '.join(table.column_names)})")
    if not pa.types.is_integer(table.schema.field("label").type):
        raise DataError(f"data: {path}: column label is {table.schema.field('label').type}, expected integers")
    image_type = table.schema.field("image").type
    if not (pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0):
        raise DataError(f"data: {path}: column image is {image_type}, expected struct<bytes, path>")
    labels = table.column("label").to_pylist()
    images = table.column("image").combine_chunks().field("bytes").to_pylist()
    for row, (label, data) in enumerate(zip(labels, images)):
        if label is None or not 0 <= label < NUM_CLASSES:
            raise DataError(f"data: {path}: row {row}: label {label} is not a class id 0-{NUM_CLASSES - 1}")
        if not data:
            raise DataError(f"data: {path}: row {row}: no image bytes")
        try:
            with Image.open(io.BytesIO(data)) as img:
                size = img.size
                img.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on bad bytes
            raise DataError(f"data: {path}: row {row}: image does not decode ({type(exc).__name__})") from None
        if size != IMAGE_SIZE:
            raise DataError(f"data: {path}: row {row}: image is {size[0]}x{size[1]}, expected 64x64")
    if not labels:
        raise DataError(f"data: {path}: no rows")
    return len(labels)


def check_source(source: Source, progress: bool = True) -> None:
    """Check every file of a local source (hub sources are checked by `datasets` on download)."""
    if not source.is_local:
        return
    cache = cache_dir()
    for split, pattern in source.files:
        files = sorted(Path(pattern).parent.glob(Path(pattern).name))
        for path in files:
            marker = cache / f"{_stamp(path)}.json"
            if marker.exists():
                continue
            if progress:
                print(f"eurosat: checking {path} (once; the result is cached)", flush=True)
            rows = check_file(path)
            try:
                cache.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"file": str(path), "split": split, "rows": rows}))
            except OSError:
                pass  # an unwritable cache only costs the next run the same check


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
