"""Flower's strategies with everything this project adds (eurosat/fl/server_step.py): each server
step equals Flower's own `aggregate_train` on the same replies, the optimizer's state survives a
checkpoint, FedProx's proximal term, and real runs of every strategy."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import launch, run_dir_of
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg

from eurosat.fl.config import ConfigError, load_run_config
from eurosat.fl.record import CHECKPOINT_FILE, RunRecorder
from eurosat.fl.robust import as_replies
from eurosat.fl.server_step import STRATEGIES, ServerOptimizer, ServerStep, is_parameter, scaled_step
from eurosat.fl.state import to_numpy, weighted_mean
from eurosat.train.loop import proximal_term
from eurosat.train.model import Net

with torch.random.fork_rng():  # one initial model for every run of the suite, the global RNG untouched
    torch.manual_seed(0)
    FLOATS = {k: v for k, v in to_numpy(Net().state_dict()).items() if v.dtype == np.float32}
PARAMS = {k: v for k, v in FLOATS.items() if is_parameter(k, v)}  # Flower's optimizers step these
OPTIONS = {"fedavg": ServerOptimizer("fedavg"), "fedprox": ServerOptimizer("fedprox"),
           "fedadam": ServerOptimizer("fedadam", lr=0.01), "fedyogi": ServerOptimizer("fedyogi", lr=0.01),
           "fedadagrad": ServerOptimizer("fedadagrad", lr=0.01),
           "fedavgm": ServerOptimizer("fedavgm", lr=1.0, momentum=0.9),
           "scaffold": ServerOptimizer("scaffold")}  # its model step is FedAvg's; its controls: test_scaffold.py


def _deltas(seed: int, n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in FLOATS.items()} for _ in range(n)]


def _flower_round(flower, server_round: int, base: dict, deltas: list[dict], weights: list[float]) -> dict:
    """What Flower's strategy makes of the clients' models (base + delta), as its own run would:
    `configure_train` remembers the model sent (FedOpt: a dict of arrays; FedAvgM: the record, once)."""
    if hasattr(flower, "m_t"):
        flower.current_arrays = {k: v.copy() for k, v in base.items()}
    elif hasattr(flower, "momentum_vector") and flower.current_arrays is None:
        flower.current_arrays = ArrayRecord({k: Array(v.copy()) for k, v in base.items()})
    models = [{k: base[k] + d[k] for k in base} for d in deltas]
    arrays, _ = flower.aggregate_train(server_round, as_replies(models, weights))
    return {k: v.numpy() for k, v in arrays.items()}


@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategys_step_equals_flowers_own_on_the_same_replies(name):
    """Three rounds, so moments and momentum carry over; Flower's FedAvg stands for fedavg/fedprox/scaffold.
    Flower's strategy sees the parameters; the batch-norm statistics take the plain average."""
    options = OPTIONS[name]
    ours, flower = ServerStep(options), options.flower() or FedAvg()
    mine, theirs = dict(FLOATS), dict(PARAMS)
    for rnd in (1, 2, 3):
        deltas, weights = _deltas(rnd), [100.0, 300.0, 50.0]
        before, mean = mine, weighted_mean(deltas, weights)
        mine = ours.apply(rnd, mine, mean)
        theirs = _flower_round(flower, rnd, theirs, [{k: d[k] for k in PARAMS} for d in deltas], weights)
        assert all(np.array_equal(mine[k], before[k] + mean[k]) for k in FLOATS if k not in PARAMS)
        off = sum(int((~np.isclose(mine[k], theirs[k].astype(np.float32), rtol=1e-5, atol=1e-7)).sum()) for k in PARAMS)
        # Flower averages the clients' models and subtracts the base, this project averages their
        # deltas: the same update up to float32 rounding, which FedYogi's sign(v - delta^2) turns
        # into a visible difference where the two nearly tie (1 of 434,602 values on some draws)
        assert off <= (3 if name == "fedyogi" else 0), f"{name}: {off} values differ"
    moved = max(float(np.abs(mine[k] - FLOATS[k]).max()) for k in FLOATS)
    assert moved > 1e-4  # the step did something


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_batch_norm_statistics_follow_the_clients_under_every_server_optimizer(name):
    """Twenty rounds in which the clients' running variance falls from 1 to 0.05 and another rises
    to 400: stepped by Flower's optimizers, FedAvgM's momentum took the first below zero (NaN at
    evaluation) and FedAdam's eta-sized steps left both near where they started. As buffers they
    take the clients' average, as under FedAvg."""
    step, key = ServerStep(OPTIONS[name]), "bn1.running_var"
    state = {key: np.array([1.0, 50.0], np.float32), "fc.weight": np.zeros(2, np.float32)}
    target = np.array([0.05, 400.0], np.float32)
    for rnd in range(1, 21):
        state = step.apply(rnd, state, {key: target - state[key], "fc.weight": np.full(2, 1e-2, np.float32)})
        assert (state[key] > 0).all()
    np.testing.assert_allclose(state[key], target, rtol=1e-6)
    assert not np.allclose(state["fc.weight"], 0)  # the parameters did take the optimizer's step


