"""Error bars: mean and spread over seeds, paired differences with 95% intervals.

Two kinds of uncertainty, reported apart:
- across seeds (training noise): a difference between two configurations is taken seed by seed
  (same seed = same partition, initial model and batch order), and its 95% interval is Student's
  t over those paired differences;
- across test images (evaluation noise, one model against another on the same images): a paired
  bootstrap over the images, so a 0.3-point "drop" on 2,700 images shows how little it says.
A difference counts as real only when its interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# two-sided 95% quantiles of Student's t, by degrees of freedom (standard table values)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
BOOTSTRAP_SAMPLES = 2000


def t95(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (the next table entry down)."""
    if df < 1:
        raise ValueError("an interval needs at least 2 values")
    return _T95[max(k for k in _T95 if k <= df)] if df <= 120 else 1.960


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval; `n` = how many values (seeds or images) it rests on."""

    estimate: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict[str, float | int | bool]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n,
                "excludes_zero": self.excludes_zero}

    def __str__(self) -> str:
        return f"{self.estimate:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Interval:
    """Mean of a[i] - b[i] with Student's t 95% interval (pairs = seeds)."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in number: {len(a)} vs {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, sd = mean_std(d)
    half = t95(len(d) - 1) * sd / math.sqrt(len(d))
    return Interval(mean, mean - half, mean + half, len(d))


def paired_accuracy_difference(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0) -> Interval:
    """Accuracy of A minus accuracy of B on the same images, in points, with a paired bootstrap
    95% interval (percentile, `BOOTSTRAP_SAMPLES` resamples of the images, fixed seed)."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired accuracy needs two equally long, non-empty vectors")
    diff = a.astype(np.int8) - b.astype(np.int8)  # +1, 0, -1 per image
    rng = np.random.default_rng(seed)
    samples = np.empty(BOOTSTRAP_SAMPLES)
    for start in range(0, BOOTSTRAP_SAMPLES, 250):  # blocks keep memory small
        idx = rng.integers(0, len(diff), size=(min(250, BOOTSTRAP_SAMPLES - start), len(diff)))
        samples[start:start + len(idx)] = diff[idx].mean(axis=1)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Interval(100 * float(diff.mean()), 100 * float(low), 100 * float(high), len(diff))
