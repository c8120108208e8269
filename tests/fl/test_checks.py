"""The server's checks of every client reply (eurosat/fl/checks.py), on real Flower messages in
each transport format, and the run-config side of the test hook that makes a client misbehave."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, Metadata, MessageType, RecordDict

from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg

from eurosat.fl.checks import ReplyLimits, UpdateChecker, capped_weights
from eurosat.fl.codecs import CODECS
from eurosat.fl.config import ConfigError, load_run_config
from eurosat.fl.hooks import parse_hooks
from eurosat.fl.protocol import ARRAYS, EvalReport, TrainReport
from eurosat.fl.strategy import BudgetedFedAvg, NonFiniteModel
from eurosat.fl.state import to_numpy
from eurosat.train.model import Net
from conftest import launch, run_dir_of

GLOBAL = to_numpy(Net().state_dict())
LIMITS = ReplyLimits((2160,) * 10, max_weight_share=0.5, max_update_norm=5.0)


def delta(seed: int, scale: float = 1e-3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape).astype(np.float32) * scale if v.dtype == np.float32
                else np.zeros_like(v)) for k, v in GLOBAL.items()}


def reply(node: int, partition: int, update: dict | ArrayRecord, codec: str = "int8", examples: int = 2160,
          loss: float = 0.5) -> Message:
    """What a SuperNode's train reply looks like when it reaches the ServerApp."""
    report = TrainReport(partition=partition, num_examples=examples, train_loss=loss, train_accuracy=0.8,
                         train_seconds=1.0, train_images=examples, train_steps=10, lr_last=1e-3, compute="float32@cpux2")
    arrays = update if isinstance(update, ArrayRecord) else CODECS[codec].encode(update, quiet=True)
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN)
    return Message(RecordDict({ARRAYS: arrays, **report.to_records()}), metadata=meta)


def retyped(record: ArrayRecord, key: str, dtype) -> ArrayRecord:
    record[key] = Array(record[key].numpy().astype(dtype))
    return record


def reasons(checked) -> list[str]:
    return [f["error"] for f in checked.failures]


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_honest_replies_pass_in_every_transport_format(codec):
    checker = UpdateChecker(CODECS[codec], GLOBAL, LIMITS)
    checked = checker.round([reply(n, n, delta(n), codec) for n in range(4)], known={})
    assert reasons(checked) == [] and [u.report.partition for u in checked.updates] == [0, 1, 2, 3]
    assert checked.weights == [2160.0] * 4 and checked.capped == []
    decoded = CODECS[codec].decode(CODECS[codec].encode(delta(0), quiet=True))
    assert all(np.array_equal(checked.updates[0].delta[k], decoded[k]) for k in GLOBAL)


@pytest.mark.parametrize("make, reason", [
    (lambda: reply(7, 1, {**delta(1), "conv1.weight": np.full_like(GLOBAL["conv1.weight"], np.nan)}),
     "non-finite update (NaN or Inf in conv1.weight)"),
    (lambda: reply(7, 1, delta(1), examples=10**9), "claimed 1000000000 examples, at most 2160"),
    (lambda: reply(7, 1, delta(1), examples=0), "claimed 0 examples, at most 2160"),
    (lambda: reply(7, 12, delta(1)), "claimed partition 12, the run has 0..9"),
    (lambda: reply(7, 1, delta(1), loss=float("inf")), "non-finite metric train_loss"),
    (lambda: reply(7, 1, retyped(CODECS["int8"].encode(delta(1), quiet=True), "conv1.weight", np.float32)),
     "update array conv1.weight is float32, the int8 transport sends int8"),
    (lambda: reply(7, 1, delta(1), codec="fp32"), "missing ['conv1.weight::scale'"),
    (lambda: reply(7, 1, {k: v for k, v in delta(1).items() if k != "fc2.bias"}), "missing ['fc2.bias']"),
    (lambda: reply(7, 1, {**delta(1), "extra.weight": np.zeros((4, 4), np.float32)}), "unexpected ['extra.weight'"),
    (lambda: reply(7, 1, ArrayRecord({k: v for k, v in CODECS["fp32"].encode(
        {k: np.zeros((2, *v.shape), v.dtype) for k, v in GLOBAL.items()}, quiet=True).items()}), codec="fp32"),
     "more than an fp32 model"),
])
def test_a_bad_reply_is_refused_with_its_reason(make, reason):
    checker = UpdateChecker(CODECS["int8"], GLOBAL, LIMITS)
    checked = checker.round([reply(n, n - 18, delta(n)) for n in (20, 21, 22)] + [make()], known={})
    assert len(checked.updates) == 3 and len(checked.failures) == 1, reasons(checked)
    assert checked.failures[0]["node"] == 7 and reason in checked.failures[0]["error"], reasons(checked)
    assert checked.failures[0]["error"].startswith("refused: ")


