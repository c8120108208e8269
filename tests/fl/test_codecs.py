"""Quantized transport: codec round trips, aggregation, and real 2-round simulations (int4 with error feedback; int8 in the long tier)."""

import json
from pathlib import Path
import shutil

import numpy as np
import pytest
from PIL import Image
from conftest import LEARNED_ACCURACY, cli, in_process, launch, run_dir_of
from flwr.app import RecordDict

from eurosat.fl.config import ConfigError, load_run_config
from eurosat.fl.strategy import aggregate_updates
from eurosat.launch.launcher import main as launch_main
from eurosat.train.model import Net
from eurosat.quant.packing import quantize
from eurosat.fl.link import ClientLink, ServerLink, error_feedback
from eurosat.fl.state import to_numpy
from eurosat.fl.codecs import get_codec




def test_fp16_round_trip_is_exact_to_float16(state):
    codec = get_codec("fp16")
    decoded = codec.decode(codec.encode(state))
    for k, v in state.items():
        expect = v.astype(np.float16).astype(np.float32) if v.dtype.kind == "f" else v
        assert np.array_equal(decoded[k], expect) and decoded[k].dtype == expect.dtype, k


@pytest.mark.parametrize("name, bits", [("int8", 8), ("int4", 4)])
def test_integer_codecs_error_is_at_most_half_a_step_per_channel(state, name, bits):
    codec = get_codec(name)
    decoded = codec.decode(codec.encode(state))
    for k, v in state.items():
        if v.dtype.kind != "f":
            assert np.array_equal(decoded[k], v)  # num_batches_tracked travels unchanged
        elif v.ndim >= 2:
            err = np.abs(decoded[k] - v).reshape(v.shape[0], -1).max(1)
            assert np.all(err <= quantize(v, bits)[1] / 2 + 1e-7), k
        else:
            assert np.array_equal(decoded[k], v)  # biases and BatchNorm stay float32


def test_wire_sizes_shrink_as_promised(state):
    fp32 = get_codec("fp32").encode(state).count_bytes()
    ratios = {n: get_codec(n).encode(state).count_bytes() / fp32 for n in ("fp16", "int8", "int4")}
    assert ratios["fp16"] <= 0.51 and ratios["int8"] <= 0.27 and ratios["int4"] <= 0.15, ratios


@pytest.mark.parametrize("name", ["fp16", "int8", "int4"])
def test_aggregation_averages_dequantized_updates(state, name):
    codec = get_codec(name)
    rng = np.random.default_rng(0)
    deltas = [{k: (rng.normal(0, 0.01, v.shape).astype(np.float32) if v.dtype.kind == "f" else np.zeros_like(v))
               for k, v in state.items()} for _ in range(3)]
    encoded = [codec.encode(d) for d in deltas]
    weights = [100, 200, 300]
    new = aggregate_updates(codec, state, encoded, weights)
    decoded = [codec.decode(e) for e in encoded]
    for k, v in new.items():
        assert v.dtype == state[k].dtype  # the global model never drifts into float16
        if v.dtype.kind == "f":
            expected = state[k] + sum(d[k].astype(np.float64) * w for d, w in zip(decoded, weights)) / sum(weights)
            assert np.allclose(v, expected, atol=1e-7), k


