"""Output paths checked before any work starts: a folder or file the user named that cannot be
written is a one-line error naming the option, before a run, a sweep or a report begins (and
so before anything could be lost half-way).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written; the message is one line for the user."""


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
    try:  # permissions are not everything (/proc, read-only mounts, immutable folders): try it
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{flag} {path}: {existing} is not writable ({exc.strerror})") from None
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


def check_output_files(folder: Path, names: Iterable[str], flag: str, inputs: Iterable[Path] = ()) -> Path:
    """Refuse, before any work, every file a command will write into `folder` that cannot be: a name
    taken by a folder (or anything but a file), a file that is not writable, or one of the command's
    own `inputs` (never rewritten). A command writing several files checks them all here, so a bad
    one is found before the first is written."""
    folder = check_output_dir(folder, flag)
    sources = [Path(p) for p in inputs if Path(p).exists()]
    for name in names:
        target = folder / name
        if target.is_dir():
            raise OutputPathError(f"{flag} {folder}: {name} there is a folder; move it away or choose another {flag}")
        if target.exists() and not target.is_file():
            raise OutputPathError(f"{flag} {folder}: {name} there is not a regular file; move it away or choose "
                                  f"another {flag}")
        if target.exists() and any(os.path.samefile(target, source) for source in sources):
            raise OutputPathError(f"{flag} {folder}: {name} there is the input file itself, which would be "
                                  f"overwritten; choose another {flag}")
        if target.exists() and not os.access(target, os.W_OK):
            raise OutputPathError(f"{flag} {folder}: {name} there is not writable")
    return folder
