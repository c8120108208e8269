"""The run configuration: one typed, validated view of `[tool.flwr.app.config]`.

Defaults live only in `pyproject.toml` (and `configs/*.toml` overrides); this module checks
them. Every check raises `ConfigError` with one line naming the key and the allowed values,
so a bad run fails before any data is loaded or any client trains.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from eurosat.data.augment import AUGMENTATIONS
from eurosat.data.loading import DATA_ENV, HUB_DATASET, PARTITIONERS
from eurosat.quant.recipe import PrecisionRecipe
from eurosat.train.schedule import SCHEDULES, LrSchedule
from eurosat.train.loop import LOSSES, OPTIMIZERS, LocalTraining
from eurosat.fl import hooks
from eurosat.fl.codecs import CODECS, Codec, wire_name
from eurosat.fl.link import LinkPlan
from eurosat.fl.robust import AGGREGATIONS, trimmed_count
from eurosat.fl.server_step import ADAPTIVE, STRATEGIES, ServerOptimizer

# Uplink codecs whose decoded updates are mostly zeros or one magnitude per channel: a median or a
# trimmed mean of them is not an estimate of anything.
SPARSE_OR_SIGN = ("sign", "topk")

PROJECT_ENV = "EUROSAT_PROJECT_DIR"
PROJECT_DIR = Path(__file__).resolve().parents[2]


# Keys and variables of earlier versions: each is a one-line error that says what to write instead.
REMOVED_KEYS = {"use-quantization": "transport=\"fp16\" (the updates travel as float16)"}
REMOVED_ENV = {"QUANTIZATION_BITS": "-c weight-bits=N (the run config is the one way to set a bit-width)"}


def check_environment(environ: Mapping[str, str] = os.environ) -> None:
    """A variable an earlier version read is an error, not silently ignored."""
    for name in sorted(set(environ) & set(REMOVED_ENV)):
        raise ConfigError(f"${name} is no longer read; unset it and use {REMOVED_ENV[name]}")


ENGINES = ("simulation", "deployment")  # which Flower engine ran the run (set by the launcher)


def sample_size(nodes: int, fraction: float, minimum: int = 1) -> int:
    """How many of `nodes` clients a round samples at `fraction` (the sampler and the launcher's
    CPU share both use this rule)."""
    return max(int(nodes * fraction), minimum)


class ConfigError(ValueError):
    """A run-config value that is out of range; the message is one line for the user."""


@dataclass(frozen=True)
class RunConfig:
    num_server_rounds: int
    time_limit_min: float
    num_supernodes: int
    precision: str
    weight_bits: int
    activation_bits: int
    transport: str
    transport_error_feedback: bool
    transport_up: str
    transport_down: str
    topk_fraction: float
    transport_warmup_rounds: int
    strategy: str
    server_lr: float
    server_momentum: float
    tau: float
    beta_1: float
    beta_2: float
    proximal_mu: float
    cost_per_mb: float
    data: str
    partitioner: str
    dirichlet_alpha: float
    fraction_train: float
    fraction_evaluate: float
    server_eval_every: int
    local_test_fraction: float
    min_clients_fraction: float
    round_timeout_s: float
    max_weight_share: float
    max_update_norm: float
    aggregation: str
    trim_fraction: float
    check_replies: bool
    test_hook: str
    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    momentum: float
    lr_schedule: str
    lr_warmup_rounds: int
    lr_floor: float
    augment: str
    local_optimizer_state: str
    local_loss: str
    seed: int
    output_dir: str
    run_dir: str
    resume: bool
    engine: str
    wandb_project: str

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], environ: Mapping[str, str] = os.environ) -> "RunConfig":
        """Build from run-config keys (`num-server-rounds`, ...); unknown or missing keys are errors.

        Precedence, the one rule: the run config (`-c`, a preset, pyproject.toml) wins; `$EUROSAT_DATA`
        fills in `data` only where the run config leaves it at the default (the Hub's name), since
        plain `flwr run` cannot tell a typed default from an untyped one. The server resolves it once
        and sends the result to clients with `environ={}`.
        """
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        check_environment(environ)
        values = dict(values)
        for key in sorted(set(values) & set(REMOVED_KEYS)):
            if values.pop(key) not in (False, "false"):  # a run folder of an earlier version holds `false`
                raise ConfigError(f"{key}: no longer a run-config key; write {REMOVED_KEYS[key]} instead")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown run-config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        missing = sorted(set(known) - set(values))
        if missing:
            raise ConfigError(f"missing run-config key(s): {', '.join(missing)}")
        kwargs = {f.name: _coerce(key, values[key], f.type) for key, f in known.items()}
        if kwargs["test_hook"] and environ and not hooks.enabled(environ):  # a client passes environ={}
            raise ConfigError(f"test-hook={kwargs['test_hook']!r} is for tests and benchmarks only: it needs "
                              f"${hooks.HOOKS_ENV}=1; leave test-hook empty in a real run")
        if not kwargs["check_replies"] and environ and not hooks.enabled(environ):
            raise ConfigError(f"check-replies=false (no checks of the clients' replies) is the attack benchmark's "
                              f"baseline only: it needs ${hooks.HOOKS_ENV}=1")
        if environ.get(DATA_ENV) and kwargs["data"] == HUB_DATASET:
            kwargs["data"] = environ[DATA_ENV]
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_mapping(self) -> dict[str, object]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def validate(self) -> None:
        if problem := self.recipe.problem():
            raise ConfigError(problem)
        self._check_link()
        _choice("partitioner", self.partitioner, PARTITIONERS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr-schedule", self.lr_schedule, SCHEDULES)
        _choice("augment", self.augment, AUGMENTATIONS)
        _choice("engine", self.engine, ENGINES)
        _choice("local-optimizer-state", self.local_optimizer_state, ("reset", "keep"))
        _choice("local-loss", self.local_loss, LOSSES)
        if not self.output_dir.strip():
            raise ConfigError("output-dir: empty; give the folder runs are written under (relative to the project, "
                              "e.g. outputs, or absolute)")
        if self.resume and not self.run_dir:
            raise ConfigError("resume=true needs run-dir: the folder of the run to continue")
        if self.time_limit_min < 0:
            raise ConfigError(f"time-limit-min: must be >= 0 (0 = no limit), got {self.time_limit_min}")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"fraction-train: must be in (0, 1], got {self.fraction_train}")
        if not 0 <= self.fraction_evaluate <= 1:
            raise ConfigError(f"fraction-evaluate: must be in [0, 1], got {self.fraction_evaluate}")
        if not 0 <= self.local_test_fraction < 1:
            raise ConfigError(f"local-test-fraction: must be in [0, 1), got {self.local_test_fraction}")
        if self.fraction_evaluate > 0 and self.local_test_fraction == 0:
            raise ConfigError("fraction-evaluate > 0 needs local-test-fraction > 0 (e.g. 0.2): clients evaluate "
                              "on a held-out part of their partition")
        if not 0 < self.min_clients_fraction <= 1:
            raise ConfigError(f"min-clients-fraction: must be in (0, 1], got {self.min_clients_fraction}")
        if self.round_timeout_s < 0:
            raise ConfigError(f"round-timeout-s: must be >= 0 (0 = what is left of the budget), got {self.round_timeout_s}")
        if not 0 < self.max_weight_share <= 1:
            raise ConfigError(f"max-weight-share: must be in (0, 1] (1 = no cap), got {self.max_weight_share}")
        if self.max_update_norm < 0:
            raise ConfigError(f"max-update-norm: must be >= 0 (0 = no check), got {self.max_update_norm}")
        self._check_aggregation()
        self._check_strategy()
        try:
            hooks.parse_hooks(self.test_hook)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"dirichlet-alpha: must be > 0, got {self.dirichlet_alpha}")
        for key, most in INT_LIMITS.items():
            if not 1 <= getattr(self, key) <= most:
                raise ConfigError(f"{key.replace('_', '-')}: must be in [1, {most}], got {getattr(self, key)}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed: must be in [0, 2^32 - 1] (what numpy and torch accept), got {self.seed}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.cost_per_mb < 0:
            raise ConfigError(f"cost-per-mb: must be >= 0, got {self.cost_per_mb}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight-decay: must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum: must be in [0, 1), got {self.momentum}")
        if self.lr_warmup_rounds < 0:
            raise ConfigError(f"lr-warmup-rounds: must be >= 0, got {self.lr_warmup_rounds}")
        if not 0 <= self.lr_floor <= 1:
            raise ConfigError(f"lr-floor: must be in [0, 1] (a fraction of lr), got {self.lr_floor}")
        if self.wandb_project and importlib.util.find_spec("wandb") is None:
            raise ConfigError(f"wandb-project={self.wandb_project!r} needs wandb: pip install wandb, "
                              "or leave wandb-project empty")

    @property
    def clients_per_round(self) -> int:
        """How many of `num-supernodes` clients train in a round."""
        return sample_size(self.num_supernodes, self.fraction_train)

    def lr_schedule_plan(self) -> LrSchedule:
        return LrSchedule(self.lr_schedule, self.lr, self.lr_floor, self.lr_warmup_rounds)

    def local_training(self) -> LocalTraining:
        """The client's local recipe: the one place the training keys are read."""
        return LocalTraining(self.local_epochs, self.batch_size, self.optimizer, self.weight_decay, self.momentum,
                             self.augment, self.lr_schedule_plan(), self.local_optimizer_state == "keep",
                             self.proximal_mu if self.strategy == "fedprox" else 0.0, self.local_loss == "balanced")

    def server_optimizer(self) -> ServerOptimizer:
        """The strategy's server step and its keys: the one place they are read."""
        return ServerOptimizer(self.strategy, self.server_lr, self.server_momentum, self.tau, self.beta_1, self.beta_2)

    @property
    def recipe(self) -> PrecisionRecipe:
        """What `precision` and the bit-widths mean: resolved here, consumed everywhere else."""
        return PrecisionRecipe(self.precision, self.weight_bits, self.activation_bits)

    @property
    def label(self) -> str:
        """Folder name under the output root: what was really trained and sent (`fp32-txint4-ef`;
        directions that differ: `fp32-txup-sign-ef-down-fp16`), and the strategy other than FedAvg
        (`fp32-fedadam`)."""
        up, down = link_wires(self.to_mapping())
        strategy = "" if self.strategy == "fedavg" else f"-{self.strategy}"  # runs of two strategies never share a folder
        if up == down == "fp32":
            return self.recipe.label + strategy
        wire = up if up == down else f"up-{up}-down-{down}"
        return f"{self.recipe.label}-tx{wire}".replace("+", "-") + strategy

    # --- the link (issue 30): `transport` sets both directions, `transport-up` / `-down` override one.
    @property
    def uplink(self) -> str:
        """The codec name node -> server: `transport-up`, else `transport`."""
        return self.transport_up or self.transport

    @property
    def downlink(self) -> str:
        """The codec name server -> node: `transport-down`, else `transport`."""
        return self.transport_down or self.transport

    def codec(self, name: str) -> Codec:
        """A registry codec with this run's codec options (`topk-fraction`)."""
        return CODECS[name].configured(topk_fraction=self.topk_fraction)

    def link_plan(self) -> LinkPlan:
        """What travels each way in each round: read here once, used by both apps."""
        return LinkPlan(self.codec(self.downlink), self.codec(self.uplink), self.transport_error_feedback,
                        self.transport_warmup_rounds)

    @property
    def wire(self) -> str:
        """The link as it runs after any warm-up: `int4+ef`, or `sign+ef up, fp16+ef down`."""
        return link_wire(self.to_mapping())

    def _check_aggregation(self) -> None:
        """A robust statistic needs something to trim, and dense updates to take it over."""
        _choice("aggregation", self.aggregation, AGGREGATIONS)
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"trim-fraction: must be in [0, 0.5) (Flower's FedTrimmedAvg beta), got {self.trim_fraction}")
        if self.aggregation == "trimmed-mean" and trimmed_count(self.clients_per_round, self.trim_fraction) < 1:
            raise ConfigError(f"aggregation=\"trimmed-mean\": trim-fraction {self.trim_fraction:g} of "
                              f"{self.clients_per_round} clients a round trims none; raise trim-fraction or fraction-train")
        if self.aggregation != "mean" and self.uplink in SPARSE_OR_SIGN:
            raise ConfigError(f"aggregation={self.aggregation!r} of {self.uplink} updates makes no sense (a coordinate-wise "
                              f"statistic of sparse or sign codes); use aggregation=\"mean\" or another transport-up")

    def _check_strategy(self) -> None:
        _choice("strategy", self.strategy, STRATEGIES)
        if self.strategy in ADAPTIVE and self.server_lr >= 1:
            raise ConfigError(f"strategy={self.strategy!r}: server-lr is its eta, and every weight moves by about eta "
                              f"each round, so {self.server_lr:g} wrecks the model; set server-lr below 1, e.g. 0.01 "
                              "(Flower's default is 0.1)")
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(f"server-momentum: must be in [0, 1), got {self.server_momentum}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau: must be in (0, 1] (FedOpt's adaptivity, e.g. 0.001), got {self.tau}")
        for key, value in (("beta-1", self.beta_1), ("beta-2", self.beta_2)):
            if not 0 <= value < 1:
                raise ConfigError(f"{key}: must be in [0, 1), got {value}")
        if not 0 <= self.proximal_mu <= 10:
            raise ConfigError(f"proximal-mu: must be in [0, 10] (FedProx's mu, e.g. 0.01), got {self.proximal_mu}")
        if self.strategy == "scaffold" and self.aggregation != "mean":
            raise ConfigError(f"strategy=\"scaffold\" with aggregation={self.aggregation!r}: its control variates are "
                              "means of every client's, which one bad client moves as much as it moves a mean; "
                              "use aggregation=\"mean\" or another strategy")

    def _check_link(self) -> None:
        _choice("transport", self.transport, tuple(CODECS))
        _choice("transport-up", self.transport_up, ("", *CODECS))
        _choice("transport-down", self.transport_down, ("", *CODECS))
        if not 0 < self.topk_fraction <= 1:
            raise ConfigError(f"topk-fraction: must be in (0, 1] (0.01 = 1 % of each tensor), got {self.topk_fraction}")
        if not 0 <= self.transport_warmup_rounds <= 1_000_000:
            raise ConfigError(f"transport-warmup-rounds: must be in [0, 1000000], got {self.transport_warmup_rounds}")
        if not 0 < self.server_lr <= 10:
            raise ConfigError(f"server-lr: must be in (0, 10] (1 = plain FedAvg), got {self.server_lr}")

    @property
    def time_limit_s(self) -> float | None:
        return self.time_limit_min * 60 if self.time_limit_min > 0 else None

    def output_root(self) -> Path:
        """Relative `output-dir` is taken against the project, not the SuperLink's cwd."""
        root = Path(self.output_dir).expanduser()
        if root.is_absolute():
            return root
        base = Path(os.environ.get(PROJECT_ENV) or _installed_project_dir() or Path.cwd())
        return (base / root).resolve()


