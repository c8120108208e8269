"""From checkpoint to device: ONNX export of every precision, checked in the real ONNX Runtime on the
real data slice, and `python -m eurosat.predict` on real test chips. No mocks: the end-to-end run's
model, the real exporters, the real runtime."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, cli, in_process

onnx = pytest.importorskip("onnx")  # the extra; setup.sh installs it for the tests
pytest.importorskip("onnxruntime")

from eurosat.data.loading import TensorData, decode  # noqa: E402
from eurosat.deploy import export as deploy_export  # noqa: E402
from eurosat.deploy import predict as deploy_predict  # noqa: E402
from eurosat.quant.registry import PackedConfig, load, quantize, save  # noqa: E402
from eurosat.train.loop import evaluate  # noqa: E402
from eurosat.train.model import Net  # noqa: E402

PRECISIONS = "fp32,fp16,int8,fp8,int8_dynamic"


@pytest.fixture(scope="module")
def deployed(e2e_run, small_data, tmp_path_factory):
    """The PTQ report with --export onnx on the end-to-end run's model and the real slice."""
    _, run_dir = e2e_run
    work = tmp_path_factory.mktemp("deploy")
    shutil.copy(run_dir / "final_model.pt", work / "final_model.pt")
    proc = cli("compare_quantizations.py", work / "final_model.pt", "--data", small_data, "--precisions", PRECISIONS,
               "--calibration-samples", 512, "--export", "onnx")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, json.loads((work / "quantization_comparison.json").read_text()), proc


def test_report_exports_every_precision_onnx_can_hold_and_checks_it_in_onnx_runtime(deployed):
    work, report, proc = deployed
    section = report["runtimes"]
    rows = section["precisions"]
    assert set(rows) >= {"fp32", "fp16", "int8", "fp8"}
    assert set(section["not_exported"]) == {"int8_dynamic"}  # refused by name, in one line
    assert "int8_dynamic: not exported to ONNX" in proc.stdout
    for name, row in rows.items():
        model = onnx.load(str(work / row["file"]))
        onnx.checker.check_model(model, full_check=True)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a dynamic batch dimension
        assert 0.0 <= row["accuracy"] <= 100.0 and row["pytorch_accuracy"] == report["precisions"][name]["accuracy"]
        assert row["latency_ms_batch1"] > 0 and row["throughput_images_per_s_batch64"] > 0
        assert len(row["throughput_batch64_passes"]) == section["speed"]["passes"] == 5
        assert row["file_size_bytes"] == os.path.getsize(work / row["file"])
    for name in ("fp32", "fp16", "fp8"):
        assert rows[name]["agreement_percent"] >= 99.0, (name, rows[name])
    assert rows["int8"]["agreement_percent"] >= 97.0, rows["int8"]
    assert rows["fp16"]["compute"].startswith("float32 (float16 weights cast to float32 at load")
    assert section["machine"]["isa"] and section["threads"] == 2
    assert "ONNX Runtime" in proc.stdout and section["machine"]["isa"] in proc.stdout
    assert set(section["targets"]["accuracy"]) == {"fp32", "fp16", "int8"}


