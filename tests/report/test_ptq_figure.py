"""The PTQ report's cost, intervals, speed and registries: compare_quantizations.py on a model in a
run folder written by the real run recorder, and the figure drawn from the JSON it writes."""

import json
import math
import shutil

import pytest
import torch
from conftest import cli, in_process, script_main

from eurosat.fl.codecs import CODECS
from eurosat.fl.record import RunRecorder
from eurosat.quant.registry import CONFIGS
from eurosat.report import plots
from eurosat.report.compare import CompareOptions, check_inputs
from eurosat.report.cost import MB, read_run_traffic
from eurosat.report.figures import figures
from eurosat.train.model import Net

ROUNDS, PRICE = 12, 4.0  # the run's own cost-per-mb differs from the project default (5.0) on purpose


def write_run(run_dir, transport="fp32", rounds=ROUNDS, clients=1, price=PRICE):
    """A finished run folder as the ServerApp leaves it, through the real RunRecorder: every round
    one model down and one update up per client, in `transport` (the real codec's bytes)."""
    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in Net().state_dict().items()}
    wire = CODECS[transport].encode(state, quiet=True).count_bytes()
    fp32 = CODECS["fp32"].encode(state, quiet=True).count_bytes()
    recorder = RunRecorder(run_dir, {"precision": "fp32", "transport": transport, "cost-per-mb": price,
                                     "num-supernodes": 10, "fraction-train": 0.1})
    cumulative = 0
    for n in range(1, rounds + 1):
        cumulative += 2 * clients * wire
        recorder.add_round({"round": n, "server_test_accuracy": 0.5 + 0.03 * n, "server_test_loss": 1.0,
                            "clients": clients, "client_compute": ["float32"], "elapsed_seconds": 30.0 * n,
                            "bytes_sent": clients * wire, "bytes_received": clients * wire,
                            "cumulative_mb": cumulative / MB, "cumulative_cost": cumulative / MB * price,
                            "fp32_equivalent_bytes": 2 * clients * fp32}, state)
    recorder.finish(state, rounds_completed=rounds, fp32_model_bytes=fp32)
    return run_dir, cumulative


@pytest.fixture(scope="module")
def run_report(small_data, tmp_path_factory):
    """compare_quantizations.py on the final_model.pt of a 12-round, one-client-a-round run."""
    run_dir, sent = write_run(tmp_path_factory.mktemp("run") / "fp32" / "2026-01-01" / "00-00-00")
    out = tmp_path_factory.mktemp("ptq")
    proc = cli("compare_quantizations.py", run_dir / "final_model.pt", "--data", small_data, "--out-dir", out,
               "--precisions", "fp32,fp16,int8", "--calibration-samples", 128)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return run_dir, sent, out, json.loads((out / "quantization_comparison.json").read_text()), proc


def test_the_run_folder_gives_the_bytes_the_run_really_sent(run_report):
    run_dir, sent, _, report, proc = run_report
    settings = report["communication_settings"]
    assert settings["source"] == "run" and settings["clients"] is None and settings["rounds"] is None
    run = settings["run"]
    assert run["metrics"] == str((run_dir / "metrics.json").resolve())
    assert (run["rounds"], run["clients_min"], run["clients_max"], run["wire"]) == (ROUNDS, 1, 1, "fp32")
    assert run["total_bytes"] == sent and run["state"] == "completed"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run["total_bytes"] == metrics["summary"]["total_bytes"]  # the run's own summary
    assert settings["cost_per_mb"] == PRICE and settings["cost_per_mb_from"] == "run config"
    fp32 = report["precisions"]["fp32"]["communication"]
    assert (fp32["source"], fp32["basis"]) == ("measured", "run")
    assert fp32["total_bytes"] == sent
    assert fp32["total_cost"] == pytest.approx(metrics["summary"]["total_cost"])  # the run's dollars, not 10 x 10
    assert fp32["per_round_mb"] == pytest.approx(sent / MB / ROUNDS)
    assert fp32["label"].startswith("measured: ") and "12 rounds, 1 client a round" in fp32["label"]
    assert "cost * fp32: measured" in proc.stdout


def test_other_precisions_are_what_ifs_scaled_by_their_file_bytes(run_report):
    _, sent, _, report, _ = run_report
    p = report["precisions"]
    for name in ("fp16", "int8"):
        c = p[name]["communication"]
        ratio = p[name]["file_size_bytes"] / p["fp32"]["file_size_bytes"]
        assert (c["source"], c["basis"]) == ("what-if", "run") and c["label"].startswith("what-if: ")
        assert c["total_bytes"] == pytest.approx(sent * ratio)
        assert c["total_cost"] == pytest.approx(sent * ratio / MB * PRICE)
        assert c["savings_percent"] == pytest.approx(100 * (1 - ratio))
    assert report["communication_settings"]["reference"] == {"precision": "fp32", "bytes": sent}