def _installed_project_dir() -> Path | None:
    """The checkout this package was pip-installed from (editable), if any.

    `flwr run` executes a copy of the app under $FLWR_HOME/apps, so `__file__` is not the
    project; the editable install still records where the project lives.
    """
    if (PROJECT_DIR / "pyproject.toml").is_file() and "apps" not in PROJECT_DIR.parts[-2:]:
        return PROJECT_DIR
    try:
        import json
        from importlib.metadata import distribution

        url = json.loads(distribution("eurosat").read_text("direct_url.json") or "{}").get("url", "")
    except Exception:  # noqa: BLE001 - no installed distribution: fall back to cwd
        return None
    return Path(url.removeprefix("file://")) if url.startswith("file://") else None


def link_wires(values: Mapping[str, object]) -> tuple[str, str]:
    """(uplink, downlink) of a run config of any version as they ran after any warm-up (`sign+ef`,
    `topk0.01+ef`, `fp16`); keys an older record lacks take their defaults, a codec no registry
    knows keeps its name."""
    transport = str(values.get("transport", "fp32"))
    feedback = bool(values.get("transport-error-feedback", False))
    fraction = values.get("topk-fraction", 0.1)
    out = []
    for name in (str(values.get("transport-up") or transport), str(values.get("transport-down") or transport)):
        codec = CODECS.get(name)
        try:
            codec = codec.configured(topk_fraction=float(fraction)) if codec else None
        except (TypeError, ValueError):
            codec = None
        out.append(wire_name(codec.label, feedback and codec.lossy) if codec else wire_name(name, feedback))
    return out[0], out[1]


