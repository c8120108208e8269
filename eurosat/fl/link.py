"""The two ends of the wire and what each remembers between rounds: error feedback both ways.

What travels is a `LinkPlan`: a codec for each direction (`transport-down`, server to node;
`transport-up`, node to server; both `transport` unless set), optionally int8 for the first
`transport-warmup-rounds` rounds in a direction whose codec is not a float one.

Without error feedback the link is stateless: the server sends the global model in the
downlink format, the client sends its update (the difference to the model it received) in
the uplink format.

With `transport-error-feedback = true` a lossy codec's rounding error is carried, not dropped:
- uplink: the client adds the residual its last upload lost to the next one;
- downlink: server and node each keep a *replica* of what the node holds; the server sends the
  change from that replica to the global model, both sides add its decoded value to the
  replica, so what the node trains from tracks the global model within one update's rounding,
  instead of the whole model being re-rounded each round (int4 models lose ~5 points of
  accuracy that way). A replica is numbered; a node that lost its replica, or that the server
  lost track of (an error, no reply), starts again from the run's *initial* model: each node
  rebuilds it from the seed (`task.initial_state`) and checks its digest against the server's, so
  the first message is the change since the run began, not the whole model through a 1-bit or 1 %
  codec (which would leave the node training from per-channel signs, or from 1 % of the weights).
  Without an initial model the replicas start at zeros, as before.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from eurosat.fl.state import State, add, contiguous, digest, subtract
from eurosat.fl.codecs import CODECS, Codec, FloatCodec, wire_name
from eurosat.fl.scaffold import CONTROL

LINK = "transport"  # the ConfigRecord with the replica numbers, in messages that carry an update
# kept in the node's context.state: the replica, its number, the upload residual
REPLICA, REPLICA_NUMBER, RESIDUAL = "transport-replica", "transport-replica-number", "transport-residual"
FRESH = 0  # replica number meaning "nothing held": the update is the whole model


@dataclass(frozen=True)
class LinkPlan:
    """Which codec each direction uses in each round, and whether rounding error is fed back.

    `warmup_rounds`: the first rounds send `warmup` (int8) instead, in each direction whose codec
    is not a float one (fp32/fp16 stay): the literature's fix for sign and sparse updates, whose
    first rounds are the largest. The residuals and replicas carry over when the codec changes.
    """

    down: Codec
    up: Codec
    feedback: bool = False
    warmup_rounds: int = 0
    warmup: Codec = CODECS["int8"]

    def at(self, server_round: int) -> tuple[Codec, Codec]:
        """(downlink, uplink) codecs of `server_round`."""
        if server_round > self.warmup_rounds:
            return self.down, self.up
        return tuple(c if isinstance(c, FloatCodec) else self.warmup for c in (self.down, self.up))

    def wires(self, server_round: int) -> tuple[str, str]:
        """(downlink, uplink) as they ran in `server_round`: `sign+ef`, `topk0.1+ef`, `fp16`."""
        return tuple(wire_name(c.label, self.feedback and c.lossy) for c in self.at(server_round))


def error_feedback(codec: Codec, delta: State, residual: State | None) -> tuple[State, State]:
    """Add what the last upload lost to this one; return it and what this upload loses.

    Over any number of rounds, the decoded uploads plus the last residual sum exactly to the
    true deltas: quantization error is delayed, never dropped.
    """
    if residual:
        delta = {k: contiguous(v + residual[k]) if k in residual else v for k, v in delta.items()}
    return delta, subtract(delta, codec.decode(codec.encode(delta, quiet=True)))


class ServerLink:
    """Server end: the global model in the transport format for each node, and which replica each node holds."""

    def __init__(self, codec: Codec, feedback: bool, initial: State | None = None):
        """`codec`: the downlink's; a round may send another (`encode`'s `codec`, a warm-up's).
        `initial`: the model every node can rebuild from the seed, where replicas start (else zeros)."""
        self.codec = codec
        self.feedback = feedback and codec.lossy
        self.initial = initial
        self.initial_digest = digest(initial) if initial is not None and self.feedback else None
        self.replicas: dict[int, State] = {}
        self.held: dict[int, int] = {}  # node id -> replica number
        self._numbers = iter(range(FRESH + 1, 2**62))

    def encode(self, state: State, node_ids: Sequence[int],
               codec: Codec | None = None) -> list[tuple[list[int], ArrayRecord, ConfigRecord | None]]:
        """(nodes, arrays, replica numbers) groups: nodes holding the same replica get the same update."""
        codec = codec or self.codec
        if not self.feedback:
            return [(list(node_ids), codec.encode(state), None)] if node_ids else []
        groups: dict[int, list[int]] = defaultdict(list)
        for node in node_ids:
            groups[self.held.get(node, FRESH)].append(node)
        out = []
        for base, nodes in groups.items():
            link: dict[str, int | str] = {"base": base}
            held = self.replicas.get(base)
            if held is None and self.initial_digest:  # FRESH: the node starts from the initial model, checked by digest
                held, link["initial"] = self.initial, self.initial_digest
            elif held is None:  # FRESH without an initial model: from zeros
                held = {k: np.zeros_like(v) for k, v in state.items()}
            update = codec.encode(subtract(state, held))
            number = next(self._numbers)
            self.replicas[number] = add(held, codec.decode(update))
            self.held.update(dict.fromkeys(nodes, number))
            out.append((nodes, update, ConfigRecord({**link, "replica": number})))
        self._drop_unused()
        return out

    def forget(self, node_ids: Sequence[int]) -> None:
        """Nodes whose reply did not arrive or was an error: their replica is unknown, start afresh."""
        for node in node_ids:
            self.held.pop(node, None)
        self._drop_unused()

    def _drop_unused(self) -> None:
        in_use = set(self.held.values())
        self.replicas = {n: r for n, r in self.replicas.items() if n in in_use}


class ClientLink:
    """Node end: decode the global model (onto the replica when the server sends updates) and
    encode the upload (with the last residual when error feedback is on); `store` is the node's
    `context.state`, which Flower keeps for the node between rounds. `codec` decodes what
    arrives; `up` encodes what is sent (default: the same)."""

    def __init__(self, codec: Codec, store: RecordDict, feedback: bool, up: Codec | None = None,
                 initial: Callable[[], State] | None = None):
        """`initial`: rebuilds the run's initial model (`task.initial_state`), where a fresh replica
        starts when the server says so; called only then."""
        self.codec, self.up, self.store = codec, up or codec, store
        self.feedback = feedback and self.up.lossy
        self.initial = initial

    def decode(self, content: RecordDict) -> State:
        received = self.codec.decode(content["arrays"])
        if LINK not in content.config_records:
            return received
        link = content.config_records[LINK]
        base, number = int(link["base"]), int(link["replica"])
        if base != FRESH:
            held = self._load(REPLICA)
            held_number = int(self.store.config_records[REPLICA_NUMBER]["replica"]) if held else FRESH
            if held_number != base:
                holds = f"replica {held_number}" if held_number != FRESH else "no replica"
                raise RuntimeError(f"transport: this node holds {holds}, the server sent an update to replica {base}; "
                                   "the server sends the whole model next time")
            received = add(held, received)
        elif "initial" in link:
            received = add(self._initial(str(link["initial"])), received)
        self._save(REPLICA, received)
        self.store[REPLICA_NUMBER] = ConfigRecord({"replica": number})
        return received

    def control(self, content: RecordDict) -> State | None:
        """The SCAFFOLD correction `c - c_i` the server sent with the model (scaffold.py), decoded
        with the downlink's codec; None when there is none (other strategies, or before any control)."""
        record = content.array_records.get(CONTROL)
        return self.codec.decode(record) if record is not None else None

    def encode(self, delta: State) -> ArrayRecord:
        if self.feedback:
            delta, residual = error_feedback(self.up, delta, self._load(RESIDUAL))
            self._save(RESIDUAL, residual)
        return self.up.encode(delta)

    def _initial(self, expected: str) -> State:
        """The initial model, rebuilt here and checked against the server's digest."""
        if self.initial is None:
            raise RuntimeError("transport: the server's update starts from the run's initial model, which this node cannot rebuild")
        start = self.initial()
        if (found := digest(start)) != expected:
            raise RuntimeError(f"transport: this node's initial model (SHA-256 {found[:12]}…) differs from the server's "
                               f"({expected[:12]}…): the same code, torch and run config on both ends?")
        return start

    def _load(self, key: str) -> State | None:
        record = self.store.array_records.get(key)
        return {k: v.numpy() for k, v in record.items()} if record else None

    def _save(self, key: str, state: Mapping[str, np.ndarray]) -> None:
        self.store[key] = ArrayRecord({k: Array(contiguous(v)) for k, v in state.items()})