def test_error_feedback_delays_quantization_error_and_never_drops_it(state):
    codec, rng = get_codec("int4"), np.random.default_rng(0)
    deltas = [{k: (rng.normal(0, 0.01, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v) for k, v in state.items()}
              for _ in range(3)]
    residual, sent = None, []
    for delta in deltas:
        upload, residual = error_feedback(codec, delta, residual)
        sent.append(codec.decode(codec.encode(upload)))
    for k, v in state.items():
        if v.dtype.kind == "f" and v.ndim >= 2:
            total = sum(d[k].astype(np.float64) for d in deltas)
            assert np.allclose(sum(s[k].astype(np.float64) for s in sent) + residual[k], total, atol=1e-6), k
            assert np.abs(residual[k]).max() < np.abs(total).max()  # bounded: at most half a step per channel
    assert all(isinstance(r, np.ndarray) for r in residual.values())  # 0-d stays an ndarray Flower can send


def _drift(state, rng, scale=0.002):
    return {k: (v + rng.normal(0, scale, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v + 1)
            for k, v in state.items()}


def _payload(arrays, link):
    return RecordDict({"arrays": arrays, **({"transport": link} if link is not None else {})})


def test_downlink_error_feedback_keeps_node_and_server_replicas_identical_and_close(state):
    """Each node's replica equals the server's bit for bit and stays within one update's rounding
    of the global model, far closer than re-rounding the whole model each round."""
    codec, rng = get_codec("int4"), np.random.default_rng(0)
    server, nodes = ServerLink(codec, feedback=True), {7: ClientLink(codec, RecordDict(), feedback=True), 9: ClientLink(codec, RecordDict(), feedback=True)}
    for _ in range(4):
        state = _drift(state, rng)
        for group, arrays, link in server.encode(state, list(nodes)):
            for node in group:
                held = nodes[node].decode(_payload(arrays, link))
                replica = server.replicas[server.held[node]]
                assert all(np.array_equal(held[k], replica[k]) for k in state)
    plain = codec.decode(codec.encode(state))
    for k, v in state.items():
        if v.dtype.kind != "f":
            assert np.array_equal(held[k], v)
        elif v.ndim >= 2:
            assert np.abs(held[k] - v).max() < 0.25 * np.abs(plain[k] - v).max(), k


def test_a_node_that_lost_its_replica_is_told_and_gets_the_whole_model_next(state):
    codec = get_codec("int8")
    server, node = ServerLink(codec, feedback=True), ClientLink(codec, RecordDict(), feedback=True)
    [(_, arrays, link)] = server.encode(state, [3])
    node.decode(_payload(arrays, link))
    [(_, arrays, link)] = server.encode(state, [3])
    with pytest.raises(RuntimeError, match="holds no replica, the server sent an update to replica 1"):
        ClientLink(codec, RecordDict(), feedback=True).decode(_payload(arrays, link))  # a restarted node: no replica
    server.forget([3])  # what the server does with a node whose reply was an error
    [(_, arrays, link)] = server.encode(state, [3])
    fresh = ClientLink(codec, RecordDict(), feedback=True).decode(_payload(arrays, link))
    assert link["base"] == 0 and all(np.array_equal(fresh[k], v) for k, v in codec.decode(codec.encode(state)).items())
    assert set(server.replicas) == {server.held[3]}  # replicas no node holds are dropped


@pytest.mark.parametrize("name", ["sign", "topk"])
def test_a_fresh_replica_starts_from_the_seeded_initial_model_not_from_zeros(name):
    """A node rebuilds the run's initial model from the seed, so its first message is the change
    since then: a 1-bit or 1 % code of that change, not of the whole model."""
    import torch
    from eurosat.fl import task
    from eurosat.fl.state import digest

    cfg = load_run_config(["seed=7", f'transport="{name}"', "topk-fraction=0.01", "transport-error-feedback=true"])
    before = torch.random.get_rng_state()
    initial = task.initial_state(cfg)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is left as it was
    torch.manual_seed(7)
    assert digest(initial) == digest(to_numpy(task.make_model(cfg).state_dict()))  # what the server trained from before
    codec, rng = cfg.link_plan().down, np.random.default_rng(0)
    trained = _drift(_drift(initial, rng), rng)  # two rounds of training later
    with_start = ServerLink(codec, feedback=True, initial=initial)
    [(_, arrays, link)] = with_start.encode(trained, [5])
    assert link["base"] == 0 and link["initial"] == digest(initial)
    node = ClientLink(codec, RecordDict(), feedback=True, initial=lambda: task.initial_state(cfg))
    held = node.decode(_payload(arrays, link))
    assert all(np.array_equal(held[k], v) for k, v in with_start.replicas[with_start.held[5]].items())
    [(_, zero_arrays, zero_link)] = ServerLink(codec, feedback=True).encode(trained, [5])  # as before: from zeros
    from_zeros = ClientLink(codec, RecordDict(), feedback=True).decode(_payload(zero_arrays, zero_link))
    change = codec.decode(codec.encode({k: trained[k] - initial[k] for k in trained}))
    assert all(np.array_equal(held[k], (initial[k] + change[k]).astype(initial[k].dtype)) for k in trained)
    weights = [k for k, v in trained.items() if v.ndim >= 2]
    error = sum(np.abs(held[k] - trained[k]).sum() for k in weights)
    assert error < 0.5 * sum(np.abs(from_zeros[k] - trained[k]).sum() for k in weights), name
    other = load_run_config(["seed=8", f'transport="{name}"', "transport-error-feedback=true"])
    stranger = ClientLink(codec, RecordDict(), feedback=True, initial=lambda: task.initial_state(other))
    with pytest.raises(RuntimeError, match=r"this node's initial model \(SHA-256 \w+…\) differs from the server's"):
        stranger.decode(_payload(arrays, link))
    with pytest.raises(RuntimeError, match="cannot rebuild"):
        ClientLink(codec, RecordDict(), feedback=True).decode(_payload(arrays, link))


def test_removed_switches_say_what_to_write_instead(monkeypatch):
    with pytest.raises(ConfigError, match=r'^use-quantization: no longer a run-config key; write transport="fp16"'):
        load_run_config(["use-quantization=true"])
    assert load_run_config(["use-quantization=false"]).transport == "fp32"  # as run folders of earlier versions hold it
    monkeypatch.setenv("QUANTIZATION_BITS", "4")
    with pytest.raises(ConfigError, match=r"^\$QUANTIZATION_BITS is no longer read; unset it and use -c weight-bits=N"):
        load_run_config([])


def test_error_feedback_runs_get_a_label_of_their_own():
    assert load_run_config(['transport="int4" transport-error-feedback=true']).label == "fp32-txint4-ef"
    assert load_run_config(["transport-error-feedback=true"]).label == "fp32"  # nothing to feed back in fp32


def test_unknown_transport_is_a_clear_error_before_training():
    proc = in_process(launch_main, "-c", 'transport="int3"')
    assert proc.returncode == 2 and "transport: unknown value 'int3'; allowed: fp32, fp16, int8, int4" in proc.stderr


def _transport_figure(outputs: Path, fp32_dir: Path) -> None:
    """A quantized-transport run in `outputs` beside the fp32 e2e run: transport_comparison.png
    draws one line per format."""
    shutil.copytree(fp32_dir, outputs / "fp32" / fp32_dir.parts[-2] / fp32_dir.parts[-1])
    proc = cli("create_comparison_plots.py", "--outputs", outputs, "--out", outputs / "figures")
    assert proc.returncode == 0, proc.stderr
    with Image.open(outputs / "figures" / "transport_comparison.png") as img:
        assert img.format == "PNG"
    from eurosat.report.figures import figures  # what the PNG holds: each run's MB and accuracy

    drawn = {name: fig for name, fig, _ in figures([], outputs)}
    left = drawn["transport_comparison.png"].axes[0]
    assert len(left.lines) == 2 and all(line.get_label().endswith(" on the wire") for line in left.lines)
    evaluated = [[r for r in json.loads(m.read_text())["rounds"] if "server_test_accuracy" in r]
                 for m in outputs.glob("*/*/*/metrics.json")]
    assert sorted(line.get_xydata().tolist() for line in left.lines) == sorted(
        [[r["cumulative_mb"], 100 * r["server_test_accuracy"]] for r in rounds] for rounds in evaluated)


@pytest.mark.long  # int4 with error feedback below is CI's real transport run; the codecs' sizes are tested above
def test_int8_transport_run_sends_at_most_0_27_of_fp32_bytes(e2e_run, small_data, tmp_path):
    _, fp32_dir = e2e_run
    proc = launch(["-c", f"num-server-rounds=2 num-supernodes=3 fraction-train=1.0 time-limit-min=0 transport=\"int8\" "
                         f"data='{small_data}' output-dir='{tmp_path}'"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_of(proc)
    assert run_dir.parts[-3] == "fp32-txint8"
    int8 = json.loads((run_dir / "metrics.json").read_text())
    fp32 = json.loads((fp32_dir / "metrics.json").read_text())
    for a, b in zip(int8["rounds"], fp32["rounds"]):
        assert a["bytes_sent"] + a["bytes_received"] <= 0.27 * (b["bytes_sent"] + b["bytes_received"])
    assert int8["summary"]["final_test_accuracy"] > LEARNED_ACCURACY
    _transport_figure(tmp_path, fp32_dir)


def test_int4_transport_with_error_feedback_runs_and_sends_at_most_0_15(e2e_run, small_data, tmp_path):
    """Round 2 uploads carry round 1's residual and round 2's messages are updates to each node's
    replica, both kept in the node's context.state; evaluation messages use the replicas too."""
    proc = launch(["-c", f"num-server-rounds=2 num-supernodes=2 fraction-train=1.0 local-epochs=1 time-limit-min=0 transport=\"int4\" "
                         f"transport-error-feedback=true fraction-evaluate=1.0 local-test-fraction=0.2 data='{small_data}' output-dir='{tmp_path}'"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert run_dir_of(proc).parts[-3] == "fp32-txint4-ef"
    metrics = json.loads((run_dir_of(proc) / "metrics.json").read_text())
    summary = metrics["summary"]
    assert summary["rounds_completed"] == 2 and summary["bytes_ratio_to_fp32"] <= 0.15
    for r in metrics["rounds"]:  # train and evaluate messages to both nodes, and both updates, all counted
        assert r["fp32_equivalent_bytes"] == 6 * get_codec("fp32").encode(to_numpy(Net().state_dict())).count_bytes()
        assert r["clients"] == 2 and r["bytes_sent"] == 2 * r["bytes_received"] and r["client_eval_accuracy"] > 0
    _transport_figure(tmp_path, e2e_run[1])


def test_wire_and_training_use_the_same_codes(state):
    """One definition of per-channel codes: an int8 tensor on the wire has the codes QAT trains with."""
    import torch

    from eurosat.quant.qat import weight_codes

    for bits in (8, 4):
        for k, v in state.items():
            if v.dtype.kind == "f" and v.ndim >= 2:
                wire_codes, wire_scale = quantize(v, bits)
                codes, scale = weight_codes(torch.from_numpy(v), bits)
                assert np.array_equal(wire_codes, codes.numpy()) and np.array_equal(wire_scale, scale.numpy()), k


def test_a_codec_is_one_registry_entry(monkeypatch):
    """What adding a codec takes: one entry; the run config, its label and the link pick it up."""
    from eurosat.fl.codecs import CODECS, IntCodec, register

    monkeypatch.setitem(CODECS, "int6", IntCodec("int6", 6))
    cfg = load_run_config(['transport="int6" transport-error-feedback=true'])
    assert cfg.transport == "int6" and cfg.label == "fp32-txint6-ef"
    state = to_numpy(Net().state_dict())
    codec = get_codec("int6")
    record = codec.encode(state)
    back = codec.decode(record)
    for key, value in state.items():
        if value.ndim >= 2:  # within half a step of each channel's scale
            step = np.abs(value).reshape(len(value), -1).max(axis=1) / 31
            assert (np.abs(back[key] - value).reshape(len(value), -1).max(axis=1) <= step / 2 + 1e-7).all(), key
    assert record.count_bytes() < 0.2 * get_codec("fp32").encode(state).count_bytes()
    with pytest.raises(ValueError, match="already registered"):
        register(IntCodec("int8", 8))
    monkeypatch.delitem(CODECS, "int6")
    with pytest.raises(ConfigError, match="transport: unknown value 'int6'"):
        load_run_config(['transport="int6"'])