def test_a_server_learning_rate_scales_the_parameters_not_the_statistics():
    base = {"bn1.running_var": np.ones(2, np.float32), "fc.weight": np.ones(2, np.float32)}
    update = {k: np.full(2, -0.75, np.float32) for k in base}
    new = scaled_step(base, update, 2.0)
    assert (new["bn1.running_var"] == 0.25).all() and (new["fc.weight"] == -0.5).all()


def test_integer_buffers_are_added_not_optimized():
    state = to_numpy(Net().state_dict())
    update = {k: (np.ones_like(v) if v.dtype != np.float32 else np.zeros_like(v)) for k, v in state.items()}
    new = ServerStep(OPTIONS["fedadam"]).apply(1, state, update)
    ints = [k for k, v in state.items() if v.dtype != np.float32]
    assert ints and all(new[k].dtype == state[k].dtype and (new[k] == state[k] + 1).all() for k in ints)
    assert all(new[k].dtype == np.float32 for k in FLOATS)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_the_optimizer_state_survives_a_checkpoint_and_resume(name, tmp_path):
    """Round 1, a checkpoint, a fresh ServerStep loaded from it (as --resume does), round 2: the
    same model as a step that never stopped."""
    config = load_run_config().to_mapping()
    straight, first = ServerStep(OPTIONS[name]), ServerStep(OPTIONS[name])
    base = dict(FLOATS)
    after_one = first.apply(1, base, weighted_mean(_deltas(1), [1, 1, 1]))
    straight.apply(1, base, weighted_mean(_deltas(1), [1, 1, 1]))
    recorder = RunRecorder(tmp_path, config)
    recorder.add_round({"round": 1, "lr_span": [0.0, 0.5]}, after_one, first.state())
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["server_optimizer"]
    assert saved and all(isinstance(t, torch.Tensor) for values in saved.values() for t in values.values())
    (tmp_path / "status.json").write_text(json.dumps({"state": "interrupted"}))
    resumed_recorder, done, _ = RunRecorder.resume(tmp_path, config)
    resumed = ServerStep(OPTIONS[name])
    resumed.load(resumed_recorder.server_optimizer)
    expected = straight.apply(2, after_one, weighted_mean(_deltas(2), [1, 1, 1]))
    got = resumed.apply(2, after_one, weighted_mean(_deltas(2), [1, 1, 1]))
    assert done == 1 and all(np.array_equal(expected[k], got[k]) for k in FLOATS)


def test_the_proximal_term_pulls_toward_the_received_weights():
    model = Net()
    anchor = [p.detach().clone() for p in model.parameters()]
    assert float(proximal_term(model, anchor, 0.1)) == 0.0
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    first = next(model.parameters())
    term = proximal_term(model, anchor, 0.1)
    assert float(term) == pytest.approx(0.05 * first.numel(), rel=1e-5)
    term.backward()
    assert torch.allclose(first.grad, torch.full_like(first, 0.1))  # mu (w - w_received)