def test_int8_file_holds_int8_weights_and_runs_fused_int8_kernels(deployed):
    work, report, _ = deployed
    model = onnx.load(str(work / "model_int8.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = {t.name: t for t in model.graph.initializer if t.name.endswith("weight_int8")}
    assert len(weights) == 6 and all(t.data_type == onnx.TensorProto.INT8 for t in weights.values())
    assert not [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.dims and
                np.prod(t.dims) > 1024]  # no float weight matrix left
    fp32 = os.path.getsize(work / "model_fp32.onnx")
    assert os.path.getsize(work / "model_int8.onnx") <= 0.27 * fp32  # about a quarter
    assert os.path.getsize(work / "model_fp16.onnx") <= 0.51 * fp32
    kernels = report["runtimes"]["precisions"]["int8"]["kernels"]
    assert kernels.get("QLinearConv") == 3 and kernels.get("QGemm") == 3 and "Conv" not in kernels
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["eurosat.calibration"])["samples"] == 512
    fp8 = onnx.load(str(work / "model_fp8.onnx"))
    assert sum(t.data_type == onnx.TensorProto.FLOAT8E4M3FN for t in fp8.graph.initializer) == 6


def test_runtimes_panel_is_drawn(deployed, tmp_path):
    """The panel holds the report's numbers: each precision's two accuracies, latency, throughput
    and file size, in the report's order."""
    from eurosat.report.figures import draw_all, figures

    work, _, _ = deployed
    report_path = work / "quantization_comparison.json"
    written = draw_all([report_path], tmp_path / "none", tmp_path)
    assert tmp_path / "onnx_runtimes.png" in written
    rows = json.loads(report_path.read_text())["runtimes"]["precisions"]
    accuracy, latency, throughput, size = {n: f for n, f, _ in figures([report_path], tmp_path / "none")}["onnx_runtimes.png"].axes
    assert [t.get_text() for t in accuracy.get_xticklabels()] == list(rows)
    heights = [bar.get_height() for bar in accuracy.patches]
    assert heights == [rows[k]["pytorch_accuracy"] for k in rows] + [rows[k]["accuracy"] for k in rows]
    for ax, key in ((latency, "latency_ms_batch1"), (throughput, "throughput_images_per_s_batch64"), (size, "file_size_mb")):
        assert [bar.get_height() for bar in ax.patches] == [rows[k][key] for k in rows], key


def test_export_command_writes_the_same_int8_model_and_refuses_kinds_by_name(deployed, small_data, tmp_path):
    work, _, _ = deployed
    out = tmp_path / "out"
    proc = in_process(deploy_export.main, work / "final_model.pt", "--to", "onnx", "--precisions", "fp32,int8",
                      "--data", small_data, "--calibration-samples", 512, "--out-dir", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model_fp32.onnx", "model_int8.onnx"]

    def weights(path: Path) -> dict[str, bytes]:
        return {t.name: t.SerializeToString() for t in onnx.load(str(path)).graph.initializer}

    # calibrated on the same images as the report's PyTorch INT8 model: the same int8 graph
    assert weights(out / "model_int8.onnx") == weights(work / "model_int8.onnx")
    proc = in_process(deploy_export.main, work / "model_int8.pt", "--to", "onnx", "--out-dir", tmp_path / "q")
    assert proc.returncode == 0 and weights(tmp_path / "q" / "model_int8.onnx") == weights(work / "model_int8.onnx")
    net, _ = load(work / "model_fp32.pt")
    save(quantize(net, PackedConfig(4, 8)), PackedConfig(4, 8), tmp_path / "final_model_4bit.pt")
    for model, needle in ((work / "model_int8_dynamic.pt", "int8_dynamic: not exported to ONNX"),
                          (tmp_path / "final_model_4bit.pt", "packed: not exported to ONNX")):
        proc = in_process(deploy_export.main, model, "--to", "onnx", "--out-dir", tmp_path / "refused")
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = in_process(deploy_export.main, work / "final_model.pt", "--to", "onnx", "--precisions", "fp32,int4")
    assert proc.returncode == 2 and "unknown int4" in proc.stderr
    assert not (tmp_path / "refused").exists()


BLOCKER = """import sys
class _NoDeploy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoDeploy())
"""


def test_without_the_extra_export_is_one_line_naming_it(e2e_run, tmp_path):
    """onnx and onnxruntime hidden by a meta-path blocker (sitecustomize) in a real subprocess."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    model = e2e_run[1] / "final_model.pt"
    runs = [[str(ROOT / "compare_quantizations.py"), str(model), "--export", "onnx", "--out-dir", str(tmp_path / "o")],
            ["-m", "eurosat.export", str(model), "--to", "onnx", "--out-dir", str(tmp_path / "o")]]
    for args in runs:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and 'pip install ".[deploy]"' in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()  # nothing written
    proc = subprocess.run([sys.executable, "-m", "eurosat.export", "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "--to" in proc.stdout


def _chips(small_data: Path, folder: Path, n: int = 30) -> tuple[list[Path], TensorData]:
    """The first n test chips of the slice as JPEG files (their bytes untouched), and as the evaluation reads them."""
    table = pq.read_table(small_data / "test.parquet").slice(0, n)
    folder.mkdir()
    paths = []
    for i, row in enumerate(table.to_pylist()):
        paths.append(folder / f"chip_{i:02d}.jpg")
        paths[-1].write_bytes(row["image"]["bytes"])
    import datasets

    return paths, TensorData(*decode(datasets.Dataset(table)))


def test_predict_gives_the_evaluations_label_for_every_model_kind(deployed, small_data, tmp_path):
    work, _, _ = deployed
    paths, data = _chips(small_data, tmp_path / "chips")
    for model_file, reference in (("model_fp32.pt", "model_fp32.pt"), ("model_int8.pt", "model_int8.pt"),
                                  ("model_fp16.pt", "model_fp16.pt"), ("model_fp32.onnx", "model_fp32.pt")):
        model, _ = load(work / reference)
        expected = evaluate(model.float() if reference == "model_fp16.pt" else model, data)["predicted"]
        proc = in_process(deploy_predict.main, work / model_file, tmp_path / "chips", "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)["predictions"]
        assert [Path(r["image"]).name for r in out] == [p.name for p in paths]
        assert [r["label"] for r in out] == expected.tolist(), model_file
        assert all(0.0 < r["probability"] <= 1.0 for r in out)


def test_predict_resizes_with_a_warning_reads_png_and_tiff_and_names_a_broken_image(deployed, small_data, tmp_path):
    from PIL import Image

    work, _, _ = deployed
    paths, _ = _chips(small_data, tmp_path / "chips", 2)
    Image.open(paths[0]).resize((100, 80)).save(tmp_path / "big.png")
    Image.open(paths[1]).save(tmp_path / "chip.tif")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    proc = subprocess.run(
        [sys.executable, "-m", "eurosat.predict", str(work / "model_int8.onnx"), str(tmp_path / "big.png"),
         str(tmp_path / "chip.tif"), str(tmp_path / "broken.jpg")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # some images could not be read
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{tmp_path / 'big.png'}: ") and lines[1].startswith(f"{tmp_path / 'chip.tif'}: ")
    assert "big.png: 100x80, resized to 64x64" in proc.stderr
    assert f"{tmp_path / 'broken.jpg'}: not a readable image" in proc.stderr
    proc = in_process(deploy_predict.main, tmp_path / "no-model.pt", tmp_path / "big.png")
    assert proc.returncode == 2 and "no-model.pt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _onnx(path: Path, inputs: list, outputs: list, weight: np.ndarray | str | None = None) -> Path:
    """A small real ONNX graph: (name, shape) inputs and outputs; with a `weight` array, flatten then
    MatMul; with "batch_wide", the first N values of each flattened image (a width known only at run time)."""
    from onnx import TensorProto, helper, numpy_helper

    from eurosat.deploy.qdq import IR_VERSION, OPSET

    (i_name, i_shape), (o_name, o_shape) = inputs[0], outputs[0]
    flatten = helper.make_node("Flatten", [i_name], ["flat"], axis=1)
    if weight is None:
        nodes, inits = [helper.make_node("Identity", [i_name], [o_name])], []
    elif isinstance(weight, str):
        nodes = [flatten, helper.make_node("Shape", [i_name], ["shape"]),
                 helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
                 helper.make_node("Slice", ["flat", "zero", "n", "one"], [o_name])]
        inits = [numpy_helper.from_array(np.array([v], dtype=np.int64), name) for v, name in ((0, "zero"), (1, "one"))]
    else:
        nodes = [flatten, helper.make_node("MatMul", ["flat", "w"], [o_name])]
        inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info(i_name, TensorProto.FLOAT, i_shape)],
                              [helper.make_tensor_value_info(o_name, TensorProto.FLOAT, o_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    path.write_bytes(model.SerializeToString())
    return path


def _state(**change) -> dict:
    """A real Net state dict (seeded), with some tensors filled with one value."""
    torch.manual_seed(0)
    return {k: v.float().fill_(change[k]) if k in change else v for k, v in Net().state_dict().items()}


def _evil(p: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {p.parent / 'PWNED'}",))

    torch.save({"conv1.weight": Evil()}, p)


FLAT = 3 * 64 * 64
BAD_MODELS = {  # name: (file name, how to write it, what the one line must say)
    "non_finite_weights": ("m.pt", lambda p: torch.save(_state(**{"fc3.bias": float("nan")}), p), "hold NaN or Inf values"),
    "onnx_renamed_pt": ("m.pt", lambda p: _onnx(p, [("images", ["N", 3, 64, 64])], [("logits", ["N", 3, 64, 64])]),
                        "not a PyTorch checkpoint"),
    "python_source": ("m.pt", lambda p: p.write_text('"""a module"""\nimport os\n'), "not a PyTorch checkpoint"),
    "code_running_pickle": ("m.pt", _evil, "would run code on load"),
    "other_keys": ("m.pt", lambda p: torch.save({"foo": torch.zeros(3)}, p), "not a EuroSAT Net state dict"),
    "other_shapes": ("m.pt", lambda p: torch.save({**_state(), "conv1.weight": torch.zeros(2, 2)}, p),
                     "not a EuroSAT Net state dict"),
    "checkpoint_of_other_shapes": ("checkpoint.pt", lambda p: torch.save(
        {"round": 1, "state_dict": {**_state(), "fc3.bias": torch.zeros(3)}}, p), "size mismatch for fc3.bias"),
    "qat_round_checkpoint": ("checkpoint.pt", lambda p: torch.save(
        {"round": 1, "state_dict": {**_state(), "conv1.act_range": torch.tensor([0.0, 1.0])}}, p),
        "a QAT run's round checkpoint"),
    # finite weights whose logits overflow float32: found at run time, before anything is printed
    "overflowing_weights": ("m.pt", lambda p: torch.save(_state(**{"fc3.weight": 3e38}), p), "computes NaN or Inf for"),
    "onnx_other_input": ("m.onnx", lambda p: _onnx(p, [("x", [1, 5])], [("y", [1, 5])]),
                         "not a EuroSAT model: the graph is x tensor(float) [1, 5] -> y"),
    "onnx_other_output": ("m.onnx", lambda p: _onnx(p, [("images", ["N", 3, 64, 64])], [("logits", ["N", 3, 64, 64])]),
                          "expected images tensor(float) [batch, 3, 64, 64] -> logits tensor(float) [batch, 10]"),
    "onnx_fixed_batch": ("m.onnx", lambda p: _onnx(p, [("images", [1, 3, 64, 64])], [("logits", [1, 10])],
                                                   np.zeros((FLAT, 10))), "not a EuroSAT model"),
    "onnx_output_wider_than_declared": ("m.onnx", lambda p: _onnx(p, [("images", ["N", 3, 64, 64])], [("logits", ["N", "C"])],
                                                                  "batch_wide"), "gave outputs of shape [3, 3]"),
    "onnx_non_finite_at_run_time": ("m.onnx", lambda p: _onnx(p, [("images", ["N", 3, 64, 64])], [("logits", ["N", 10])],
                                                              np.full((FLAT, 10), np.nan)), "computes NaN or Inf for"),
}


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_predict_refuses_a_bad_model_in_one_line_naming_the_file(kind, small_data, tmp_path):
    name, write, message = BAD_MODELS[kind]
    _chips(small_data, tmp_path / "chips", 3)
    model = tmp_path / name
    write(model)
    if kind == "code_running_pickle":  # the real command line for this one
        proc = subprocess.run([sys.executable, "-m", "eurosat.predict", str(model), str(tmp_path / "chips")], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    else:
        proc = in_process(deploy_predict.main, model, tmp_path / "chips")
    assert proc.returncode == 2, (kind, proc.stdout, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {model}: ") and message in proc.stderr, proc.stderr
    assert "would run code" not in proc.stderr or kind == "code_running_pickle"
    assert not (tmp_path / "PWNED").exists()


def test_predict_reads_a_runs_round_checkpoint_as_the_fp32_tools_do(e2e_run, small_data, tmp_path):
    """checkpoint.pt ({"round", "state_dict"}) is what the PTQ report and measure_compression.py accept: its state dict."""
    _, run_dir = e2e_run
    paths, data = _chips(small_data, tmp_path / "chips", 12)
    net = Net()
    net.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["state_dict"])
    proc = in_process(deploy_predict.main, run_dir / "checkpoint.pt", tmp_path / "chips", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["compute"] == "float32" and len(out["predictions"]) == len(paths)
    assert [r["label"] for r in out["predictions"]] == evaluate(net.eval(), data)["predicted"].tolist()


ROOMS = ["common", "data", "train", "quant", "fl", "report", "deploy", "launch"]


def test_each_room_imports_only_earlier_rooms():
    """docs/layout.md's rule, read from the code: eurosat/<room>/ imports eurosat.<earlier room> only."""
    problems = []
    for i, room in enumerate(ROOMS):
        for path in sorted((ROOT / "eurosat" / room).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "eurosat" and len(parts) > 1 and parts[1] in ROOMS and ROOMS.index(parts[1]) > i:
                        problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not problems, "\n".join(problems)
