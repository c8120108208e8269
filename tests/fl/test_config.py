import pytest

from eurosat.fl.config import ConfigError, load_run_config
from eurosat.fl.strategy import TimeBudget


def test_defaults_come_from_pyproject():
    cfg = load_run_config()
    assert (cfg.lr, cfg.batch_size, cfg.local_epochs, cfg.fraction_train, cfg.num_supernodes, cfg.seed) == (
        0.001, 32, 8, 0.1, 10, 42)
    assert (cfg.optimizer, cfg.lr_schedule, cfg.lr_warmup_rounds, cfg.lr_floor, cfg.augment) == (
        "adam", "cosine", 1, 0.01, "dihedral")
    assert cfg.precision == "fp32" and cfg.label == "fp32" and cfg.local_test_fraction == 0.0
    assert cfg.server_eval_every == 3


def test_the_original_recipe_is_kept_as_a_preset():
    cfg = load_run_config(["configs/original.toml"])
    assert (cfg.optimizer, cfg.lr, cfg.lr_schedule, cfg.augment, cfg.local_epochs, cfg.batch_size,
            cfg.local_test_fraction, cfg.fraction_train, cfg.server_eval_every) == (
        "adam", 0.001, "constant", "none", 2, 32, 0.2, 1.0, 1)


def test_config_files_load():
    assert load_run_config(["configs/fp32.toml"]).precision == "fp32"


@pytest.mark.parametrize("override, message", [
    ('precision="fp8"', r"precision: unknown value 'fp8'; allowed: fp32, fp16, int8"),
    ('partitioner="pathological"', r"partitioner: unknown value 'pathological'; allowed: iid, dirichlet"),
    ("time-limit-min=-1", r"time-limit-min: must be >= 0"),
    ("fraction-train=0.0", r"fraction-train: must be in \(0, 1\]"),
    ("fraction-train=1.5", r"fraction-train: must be in \(0, 1\]"),
    ("no-such-key=1", r"unknown run-config key\(s\): no-such-key"),
    ('optimizer="rmsprop"', r"optimizer: unknown value 'rmsprop'; allowed: adam, adamw, sgd"),
    ('lr-schedule="step"', r"lr-schedule: unknown value 'step'; allowed: constant, cosine, linear"),
    ('augment="mixup"', r"augment: unknown value 'mixup'; allowed: none, dihedral"),
    ("lr-floor=1.5", r"lr-floor: must be in \[0, 1\]"),
    ("lr-warmup-rounds=-1", r"lr-warmup-rounds: must be >= 0"),
    ("weight-decay=-0.1", r"weight-decay: must be >= 0"),
    ("momentum=1.0", r"momentum: must be in \[0, 1\)"),
    ("min-clients-fraction=0.0", r"min-clients-fraction: must be in \(0, 1\]"),
    ("round-timeout-s=-5", r"round-timeout-s: must be >= 0"),
    ("server-eval-every=0", r"server-eval-every: must be in \[1, 1000000\], got 0"),
    ("server-eval-every=1.5", r"server-eval-every: expected int"),
    ("lr=nan", r"lr: expected a finite number, got nan"),
    ("time-limit-min=inf", r"time-limit-min: expected a finite number, got inf"),
    ("num-server-rounds=inf", r"num-server-rounds: expected int, got inf"),
    ("batch-size=true", r"batch-size: expected int, got True"),
    ("batch-size=1e30", r"batch-size: must be in \[1, 1000000\]"),
    ("lr=true", r"lr: expected float, got True"),
    ("resume=1", r"resume: expected bool, got 1"),
    ("seed=-1", r"seed: must be in \[0, 2\^32 - 1\]"),
    ("seed=4294967296", r"seed: must be in \[0, 2\^32 - 1\]"),
    ("lr=0.1 num-server-rounds 5", r"cannot read 'num-server-rounds 5' in it"),
    ("output-dir='/tmp/it's out'", r"cannot read \"s out'\" in it"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_run_config([override])
    assert "\n" not in str(info.value)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_budget_stops_before_a_round_would_overrun():
    clock = FakeClock()
    budget = TimeBudget(limit_s=100, clock=clock)
    clock.now = 5  # start-up
    for rnd, (length, expect_more) in enumerate([(30, True), (20, True), (40, False)], 1):
        budget.start_round(rnd)
        clock.now += length
        budget.end_round()
        assert budget.allows_another_round() is expect_more, (clock.now, budget.longest_round)
    # 95 s spent, longest round after the first 40 s: 95 + 40 > 100


def test_time_budget_leaves_the_first_rounds_start_up_out_once_later_rounds_are_timed():
    clock = FakeClock()
    budget = TimeBudget(limit_s=100, clock=clock)
    for rnd, length in enumerate((50, 20), 1):
        budget.start_round(rnd)
        clock.now += length
        budget.end_round()
    assert budget.longest_round == 20 and budget.allows_another_round()  # 70 + 20 <= 100


def test_time_budget_without_limit_never_stops():
    clock = FakeClock()
    budget = TimeBudget(limit_s=None, clock=clock)
    budget.start_round(1)
    clock.now = 1e9
    budget.end_round()
    assert budget.allows_another_round()
