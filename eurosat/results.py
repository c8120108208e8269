"""Results on disk: atomic writes, run folders, the per-round metrics log, the status marker,
and checkpoint loading that refuses anything but plain tensors.

Every file is written to a temp file in the same folder and renamed over the target, so a
killed process leaves either the previous version or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
FINAL_MODEL_FILE = "final_model.pt"
STATES = ("running", "completed", "failed", "interrupted")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint; the message is one line for the user."""


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call `write(fh)` on a temp file next to `path`, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
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


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or the `state_dict` inside one of our round checkpoints."""
    obj = load_checkpoint(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return dict(obj)


def as_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """NumPy arrays would make a checkpoint that `weights_only=True` refuses: store tensors."""
    return {k: torch.as_tensor(v).clone() for k, v in state.items()}


def new_run_dir(root: Path, label: str, run_dir: str = "") -> Path:
    """`<root>/<label>/YYYY-MM-DD/HH-MM-SS/`, or the explicit `run_dir` a job scheduler chose."""
    if run_dir:
        path = Path(run_dir).expanduser()
        path = path if path.is_absolute() else root / path
    else:
        now = datetime.now()
        path = root / label / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
        while path.exists():  # two runs started in the same second
            now = datetime.fromtimestamp(now.timestamp() + 1)
            path = root / label / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    path.mkdir(parents=True, exist_ok=bool(run_dir))
    return path.resolve()


def write_status(run_dir: Path, state: str, **details: Any) -> None:
    """The marker callers trust instead of `flwr run`'s exit code (it is 0 even on failure)."""
    assert state in STATES, state
    write_json(Path(run_dir) / STATUS_FILE, {"state": state, "time": _now(), **details})


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return read_json(Path(run_dir) / STATUS_FILE)
    except (OSError, json.JSONDecodeError):
        return {"state": "unknown"}


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class RunRecorder:
    """Keeps `metrics.json` valid at every moment: rewritten atomically after each round."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
                 tracker: Any = None):
        """`tracker`: an optional mirror (`eurosat.tracking.WandbTracker`) fed the same rounds and summary."""
        self.run_dir = Path(run_dir)
        self.started = time.time()
        self.tracker = tracker
        self.data: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "started": _now(),
            "config": dict(config),
            **(extra or {}),
            **({"wandb": tracker.info} if tracker else {}),
            "rounds": [],
            "summary": {"status": "running", "rounds_completed": 0},
        }
        self.flush()
        write_status(self.run_dir, "running", pid=os.getpid())

    def add_round(self, record: Mapping[str, Any], state_dict: Mapping[str, Any]) -> None:
        """Checkpoint first, then the metrics that describe it."""
        save_torch(self.run_dir / CHECKPOINT_FILE, {"round": record["round"], "state_dict": as_tensors(state_dict)})
        self.data["rounds"].append(dict(record))
        self.data["summary"]["rounds_completed"] = len(self.data["rounds"])
        if self.tracker:
            self.tracker.log_round(record)
        self.flush()

    def finish(self, state_dict: Mapping[str, Any], state: str = "completed", **summary: Any) -> None:
        save_torch(self.run_dir / FINAL_MODEL_FILE, as_tensors(state_dict))
        self._close(state, {**self.totals(), **summary})

    def totals(self) -> dict[str, Any]:
        """Summary figures derived from the per-round records."""
        rounds = self.data["rounds"]
        if not rounds:
            return {}
        total = sum(r["bytes_sent"] + r["bytes_received"] for r in rounds)
        return {
            "final_test_accuracy": rounds[-1]["server_test_accuracy"],
            "final_test_loss": rounds[-1]["server_test_loss"],
            "total_bytes": total,
            "total_cost": rounds[-1]["cumulative_cost"],
            "bytes_ratio_to_fp32": total / sum(r["fp32_equivalent_bytes"] for r in rounds),
            "client_compute": sorted({c for r in rounds for c in r["client_compute"]}),
        }

    def fail(self, error: BaseException) -> None:
        self._close("failed", {"error": f"{type(error).__name__}: {error}"})

    def _close(self, state: str, summary: Mapping[str, Any]) -> None:
        self.data["summary"].update(summary, status=state, finished=_now(),
                                    wall_seconds=round(time.time() - self.started, 3))
        if self.tracker:
            self.tracker.finish(state, self.data["summary"])
        self.flush()
        write_status(self.run_dir, state, **{k: v for k, v in self.data["summary"].items() if k != "status"})

    def flush(self) -> None:
        write_json(self.run_dir / METRICS_FILE, self.data)


def mark_interrupted(run_dir: Path, reason: str = "SIGTERM") -> dict[str, Any]:
    """Close a run whose process is being killed: the last completed round becomes the final model.

    Called from outside the training process, after stopping it (a Slurm job's SIGTERM). A run that
    completed before the signal is left as it is; "failed" is overridden, since a process killed
    by the stop may record its own death as a failure.
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status.get("state") in ("completed", "interrupted"):
        return status
    metrics = read_json(run_dir / METRICS_FILE)
    ckpt = run_dir / CHECKPOINT_FILE
    if ckpt.exists():
        save_torch(run_dir / FINAL_MODEL_FILE, load_state_dict(ckpt))
    summary = metrics["summary"]
    summary.update(status="interrupted", stop_reason=reason, finished=_now(),
                   final_model=str(run_dir / FINAL_MODEL_FILE) if ckpt.exists() else None)
    write_json(run_dir / METRICS_FILE, metrics)
    write_status(run_dir, "interrupted", **{k: v for k, v in summary.items() if k != "status"})
    return read_status(run_dir)
