"""Which results go into which figure: picks reports and runs from disk for `plots.py`."""

from __future__ import annotations

import json
from pathlib import Path

from eurosat import plots
from eurosat.compare import RESULT_FILE
from eurosat.runs import Run, find_runs, latest_by

COMPRESSION_FILE = "compression_metrics.json"


def newest_report(root: Path) -> Path | None:
    found = sorted(Path(root).rglob(RESULT_FILE), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _load_report(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or "fp32" not in report.get("precisions", {}):
        raise ValueError(f"{path}: not a {RESULT_FILE} (no precisions.fp32)")
    return report


def bit_sweep_rows(runs: list[Run]) -> list[dict]:
    """One row per finished run that has a compression report (the newest per W/A pair)."""
    rows: dict[tuple[int, int], dict] = {}
    for run in runs:
        path = run.path / COMPRESSION_FILE
        if run.state not in ("completed", "interrupted") or not path.exists() or run.final_accuracy is None:
            continue
        comp = json.loads(path.read_text())
        key = (comp["weight_bits"], comp["activation_bits"])
        rows[key] = {"weight_bits": key[0], "activation_bits": key[1], "accuracy": 100 * run.final_accuracy,
                     "compression_ratio": comp["compression_ratio"], "run": str(run.path)}
    return list(rows.values())


def draw_all(report_paths: list[Path], outputs_root: Path, out: Path | None) -> list[Path]:
    written: list[Path] = []
    if not report_paths and (newest := newest_report(outputs_root)):
        report_paths = [newest]
    reports = [_load_report(p) for p in report_paths]
    out = out or (report_paths[0].parent if report_paths else outputs_root)
    if reports:
        fig = plots.ptq_figure(reports)
        written += [plots.save(fig, out / "comparison_plots.png", 300),
                    plots.save(fig, out / "comparison_plots_highres.png", 600)]
    runs = find_runs(outputs_root) if outputs_root.exists() else []
    plain = [r for r in runs if r.config.get("transport", "fp32") == "fp32" and r.config.get("weight-bits", 32) == 32]
    by_precision = latest_by(plain, lambda r: r.config.get("precision"))
    if len(by_precision) >= 2:
        curves = [(f"{p} ({by_precision[p].path.name})", by_precision[p].metrics) for p in ("fp32", "fp16", "int8")
                  if p in by_precision]
        fig = plots.curves_figure(curves, "elapsed_seconds", "wall-clock time (min)",
                                  "Training precision: how far each gets in the same time budget")
        written.append(plots.save(fig, out / "training_comparison.png", 300))
    fp32_training = [r for r in runs if r.config.get("precision") == "fp32" and r.config.get("weight-bits", 32) == 32]
    by_transport = latest_by(fp32_training, lambda r: r.transport)
    if len(by_transport) >= 2:
        order = [f"{t}{ef}" for t in ("fp32", "fp16", "int8", "int4") for ef in ("", "+ef")]
        curves = [(f"{t.replace('+ef', ' + error feedback')} on the wire", by_transport[t].metrics)
                  for t in order if t in by_transport]
        fig = plots.curves_figure(curves, "cumulative_mb", "data transmitted (MB)",
                                  "Quantized transport: accuracy per megabyte sent")
        written.append(plots.save(fig, out / "transport_comparison.png", 300))
    rows = bit_sweep_rows(runs)
    if len(rows) >= 2:
        written.append(plots.save(plots.bits_figure(rows), out / "bits_accuracy.png", 300))
        written.append(plots.save(plots.parallel_figure(rows), out / "bits_parallel.png", 300))
    if not written:
        raise ValueError(f"nothing to plot: no {RESULT_FILE} given or found, and no runs to compare under {outputs_root}")
    return written
