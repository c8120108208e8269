"""compare_quantizations.py and create_comparison_plots.py on a model trained by the real run."""

import json
import os
import shutil

import pytest
import torch
from conftest import DEVICE, ROOT, cli, in_process, script_main
from PIL import Image

from eurosat.train.model import Net
from eurosat.quant.ptq import QUANT_LAYERS
from eurosat.quant.registry import is_fully_quantized, load


@pytest.fixture(scope="module")
def comparison(e2e_run, small_data, tmp_path_factory):
    _, run_dir = e2e_run
    work = tmp_path_factory.mktemp("ptq")
    shutil.copy(run_dir / "final_model.pt", work / "final_model.pt")
    proc = cli("compare_quantizations.py", work / "final_model.pt", "--data", small_data,
               "--precisions", "fp32,fp16,int8,int8_dynamic,fp8", "--calibration-samples", 512)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return work, json.loads((work / "quantization_comparison.json").read_text()), proc


def test_model_files_exist_reload_and_shrink(comparison):
    work, report, _ = comparison
    for name in ("fp32", "fp16", "int8", "int8_dynamic", "fp8"):
        path = work / f"model_{name}.pt"
        torch.load(path, weights_only=True)  # plain tensors only
        model, config = load(path)
        assert config.name == name
        assert report["precisions"][name]["file_size_bytes"] == os.path.getsize(path)
    fp32, int8 = (os.path.getsize(work / f"model_{p}.pt") for p in ("fp32", "int8"))
    assert int8 <= 0.27 * fp32, (int8, fp32)


def test_every_conv_and_linear_is_quantized_in_int8(comparison):
    work, report, _ = comparison
    model, _ = load(work / "model_int8.pt")
    assert is_fully_quantized(model)
    for name in QUANT_LAYERS:
        assert getattr(model, name).weight().dtype == torch.qint8, name
    assert report["precisions"]["int8"]["fully_quantized"] is True
    # the seed's dynamic method leaves the convolutions in float: reported, not hidden
    assert report["precisions"]["int8_dynamic"]["fully_quantized"] is False


