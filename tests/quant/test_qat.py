"""Quantization-aware training: fake quantization, packed storage, and real 1-round runs."""

import csv
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
import pytest
import torch
from conftest import LAUNCHED_DEVICE, LAUNCHED_FP16_COMPUTE, cli, launch, run_dir_of

from eurosat.quant.compression import compression_report
from eurosat.train.model import Net
from eurosat.quant.packed_model import expected_packed_bytes
from eurosat.quant.registry import Int8StaticConfig, PackedConfig, is_fully_quantized, load, save
from eurosat.quant.qat import QATConfig, prepare_qat, qat_layers


def _observed(model, steps=3):
    """Train-mode forwards so activation ranges are observed, as local training does."""
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        model(torch.randn(8, 3, 64, 64))
    return model.eval()


@pytest.mark.parametrize("bits", [8, 6, 4, 2, 1])
def test_fake_quantized_weights_take_at_most_2_pow_bits_values_per_channel(bits):
    model = prepare_qat(Net(), QATConfig(bits, 32))
    for name, layer in qat_layers(model).items():
        w = layer.quantized_weight().detach().flatten(1)
        for row in w:
            assert len(torch.unique(row)) <= 2**bits, (name, bits)


def test_straight_through_estimator_passes_gradients():
    model = prepare_qat(Net(), QATConfig(2, 8))
    model.train()
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in qat_layers(model).values())


