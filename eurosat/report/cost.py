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
