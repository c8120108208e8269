"""Transport below int4 (issue 30): int2, sign and topk codecs, each direction its own codec,
warm-up rounds and the server learning rate; two real 2-round runs side by side cover the three codecs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, reap, run_dir_of
from flwr.app import RecordDict

from eurosat.fl.codecs import CODECS, get_codec
from eurosat.fl.config import ConfigError, link_wire, link_wires, load_run_config, to_override_string
from eurosat.fl.link import ClientLink, LinkPlan, ServerLink, error_feedback
from eurosat.fl.state import to_numpy
from eurosat.fl.server_step import is_parameter
from eurosat.fl.strategy import aggregate_updates
from eurosat.quant.packing import quantize
from eurosat.train.model import Net

NPY_HEADER = 128  # np.save's header for these arrays: Flower's Array data is an .npy file




def _delta(state, rng, scale=0.01):
    return {k: (rng.normal(0, scale, v.shape).astype(np.float32) if v.dtype.kind == "f" else np.zeros_like(v))
            for k, v in state.items()}


def _weights(state):
    return {k: v for k, v in state.items() if v.dtype.kind == "f" and v.ndim >= 2}


def test_int2_codes_are_within_half_a_step_and_four_to_a_byte(state):
    codec = get_codec("int2")
    record = codec.encode(state)
    back = codec.decode(record)
    for k, v in state.items():
        if v.dtype.kind != "f" or v.ndim < 2:
            assert np.array_equal(back[k], v), k  # integer buffers, biases and BatchNorm unchanged
            continue
        scale = quantize(v, 2)[1]  # max |x| per channel: codes -1, 0, 1
        err = np.abs(back[k] - v).reshape(len(v), -1).max(1)
        assert np.all(err <= scale / 2 + 1e-7), k
        assert len(np.unique(back[k] / scale.reshape(-1, *[1] * (v.ndim - 1)))) <= 3
        assert record[k].numpy().nbytes == len(v) * math.ceil(v[0].size * 2 / 8), k  # 4 codes a byte


def test_sign_sends_one_bit_and_each_channels_mean_magnitude(state):
    codec = get_codec("sign")
    record = codec.encode(state)
    back = codec.decode(record)
    for k, v in _weights(state).items():
        scale = np.abs(v).reshape(len(v), -1).mean(1)
        rows = back[k].reshape(len(v), -1)
        assert np.allclose(np.abs(rows), scale[:, None], rtol=1e-6), k  # bounded by the scale: |decoded| = scale
        assert np.array_equal(rows >= 0, v.reshape(len(v), -1) >= 0), k  # the sign of every value
        assert record[k].numpy().nbytes == len(v) * math.ceil(v[0].size / 8), k  # 8 a byte
        # what is lost is bounded by the scale and the value: | |x| - scale |
        assert np.all(np.abs(rows - v.reshape(len(v), -1)) <= np.maximum(np.abs(v.reshape(len(v), -1)), scale[:, None]) + 1e-7)
    for k in ("fc1.bias", "bn1.running_var", "bn1.num_batches_tracked"):
        assert np.array_equal(back[k], state[k])


def _gap_bytes(positions: np.ndarray) -> int:
    gaps = np.diff(positions, prepend=-1) - 1
    return int((1 + gaps // 255).sum())


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.3])
def test_topk_keeps_exactly_the_largest_and_the_smaller_index(state, fraction):
    codec = get_codec("topk").configured(topk_fraction=fraction)
    delta = _delta(state, np.random.default_rng(1))
    record = codec.encode(delta)
    back = codec.decode(record)
    for k, v in _weights(delta).items():
        flat, got = v.ravel(), back[k].ravel()
        kept = max(1, round(fraction * flat.size))
        largest = np.sort(np.argsort(-np.abs(flat), kind="stable")[:kept])
        assert np.array_equal(np.flatnonzero(got), largest), k  # exactly the k % largest by magnitude
        step = np.abs(flat[largest]).max() / 127
        assert np.all(np.abs(got[largest] - flat[largest]) <= step / 2 + 1e-7), k  # int8 values
        index = record[k + "::index"].numpy()
        bitmap = math.ceil(flat.size / 8)
        gaps = _gap_bytes(largest)
        assert index.nbytes == (gaps if gaps < bitmap else bitmap), (k, gaps, bitmap)  # the smaller one
        assert record[k].numpy().nbytes == kept  # one byte per value
    assert all(np.array_equal(back[k], v) for k, v in delta.items() if v.ndim < 2)
    if fraction == 0.3:  # the bitmap is smaller above 1/8 of the entries
        assert record["fc1.weight::index"].numpy().nbytes == math.ceil(128 * 2400 / 8)


def test_topk_positions_survive_long_and_empty_gaps():
    codec = get_codec("topk").configured(topk_fraction=5 / 4096)
    x = np.zeros((4, 1024), dtype=np.float32)
    positions = [0, 1, 256, 511, 4095]  # gaps 0, 0, 254, 254 and 3583 (14 bytes of 255 and one more)
    x.flat[positions] = [1.0, -2.0, 3.0, -0.5, 0.25]
    record = codec.encode({"w": x})
    assert record["w::index"].numpy().nbytes == _gap_bytes(np.asarray(positions)) == 4 + 15
    back = codec.decode(record)["w"]
    assert np.array_equal(np.flatnonzero(back), positions)
    assert np.allclose(back.flat[positions], x.flat[positions], atol=3 / 254)


@pytest.mark.parametrize("name, payload", [
    ("int2", lambda v: len(v) * math.ceil(v[0].size / 4) + 4 * len(v) + 4 * v.ndim),
    ("sign", lambda v: len(v) * math.ceil(v[0].size / 8) + 4 * len(v) + 4 * v.ndim),
])
def test_byte_counts_are_the_messages_own(state, name, payload):
    """Every byte of a message is counted: codes, scales, shapes and Flower's framing (the .npy
    header and the key of each array), as `ArrayRecord.count_bytes()` counts them."""
    record = get_codec(name).encode(state)
    expected = sum(payload(v) if v.ndim >= 2 and v.dtype.kind == "f" else v.nbytes for v in state.values())
    arrays = sum(3 if v.ndim >= 2 and v.dtype.kind == "f" else 1 for v in state.values())
    keys = sum(len(k) for k in record.keys())
    assert record.count_bytes() == expected + arrays * NPY_HEADER + keys
    assert get_codec(name).nbytes(state) == record.count_bytes()


def test_topk_bytes_count_the_indices(state):
    codec = get_codec("topk")
    delta = _delta(state, np.random.default_rng(2))
    record = codec.encode(delta)
    payload = 0
    for k, v in delta.items():
        if v.ndim >= 2:
            kept = round(0.1 * v.size)
            top = np.sort(np.argsort(-np.abs(v.ravel()), kind="stable")[:kept])
            payload += kept + min(_gap_bytes(top), math.ceil(v.size / 8)) + 4 + 4 * v.ndim
        else:
            payload += v.nbytes
    assert record.count_bytes() == payload + len(record) * NPY_HEADER + sum(len(k) for k in record.keys())


def test_the_targets_bytes_fit(state):
    """Both ways in sign: at most 0.040 of fp32's bytes; topk 10 %: at most 0.06 (a dense random
    update: positions spread evenly, the gaps' worst case)."""
    delta = _delta(state, np.random.default_rng(3))
    fp32 = get_codec("fp32").nbytes(delta)
    assert get_codec("sign").nbytes(delta) <= 0.040 * fp32
    assert get_codec("topk").configured(topk_fraction=0.1).nbytes(delta) <= 0.06 * fp32
    assert get_codec("int2").nbytes(delta) <= 0.07 * fp32