def test_fp16_is_stored_in_float16_and_close_to_fp32(comparison):
    work, report, _ = comparison
    p = report["precisions"]
    assert abs(p["fp16"]["accuracy"] - p["fp32"]["accuracy"]) <= 0.5
    if DEVICE == "cuda":
        assert p["fp16"]["compute_dtype"] == "float16"
    else:
        assert p["fp16"]["compute_dtype"].startswith("float32 (float16 storage")  # CPU: honest label
    fp16 = torch.load(work / "model_fp16.pt", weights_only=True)
    assert fp16["format"] == "eurosat-quantized/1" and fp16["method"] == "fp16"  # the one header
    tensors = {k: v for k, v in fp16.items() if isinstance(v, torch.Tensor)}
    floats = [v for v in tensors.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert set(tensors) == set(Net().state_dict())


def test_fp8_weights_are_stored_in_e4m3_and_computed_honestly(comparison):
    """The method added through the registry alone (eurosat/quant/registry.py: config + handler)."""
    work, report, _ = comparison
    stored = torch.load(work / "model_fp8.pt", weights_only=True)
    assert stored["method"] == "fp8" and stored["conv1.weight"].dtype == torch.float8_e4m3fn
    assert stored["conv1.fp8_scale"].dtype == torch.float32 and stored["bn1.weight"].dtype == torch.float32
    p = report["precisions"]
    assert p["fp8"]["compute_dtype"] == "float32 (float8 e4m3 storage upcast)"
    assert p["fp8"]["file_size_bytes"] <= 0.27 * p["fp32"]["file_size_bytes"]
    assert abs(p["fp8"]["accuracy"] - p["fp32"]["accuracy"]) <= 1.0


def test_report_has_the_seed_shape_and_more(comparison):
    _, report, proc = comparison
    for key in ("checkpoint", "data", "device", "versions", "timestamp", "verdict", "communication_settings"):
        assert key in report
    # the verdict is the one its own figures give (a 2-round model on 300 images may support none: then it says why)
    from eurosat.report.stats import Interval
    from eurosat.report.verdict import judge

    int8, fp32 = report["precisions"]["int8"], report["precisions"]["fp32"]
    drop = Interval(**{k: int8["accuracy_drop_ci95"][k] for k in ("estimate", "low", "high", "n")})
    expected = judge(drop, int8["compression_ratio"], int8["communication"]["savings_percent"], fp32["confusion_matrix"])
    assert (report["verdict"], report["verdict_reasons"]) == (expected[0], expected[1])
    assert report["verdict"] in ("Good", "Acceptable", "Poor") or (
        report["verdict"].startswith("not meaningful: ") and report["verdict_reasons"])
    for name, r in report["precisions"].items():
        for key in ("accuracy", "test_loss", "accuracy_drop_percent", "file_size_bytes", "file_size_mb",
                    "compression_ratio", "per_class_accuracy", "confusion_matrix", "throughput_images_per_s",
                    "latency_ms_per_batch", "communication", "compute_dtype"):
            assert key in r, (name, key)
        assert len(r["per_class_accuracy"]) == 10 and sum(map(sum, r["confusion_matrix"])) == report["test_samples"]
        ci = r["accuracy_drop_ci95"]  # the drop's paired 95% interval over the test images
        assert ci["low"] <= r["accuracy_drop_percent"] <= ci["high"] and ci["n"] == report["test_samples"]
        assert ci["estimate"] == pytest.approx(r["accuracy_drop_percent"])
        c = r["communication"]
        expected = r["file_size_bytes"] / 2**20 * 2 * 10 * 10 * 5.0
        assert c["total_cost"] == pytest.approx(expected)
    assert report["precisions"]["fp32"]["accuracy_drop_percent"] == 0
    assert "Precision" in proc.stdout and "Compression" in proc.stdout


def test_plots_are_pngs_at_300_and_600_dpi(comparison, tmp_path):
    work, _, _ = comparison
    proc = cli("create_comparison_plots.py", work / "quantization_comparison.json", "--outputs", tmp_path / "none")
    assert proc.returncode == 0, proc.stderr
    for name, dpi in (("comparison_plots.png", 300), ("comparison_plots_highres.png", 600)):
        with Image.open(work / name) as img:
            assert img.format == "PNG"
            assert round(img.info["dpi"][0]) == dpi


def _malicious(path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    torch.save({"conv1.weight": Evil()}, path)


BAD_INPUTS = {
    "missing": lambda p: None,
    "directory": lambda p: p.mkdir(),
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: (torch.save(Net().state_dict(), p), p.write_bytes(p.read_bytes()[:5000])),
    "not_a_checkpoint": lambda p: p.write_text("just some text\n"),
    "other_architecture": lambda p: torch.save(torch.nn.Linear(4, 2).state_dict(), p),
    "code_running_pickle": _malicious,
    "non_finite": lambda p: torch.save({k: v.float().fill_(float("nan")) if k == "fc3.bias" else v
                                        for k, v in Net().state_dict().items()}, p),
    # finite in float64, Inf in the float32 every tool computes in
    "float32_overflow": lambda p: torch.save({k: v.double().fill_(1e300) if k == "conv1.weight" else v
                                              for k, v in Net().state_dict().items()}, p),
    "integer_weights": lambda p: torch.save({k: v.round().int() if v.is_floating_point() else v
                                             for k, v in Net().state_dict().items()}, p),
    "complex_weights": lambda p: torch.save({k: v.cfloat() if v.is_floating_point() else v
                                             for k, v in Net().state_dict().items()}, p),
    "integer_keys": lambda p: torch.save({i: v for i, v in enumerate(Net().state_dict().values())}, p),
    "header_without_method": lambda p: torch.save({**Net().state_dict(), "format": "eurosat-quantized/1"}, p),
    "precision_tag_out_of_range": lambda p: torch.save({**Net().state_dict(), "__precision__": torch.tensor([300])}, p),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_checkpoint_exits_2_and_writes_nothing(kind, tmp_path, small_data):
    path = tmp_path / "input" / "final_model.pt"
    path.parent.mkdir()
    BAD_INPUTS[kind](path)
    before = sorted(p.name for p in path.parent.iterdir())
    out = tmp_path / "out"
    if kind == "code_running_pickle":  # the real command line for this one
        proc = cli("compare_quantizations.py", path, "--data", small_data, "--out-dir", out)
    else:
        proc = in_process(script_main("compare_quantizations.py"), path, "--data", small_data, "--out-dir", out)
    assert proc.returncode == 2, (kind, proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == before
    if kind == "code_running_pickle":
        assert "refused" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--device", "meta"], "--device meta: only cpu and cuda are supported"),
    (["--device", "foo"], "--device foo: not a device"),
    (["--seed", str(10**20)], "--seed: must be in [0, 2^63 - 1]"),
    (["--clients", str(10**40)], "--clients: must be in [1, 1000000]"),
    (["--cost-per-mb", "nan"], "--cost-per-mb: must be a finite number >= 0"),
    (["--precisions", "fp16,fp16"], "--precisions: fp16 named twice"),
    (["--precisions", ""], "--precisions: empty; name at least one of: fp32"),
    (["--precisions", " , "], "--precisions: empty"),
    (["--data", "no-such-org/no-such-dataset"], "cannot load 'no-such-org/no-such-dataset'"),
])
def test_bad_options_are_one_line_errors_before_anything_is_written(args, message, tmp_path, small_data):
    torch.save(Net().state_dict(), tmp_path / "model.pt")
    out = tmp_path / "out"
    data = [] if "--data" in args else ["--data", small_data]
    proc = in_process(script_main("compare_quantizations.py"), tmp_path / "model.pt", *data, *args, "--out-dir", out)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not out.exists()


def test_an_untrained_baseline_gets_no_verdict(tmp_path, small_data):
    """A random-init Net (near chance, predictions on few classes): the report says why there is
    no Good/Acceptable/Poor, in the JSON and the table."""
    torch.manual_seed(0)
    torch.save(Net().state_dict(), tmp_path / "untrained.pt")
    proc = cli("compare_quantizations.py", tmp_path / "untrained.pt", "--data", small_data, "--precisions", "fp32,int8",
               "--calibration-samples", 128)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "quantization_comparison.json").read_text())
    assert report["verdict"] == "not meaningful: baseline not trained"
    assert any("near chance" in r or "collapsed" in r for r in report["verdict_reasons"])
    assert "INT8 verdict: not meaningful" in proc.stdout
    # no run folder around the checkpoint: every cost is the seed's what-if, and says so
    assert report["communication_settings"]["source"] == "what-if" and report["communication_settings"]["run"] is None
    for r in report["precisions"].values():
        assert r["communication"]["source"] == "what-if" and r["communication"]["label"] == "what-if: 10 clients x 10 rounds"
    assert "what-if: 10 clients x 10 rounds" in proc.stdout