def test_clients_and_rounds_make_a_labelled_what_if_even_in_a_run_folder(run_report, small_data, tmp_path):
    run_dir, _, _, _, _ = run_report
    proc = cli("compare_quantizations.py", run_dir / "final_model.pt", "--data", small_data, "--out-dir", tmp_path,
               "--precisions", "fp32", "--clients", 10, "--rounds", 10)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "quantization_comparison.json").read_text())
    settings = report["communication_settings"]
    assert (settings["source"], settings["clients"], settings["rounds"]) == ("what-if", 10, 10)
    assert settings["run"]["rounds"] == ROUNDS  # the run is still recorded beside the what-if
    c = report["precisions"]["fp32"]["communication"]
    assert (c["source"], c["basis"], c["label"]) == ("what-if", "clients x rounds", "what-if: 10 clients x 10 rounds")
    assert c["total_cost"] == pytest.approx(report["precisions"]["fp32"]["file_size_bytes"] / MB * 2 * 10 * 10 * PRICE)
    assert "what-if: 10 clients x 10 rounds" in proc.stdout


def test_a_broken_run_record_beside_the_checkpoint_is_a_one_line_error(tmp_path, small_data):
    torch.save(Net().state_dict(), tmp_path / "final_model.pt")
    (tmp_path / "metrics.json").write_text(json.dumps({"config": {}, "rounds": [{"round": 1}]}))
    out = tmp_path / "out"
    proc = in_process(script_main("compare_quantizations.py"), tmp_path / "final_model.pt", "--data", small_data,
                      "--out-dir", out)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "metrics.json" in proc.stderr and "--clients and --rounds" in proc.stderr and not out.exists()
    # a what-if does not need the record
    check_inputs(tmp_path / "final_model.pt", CompareOptions(str(small_data), out, clients=10, rounds=10))
    (tmp_path / "metrics.json").write_text(json.dumps({"loss": 0.1}))  # another tool's metrics.json: no run here
    assert read_run_traffic(tmp_path) is None


def test_a_run_that_sent_another_codec_is_measured_for_that_precision_only(tmp_path):
    run_dir, sent = write_run(tmp_path / "int8" / "run", transport="int8", rounds=3, clients=2)
    traffic = read_run_traffic(run_dir)
    assert (traffic.transport, traffic.rounds, traffic.clients_min, traffic.total_bytes) == ("int8", 3, 2, sent)
    assert traffic.fp32_equivalent_bytes > 3.5 * sent  # the same messages in fp32
    from eurosat.report.cost import reference, run_cost
    ref, name = reference(traffic, ["fp32", "int8"])
    costs = {n: run_cost(n, b, traffic, ref, name, 1000, PRICE) for n, b in (("fp32", 1000), ("int8", 260))}
    assert costs["int8"].source == "measured" and costs["int8"].total_bytes == sent
    assert costs["fp32"].source == "what-if" and costs["fp32"].total_bytes == pytest.approx(traffic.fp32_equivalent_bytes)


def test_every_precision_has_its_accuracy_interval(run_report):
    _, _, _, report, _ = run_report
    for name, r in report["precisions"].items():
        ci = r["accuracy_ci95"]
        assert ci["low"] <= r["accuracy"] <= ci["high"] and ci["n"] == report["test_samples"], name
        assert ci["estimate"] == pytest.approx(r["accuracy"])
        assert 0 < ci["high"] - ci["low"] < 20  # 300 images: a few points either way
        assert r["accuracy_drop_ci95"]["low"] <= r["accuracy_drop_percent"] <= r["accuracy_drop_ci95"]["high"]


def _ptq(report_path, tmp_path):
    (name, fig, dpi), = [f for f in figures([report_path], tmp_path / "no-runs") if f[0] == "comparison_plots.png"]
    return fig


def _panel(fig, title):
    found = [ax for ax in fig.axes if ax.get_title().startswith(title)]
    assert len(found) == 1, [ax.get_title() for ax in fig.axes]
    return found[0]


def _texts(ax):
    return [t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_xticklabels()]


