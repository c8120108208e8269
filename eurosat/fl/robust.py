"""How a round's checked updates become one: the example-weighted mean (FedAvg), or a robust
statistic that one bad client cannot move far (`aggregation`: `mean` | `median` | `trimmed-mean`).

The robust ones are Flower's own: `FedMedian` and `FedTrimmedAvg` (`trim-fraction` is its `beta`)
aggregate the decoded float32 deltas, handed to them as the replies they expect (one ArrayRecord
and the `num-examples` metric each). They are unweighted, coordinate-wise statistics, as in Flower.
The server step after it (`server-lr`) and everything around it (budget, transport, records) is
the same whichever is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Array, ArrayRecord, Message, Metadata, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg

from eurosat.fl.protocol import NUM_EXAMPLES
from eurosat.fl.state import State, contiguous, weighted_mean

AGGREGATIONS = ("mean", "median", "trimmed-mean")


def aggregate(name: str, deltas: Sequence[State], weights: Sequence[float], trim_fraction: float = 0.2) -> State:
    """One update from a round's deltas."""
    if name == "mean":
        return weighted_mean(deltas, weights)
    strategy = {"median": lambda: FedMedian(), "trimmed-mean": lambda: FedTrimmedAvg(beta=trim_fraction)}[name]()
    arrays, _ = strategy.aggregate_train(0, as_replies(deltas, weights))
    dtypes = {k: v.dtype for k, v in deltas[0].items()}
    return {k: v.numpy().astype(dtypes[k]) for k, v in arrays.items()}


def as_replies(deltas: Sequence[State], weights: Sequence[float]) -> list[Message]:
    """The deltas as the train replies a Flower strategy aggregates."""
    replies = []
    for i, (delta, weight) in enumerate(zip(deltas, weights)):
        meta = Metadata(run_id=0, message_id=f"update-{i}", src_node_id=i + 1, dst_node_id=0, reply_to_message_id="",
                        group_id="", created_at=0.0, ttl=1.0, message_type=MessageType.TRAIN)
        content = RecordDict({"arrays": ArrayRecord({k: Array(contiguous(v)) for k, v in delta.items()}),
                              "metrics": MetricRecord({NUM_EXAMPLES: float(weight)})})
        replies.append(Message(content, metadata=meta))
    return replies


def trimmed_count(clients: int, trim_fraction: float) -> int:
    """How many updates `trimmed-mean` drops at each end (Flower's rule: int(beta x n))."""
    return int(trim_fraction * clients)

