"""Finding training runs on disk: every folder under an output root with a `metrics.json`.

Used by the plots, `analyze_results.py` and the job scripts (best FP32 model). Runs that are
still going or that failed are returned with their state, never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eurosat.config import wire_name
from eurosat.results import FINAL_MODEL_FILE, METRICS_FILE, read_status


@dataclass(frozen=True)
class Run:
    path: Path
    state: str
    metrics: dict

    @property
    def config(self) -> dict:
        return self.metrics.get("config", {})

    @property
    def transport(self) -> str:
        return wire_name(self.config.get("transport", "fp32"), bool(self.config.get("transport-error-feedback")))

    @property
    def label(self) -> str:
        return self.path.relative_to(self.path.parents[2]).parts[0] if len(self.path.parts) > 3 else self.path.name

    @property
    def final_accuracy(self) -> float | None:
        rounds = self.metrics.get("rounds") or []
        return rounds[-1]["server_test_accuracy"] if rounds else None

    @property
    def final_model(self) -> Path | None:
        path = self.path / FINAL_MODEL_FILE
        return path if path.exists() else None


def find_runs(root: Path) -> list[Run]:
    """All runs under `root`, oldest first (folder names are timestamps)."""
    runs = []
    for metrics_path in sorted(Path(root).rglob(METRICS_FILE)):
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError):
            metrics = {}
        if "rounds" not in metrics and "config" not in metrics:
            continue  # not a training run's metrics
        state = read_status(metrics_path.parent).get("state", "unknown")
        runs.append(Run(metrics_path.parent, state, metrics))
    return sorted(runs, key=lambda r: (r.metrics.get("started", ""), str(r.path)))


def latest_by(runs: list[Run], key) -> dict[object, Run]:
    """The newest finished (completed or interrupted) run for each value of `key(run)`."""
    out: dict[object, Run] = {}
    for run in runs:
        if run.state in ("completed", "interrupted") and run.metrics.get("rounds"):
            out[key(run)] = run
    return out


def best_run(runs: list[Run], label: str = "fp32") -> Run | None:
    """Highest final test accuracy among completed runs of `label` that saved a model."""
    done = [r for r in runs if r.label == label and r.state == "completed" and r.final_model and r.final_accuracy is not None]
    return max(done, key=lambda r: r.final_accuracy, default=None)