def test_the_figure_draws_the_json_intervals_on_an_honest_axis(run_report, tmp_path):
    _, _, out, report, _ = run_report
    fig = _ptq(out / "quantization_comparison.json", tmp_path)
    plots.save(fig, tmp_path / "comparison_plots.png", 100)
    ax = _panel(fig, "Accuracy vs model size")
    drawn = {}
    for container in ax.containers:  # one errorbar per precision, named in the legend
        (segment,) = container.lines[2][0].get_segments()
        drawn[container.get_label().split(":")[0]] = (segment[0][1], segment[1][1])
    assert set(drawn) == set(report["precisions"])
    for name, (low, high) in drawn.items():
        ci = report["precisions"][name]["accuracy_ci95"]
        assert (low, high) == pytest.approx((ci["low"], ci["high"]))
    lo, hi = ax.get_ylim()
    assert hi - lo >= plots.MIN_ACCURACY_SPAN and hi <= 100
    assert all(lo <= v <= hi for pair in drawn.values() for v in pair)
    drop = _panel(fig, "Accuracy drop vs FP32 (95% interval)")
    assert drop.get_ylim()[1] - drop.get_ylim()[0] >= plots.MIN_DROP_SPAN


def test_the_figure_labels_measured_and_what_if_costs_and_names_the_device(run_report, tmp_path):
    _, _, out, report, _ = run_report
    fig = _ptq(out / "quantization_comparison.json", tmp_path)
    cost = _panel(fig, "Communication cost")
    labels = {t.split("\n")[1] for t in _texts(cost) if t.startswith("$")}
    assert labels == {"measured", "what-if"}
    assert "12 rounds, 1 client a round" in cost.get_xlabel() and "$4/MB" in cost.get_xlabel()
    speed = _panel(fig, "Inference speed")
    device = report["precisions"]["fp32"]["device"]
    assert report["device_names"][device] in speed.get_xlabel().replace("\n", " ")
    for name, r in report["precisions"].items():
        if name != "fp32":
            assert r["device"] == report["precisions"]["fp32"]["device"]  # a CPU machine: all on one device
            assert r["throughput_ratio_to_fp32"] == pytest.approx(
                r["throughput_images_per_s"] / report["precisions"]["fp32"]["throughput_images_per_s"])
            assert any(t.endswith(f"{r['throughput_ratio_to_fp32']:.2f}x fp32") for t in _texts(speed))
    table = [ax for ax in fig.axes if ax.tables][0].tables[0]
    cells = [c.get_text().get_text() for c in table.get_celld().values()]
    assert any(c.endswith("(measured)") for c in cells) and any(c.endswith("(what-if)") for c in cells)
    assert max(c.get_text().get_fontsize() for c in table.get_celld().values()) >= 12  # legible, not squeezed


def test_no_speed_ratio_between_devices(run_report, tmp_path):
    """A GPU node: fp32 on cuda, int8 on the CPU. A report without `throughput_ratio_to_fp32` (or any)
    gets no ratio between the two; the device stands beside each bar."""
    _, _, out, report, _ = run_report
    report = json.loads(json.dumps(report))
    for name in ("fp32", "fp16"):
        report["precisions"][name]["device"] = "cuda"
    for r in report["precisions"].values():
        del r["throughput_ratio_to_fp32"]
    report["device_names"]["cuda"] = "NVIDIA H200"
    path = tmp_path / "quantization_comparison.json"
    path.write_text(json.dumps(report))
    base = report["precisions"]["fp32"]
    assert plots.speed_ratio(report["precisions"]["int8"], base, report) is None
    assert plots.speed_ratio(report["precisions"]["fp16"], base, report) is not None
    speed = _panel(_ptq(path, tmp_path), "Inference speed")
    texts = _texts(speed)
    assert "int8\n(cpu)" in texts and "fp32\n(cuda)" in texts
    assert any(t.endswith("fp32 ran on cuda") for t in texts)
    assert "NVIDIA H200" in speed.get_xlabel()


def test_a_precision_no_registry_knows_is_drawn_after_the_known_ones(run_report, tmp_path):
    _, _, out, report, _ = run_report
    report = json.loads(json.dumps(report))
    assert "int3" not in CONFIGS
    report["precisions"] = {"int3": dict(report["precisions"]["int8"]), **report["precisions"]}  # first in the file
    path = tmp_path / "quantization_comparison.json"
    path.write_text(json.dumps(report))
    fig = _ptq(path, tmp_path)
    order = [n for n in CONFIGS if n in report["precisions"]] + ["int3"]
    for title in ("Model file size", "Compression vs FP32", "Communication cost", "Accuracy drop"):
        assert [t.get_text() for t in _panel(fig, title).get_xticklabels()] == order, title
    table = [ax for ax in fig.axes if ax.tables][0].tables[0]
    assert [table[i, 0].get_text().get_text() for i in range(1, len(order) + 1)] == order


