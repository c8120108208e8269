"""`local-loss`: balanced softmax on a client's partition (eurosat/train/loop.py `log_prior`), on
real chips of the test slice: plain cross-entropy where the labels are uniform, and no push on a
class the partition lacks."""

from __future__ import annotations

import copy

import torch

from eurosat.data.loading import NUM_CLASSES, TensorData, load_split, resolve_source
from eurosat.fl.config import ConfigError, load_run_config
from eurosat.train.loop import ComputePlan, LocalTraining, log_prior, train
from eurosat.train.model import Net

CPU = ComputePlan(torch.device("cpu"))


def _classes(data: TensorData, keep: set[int]) -> TensorData:
    mask = torch.tensor([int(y) in keep for y in data.labels])
    return TensorData(data.images[mask], data.labels[mask])


def test_log_prior_is_the_log_of_the_class_frequencies():
    prior = log_prior(torch.tensor([0, 0, 1, 1, 1, 3]), 5)
    assert torch.allclose(prior[[0, 1, 3]], torch.log(torch.tensor([2 / 6, 3 / 6, 1 / 6])))
    assert torch.isinf(prior[[2, 4]]).all() and (prior[[2, 4]] < 0).all()
    uniform = log_prior(torch.arange(NUM_CLASSES).repeat(3), NUM_CLASSES)
    assert torch.allclose(uniform, torch.full((NUM_CLASSES,), -torch.log(torch.tensor(10.0)).item()))


def test_balanced_training_equals_cross_entropy_on_uniform_labels(small_data):
    """A constant shift of every logit leaves softmax, and so every step, unchanged (SGD: Adam would
    magnify float rounding in the conv biases, whose true gradient under batch norm is 0)."""
    data = load_split(resolve_source(str(small_data)), "test")
    per_class = [torch.nonzero(data.labels == c).flatten()[:4] for c in range(NUM_CLASSES)]
    index = torch.cat(per_class)
    uniform = TensorData(data.images[index], data.labels[index])
    assert torch.bincount(uniform.labels, minlength=NUM_CLASSES).unique().tolist() == [4]
    torch.manual_seed(0)
    start = Net()
    models, losses = {}, {}
    for balanced in (False, True):
        model = copy.deepcopy(start)
        local = LocalTraining(batch_size=8, optimizer="sgd", balanced_loss=balanced)
        losses[balanced] = train(model, uniform, local, CPU, seed=1)["train_loss"]
        models[balanced] = model.state_dict()
    assert abs(losses[False] - losses[True]) < 1e-5, losses
    moved = max((value.float() - start.state_dict()[key].float()).abs().max().item() for key, value in models[False].items())
    assert moved > 1e-4  # the steps did move the weights, and both runs alike
    for key, value in models[False].items():
        assert torch.allclose(value.float(), models[True][key].float(), atol=1e-6), key


def test_a_class_the_partition_lacks_is_not_pushed_down(small_data):
    """On chips of two classes, cross-entropy moves the output weights of the eight absent classes
    (it learns to predict them never); balanced softmax leaves them exactly where they were."""
    skewed = _classes(load_split(resolve_source(str(small_data)), "test"), {0, 1})
    assert set(skewed.labels.tolist()) == {0, 1} and len(skewed) >= 16
    torch.manual_seed(0)
    start = Net()
    absent = list(range(2, NUM_CLASSES))
    moved = {}
    for balanced in (False, True):
        model = copy.deepcopy(start)
        metrics = train(model, skewed, LocalTraining(batch_size=16, balanced_loss=balanced), CPU, seed=1)
        assert torch.isfinite(torch.tensor(metrics["train_loss"])), metrics
        moved[balanced] = (model.fc3.weight[absent] - start.fc3.weight[absent]).abs().max().item()
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert moved[False] > 1e-4 and moved[True] == 0.0, moved


def test_local_loss_is_a_checked_run_config_key():
    assert load_run_config([]).local_training().balanced_loss is False
    assert load_run_config(["local-loss='balanced'"]).local_training().balanced_loss is True
    try:
        load_run_config(["local-loss='focal'"])
    except ConfigError as exc:
        assert "local-loss: unknown value 'focal'; allowed: ce, balanced" in str(exc)
    else:
        raise AssertionError("local-loss='focal' was accepted")
