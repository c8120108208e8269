"""What the server and a client say to each other besides the model: typed records, shared keys.

A train or evaluate message carries
- `arrays` (ArrayRecord): the model in the transport format (see link.py);
- `config` (ConfigRecord): the run config plus this round's `Instruction`;
- `transport` (ConfigRecord, error feedback only): replica numbers (link.py);
- `control` (ArrayRecord, `strategy="scaffold"` train messages only): the node's SCAFFOLD
  correction `c - c_i` in the downlink codec (scaffold.py).

Before sampling part of the federation (`fraction-train` < 1), the server asks each node it does
not know yet which partition it holds (a `query` message, answered with `info`), so that it can
draw partitions, not Flower's random node IDs, with the run seed (see federation.py).

A reply carries `arrays` (the encoded update, train only), `metrics` (MetricRecord: the numbers,
`num-examples` among them, FedAvg's weighting key) and `info` (ConfigRecord: the partition and
the compute that really ran). A client that fails replies with a Flower `Error` whose reason is
its root cause in one line (`partition 3: UnidentifiedImageError: ...`), never Ray's wrapper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from eurosat.train.schedule import Span

ARRAYS, CONFIG, METRICS, INFO = "arrays", "config", "metrics", "info"
NUM_EXAMPLES = "num-examples"
CLIENT_FAILED = 1  # error code of a client's own failure reply
_ROUND, _SPAN_START, _SPAN_STOP, _DEADLINE = "server-round", "lr-span-start", "lr-span-stop", "train-deadline"


@dataclass(frozen=True)
class Instruction:
    """Per-round orders that ride along with the run config in the `config` record."""

    server_round: int
    span: Span | None = None
    deadline: float | None = None  # wall-clock (Unix) time by which local training must end; None: no limit

    def to_config(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {_ROUND: self.server_round}
        if self.span is not None:
            out.update({_SPAN_START: self.span.start, _SPAN_STOP: self.span.stop})
        if self.deadline is not None:
            out[_DEADLINE] = self.deadline
        return out

    @classmethod
    def split(cls, config: Mapping[str, object]) -> tuple["Instruction", dict[str, object]]:
        """(this round's instruction, the run-config values) from a received `config` record."""
        values = dict(config)
        server_round = int(values.pop(_ROUND, 0))
        start, stop = values.pop(_SPAN_START, None), values.pop(_SPAN_STOP, None)
        deadline = values.pop(_DEADLINE, None)
        span = Span(float(start), float(stop)) if start is not None and stop is not None else None
        return cls(server_round, span, float(deadline) if deadline is not None else None), values


@dataclass(frozen=True)
class TrainReport:
    """One client's training round, as the server records it."""

    partition: int
    num_examples: int
    train_loss: float
    train_accuracy: float
    train_seconds: float
    train_images: int
    train_steps: int
    lr_last: float
    compute: str  # "<dtype>@<device>x<threads>": what really ran
    planned_steps: int = 0  # what the local epochs asked for; more than train_steps when the deadline cut it
    finished_at: float = 0.0  # Unix time the client's training ended: the server times the upload from it
    lr_sum: float = 0.0  # the sum of its steps' learning rates (SCAFFOLD's K x lr, scaffold.py)

    def to_records(self) -> dict[str, MetricRecord | ConfigRecord]:
        numbers = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("partition", "compute",
                                                                                           "num_examples")}
        return {METRICS: MetricRecord({**numbers, NUM_EXAMPLES: self.num_examples}),
                INFO: ConfigRecord({"partition": self.partition, "compute": self.compute})}

    @classmethod
    def from_content(cls, content: RecordDict) -> "TrainReport":
        metrics, info = content.metric_records[METRICS], content.config_records[INFO]
        numbers = {f.name: metrics[f.name] for f in fields(cls) if f.name in metrics}
        return cls(partition=int(info["partition"]), compute=str(info["compute"]),
                   num_examples=int(metrics[NUM_EXAMPLES]), **numbers)


@dataclass(frozen=True)
class EvalReport:
    """One client's evaluation on its local held-out 20%."""

    partition: int
    num_examples: int
    loss: float
    accuracy: float

    def to_records(self) -> dict[str, MetricRecord | ConfigRecord]:
        return {METRICS: MetricRecord({"loss": self.loss, "accuracy": self.accuracy, NUM_EXAMPLES: self.num_examples}),
                INFO: ConfigRecord({"partition": self.partition})}

    @classmethod
    def from_content(cls, content: RecordDict) -> "EvalReport":
        metrics, info = content.metric_records[METRICS], content.config_records[INFO]
        return cls(int(info["partition"]), int(metrics[NUM_EXAMPLES]), float(metrics["loss"]), float(metrics["accuracy"]))


def roll_call_reply(msg: Message, partition: int) -> Message:
    """A node's answer to the roll call: the partition it holds."""
    return Message(RecordDict({INFO: ConfigRecord({"partition": partition})}), reply_to=msg)


def partition_of(reply: Message) -> int:
    return int(reply.content.config_records[INFO]["partition"])


def weighted(reports: list, keys: tuple[str, ...]) -> dict[str, float]:
    """Example-weighted means of `keys` over reports (which all have `num_examples`)."""
    total = sum(r.num_examples for r in reports)
    return {k: sum(getattr(r, k) * r.num_examples for r in reports) / total for k in keys}


def root_cause(exc: BaseException) -> str:
    """The innermost exception of a chain, as `Type: first line of its message`."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def failure_reply(msg: Message, partition: object, exc: BaseException) -> Message:
    return Message(Error(CLIENT_FAILED, f"partition {partition}: {root_cause(exc)}"[:500]), reply_to=msg)


def reply_error(msg: Message) -> str:
    """One line for a failed reply: our own reason, or the first line of Flower's (e.g. a crash)."""
    reason = (msg.error.reason or "").strip()
    if msg.error.code == CLIENT_FAILED:
        return reason
    lines = [line for line in reason.splitlines() if line.strip()]
    # A crash outside our handler: Flower's reason is a traceback; its last line names the cause.
    return (lines[-1].strip() if lines else f"error code {msg.error.code}")[:500]