def test_training_figures_keep_precisions_and_codecs_no_registry_knows(tmp_path):
    def write(label, config, seed):
        run_dir = tmp_path / label / "2026-01-01" / f"00-00-0{seed}"
        run_dir.mkdir(parents=True)
        rounds = [{"round": n, "elapsed_seconds": 10.0 * n, "bytes_sent": 10, "bytes_received": 10,
                   "cumulative_mb": 2e-5 * n, "server_test_accuracy": 0.1 * n} for n in (1, 2)]
        (run_dir / "metrics.json").write_text(json.dumps({"config": {**config, "seed": seed}, "rounds": rounds}))
        (run_dir / "status.json").write_text(json.dumps({"state": "completed"}))

    write("fp32", {"precision": "fp32"}, 1)
    write("bf16", {"precision": "bf16"}, 2)  # a training precision recipe.PRECISIONS does not list
    write("int8", {"precision": "int8"}, 3)
    write("fp32-int2", {"precision": "fp32", "transport": "int2"}, 4)  # a codec CODECS does not list
    write("fp32-int8", {"precision": "fp32", "transport": "int8", "transport-error-feedback": True}, 5)
    drawn = {name: fig for name, fig, _ in figures([], tmp_path)}
    legend = [t.get_text() for t in drawn["training_comparison.png"].axes[1].get_legend().get_texts()]
    assert [t.split(" ")[0] for t in legend] == ["fp32", "int8", "bf16"]
    legend = [t.get_text() for t in drawn["transport_comparison.png"].axes[1].get_legend().get_texts()]
    assert legend == ["fp32 on the wire", "int8 + error feedback on the wire", "int2 on the wire"]


def test_help_says_which_cost_is_which():
    proc = cli("compare_quantizations.py", "--help")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    assert "--clients CLIENTS clients, for a what-if communication cost" in text
    assert "the run's own cost-per-mb" in text and "(default: None)" not in text
    assert math.isfinite(float(text.split("run-config default ")[1].split("]")[0]))


def test_the_real_runs_folder_is_priced_from_its_record(e2e_run, small_data, tmp_path):
    """The end-to-end Flower run's own folder: its metrics.json is the cost's source."""
    _, run_dir = e2e_run
    proc = cli("compare_quantizations.py", run_dir / "final_model.pt", "--data", small_data, "--out-dir", tmp_path,
               "--precisions", "fp32,int8", "--calibration-samples", 128)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "quantization_comparison.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = report["communication_settings"]["run"]
    assert report["communication_settings"]["source"] == "run"
    assert run["rounds"] == len(metrics["rounds"]) == 2 and run["clients_max"] == 3
    fp32 = report["precisions"]["fp32"]["communication"]
    assert fp32["source"] == "measured" and fp32["total_bytes"] == metrics["summary"]["total_bytes"]
    assert fp32["total_cost"] == pytest.approx(metrics["summary"]["total_cost"])
    assert report["precisions"]["int8"]["communication"]["source"] == "what-if"
    shutil.copy(tmp_path / "quantization_comparison.json", tmp_path / "q.json")
    plots_proc = cli("create_comparison_plots.py", tmp_path / "q.json", "--outputs", tmp_path / "none")
    assert plots_proc.returncode == 0, plots_proc.stderr


def test_a_report_from_before_these_fields_still_draws_and_says_what_it_shows(run_report, tmp_path):
    """An earlier quantization_comparison.json (no accuracy_ci95, device_names, speed ratio or cost
    source; its costs were clients x rounds what-ifs): Wilson intervals on its test-set size,
    costs labelled what-if, speed ratios from the devices."""
    _, _, _, report, _ = run_report
    report = json.loads(json.dumps(report))
    del report["device_names"]
    report["communication_settings"] = {"clients": 10, "rounds": 10, "cost_per_mb": 5.0}
    for r in report["precisions"].values():
        del r["accuracy_ci95"], r["throughput_ratio_to_fp32"]
        r["communication"] = {k: r["communication"][k] for k in ("model_mb", "per_round_mb", "total_mb", "total_cost",
                                                                 "savings_dollars", "savings_percent")}
    path = tmp_path / "quantization_comparison.json"
    path.write_text(json.dumps(report))
    fig = _ptq(path, tmp_path)
    ax = _panel(fig, "Accuracy vs model size")
    assert "Wilson" in ax.get_legend().get_title().get_text() and len(ax.containers) == len(report["precisions"])
    cost = _panel(fig, "Communication cost")
    assert {t.split("\n")[1] for t in _texts(cost) if t.startswith("$")} == {"what-if"}
    assert cost.get_xlabel().startswith("what-if: 10 clients x 10 rounds")
