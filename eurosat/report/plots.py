"""Report figures: the Okabe-Ito palette (distinguishable with any common colour-vision
deficiency), sized for a report page.

Each function takes already-loaded results (dicts from the JSON files) and returns a Figure;
`save` writes it atomically at the requested DPI. Figures are made without pyplot, and the style
applies inside each function only: importing this module changes no global state.
"""

from __future__ import annotations

import functools
import io
import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from eurosat.common.files import atomic_write
from eurosat.report.verdict import VERDICTS

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3,
         "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO)}


def styled(draw):
    """Draw under the report style, without touching matplotlib's global settings."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def subplots(*grid: int, figsize: tuple[float, float]):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid) if grid else fig.subplots()


def save(fig: Figure, path: Path, dpi: int) -> Path:
    """PNG with its DPI in the metadata (pHYs), written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(Path(path), lambda fh: fh.write(buf.getvalue()))


def ordered(names: Iterable[str], known: Sequence[str]) -> list[str]:
    """`names` with the registry's (`known`) first, in its order, then every other in the order met:
    a precision or codec a figure does not know yet is drawn after the others, never dropped."""
    names, known = list(dict.fromkeys(names)), list(dict.fromkeys(known))
    return [k for k in known if k in names] + [n for n in names if n not in known]


MIN_ACCURACY_SPAN = 5.0  # points: the accuracy axis never stretches a sub-point difference over the panel
MIN_DROP_SPAN = 2.0  # points: the drop axis spans at least this, and the verdict thresholds
PTQ_STYLE = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "xtick.labelsize": 11.5,
             "ytick.labelsize": 11}  # 15 inches wide: legible when the figure is shrunk to a page


def _ptq_rows(reports: Sequence[dict], order: Sequence[str]) -> list[tuple[str, str, dict, dict]]:
    """(label, precision, row, its report) for every precision of every report, registry order first."""
    rows = []
    for i, report in enumerate(reports):
        tag = f" #{i + 1}" if len(reports) > 1 else ""
        rows += [(f"{name}{tag}", name, report["precisions"][name], report)
                 for name in ordered(report["precisions"], order)]
    return rows


def honest_range(lows: Sequence[float], highs: Sequence[float], min_span: float,
                 floor: float | None = None, ceil: float | None = None) -> tuple[float, float]:
    """An axis range holding every interval with some padding, at least `min_span` wide, inside
    [floor, ceil] where the quantity cannot go beyond (accuracy: 100%)."""
    lo, hi = min(lows), max(highs)
    pad = max(0.1 * (hi - lo), 0.02 * min_span)
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    if ceil is not None and hi > ceil:  # shift, keeping the span
        lo, hi = lo - (hi - ceil), ceil
    if floor is not None and lo < floor:
        lo, hi = floor, hi + (floor - lo) if ceil is None else min(ceil, hi + (floor - lo))
    return lo, hi


