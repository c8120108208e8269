"""Every client reply checked before the server uses it: a reply is a claim, not a fact.

A train reply is refused, and recorded as that client's failure with a one-line reason, when
- it is malformed: metrics or records missing, a value of the wrong kind;
- it claims a partition the run does not have, or `num-examples` outside 1 .. that partition's
  size (FedAvg's weight: one client claiming 10^9 examples would *be* the model);
- its arrays are not the transport format: other keys or dtypes than the codec sends, more bytes
  than an fp32 model, arrays that do not decode to the model's shapes;
- any value of the update, or of its metrics, is NaN or Inf;
- its partition is claimed by another node in the same round, or differs from the one its node
  held before (one node answers for one partition);
- the norm of its trained weights is above `max-update-norm` x the round's median of those norms
  (the lower median, so with two replies the smaller one is the yardstick; 0 turns the check off).
Batch-norm running statistics are not trained weights: they move towards the client's own data's
moments, so under label skew an honest client's statistics may move far more than the others'
(measured: 2.9 to 14.6 in one round at Dirichlet alpha 0.3, where the weights' norms were 1.8 to 2.5).
They are left out of that norm and clipped instead: a reply whose statistics moved more than
`max-update-norm` x the round's median has them scaled down to that (recorded in the round as
`statistics_clipped`), so neither an honest outlier is refused nor a hostile one rules them.
What passes is weighted by its examples, but no reply weighs more than `max-weight-share` of the
round's total once 3 or more answer: a heavier one is lowered to that share (recorded in the round
as `weights_capped`), so even a true claim cannot make one client the model. Partitions of a
Dirichlet split are uneven by design, so an honest heavy client is capped, never refused.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
from flwr.app import ArrayRecord, Message

from eurosat.fl.codecs import Codec, get_codec
from eurosat.fl.protocol import ARRAYS, EvalReport, TrainReport
from eurosat.fl.state import State, is_parameter, is_statistic, norm

BYTES_SLACK = 4096  # headers a codec may add beyond what the fp32 transport sends


class Refused(ValueError):
    """A reply that fails a check; the message is the one-line reason recorded for the client."""


@dataclass(frozen=True)
class ReplyLimits:
    """What the server knows before any client answers."""

    partition_sizes: tuple[int, ...]  # train rows of each partition: the `num-examples` bound
    max_weight_share: float = 0.5
    max_update_norm: float = 5.0
    enabled: bool = True  # False: the attack benchmark's unprotected baseline (decode and weigh only)

    @property
    def num_partitions(self) -> int:
        return len(self.partition_sizes)


@dataclass(frozen=True)
class Update:
    """A train reply that passed the per-reply checks."""

    node: int
    report: TrainReport
    delta: State  # decoded, float32
    norm: float  # of the trained weights (`is_parameter`)
    wire_bytes: int
    statistics_norm: float = 0.0  # of the batch-norm running statistics


@dataclass
class CheckedRound:
    """The updates to aggregate, their weights, and who was refused or capped and why."""

    updates: list[Update]
    weights: list[float]
    failures: list[dict]
    capped: list[dict]
    clipped: list[dict] = field(default_factory=list)  # replies whose batch-norm statistics were scaled down


class UpdateChecker:
    """The checks of one run: the transport format's shape of an update, the partition sizes."""

    def __init__(self, codec: Codec, global_state: Mapping[str, np.ndarray], limits: ReplyLimits):
        self.codec = codec
        self.limits = limits
        self.shapes = {k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in global_state.items()}
        zeros = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.shapes.items()}
        reference = codec.encode(zeros, quiet=True)
        self.dtypes = {k: v.numpy().dtype for k, v in reference.items()}
        # What fp32 sends for this very model, every array's header included: a QAT model's many small
        # observer arrays add kilobytes of headers that a bound on the values alone would refuse.
        as_fp32 = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in zeros.items()}
        self.max_bytes = get_codec("fp32").encode(as_fp32, quiet=True).count_bytes() + BYTES_SLACK

    def train_reply(self, msg: Message) -> Update:
        """One reply's checks, cheapest first; raises `Refused` with the reason."""
        report = _parsed(TrainReport, msg)
        if not self.limits.enabled:
            record = msg.content.array_records[ARRAYS]
            return Update(msg.metadata.src_node_id, report, self.codec.decode(record), 0.0, record.count_bytes())
        self._claims(report.partition, report.num_examples)
        bad = [f.name for f in fields(report) if isinstance(getattr(report, f.name), float)
               and not math.isfinite(getattr(report, f.name))]
        if bad:
            raise Refused(f"non-finite metric {bad[0]}")
        try:
            record = msg.content.array_records[ARRAYS]
        except KeyError:
            raise Refused("malformed reply (no update arrays)") from None
        delta = self.decoded(record)
        return Update(msg.metadata.src_node_id, report, delta, norm(delta, is_parameter), record.count_bytes(),
                      norm(delta, is_statistic))

    def eval_reply(self, msg: Message) -> EvalReport:
        report = _parsed(EvalReport, msg)
        if not self.limits.enabled:
            return report
        self._claims(report.partition, report.num_examples)
        if not (math.isfinite(report.loss) and 0 <= report.accuracy <= 1):
            raise Refused(f"impossible evaluation (loss {report.loss}, accuracy {report.accuracy})")
        return report

    def _claims(self, partition: int, num_examples: int) -> None:
        if not 0 <= partition < self.limits.num_partitions:
            raise Refused(f"claimed partition {partition}, the run has 0..{self.limits.num_partitions - 1}")
        most = self.limits.partition_sizes[partition]
        if not 1 <= num_examples <= most:
            raise Refused(f"claimed {num_examples} examples, at most {most}")

    def decoded(self, record: ArrayRecord) -> State:
        """The update as float32 arrays of the model's shapes, from a record in the codec's format."""
        size = record.count_bytes()
        if size > self.max_bytes:
            raise Refused(f"update of {size} B, more than an fp32 model ({self.max_bytes} B)")
        keys = set(record.keys())
        if keys != set(self.dtypes):
            missing, extra = sorted(set(self.dtypes) - keys), sorted(keys - set(self.dtypes))
            raise Refused(f"update is not in the {self.codec.name} transport format "
                          f"(missing {missing[:3]}, unexpected {extra[:3]})")
        for key, value in record.items():
            if value.dtype != str(np.dtype(self.dtypes[key])):
                raise Refused(f"update array {key} is {value.dtype}, the {self.codec.name} transport sends "
                              f"{np.dtype(self.dtypes[key])}")
        try:
            delta = self.codec.decode(record)
        except Exception as exc:  # noqa: BLE001 - hostile bytes may fail a decoder in any way
            raise Refused(f"undecodable update ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
        for key, (shape, _) in self.shapes.items():
            value = delta.get(key)
            if value is None or value.shape != shape:
                raise Refused(f"update array {key} has shape {None if value is None else value.shape}, the model's is {shape}")
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise Refused(f"non-finite update (NaN or Inf in {key})")
        return delta

    def round(self, replies: Sequence[Message], known: Mapping[int, int]) -> CheckedRound:
        """All of a round's train replies: per-reply checks, then those across the round.
        `known`: node -> the partition it held in an earlier round (or said at the roll call)."""
        updates, failures = [], []
        for msg in replies:
            try:
                updates.append(self.train_reply(msg))
            except Refused as exc:
                failures.append(_failure(msg.metadata.src_node_id, _claimed(msg), str(exc)))
        if not self.limits.enabled:
            updates.sort(key=lambda u: u.report.partition)
            return CheckedRound(updates, [float(u.report.num_examples) for u in updates], failures, [])
        updates, refused = one_node_per_partition(updates, known)
        failures += refused
        updates, refused = bounded_norms(updates, self.limits.max_update_norm)
        failures += refused
        updates, clipped = clipped_statistics(updates, self.limits.max_update_norm)
        updates.sort(key=lambda u: u.report.partition)  # float sums depend on order: a repeated run is bit-identical
        raw = [float(u.report.num_examples) for u in updates]
        weights = capped_weights(raw, self.limits.max_weight_share) if len(raw) >= 3 else raw
        capped = [{"partition": u.report.partition, "claimed": w, "weight": round(c, 3)}
                  for u, w, c in zip(updates, raw, weights) if c < w]
        return CheckedRound(updates, weights, failures, capped, clipped)


def one_node_per_partition(updates: list[Update], known: Mapping[int, int]) -> tuple[list[Update], list[dict]]:
    """Refuse a reply whose node held another partition before, and every claimant of a partition
    claimed twice in the round except the node known to hold it."""
    kept, failures = [], []
    for u in updates:
        before = known.get(u.node)
        if before is not None and before != u.report.partition:
            failures.append(_failure(u.node, u.report.partition,
                                     f"claimed partition {u.report.partition}, its node held partition {before}"))
        else:
            kept.append(u)
    by_partition: dict[int, list[Update]] = {}
    for u in kept:
        by_partition.setdefault(u.report.partition, []).append(u)
    out = []
    for partition, group in by_partition.items():
        if len(group) == 1:
            out += group
            continue
        holders = [u for u in group if known.get(u.node) == partition]
        out += holders[:1]
        for u in group:
            if u not in holders[:1]:
                failures.append(_failure(u.node, partition, f"partition {partition} claimed by {len(group)} nodes "
                                                            "in one round"))
    return out, failures


def bounded_norms(updates: list[Update], factor: float) -> tuple[list[Update], list[dict]]:
    """Refuse updates whose norm is above `factor` x the lower median norm of the round (factor 0: off)."""
    if factor <= 0 or len(updates) < 2:
        return updates, []
    limit = median_limit([u.norm for u in updates], factor)
    kept = [u for u in updates if u.norm <= limit]
    failures = [_failure(u.node, u.report.partition, f"update norm {u.norm:.4g} above {factor:g} x the round's "
                                                     f"median ({limit / factor:.4g})")
                for u in updates if u.norm > limit]
    return kept, failures


def median_limit(norms: Sequence[float], factor: float) -> float:
    """`factor` x the lower median of the round's norms: with two replies the smaller is the yardstick."""
    return factor * statistics.median_low(norms)


def clipped_statistics(updates: list[Update], factor: float) -> tuple[list[Update], list[dict]]:
    """Scale down the batch-norm statistics of replies whose statistics moved more than `factor` x
    the round's lower median (factor 0: off): their weights stay as they are."""
    if factor <= 0 or len(updates) < 2:
        return updates, []
    limit = median_limit([u.statistics_norm for u in updates], factor)
    out, clipped = [], []
    for u in updates:
        if u.statistics_norm <= limit:
            out.append(u)
            continue
        scale = np.float32(limit / u.statistics_norm)
        delta = {k: (v * scale if is_statistic(k, v) else v) for k, v in u.delta.items()}
        out.append(replace(u, delta=delta, statistics_norm=limit))
        clipped.append({"partition": u.report.partition, "statistics_norm": round(u.statistics_norm, 4),
                        "clipped_to": round(limit, 4)})
    return out, clipped


def capped_weights(weights: Sequence[float], share: float) -> list[float]:
    """`weights` with the largest lowered until none is more than `share` of the total (which
    shrinks as they are lowered). The capped ones end equal: c = share * rest / (1 - share * k)."""
    if share >= 1 or not weights or max(weights) <= share * sum(weights):
        return list(weights)
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    for k in range(1, len(weights)):
        if share * k >= 1:
            break
        cap = share * sum(weights[i] for i in order[k:]) / (1 - share * k)
        if weights[order[k]] <= cap:  # the (k+1)-th largest fits under the cap: lower the top k
            out = list(weights)
            for i in order[:k]:
                out[i] = cap
            return out
    return [1.0] * len(weights)  # no cap can hold: every reply weighs the same


def _parsed(kind: type[TrainReport] | type[EvalReport], msg: Message):
    """The typed report of a reply; a reply without its records or with values of the wrong kind is refused."""
    try:
        return kind.from_content(msg.content)
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(f"malformed reply ({type(exc).__name__}: {exc})") from None


def _claimed(msg: Message) -> int | None:
    try:
        return int(msg.content.config_records["info"]["partition"])
    except Exception:  # noqa: BLE001 - a malformed reply may lack it
        return None


def _failure(node: int, partition: int | None, reason: str) -> dict:
    return {"node": node, "partition": partition, "error": f"refused: {reason}"}
