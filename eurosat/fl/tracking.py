"""Optional Weights & Biases logging of a run's rounds and summary; never required.

On when the run config sets `wandb-project` (the config check fails early, one line, if `wandb`
is not installed). W&B's own variables apply: `WANDB_MODE=offline` on nodes without internet
(then `wandb sync` the folder later), `WANDB_ENTITY`, `WANDB_API_KEY`. Files go to `$WANDB_DIR`,
else the run folder. The run's own files stay the record: a W&B error is logged and noted in
`metrics.json` (`wandb.error`), and training goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class WandbTracker:
    """Mirrors RunRecorder: one `log_round` per round, one `finish` at the end."""

    def __init__(self, run: Any, info: dict[str, Any]):
        self.run = run
        self.info = info

    def log_round(self, record: Mapping[str, Any]) -> None:
        self._call(lambda: self.run.log(_scalars(record), step=int(record["round"])))

    def finish(self, state: str, summary: Mapping[str, Any]) -> None:
        def close() -> None:
            self.run.summary.update({**_scalars(summary), "state": state})
            self.run.finish(exit_code=0 if state == "completed" else 1)

        self._call(close)
        self.run = None

    def _call(self, action) -> None:
        if self.run is None:
            return
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - W&B must never end a training run
            self.info["error"] = _one_line(exc)
            log.warning("wandb: %s; W&B logging stops, the run goes on", self.info["error"])
            self.run = None


def start(project: str, run_dir: Path, config: Mapping[str, Any], group: str) -> WandbTracker | None:
    """A tracker for this run, or None when `wandb-project` is empty."""
    if not project:
        return None
    info: dict[str, Any] = {"project": project}
    try:
        import wandb

        run = wandb.init(project=project, group=group, name=f"{group}/{run_dir.parent.name}/{run_dir.name}",
                         config=dict(config), dir=os.environ.get("WANDB_DIR") or str(run_dir), job_type="train")
    except Exception as exc:  # noqa: BLE001 - e.g. online mode without an API key
        info["error"] = _one_line(exc)
        log.warning("wandb: could not start (%s); training goes on without W&B", info["error"])
        return WandbTracker(None, info)
    info.update(id=run.id, mode=str(run.settings.mode), dir=str(Path(run.dir).parent))
    return WandbTracker(run, info)


def _scalars(values: Mapping[str, Any]) -> dict[str, Any]:
    """What W&B charts: numbers, flags and strings (lists of per-client figures are left out)."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str))}


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
