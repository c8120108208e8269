"""The learning-rate schedule over a whole federated run, placed round by round within the budget.

The schedule lives on one axis, `x`:
- `0 <= x <= W` is the warm-up (`lr-warmup-rounds = W`), a linear ramp from a tenth of `lr` to `lr`;
- `W <= x <= W + 1` is the decay, from `lr` at `x = W` to `lr-floor x lr` at `x = W + 1`
  (cosine, linear, or none for `constant`).

The server gives each round a span `[x_from, x_to]` of that axis, and the client moves along it
step by step. Warm-up round `i` covers `[i - 1, i]`. A decay round covers an equal share of what is
left of the decay among the rounds that still fit: `RoundPlanner` asks the `TimeBudget` how many
rounds fit, with the same estimate its stop rule uses (time spent + longest round so far), so the
learning rate reaches its floor in the last round that fits, whether the run ends by
`num-server-rounds` or by `time-limit-min`, without knowing in advance which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine", "linear")
WARMUP_START = 0.1  # warm-up starts at this fraction of the peak learning rate


@dataclass(frozen=True)
class LrSchedule:
    kind: str = "constant"
    peak: float = 1e-3
    floor: float = 0.0  # the final learning rate as a fraction of `peak`
    warmup_rounds: int = 0

    @property
    def end(self) -> float:
        """The last position on the axis: the end of the decay."""
        return self.warmup_rounds + 1.0

    def lr_at(self, x: float) -> float:
        """The learning rate at position `x` of the axis (clamped to [0, end])."""
        if self.kind == "constant":
            return self.peak
        w = self.warmup_rounds
        if x < w:
            return self.peak * (WARMUP_START + (1 - WARMUP_START) * max(x, 0.0) / w)
        t = min(max(x - w, 0.0), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * t)) if self.kind == "cosine" else 1 - t
        return self.peak * (self.floor + (1 - self.floor) * shape)


@dataclass(frozen=True)
class Span:
    """The part of the schedule one round covers; clients interpolate linearly over their steps."""

    start: float
    stop: float

    def at(self, fraction: float) -> float:
        return self.start + (self.stop - self.start) * fraction


class RoundPlanner:
    """Places each round on the schedule. `rounds_that_fit(cap)` is the budget's estimate of how many
    more rounds (this one included) will run, at most `cap`."""

    def __init__(self, schedule: LrSchedule, num_rounds: int, rounds_that_fit: Callable[[int], int],
                 position: float | None = None):
        """`position`: where a resumed run stopped on the axis (None: the start)."""
        self.schedule = schedule
        self.num_rounds = num_rounds
        self.rounds_that_fit = rounds_that_fit
        # one round is never all warm-up: a run of N rounds warms up over at most N - 1
        self.warmup = min(schedule.warmup_rounds, num_rounds - 1)
        self.position = float(schedule.warmup_rounds - self.warmup) if position is None else float(position)

    def span(self, server_round: int) -> Span:
        """The span of `server_round` (1-based); call once per round, in order."""
        start = self.position
        if start < self.schedule.warmup_rounds:
            stop = start + 1.0
        else:
            remaining = max(1, self.rounds_that_fit(self.num_rounds - server_round + 1))
            stop = start + (self.schedule.end - start) / remaining
        self.position = min(stop, self.schedule.end)
        return Span(start, self.position)
