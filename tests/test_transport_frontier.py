"""bench/transport_frontier.py without runs: the pairing, the targets' verdicts, the Pareto front,
the figure, and what a folder of other runs refuses before anything runs (fast tier)."""

from __future__ import annotations

import importlib.util

import pytest
from PIL import Image
from conftest import ROOT, in_process

from bench.common import code_fingerprint, machine
from eurosat.common.files import write_json

spec = importlib.util.spec_from_file_location("transport_frontier", ROOT / "bench" / "transport_frontier.py")
frontier = importlib.util.module_from_spec(spec)
spec.loader.exec_module(frontier)


def _run(accuracy: float, ratio: float, up: str = "fp32", down: str = "fp32") -> dict:
    return {"accuracy": accuracy, "bytes_ratio_to_fp32": ratio, "total_bytes": int(ratio * 700e6),
            "bytes_down": int(ratio * 350e6), "bytes_up": int(ratio * 350e6), "transport_up": up, "transport_down": down}


def _provenance(runs: dict, **differ) -> dict:
    config = {"seed": 42, "local-epochs": 1, "transport": "fp32"}
    return {f"{name}@{seed}": {"commit": "abc", "code_sha256": "x", "machine": {"threads": 2},
                               "config": {**config, **differ.get(name, {})}}
            for name, by_seed in runs.items() for seed in by_seed}


RUNS = {
    "fp32": {"42": _run(80.0, 1.0), "43": _run(81.0, 1.0), "44": _run(79.0, 1.0)},
    "sign+ef": {"42": _run(79.5, 0.0382, "sign+ef", "sign+ef"), "43": _run(80.0, 0.0382, "sign+ef", "sign+ef"),
                "44": _run(78.9, 0.0382, "sign+ef", "sign+ef")},
    "topk10%+ef": {"42": _run(77.0, 0.058), "43": _run(78.0, 0.058), "44": _run(76.0, 0.058)},
    "int8": {"42": _run(79.0, 0.255), "43": _run(80.0, 0.255)},
}


def _state(**differ) -> dict:
    """A benchmark folder's state as bench/ledger.py keeps it: accuracies, run records, provenance."""
    return {"results": {n: {s: r["accuracy"] for s, r in by_seed.items()} for n, by_seed in RUNS.items()},
            "runs": {f"{n}@{s}": r for n, by_seed in RUNS.items() for s, r in by_seed.items()},
            "provenance": _provenance(RUNS, **differ)}


def test_settings_pair_with_fp32_by_seed_and_the_targets_say_by_how_much():
    rows = {r["setting"]: r for r in frontier.summarize(_state(), [42, 43, 44])}
    sign = rows["sign+ef"]
    assert sign["diff_vs_fp32"] == pytest.approx(-1.6 / 3) and sign["diff_low"] < -1.6 / 3 < sign["diff_high"]
    assert sign["target"].startswith("met")
    assert rows["topk10%+ef"]["target"] == "missed: accuracy -3.00 points, 2.00 below -1"
    assert rows["int8"]["paired_seeds"] == 2 and "target" not in rows["int8"]
    assert frontier.target_verdict({"bytes_ratio_to_fp32": 0.05}, 0.04, -1.0).startswith("bytes 0.0500 of fp32, 0.0100 above 0.04")
    assert [r["setting"] for r in frontier.pareto(list(rows.values()))] == ["sign+ef", "int8", "fp32"]


def test_a_setting_that_differs_beyond_its_transport_keys_is_not_paired():
    frontier.summarize(_state(**{"sign+ef": {"transport": "sign", "server-lr": 2.0}}), [42, 43, 44])  # transport keys may differ
    with pytest.raises(frontier.ProvenanceError, match="sign\\+ef@42 and fp32@42 differ in local-epochs: not paired"):
        frontier.summarize(_state(**{"sign+ef": {"local-epochs": 2}}), [42, 43, 44])


def test_the_figure_draws_every_setting(tmp_path):
    """Each main setting a point at (its bytes, its mean) with its interval, on a log bytes axis; the
    Pareto front through exactly the front's points; a diagnostic (run with --only) stays off the
    frontier but has its paired difference on the right, after the main settings."""
    from eurosat.report.plots import save

    rows = frontier.summarize(_state(), [42, 43, 44])
    diagnostic = {**next(r for r in rows if r["setting"] == "sign+ef"), "setting": "sign+ef slr2", "accuracy": 95.0}
    fig = frontier.figure([*rows, diagnostic], "test")
    ax, bx = fig.axes
    assert ax.get_xscale() == "log" and ax.get_ylim() == (0.0, 100.0)
    points = sorted(tuple(line.get_xydata()[0]) for line in ax.lines  # the markers, not the error bars' caps
                    if line.get_linestyle() == "None" and line.get_marker() not in ("_", "|"))
    assert points == sorted((r["bytes_ratio_to_fp32"], r["accuracy"]) for r in rows)
    (front,) = [line for line in ax.lines if line.get_label() == "Pareto front"]
    assert [tuple(xy) for xy in front.get_xydata()] == [(r["bytes_ratio_to_fp32"], r["accuracy"])
                                                         for r in frontier.pareto(rows)]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert all(any(label.startswith(r["setting"] + ": ") for label in labels) for r in rows)
    assert not any(label.startswith("sign+ef slr2") for label in labels)
    paired = [r["setting"] for r in rows if "diff_vs_fp32" in r] + ["sign+ef slr2"]
    assert [t.get_text().split(" (")[0] for t in bx.get_yticklabels()] == paired
    assert bx.get_yticklabels()[-1].get_text().endswith(" *")
    save(fig, tmp_path / "f.png", 100)
    with Image.open(tmp_path / "f.png") as img:
        assert img.format == "PNG" and img.size[0] > 800


def test_a_folder_of_other_code_or_protocol_is_refused_before_any_run(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    write_json(out / "transport_frontier.json", {"protocol": {"rounds": 20}, "results": {"fp32": {}}})
    proc = in_process(frontier.main, "--data", tmp_path, "--out", out)
    assert proc.returncode == 2 and "holds another protocol" in proc.stderr
    protocol = {"rounds": 20, "clients": 10, "recipe": frontier.PROTOCOL_RECIPE, "set": "",
                "data": str(tmp_path.resolve())}
    write_json(out / "transport_frontier.json", {"protocol": protocol, "code": {"commit": "old", "code_sha256": "0"},
                                                 "machine": machine(), "results": {"fp32": {"42": 80.0}}})
    proc = in_process(frontier.main, "--data", tmp_path, "--out", out)
    assert proc.returncode == 2 and f"holds runs of old, this is {code_fingerprint()['commit']}" in proc.stderr
    proc = in_process(frontier.main, "--only", "sign+ef,int3", "--out", out)
    assert proc.returncode == 2 and "unknown settings ['int3']" in proc.stderr
    proc = in_process(frontier.main, "--data", tmp_path / "nowhere", "--out", out)
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    proc = in_process(frontier.main, "--help")
    assert proc.returncode == 0 and "topk10%+ef" in proc.stdout