def link_wire(values: Mapping[str, object]) -> str:
    """One name for the link: `int4+ef` both ways, else `sign+ef up, fp16+ef down`."""
    up, down = link_wires(values)
    return up if up == down else f"{up} up, {down} down"


def _choice(key: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(map(str, allowed))}")


# Upper bounds of the count keys: far above any real run, low enough that a typo (1e30) is caught.
INT_LIMITS = {"num_server_rounds": 1_000_000, "num_supernodes": 100_000, "local_epochs": 10_000,
              "batch_size": 1_000_000, "server_eval_every": 1_000_000}


def _coerce(key: str, value: object, kind: object) -> object:
    """A run-config value as its field's type; a value of another kind is an error, never cast
    (`batch-size=true` is not 1, `data=[1, 2]` is not a path)."""
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if isinstance(value, (list, dict, tuple)) or (isinstance(value, bool) and kind != "bool"):
            raise TypeError
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            number = float(value)
        elif isinstance(value, str):
            return value
        else:  # `data = 5` in a TOML file is not the folder "5"
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: expected {kind}, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return number


def project_defaults(project: Path = PROJECT_DIR) -> dict[str, object]:
    """`[tool.flwr.app.config]` from pyproject.toml: the one source of defaults."""
    path = Path(project) / "pyproject.toml"
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
        return dict(table)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: no [tool.flwr.app.config] table: not a Flower app of this project") from None


_PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")  # flwr's own k=v pattern (flwr.common.config)


def override_pairs(override: str, repeats: bool = False) -> list[tuple[str, str]]:
    """The key=value pairs of one `--run-config` string, as Flower reads them. Flower drops any text
    that is not a pair (`num-server-rounds 5`, the rest of `'it's'`) without a word; here it is an
    error. So is a key given twice (Flower's "invalid format"), unless `repeats` (a script merging
    its own options with the user's, the later winning)."""
    pairs = _PAIR.findall(override)
    rest = _PAIR.sub(" ", override).split()
    if not pairs or rest:
        what = f"cannot read {' '.join(rest)!r} in it" if pairs else "expected a .toml file or key=value pairs"
        raise ConfigError(f"--run-config {override!r}: {what} (key=value, a value with spaces or "
                          "an apostrophe in double quotes: key=\"it's a b\")")
    keys = [key for key, _ in pairs]
    if not repeats and (repeated := sorted({key for key in keys if keys.count(key) > 1})):
        raise ConfigError(f"--run-config {override!r}: {', '.join(repeated)} given twice in one string; "
                          "give each key once (a later -c may override an earlier one)")
    return pairs


def _check_values(override: str) -> None:
    """Each value of a "k=v" string is a TOML value: Flower's own error names neither the key nor
    what it expects (`num-server-rounds=abc`)."""
    kinds = {f.name.replace("_", "-"): f.type for f in fields(RunConfig)}
    for key, raw in override_pairs(override):
        try:
            tomllib.loads(f"v = {raw}")
        except tomllib.TOMLDecodeError:
            kind = kinds.get(key)
            hint = "" if kind in ("int", "float", "bool") else f' (a string goes in double quotes: {key}="...")'
            raise ConfigError(f"--run-config {override!r}: {key}: expected {kind or 'a TOML value'}, "
                              f"got {raw!r}{hint}") from None


def load_run_config(overrides: list[str] | None = None, project: Path = PROJECT_DIR) -> RunConfig:
    """Defaults + `--run-config` overrides (TOML files or "k=v k=v" strings), as `flwr run` merges them."""
    return RunConfig.from_mapping(run_config_values(overrides, project))


def run_config_values(overrides: list[str] | None = None, project: Path = PROJECT_DIR) -> dict[str, object]:
    """The merged keys of `load_run_config`, not yet checked."""
    from flwr.common.config import parse_config_args

    values = project_defaults(project)
    for item in overrides or []:  # flwr takes one TOML file *or* k=v strings; merge both, in order
        if not item.endswith(".toml"):
            _check_values(item)
        try:
            values.update(parse_config_args([item]))
        except Exception as exc:  # noqa: BLE001 - flwr raises several types for unreadable overrides
            raise ConfigError(f"--run-config {item!r}: {getattr(exc, 'message', exc)}") from None
    return values


def to_override_string(values: Mapping[str, object]) -> str:
    """Render run-config values as one `flwr run --run-config` "k=v k=v" string."""
    import json

    def render(v: object) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    return " ".join(f"{k}={render(v)}" for k, v in values.items())
