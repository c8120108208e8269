"""Test hooks: one client made to misbehave on purpose, for the tests of the server's reply checks
and for the attack benchmark. Never part of a normal run.

`test-hook = "WHAT@PARTITION"` (several: comma-separated) makes the client of that partition, every round:
- `nan`: send an update with NaN in it;
- `scale=K`: send K x its true update (e.g. `scale=-10`);
- `noise`: send Gaussian noise of its true update's norm;
- `examples=N`: claim N examples (FedAvg's weight);
- `partition=P`: claim to hold partition P;
- `slow=F`: train F x slower (each step sleeps F - 1 times its own length, so the deadline sees it);
- `raise`: fail with an error after training (a client that crashes).
The key is honoured only where $EUROSAT_TEST_HOOKS=1: the ServerApp refuses a run that sets it
otherwise (one line), and a client applies it only if its own process has the variable too.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from eurosat.fl.protocol import TrainReport
from eurosat.fl.state import State, norm

HOOKS_ENV = "EUROSAT_TEST_HOOKS"
KINDS = ("nan", "scale", "noise", "examples", "partition", "slow", "raise")
_NEEDS_VALUE = ("scale", "examples", "partition", "slow")


@dataclass(frozen=True)
class Hook:
    kind: str
    value: float
    partition: int


def parse_hooks(text: str) -> tuple[Hook, ...]:
    """`WHAT[=VALUE]@PARTITION[,...]`, () for ""; a ValueError names what is wrong."""
    return tuple(_parse_one(part.strip()) for part in text.split(",")) if text.strip() else ()


def _parse_one(text: str) -> Hook:
    what, at, partition = text.partition("@")
    kind, eq, value = what.partition("=")
    if not at or kind not in KINDS or (kind in _NEEDS_VALUE) != bool(eq):
        raise ValueError(f"test-hook: expected WHAT@PARTITION with WHAT one of nan, scale=K, noise, examples=N, "
                         f"partition=P, slow=F, raise; got {text!r}")
    try:
        number, pid = float(value) if eq else 0.0, int(partition)
    except ValueError:
        raise ValueError(f"test-hook: {text!r}: the value and the partition must be numbers") from None
    if not np.isfinite(number) or pid < 0 or (kind == "slow" and number < 1):
        raise ValueError(f"test-hook: {text!r}: out of range (a partition >= 0; slow=F with F >= 1)")
    return Hook(kind, number, pid)


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(HOOKS_ENV) == "1"


def apply(hooks: tuple[Hook, ...], partition: int, delta: State, report: TrainReport,
          seed: int) -> tuple[State, TrainReport]:
    """What a misbehaving client sends instead of (delta, report); others are untouched."""
    if not enabled():
        return delta, report
    for hook in hooks:
        if hook.partition == partition:
            delta, report = _misbehave(hook, delta, report, seed)
    return delta, report


def step_delay(hooks: tuple[Hook, ...], partition: int) -> Callable[[float], None] | None:
    """The `slow=F` hook of this partition as the training loop's `on_step`: each step takes F x
    its length, so a round deadline judges the slow client by its real pace. None if not slowed."""
    factors = [h.value for h in hooks if h.kind == "slow" and h.partition == partition]
    if not factors or not enabled():
        return None
    return lambda seconds: time.sleep((max(factors) - 1) * seconds)


def _misbehave(hook: Hook, delta: State, report: TrainReport, seed: int) -> tuple[State, TrainReport]:
    floats = [k for k, v in delta.items() if np.issubdtype(v.dtype, np.floating)]
    if hook.kind == "nan":
        delta = {**delta, floats[0]: np.full_like(delta[floats[0]], np.nan)}
    elif hook.kind == "scale":
        delta = {k: (v * np.float32(hook.value) if k in floats else v) for k, v in delta.items()}
    elif hook.kind == "noise":
        rng = np.random.default_rng(seed)
        noise = {k: rng.standard_normal(delta[k].shape).astype(np.float32) for k in floats}
        size = norm(delta, lambda k, v: k in floats)
        delta = {**delta, **{k: v * np.float32(size / max(norm(noise, lambda k, v: True), 1e-12)) for k, v in noise.items()}}
    elif hook.kind == "examples":
        report = dataclasses.replace(report, num_examples=int(hook.value))
    elif hook.kind == "partition":
        report = dataclasses.replace(report, partition=int(hook.value))
    elif hook.kind == "slow":
        pass  # applied inside training, step by step (step_delay)
    elif hook.kind == "raise":
        raise RuntimeError(f"test hook: partition {hook.partition} fails on purpose")
    return delta, report
