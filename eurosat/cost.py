"""Communication cost of federated training: what sending a model of a given size costs.

Each round every client downloads the global model and uploads its update, so one model's
bytes travel 2 x clients times per round. MB = 1024**2 bytes, as in the original reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class Cost:
    model_mb: float
    per_round_mb: float
    total_mb: float
    total_cost: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def communication_cost(model_bytes: int, clients: int, rounds: int, cost_per_mb: float) -> Cost:
    model_mb = model_bytes / MB
    per_round = model_mb * 2 * clients
    return Cost(model_mb, per_round, per_round * rounds, per_round * rounds * cost_per_mb)


def savings(cost: Cost, baseline: Cost) -> dict[str, float]:
    saved = baseline.total_cost - cost.total_cost
    return {"savings_dollars": saved,
            "savings_percent": 100.0 * saved / baseline.total_cost if baseline.total_cost else 0.0}


# The original workflow's thresholds for an INT8 model against FP32.
VERDICTS = (
    ("Good", 0.5, 3.0, 65.0),        # drop < 0.5 points, >= 3x smaller, >= 65% cheaper to send
    ("Acceptable", 1.0, 2.5, 60.0),  # drop <= 1.0 points, >= 2.5x, >= 60%
)


def verdict(accuracy_drop_points: float, compression_ratio: float, savings_percent: float) -> str:
    for name, max_drop, min_ratio, min_savings in VERDICTS:
        drop_ok = accuracy_drop_points < max_drop if name == "Good" else accuracy_drop_points <= max_drop
        if drop_ok and compression_ratio >= min_ratio and savings_percent >= min_savings:
            return name
    return "Poor"
