"""Every preset in configs/ validates and really trains with the model it asks for.

Flower itself is exercised by the end-to-end tests; here each preset's model, precision and
transport go through one real local update on a slice of the real data and its final
artifacts are written, in-process, so all presets stay cheap enough for every CI run.
"""

import json

import pytest
import torch
from conftest import DEVICE, FP16_COMPUTE, ROOT

from eurosat.fl import task
from eurosat.fl.config import load_run_config, run_config_values
from eurosat.quant.registry import PackedConfig, load
from eurosat.quant.qat import qat_layers
from eurosat.fl.state import to_numpy
from eurosat.fl.codecs import get_codec

PRESETS = sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))


def test_the_documented_presets_exist():
    expected = {"fp32", "fp16", "int8", "bits-32", "bits-16", "bits-8", "bits-4", "bits-2", "bits-1",
                "w8a8", "w8a6", "w6a8", "w6a6", "w4a8", "w8a4", "w6a4", "w4a6"}
    assert expected <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_and_saves(preset, small_data, tmp_path, monkeypatch):
    monkeypatch.delenv("QUANTIZATION_BITS", raising=False)
    cfg = load_run_config([str(ROOT / "configs" / f"{preset}.toml"),
                           f"local-epochs=1 batch-size=64 data='{small_data}' num-supernodes=12"])
    codec = get_codec(cfg.transport)
    received = codec.decode(codec.encode(to_numpy(task.make_model(cfg).state_dict())))
    delta, report = task.client_update(cfg, received, 0, cfg.num_supernodes)
    if cfg.partitioner == "iid":
        partition = 100  # 1,200 slice images / 12 supernodes; a preset may hold out a local test part
        assert report.train_images == partition - round(partition * cfg.local_test_fraction)
    else:  # a Dirichlet partition's size depends on the draw
        assert 0 < report.train_images < 1200
    assert report.compute.startswith(f"{FP16_COMPUTE if cfg.precision == 'fp16' else 'float32'}@{DEVICE}"), report.compute
    state = {k: received[k] + delta[k] for k in received}
    extra = task.save_artifacts(cfg, tmp_path, state)
    assert (tmp_path / "final_model_fp32.pt").exists()
    assert (tmp_path / "model_fp16.pt").exists() == (cfg.precision == "fp16")
    if cfg.weight_bits < 32 or cfg.precision == "int8":
        bits = 8 if cfg.precision == "int8" else cfg.weight_bits
        model, _ = load(tmp_path / f"final_model_{bits}bit.pt", expect=PackedConfig)
        assert all(m.weight_bits == bits for m in qat_layers(model).values())
        assert extra["compression_ratio"] > 1.9
    with torch.no_grad():
        assert task.load_state(task.make_model(cfg), state).eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


def test_the_noniid_preset_is_the_recipe_its_benchmark_figure_was_measured_with():
    """configs/noniid.toml quotes a figure of bench/strategies.py's `fedavg-balanced` row: with the
    rounds and limit its comment names, it must resolve to that run's recorded config, key for key."""
    ledger = json.loads((ROOT / "docs" / "results" / "strategies_local_loss.json").read_text())
    measured = ledger["provenance"]["fedavg-balanced@42"]["config"]
    values = run_config_values([str(ROOT / "configs" / "noniid.toml"), "num-server-rounds=20 time-limit-min=0 seed=42"])
    naming = {"data", "run-dir", "output-dir", "resume"}  # where a run reads and writes, not what it trains
    assert {k: v for k, v in values.items() if k not in naming} == {k: v for k, v in measured.items() if k not in naming}