@pytest.mark.parametrize("overrides", ['precision="int8"', 'precision="fp16"', "weight-bits=4 activation-bits=8"])
@pytest.mark.parametrize("codec", ["fp32", "int4"])
def test_every_models_own_update_passes(overrides, codec):
    """A QAT model carries many small observer arrays (their headers add kilobytes): its honest
    update is no bigger than what fp32 sends for that model, and must pass."""
    from eurosat.fl.task import make_model
    state = to_numpy(make_model(load_run_config([overrides])).state_dict())
    honest = {k: (v * 1e-3 if v.dtype == np.float32 else np.zeros_like(v)) for k, v in state.items()}
    checker = UpdateChecker(CODECS[codec], state, LIMITS)
    checked = checker.round([reply(n, n, honest, codec) for n in range(3)], known={})
    assert reasons(checked) == [] and len(checked.updates) == 3


def test_a_reply_that_does_not_decode_to_the_model_is_refused():
    record = CODECS["int8"].encode(delta(1), quiet=True)
    record["conv1.weight::scale"] = Array(np.ones(3, np.float32))  # a scale per channel, too few
    checked = UpdateChecker(CODECS["int8"], GLOBAL, LIMITS).round([reply(7, 1, record)], known={})
    assert checked.updates == [] and "refused: " in checked.failures[0]["error"]


def test_one_node_answers_for_one_partition():
    checker = UpdateChecker(CODECS["fp32"], GLOBAL, LIMITS)
    # node 5 held partition 3 before; node 6 now claims it too: node 6 is refused, node 5 kept
    checked = checker.round([reply(5, 3, delta(5), "fp32"), reply(6, 3, delta(6), "fp32"),
                             reply(7, 4, delta(7), "fp32")], known={5: 3, 6: 2, 7: 4})
    assert [u.node for u in checked.updates] == [5, 7]
    assert checked.failures[0]["node"] == 6 and "its node held partition 2" in checked.failures[0]["error"]
    # neither known: both claimants of the twice-claimed partition are refused
    checked = checker.round([reply(5, 3, delta(5), "fp32"), reply(6, 3, delta(6), "fp32"),
                             reply(7, 4, delta(7), "fp32")], known={})
    assert [u.node for u in checked.updates] == [7]
    assert all("partition 3 claimed by 2 nodes" in e for e in reasons(checked))


@pytest.mark.parametrize("factor, refused", [(5.0, [9]), (0.0, [])])
def test_an_update_far_above_the_rounds_median_norm_is_refused(factor, refused):
    limits = ReplyLimits((2160,) * 10, max_update_norm=factor)
    checker = UpdateChecker(CODECS["fp16"], GLOBAL, limits)
    honest = [reply(n, n, delta(n), "fp16") for n in range(3)]
    attacker = reply(9, 9, {k: v * -10 for k, v in delta(9).items()}, "fp16")
    checked = checker.round(honest + [attacker], known={})
    assert [f["node"] for f in checked.failures] == refused
    if refused:
        assert "above 5 x the round's median" in checked.failures[0]["error"]


def test_batch_norm_statistics_far_above_the_median_are_clipped_not_refused():
    """Under label skew an honest client's running statistics move towards its own data's moments,
    far more than the others' (2.9 to 14.6 in one measured round, its weights like everyone's): its
    reply is kept with the statistics scaled down to 5 x the round's median, the weights untouched."""
    checker = UpdateChecker(CODECS["fp32"], GLOBAL, LIMITS)
    skewed = {k: (v * 40 if k.endswith((".running_mean", ".running_var")) else v) for k, v in delta(9).items()}
    checked = checker.round([reply(n, n, delta(n), "fp32") for n in range(3)] + [reply(9, 9, skewed, "fp32")], known={})
    assert reasons(checked) == [] and [u.report.partition for u in checked.updates] == [0, 1, 2, 9]
    kept, median = checked.updates[-1], sorted(u.statistics_norm for u in checked.updates[:3])[1]
    [clip] = checked.clipped
    assert clip["partition"] == 9 and clip["clipped_to"] == pytest.approx(5 * median, rel=1e-3)
    assert kept.statistics_norm == pytest.approx(5 * median, rel=1e-3)
    stats = [k for k in GLOBAL if k.endswith(".running_var")]
    assert np.allclose(kept.delta[stats[0]], skewed[stats[0]] * 5 * median / clip["statistics_norm"], rtol=1e-3)
    assert all(np.array_equal(kept.delta[k], skewed[k]) for k in GLOBAL if k.endswith(".weight"))