def wilson(accuracy_percent: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of an accuracy on n images, in points (for reports without `accuracy_ci95`)."""
    p, z = accuracy_percent / 100, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (centre - half), 100 * (centre + half)


def accuracy_interval(row: dict, report: dict) -> tuple[float, float, str] | None:
    """(low, high, how) of one precision's accuracy: the report's bootstrap interval, else Wilson's on
    its test-set size (reports written before `accuracy_ci95`), else None."""
    ci = row.get("accuracy_ci95")
    if ci is not None:
        return float(ci["low"]), float(ci["high"]), "bootstrap"
    n = report.get("test_samples")
    if isinstance(n, int) and n > 0:
        return (*wilson(row["accuracy"], n), "Wilson")
    return None


def _device(row: dict, report: dict) -> str:
    return str(row.get("device") or report.get("device") or "?")


def speed_ratio(row: dict, base: dict, report: dict) -> float | None:
    """Throughput against FP32's, only where both ran on the same device (else None)."""
    if "throughput_ratio_to_fp32" in row:
        return row["throughput_ratio_to_fp32"]
    same = _device(row, report) == _device(base, report)
    return row["throughput_images_per_s"] / base["throughput_images_per_s"] if same else None


def cost_source(row: dict) -> str:
    return row["communication"].get("source", "what-if")  # reports before the run's traffic: all what-if


def cost_basis(report: dict) -> str:
    """One line on where a report's costs come from."""
    settings = report.get("communication_settings", {})
    price = settings.get("cost_per_mb")
    price = f"${price:g}/MB" if isinstance(price, (int, float)) else "?/MB"
    run = settings.get("run")
    if settings.get("source") == "run" and run:
        rounds, total = run["rounds"], run["total_bytes"] / 2**20
        clients = run.get("clients_min")
        clients = ("" if clients is None else f", {clients}" if clients == run.get("clients_max")
                   else f", {clients}-{run.get('clients_max')}") + (" client a round" if run.get("clients_max") == 1 else
                                                                    " clients a round" if clients else "")
        return (f"measured: the run's {rounds} round{'s' if rounds != 1 else ''}{clients}, {total:.1f} MB sent in "
                f"{run['wire']}; what-if: the same traffic in the other precisions; {price}")
    return (f"what-if: {settings.get('clients')} clients x {settings.get('rounds')} rounds, model down + up, {price}")


@styled
def ptq_figure(reports: Sequence[dict], order: Sequence[str] = ()) -> Figure:
    """Accuracy vs size and the drop (with 95% intervals), speed, size, compression and the cost
    of sending each (measured or what-if, said so), over a full-width summary table.
    `order`: the registry's precisions, drawn first in that order; any other after them."""
    with matplotlib.rc_context(PTQ_STYLE):
        return _ptq_figure(reports, order)


def _ptq_figure(reports: Sequence[dict], order: Sequence[str]) -> Figure:
    rows = _ptq_rows(reports, order)
    names = ordered([name for _, name, _, _ in rows], order)
    color_of = {name: OKABE_ITO[i % len(OKABE_ITO)] for i, name in enumerate(names)}
    labels = [label for label, *_ in rows]
    colors = [color_of[name] for _, name, _, _ in rows]
    fig = Figure(figsize=(15, 10.2 + 0.42 * len(rows)))
    grid = fig.add_gridspec(3, 3, height_ratios=[4.4, 4.4, 1.6 + 0.42 * len(rows)])
    axes = [[fig.add_subplot(grid[r, c]) for c in range(3)] for r in range(2)]
    _accuracy_vs_size(axes[0][0], rows, colors, reports)
    _drop_panel(axes[0][1], rows, labels, colors)
    _speed_panel(axes[0][2], rows, labels, colors, reports)
    sizes = [r["file_size_mb"] for _, _, r, _ in rows]
    _bars(axes[1][0], labels, sizes, colors, "Model file size", "file size (MB)", "{:.3f}")
    _bars(axes[1][1], labels, [r["compression_ratio"] for _, _, r, _ in rows], colors, "Compression vs FP32",
          "compression ratio (x)", "{:.2f}x")
    _cost_panel(axes[1][2], rows, labels, colors, reports)
    _summary_table(fig.add_subplot(grid[2, :]), rows, reports)
    fig.suptitle("Post-training quantization of the EuroSAT CNN", fontsize=15)
    fig.tight_layout()
    return fig


MARKERS = ["o", "s", "^", "D", "v", "P"]  # one per report, where several are drawn together


def _accuracy_vs_size(ax, rows, colors, reports) -> None:
    """One point per precision with its 95% interval, named in the legend (points of equal size
    would hide each other's labels)."""
    lows, highs, hows = [], [], set()
    for (label, _, r, report), c in zip(rows, colors):
        interval = accuracy_interval(r, report)
        marker = MARKERS[[id(x) for x in reports].index(id(report)) % len(MARKERS)]
        text = f"{label}: {r['accuracy']:.2f}%"
        if interval:
            low, high, how = interval
            hows.add(how)
            ax.errorbar(r["file_size_mb"], r["accuracy"], fmt=marker, ms=9, color=c, capsize=5, elinewidth=1.6,
                        zorder=3, alpha=0.9, label=f"{text} [{low:.1f}, {high:.1f}]",
                        yerr=[[max(0.0, r["accuracy"] - low)], [max(0.0, high - r["accuracy"])]])
            lows.append(low)
            highs.append(high)
        else:
            ax.scatter(r["file_size_mb"], r["accuracy"], s=90, marker=marker, color=c, zorder=3, label=text)
        lows.append(r["accuracy"])
        highs.append(r["accuracy"])
    ax.set_ylim(*honest_range(lows, highs, MIN_ACCURACY_SPAN, ceil=100.0))
    sizes = [r["file_size_mb"] for _, _, r, _ in rows]
    ax.set_xlim(0, max(sizes) * 1.15)
    what = " / ".join(sorted(hows)) if hows else "none in the report"
    ax.set(title="Accuracy vs model size", xlabel="file size (MB)", ylabel="test accuracy (%)")
    ax.legend(loc="lower right", fontsize=9.5 if len(rows) <= 6 else 7, title=f"accuracy [95% interval: {what}]",
              title_fontsize=9.5 if len(rows) <= 6 else 7.5, framealpha=0.9)


def _drop_panel(ax, rows, labels, colors) -> None:
    drops = [r["accuracy_drop_percent"] for _, _, r, _ in rows]
    intervals = [r.get("accuracy_drop_ci95") for _, _, r, _ in rows]
    errors = None
    if all(intervals):
        errors = [[max(0.0, d - i["low"]) for d, i in zip(drops, intervals)],
                  [max(0.0, i["high"] - d) for d, i in zip(drops, intervals)]]
    bars = _bars(ax, labels, drops, colors, "Accuracy drop vs FP32" + (" (95% interval)" if errors else ""),
                 "drop (percentage points)", "", errors)
    for i, (bar, d) in enumerate(zip(bars, drops)):
        top = max(d + (errors[1][i] if errors else 0.0), 0.0)  # above the interval, not on it
        ax.annotate(f"{d:+.2f}", (bar.get_x() + bar.get_width() / 2, top), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=_label_size(labels))
    ax.axhline(0, color="0.2", lw=0.8)
    for name, max_drop, *_ in VERDICTS:
        ax.axhline(max_drop, color="0.45", lw=1, ls="--", zorder=1)
        ax.annotate(f"INT8 {name}: drop {'<' if name == 'Good' else '<='} {max_drop:g}", (0.0, max_drop),
                    xycoords=("axes fraction", "data"), xytext=(4, 3), textcoords="offset points",
                    ha="left", fontsize=9.5, color="0.35")
    lows = [d - e for d, e in zip(drops, errors[0])] if errors else drops
    highs = [d + e for d, e in zip(drops, errors[1])] if errors else drops
    ax.set_ylim(*honest_range(lows + [0.0], highs + [max(v[1] for v in VERDICTS)], MIN_DROP_SPAN))


def _speed_panel(ax, rows, labels, colors, reports) -> None:
    measured = [(label, name, r, report, c) for (label, name, r, report), c in zip(rows, colors)
                if isinstance(r.get("throughput_images_per_s"), (int, float))]
    if not measured:
        ax.axis("off")
        ax.set_title("Inference speed: not in this report")
        return
    devices = {_device(r, report) for _, _, r, report, _ in measured}
    ticks = [f"{label}\n({_device(r, report)})" if len(devices) > 1 else label for label, _, r, report, _ in measured]
    speeds = [r["throughput_images_per_s"] for _, _, r, _, _ in measured]
    bars = _bars(ax, ticks, speeds, [c for *_, c in measured], "Inference speed", "images per second", "")
    for bar, (label, name, r, report, _) in zip(bars, measured):
        base = report["precisions"]["fp32"]
        ratio = speed_ratio(r, base, report)
        note = ("baseline" if r is base else f"{ratio:.2f}x fp32" if ratio is not None
                else f"fp32 ran on {_device(base, report)}")
        ax.annotate(f"{r['throughput_images_per_s']:,.0f}\n{note}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    textcoords="offset points", xytext=(0, 3), ha="center", fontsize=_label_size(ticks))
    ax.set_ylim(0, max(speeds) * 1.3)
    batch = {r.get("batch_size") for _, _, r, _, _ in measured} - {None}
    names = {}
    for report in reports:
        for device in {_device(r, report) for r in report["precisions"].values()}:
            names.setdefault(device, report.get("device_names", {}).get(device, device))
    ax.set_title("Inference speed" + (f" (batch {batch.pop()})" if len(batch) == 1 else ""))
    where = "; ".join(f"{d}: {n}" if n != d else d for d, n in sorted(names.items()) if d in devices)
    ax.set_xlabel(textwrap.fill(("all on " if len(devices) == 1 else "") + where, 55), fontsize=10)


def _cost_panel(ax, rows, labels, colors, reports) -> None:
    costs = [r["communication"]["total_cost"] for _, _, r, _ in rows]
    sources = [cost_source(r) for _, _, r, _ in rows]
    bars = _bars(ax, labels, costs, colors, "Communication cost", "dollars", "")
    for bar, cost, source, (_, _, r, _) in zip(bars, costs, sources, rows):
        if source != "measured":
            bar.set_hatch("//")
            bar.set_alpha(0.55)
            bar.set_edgecolor("white")
        ax.annotate(f"${cost:,.2f}\n{source}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    textcoords="offset points", xytext=(0, 3), ha="center", fontsize=_label_size(labels))
        saved = r["communication"]["savings_percent"]
        if saved > 0:
            ax.annotate(f"-{saved:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height() / 2),
                        ha="center", color="black", fontweight="bold", fontsize=_label_size(labels) + 0.5)
    ax.set_ylim(0, max(costs) * 1.3 if max(costs) > 0 else 1)
    handles = [Patch(facecolor="0.45", label="measured (the run's bytes)")] if "measured" in sources else []
    if any(s != "measured" for s in sources):
        handles.append(Patch(facecolor="0.45", alpha=0.55, hatch="//", edgecolor="white", label="what-if"))
    ax.legend(handles=handles, loc="upper right", fontsize=10)
    tags = [f"#{i + 1}: " if len(reports) > 1 else "" for i in range(len(reports))]
    ax.set_xlabel(textwrap.fill(" | ".join(t + cost_basis(rep) for t, rep in zip(tags, reports)), 58), fontsize=10)


def _summary_table(ax, rows, reports) -> None:
    ax.axis("off")
    cells = []
    for label, _, r, report in rows:
        interval = accuracy_interval(r, report)
        ci = r.get("accuracy_drop_ci95")
        base = report["precisions"]["fp32"]
        speed = r.get("throughput_images_per_s")
        ratio = speed_ratio(r, base, report) if isinstance(speed, (int, float)) else None
        cells.append([
            label,
            f"{r['accuracy']:.2f}" + (f"  [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else ""),
            f"{r['accuracy_drop_percent']:+.2f}" + (f"  [{ci['low']:+.2f}, {ci['high']:+.2f}]" if ci else ""),
            f"{r['file_size_mb']:.3f}", f"{r['compression_ratio']:.2f}x",
            f"{speed:,.0f} ({_device(r, report)})" if isinstance(speed, (int, float)) else "-",
            f"{ratio:.2f}x" if ratio is not None else "-",
            f"${r['communication']['total_cost']:,.2f} ({cost_source(r)})",
            f"{r['communication']['savings_percent']:.0f}%"])
    header = ["precision", "accuracy % [95%]", "drop vs fp32 [95%]", "MB", "ratio", "img/s (device)",
              "speed vs fp32", "cost", "saved"]
    widths = [max(len(row[i]) for row in [header] + cells) + 2 for i in range(len(header))]
    share = 0.42 * (len(rows) + 1) / _table_height(rows)
    table = ax.table(cellText=cells, colLabels=header, cellLoc="center", colWidths=[w / sum(widths) for w in widths],
                     bbox=[0, 1 - share, 1, share])
    table.auto_set_font_size(False)
    table.set_fontsize(12)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("0.92")
    notes = []
    for i, report in enumerate(reports):
        tag = f"#{i + 1}: " if len(reports) > 1 else ""
        if report.get("verdict"):
            reasons = report.get("verdict_reasons") or []
            notes.append(f"{tag}INT8 verdict: {report['verdict']}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    notes.append("drop: FP32's accuracy minus this one's on the same images, paired 95% interval; "
                 "speed vs fp32 only on the same device (- otherwise)")
    ax.text(0.0, 0.0, "\n".join(textwrap.fill(n, 150) for n in notes), transform=ax.transAxes, fontsize=11.5,
            va="bottom", ha="left")
    ax.set_title("Summary", loc="left", fontsize=13)


def _table_height(rows) -> float:
    return 0.42 * (len(rows) + 1) + 1.0  # inches: the table's rows, then the notes beneath


def _label_size(labels) -> float:
    """Value labels over bars: smaller where many bars share a panel (several reports)."""
    return 10 if len(labels) <= 6 else 7.5


def _bars(ax, labels, values, colors, title, ylabel, fmt, errors=None):
    bars = ax.bar(labels, values, color=colors, zorder=3, yerr=errors, capsize=4 if errors else 0)
    if fmt:
        for bar, v in zip(bars, values):
            ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        textcoords="offset points", xytext=(0, 3), ha="center", fontsize=_label_size(labels))
    ax.set(title=title, ylabel=ylabel)
    if len(labels) > 6:
        ax.tick_params(axis="x", rotation=45, labelsize=10)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
    else:
        ax.tick_params(axis="x", rotation=20 if max(len(str(label)) for label in labels) > 6 else 0)
    if min(values) >= 0 and max(values) > 0:
        ax.set_ylim(0, max(values) * 1.12)  # room for the value labels
    return bars


@styled
def curves_figure(groups: Sequence[tuple[str, Sequence[dict]]], x_key: str, x_label: str, title: str) -> Figure:
    """Test accuracy against `x_key` (wall clock, MB sent) and against round, one line per group of
    runs. A group of several seeds is drawn as its mean with a band from the lowest to the highest
    seed, round by round (over the seeds that reached that round)."""
    fig, (left, right) = subplots(1, 2, figsize=(13, 4.8))
    scale = 60 if x_key == "elapsed_seconds" else 1
    for i, (label, runs) in enumerate(groups):
        color = OKABE_ITO[i % len(OKABE_ITO)]
        by_round: dict[int, list[dict]] = {}
        for metrics in runs:
            for r in metrics["rounds"]:
                if "server_test_accuracy" in r:  # the rounds the server evaluated (`server-eval-every`)
                    by_round.setdefault(r["round"], []).append(r)
        rounds = sorted(by_round)
        acc = [[100 * r["server_test_accuracy"] for r in by_round[n]] for n in rounds]
        xs = [sum(r[x_key] for r in by_round[n]) / len(by_round[n]) / scale for n in rounds]
        mean = [sum(a) / len(a) for a in acc]
        name = f"{label} (mean of {len(runs)} seeds, band min-max)" if len(runs) > 1 else label
        for ax, x in ((left, xs), (right, rounds)):
            ax.plot(x, mean, marker="o", ms=3, color=color, label=name)
            if len(runs) > 1:
                ax.fill_between(x, [min(a) for a in acc], [max(a) for a in acc], color=color, alpha=0.2, lw=0)
    left.set(xlabel=x_label, ylabel="test accuracy (%)", title=f"Accuracy vs {x_label.split(' (')[0]}")
    right.set(xlabel="round", ylabel="test accuracy (%)", title="Accuracy vs round")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))  # no round 2.5
    right.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


@styled
def bits_figure(runs: Sequence[dict]) -> Figure:
    """Accuracy against weight bits, with the compression ratio on a second axis."""
    runs = sorted(runs, key=lambda r: -r["weight_bits"])
    fig, ax = subplots(figsize=(8, 4.8))
    for abits in sorted({r["activation_bits"] for r in runs}, reverse=True):
        sel = [r for r in runs if r["activation_bits"] == abits]
        ax.plot([r["weight_bits"] for r in sel], [r["accuracy"] for r in sel], marker="o", label=f"activations {abits} bit")
    ax.set(xscale="log", xlabel="weight bits", ylabel="test accuracy (%)", title="Accuracy and compression vs weight bits")
    ticks = sorted({r["weight_bits"] for r in runs})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.invert_xaxis()
    twin = ax.twinx()
    twin.plot([r["weight_bits"] for r in runs], [r["compression_ratio"] for r in runs], "s--", color=OKABE_ITO[3],
              label="compression ratio")
    twin.set_ylabel("compression ratio vs FP32 (x)")
    twin.grid(False)
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center left")
    fig.tight_layout()
    return fig


@styled
def parallel_figure(runs: Sequence[dict]) -> Figure:
    """Parallel coordinates over runs: weight bits, activation bits, accuracy, compression ratio."""
    axes_keys = [("weight_bits", "weight bits"), ("activation_bits", "activation bits"),
                 ("accuracy", "accuracy (%)"), ("compression_ratio", "compression (x)")]
    fig, ax = subplots(figsize=(10, 5))
    lows = [min(r[k] for r in runs) for k, _ in axes_keys]
    highs = [max(r[k] for r in runs) for k, _ in axes_keys]
    cmap = matplotlib.colormaps["cividis"]
    acc_lo, acc_hi = lows[2], highs[2]
    for r in sorted(runs, key=lambda r: r["accuracy"]):
        ys = [(r[k] - lo) / (hi - lo) if hi > lo else 0.5 for (k, _), lo, hi in zip(axes_keys, lows, highs)]
        shade = (r["accuracy"] - acc_lo) / (acc_hi - acc_lo) if acc_hi > acc_lo else 1.0
        ax.plot(range(len(axes_keys)), ys, marker="o", color=cmap(shade), alpha=0.9,
                label=f"W{r['weight_bits']}A{r['activation_bits']}: {r['accuracy']:.1f}%")
    for i, ((_, name), lo, hi) in enumerate(zip(axes_keys, lows, highs)):
        ax.axvline(i, color="grey", lw=1)
        ax.annotate(f"{hi:g}", (i, 1.0), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.annotate(f"{lo:g}", (i, 0.0), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xticks(range(len(axes_keys)), [n for _, n in axes_keys])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title("Bit-width sweep: parallel coordinates (colour = accuracy)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


@styled
def robustness_figure(report: dict) -> Figure:
    """Accuracy against severity (0 = clean), one panel per corruption, one line per precision."""
    rob = report["robustness"]
    corruptions = list(rob["corruptions"])
    severities = [0] + rob["severities"]
    cols = min(4, len(corruptions))
    rows = -(-len(corruptions) // cols)
    fig, axes = subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows))
    axes = list(axes.flat) if hasattr(axes, "flat") else [axes]
    markers = ["o", "s", "^", "D", "v"]
    for ax, corruption in zip(axes, corruptions):
        spec = rob["corruptions"][corruption]
        for i, (name, by_corruption) in enumerate(rob["results"].items()):
            clean = report["precisions"][name]["accuracy"]
            acc = [clean] + [by_corruption[corruption][str(s)]["accuracy"] for s in rob["severities"]]
            ax.plot(severities, acc, marker=markers[i % len(markers)], ms=4, color=OKABE_ITO[i % len(OKABE_ITO)],
                    linestyle=["-", "--", ":", "-."][i % 4], label=name)
        levels = ", ".join(f"{v:g}" for v, s in zip(spec["levels"], range(1, 6)) if s in rob["severities"])
        ax.set(title=corruption, xlabel=f"severity ({spec['parameter']}: {levels})", ylabel="test accuracy (%)")
        ax.set_xticks(severities)
    for ax in axes[len(corruptions):]:
        ax.axis("off")
    axes[0].legend(fontsize=8, loc="lower left")
    verdict = rob["summary"].get("verdict", "")
    fig.suptitle("Accuracy under corruption, by precision" + (f"\n{verdict}" if verdict else ""), fontsize=12)
    fig.tight_layout()
    return fig


@styled
def runtimes_figure(report: dict) -> Figure:
    """The exported ONNX files in ONNX Runtime beside PyTorch (the report's `runtimes`): accuracy of
    both with their agreement, batch-1 latency and batch-64 throughput measured side by side, file size."""
    section = report["runtimes"]
    rows = section["precisions"]
    keys = list(rows)
    colors = [OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(keys))]
    fig = Figure(figsize=(18, 5))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1.6, 1, 1, 1]})
    x = range(len(keys))
    width = 0.38
    ax = axes[0]
    ax.bar([i - width / 2 for i in x], [rows[k]["pytorch_accuracy"] for k in keys], width, color="0.6", label="PyTorch",
           zorder=3)
    bars = ax.bar([i + width / 2 for i in x], [rows[k]["accuracy"] for k in keys], width, color=colors,
                  label="ONNX Runtime", zorder=3)
    for bar, k in zip(bars, keys):
        ax.annotate(f"{rows[k]['accuracy']:.2f}%\nagree {rows[k]['agreement_percent']:.2f}%",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), textcoords="offset points", xytext=(0, 3),
                    ha="center", fontsize=_label_size(keys) - 1)
    values = [v for k in keys for v in (rows[k]["accuracy"], rows[k]["pytorch_accuracy"])]
    low, high = honest_range(values, values, MIN_ACCURACY_SPAN, ceil=100.0)
    ax.set_ylim(low, high + 0.25 * (high - low))  # room for the labels and the legend
    ax.set_xticks(list(x), keys)
    ax.set(title="Accuracy: PyTorch (grey) vs ONNX Runtime", ylabel="test accuracy (%)")
    ax.legend(loc="upper left", fontsize=9, ncol=2)
    speed = section.get("speed", {})
    _bars(axes[1], keys, [rows[k]["latency_ms_batch1"] for k in keys], colors, "Latency, batch 1", "ms per image",
          "{:.2f}")
    bars = _bars(axes[2], keys, [rows[k]["throughput_images_per_s_batch64"] for k in keys], colors,
                 f"Throughput, batch {speed.get('throughput_batch', 64)}", "images per second", "")
    for bar, k in zip(bars, keys):
        ratio = rows[k].get("throughput_ratio_to_fp32")
        axes[2].annotate(f"{rows[k]['throughput_images_per_s_batch64']:,.0f}" + (f"\n{ratio:.2f}x fp32" if ratio else ""),
                         (bar.get_x() + bar.get_width() / 2, bar.get_height()), textcoords="offset points",
                         xytext=(0, 3), ha="center", fontsize=_label_size(keys))
    axes[2].set_ylim(0, max(rows[k]["throughput_images_per_s_batch64"] for k in keys) * 1.3)
    _bars(axes[3], keys, [rows[k]["file_size_mb"] for k in keys], colors, "ONNX file size", "MB", "{:.3f}")
    machine = section.get("machine", {})
    fig.suptitle(f"Exported to ONNX, run in ONNX Runtime {section.get('onnxruntime', '')} on {machine.get('cpu', '?')} "
                 f"({machine.get('isa', '?')}), {section.get('threads', '?')} threads each; speed: median of "
                 f"{speed.get('passes', '?')} passes, side by side", fontsize=12)
    fig.tight_layout()
    return fig
