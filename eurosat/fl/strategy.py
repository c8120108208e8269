"""FedAvg with a wall-clock budget, a learning-rate schedule placed within it, per-round
bookkeeping of every client asked, and quantized transport.

Flower's `Strategy.start` is a plain loop with no early-stop hook, and raising out of it loses
the result, so `BudgetedFedAvg.run` drives the rounds itself while reusing FedAvg's node
sampling and message building. Clients upload *deltas* against the model they received; the
server decodes them to float32, checks them (checks.py), aggregates them (robust.py), and the
`strategy`'s step (server_step.py: FedAvg's, or Flower's FedAdam, FedYogi, FedAdagrad, FedAvgM)
applies the result to its float32 global model. What
travels in which format, and what each end remembers, is `link.py`'s business; what else the
messages say is `protocol.py`'s.

With `fraction-train` < 1 each round trains a sample of the clients, drawn by partition with the
run seed and the round number (a roll call before the first round learns which node holds which
partition), so a repeated run trains the same partitions in the same rounds; Flower's own
sampling draws from node IDs, which are random in every run.

A round is accepted when at least `min-clients-fraction` of the clients asked answered; the
round record names every client that failed and why. Fewer answers end the run with the first
client's root cause.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from eurosat.fl.checks import CheckedRound, Refused, ReplyLimits, UpdateChecker
from eurosat.fl.robust import aggregate
from eurosat.fl.scaffold import CONTROL, PREFIX as SCAFFOLD_PREFIX, Controls
from eurosat.fl.server_step import ServerOptimizer, ServerStep, scaled_step
from eurosat.fl.config import sample_size
from eurosat.fl.link import LINK, LinkPlan, ServerLink
from eurosat.fl.protocol import ARRAYS, CONFIG, EvalReport, Instruction, TrainReport, partition_of, reply_error, weighted
from eurosat.train.schedule import LrSchedule, RoundPlanner
from eurosat.fl.state import State, contiguous, nonnegative_variances, weighted_mean
from eurosat.fl.codecs import CODECS, Codec

log = logging.getLogger(__name__)
MB = 1024 * 1024
FP32 = CODECS["fp32"]
NO_LIMIT_TIMEOUT_S = 3600.0  # Flower's own per-round reply timeout, for runs without a budget
FIRST_ROUND_MIN_S = 600.0  # with round-timeout-s: the first round's least (a cold start, emulated bf16 on a CPU)
# Under a time limit clients stop training at the round's deadline, so a reply timeout only has to
# cover a cold start beyond the budget in round 1 (Ray or SuperNode start-up, data decoding).
FIRST_ROUND_GRACE_S = 120.0
MARGIN_START_S = 10.0  # the deadline's margin before any round's after-training work was timed
MARGIN_FACTOR = 1.2  # x the longest of the last 3 rounds' upload + aggregation + evaluation + save
# A node that has not said which partition it holds within this long (a cold start takes ~30 s) is
# sampled as of unknown partition (last, by node ID) and asked again next round: a hung node must
# not hold every round's roll call for the round's whole timeout before the training even starts.
ROLL_CALL_MAX_S = 120.0
# Simulation: the nodes are registered in one burst right after the ServerApp starts; their count
# is read once it has not changed for this long (bounded by the second figure).
SIMULATED_NODES_SETTLE_S = 1.0
SIMULATED_NODES_MAX_S = 60.0



class RoundEnd(NamedTuple):
    """How a round ended (`TimeBudget.finish_round`): its training seconds, the server's
    evaluation ({} when none was due) and the seconds it took, and whether the run stops here."""
    seconds: float
    evaluation: Mapping[str, float]
    eval_seconds: float | None
    last: bool


class TimeBudget:
    """Stop when the time spent plus the longest round seen so far, plus one server evaluation (the
    last round's, which always happens), would pass the limit.

    The first round always runs: nothing is known of a round's length before one has been timed.
    It also pays for start-up (Ray actors, each process decoding its data), so once later rounds
    have been timed, "the longest round" is the longest of those. Rounds are timed without the
    server's evaluation, which runs every `eval_every` rounds and is timed apart (`finish_round`).
    The clock is injectable for tests.
    """

    def __init__(self, limit_s: float | None, clock: Callable[[], float] = time.monotonic, eval_every: int = 1,
                 wall: Callable[[], float] = time.time):
        self.limit_s = limit_s
        self.clock = clock
        self.wall = wall  # the clients' clock: a deadline travels as Unix time
        self.after_training: list[float] = []  # per round: upload + aggregation + evaluation + save
        self.reserve_s = 0.0  # kept free at the budget's end for the run's final exports (task.export_seconds)
        self.eval_every = eval_every
        self.started = clock()
        self.rounds: list[float] = []
        self.evaluations: list[float] = []
        self.first_round: int | None = None  # the first round this process runs (a resumed run's too)
        self.current_round = 0
        self._round_started: float | None = None

    @property
    def longest_round(self) -> float:
        later = self.rounds[1:]
        return max(later or self.rounds or [0.0])

    def elapsed(self) -> float:
        return self.clock() - self.started

    def start_round(self, rnd: int) -> None:
        self._round_started = self.clock()
        self.current_round = rnd
        if self.first_round is None:
            self.first_round = rnd

    def due(self, rnd: int) -> bool:
        """Whether the server evaluates after round `rnd` in any case (the last round: always)."""
        return rnd == self.first_round or rnd % self.eval_every == 0

    def end_round(self) -> float:
        seconds = self.clock() - self._round_started
        self.rounds.append(seconds)
        return seconds

    def finish_round(self, num_rounds: int, evaluate: Callable[[], Mapping[str, float]], last: bool = False) -> RoundEnd:
        """End the round's training clock, run the server's evaluation if it is due (the first
        round, every `eval_every`-th, and the last, so the final model is always evaluated), and
        say whether this is the last round (`last`: the caller knows it is, a deadline cut it)."""
        seconds = self.end_round()
        result = self._timed(evaluate) if self.due(self.current_round) else {}
        last = last or self.current_round == num_rounds or not self.allows_another_round()
        if last and not result:
            result = self._timed(evaluate)
        return RoundEnd(seconds, result, self.evaluations[-1] if result else None, last)

    def _timed(self, evaluate: Callable[[], Mapping[str, float]]) -> Mapping[str, float]:
        started = self.clock()
        result = evaluate()
        self.evaluations.append(self.clock() - started)
        return result

    @property
    def evaluation(self) -> float:
        return max(self.evaluations or [0.0])

    def allows_another_round(self) -> bool:
        """Another round, and the evaluation that ends the run after it, fit in what is left."""
        return self.limit_s is None or self.elapsed() + self.longest_round + self.evaluation <= self.limit_s - self.reserve_s

    def rounds_that_fit(self, cap: int) -> int:
        """How many rounds, the current one included, the stop rule will allow, at most `cap`: the
        schedule's estimate. Each costs the longest round, plus an evaluation where one is due;
        the last one always ends with an evaluation."""
        if self.limit_s is None or self.longest_round <= 0:
            return cap
        left, spent, fit = self.limit_s - self.reserve_s - self.elapsed(), 0.0, 0
        for rnd in range(self.current_round, self.current_round + cap):
            due = self.due(rnd)
            spent += self.longest_round + (self.evaluation if due else 0.0)
            if spent + (0.0 if due else self.evaluation) > left:
                break
            fit += 1
        return fit

    def margin(self) -> float:
        """What a round needs after its clients stop training: 1.2 x the longest of the last 3
        measured upload + aggregation + evaluation + save times (MARGIN_START_S before any)."""
        last = self.after_training[-3:]
        return MARGIN_FACTOR * max(last) if last else MARGIN_START_S

    def train_deadline(self) -> float | None:
        """The Unix time by which this round's local training must end (the budget's end minus the
        margin and the final exports' reserve), or None without a limit. Already past: each client
        trains one step."""
        if self.limit_s is None:
            return None
        return self.wall() + self.limit_s - self.reserve_s - self.elapsed() - self.margin()

    def remaining(self) -> float | None:
        return None if self.limit_s is None else self.limit_s - self.elapsed()


class ClientsFailed(RuntimeError):
    """Too few clients answered a round; the message leads with a client's root cause."""


class NonFiniteModel(RuntimeError):
    """A round's aggregate holds NaN or Inf: it is refused, and the last good round's checkpoint stays."""


class FederationMismatch(RuntimeError):
    """The simulated federation's size is not the run config's `num-supernodes`; one line that
    names both numbers and the two ways to make them agree."""


def is_simulation(grid: Grid) -> bool:
    """Whether `grid` is the Simulation Engine's (Flower's `InMemoryGrid`, used by nothing else).
    Read from the Grid, not from the `engine` key: a plain `flwr run` leaves that at its default
    whichever federation it submits to. Looked up in `sys.modules`: a Deployment Engine ServerApp
    never imported the module, and need not spend a second importing it to learn that."""
    module = sys.modules.get("flwr.superlink.grid.inmemory_grid")
    return module is not None and isinstance(grid, module.InMemoryGrid)


def settled_node_count(grid: Grid, settle_s: float = SIMULATED_NODES_SETTLE_S,
                       limit_s: float = SIMULATED_NODES_MAX_S, clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> int:
    """The number of nodes once it has stayed the same, and above 0, for `settle_s` (or whatever
    it is after `limit_s`): the Simulation Engine registers its nodes in one loop on another
    thread, started with the ServerApp, so an early read could catch it halfway."""
    deadline = clock() + limit_s
    count, since = -1, clock()
    while True:
        now_count, now = len(list(grid.get_node_ids())), clock()
        if now_count != count:
            count, since = now_count, now
        elif count > 0 and now - since >= settle_s:
            return count
        if now >= deadline:
            return count
        sleep(0.1)


@dataclass
class RoundStats:
    sent_bytes: int = 0
    messages_sent: int = 0
    received_bytes: int = 0
    clients: int = 0
    compute: tuple[str, ...] = ()
    fp32_record_bytes: int = 0  # one model as fp32 transport would send it
    partitions: tuple[int, ...] = ()  # the partitions whose updates were aggregated
    steps: tuple[int, ...] = ()  # each one's local steps, as `partitions` (a deadline cuts a slow one's short)
    images: tuple[int, ...] = ()  # each one's images trained on, as `partitions`
    failures: list[dict] = field(default_factory=list)
    weights_capped: list[dict] = field(default_factory=list)  # replies lowered to max-weight-share
    statistics_clipped: list[dict] = field(default_factory=list)  # replies whose batch-norm statistics were scaled down


@dataclass
class Outcome:
    state: State
    rounds_completed: int
    stop_reason: str
    time_limit_reached: bool
    client_failures: int = 0


@dataclass(frozen=True)
class Exchange:
    """The replies of one send-and-receive (then: those that passed the checks), and who was asked
    but did not answer properly."""

    asked: int
    replies: list
    failures: list[dict]


def aggregate_updates(codec: Codec, base: State, records: list[ArrayRecord], weights: list[float],
                      server_lr: float = 1.0) -> State:
    """base + server_lr x the example-weighted mean of the decoded (float32) deltas: codes are never averaged."""
    return scaled_step(base, weighted_mean([codec.decode(r) for r in records], weights), server_lr)


class BudgetedFedAvg(FedAvg):
    def __init__(self, codec: Codec | LinkPlan, error_feedback: bool = False, schedule: LrSchedule = LrSchedule(),
                 server: ServerOptimizer = ServerOptimizer(),
                 min_clients_fraction: float = 1.0, round_timeout_s: float = 0.0, cost_per_mb: float = 0.0,
                 expected_nodes: int = 1, seed: int = 0, limits: Callable[[], ReplyLimits] | None = None,
                 aggregation: str = "mean", trim_fraction: float = 0.2, controls: Controls | None = None,
                 initial: State | None = None, **kwargs):
        """`limits`: what the reply checks hold each reply to (checks.py), made when the first round
        starts (it reads the partition sizes); None: no bound on `num-examples` below 2^31.
        `aggregation`: how the checked updates become one (robust.py); `server`: the strategy's
        step that applies it to the global model (server_step.py); `controls`: SCAFFOLD's control
        variates (scaffold.py), None for every other strategy; `initial`: the model every node can
        rebuild from the seed (task.initial_state), where error feedback's replicas start (link.py)."""
        super().__init__(**kwargs)
        self.aggregation, self.trim_fraction = aggregation, trim_fraction
        self.limits = limits or (lambda: ReplyLimits((2**31,) * max(expected_nodes, 1)))
        self.checker: UpdateChecker | None = None
        self.seed = seed  # draws the sampled partitions of each round
        self.expected_nodes = expected_nodes  # the federation's size: round 1 waits for it
        # What travels each way, round by round (a plain codec: that codec both ways).
        self.plan = codec if isinstance(codec, LinkPlan) else LinkPlan(codec, codec, error_feedback)
        self.codec = self.plan.up  # the uplink's codec after any warm-up
        self.step = ServerStep(server)  # `strategy`: how the aggregated update moves the model
        self.controls = controls
        self.link = ServerLink(self.plan.down, self.plan.feedback, initial)
        self.schedule = schedule
        self.min_clients_fraction = min_clients_fraction
        self.round_timeout_s = round_timeout_s
        self.cost_per_mb = cost_per_mb
        self.global_state: State | None = None
        self.stats = RoundStats()
        self.partitions: dict[int, int] = {}  # node id -> partition, learnt from its replies
        self._nodes_checked = False  # await_nodes has passed
        self._span = None  # this round's learning-rate span (SCAFFOLD checks each client's lr_sum against it)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Send the global model in the transport format (with error feedback: each node's update
        to its replica); remember the float32 base the deltas will be added to."""
        self.global_state = {k: v.numpy() for k, v in arrays.items()}
        up = self.plan.at(server_round)[1]
        if self.checker is None or self.checker.codec != up:  # a warm-up's codec, then the run's
            self.checker = UpdateChecker(up, self.global_state, self.limits())
        fp32 = FP32.encode(self.global_state, quiet=True).count_bytes()
        self.stats = RoundStats(fp32_record_bytes=fp32)
        connected = list(grid.get_node_ids())
        nodes = self.sample(connected, server_round, self.fraction_train, self.min_train_nodes)
        log.info("round %d: training %d of %d clients", server_round, len(nodes), len(connected))
        return self._with_controls(self._encoded(nodes, config, MessageType.TRAIN, self.global_state, server_round),
                                   server_round)

    def _with_controls(self, messages: list[Message], server_round: int) -> list[Message]:
        """SCAFFOLD: each train message also carries its node's correction `c - c_i` in the round's
        downlink codec, counted as traffic (none before the first controls exist: they are all 0)."""
        if self.controls is None or not self.controls.started:
            return messages
        codec = self.plan.at(server_round)[0]
        for msg in messages:
            record = codec.encode(self.controls.correction(self.partitions.get(msg.metadata.dst_node_id)), quiet=True)
            msg.content = RecordDict({**msg.content, CONTROL: record})  # the model's record is shared within a group
            self.stats.sent_bytes += record.count_bytes()
        return messages

    def server_state(self) -> dict[str, dict[str, np.ndarray]]:
        """What the checkpoint keeps of the strategy: the server optimizer's state and SCAFFOLD's controls."""
        return {**self.step.state(), **(self.controls.state() if self.controls is not None else {})}

    def load_server_state(self, saved: Mapping[str, Mapping[str, object]]) -> None:
        """Continue from a checkpoint's `server_state()` (`--resume`)."""
        self.step.load({k: v for k, v in saved.items() if not k.startswith(SCAFFOLD_PREFIX)})
        if self.controls is not None:
            self.controls.load(saved)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Evaluation messages carry the model in the transport format too, and count as traffic."""
        nodes = self.sample(list(grid.get_node_ids()), server_round, self.fraction_evaluate, self.min_evaluate_nodes)
        return self._encoded(nodes, config, MessageType.EVALUATE, {k: v.numpy() for k, v in arrays.items()}, server_round)

    def sample(self, connected: Iterable[int], server_round: int, fraction: float, minimum: int) -> list[int]:
        """`fraction` of the connected nodes (at least `minimum`), drawn by partition with the run
        seed and `server_round`. Nodes of unknown partition (they never answered the roll call)
        come last, by node ID."""
        nodes = sorted(connected, key=lambda n: (self.partitions.get(n, math.inf), n))
        size = sample_size(len(nodes), fraction, minimum)
        if size >= len(nodes):
            return nodes
        return random.Random(self.seed * 1_000_003 + server_round).sample(nodes, size)

    def roll_call(self, grid: Grid, timeout: float) -> None:
        """Ask the nodes whose partition is unknown which one they hold (only needed to sample)."""
        unknown = [n for n in grid.get_node_ids() if n not in self.partitions]
        if not unknown or (self.fraction_train >= 1 and self.fraction_evaluate in (0, 1)):
            return
        messages = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in unknown]
        for reply in grid.send_and_receive(messages, timeout=timeout):
            if not reply.has_error():
                self.partitions[reply.metadata.src_node_id] = partition_of(reply)

    def _encoded(self, nodes: list[int], config: ConfigRecord, message_type: str, state: State,
                 server_round: int) -> list[Message]:
        """One message per node with the model (or each node's update) encoded in the round's
        downlink codec, and the config."""
        config = ConfigRecord({**config})
        out: list[Message] = []
        for group, arrays, link in self.link.encode(state, nodes, self.plan.at(server_round)[0]):
            content = RecordDict({ARRAYS: arrays, CONFIG: config, **({LINK: link} if link is not None else {})})
            out += [Message(content=content, message_type=message_type, dst_node_id=n) for n in group]
            self.stats.sent_bytes += arrays.count_bytes() * len(group)
            self.stats.messages_sent += len(group)
        return out

    def _timeout(self, budget: TimeBudget) -> float:
        """`round-timeout-s`, else what is left of the budget, so a hung client never holds the run
        past it. The first round, which always runs (start-up included: Ray or the SuperNodes'
        ClientApp processes, data decoding), may take the whole budget of its own, and at least
        FIRST_ROUND_MIN_S whatever `round-timeout-s` says, since nobody can tell a cold start's
        length in advance; later rounds start only with at least their length left (the stop rule)."""
        first = budget.longest_round <= 0
        if self.round_timeout_s > 0:
            return max(self.round_timeout_s, FIRST_ROUND_MIN_S) if first else self.round_timeout_s
        if budget.limit_s is None:
            return NO_LIMIT_TIMEOUT_S
        return max(budget.remaining(), 1.0) + (FIRST_ROUND_GRACE_S if first else 0.0)

    def _exchange(self, grid: Grid, messages: list[Message], timeout: float) -> Exchange:
        """Send and wait; record who failed and why; the link forgets the replicas of those nodes."""
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        by_node = {m.metadata.src_node_id: m for m in replies}
        good, failures = [], []
        for msg in messages:
            node = msg.metadata.dst_node_id
            reply = by_node.get(node)
            if reply is not None and not reply.has_error():
                good.append(reply)
                continue
            error = reply_error(reply) if reply is not None else f"no reply within {timeout:.0f} s"
            failures.append({"node": node, "partition": self.partitions.get(node), "error": error})
            log.warning("client on node %s (partition %s) failed: %s", node, self.partitions.get(node), error)
        self.link.forget([f["node"] for f in failures])
        return Exchange(len(messages), good, failures)

    def await_nodes(self, grid: Grid, budget: TimeBudget) -> None:
        """Before the first round, make sure the federation is the one the run config describes.

        Simulation (`flwr run` on a local or `--simulation` SuperLink: the Grid is Flower's
        InMemoryGrid): every simulated node exists from the start, registered in one burst while
        the ServerApp starts, so the count is read once it has settled (about a second), and one
        that differs from `num-supernodes` is a `FederationMismatch` naming both numbers and what
        to write: waiting could never change it. Deployment: SuperNodes connect one by one, so
        wait (at most the first round's timeout) for `num-supernodes` of them; starting with fewer
        than `min-clients-fraction` of them is an error naming how many came. Runs once; `run`
        calls it too."""
        if self._nodes_checked:
            return
        if is_simulation(grid):
            connected = settled_node_count(grid)
            if connected != self.expected_nodes:
                raise FederationMismatch(
                    f"the simulated federation has {connected} SuperNodes but num-supernodes is "
                    f"{self.expected_nodes}: run with -c num-supernodes={connected}, or simulate "
                    f"{self.expected_nodes} with --federation-config num-supernodes={self.expected_nodes}")
            log.info("simulation: %d SuperNodes, as num-supernodes says", connected)
            self._nodes_checked = True
            return
        needed = max(1, math.ceil(self.min_clients_fraction * self.expected_nodes - 1e-9))
        deadline = time.monotonic() + self._timeout(budget)
        last_logged: tuple[int, float] | None = None
        while (connected := len(list(grid.get_node_ids()))) < self.expected_nodes and time.monotonic() < deadline:
            if last_logged is None or last_logged[0] != connected or time.monotonic() - last_logged[1] >= 30:
                log.info("waiting for nodes: %d of %d connected", connected, self.expected_nodes)
                last_logged = (connected, time.monotonic())
            time.sleep(2)
        if connected < needed:
            raise ClientsFailed(f"only {connected} of {self.expected_nodes} nodes connected within "
                                f"{self._timeout(budget):.0f} s (min-clients-fraction {self.min_clients_fraction:g})")
        self._nodes_checked = True

    def _accept(self, server_round: int, phase: str, exchange: Exchange) -> None:
        answered = len(exchange.replies)
        needed = max(1, math.ceil(self.min_clients_fraction * exchange.asked - 1e-9))
        if answered < needed:
            first = exchange.failures[0]["error"] if exchange.failures else "no client was asked"
            raise ClientsFailed(f"round {server_round} {phase}: {answered} of {exchange.asked} clients answered "
                                f"(min-clients-fraction {self.min_clients_fraction:g} needs {needed}); {first}")

    def check_train(self, exchange: Exchange) -> tuple[CheckedRound, Exchange]:
        """Every train reply through the checks (checks.py); a refused one is that client's failure,
        and the link forgets its node's replica as for any failure."""
        checked = self.checker.round(exchange.replies, self.partitions)
        for failure in checked.failures:
            log.warning("client on node %s (partition %s) %s", failure["node"], failure["partition"], failure["error"])
        self.link.forget([f["node"] for f in checked.failures])
        self.stats.received_bytes = sum(m.content.array_records[ARRAYS].count_bytes() for m in exchange.replies
                                        if ARRAYS in m.content.array_records)
        return checked, Exchange(exchange.asked, list(checked.updates), exchange.failures + checked.failures)

    def check_evaluate(self, exchange: Exchange) -> tuple[list[EvalReport], Exchange]:
        reports, failures = [], list(exchange.failures)
        for msg in exchange.replies:
            try:
                reports.append(self.checker.eval_reply(msg))
            except Refused as exc:
                failures.append({"node": msg.metadata.src_node_id, "partition": self.partitions.get(msg.metadata.src_node_id),
                                 "error": f"refused: {exc}"})
                log.warning("client on node %s evaluation refused: %s", msg.metadata.src_node_id, exc)
        return reports, Exchange(exchange.asked, reports, failures)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord, dict[str, float]]:
        """Flower's hook: check the replies, then `aggregate_checked`."""
        checked, _ = self.check_train(Exchange(0, list(replies), []))
        return self.aggregate_checked(server_round, checked)

    def aggregate_checked(self, server_round: int, checked: CheckedRound) -> tuple[ArrayRecord, dict[str, float]]:
        """The example-weighted mean of the decoded float32 deltas (codes are never averaged),
        applied to the float32 base. An aggregate with NaN or Inf is refused (`NonFiniteModel`)."""
        self.partitions.update({u.node: u.report.partition for u in checked.updates})
        only = [u.report for u in checked.updates]
        self.stats.clients = len(only)
        self.stats.partitions = tuple(r.partition for r in only)
        self.stats.steps, self.stats.images = tuple(r.train_steps for r in only), tuple(r.train_images for r in only)
        self.stats.compute = tuple(sorted({r.compute for r in only}))
        self.stats.weights_capped, self.stats.statistics_clipped = checked.capped, checked.clipped
        update = aggregate(self.aggregation, [u.delta for u in checked.updates], checked.weights, self.trim_fraction)
        new_state = nonnegative_variances(self.step.apply(server_round, self.global_state, update))
        if not all(np.isfinite(v).all() for v in new_state.values() if np.issubdtype(v.dtype, np.floating)):
            raise NonFiniteModel(f"round {server_round}: the aggregate of {len(only)} update(s) holds NaN or Inf; "
                                 "refused (the last good round's model is checkpoint.pt)")
        if self.controls is not None:
            self.controls.update(self._plausible([(u.report, u.delta) for u in checked.updates], server_round))
        metrics = weighted(only, ("train_loss", "train_accuracy"))
        metrics.update(train_images=sum(r.train_images for r in only), train_seconds=sum(r.train_seconds for r in only),
                       train_steps=sum(r.train_steps for r in only), planned_steps=sum(r.planned_steps for r in only),
                       lr_last=only[0].lr_last)
        return ArrayRecord({k: _array(v) for k, v in new_state.items()}), metrics

    def _plausible(self, updates: list[tuple[TrainReport, State]], server_round: int) -> list[tuple[int, State, float]]:
        """SCAFFOLD's inputs from the checked updates: a client's `lr_sum` must lie between its steps
        times the smallest and the largest learning rate of the round's span (a false small one would
        inflate its control by delta / lr_sum); one outside is left out of the controls, and logged.
        A client the deadline cut ran its span on to the schedule's end (`train`), so its smallest
        rate is the end's."""
        span, high = self._span, self.schedule.peak
        kept = []
        for report, delta in updates:
            steps = report.train_steps
            if span is None:
                low = high
            else:
                stop = span.stop if steps >= report.planned_steps else max(span.stop, self.schedule.end)
                low = min(self.schedule.lr_at(span.start), self.schedule.lr_at(stop))
            if steps >= 1 and low * steps * (1 - 1e-6) <= report.lr_sum <= high * steps * (1 + 1e-6):
                kept.append((report.partition, delta, report.lr_sum))
            else:
                log.warning("round %d: partition %s reports lr_sum %.3g for %d steps (expected %.3g-%.3g); "
                            "left out of SCAFFOLD's controls", server_round, report.partition, report.lr_sum, steps,
                            low * steps, high * steps)
        return kept

    def run(
        self,
        grid: Grid,
        state: State,
        num_rounds: int,
        budget: TimeBudget,
        run_config: Mapping[str, object],
        evaluate_fn: Callable[[State], Mapping[str, float]],
        on_round: Callable[[dict, State], None],
        first_round: int = 1,
        schedule_position: float | None = None,
    ) -> Outcome:
        """Rounds `first_round`..`num_rounds`, or until the budget ends; `on_round` persists each
        finished round. A resumed run passes the round and the schedule position it stopped at."""
        arrays = ArrayRecord({k: _array(v) for k, v in state.items()})
        planner = RoundPlanner(self.schedule, num_rounds, budget.rounds_that_fit, schedule_position)
        cumulative = cumulative_fp32 = failures_total = 0
        if first_round > num_rounds:
            return Outcome(state, num_rounds, "num_server_rounds", False)
        self.await_nodes(grid, budget)
        for rnd in range(first_round, num_rounds + 1):
            budget.start_round(rnd)
            train_started = budget.clock()
            self.roll_call(grid, min(self._timeout(budget), ROLL_CALL_MAX_S))
            instruction = Instruction(rnd, planner.span(rnd), budget.train_deadline())
            self._span = instruction.span
            config = ConfigRecord({**run_config, **instruction.to_config()})
            exchanged = budget.clock()
            exchange = self._exchange(grid, self.configure_train(rnd, arrays, config, grid), self._timeout(budget))
            replied, replied_wall = budget.clock(), budget.wall()
            checked, exchange = self.check_train(exchange)
            self._accept(rnd, "train", exchange)
            arrays, train_metrics = self.aggregate_checked(rnd, checked)
            failures = [dict(f, phase="train") for f in exchange.failures]
            train_phase = budget.clock() - train_started
            client_eval: dict[str, float] = {}
            if self.fraction_evaluate > 0:
                evaluation = self._exchange(grid, self.configure_evaluate(rnd, arrays, ConfigRecord(dict(config)), grid),
                                            self._timeout(budget))
                reports, evaluation = self.check_evaluate(evaluation)
                self._accept(rnd, "evaluate", evaluation)
                client_eval = {f"client_eval_{k}": v for k, v in weighted(reports, ("loss", "accuracy")).items()}
                failures += [dict(f, phase="evaluate") for f in evaluation.failures]
            state = {k: v.numpy() for k, v in arrays.items()}
            cut = train_metrics["train_steps"] < train_metrics["planned_steps"]  # the deadline stopped training
            end = budget.finish_round(num_rounds, lambda: evaluate_fn(state), last=cut)
            server = end.evaluation
            wire = self.stats.sent_bytes + self.stats.received_bytes
            cumulative += wire
            fp32_equivalent = self.stats.fp32_record_bytes * (self.stats.clients + self.stats.messages_sent)
            cumulative_fp32 += fp32_equivalent
            failures_total += len(failures)
            record = {
                "round": rnd,
                **({"server_test_loss": server["loss"], "server_test_accuracy": server["accuracy"]} if server else {}),
                **{f"client_{k}": v for k, v in train_metrics.items()},
                **client_eval,
                "lr_span": [instruction.span.start, instruction.span.stop],
                **({"deadline_margin_s": round(budget.margin(), 3), "deadline_cut": cut}
                   if instruction.deadline is not None else {}),
                "clients_asked": exchange.asked,
                "clients": self.stats.clients,
                "partitions": list(self.stats.partitions),
                "partition_train_steps": list(self.stats.steps),
                "partition_train_images": list(self.stats.images),
                "client_failures": failures,
                "weights_capped": self.stats.weights_capped,
                "statistics_clipped": self.stats.statistics_clipped,
                "client_compute": list(self.stats.compute),
                "round_seconds": round(end.seconds + (end.eval_seconds or 0.0), 3),
                **({"server_eval_seconds": round(end.eval_seconds, 3)} if end.eval_seconds is not None else {}),
                "train_phase_seconds": round(train_phase, 3),
                "elapsed_seconds": round(budget.elapsed(), 3),
                "bytes_sent": self.stats.sent_bytes,
                "bytes_received": self.stats.received_bytes,
                **dict(zip(("transport_down", "transport_up"), self.plan.wires(rnd))),  # the codecs this round used
                "cumulative_mb": cumulative / MB,
                "cumulative_cost": cumulative / MB * self.cost_per_mb,
                "fp32_equivalent_bytes": fp32_equivalent,
                "bytes_ratio_to_fp32": wire / fp32_equivalent,
            }
            log.info("round %d: %s, lr %.2e at the end, %.1f s, %.2f MB on the wire%s", rnd,
                     f"test acc {server['accuracy']:.4f}" if server else "not evaluated", train_metrics["lr_last"],
                     record["round_seconds"], wire / MB, f", {len(failures)} client failure(s)" if failures else "")
            on_round(record, state, self.server_state())
            # after training: the upload (from the clients' finished_at), then aggregation,
            # evaluations and the save; the next deadlines keep a margin for it
            budget.after_training.append(after_training_seconds([u.report for u in checked.updates], replied_wall,
                                                                exchanged, replied, budget.clock()))
            if cut:  # the budget's end came inside this round: its model is the run's
                log.info("round %d: training stopped at the round's deadline (%d of %d planned steps)", rnd,
                         train_metrics["train_steps"], train_metrics["planned_steps"])
            if (end.last and rnd < num_rounds) or cut:
                return Outcome(state, rnd, "time_limit", True, failures_total)
        return Outcome(state, num_rounds, "num_server_rounds", False, failures_total)


def after_training_seconds(reports: list[TrainReport], replied_wall: float, exchanged: float, replied: float,
                           ended: float) -> float:
    """What a round spent after its clients stopped training: the upload (the replies' arrival less
    the last client's `finished_at`, both Unix time), then aggregation, evaluations and the save
    (`replied` to `ended` on the server's clock). Without `finished_at` (0: an older client), the
    exchange less the slowest client's training, which also counts the clients' start-up (round 1:
    a cold start) and so over-states it."""
    stamps = [r.finished_at for r in reports]
    if stamps and all(t > 0 for t in stamps):
        upload = replied_wall - max(stamps)
    else:
        upload = replied - exchanged - max((r.train_seconds for r in reports), default=0.0)
    return max(0.0, upload) + (ended - replied)


def _array(value) -> Array:
    return Array(contiguous(value))