def test_robustness_sweep_writes_its_fields_and_figure(comparison, small_data, tmp_path):
    work, _, _ = comparison
    proc = cli("compare_quantizations.py", work / "final_model.pt", "--data", small_data, "--out-dir", tmp_path,
               "--corruptions", "gaussian_noise,cloud", "--severity", "1,5", "--calibration-samples", 256)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "quantization_comparison.json").read_text())
    rob = report["robustness"]
    assert list(rob["corruptions"]) == ["gaussian_noise", "cloud"] and rob["severities"] == [1, 5]
    for name in ("fp32", "fp16", "int8"):
        clean = report["precisions"][name]["accuracy"]
        for corruption in ("gaussian_noise", "cloud"):
            for severity in ("1", "5"):
                cell = rob["results"][name][corruption][severity]
                assert cell["drop_vs_clean"] == pytest.approx(clean - cell["accuracy"])
                fp32 = rob["results"]["fp32"][corruption][severity]["accuracy"]
                assert cell["drop_vs_fp32"] == pytest.approx(fp32 - cell["accuracy"])
    summary = rob["summary"]
    assert set(summary["mean_corruption_accuracy"]) == {"fp32", "fp16", "int8"}
    assert summary["worst_corruption_fp32"] in ("gaussian_noise", "cloud")
    assert "int8_within_fp16_plus_margin" in summary and summary["verdict"]
    plots = cli("create_comparison_plots.py", tmp_path / "quantization_comparison.json", "--outputs", tmp_path / "none")
    assert plots.returncode == 0, plots.stderr
    with Image.open(tmp_path / "robustness.png") as img:
        assert img.format == "PNG" and round(img.info["dpi"][0]) == 300


def test_test_data_evaluates_another_folder_split(comparison, small_data, tmp_path):
    """--test-data with a folder whose `winter` split is the slice's validation images: the accuracy
    is that split's (the same as evaluating the validation split directly), calibration unchanged."""
    work, _, _ = comparison
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(small_data / "validation.parquet", other / "winter.parquet")
    proc = cli("compare_quantizations.py", work / "final_model.pt", "--data", small_data, "--out-dir", tmp_path / "a",
               "--test-data", other, "--test-split", "winter", "--precisions", "fp32")
    direct = cli("compare_quantizations.py", work / "final_model.pt", "--data", small_data, "--out-dir", tmp_path / "b",
                 "--test-split", "validation", "--precisions", "fp32")
    assert proc.returncode == 0 and direct.returncode == 0, proc.stderr + direct.stderr
    a = json.loads((tmp_path / "a" / "quantization_comparison.json").read_text())
    b = json.loads((tmp_path / "b" / "quantization_comparison.json").read_text())
    assert a["test_samples"] == 200 and a["test_data"]["split"] == "winter"
    assert a["precisions"]["fp32"]["accuracy"] == b["precisions"]["fp32"]["accuracy"]


