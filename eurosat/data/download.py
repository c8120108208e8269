"""Getting EuroSAT onto a machine: the Hub's `tanganke/eurosat`, written as the parquet layout the
project reads (`train.parquet`, `test.parquet` in one folder), checked before it is put in place.

    python -m eurosat.data download DIR            # on a machine with internet
    rsync -a DIR cluster:/scratch/eurosat          # offline clusters copy the folder
    python -m eurosat.launch -c "data='/scratch/eurosat'"

`datasets.load_dataset` reads the source (the Hub id, or any folder `load_dataset` understands, for
a mirror), so a local source goes through exactly the code the Hub's does. The splits are written to
a hidden folder inside DIR, their names and row counts compared with what `tanganke/eurosat` holds,
every image decoded (the launcher's own data check), and only then renamed into place: an
interrupted or failed download leaves DIR as it was. Existing files are never overwritten.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from eurosat.data.check import check_file
from eurosat.data.loading import HUB_DATASET, DataError

# What `tanganke/eurosat` holds (its dataset card); the project needs train and test.
EXPECTED_ROWS: Mapping[str, int] = {"train": 21_600, "test": 2_700}


def download(dest: Path, source: str = HUB_DATASET, expected: Mapping[str, int] = EXPECTED_ROWS,
             progress: Callable[[str], None] = print) -> dict[str, Path]:
    """Write `source`'s splits in `expected` to `dest/<split>.parquet`; returns the files written.
    Raises DataError with one line on anything that would leave a wrong or partial folder."""
    dest = Path(dest).expanduser().resolve()
    targets = {split: dest / f"{split}.parquet" for split in expected}
    present = [str(p) for p in targets.values() if p.exists()]
    if present:
        raise DataError(f"download: {', '.join(present)} already exist; remove them or choose another folder")
    made = [folder for folder in (dest, *dest.parents) if not folder.exists()]  # innermost first
    try:
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    except OSError as exc:
        _remove_empty(made)
        raise DataError(f"download: cannot write to {dest} ({exc.strerror})") from None
    done = False
    try:
        dataset = _load(source, progress)
        missing = sorted(set(expected) - set(dataset))
        if missing:
            raise DataError(f"download: {source} has no split {', '.join(missing)} (it has {', '.join(sorted(dataset))})")
        for split, rows in expected.items():
            part = dataset[split]
            if len(part) != rows:
                raise DataError(f"download: {source} split {split} has {len(part):,} rows, expected {rows:,} "
                                f"(not the EuroSAT RGB release this project uses)")
            path = staging / targets[split].name
            part.to_parquet(str(path))
            check_file(path)  # columns, labels, every image decodes to 64x64 RGB
            progress(f"{split}: {rows:,} rows -> {targets[split]} ({path.stat().st_size / 1e6:.1f} MB)")
        for split, target in targets.items():
            (staging / target.name).rename(target)
        done = True
    except OSError as exc:
        raise DataError(f"download: cannot write to {dest} ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            _remove_empty(made)
    return targets


def _remove_empty(folders: list[Path]) -> None:
    """Undo the folders this download made (innermost first), each only while it is still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _load(source: str, progress: Callable[[str], None]):
    from datasets import load_dataset

    progress(f"loading {source} with datasets.load_dataset ...")
    try:
        return load_dataset(source)
    except Exception as exc:  # noqa: BLE001 - network, auth and format errors come in many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"download: cannot load {source} ({type(exc).__name__}: {first}); on a machine "
                        "without internet, run this where there is internet and copy the folder") from None
