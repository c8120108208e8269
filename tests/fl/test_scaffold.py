"""SCAFFOLD (eurosat/fl/scaffold.py): the controls follow option II, the client applies its
correction at every step, the server sends it and counts it, a false lr_sum is left out, the
controls survive a checkpoint, and a real run trains with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eurosat.data.loading import load_split, resolve_source
from eurosat.fl.config import ConfigError, load_run_config
from eurosat.fl.protocol import TrainReport
from eurosat.fl.record import RunRecorder
from eurosat.fl.scaffold import CONTROL, Controls, in_order, trainable_shapes
from eurosat.fl.strategy import BudgetedFedAvg
from eurosat.fl.codecs import get_codec
from eurosat.train.loop import LocalTraining, train
from eurosat.train.model import Net
from eurosat.train.schedule import LrSchedule, Span


def _v(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, np.float32)}


def test_the_controls_follow_option_ii():
    """c_i+ = c_i - c - delta_i / lr_sum_i; c += (1/N) sum(c_i+ - c_i); worked by hand."""
    controls = Controls({"w": (2,)}, num_partitions=2)
    assert not controls.started and controls.state() == {}
    controls.update([(0, _v(-1, 0), 0.5), (1, _v(0, -2), 1.0)])
    np.testing.assert_allclose(controls.clients[0]["w"], [2, 0])
    np.testing.assert_allclose(controls.clients[1]["w"], [0, 2])
    np.testing.assert_allclose(controls.c["w"], [1, 1])
    np.testing.assert_allclose(controls.correction(0)["w"], [-1, 1])  # c - c_0
    np.testing.assert_allclose(controls.correction(None)["w"], [1, 1])  # a partition never trained: c_i = 0
    # round 2, one client of two: its control moves, c by half that move
    controls.update([(0, _v(-1.5, -0.5), 0.5)])
    np.testing.assert_allclose(controls.clients[0]["w"], [2 - 1 + 3, 0 - 1 + 1])
    np.testing.assert_allclose(controls.c["w"], [1 + 2 / 2, 1 + 0 / 2])
    controls.update([(1, _v(5, 5), 0.0)])  # no steps: nothing to learn from
    np.testing.assert_allclose(controls.clients[1]["w"], [0, 2])


def test_the_client_moves_each_parameter_by_its_correction_times_the_learning_rate(tiny_data):
    """One step from the same model on the same batch, with and without a correction: the two differ
    by exactly -lr x correction (the optimizer's own step is the same), and lr_sum is the lr."""
    data = load_split(resolve_source(str(tiny_data)), "train").take(32)
    plan = load_run_config().recipe.compute_plan(torch.device("cpu"))
    local = LocalTraining(epochs=1, batch_size=32, schedule=LrSchedule(peak=1e-3))
    start = Net().state_dict()
    plain, corrected = Net(), Net()
    plain.load_state_dict(start)
    corrected.load_state_dict(start)
    rng = np.random.default_rng(0)
    correction = [torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32)) for p in corrected.parameters()]
    train(plain, data, local, plan, seed=1)
    metrics = train(corrected, data, local, plan, seed=1, correction=correction)
    assert metrics["train_steps"] == 1 and metrics["lr_sum"] == pytest.approx(1e-3)
    for a, b, c in zip(plain.parameters(), corrected.parameters(), correction):
        torch.testing.assert_close(b.detach() - a.detach(), -1e-3 * c, rtol=0, atol=1e-6)


def test_a_correction_for_another_model_is_refused():
    names = [n for n, _ in Net().named_parameters()]
    shapes = trainable_shapes(Net().named_parameters())
    assert list(shapes) == names and not any("running" in n for n in names)  # batch-norm statistics have none
    with pytest.raises(ValueError, match="do not match"):
        in_order({"conv9.weight": np.zeros(1, np.float32)}, shapes)
    misshapen = {k: np.zeros(s, np.float32) for k, s in shapes.items()} | {"fc3.bias": np.zeros(1, np.float32)}
    with pytest.raises(ValueError, match=r"fc3.bias has shape \(1,\), the parameter \(10,\)"):
        in_order(misshapen, shapes)  # it would broadcast


def _strategy(controls: Controls) -> BudgetedFedAvg:
    return BudgetedFedAvg(get_codec("fp32"), schedule=LrSchedule("cosine", 1e-3), controls=controls, fraction_train=1.0)


