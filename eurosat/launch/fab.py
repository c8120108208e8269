"""The folder `flwr run` bundles into the app (FAB): only the files Flower would put in it.

`flwr run PROJECT` walks every file under PROJECT before filtering (flwr 1.41-1.42,
`flwr.cli.utils.collect_files`), `.venv` with its ~45,000 files included: about 10 s of every
launch on a 2-core machine, for nothing, since the FAB keeps ~80 of them. `stage` walks the
project once while pruning the folders Flower's own rules exclude as a whole (`.gitignore`,
`.venv/**`, `build/**`, ...), copies exactly the files Flower would bundle into a fresh folder,
and the launcher runs `flwr run` on that. Same rules, same files, same FAB hash
(`tests/launch/test_failures.py` checks it against Flower's own build), without the walk.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

from flwr.cli.build import get_filtered_fab_paths
from flwr.cli.utils import build_pathspec, filter_paths_for_publish, load_gitignore_patterns
from flwr.common.constant import FAB_EXCLUDE_PATTERNS

CONFIG = "pyproject.toml"
_PROBE = "__eurosat_probe__.py"  # a name no rule excludes by itself: if it is excluded, its folder is


def app_files(project: Path) -> list[str]:
    """The project's files (relative POSIX paths) that Flower puts in the FAB, pyproject.toml first."""
    root = project.resolve()
    gitignore = root / ".gitignore"
    ignored = build_pathspec(tuple(load_gitignore_patterns(gitignore.read_bytes() if gitignore.is_file() else b"")))
    excluded = build_pathspec(tuple(p for p in FAB_EXCLUDE_PATTERNS if p.endswith("/**")))
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirnames[:] = [d for d in dirnames if not (Path(dirpath, d).is_symlink() or d == ".git"
                                                   or ignored.match_file(f"{prefix}{d}/{_PROBE}")
                                                   or excluded.match_file(f"{prefix}{d}/{_PROBE}"))]
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink() and path.resolve().is_relative_to(root):
                found[prefix + name] = path
    kept = filter_paths_for_publish(found)
    config = tomllib.loads((root / CONFIG).read_text())
    return [CONFIG, *get_filtered_fab_paths(kept, config)]


def stage(project: Path, dest: Path) -> Path:
    """Copy the app's files from `project` into the new folder `dest` (with `.gitignore`, which
    Flower reads); return `dest`, ready for `flwr run`."""
    dest.mkdir(parents=True)
    extra = [".gitignore"] if (project / ".gitignore").is_file() else []
    for rel in app_files(project) + extra:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / rel, target)
    return dest