def test_a_negative_running_variance_is_raised_to_zero():
    from eurosat.fl.state import nonnegative_variances

    state = {"bn1.running_var": np.array([-0.5, 2.0], np.float32), "fc.bias": np.array([-0.5], np.float32)}
    out = nonnegative_variances(state)
    assert out["bn1.running_var"].tolist() == [0.0, 2.0] and out["bn1.running_var"].dtype == np.float32
    assert out["fc.bias"].tolist() == [-0.5]


def test_no_reply_weighs_more_than_its_share():
    limits = ReplyLimits((21600, 2160, 2160, 2160), max_weight_share=0.5)
    checker = UpdateChecker(CODECS["fp32"], GLOBAL, limits)
    checked = checker.round([reply(n, n, delta(n), "fp32", examples=21600 if n == 0 else 1000) for n in range(3)],
                            known={})
    assert checked.failures == [] and checked.weights == [2000.0, 1000.0, 1000.0]
    assert checked.capped == [{"partition": 0, "claimed": 21600.0, "weight": 2000.0}]
    two = checker.round([reply(n, n, delta(n), "fp32", examples=21600 if n == 0 else 1000) for n in range(2)], known={})
    assert two.weights == [21600.0, 1000.0]  # the share applies from 3 replies on


@pytest.mark.parametrize("weights, share", [([10, 1, 1], 0.5), ([5, 5, 1, 1], 0.4), ([100, 90, 1, 1, 1], 0.3),
                                            ([3, 2, 1], 0.5), ([1, 1, 1], 0.2), ([7], 0.5)])
def test_capped_weights_hold_the_share_and_keep_the_order(weights, share):
    out = capped_weights(weights, share)
    if share * len(weights) >= 1:
        assert max(out) <= share * sum(out) + 1e-9
    assert all(o <= w for o, w in zip(out, weights))
    assert sorted(range(len(out)), key=lambda i: -out[i])[:1] == sorted(range(len(weights)), key=lambda i: -weights[i])[:1]
    if max(weights) <= share * sum(weights):
        assert out == weights  # nothing to cap: untouched


def test_an_evaluation_reply_is_checked_too():
    checker = UpdateChecker(CODECS["fp32"], GLOBAL, LIMITS)
    meta = Metadata(run_id=1, message_id="m", src_node_id=3, dst_node_id=0, reply_to_message_id="x", group_id="",
                    created_at=0.0, ttl=60.0, message_type=MessageType.EVALUATE)
    good = Message(RecordDict(EvalReport(3, 432, 0.4, 0.9).to_records()), metadata=meta)
    assert checker.eval_reply(good).accuracy == 0.9
    for bad, reason in [(EvalReport(3, 10**9, 0.4, 0.9), "claimed 1000000000 examples"),
                        (EvalReport(3, 432, float("nan"), 0.9), "impossible evaluation"),
                        (EvalReport(3, 432, 0.4, 1.5), "impossible evaluation")]:
        with pytest.raises(ValueError, match=reason):
            checker.eval_reply(Message(RecordDict(bad.to_records()), metadata=meta))


@pytest.mark.parametrize("text, expected", [("nan@0", ("nan", 0.0, 0)), ("scale=-10@3", ("scale", -10.0, 3)),
                                            ("examples=1e9@1", ("examples", 1e9, 1)), ("slow=3@2", ("slow", 3.0, 2))])
def test_test_hooks_parse(text, expected):
    (hook,) = parse_hooks(text)
    assert (hook.kind, hook.value, hook.partition) == expected
    assert [h.partition for h in parse_hooks(f"{text}, nan@7")] == [expected[2], 7]


