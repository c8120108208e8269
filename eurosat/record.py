"""The run record: one run folder, its status marker, its per-round metrics, how it ends.

Layout, the one definition: `<output root>/<label>/YYYY-MM-DD/HH-MM-SS[-N]/`. A folder is made
exclusively (`mkdir` fails if it exists), so two runs never share one: a run that starts in the
same second as another gets the next free suffix. `status.json` says how the run ended, and
callers trust it, never `flwr run`'s exit code (0 even when the ServerApp raised).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from eurosat.checkpoints import load_state_dict
from eurosat.files import read_json, save_torch, write_json

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
FINAL_MODEL_FILE = "final_model.pt"
# state -> the launcher's exit status; "running" is never an exit
EXIT_CODES = {"completed": 0, "failed": 1, "completed_with_failures": 3, "interrupted": 143}
STATES = ("running", *EXIT_CODES)
FINISHED = ("completed", "completed_with_failures", "interrupted")  # states that left a usable model
BAD_INPUT_EXIT = 2


class RunDirError(ValueError):
    """An explicit run folder that already holds a run; one line for the user."""


def run_dir_name(now: datetime) -> tuple[str, str]:
    return now.strftime("%Y-%m-%d"), now.strftime("%H-%M-%S")


def label_of(run_dir: Path) -> str:
    """The label part of `<root>/<label>/<date>/<time>` (the folder's own name for other layouts)."""
    return run_dir.parts[-3] if len(run_dir.parts) > 3 else run_dir.name


def resolve_run_dir(root: Path, run_dir: str) -> Path:
    path = Path(run_dir).expanduser()
    return (path if path.is_absolute() else root / path).resolve()


def new_run_dir(root: Path, label: str, run_dir: str = "") -> Path:
    """Create this run's folder exclusively and return it.

    Without `run_dir`: `<root>/<label>/<date>/<time>`, with `-2`, `-3`, ... when that exists.
    With `run_dir` (a launcher or job script chose it): that folder, which may exist already only
    if it is still empty of any run (the launcher that chose it made it).
    """
    if run_dir:
        path = resolve_run_dir(root, run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir() or (path / STATUS_FILE).exists() or (path / METRICS_FILE).exists():
                raise RunDirError(f"run-dir {path}: already holds a run; choose a new folder") from None
        return path
    day, second = run_dir_name(datetime.now())
    base = root / label / day / second
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{second}-{n}")
        try:
            path.mkdir()
            return path.resolve()
        except FileExistsError:
            continue
    raise RunDirError(f"{base}: no free run folder name")


def as_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """NumPy arrays would make a checkpoint that `weights_only=True` refuses: store tensors."""
    return {k: torch.as_tensor(v).clone() for k, v in state.items()}


def write_status(run_dir: Path, state: str, **details: Any) -> None:
    """The marker callers trust instead of `flwr run`'s exit code (it is 0 even on failure)."""
    assert state in STATES, state
    write_json(Path(run_dir) / STATUS_FILE, {"state": state, "time": _now(), **details})


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        status = read_json(Path(run_dir) / STATUS_FILE)
    except (OSError, ValueError):
        return {"state": "unknown"}
    return status if isinstance(status, dict) else {"state": "unknown"}


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
            "rounds_with_client_failures": sum(1 for r in rounds if r.get("client_failures")),
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
    finished before the signal is left as it is; "failed" is overridden, since a process killed
    by the stop may record its own death as a failure.
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status.get("state") in FINISHED:
        return status
    metrics = read_json(run_dir / METRICS_FILE)
    ckpt = run_dir / CHECKPOINT_FILE
    if ckpt.exists():
        save_torch(run_dir / FINAL_MODEL_FILE, load_state_dict(ckpt, finite=False))
    summary = metrics["summary"]
    summary.update(status="interrupted", stop_reason=reason, finished=_now(),
                   final_model=str(run_dir / FINAL_MODEL_FILE) if ckpt.exists() else None)
    write_json(run_dir / METRICS_FILE, metrics)
    write_status(run_dir, "interrupted", **{k: v for k, v in summary.items() if k != "status"})
    return read_status(run_dir)
