"""A deadline that holds inside a round: the margin and the deadline with injected clocks, local
training that stops at the last step that fits (its schedule fitted to the steps that run), and a
real run whose first round alone is longer than the budget, with one client 3x slower."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import launch, run_dir_of

from eurosat.data.loading import TensorData
from eurosat.fl.config import load_run_config
from eurosat.fl.protocol import Instruction
from eurosat.fl.strategy import MARGIN_START_S, TimeBudget
from eurosat.train.loop import LocalTraining, train
from eurosat.train.model import Net
from eurosat.train.schedule import LrSchedule, Span


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_deadline_is_the_budgets_end_less_a_margin_of_the_measured_after_training_work():
    clock, wall = Clock(), Clock(1_000_000.0)
    budget = TimeBudget(limit_s=100, clock=clock, wall=wall)
    assert budget.margin() == MARGIN_START_S
    clock.now, wall.now = 30, 1_000_030.0  # 30 s spent (wall: the clients' Unix clock, same pace)
    assert budget.train_deadline() == pytest.approx(1_000_030 + 70 - MARGIN_START_S)
    for seconds in (5.0, 20.0, 8.0):
        budget.after_training.append(seconds)
    assert budget.margin() == pytest.approx(24.0)  # 1.2 x the longest of the last 3
    budget.after_training += [6.0, 7.0]
    assert budget.margin() == pytest.approx(9.6)  # the 20 s round has left the window
    assert TimeBudget(limit_s=None).train_deadline() is None


def test_a_round_the_deadline_cut_is_the_last_and_is_evaluated_even_when_no_evaluation_was_due():
    """The server's side of a cut, on an injected clock: round 2 of a run evaluating every third
    round ends the run, with its model evaluated (the final model is always evaluated)."""
    clock = Clock()
    budget = TimeBudget(limit_s=60, clock=clock, eval_every=3)
    evaluated: list[float] = []

    def evaluate() -> dict[str, float]:
        evaluated.append(clock.now)
        clock.now += 2.0
        return {"loss": 1.0, "accuracy": 0.5}

    budget.start_round(1)
    clock.now = 20.0
    first = budget.finish_round(10, evaluate)
    assert not first.last and first.evaluation and evaluated == [20.0]  # round 1: always evaluated
    budget.start_round(2)
    clock.now = 55.0  # its clients stopped at the deadline
    cut = budget.finish_round(10, evaluate, last=True)
    assert cut.last and cut.evaluation == {"loss": 1.0, "accuracy": 0.5} and evaluated == [20.0, 55.0]
    assert budget.elapsed() <= 60


def test_the_final_exports_reserve_is_kept_free_at_the_budgets_end():
    clock, wall = Clock(), Clock(1_000_000.0)
    budget = TimeBudget(limit_s=100, clock=clock, wall=wall)
    budget.reserve_s = 12.0
    assert budget.train_deadline() == pytest.approx(1_000_000 + 100 - 12 - MARGIN_START_S)
    budget.start_round(1)
    clock.now = 40.0
    budget.end_round()
    clock.now = 50.0  # one more 40 s round would end at 90 s: under the limit, over the limit less the reserve
    assert not budget.allows_another_round() and budget.rounds_that_fit(5) == 0
    budget.reserve_s = 0.0
    assert budget.allows_another_round()


def test_an_int8_recipe_times_its_final_export_and_the_others_have_none(small_data):
    from eurosat.fl.task import export_seconds

    int8 = load_run_config([f"precision='int8' data='{small_data}'"])
    assert export_seconds(int8) > 0
    assert export_seconds(load_run_config([f"precision='fp16' data='{small_data}'"])) == 0.0


def test_a_fixed_plus_linear_cost_is_extrapolated_from_two_sizes():
    from eurosat.fl.task import extrapolate

    assert extrapolate(1, 1.5, 3, 2.5, 16) == pytest.approx(1.0 + 0.5 * 16)  # 1 s fixed, 0.5 s an item
    assert extrapolate(64, 0.3, 256, 0.3, 2700) == pytest.approx(0.3)  # no slope measured: the fixed cost
    assert extrapolate(3, 1.0, 3, 1.0, 6) == pytest.approx(2.0)  # one size: scaled


def test_the_deadline_rides_in_the_instruction():
    instruction = Instruction(3, Span(0.2, 0.4), 1_765_000_000.5)
    again, values = Instruction.split({**instruction.to_config(), "lr": 0.001})
    assert again == instruction and values == {"lr": 0.001}
    assert Instruction.split(Instruction(1).to_config())[0].deadline is None


def _data(n: int = 64) -> TensorData:
    generator = torch.Generator().manual_seed(0)
    return TensorData(torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=generator),
                      torch.randint(0, 10, (n,), generator=generator))


def _plan():
    return load_run_config().recipe.compute_plan(torch.device("cpu"))


def test_local_training_stops_at_the_last_step_that_fits_and_ends_its_schedule_there():
    """With an injected clock every step takes exactly 0.25 s: 12 fit in the 3 s left, the 13th
    would not. A cut round is the run's last, so its span, here the first half of the decay, runs on
    to the schedule's end: the 12th step is at the floor, whatever load the machine is under."""
    schedule = LrSchedule("cosine", 1e-3, 0.1)
    local = LocalTraining(epochs=20, batch_size=16, schedule=schedule)  # 80 planned steps
    span, clock = Span(0.0, 0.5), Clock(100.0)

    def quarter_second_step(seconds: float) -> None:
        clock.now += 0.25

    metrics = train(Net(), _data(), local, _plan(), span=span, deadline=103.0, on_step=quarter_second_step, clock=clock)
    assert metrics["planned_steps"] == 80 and metrics["train_steps"] == 12
    assert metrics["train_images"] == 16 * 12
    assert clock.now == 103.0  # the last step ended on the deadline, none past it
    assert metrics["lr_last"] == pytest.approx(schedule.lr_at(schedule.end), rel=1e-6)
    assert schedule.lr_at(span.stop) > 5 * schedule.lr_at(schedule.end)


