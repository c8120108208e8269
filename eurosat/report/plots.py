"""Report figures: the Okabe-Ito palette (distinguishable with any common colour-vision
deficiency), sized for a report page.

Each function takes already-loaded results (dicts from the JSON files) and returns a Figure;
`save` writes it atomically at the requested DPI. Figures are made without pyplot, and the style
applies inside each function only: importing this module changes no global state.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from eurosat.common.files import atomic_write

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


def _ptq_rows(reports: Sequence[dict]) -> list[tuple[str, dict]]:
    rows = []
    for i, report in enumerate(reports):
        tag = f" #{i + 1}" if len(reports) > 1 else ""
        rows += [(f"{name}{tag}", r) for name, r in report["precisions"].items()]
    return rows


@styled
def ptq_figure(reports: Sequence[dict]) -> Figure:
    """Six panels: accuracy vs size, size, compression, accuracy drop, cost with savings, summary table."""
    rows = _ptq_rows(reports)
    labels = [name for name, _ in rows]
    colors = [OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(rows))]
    sizes = [r["file_size_mb"] for _, r in rows]
    fig, axes = subplots(2, 3, figsize=(15, 9))
    ax = axes[0, 0]
    for (name, r), c in zip(rows, colors):
        ax.scatter(r["file_size_mb"], r["accuracy"], s=90, color=c, zorder=3)
        ax.annotate(name, (r["file_size_mb"], r["accuracy"]), textcoords="offset points", xytext=(6, 6))
    ax.set(title="Accuracy vs model size", xlabel="file size (MB)", ylabel="test accuracy (%)")
    _bars(axes[0, 1], labels, sizes, colors, "Model size", "file size (MB)", "{:.3f}")
    _bars(axes[0, 2], labels, [r["compression_ratio"] for _, r in rows], colors, "Compression vs FP32",
          "compression ratio (x)", "{:.2f}x")
    drops = [r["accuracy_drop_percent"] for _, r in rows]
    intervals = [r.get("accuracy_drop_ci95") for _, r in rows]
    errors = None
    if all(intervals):
        errors = [[max(0.0, d - i["low"]) for d, i in zip(drops, intervals)],
                  [max(0.0, i["high"] - d) for d, i in zip(drops, intervals)]]
    _bars(axes[1, 0], labels, drops, colors, "Accuracy drop vs FP32" + (" (95% interval)" if errors else ""),
          "drop (percentage points)", "{:+.2f}", errors)
    costs = [r["communication"]["total_cost"] for _, r in rows]
    bars = _bars(axes[1, 1], labels, costs, colors, "Communication cost", "dollars", "${:,.2f}")
    for bar, (_, r) in zip(bars, rows):
        saved = r["communication"]["savings_percent"]
        if saved > 0:
            axes[1, 1].annotate(f"-{saved:.0f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height() / 2),
                                ha="center", color="white", fontweight="bold")
    settings = reports[0].get("communication_settings", {})
    axes[1, 1].set_xlabel(f"{settings.get('clients')} clients x {settings.get('rounds')} rounds x "
                          f"${settings.get('cost_per_mb')}/MB, down + up")
    ax = axes[1, 2]
    ax.axis("off")
    cells = [[name, f"{r['accuracy']:.2f}", f"{r['accuracy_drop_percent']:+.2f}", f"{r['file_size_mb']:.3f}",
              f"{r['compression_ratio']:.2f}x", f"{r['communication']['savings_percent']:.0f}%"] for name, r in rows]
    table = ax.table(cellText=cells, colLabels=["precision", "acc %", "drop", "MB", "ratio", "saved"],
                     loc="center", cellLoc="center")
    table.scale(1, 1.6)
    verdicts = [r.get("verdict") for r in reports if r.get("verdict")]
    ax.set_title("Summary" + (f" (INT8 verdict: {', '.join(verdicts)})" if verdicts else ""))
    fig.suptitle("Post-training quantization of the EuroSAT CNN", fontsize=13)
    fig.tight_layout()
    return fig


def _bars(ax, labels, values, colors, title, ylabel, fmt, errors=None):
    bars = ax.bar(labels, values, color=colors, zorder=3, yerr=errors, capsize=4 if errors else 0)
    for bar, v in zip(bars, values):
        ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    textcoords="offset points", xytext=(0, 3), ha="center", fontsize=9)
    ax.set(title=title, ylabel=ylabel)
    ax.tick_params(axis="x", rotation=20)
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