@pytest.mark.parametrize("args, needle", [
    (["--corruptions", "fog"], "--corruptions: unknown fog; allowed: gaussian_noise, jpeg"),
    (["--corruptions", "jpeg", "--severity", "0..3"], "--severity: expected severities from 1 to 5"),
    (["--corruptions", "jpeg", "--severity", "six"], "--severity: expected severities from 1 to 5"),
    (["--test-split", "winter"], "no parquet files for split 'winter'"),
])
def test_bad_robustness_options_are_one_line_errors(args, needle, comparison, small_data, tmp_path):
    work, _, _ = comparison
    proc = cli("compare_quantizations.py", work / "final_model.pt", "--data", small_data, "--out-dir", tmp_path / "o",
               *args)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_training_curves_skip_rounds_the_server_did_not_evaluate(tmp_path):
    """`server-eval-every`: rounds without `server_test_accuracy` are read (not skipped as malformed),
    the final accuracy is the last round's (none where it was not evaluated), and two seeds of fp32 beside an fp16 run draw
    training_comparison.png (mean and band over the seeds)."""
    from eurosat.report.figures import figures
    from eurosat.report.runs import find_runs

    def write_run(precision: str, seed: int, evaluated: set[int]) -> None:
        run_dir = tmp_path / precision / "2026-01-01" / f"00-00-0{seed}"
        run_dir.mkdir(parents=True)
        rounds = [{"round": n, "elapsed_seconds": 20.0 * n, "bytes_sent": 10, "bytes_received": 10,
                   "cumulative_mb": 2e-5 * n, **({"server_test_accuracy": 0.1 * n + 0.01 * seed,
                                                  "server_test_loss": 1.0} if n in evaluated else {})}
                  for n in range(1, 8)]
        metrics = {"config": {"precision": precision, "seed": seed}, "rounds": rounds, "summary": {"status": "completed"}}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        (run_dir / "status.json").write_text(json.dumps({"state": "completed"}))

    for seed in (1, 2):
        write_run("fp32", seed, {1, 3, 6, 7})
    write_run("fp16", 1, {1, 3, 6, 7})
    skipped = []
    runs = find_runs(tmp_path, on_skip=lambda path, why: skipped.append(why))
    assert not skipped and len(runs) == 3
    assert [round(r.final_accuracy, 2) for r in runs] == [0.71, 0.71, 0.72]
    interrupted = json.loads((runs[0].path / "metrics.json").read_text())
    del interrupted["rounds"][-1]  # interrupted after round 6, which was evaluated
    assert type(runs[0])(runs[0].path, "interrupted", interrupted).final_accuracy == pytest.approx(0.61)
    del interrupted["rounds"][-1]  # after round 5, which was not: no accuracy, rather than round 3's
    assert type(runs[0])(runs[0].path, "interrupted", interrupted).final_accuracy is None
    (name, figure, dpi), = [f for f in figures([], tmp_path) if f[0] == "training_comparison.png"]
    lines = figure.axes[1].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1, 3, 6, 7]] * 2  # fp32 (mean of 2 seeds), fp16


def test_the_report_evaluates_on_the_data_its_run_trained_on(tmp_path, monkeypatch):
    """A checkpoint in a run folder needs no --data: the run's own `data` is used (on an offline node
    the Hub's default would fail); an explicit --data wins, and $EUROSAT_DATA only fills in."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cq", ROOT / "compare_quantizations.py")
    cq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cq)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"config": {"data": "/data/eurosat"}, "rounds": []}))
    assert cq.run_data(run / "final_model.pt") == "/data/eurosat"
    assert cq.run_data(tmp_path / "elsewhere.pt") is None
    (run / "metrics.json").write_text("{not json")
    assert cq.run_data(run / "final_model.pt") is None


def test_a_training_runs_own_exports_are_never_overwritten(tmp_path):
    """A QAT run's model_int8.pt (named in its summary) stays; the report says to choose --out-dir."""
    from eurosat.report.compare import check_run_files

    (tmp_path / "metrics.json").write_text(json.dumps({"summary": {"int8_model": "model_int8.pt"}}))
    (tmp_path / "model_int8.pt").write_bytes(b"the run's own QAT export")
    with pytest.raises(ValueError, match=r"holds the training run's own model_int8.pt, which the report would overwrite"):
        check_run_files(tmp_path, ["fp32", "fp16", "int8"])
    check_run_files(tmp_path, ["fp32", "fp16"])  # nothing of the run's own is touched
    check_run_files(tmp_path / "ptq", ["int8"])
    assert (tmp_path / "model_int8.pt").read_bytes() == b"the run's own QAT export"