def _report(partition: int, steps: int, lr_sum: float, planned: int | None = None) -> TrainReport:
    return TrainReport(partition, 100, 0.5, 0.5, 1.0, 100, steps, 1e-3, "float32@cpux2",
                       steps if planned is None else planned, 0.0, lr_sum)


def test_a_false_lr_sum_is_left_out_of_the_controls():
    """A client claiming a tiny lr_sum would blow its control up by delta / lr_sum: the server
    holds it to its steps times the span's learning rates."""
    strategy = _strategy(Controls({"w": (2,)}, 3))
    strategy._span = Span(0.0, 1.0)  # cosine from the peak to its floor (0): lr_sum between 0 and steps x peak
    kept = strategy._plausible([(_report(0, 10, 0.005), _v(1, 1)), (_report(1, 10, 0.5), _v(1, 1)),
                                (_report(2, 0, 0.0), _v(1, 1))], server_round=1)
    assert [k[0] for k in kept] == [0]  # 0.5 > 10 x 1e-3; no steps: nothing


def test_a_client_the_deadline_cut_is_held_to_the_rates_down_to_the_schedules_end():
    """A cut client runs its span on to the schedule's end (train), so rates below the span's own
    are plausible for it, and only for it."""
    strategy = _strategy(Controls({"w": (2,)}, 3))
    strategy._span = Span(0.0, 0.5)  # cosine from the peak to half of it; the schedule ends at 0
    lr_sum = 0.003  # below 10 steps x 0.5e-3, the span's smallest rate
    kept = strategy._plausible([(_report(0, 10, lr_sum, planned=40), _v(1, 1)), (_report(1, 10, lr_sum), _v(1, 1))],
                               server_round=1)
    assert [k[0] for k in kept] == [0]


def test_each_train_message_carries_its_nodes_correction_and_the_bytes_count():
    controls = Controls(trainable_shapes(Net().named_parameters()), 2)
    zeros = {k: np.zeros(s, np.float32) for k, s in controls.shapes.items()}
    strategy = _strategy(controls)
    from flwr.app import ConfigRecord, Message, MessageType, Metadata, RecordDict

    def messages():  # one shared content, as the strategy's messages of one group have
        shared = RecordDict({"config": ConfigRecord({"x": 1})})
        return [Message(shared, metadata=Metadata(run_id=1, message_id=f"m{n}", src_node_id=0, dst_node_id=n,
                                                  reply_to_message_id="", group_id="", created_at=0.0, ttl=1.0,
                                                  message_type=MessageType.TRAIN)) for n in (11, 12)]

    assert all(CONTROL not in m.content for m in strategy._with_controls(messages(), 1))  # all zero: none sent
    controls.update([(0, {k: v - 0.01 for k, v in zeros.items()}, 0.01)])  # partition 0's c_0 = 1, c = 0.5
    strategy.partitions = {11: 0}
    before = strategy.stats.sent_bytes
    sent = strategy._with_controls(messages(), 2)
    got = {m.metadata.dst_node_id: get_codec("fp32").decode(m.content[CONTROL]) for m in sent}
    assert all(np.allclose(v, -0.5) for v in got[11].values())  # c - c_0
    assert all(np.allclose(v, 0.5) for v in got[12].values())  # unknown partition: c
    assert strategy.stats.sent_bytes - before == sum(m.content[CONTROL].count_bytes() for m in sent)


def test_the_controls_survive_a_checkpoint_and_resume(tmp_path):
    config = load_run_config().to_mapping()
    controls = Controls({"w": (2,)}, 2)
    controls.update([(0, _v(-1, 0), 0.5), (1, _v(0, -2), 1.0)])
    recorder = RunRecorder(tmp_path, config)
    recorder.add_round({"round": 1, "lr_span": [0.0, 0.5]}, {"w": np.zeros(2, np.float32)}, controls.state())
    (tmp_path / "status.json").write_text(json.dumps({"state": "interrupted"}))
    resumed_recorder, _, _ = RunRecorder.resume(tmp_path, config)
    strategy = _strategy(Controls({"w": (2,)}, 2))
    strategy.load_server_state(resumed_recorder.server_optimizer)
    again = strategy.controls
    assert set(again.clients) == {0, 1} and np.array_equal(again.c["w"], controls.c["w"])
    assert all(np.array_equal(again.clients[p]["w"], controls.clients[p]["w"]) for p in (0, 1))


@pytest.mark.parametrize("overrides, message", [
    ("strategy='scaffold' aggregation='median'", "control variates are means"),
])
def test_scaffold_keys_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config([overrides])
    assert load_run_config(["strategy='scaffold'"]).label == "fp32-scaffold"
