"""The INT8 verdict, and when there can be none.

Good / Acceptable / Poor are the original workflow's thresholds on an INT8 model against FP32.
They only mean something when the FP32 baseline has learnt something and the test set can
resolve the drop. Otherwise the verdict says "not meaningful", with the reasons:
- baseline not trained: FP32 accuracy below twice the majority-class rate (near chance), or
  predictions collapsed onto a few classes (the effective number of predicted classes, e^entropy,
  below half that of the true labels);
- test set too small: the 95% interval of the drop is wider than +-1 point, the widest threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from eurosat.report.stats import Interval

# name, max drop (points), min compression ratio, min savings (%)
VERDICTS = (
    ("Good", 0.5, 3.0, 65.0),        # drop < 0.5 points, >= 3x smaller, >= 65% cheaper to send
    ("Acceptable", 1.0, 2.5, 60.0),  # drop <= 1.0 points, >= 2.5x, >= 60%
)
MAX_HALF_WIDTH = max(v[1] for v in VERDICTS)  # points: a wider interval cannot tell the verdicts apart
NOT_MEANINGFUL = "not meaningful"


def verdict(accuracy_drop_points: float, compression_ratio: float, savings_percent: float) -> str:
    for name, max_drop, min_ratio, min_savings in VERDICTS:
        drop_ok = accuracy_drop_points < max_drop if name == "Good" else accuracy_drop_points <= max_drop
        if drop_ok and compression_ratio >= min_ratio and savings_percent >= min_savings:
            return name
    return "Poor"


def _effective_classes(counts: Sequence[int]) -> float:
    total = sum(counts)
    probs = [c / total for c in counts if c > 0]
    return math.exp(-sum(p * math.log(p) for p in probs))


def baseline_problems(confusion: Sequence[Sequence[int]]) -> list[str]:
    """Why an FP32 baseline with this confusion matrix (rows = true class) cannot support a verdict."""
    true_counts = [sum(row) for row in confusion]
    predicted = [sum(col) for col in zip(*confusion)]
    n = sum(true_counts)
    accuracy = sum(confusion[i][i] for i in range(len(confusion))) / n
    majority = max(true_counts) / n
    problems = []
    if accuracy < 2 * majority:
        problems.append(f"FP32 accuracy {100 * accuracy:.1f}% is near chance (majority class {100 * majority:.1f}%)")
    used, expected = _effective_classes(predicted), _effective_classes(true_counts)
    if used < expected / 2:
        problems.append(f"FP32 predictions collapsed onto ~{used:.1f} of {len(confusion)} classes")
    return problems


def judge(drop: Interval, compression_ratio: float, savings_percent: float,
          baseline_confusion: Sequence[Sequence[int]]) -> tuple[str, list[str]]:
    """(verdict, reasons): Good/Acceptable/Poor, or "not meaningful: ..." with why."""
    reasons = baseline_problems(baseline_confusion)
    if reasons:
        return f"{NOT_MEANINGFUL}: baseline not trained", reasons
    if drop.half_width > MAX_HALF_WIDTH:
        return f"{NOT_MEANINGFUL}: test set too small", [
            f"the drop's 95% interval on {drop.n} test images is +-{drop.half_width:.2f} points, "
            f"wider than the {MAX_HALF_WIDTH:g}-point threshold"]
    return verdict(drop.estimate, compression_ratio, savings_percent), []
