"""Which results go into which figure: picks reports and runs from disk for `plots.py`.

The order of precisions and transports is the registries' (eurosat/quant/registry.py `CONFIGS`
for the PTQ report, eurosat/quant/recipe.py `PRECISIONS` for training runs, eurosat/fl/codecs.py
`CODECS` for the wire); a precision or codec found in the results but in no registry (a newer
report, an older run) is drawn after the known ones, never dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from eurosat.report import plots
from eurosat.report.compare import RESULT_FILE
from eurosat.common.paths import check_output_dir, check_output_files
from eurosat.fl.codecs import CODECS, wire_name
from eurosat.fl.record import FINISHED
from eurosat.quant.recipe import PRECISIONS
from eurosat.quant.registry import CONFIGS
from eurosat.report.runs import Run, find_runs, latest_by, warn_skipped

COMPRESSION_FILE = "compression_metrics.json"


def newest_report(root: Path) -> Path | None:
    found = sorted(Path(root).rglob(RESULT_FILE), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _load_report(path: Path) -> dict:
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a {RESULT_FILE}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        report = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("precisions"), dict) or "fp32" not in report["precisions"]:
        raise ValueError(f"{path}: not a {RESULT_FILE} (no precisions.fp32)")
    for name, row in report["precisions"].items():
        missing = [k for k in REPORT_NUMBERS if not isinstance(_get(row, k), (int, float)) or isinstance(_get(row, k), bool)
                   or not math.isfinite(_get(row, k))]
        if missing:
            raise ValueError(f"{path}: precisions.{name}: {', '.join(missing)} missing or not a finite number")
    if "robustness" in report and not isinstance(report["robustness"], dict):
        raise ValueError(f"{path}: 'robustness' is not an object")
    return report


REPORT_NUMBERS = ("accuracy", "accuracy_drop_percent", "file_size_mb", "compression_ratio",
                  "communication.total_cost", "communication.savings_percent")


def _from_reports(paths: list[Path], draw, *args):
    """`draw(*args)` on reports read from `paths`: a report whose fields have the wrong shape
    (valid JSON, hand-edited or from another tool) is a one-line error naming the file(s)."""
    try:
        return draw(*args)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as exc:
        names = ", ".join(str(p) for p in paths)
        raise ValueError(f"{names}: a field of this {RESULT_FILE} has the wrong shape "
                         f"({type(exc).__name__}: {str(exc)[:120]})") from None


def _get(row: object, dotted: str) -> object:
    for part in dotted.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def bit_sweep_rows(runs: list[Run]) -> list[dict]:
    """One row per finished run that has a compression report (the newest per W/A pair)."""
    rows: dict[tuple[int, int], dict] = {}
    for run in runs:
        path = run.path / COMPRESSION_FILE
        if run.state not in FINISHED or not path.exists() or run.final_accuracy is None:
            continue
        try:
            comp = json.loads(path.read_text())
            key = (int(comp["weight_bits"]), int(comp["activation_bits"]))
            ratio = float(comp["compression_ratio"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warn_skipped(path, f"not a compression report ({type(exc).__name__})")
            continue
        rows[key] = {"weight_bits": key[0], "activation_bits": key[1], "accuracy": 100 * run.final_accuracy,
                     "compression_ratio": ratio, "run": str(run.path)}
    return list(rows.values())


def _groups(by: dict[str, list[Run]], known: list[str], name) -> list[tuple[str, list[dict]]]:
    """One group per key found, the registry's (`known`) first in its order, any other after."""
    return [(name(k, by[k]), [r.metrics for r in by[k]]) for k in plots.ordered(by, known)]


