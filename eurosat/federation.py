"""FedAvg with a wall-clock budget, per-round bookkeeping and quantized transport.

Flower's `Strategy.start` is a plain loop with no early-stop hook, and raising out of it loses
the result, so `BudgetedFedAvg.run` drives the rounds itself while reusing FedAvg's node
sampling and message building. Clients upload *deltas* against the model they received;
the server decodes them to float32, averages, and applies them to its float32 global model.
What travels in which format, and what each end remembers, is `link.py`'s business.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from eurosat.link import LINK, ServerLink
from eurosat.transport import CODECS, Codec, State, add, contiguous, weighted_mean

log = logging.getLogger(__name__)
MB = 1024 * 1024
FP32 = CODECS["fp32"]


class TimeBudget:
    """Stop when the time spent plus the longest round seen so far would pass the limit.

    The clock is injectable for tests. The first round always runs: nothing is known of a
    round's length before one has been timed.
    """

    def __init__(self, limit_s: float | None, clock: Callable[[], float] = time.monotonic):
        self.limit_s = limit_s
        self.clock = clock
        self.started = clock()
        self.longest_round = 0.0
        self._round_started: float | None = None

    def elapsed(self) -> float:
        return self.clock() - self.started

    def start_round(self) -> None:
        self._round_started = self.clock()

    def end_round(self) -> float:
        seconds = self.clock() - self._round_started
        self.longest_round = max(self.longest_round, seconds)
        return seconds

    def allows_another_round(self) -> bool:
        return self.limit_s is None or self.elapsed() + self.longest_round <= self.limit_s


def aggregate_train_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Example-weighted loss/accuracy; images and seconds summed (for throughput)."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    total = sum(float(m[weighting_key]) for m in metrics)
    out = {key: sum(float(m[key]) * float(m[weighting_key]) for m in metrics) / total
           for key in ("train_loss", "train_accuracy")}
    out.update({key: sum(float(m[key]) for m in metrics) for key in ("train_images", "train_seconds")})
    out[weighting_key] = total
    return MetricRecord(out)


@dataclass
class RoundStats:
    sent_bytes: int = 0
    messages_sent: int = 0
    received_bytes: int = 0
    clients: int = 0
    compute: tuple[str, ...] = ()
    fp32_record_bytes: int = 0  # one model as fp32 transport would send it


@dataclass
class Outcome:
    state: State
    rounds_completed: int
    stop_reason: str
    time_limit_reached: bool


def aggregate_updates(codec: Codec, base: State, records: list[ArrayRecord], weights: list[float]) -> State:
    """base + example-weighted mean of the decoded (float32) deltas: codes are never averaged."""
    return add(base, weighted_mean([codec.decode(r) for r in records], weights))


def _client_order(content: RecordDict) -> int:
    info = content.config_records.get("info")
    return int(info["client"]) if info is not None and "client" in info else -1


class BudgetedFedAvg(FedAvg):
    def __init__(self, codec: Codec, error_feedback: bool = False, **kwargs):
        super().__init__(train_metrics_aggr_fn=aggregate_train_metrics, **kwargs)
        self.codec = codec
        self.link = ServerLink(codec, error_feedback)
        self.global_state: State | None = None
        self.stats = RoundStats()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Send the global model in the transport format (with error feedback: each node's update
        to its replica); remember the float32 base the deltas will be added to."""
        self.global_state = {k: v.numpy() for k, v in arrays.items()}
        fp32 = FP32.encode(self.global_state, quiet=True).count_bytes()
        self.stats = RoundStats(fp32_record_bytes=fp32)
        return self._encoded(super().configure_train(server_round, ArrayRecord(), config, grid), self.global_state)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Evaluation messages carry the model in the transport format too, and count as traffic."""
        return self._encoded(super().configure_evaluate(server_round, ArrayRecord(), config, grid),
                             {k: v.numpy() for k, v in arrays.items()})

    def _encoded(self, sampled: Iterable[Message], state: State) -> list[Message]:
        """FedAvg's sampled messages (one content for all), re-made with the model (or each node's
        update) encoded."""
        sampled = list(sampled)
        out: list[Message] = []
        for nodes, arrays, link in self.link.encode(state, [m.metadata.dst_node_id for m in sampled]):
            template = sampled[0]  # nodes is never empty, so neither is sampled
            content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: template.content[self.configrecord_key],
                                  **({LINK: link} if link is not None else {})})
            out += [Message(content=content, message_type=template.metadata.message_type, dst_node_id=n) for n in nodes]
            self.stats.sent_bytes += arrays.count_bytes() * len(nodes)
            self.stats.messages_sent += len(nodes)
        return out

    def _exchange(self, grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
        """Send and wait; the link forgets the replicas of nodes that sent an error or nothing."""
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
        self.link.forget([m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id not in answered])
        return replies

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode every delta to float32, weight by examples, apply to the float32 base."""
        valid, errors = self._check_and_log_replies(list(replies), is_train=True)
        if not valid:
            reasons = "; ".join(sorted({m.error.reason.splitlines()[0] for m in errors})) or "no replies"
            raise RuntimeError(f"round {server_round}: no client update arrived ({reasons})")
        # Partition order, not arrival order: float sums depend on their order, and a repeated run
        # with the same seed must give the same model bit for bit.
        contents = sorted((m.content for m in valid), key=_client_order)
        self.stats.clients = len(contents)
        self.stats.compute = tuple(sorted({f"{c['info']['compute_dtype']}@{c['info']['device']}x{c['info']['threads']}"
                                           for c in contents if "info" in c.config_records}))
        self.stats.received_bytes = sum(c[self.arrayrecord_key].count_bytes() for c in contents)
        weights = [float(next(iter(c.metric_records.values()))[self.weighted_by_key]) for c in contents]
        new_state = aggregate_updates(self.codec, self.global_state, [c[self.arrayrecord_key] for c in contents], weights)
        return ArrayRecord({k: _array(v) for k, v in new_state.items()}), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def run(
        self,
        grid: Grid,
        state: State,
        num_rounds: int,
        budget: TimeBudget,
        train_config: Mapping[str, object],
        evaluate_fn: Callable[[State], Mapping[str, float]],
        on_round: Callable[[dict, State], None],
        cost_per_mb: float = 0.0,
        timeout: float = 3600,
    ) -> Outcome:
        """Rounds until `num_rounds` or the budget; `on_round` persists each finished round."""
        arrays = ArrayRecord({k: _array(v) for k, v in state.items()})
        cumulative = cumulative_fp32 = 0
        for rnd in range(1, num_rounds + 1):
            budget.start_round()
            train_started = budget.clock()
            replies = self._exchange(grid, self.configure_train(rnd, arrays, ConfigRecord(dict(train_config)), grid), timeout)
            arrays, train_metrics = self.aggregate_train(rnd, replies)
            train_phase = budget.clock() - train_started
            client_eval = None
            if self.fraction_evaluate > 0:
                replies = self._exchange(grid, self.configure_evaluate(rnd, arrays, ConfigRecord(dict(train_config)), grid),
                                         timeout)
                client_eval = self.aggregate_evaluate(rnd, replies)
            state = {k: v.numpy() for k, v in arrays.items()}
            server = evaluate_fn(state)
            seconds = budget.end_round()
            cumulative += self.stats.sent_bytes + self.stats.received_bytes
            fp32_equivalent = self.stats.fp32_record_bytes * (self.stats.clients + self.stats.messages_sent)
            cumulative_fp32 += fp32_equivalent
            record = {
                "round": rnd,
                "server_test_loss": server["loss"],
                "server_test_accuracy": server["accuracy"],
                **{f"client_{k}": v for k, v in dict(train_metrics).items()},
                **({f"client_eval_{k}": v for k, v in dict(client_eval).items()} if client_eval else {}),
                "clients": self.stats.clients,
                "client_compute": list(self.stats.compute),
                "round_seconds": round(seconds, 3),
                "train_phase_seconds": round(train_phase, 3),
                "elapsed_seconds": round(budget.elapsed(), 3),
                "bytes_sent": self.stats.sent_bytes,
                "bytes_received": self.stats.received_bytes,
                "cumulative_mb": cumulative / MB,
                "cumulative_cost": cumulative / MB * cost_per_mb,
                "fp32_equivalent_bytes": fp32_equivalent,
                "bytes_ratio_to_fp32": (self.stats.sent_bytes + self.stats.received_bytes) / fp32_equivalent,
            }
            log.info("round %d: test acc %.4f, %.1f s, %.2f MB on the wire", rnd, server["accuracy"], seconds,
                     (self.stats.sent_bytes + self.stats.received_bytes) / MB)
            on_round(record, state)
            if rnd < num_rounds and not budget.allows_another_round():
                return Outcome(state, rnd, "time_limit", True)
        return Outcome(state, num_rounds, "num_server_rounds", False)


def _array(value: np.ndarray) -> Array:
    return Array(contiguous(value))