@pytest.mark.parametrize("name", ["int2", "sign", "topk"])
def test_error_feedback_residual_is_what_was_not_sent_accumulated(state, name):
    """After each round the residual equals the sum of the true deltas minus the sum of what was
    sent: error is delayed, never dropped, whatever the codec."""
    codec, rng = get_codec(name), np.random.default_rng(4)
    residual, sent, true = None, [], []
    for _ in range(4):
        delta = _delta(state, rng)
        true.append(delta)
        upload, residual = error_feedback(codec, delta, residual)
        sent.append(codec.decode(codec.encode(upload)))
        for k, v in _weights(state).items():
            total = sum(d[k].astype(np.float64) for d in true)
            assert np.allclose(residual[k], total - sum(s[k].astype(np.float64) for s in sent), atol=1e-6), k


def test_each_direction_its_own_codec_in_one_config():
    assert (load_run_config(['transport="int4"']).uplink, load_run_config(['transport="int4"']).downlink) == ("int4", "int4")
    cfg = load_run_config(['transport="int8" transport-up="sign" transport-error-feedback=true'])
    assert (cfg.uplink, cfg.downlink) == ("sign", "int8") and cfg.wire == "sign+ef up, int8+ef down"
    assert cfg.label == "fp32-txup-sign-ef-down-int8-ef"
    plan = cfg.link_plan()
    assert (plan.up.name, plan.down.name, plan.feedback) == ("sign", "int8", True)
    cfg = load_run_config(['transport="topk" topk-fraction=0.01 transport-down="fp16"'])
    assert link_wires(cfg.to_mapping()) == ("topk0.01", "fp16") and cfg.link_plan().up.fraction == 0.01
    assert load_run_config(['transport="topk" transport-error-feedback=true']).label == "fp32-txtopk0.1-ef"
    assert load_run_config(['transport-up="fp32" transport-down="fp32" transport-error-feedback=true']).label == "fp32"