def transport_order(found: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every codec of the registry, each without and then with error feedback; the `found` links
    of configured codecs (`topk0.01+ef`) or of two codecs (`sign+ef up, fp16+ef down`) after the
    registry entry of their uplink codec, so a new codec is placed, not appended."""
    known = list(dict.fromkeys(wire_name(CODECS[t].label, ef) for t in CODECS for ef in (False, True)))

    def place(link: str) -> tuple[int, int, str]:
        up = link.split(" up, ")[0]
        base = up.removesuffix("+ef")
        names = [i for i, t in enumerate(CODECS) if base == t or base.startswith(t)]
        return (max(names, key=lambda i: len(list(CODECS)[i])) if names else len(CODECS), up != base, link)

    return sorted(dict.fromkeys([*known, *found]), key=place)


def figures(report_paths: list[Path], outputs_root: Path) -> list[tuple[str, object, int]]:
    """Every figure there is data for, as (file name, figure, dpi); nothing is written here."""
    out: list[tuple[str, object, int]] = []
    if not report_paths and (newest := newest_report(outputs_root)):
        report_paths = [newest]
    reports = [_load_report(p) for p in report_paths]
    if reports:
        fig = _from_reports(report_paths, plots.ptq_figure, reports, list(CONFIGS))
        out += [("comparison_plots.png", fig, 300), ("comparison_plots_highres.png", fig, 600)]
        robust = [(p, r) for p, r in zip(report_paths, reports) if isinstance(r.get("robustness"), dict)]
        if robust:
            out.append(("robustness.png", _from_reports([robust[0][0]], plots.robustness_figure, robust[0][1]), 300))
        deployed = [(p, r) for p, r in zip(report_paths, reports) if isinstance(r.get("runtimes"), dict)]
        if deployed:  # the ONNX files in ONNX Runtime (compare_quantizations.py --export onnx)
            out.append(("onnx_runtimes.png", _from_reports([deployed[0][0]], plots.runtimes_figure, deployed[0][1]), 300))
    runs = find_runs(outputs_root) if outputs_root.exists() else []
    plain = [r for r in runs if r.config.get("transport", "fp32") == "fp32" and r.config.get("weight-bits", 32) == 32]
    by_precision = latest_by(plain, lambda r: str(r.config.get("precision", "fp32")))
    if len(by_precision) >= 2:
        groups = _groups(by_precision, list(PRECISIONS),
                         lambda p, g: p if len(g) > 1 else f"{p} ({g[0].path.name})")
        out.append(("training_comparison.png", plots.curves_figure(
            groups, "elapsed_seconds", "wall-clock time (min)",
            "Training precision: how far each gets in the same time budget"), 300))
    fp32_training = [r for r in runs if r.config.get("precision", "fp32") == "fp32" and r.config.get("weight-bits", 32) == 32]
    by_transport = latest_by(fp32_training, lambda r: r.transport)
    if len(by_transport) >= 2:
        groups = _groups(by_transport, transport_order(list(by_transport)),
                         lambda t, _: f"{t.replace('+ef', ' + error feedback')} on the wire")
        out.append(("transport_comparison.png", plots.curves_figure(
            groups, "cumulative_mb", "data transmitted (MB)", "Quantized transport: accuracy per megabyte sent"), 300))
    rows = bit_sweep_rows(runs)
    if len(rows) >= 2:
        out += [("bits_accuracy.png", plots.bits_figure(rows), 300), ("bits_parallel.png", plots.parallel_figure(rows), 300)]
    return out


def draw_all(report_paths: list[Path], outputs_root: Path, out: Path | None) -> list[Path]:
    """Read every input and draw every figure first, and check every file they go to; only then write
    them (no half-updated set)."""
    out = check_output_dir(out or (report_paths[0].parent if report_paths else outputs_root), "--out")
    drawn = figures(report_paths, outputs_root)
    if not drawn:
        raise ValueError(f"nothing to plot: no {RESULT_FILE} given or found, and no runs to compare under {outputs_root}")
    check_output_files(out, [name for name, _, _ in drawn], "--out", inputs=report_paths)
    return [plots.save(fig, out / name, dpi) for name, fig, dpi in drawn]