@pytest.mark.parametrize("wbits, abits", [(16, 16), (8, 8), (6, 6), (4, 8), (2, 32), (1, 32)])
def test_pack_unpack_round_trips_exactly_and_sizes_are_exact(wbits, abits, tmp_path):
    model = _observed(prepare_qat(Net(), QATConfig(wbits, abits)))
    path = save(model, PackedConfig(wbits, abits), tmp_path / f"final_model_{wbits}bit.pt")
    stored = torch.load(path, weights_only=True)
    if wbits < 16:
        assert stored["codes"].numel() == expected_packed_bytes(model)
    restored, config = load(path, expect=PackedConfig)
    assert config == PackedConfig(wbits, abits)
    for name, layer in qat_layers(model).items():
        assert torch.equal(qat_layers(restored)[name].quantized_weight(), layer.quantized_weight()), name
    x = torch.randn(16, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(restored(x), model(x), atol=1e-5)
    report = compression_report(model, path, path)
    assert abs(report["size_vs_ideal"] - 1) <= 0.02  # packed within 2% of params x bits / 8 + scales
    # the file is those tensors plus torch.save's framing (< 1 KB): within 2% of the ideal at every width
    assert report["files"]["packed_file_bytes"] - report["compressed_size_bytes"] < 1024
    assert report["files"]["packed_file_vs_ideal"] <= 1.02


def _run(small_data, out, override, length="num-server-rounds=1 time-limit-min=0"):
    proc = launch(["-c", f"{length} num-supernodes=2 data='{small_data}' output-dir='{out}' {override}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_of(proc)
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


# 8-bit W8A8 and the 1-bit extreme as real runs; every other width trains and saves in-process (test_presets.py)
QAT_RUNS = [('precision="int8"', 8), ("weight-bits=1", 1)]
# The 1-bit run also shows the time limit: 3 s, which round 1 alone passes, so no second round may start
TIME_LIMITED = "num-server-rounds=5 time-limit-min=0.05"


@pytest.fixture(scope="module")
def qat_runs(small_data, tiny_data, tmp_path_factory):
    """Two real 1-round runs in one output root (the sweep table and figures read it), side by side
    (half of a run's time is start-up and waiting, which overlaps). The int8 run learns on the
    small slice (its INT8 model must beat chance); the bit-width runs check files and codes, which
    the 300-image slice shows as well."""
    root = tmp_path_factory.mktemp("qat-outputs")
    with ThreadPoolExecutor(len(QAT_RUNS)) as pool:
        runs = {override: pool.submit(_run, small_data, root, override) if bits == 8 else
                pool.submit(_run, tiny_data, root, override, TIME_LIMITED) for override, bits in QAT_RUNS}
        return root, {override: run.result() for override, run in runs.items()}


@pytest.mark.parametrize("override, bits", QAT_RUNS)
def test_quantized_training_runs_store_real_low_bit_models(qat_runs, override, bits):
    run_dir, metrics = qat_runs[1][override]
    assert metrics["summary"]["status"] == "completed"
    packed_path = run_dir / f"final_model_{bits}bit.pt"
    model, _ = load(packed_path, expect=PackedConfig)
    stored = torch.load(packed_path, weights_only=True)
    expected = sum(-(-int(np.prod(m.weight.shape[1:])) * bits // 8) * m.weight.shape[0] for m in qat_layers(model).values())
    assert stored["codes"].numel() == expected
    for layer in qat_layers(model).values():
        for row in layer.quantized_weight().detach().flatten(1):
            assert len(torch.unique(row)) <= 2**bits
    comp = json.loads((run_dir / "compression_metrics.json").read_text())
    assert comp["weight_bits"] == bits and comp["compression_ratio"] > 3.5
    Net().load_state_dict(torch.load(run_dir / "final_model_fp32.pt", weights_only=True))
    Net().load_state_dict(torch.load(run_dir / "final_model.pt", weights_only=True))
    if override.startswith("precision"):
        int8, config = load(run_dir / "model_int8.pt")
        assert config == Int8StaticConfig() and is_fully_quantized(int8)
        assert metrics["summary"]["int8_model_test_accuracy"] > 0.1
    else:  # stopped by the time limit, and still saved everything
        summary = metrics["summary"]
        assert summary["rounds_completed"] == 1 and summary["time_limit_reached"] is True
        accuracy = metrics["rounds"][0]["server_test_accuracy"]  # the last round is always evaluated
        assert summary["stop_reason"] == "time_limit" and 0 < accuracy <= 1
        assert summary["final_test_accuracy"] == accuracy


@pytest.mark.long  # a second path to what test_presets (fp16's compute) and the end-to-end runs (Flower's records) cover
def test_fp16_records_the_dtype_that_really_ran(tiny_data, tmp_path):
    # float16 on CUDA; bfloat16 on a CPU (one local epoch: emulated and slow on CPUs without bf16 instructions)
    run_dir, metrics = _run(tiny_data, tmp_path, 'precision="fp16" local-epochs=1')
    compute = metrics["summary"]["client_compute"]
    assert compute and all(c.startswith(f"{LAUNCHED_FP16_COMPUTE}@{LAUNCHED_DEVICE}") for c in compute), compute
    assert (run_dir / "model_fp16.pt").exists()


def test_analyze_results_and_bit_figures_cover_the_runs(qat_runs, tmp_path):
    """After the two QAT runs above: one table sorted by bit-width, a CSV, two figures."""
    csv_path = tmp_path / "table.csv"
    qat_outputs = qat_runs[0]
    proc = cli("analyze_results.py", qat_outputs, "--csv", csv_path)
    assert proc.returncode == 0, proc.stderr
    lines = csv_path.read_text().strip().splitlines()
    assert lines[0].startswith("weight_bits,activation_bits")
    assert [int(line.split(",")[0]) for line in lines[1:]] == [8, 1]
    assert all(",completed," in line for line in lines[1:])
    proc = cli("create_comparison_plots.py", "--outputs", qat_outputs, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("bits_accuracy.png", "bits_parallel.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG"
    from eurosat.report.figures import figures  # the figure holds the table's numbers (2 decimals there)

    table = sorted(csv.DictReader(csv_path.open()), key=lambda r: int(r["weight_bits"]))
    ax, twin = {name: fig for name, fig, _ in figures([], qat_outputs)}["bits_accuracy.png"].axes
    accuracy = [xy for line in ax.lines for xy in line.get_xydata().tolist()]  # one line per activation width
    for points, column in ((accuracy, "accuracy"), (twin.lines[0].get_xydata().tolist(), "compression")):
        drawn = sorted(points)
        assert [x for x, _ in drawn] == [float(r["weight_bits"]) for r in table]
        assert [y for _, y in drawn] == pytest.approx([float(r[column]) for r in table], abs=0.006), column


def test_measure_compression_reports_any_checkpoint(e2e_run, tmp_path):
    _, run_dir = e2e_run
    out = tmp_path / "w6a6.json"
    proc = cli("measure_compression.py", "--checkpoint", run_dir / "final_model.pt",
               "--weight_bits", 6, "--activation_bits", 6, "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert (report["weight_bits"], report["activation_bits"]) == (6, 6)
    assert report["compression_ratio"] > 5 and abs(report["size_vs_ideal"] - 1) < 0.02
    assert report["activation_compression_ratio"] == pytest.approx(32 / 6, rel=0.01)
    assert "compression ratio" in proc.stdout
    bad = cli("measure_compression.py", "--checkpoint", run_dir / "final_model.pt", "--weight_bits", 5)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_load_packed_refuses_other_files_in_one_line(tmp_path):
    from eurosat.train.checkpoints import CheckpointError
    from eurosat.common.files import save_torch
    plain = save_torch(tmp_path / "final_model_fp32.pt", Net().state_dict())
    with pytest.raises(CheckpointError, match="not a packed model file"):
        load(plain, expect=PackedConfig)
    model = _observed(prepare_qat(Net(), QATConfig(4, 8)))
    state = torch.load(save(model, PackedConfig(4, 8), tmp_path / "m.pt"), weights_only=True)
    state["codes"] = state["codes"][:-1]
    with pytest.raises(CheckpointError, match="shorter than the Net layout") as info:
        load(save_torch(tmp_path / "cut.pt", state), expect=PackedConfig)
    assert "\n" not in str(info.value) and "cut.pt" in str(info.value)