@pytest.mark.parametrize("text", ["nan", "scale@1", "boom@1", "nan=3@1", "slow=0.5@1", "scale=x@1", "nan@-1"])
def test_a_malformed_test_hook_is_one_line(text, monkeypatch):
    monkeypatch.setenv("EUROSAT_TEST_HOOKS", "1")
    with pytest.raises(ConfigError, match="test-hook"):
        load_run_config([f"test-hook='{text}'"])


def test_a_test_hook_needs_its_variable(monkeypatch):
    monkeypatch.delenv("EUROSAT_TEST_HOOKS", raising=False)
    with pytest.raises(ConfigError, match=r"needs \$EUROSAT_TEST_HOOKS=1"):
        load_run_config(["test-hook='nan@0'"])
    monkeypatch.setenv("EUROSAT_TEST_HOOKS", "1")
    assert load_run_config(["test-hook='nan@0'"]).test_hook == "nan@0"


@pytest.mark.parametrize("overrides, message", [
    ("max-weight-share=0", "max-weight-share"), ("max-weight-share=1.5", "max-weight-share"),
    ("max-update-norm=-1", "max-update-norm"), ("aggregation='mode'", "aggregation: unknown value 'mode'"),
    ("trim-fraction=0.5", r"trim-fraction: must be in \[0, 0.5\)"),
    ("aggregation='trimmed-mean'", "trim-fraction 0.2 of 1 clients a round trims none"),
    ("aggregation='median' transport='sign' fraction-train=1.0", "'median' of sign updates makes no sense"),
    ("aggregation='trimmed-mean' transport-up='topk' fraction-train=1.0", "of topk updates makes no sense"),
])
def test_limits_and_aggregations_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config([overrides])


@pytest.mark.parametrize("name, flower", [("median", lambda: FedMedian()),
                                          ("trimmed-mean", lambda: FedTrimmedAvg(beta=0.2))])
def test_robust_aggregates_equal_flowers_own_on_the_same_replies(name, flower):
    """The server's round (checks, then the statistic over deltas, applied to the base) gives
    the model Flower's FedMedian / FedTrimmedAvg make of the same clients' models."""
    base = {k: v + np.float32(0.01) if v.dtype == np.float32 else v for k, v in GLOBAL.items()}
    deltas = [delta(n, scale=1e-2 * (1 + n)) for n in range(6)]
    deltas[5] = {k: v * -10 for k, v in deltas[5].items()}  # one attacker
    strategy = BudgetedFedAvg(CODECS["fp32"], aggregation=name, trim_fraction=0.2, expected_nodes=6)
    strategy.global_state = base
    strategy.checker = UpdateChecker(CODECS["fp32"], base, ReplyLimits((2160,) * 6, max_update_norm=0))
    ours, _ = strategy.aggregate_train(1, [reply(n, n, d, "fp32") for n, d in enumerate(deltas)])
    models = [{k: (base[k] + d[k]).astype(base[k].dtype) for k in base} for d in deltas]
    theirs, _ = flower().aggregate_train(1, [reply(n, n, m, "fp32") for n, m in enumerate(models)])
    for key in base:
        if base[key].dtype == np.float32:
            np.testing.assert_allclose(ours[key].numpy(), theirs[key].numpy(), rtol=0, atol=1e-6)


HOOKS = {"EUROSAT_TEST_HOOKS": "1"}


def rounds_of(run_dir) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["rounds"]


