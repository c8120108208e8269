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

from eurosat.train.checkpoints import CheckpointError, load_checkpoint, load_state_dict, state_dict_of
from eurosat.common.files import read_json, save_torch, write_json

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


def check_run_dir(root: Path, run_dir: str, resume: bool = False) -> Path:
    """The chosen `run_dir`, if it may take this run: free of any run, or resumable with `resume`.
    Touches nothing, so a launcher can ask before the slower checks (the data) and make it after."""
    path = resolve_run_dir(root, run_dir)
    if resume:
        check_resumable(path)
    elif path.exists() and (not path.is_dir() or (path / STATUS_FILE).exists() or (path / METRICS_FILE).exists()):
        raise RunDirError(f"run-dir {path}: already holds a run; choose a new folder, or --resume it")
    return path


def new_run_dir(root: Path, label: str, run_dir: str = "", resume: bool = False) -> Path:
    """Create this run's folder exclusively and return it.

    Without `run_dir`: `<root>/<label>/<date>/<time>`, with `-2`, `-3`, ... when that exists.
    With `run_dir` (a launcher or job script chose it): that folder, which may exist already only
    if it is still empty of any run (the launcher that chose it made it), or, with `resume`, if it
    holds a failed or interrupted run with a checkpoint.
    """
    if run_dir:
        path = check_run_dir(root, run_dir, resume)
        if resume:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            check_run_dir(root, run_dir)  # made since the first check
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


RESUMABLE = ("failed", "interrupted")