@pytest.mark.parametrize("overrides, message", [
    ("strategy='fedsgd'", "strategy: unknown value 'fedsgd'"),
    ("strategy='fedadam'", "server-lr is its eta"),
    ("strategy='fedyogi' server-lr=0.01 tau=0", "tau: must be in (0, 1]"),
    ("beta-2=1.0", "beta-2: must be in [0, 1)"),
    ("server-momentum=-0.1", "server-momentum: must be in [0, 1)"),
    ("proximal-mu=-1", "proximal-mu: must be in [0, 10]"),
])
def test_strategy_keys_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_run_config([overrides])


def test_only_fedprox_sends_a_proximal_term_to_the_clients():
    assert load_run_config(["strategy='fedprox' proximal-mu=0.1"]).local_training().proximal_mu == 0.1
    assert load_run_config(["proximal-mu=0.1"]).local_training().proximal_mu == 0.0


def _strategy_run(data, out, strategy: str):
    extra = {"fedadam": "server-lr=0.01", "fedyogi": "server-lr=0.01", "fedadagrad": "server-lr=0.01"}.get(strategy, "")
    proc = launch(["-c", f"num-server-rounds=2 time-limit-min=0 num-supernodes=2 fraction-train=1.0 local-epochs=1 "
                         f"server-eval-every=1 data='{data}' output-dir='{out / strategy}' strategy='{strategy}' {extra}"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return run_dir_of(proc)


def _check_run(run_dir, strategy: str) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["strategy"] == strategy and len(metrics["rounds"]) == 2
    assert all(r["clients"] == 2 and not r["client_failures"] for r in metrics["rounds"])
    checkpoint = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    held = set(checkpoint.get("server_optimizer", {}))
    assert held == {"fedadam": {"m_t", "v_t"}, "fedyogi": {"m_t", "v_t"}, "fedadagrad": {"m_t", "v_t"},
                    "fedavgm": {"momentum"}, "scaffold": {"scaffold_c", "scaffold_c_0", "scaffold_c_1"}}.get(strategy, set())
    if strategy == "scaffold":  # round 2's train messages also carried each node's correction (fp32: a model's size)
        sent = [r["bytes_sent"] for r in metrics["rounds"]]
        assert sent[1] - sent[0] == pytest.approx(2 * metrics["summary"]["fp32_model_bytes"], rel=0.01)
    Net().load_state_dict(torch.load(run_dir / "final_model.pt", weights_only=True))


@pytest.mark.slow
def test_fedadam_and_scaffold_run_end_to_end(tiny_data, tmp_path):
    """Real runs side by side: Flower's optimizer on the server (its moments checkpointed); SCAFFOLD's
    controls sent with the model, applied on the clients and checkpointed."""
    with ThreadPoolExecutor(2) as pool:
        runs = {s: pool.submit(_strategy_run, tiny_data, tmp_path, s) for s in ("fedadam", "scaffold")}
        for strategy, run in runs.items():
            _check_run(run.result(), strategy)


@pytest.mark.long
def test_the_other_strategies_run_end_to_end(tiny_data, tmp_path):
    """Long tier: the CI tier runs FedAdam (the FedOpt path, moments checkpointed) and SCAFFOLD; these
    take the same paths with Flower's other optimizers, whose steps the unit tests compare, and
    FedProx's proximal term (its own unit test above)."""
    with ThreadPoolExecutor(2) as pool:
        runs = {s: pool.submit(_strategy_run, tiny_data, tmp_path, s) for s in ("fedprox", "fedyogi", "fedadagrad", "fedavgm")}
        for strategy, run in runs.items():
            _check_run(run.result(), strategy)


def test_a_strategy_other_than_fedavg_labels_its_run_folder():
    assert load_run_config().label == "fp32"
    assert load_run_config(["strategy='fedadam' server-lr=0.01"]).label == "fp32-fedadam"
    assert load_run_config(["strategy='fedprox' transport='int4' transport-error-feedback=true"]).label == "fp32-txint4-ef-fedprox"
