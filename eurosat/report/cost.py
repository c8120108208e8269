"""Communication cost of federated training: what sending a model costs, measured or what-if.

Two sources, always labelled:
- measured: a training run's own record (`metrics.json` in its run folder) says how many bytes
  really crossed the wire (every round's `bytes_sent` + `bytes_received`), in the transport the
  run used; that figure belongs to the precision of the same name (fp32 for a plain run);
- what-if: any other figure. With a run, its traffic re-sent in another precision: the run's
  bytes as FP32 (`fp32_equivalent_bytes`, what the same messages weigh in fp32) x this model's
  file bytes / the FP32 file's. Without one, the seed's formula: each round every client
  downloads the global model and uploads its update, so one model's bytes travel
  2 x clients times per round.
MB = 1024**2 bytes, as in the original reports and the run records.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from eurosat.fl.config import link_wire
from eurosat.fl.record import METRICS_FILE, read_status
from eurosat.report.runs import problem

MB = 1024 * 1024
MEASURED, WHAT_IF = "measured", "what-if"
WHAT_IF_CLIENTS = WHAT_IF_ROUNDS = 10  # the seed's what-if, when neither a run nor --clients/--rounds says otherwise


@dataclass(frozen=True)
class Cost:
    model_mb: float
    per_round_mb: float
    total_mb: float
    total_cost: float
    total_bytes: float = 0.0
    source: str = WHAT_IF  # MEASURED or WHAT_IF
    basis: str = "clients x rounds"  # "run" (a run's traffic) or "clients x rounds" (the seed's formula)
    label: str = ""  # one line for a reader: what this figure is

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def communication_cost(model_bytes: int, clients: int, rounds: int, cost_per_mb: float) -> Cost:
    """The what-if: `model_bytes` down and up, by `clients` clients, for `rounds` rounds."""
    model_mb = model_bytes / MB
    per_round = model_mb * 2 * clients
    return Cost(model_mb, per_round, per_round * rounds, per_round * rounds * cost_per_mb,
                total_bytes=float(model_bytes) * 2 * clients * rounds, source=WHAT_IF, basis="clients x rounds",
                label=f"what-if: {clients} client{'s' if clients != 1 else ''} x {rounds} round{'s' if rounds != 1 else ''}")


def savings(cost: Cost, baseline: Cost) -> dict[str, float]:
    saved = baseline.total_cost - cost.total_cost
    return {"savings_dollars": saved,
            "savings_percent": 100.0 * saved / baseline.total_cost if baseline.total_cost else 0.0}


@dataclass(frozen=True)
class RunTraffic:
    """What one training run really sent, read from its `metrics.json`."""

    metrics: str  # the metrics.json read
    state: str  # completed, interrupted, ... (status.json), "unknown" without one
    transport: str  # the codec on the wire both ways (config `transport`): fp32, fp16, int8, ...; `up/down` where they differ
    wire: str  # the transport as it ran: int4+ef with error feedback
    precision: str  # what the run trained in (config `precision`)
    rounds: int
    clients_min: int | None  # clients whose updates were aggregated, fewest and most in a round
    clients_max: int | None
    total_bytes: int  # bytes_sent + bytes_received over every recorded round
    fp32_equivalent_bytes: float | None  # the same messages in fp32; None in records that predate it
    cost_per_mb: float | None  # the run's own price (config `cost-per-mb`)
    total_cost: float | None  # what the run's record says it cost (last round's `cumulative_cost`)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def clients_text(self) -> str:
        if self.clients_min is None:
            return ""
        n = f"{self.clients_min}" if self.clients_min == self.clients_max else f"{self.clients_min}-{self.clients_max}"
        return f"{n} client{'s' if self.clients_max != 1 else ''} a round"

    @property
    def summary(self) -> str:
        """'12 rounds, 1 client a round, 41.9 MB sent in fp32': the run's traffic in one phrase."""
        parts = [f"{self.rounds} round{'s' if self.rounds != 1 else ''}", self.clients_text,
                 f"{self.total_bytes / MB:.1f} MB sent in {self.wire}"]
        if self.state not in ("completed", "completed_with_failures"):
            parts.append(f"run {self.state}")
        return ", ".join(p for p in parts if p)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def read_run_traffic(folder: Path) -> RunTraffic | None:
    """The traffic of the training run whose folder is `folder`, or None where `folder` holds no
    run record (no metrics.json, or another tool's). A record that cannot be used is a one-line
    ValueError: its figures would be the report's, so they are not guessed."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return None
    hint = "; give --clients and --rounds for a what-if cost instead"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: the run record beside the checkpoint is not readable JSON ({type(exc).__name__}){hint}") from None
    if isinstance(metrics, dict) and "rounds" not in metrics and "config" not in metrics:
        return None  # another tool's metrics.json, not a training run's
    reason = problem(metrics)
    if reason:
        raise ValueError(f"{path}: the run record beside the checkpoint is not usable ({reason}){hint}")
    rounds = metrics.get("rounds") or []
    if not rounds:
        raise ValueError(f"{path}: the run beside the checkpoint completed no round, so sent nothing to measure{hint}")
    config, summary = metrics.get("config", {}), metrics.get("summary", {})
    transport = str(config.get("transport", "fp32"))
    up, down = str(config.get("transport-up") or transport), str(config.get("transport-down") or transport)
    transport = up if up == down else f"{up}/{down}"  # no precision's name: its cost is then a what-if
    total = sum(int(r["bytes_sent"]) + int(r["bytes_received"]) for r in rounds)
    fp32_equivalent = [_number(r.get("fp32_equivalent_bytes")) for r in rounds]
    if all(v is not None for v in fp32_equivalent):
        fp32_bytes = float(sum(fp32_equivalent))
    elif transport == "fp32":
        fp32_bytes = float(total)
    elif _number(summary.get("bytes_ratio_to_fp32")):
        fp32_bytes = total / float(summary["bytes_ratio_to_fp32"])
    else:
        fp32_bytes = None
    clients = [r["clients"] for r in rounds if isinstance(r.get("clients"), int) and not isinstance(r["clients"], bool)]
    return RunTraffic(
        metrics=str(path.resolve()), state=str(read_status(path.parent).get("state", "unknown")), transport=transport,
        wire=link_wire(config),
        precision=str(config.get("precision", "fp32")), rounds=len(rounds),
        clients_min=min(clients) if len(clients) == len(rounds) else None,
        clients_max=max(clients) if len(clients) == len(rounds) else None,
        total_bytes=total, fp32_equivalent_bytes=fp32_bytes, cost_per_mb=_number(config.get("cost-per-mb")),
        total_cost=_number(rounds[-1].get("cumulative_cost")))


def reference(traffic: RunTraffic, precisions: list[str] | tuple[str, ...]) -> tuple[float, str]:
    """(bytes, precision) every what-if of this run scales from: its traffic as FP32 where the
    record says what that is, else its real traffic in its own transport (which must then be
    among `precisions`, for its file size). A one-line ValueError where there is neither."""
    if traffic.fp32_equivalent_bytes is not None:
        return traffic.fp32_equivalent_bytes, "fp32"
    if traffic.transport in precisions:
        return float(traffic.total_bytes), traffic.transport
    raise ValueError(f"{traffic.metrics}: the run sent {traffic.transport} and its record predates "
                     f"fp32_equivalent_bytes, so its traffic cannot be re-priced per precision; add "
                     f"{traffic.transport} to --precisions, or give --clients and --rounds for a what-if cost")


def run_cost(name: str, model_bytes: int, traffic: RunTraffic, reference_bytes: float, reference_precision: str,
             reference_model_bytes: int, cost_per_mb: float) -> Cost:
    """Precision `name`'s cost over the run's traffic: measured where `name` is what the run sent
    on the wire, else the reference traffic (see `reference`) scaled by this model's file bytes
    over the reference precision's."""
    if name == traffic.transport:
        total = float(traffic.total_bytes)
        source, label = MEASURED, f"measured: the run's traffic ({traffic.summary})"
    else:
        ratio = model_bytes / reference_model_bytes
        total = reference_bytes * ratio
        source = WHAT_IF
        label = (f"what-if: the run's {traffic.rounds} round{'s' if traffic.rounds != 1 else ''} re-sent in {name} "
                 f"(x{ratio:.3f} of its {reference_precision} bytes)")
    total_mb = total / MB
    return Cost(model_bytes / MB, total_mb / traffic.rounds, total_mb, total_mb * cost_per_mb,
                total_bytes=total, source=source, basis="run", label=label)