def test_a_run_folder_of_an_earlier_version_still_resumes_and_reads():
    """A stored config without the new keys: they take their defaults, and the link is the old one."""
    old = {k: v for k, v in load_run_config(['transport="int4" transport-error-feedback=true']).to_mapping().items()
           if k not in ("transport-up", "transport-down", "topk-fraction", "transport-warmup-rounds", "server-lr")}
    cfg = load_run_config([to_override_string(old)])
    assert (cfg.uplink, cfg.downlink, cfg.server_lr, cfg.label) == ("int4", "int4", 1.0, "fp32-txint4-ef")
    assert link_wire(old) == "int4+ef" and link_wire({}) == "fp32"


@pytest.mark.parametrize("text, message", [
    ('transport-up="int3"', "transport-up: unknown value 'int3'; allowed: , fp32, fp16, int8, int4, int2, sign, topk"),
    ('transport-down="bf16"', "transport-down: unknown value 'bf16'"),
    ("topk-fraction=0", "topk-fraction: must be in (0, 1]"),
    ("topk-fraction=1.5", "topk-fraction: must be in (0, 1]"),
    ("server-lr=0", "server-lr: must be in (0, 10]"),
    ("transport-warmup-rounds=-1", "transport-warmup-rounds: must be in [0, 1000000]"),
    ("transport-warmup-rounds=1.5", "transport-warmup-rounds: expected int"),
])
def test_bad_link_keys_are_one_line(text, message):
    with pytest.raises(ConfigError) as info:
        load_run_config([text])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_warmup_rounds_send_int8_where_the_codec_is_not_a_float_one():
    plan = LinkPlan(CODECS["fp16"], CODECS["sign"], feedback=True, warmup_rounds=2)
    assert [tuple(c.name for c in plan.at(r)) for r in (1, 2, 3)] == [("fp16", "int8"), ("fp16", "int8"), ("fp16", "sign")]
    assert plan.wires(1) == ("fp16+ef", "int8+ef") and plan.wires(3) == ("fp16+ef", "sign+ef")
    assert LinkPlan(CODECS["fp32"], CODECS["fp32"], feedback=True).wires(1) == ("fp32", "fp32")