@pytest.mark.slow
def test_misbehaving_clients_are_refused_in_a_real_run(tiny_data, tmp_path):
    """Three of six real clients misbehave (NaN, a -10x update, 10^9 examples); with
    min-clients-fraction 0.5 each round aggregates the other three (by Flower's median) and
    records why."""
    proc = launch(["-c", f"num-server-rounds=2 num-supernodes=6 fraction-train=1.0 time-limit-min=0 "
                         f"min-clients-fraction=0.5 test-hook='nan@1,scale=-10@2,examples=1e9@3' aggregation='median' "
                         f"data='{tiny_data}' output-dir='{tmp_path / 'out'}'", "--cpus", "2"], env=HOOKS)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]  # completed_with_failures
    for record in rounds_of(run_dir_of(proc)):
        assert record["partitions"] == [0, 4, 5]
        errors = {f["partition"]: f["error"] for f in record["client_failures"]}
        assert errors[1] == "refused: non-finite update (NaN or Inf in conv1.weight)"
        assert errors[2].startswith("refused: update norm") and "above 5 x the round's median" in errors[2]
        assert errors[3] == f"refused: claimed 1000000000 examples, at most {record_size(tiny_data, 6, 3)}"
    model = torch.load(run_dir_of(proc) / "final_model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


@pytest.mark.slow
def test_a_claimed_partition_of_another_node_ends_the_run_naming_it(tiny_data, tmp_path):
    """Two nodes answer for partition 0: both are refused, too few are left for the default
    min-clients-fraction, and the run fails naming the cause; a run without the variable refuses
    the hook before anything starts."""
    args = ["-c", f"num-server-rounds=1 num-supernodes=3 fraction-train=1.0 time-limit-min=0 "
                  f"test-hook='partition=0@1' data='{tiny_data}' output-dir='{tmp_path / 'out'}'", "--cpus", "2"]
    proc = launch(args, env=HOOKS)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    status = json.loads((run_dir_of(proc) / "status.json").read_text())
    assert "1 of 3 clients answered" in status["error"] and "partition 0 claimed by 2 nodes" in status["error"]
    refused = launch([args[0], args[1].replace(str(tmp_path / "out"), str(tmp_path / "plain")), *args[2:]])
    assert refused.returncode == 2 and "needs $EUROSAT_TEST_HOOKS=1" in refused.stderr
    assert not (tmp_path / "plain").exists()  # refused before any folder was made


def test_an_aggregate_that_overflows_is_refused():
    """A finite model plus finite updates that overflow float32 (a diverging run): the round is
    refused, never applied."""
    strategy = BudgetedFedAvg(CODECS["fp32"], expected_nodes=2)
    strategy.global_state = {**GLOBAL, "fc2.bias": np.full_like(GLOBAL["fc2.bias"], 3e38)}
    strategy.checker = UpdateChecker(CODECS["fp32"], GLOBAL, ReplyLimits((2160,) * 2, max_update_norm=0))
    huge = {**delta(0), "fc2.bias": np.full_like(GLOBAL["fc2.bias"], 3e38)}
    with pytest.raises(NonFiniteModel, match="round 4: the aggregate of 2 update.* holds NaN or Inf; refused"):
        strategy.aggregate_train(4, [reply(1, 0, huge, "fp32"), reply(2, 1, huge, "fp32")])


@pytest.mark.long
def test_a_diverging_lr_never_leaves_a_non_finite_model_marked_completed(tiny_data, tmp_path):
    proc = launch(["-c", f"num-server-rounds=2 num-supernodes=3 fraction-train=1.0 time-limit-min=0 lr=100000.0 "
                         f"min-clients-fraction=0.3 data='{tiny_data}' output-dir='{tmp_path / 'out'}'", "--cpus", "2"])
    run_dir = run_dir_of(proc)
    status = json.loads((run_dir / "status.json").read_text())
    if status["state"].startswith("completed"):
        model = torch.load(run_dir / "final_model.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
        if rounds_of(run_dir)[-1]["server_test_accuracy"] <= 0.1:
            assert "below chance" in status["warning"] and "below chance" in proc.stdout + proc.stderr
    else:
        assert status["state"] == "failed" and "non-finite" in status["error"], status
        assert not (run_dir / "final_model.pt").exists()


def record_size(data, partitions: int, partition: int) -> int:
    from eurosat.data.loading import partition_sizes, resolve_source

    return partition_sizes(resolve_source(str(data)), "iid", partitions)[partition]


def test_without_checks_every_decodable_reply_is_believed(monkeypatch):
    """The attack benchmark's baseline: what FedAvg did before the checks (and only with the variable)."""
    checker = UpdateChecker(CODECS["fp32"], GLOBAL, ReplyLimits((2160,) * 10, enabled=False))
    checked = checker.round([reply(1, 1, delta(1), "fp32", examples=10**9),
                             reply(2, 1, {k: v * -10 for k, v in delta(2).items()}, "fp32")], known={})
    assert checked.failures == [] and checked.weights == [1e9, 2160.0]
    monkeypatch.delenv("EUROSAT_TEST_HOOKS", raising=False)
    with pytest.raises(ConfigError, match=r"check-replies=false .* needs \$EUROSAT_TEST_HOOKS=1"):
        load_run_config(["check-replies=false"])
