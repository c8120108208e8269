"""Files: atomic writes and JSON.

Every file is written to a temp file in the same folder and renamed over the target, so a
killed process leaves either the previous version or the new one, never half a file.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call `write(fh)` on a temp file next to `path`, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(exc.errno, f"no space left on device writing {path} (the previous version, "
                                      "if any, is kept)") from None
        raise
    return path


class DiskFull(OSError):
    """A write that found the disk (or the quota) full; the message names the file."""

    def __str__(self) -> str:
        return self.strerror


def write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda fh: json.dump(data, fh, indent=2, default=_jsonable), mode="w")


def save_torch(path: Path, obj: Any) -> Path:
    """Serialised in memory first: torch's own writer reports a full disk as "unexpected pos"."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda fh: fh.write(buffer.getbuffer()))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)