def test_replicas_stay_identical_when_the_codec_changes(state):
    """Warm-up in int8, then sign: node and server replicas equal bit for bit, and sign with
    feedback tracks the model far closer than re-sending it in sign."""
    plan, rng = LinkPlan(CODECS["sign"], CODECS["sign"], feedback=True, warmup_rounds=1), np.random.default_rng(5)
    server, store = ServerLink(plan.down, plan.feedback), RecordDict()  # store: the node's context.state
    for rnd in range(1, 9):
        state = {k: v + rng.normal(0, 0.002, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in state.items()}
        down, up = plan.at(rnd)
        [(_, arrays, link)] = server.encode(state, [1], down)
        held = ClientLink(down, store, True, up=up).decode(RecordDict({"arrays": arrays, "transport": link}))  # as the ClientApp, each round
        assert all(np.array_equal(held[k], server.replicas[server.held[1]][k]) for k in state)
    plain = CODECS["sign"].decode(CODECS["sign"].encode(state))
    for k, v in _weights(state).items():
        assert np.abs(held[k] - v).mean() < 0.5 * np.abs(plain[k] - v).mean(), k


def test_the_uplink_codec_encodes_and_the_residual_follows_it(state):
    node = ClientLink(CODECS["fp16"], RecordDict(), True, up=CODECS["topk"])
    delta = _delta(state, np.random.default_rng(6))
    record = node.encode(delta)
    assert "fc1.weight::index" in record.keys()
    residual = {k: v.numpy() for k, v in node.store.array_records["transport-residual"].items()}
    sent = CODECS["topk"].decode(record)["fc1.weight"]
    assert np.allclose(residual["fc1.weight"], delta["fc1.weight"] - sent, atol=1e-7)
    dropped = sent == 0
    assert dropped.sum() == 128 * 2400 - round(0.1 * 128 * 2400)
    assert np.array_equal(residual["fc1.weight"][dropped], delta["fc1.weight"][dropped])  # kept whole for later


def test_server_lr_scales_the_averaged_update(state):
    codec, rng = get_codec("sign"), np.random.default_rng(7)
    records = [codec.encode(_delta(state, rng)) for _ in range(2)]
    plain = aggregate_updates(codec, state, records, [1, 3])
    doubled = aggregate_updates(codec, state, records, [1, 3], server_lr=2.0)
    for k, v in state.items():
        if is_parameter(k, v):
            assert np.allclose(doubled[k] - v, 2 * (plain[k] - v), atol=1e-6), k
        else:  # batch-norm statistics and counters take the update as it is (server_step.is_parameter)
            assert np.array_equal(doubled[k], plain[k]), k
    assert any(not is_parameter(k, v) and v.dtype.kind == "f" for k, v in state.items())  # statistics were checked


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    """The real launcher in a subprocess, not waited for (two runs share the CPUs)."""
    fd, result = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    os.unlink(result)
    proc = subprocess.Popen([sys.executable, "-m", "eurosat.launch", *args, "--result-json", result], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, result


@pytest.fixture(scope="module")
def low_bit_runs(tiny_data, tmp_path_factory):
    """Two real 2-round runs at once, 2 nodes each, between them every new codec in a real message:
    sign up and int2 down with error feedback; topk 5 % both ways after one int8 warm-up round,
    server-lr 1.5."""
    out = tmp_path_factory.mktemp("low-bit")
    common = (f"num-server-rounds=2 num-supernodes=2 fraction-train=1.0 local-epochs=1 time-limit-min=0 "
              f"data='{tiny_data}' output-dir='{out}' transport-error-feedback=true")
    runs = {"sign-int2": _start(["-c", f'{common} transport-up="sign" transport-down="int2"']),
            "topk": _start(["-c", f'{common} transport="topk" topk-fraction=0.05 transport-warmup-rounds=1 server-lr=1.5'])}
    done = {}
    try:
        for name, (proc, result) in runs.items():
            log, _ = proc.communicate(timeout=900)
            proc.result = json.loads(Path(result).read_text()) if Path(result).exists() else {}
            Path(result).unlink(missing_ok=True)
            assert proc.returncode == 0, f"{name}: {log[-4000:]}"
            done[name] = json.loads((run_dir_of(proc) / "metrics.json").read_text()) | {"dir": str(run_dir_of(proc))}
    finally:
        reap([proc for proc, _ in runs.values()])  # the other run, if one failed
    return out, done


@pytest.mark.slow
def test_sign_up_int2_down_runs_and_counts_every_byte(low_bit_runs):
    """The recorded bytes are the messages' own: sign and int2 messages weigh the same whatever the
    values, so each round's are known exactly."""
    _, runs = low_bit_runs
    metrics = runs["sign-int2"]
    assert Path(metrics["dir"]).parts[-3] == "fp32-txup-sign-ef-down-int2-ef"
    model = to_numpy(Net().state_dict())
    for r in metrics["rounds"]:
        assert (r["transport_up"], r["transport_down"]) == ("sign+ef", "int2+ef")
        assert r["bytes_sent"] == 2 * get_codec("int2").encode(model).count_bytes()
        assert r["bytes_received"] == 2 * get_codec("sign").encode(model).count_bytes()
    summary = metrics["summary"]
    assert summary["rounds_completed"] == 2 and (summary["transport_up"], summary["transport_down"]) == ("sign+ef", "int2+ef")
    assert summary["bytes_ratio_to_fp32"] <= (0.040 + 0.07) / 2


@pytest.mark.slow
def test_topk_runs_after_an_int8_warmup_and_the_figures_place_the_new_codecs(low_bit_runs, tmp_path):
    out, runs = low_bit_runs
    metrics = runs["topk"]
    model = to_numpy(Net().state_dict())
    first, second = metrics["rounds"]
    assert (first["transport_up"], first["transport_down"]) == ("int8+ef", "int8+ef")
    assert first["bytes_sent"] == first["bytes_received"] == 2 * get_codec("int8").encode(model).count_bytes()
    assert (second["transport_up"], second["transport_down"]) == ("topk0.05+ef", "topk0.05+ef")
    fp32 = get_codec("fp32").nbytes(model)
    assert second["bytes_sent"] + second["bytes_received"] <= 4 * 0.035 * fp32  # values, gaps, scales, shapes
    assert metrics["config"]["server-lr"] == 1.5 and Path(metrics["dir"]).parts[-3] == "fp32-txtopk0.05-ef"
    from eurosat.report.figures import figures, transport_order
    from eurosat.report.runs import find_runs

    links = {r.transport for r in find_runs(out)}
    assert links == {"sign+ef up, int2+ef down", "topk0.05+ef"}
    order = transport_order(sorted(links))
    assert order.index("sign+ef up, int2+ef down") > order.index("sign+ef") and order.index("topk0.05+ef") > order.index("sign+ef up, int2+ef down")
    assert "transport_comparison.png" in [name for name, _, _ in figures([], out)]