def test_a_round_the_deadline_does_not_cut_ends_at_its_own_span():
    schedule = LrSchedule("cosine", 1e-3, 0.1)
    local = LocalTraining(epochs=1, batch_size=16, schedule=schedule)  # 4 planned steps
    clock = Clock(100.0)

    def quarter_second_step(seconds: float) -> None:
        clock.now += 0.25

    metrics = train(Net(), _data(), local, _plan(), span=Span(0.0, 0.5), deadline=103.0, on_step=quarter_second_step,
                    clock=clock)
    assert metrics["train_steps"] == metrics["planned_steps"] == 4
    assert metrics["lr_last"] == pytest.approx(schedule.lr_at(0.5), rel=1e-6)


def test_local_training_on_the_real_clock_ends_within_a_step_of_its_deadline():
    local = LocalTraining(epochs=20, batch_size=16)  # 80 planned steps
    data, plan = _data(), _plan()
    train(Net(), data, LocalTraining(epochs=1, batch_size=16), plan)  # warm torch up: the test times steps
    computed: list[float] = []  # each step's own seconds, before the hook's sleep

    def slow_step(seconds: float) -> None:
        computed.append(seconds)
        time.sleep(0.2)  # ~0.25 s a step: about 10 fit

    started = time.time()
    metrics = train(Net(), data, local, plan, span=Span(0.0, 1.0), deadline=started + 3.0, on_step=slow_step)
    took = time.time() - started
    assert 2 <= metrics["train_steps"] < 80
    # at most one step past the deadline: the longest step measured (a loaded machine's spike
    # included), its sleep, and a little for fetching the batch
    assert took <= 3.0 + max(computed) + 0.2 + 0.15, (took, max(computed))


def test_a_deadline_already_past_trains_one_step_and_none_trains_them_all():
    local = LocalTraining(epochs=2, batch_size=16)
    assert train(Net(), _data(), local, _plan(), deadline=time.time() - 5)["train_steps"] == 1
    assert train(Net(), _data(), local, _plan())["train_steps"] == 8


@pytest.mark.slow
def test_a_first_round_longer_than_the_budget_ends_at_the_deadline_with_a_slow_client(tiny_data, tmp_path):
    """200 local epochs would take many minutes; the budget is 45 s; partition 1 trains 3x slower;
    the INT8 recipe ends with an export (calibration, evaluation) that the budget must hold too.
    The run ends within the limit + max(3 %, 5 s) of the ServerApp's start, with an evaluated,
    saved model, both clients' training cut at the deadline and the records saying so."""
    limit_min = 0.75
    proc = launch(["-c", f"num-server-rounds=5 time-limit-min={limit_min} num-supernodes=2 fraction-train=1.0 "
                         "precision='int8' "
                         f"local-epochs=200 test-hook='slow=3@1' data='{tiny_data}' output-dir='{tmp_path}'"],
                  env={"EUROSAT_TEST_HOOKS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = json.loads((run_dir_of(proc) / "metrics.json").read_text())
    summary, rounds = metrics["summary"], metrics["rounds"]
    limit = limit_min * 60
    assert summary["stop_reason"] == "time_limit" and summary["time_limit_reached"]
    assert summary["wall_seconds"] <= limit + max(0.03 * limit, 5.0), summary["wall_seconds"]
    last = rounds[-1]
    assert last["deadline_cut"] and last["clients"] == 2 and not last["client_failures"]
    assert 2 <= last["client_train_steps"] < last["client_planned_steps"]
    steps = dict(zip(last["partitions"], last["partition_train_steps"], strict=True))
    assert sum(steps.values()) == last["client_train_steps"] and steps[1] < steps[0]  # partition 1 is 3x slower
    assert sum(last["partition_train_images"]) == last["client_train_images"]
    # round 1's span is the warm-up, [0, 1], at the peak by its end; cut, it ran on into the decay
    assert last["lr_span"] == [0.0, 1.0] and last["client_lr_last"] < 0.5 * metrics["config"]["lr"]
    assert "server_test_accuracy" in last and summary["final_test_accuracy"] > 0
    assert summary["export_reserve_s"] > 0 and summary["export_seconds"] > 0 and "int8_model_test_accuracy" in summary
    Net().load_state_dict(torch.load(run_dir_of(proc) / "final_model.pt", weights_only=True))


def test_the_margin_counts_the_upload_from_the_clients_end_of_training_not_their_start_up():
    """Round 1's cold start (here 100 s before training) is before the deadline's window, not after
    it: timed from the clients' `finished_at`, the after-training work is the upload and the save."""
    from eurosat.fl.protocol import TrainReport
    from eurosat.fl.strategy import after_training_seconds

    def report(train_s: float, finished_at: float) -> TrainReport:
        return TrainReport(0, 10, 0.1, 0.5, train_s, 10, 1, 1e-3, "float32@cpux2", 1, finished_at)

    reports = [report(20.0, 1000.0), report(25.0, 1002.0)]  # training ended at Unix 1000 and 1002
    # exchange from t=0 to t=130 on the server's clock (100 s of start-up inside it), replies at Unix 1005
    assert after_training_seconds(reports, 1005.0, 0.0, 130.0, 140.0) == pytest.approx(3.0 + 10.0)
    older = [report(25.0, 0.0)]  # a client that does not stamp: the exchange less its training
    assert after_training_seconds(older, 1005.0, 0.0, 130.0, 140.0) == pytest.approx(105.0 + 10.0)
