"""The learning-rate schedule and its placement within the time budget, with an injected clock."""

import math

import pytest
import torch

from eurosat.data.augment import dihedral
from eurosat.fl.strategy import TimeBudget
from eurosat.train.schedule import LrSchedule, RoundPlanner


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_rounds(schedule, num_rounds, limit_s, lengths, startup=5.0, eval_s=0.0, eval_every=1, evaluated=None):
    """Drive planner + budget as BudgetedFedAvg.run does (a server evaluation takes `eval_s`);
    return the spans of the rounds that ran, and append the evaluated rounds to `evaluated`."""
    clock = FakeClock()
    budget = TimeBudget(limit_s, clock, eval_every=eval_every)
    planner = RoundPlanner(schedule, num_rounds, budget.rounds_that_fit)
    clock.now = startup
    spans = []

    def evaluate():
        clock.now += eval_s
        (evaluated if evaluated is not None else []).append(len(spans))
        return {"accuracy": 0.5}

    for rnd in range(1, num_rounds + 1):
        budget.start_round(rnd)
        spans.append(planner.span(rnd))
        clock.now += lengths[(rnd - 1) % len(lengths)]
        if budget.finish_round(num_rounds, evaluate).last:
            break
    if limit_s is not None:
        assert clock.now <= limit_s, "the run, its last evaluation included, overran the budget"
    return spans


COSINE = LrSchedule("cosine", peak=0.05, floor=0.02, warmup_rounds=1)


def _contiguous_and_increasing(spans):
    assert spans[0].start == 0.0
    for a, b in zip(spans, spans[1:]):
        assert b.start == a.stop and b.stop >= b.start


@pytest.mark.parametrize("lengths", [[12.0], [20.0, 11.0, 13.0], [9.0, 9.0, 9.5], [14.0, 12.0]])
def test_time_limited_run_reaches_the_floor_in_its_last_round(lengths):
    spans = run_rounds(COSINE, num_rounds=100, limit_s=100.0, lengths=lengths)
    assert len(spans) >= 4  # the budget, not num-server-rounds, ended it
    _contiguous_and_increasing(spans)
    assert spans[-1].stop == COSINE.end
    assert math.isclose(COSINE.lr_at(spans[-1].stop), 0.05 * 0.02)
    # Rounds shorter than the longest so far can leave room for a round more than foreseen: the
    # floor is never reached more than one round early, and such a round runs at the floor.
    assert spans[-3].stop < COSINE.end
    assert COSINE.lr_at(spans[0].start) == pytest.approx(0.005) and COSINE.lr_at(spans[0].stop) == 0.05


def test_constant_rounds_split_the_decay_evenly():
    spans = run_rounds(COSINE, num_rounds=100, limit_s=100.0, lengths=[12.0])
    # 5 s start-up + 7 rounds of 12 s = 89 s; an 8th would end at 101 s
    assert len(spans) == 7 and spans[-2].stop < COSINE.end  # the floor comes with the last round
    widths = [s.stop - s.start for s in spans[1:]]
    assert widths == pytest.approx([1 / 6] * 6)


def test_a_first_round_slowed_by_start_up_does_not_end_the_decay_early():
    """Round 1 pays for start-up; from round 2 on the estimate is the later rounds' length, as in
    a real 10-minute run (94 s, then about 80 s)."""
    spans = run_rounds(COSINE, num_rounds=100, limit_s=600.0, lengths=[94.0, 82.0, 80.0, 75.0, 82.0, 85.0, 81.0],
                       startup=3.0)
    assert len(spans) == 7 and spans[-1].stop == COSINE.end and spans[-2].stop < COSINE.end


@pytest.mark.parametrize("every", [1, 3, 5])
def test_periodic_server_evaluation_keeps_the_last_round_evaluated_and_within_budget(every):
    """`server-eval-every`: rounds 1, every N-th and the last are evaluated; the budget sets one
    evaluation aside for the last round, and the floor still comes with it."""
    evaluated = []
    spans = run_rounds(COSINE, num_rounds=100, limit_s=300.0, lengths=[20.0], eval_s=6.0, eval_every=every,
                       evaluated=evaluated)
    n = len(spans)
    assert evaluated == sorted({1, n} | set(range(every, n + 1, every)))
    assert spans[-1].stop == COSINE.end and spans[-2].stop < COSINE.end
    # fewer evaluations leave room for more training rounds: 5 s + n x 20 s + evaluations <= 300 s
    assert n == {1: 11, 3: 12, 5: 13}[every]