def _listing(folder):
    """Every path under `folder` with its bytes (None for a folder) and inode: what "nothing written" means."""
    return {p.relative_to(folder): (None if p.is_dir() else p.read_bytes(), p.stat().st_ino) for p in folder.rglob("*")}


def test_an_output_file_taken_by_a_folder_is_refused_before_anything_is_written(tmp_path, small_data):
    """Every file the report and the figures would write is checked before the first one is: a folder where
    one goes is one line and exit 2, and none of the others is written (no model_fp32.pt left half-way)."""
    torch.manual_seed(0)
    torch.save(Net().state_dict(), tmp_path / "model.pt")
    out = tmp_path / "out"
    for i, name in enumerate(("model_int8.pt", "quantization_comparison.json", "model_fp16.pt")):
        (out / name).mkdir(parents=True)
        before = _listing(out)
        args = (tmp_path / "model.pt", "--data", small_data, "--out-dir", out, "--calibration-samples", 64)
        proc = cli("compare_quantizations.py", *args) if i == 0 else in_process(script_main("compare_quantizations.py"), *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"error: --out-dir {out}: {name} there is a folder; move it away or choose another --out-dir"
        assert _listing(out) == before
        (out / name).rmdir()
    proc = cli("compare_quantizations.py", tmp_path / "model.pt", "--data", small_data, "--out-dir", out, "--precisions", "fp32")
    assert proc.returncode == 0, proc.stderr
    figures = tmp_path / "figures"
    (figures / "comparison_plots_highres.png").mkdir(parents=True)
    proc = cli("create_comparison_plots.py", out / "quantization_comparison.json", "--outputs", tmp_path / "none",
               "--out", figures)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "comparison_plots_highres.png there is a folder" in proc.stderr
    assert [p.name for p in figures.iterdir()] == ["comparison_plots_highres.png"]  # comparison_plots.png not written


def test_the_input_is_never_rewritten_and_no_earlier_reports_file_is_left_unnamed(tmp_path, small_data):
    """The report's own model_fp32.pt as the input, into its own folder: kept as it is (it already holds what
    the report writes there), never rewritten; any other input where an output goes is refused. A rerun with
    fewer precisions into a folder holding an earlier report is refused: that report's other files would
    sit beside a JSON that does not name them."""
    torch.manual_seed(0)
    torch.save(Net().state_dict(), tmp_path / "final_model.pt")
    common = ("--data", small_data, "--calibration-samples", 64)
    first = cli("compare_quantizations.py", tmp_path / "final_model.pt", "--precisions", "fp32,int8", *common)
    assert first.returncode == 0, first.stderr
    fp32 = tmp_path / "model_fp32.pt"
    kept = (fp32.read_bytes(), fp32.stat().st_ino, fp32.stat().st_mtime_ns)
    again = cli("compare_quantizations.py", fp32, "--precisions", "fp32,int8", *common)
    assert again.returncode == 0, again.stderr
    assert (fp32.read_bytes(), fp32.stat().st_ino, fp32.stat().st_mtime_ns) == kept
    report = json.loads((tmp_path / "quantization_comparison.json").read_text())
    assert report["checkpoint"] == str(fp32) and report["precisions"]["fp32"]["file"] == "model_fp32.pt"
    assert report["precisions"]["fp32"]["file_size_bytes"] == len(kept[0])

    before = _listing(tmp_path)
    proc = in_process(script_main("compare_quantizations.py"), tmp_path / "final_model.pt", "--precisions", "fp32", *common)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"--out-dir {tmp_path}: holds an earlier report's model_int8.pt, which this report would not replace" in proc.stderr
    assert _listing(tmp_path) == before

    plain = tmp_path / "plain"  # a plain state dict under the report's name: the report would rewrite it
    plain.mkdir()
    shutil.copy(tmp_path / "final_model.pt", plain / "model_fp32.pt")
    before = _listing(plain)
    proc = cli("compare_quantizations.py", plain / "model_fp32.pt", "--precisions", "fp32", *common)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"error: --out-dir {plain}: model_fp32.pt there is the input file itself, which "
                                   "would be overwritten; choose another --out-dir")
    assert _listing(plain) == before
