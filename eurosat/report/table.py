"""The cross-run table behind `analyze_results.py`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from eurosat.common.files import atomic_write
from eurosat.quant.recipe import PrecisionRecipe
from eurosat.report.runs import find_runs, warn_skipped

COLUMNS = [("weight_bits", "W bits"), ("activation_bits", "A bits"), ("precision", "precision"),
           ("transport", "transport"), ("state", "state"), ("size_mb", "size (MB)"),
           ("compression", "compr."), ("reduction_percent", "reduct. %"), ("accuracy", "acc %"),
           ("rounds", "rounds"), ("training_minutes", "time (min)"), ("folder", "folder")]


def collect_rows(root: Path) -> list[dict]:
    rows = []
    for run in find_runs(root):
        cfg, summary = run.config, run.metrics.get("summary", {})
        comp = _compression(run.path / "compression_metrics.json")
        bits = PrecisionRecipe.from_values(cfg).bits
        rounds = run.metrics.get("rounds", [])
        fp32_mb = summary.get("fp32_model_bytes", 0) / 2**20
        rows.append({
            "weight_bits": comp["weight_bits"] if comp else bits[0],
            "activation_bits": comp["activation_bits"] if comp else bits[1],
            "precision": cfg.get("precision", "?"),
            "transport": run.transport,
            "state": run.state,
            "size_mb": round(comp["compressed_size_mb"] if comp else fp32_mb, 4) if (comp or fp32_mb) else None,
            "compression": round(comp["compression_ratio"], 2) if comp else (1.0 if fp32_mb else None),
            "reduction_percent": round(comp["size_reduction_percent"], 1) if comp else (0.0 if fp32_mb else None),
            "accuracy": round(100 * run.final_accuracy, 2) if run.final_accuracy is not None else None,
            "rounds": len(rounds),
            "training_minutes": round(rounds[-1]["elapsed_seconds"] / 60, 2) if rounds else None,
            "folder": str(run.path),
        })
    return sorted(rows, key=lambda r: (-r["weight_bits"], -r["activation_bits"], r["folder"]))


def _compression(path: Path) -> dict | None:
    """A run's compression report, or None (absent, or unusable: then with a warning)."""
    if not path.exists():
        return None
    try:
        comp = json.loads(path.read_text())
        if all(isinstance(comp.get(k), (int, float)) for k in REPORT_KEYS):
            return comp
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        pass
    warn_skipped(path, "not a compression report; the run is listed without it")
    return None


REPORT_KEYS = ("weight_bits", "activation_bits", "compressed_size_mb", "compression_ratio", "size_reduction_percent")


def format_rows(rows: list[dict]) -> str:
    cells = [[h for _, h in COLUMNS]] + [["-" if r[k] is None else str(r[k]) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)


def write_csv(rows: list[dict], path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[key for key, _ in COLUMNS])
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()), mode="w")