def test_round_limited_periodic_evaluation_ends_with_an_evaluated_round():
    evaluated = []
    spans = run_rounds(COSINE, num_rounds=7, limit_s=None, lengths=[30.0], eval_s=5.0, eval_every=3, evaluated=evaluated)
    assert len(spans) == 7 and evaluated == [1, 3, 6, 7]


def test_round_limited_run_behaves_the_same():
    spans = run_rounds(COSINE, num_rounds=5, limit_s=None, lengths=[30.0])
    assert len(spans) == 5
    _contiguous_and_increasing(spans)
    assert spans[-1].stop == COSINE.end and spans[-2].stop < COSINE.end
    assert [s.stop - s.start for s in spans[1:]] == pytest.approx([0.25] * 4)
    # a budget that is never tight gives the same plan as no budget
    assert run_rounds(COSINE, num_rounds=5, limit_s=1e6, lengths=[30.0]) == spans


def test_one_round_run_decays_within_it():
    spans = run_rounds(COSINE, num_rounds=1, limit_s=None, lengths=[1.0])
    assert len(spans) == 1 and COSINE.lr_at(spans[0].start) == 0.05 and spans[0].stop == COSINE.end


def test_constant_schedule_is_the_lr_everywhere():
    constant = LrSchedule("constant", peak=1e-3)
    spans = run_rounds(constant, num_rounds=6, limit_s=50.0, lengths=[7.0])
    assert {constant.lr_at(span.at(f)) for span in spans for f in (0.0, 0.3, 1.0)} == {1e-3}


def test_linear_decay_and_warmup_shape():
    s = LrSchedule("linear", peak=1.0, floor=0.0, warmup_rounds=2)
    assert [s.lr_at(x) for x in (0.0, 1.0, 2.0, 2.5, 3.0)] == pytest.approx([0.1, 0.55, 1.0, 0.5, 0.0])


def test_dihedral_augmentation_keeps_shape_dtype_and_is_seeded():
    images = torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8)
    a = dihedral(images, torch.Generator().manual_seed(1))
    b = dihedral(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, dihedral(images, torch.Generator().manual_seed(2)))
    # every output is one of the 8 symmetries of its own input (so its label still holds)
    for x, y in zip(images, a):
        variants = [torch.rot90(v, k, (1, 2)) for v in (x, x.flip(2)) for k in range(4)]
        assert any(torch.equal(y, v) for v in variants)
    # over a batch, all 8 symmetries occur
    seen = {next(i for i, v in enumerate([torch.rot90(v, k, (1, 2)) for v in (x, x.flip(2)) for k in range(4)])
                 if torch.equal(y, v)) for x, y in zip(images, a)}
    assert len(seen) == 8


def test_kept_optimizer_state_survives_the_node_store_and_changes_training(small_data):
    """local-optimizer-state=keep: Adam's moments go into the node's context.state after a round
    and come back in the next; a kept state trains differently from a fresh one."""
    from flwr.app import RecordDict

    from eurosat.fl.config import load_run_config
    from eurosat.data.loading import load_split, resolve_source
    from eurosat.fl.memory import load_optimizer_state, save_optimizer_state
    from eurosat.train.model import Net
    from eurosat.train.loop import ComputePlan, train

    cfg = load_run_config([f"local-optimizer-state='keep' data='{small_data}'"])
    local = cfg.local_training()
    assert local.keep_optimizer_state
    data = load_split(resolve_source(str(small_data)), "train", sample=64, seed=0)
    plan = ComputePlan(torch.device("cpu"))
    torch.manual_seed(0)
    model = Net()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    kept: dict = {}
    train(model, data, local, plan, optimizer_state=kept)
    assert kept and {"step", "exp_avg", "exp_avg_sq"} <= set(kept["0"])
    store = RecordDict()
    save_optimizer_state(store, kept)
    restored = load_optimizer_state(store)
    assert restored.keys() == kept.keys()
    assert all(torch.equal(restored[i][n], kept[i][n]) for i in kept for n in kept[i])
    runs = []
    for state in (restored, None):
        net = Net()
        net.load_state_dict(start)
        train(net, data, local, plan, seed=1, optimizer_state=state)
        runs.append(net.fc3.weight.detach().clone())
    assert not torch.equal(runs[0], runs[1])
