"""Files: atomic writes, JSON, checkpoint loading that refuses anything but plain finite
tensors, and output paths checked before any work starts.

Every file is written to a temp file in the same folder and renamed over the target, so a
killed process leaves either the previous version or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint; the message is one line for the user."""


class OutputPathError(ValueError):
    """An output path that cannot be written; the message is one line for the user."""


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda fh: json.dump(data, fh, indent=2, default=_jsonable), mode="w")


def save_torch(path: Path, obj: Any) -> Path:
    return atomic_write(path, lambda fh: torch.save(obj, fh))


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


def load_checkpoint(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` with one-line errors for every way a file can be wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects that would run code on load "
                "(only tensors and plain containers are accepted)"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {reason})") from None
    except Exception as exc:  # noqa: BLE001 - the unpickler raises KeyError etc. on arbitrary bytes
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__} while reading)") from None


def load_state_dict(path: str | Path, finite: bool = True) -> dict[str, torch.Tensor]:
    """A plain state dict, or the `state_dict` inside one of our round checkpoints.

    `finite`: refuse a model with a NaN or Inf anywhere (quantizing it would fail in ways that
    name nothing useful).
    """
    obj = load_checkpoint(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    if finite:
        bad = [k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values (first: {bad[0]}); "
                                  "a diverged model cannot be quantized or compared")
    return dict(obj)


def as_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """NumPy arrays would make a checkpoint that `weights_only=True` refuses: store tensors."""
    return {k: torch.as_tensor(v).clone() for k, v in state.items()}


def check_output_dir(path: Path, flag: str) -> Path:
    """Refuse, before any work, a folder that cannot be created or written (one line, naming `flag`)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a file, expected a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{flag} {path}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: {existing} is not writable")
    return path


def check_output_file(path: Path, flag: str) -> Path:
    """Refuse, before any work, a file path that is a folder or whose folder cannot be written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a folder, expected a file path")
    check_output_dir(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{flag} {path}: is not writable")
    return path
