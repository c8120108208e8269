"""The statistics every "real? yes/no" rests on, against published and hand-computed values."""

import math

import numpy as np
import pytest

from eurosat.report.stats import BOOTSTRAP_SAMPLES, mean_std, paired_accuracy_difference, paired_difference, t95
from eurosat.report.verdict import MAX_HALF_WIDTH, baseline_problems, judge, verdict
from eurosat.report.stats import Interval


@pytest.mark.parametrize("df, quantile", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.060), (30, 2.042),
                                          (120, 1.980), (10_000, 1.960)])
def test_t_quantiles_are_the_published_ones(df, quantile):
    # between table entries the next entry down is used: t(0.975, 29) is 2.045, and 29 reads 25's
    # 2.060, conservative, never narrower than the true interval
    assert t95(df) == pytest.approx(quantile, abs=5e-4)


def test_t_quantiles_never_narrow_the_interval():
    true = {21: 2.080, 29: 2.045, 45: 2.014, 100: 1.984}  # published t(0.975, df)
    for df, value in true.items():
        assert t95(df) >= value
    with pytest.raises(ValueError, match="at least 2 values"):
        t95(0)


def test_paired_difference_by_hand():
    # the README's qat-int8 row against fp32, seeds 42/43/44: d = 0.15, -0.30, -0.67
    diff = paired_difference([88.56, 88.81, 88.52], [88.41, 89.11, 89.19])
    d = np.array([0.15, -0.30, -0.67])
    sd = math.sqrt(((d - d.mean()) ** 2).sum() / 2)
    half = 4.303 * sd / math.sqrt(3)
    assert diff.estimate == pytest.approx(-0.27333, abs=1e-4)
    assert (diff.low, diff.high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert (round(diff.low, 2), round(diff.high, 2)) == (-1.29, 0.75) and not diff.excludes_zero and diff.n == 3
    four = paired_difference([1, 2, 3, 4], [0, 0, 0, 0])  # sd 1.29099, t(3) = 3.182
    assert (four.low, four.high) == (pytest.approx(2.5 - 3.182 * 1.290994 / 2, abs=1e-5),
                                 pytest.approx(2.5 + 3.182 * 1.290994 / 2, abs=1e-5))
    assert four.excludes_zero
    with pytest.raises(ValueError, match="differ in number"):
        paired_difference([1, 2], [1])


def test_mean_std_is_the_sample_spread():
    assert mean_std([88.41, 89.11, 89.19]) == (pytest.approx(88.9033, abs=1e-4), pytest.approx(0.42910, abs=1e-4))
    assert mean_std([5.0]) == (5.0, 0.0)


def test_paired_bootstrap_matches_the_normal_approximation():
    n, flips = 2700, 30  # B right and A wrong on 30 images, the rest the same
    a = np.ones(n, dtype=bool)
    b = np.ones(n, dtype=bool)
    a[:flips] = False
    diff = paired_accuracy_difference(a, b)
    p = flips / n
    se = 100 * math.sqrt((p - p * p) / n)
    assert diff.estimate == pytest.approx(-100 * p) and diff.n == n
    assert diff.low == pytest.approx(-100 * p - 1.96 * se, abs=0.08)
    assert diff.high == pytest.approx(-100 * p + 1.96 * se, abs=0.08)
    assert diff.excludes_zero
    assert paired_accuracy_difference(a, b) == diff  # fixed seed: the same interval every time
    same = paired_accuracy_difference(a, a)
    assert (same.estimate, same.low, same.high) == (0, 0, 0) and not same.excludes_zero
    assert BOOTSTRAP_SAMPLES >= 1000
    with pytest.raises(ValueError):
        paired_accuracy_difference(a, b[:-1])


@pytest.mark.parametrize("drop, ratio, savings, expected", [
    (0.49, 3.0, 65.0, "Good"),
    (0.50, 3.0, 65.0, "Acceptable"),  # Good needs a drop strictly below 0.5
    (0.10, 2.9, 70.0, "Acceptable"),  # Good needs >= 3x
    (0.10, 3.9, 64.9, "Acceptable"),  # Good needs >= 65 % savings
    (1.00, 2.5, 60.0, "Acceptable"),  # Acceptable's bounds are inclusive
    (1.01, 3.9, 74.0, "Poor"),
    (0.10, 2.4, 70.0, "Poor"),
    (0.10, 3.0, 59.0, "Poor"),
    (-0.30, 3.9, 74.0, "Good"),  # INT8 better than FP32
])
def test_verdict_thresholds(drop, ratio, savings, expected):
    assert verdict(drop, ratio, savings) == expected


def test_judge_says_when_there_can_be_no_verdict():
    trained = [[90 if i == j else 1 for j in range(10)] for i in range(10)]  # ~91 % accuracy
    narrow = Interval(0.3, 0.1, 0.5, 2700)
    assert judge(narrow, 3.9, 74.0, trained) == ("Good", [])
    chance = [[10] * 10 for _ in range(10)]  # 10 % accuracy with 10 % per class
    verdict_, reasons = judge(narrow, 3.9, 74.0, chance)
    assert verdict_ == "not meaningful: baseline not trained" and "near chance" in reasons[0]
    collapsed = [[100 if j == 0 else 0 for j in range(10)] if i else [100] + [0] * 9 for i in range(10)]
    assert any("collapsed" in r for r in baseline_problems(collapsed))
    wide = Interval(0.3, -0.9, 1.5, 300)
    assert wide.half_width > MAX_HALF_WIDTH
    verdict_, reasons = judge(wide, 3.9, 74.0, trained)
    assert verdict_ == "not meaningful: test set too small" and "300 test images" in reasons[0]
