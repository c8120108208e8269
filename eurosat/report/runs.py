"""Finding training runs on disk: every folder under an output root with a `metrics.json`.

Used by the plots, `analyze_results.py` and the job scripts (best FP32 model). Runs that are
still going or that failed are returned with their state, never silently dropped; a
`metrics.json` that cannot be read, or whose fields have the wrong types, is skipped with one
warning naming the file.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from eurosat.fl.config import link_wire
from eurosat.fl.record import FINAL_MODEL_FILE, FINISHED, METRICS_FILE, label_of, read_status

ROUND_NUMBERS = ("round", "elapsed_seconds", "bytes_sent", "bytes_received", "cumulative_mb")
EVALUATION_NUMBERS = ("server_test_accuracy",)  # present in the rounds the server evaluated
SUMMARY_NUMBERS = ("fp32_model_bytes", "final_test_accuracy", "total_bytes")
CONFIG_KINDS = {"precision": str, "transport": str, "weight-bits": int, "activation-bits": int,
                "transport-error-feedback": bool, "transport-up": str,
                "transport-down": str}  # the keys the readers group and label runs by


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
        """The link as it ran: `int4+ef`, `topk0.01+ef`, or `sign+ef up, fp16+ef down`."""
        return link_wire(self.config)

    @property
    def label(self) -> str:
        return label_of(self.path)

    @property
    def final_accuracy(self) -> float | None:
        """The test accuracy of the run's last model: None where its last round was not evaluated
        (an interrupted run under `server-eval-every`), never an earlier model's."""
        rounds = self.metrics.get("rounds") or []
        return rounds[-1].get("server_test_accuracy") if rounds else None

    @property
    def final_model(self) -> Path | None:
        path = self.path / FINAL_MODEL_FILE
        return path if path.exists() else None


def warn_skipped(path: Path, reason: str) -> None:
    print(f"warning: {path}: skipped: {reason}", file=sys.stderr)


def problem(metrics: object) -> str | None:
    """Why a parsed `metrics.json` cannot be used, or None."""
    if not isinstance(metrics, dict):
        return "not a JSON object"
    config = metrics.get("config", {})
    if not isinstance(config, dict):
        return "'config' is not an object"
    for key, value in config.items():  # a run's config holds plain values only
        if isinstance(value, (list, dict)) or value is None:
            return f"config.{key} is not a plain value"
    for key, kind in CONFIG_KINDS.items():
        if key in config and (not isinstance(config[key], kind) or (kind is int and isinstance(config[key], bool))):
            return f"config.{key} is not a{'n' if kind is int else ''} {kind.__name__}"
    rounds = metrics.get("rounds", [])
    if not isinstance(rounds, list):
        return "'rounds' is not a list"
    for i, r in enumerate(rounds):
        if not isinstance(r, dict):
            return f"rounds[{i}] is not an object"
        for key in ROUND_NUMBERS + tuple(k for k in EVALUATION_NUMBERS if k in r):
            if not _finite_number(r.get(key)):
                return f"rounds[{i}].{key} is missing or not a finite number"
    summary = metrics.get("summary", {})
    if not isinstance(summary, dict):
        return "'summary' is not an object"
    for key in SUMMARY_NUMBERS:
        if key in summary and not _finite_number(summary[key]):
            return f"summary.{key} is not a number"
    return None


def _finite_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def find_runs(root: Path, on_skip: Callable[[Path, str], None] | None = warn_skipped) -> list[Run]:
    """All runs under `root`, oldest first; unusable records go to `on_skip(path, reason)`."""
    runs = []
    for metrics_path in sorted(Path(root).rglob(METRICS_FILE)):
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            if on_skip:
                on_skip(metrics_path, f"not readable JSON ({type(exc).__name__})")
            continue
        if isinstance(metrics, dict) and "rounds" not in metrics and "config" not in metrics:
            continue  # another tool's metrics.json, not a training run's
        reason = problem(metrics)
        if reason:
            if on_skip:
                on_skip(metrics_path, reason)
            continue
        state = read_status(metrics_path.parent).get("state", "unknown")
        runs.append(Run(metrics_path.parent, state, metrics))
    return sorted(runs, key=lambda r: (str(r.metrics.get("started", "")), str(r.path)))


# Run-config keys that do not change what is trained: runs that differ only in these are seeds
# (or copies) of one configuration.
NOT_THE_RECIPE = ("seed", "run-dir", "output-dir", "wandb-project", "data")


def recipe_key(run: Run) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in run.config.items() if k not in NOT_THE_RECIPE))


def latest_by(runs: list[Run], key) -> dict[object, list[Run]]:
    """For each value of `key(run)`: the newest finished run (one that left a model) together with
    every other finished seed of the same configuration, oldest first."""
    finished = [r for r in runs if r.state in FINISHED and r.metrics.get("rounds")]
    newest: dict[object, Run] = {}
    for run in finished:
        newest[key(run)] = run
    return {k: [r for r in finished if key(r) == k and recipe_key(r) == recipe_key(last)]
            for k, last in newest.items()}


def best_run(runs: list[Run], label: str = "fp32") -> Run | None:
    """Highest final test accuracy among completed runs of `label` that saved a model."""
    done = [r for r in runs if r.label == label and r.state == "completed" and r.final_model and r.final_accuracy is not None]
    return max(done, key=lambda r: r.final_accuracy, default=None)