def check_resumable(run_dir: Path) -> dict[str, Any]:
    """The metrics of a run that can be resumed: failed or interrupted, with a checkpoint."""
    if not (run_dir / STATUS_FILE).is_file() or not (run_dir / METRICS_FILE).is_file():
        raise RunDirError(f"--resume {run_dir}: not a run folder (no status.json and metrics.json)")
    state = read_status(run_dir).get("state", "unknown")
    if state == "unknown":
        raise RunDirError(f"--resume {run_dir}: status.json is not readable (not JSON with a \"state\"); "
                          "the run folder is left as it is")
    if state not in RESUMABLE:
        raise RunDirError(f"--resume {run_dir}: the run is {state}; only a failed or interrupted run can be resumed")
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise RunDirError(f"--resume {run_dir}: no checkpoint.pt (no round completed): start a new run instead")
    try:
        metrics = read_json(run_dir / METRICS_FILE)
        config = dict(metrics["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise RunDirError(f"--resume {run_dir}: metrics.json is not readable") from None
    try:  # a truncated or foreign checkpoint fails here, before anything starts, not in the ServerApp
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
        state_dict_of(checkpoint, run_dir / CHECKPOINT_FILE, finite=True)
    except CheckpointError as exc:
        raise RunDirError(f"--resume {run_dir}: cannot be resumed: {exc}; the run folder is left as it is") from None
    return {"metrics": metrics, "config": config}


def resumable_config(run_dir: Path) -> dict[str, Any]:
    """The stored run config of a resumable run, less what the resuming launcher sets itself."""
    config = check_resumable(run_dir)["config"]
    return {k: v for k, v in config.items() if k not in ("run-dir", "resume", "engine")}


def as_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """NumPy arrays would make a checkpoint that `weights_only=True` refuses: store tensors."""
    return {k: torch.as_tensor(v).clone() for k, v in state.items()}


def write_status(run_dir: Path, state: str, **details: Any) -> None:
    """The marker callers trust instead of `flwr run`'s exit code (it is 0 even on failure)."""
    assert state in STATES, state
    write_json(Path(run_dir) / STATUS_FILE, {"state": state, "time": _now(), **details})


def save_run_file(run_dir: Path, name: str, obj: Any) -> Path:
    """A file of the run folder beside the record's own (the recipe's exports, their reports),
    written atomically: JSON for `.json`, `torch.save` otherwise."""
    path = Path(run_dir) / name
    return write_json(path, obj) if path.suffix == ".json" else save_torch(path, obj)


def write_launch_result(path: Path, run_dir: Path, state: str, **fields: Any) -> None:
    """The launcher's `--result-json`: the run folder and how the run stands, for the scripts and
    tests that follow a run (run_comparison.sh, tests/conftest.py) without reading log text."""
    write_json(path, {"run_dir": str(run_dir), "state": state, **fields})


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
                 tracker: Any = None, started: float | None = None):
        """`tracker`: an optional mirror (`eurosat.fl.tracking.WandbTracker`) fed the same rounds and summary.
        `started`: the Unix time `wall_seconds` counts from (the ServerApp's start, as the time budget; now)."""
        self.run_dir = Path(run_dir)
        self.started = time.time() if started is None else started
        self.tracker = tracker
        self.server_optimizer: dict[str, Any] = {}  # a resumed run's server optimizer state (checkpoint.pt)
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

    @classmethod
    def resume(cls, run_dir: Path, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
               tracker: Any = None, started: float | None = None) -> tuple["RunRecorder", int, dict[str, torch.Tensor]]:
        """Continue a failed or interrupted run's record: (recorder, last completed round, its state).

        The rounds recorded so far stay; rounds of this attempt carry `attempt` = the next number,
        and `attempts` lists when each began and from which round.
        """
        check_resumable(run_dir)
        recorder = cls.__new__(cls)
        recorder.run_dir, recorder.tracker = Path(run_dir), tracker
        recorder.started = time.time() if started is None else started
        recorder.data = read_json(recorder.run_dir / METRICS_FILE)
        checkpoint = load_checkpoint(recorder.run_dir / CHECKPOINT_FILE)
        last = int(checkpoint["round"])
        recorder.data["rounds"] = [r for r in recorder.data["rounds"] if r["round"] <= last]
        attempts = recorder.data.setdefault("attempts", [{"attempt": 1, "started": recorder.data.get("started"),
                                                          "first_round": 1}])
        previous = dict(recorder.data["summary"])
        attempts[-1].update(ended=previous.get("status"), reason=previous.get("error") or previous.get("stop_reason"))
        attempts.append({"attempt": len(attempts) + 1, "started": _now(), "first_round": last + 1})
        recorder.data.update(config=dict(config), **(extra or {}))
        recorder.data["summary"] = {"status": "running", "rounds_completed": len(recorder.data["rounds"])}
        recorder.flush()
        write_status(recorder.run_dir, "running", pid=os.getpid(), attempt=len(attempts))
        recorder.server_optimizer = dict(checkpoint.get("server_optimizer") or {})
        return recorder, last, checkpoint["state_dict"]

    @property
    def attempt(self) -> int:
        return len(self.data.get("attempts", [])) or 1

    def add_round(self, record: Mapping[str, Any], state_dict: Mapping[str, Any],
                  server_optimizer: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Checkpoint first (with the server optimizer's state, so a resume continues it), then the
        metrics that describe it."""
        checkpoint = {"round": record["round"], "state_dict": as_tensors(state_dict)}
        if server_optimizer:
            checkpoint["server_optimizer"] = {name: as_tensors(values) for name, values in server_optimizer.items()}
        save_torch(self.run_dir / CHECKPOINT_FILE, checkpoint)
        record = {**record, "attempt": self.attempt}
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
        return {  # a finished run's last round is always evaluated (`server-eval-every`)
            "final_test_accuracy": rounds[-1].get("server_test_accuracy"),
            "final_test_loss": rounds[-1].get("server_test_loss"),
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


def mark_failed(run_dir: Path, error: str) -> dict[str, Any]:
    """Close a run whose processes were stopped from outside because its federation broke (the
    SuperLink died): status failed with the reason; the last checkpoint stays for --resume."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status.get("state") in FINISHED or not (run_dir / METRICS_FILE).exists():
        return status
    metrics = read_json(run_dir / METRICS_FILE)
    metrics["summary"].update(status="failed", error=error, finished=_now())
    write_json(run_dir / METRICS_FILE, metrics)
    write_status(run_dir, "failed", **{k: v for k, v in metrics["summary"].items() if k != "status"})
    return read_status(run_dir)
