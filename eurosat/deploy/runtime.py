"""The exported files checked in ONNX Runtime: the PTQ report's `runtimes` section.

Each precision's ONNX file runs on the report's own test images; against the PyTorch model of the
same precision it gives accuracy and agreement (the share of images both put in the same class).
Speed is measured side by side in one run: every pass times every file in turn (batch 1 latency,
then batch 64 throughput), with the same threads, and each figure is the median over the passes,
so a machine that slows down mid-run slows every precision alike. The CPU's instruction set is
recorded beside the figures (INT8 kernels gain most where the CPU has VNNI), and so is what ONNX
Runtime really ran: the node types of each graph after its optimisations (an INT8 graph that was
not fused into QLinearConv/QGemm kernels would explain an INT8 file that is not faster).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eurosat.data.loading import TensorData
from eurosat.deploy.export import EXPORTERS, exported, refusal, write
from eurosat.deploy.qdq import INPUT
from eurosat.quant.registry import load
from eurosat.report.compare import Evaluated

MB = 1024 * 1024
THREADS = 2  # every file runs with the same threads: speed ratios compare kernels, not thread counts
PASSES = 5  # median of 5 passes
LATENCY_IMAGES = 64  # batch-1 runs a pass
THROUGHPUT_BATCH, THROUGHPUT_BATCHES = 64, 16  # batch-64 runs a pass (~0.5 s of fp32 here: a steadier median than 4)
TARGETS = {"fp32": 0.1, "fp16": 0.1, "int8": 0.3}  # points: ONNX Runtime's accuracy within this of PyTorch's
INT8_SPEEDUP = {"vnni": 2.0, "x86": 1.5}  # ONNX Runtime INT8 throughput at batch 64 over its FP32's


def session(model: Path | bytes, threads: int = THREADS, provider: str = "CPUExecutionProvider",
            optimized: Path | None = None) -> Any:
    """An ONNX Runtime session with `threads` intra-op threads (one inter-op), quiet, fully optimised."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's notices would bury the report
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=[provider])


def logits(sess: Any, images: TensorData | np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of every image (TensorData: normalised per batch, as PyTorch's evaluation does)."""
    if isinstance(images, TensorData):
        batches = (x.numpy() for x, _ in images.batches(batch_size))
    else:
        batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
    out = [sess.run(None, {INPUT: np.ascontiguousarray(b, dtype=np.float32)})[0] for b in batches]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def cpu_isa() -> dict[str, Any]:
    """The CPU and the vector instructions INT8 speed depends on (VNNI: int8 dot products in one step)."""
    try:
        with open("/proc/cpuinfo") as fh:
            info = fh.read()
    except OSError:
        info = ""
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    isa = ("AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-VNNI" if "avx_vnni" in flags else
           "AVX-512 (no VNNI)" if "avx512f" in flags else "AVX2 (no VNNI)" if "avx2" in flags else platform.machine())
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"cpu": model, "isa": isa, "vnni": vnni, "x86": platform.machine() in ("x86_64", "AMD64"),
            "flags": [f for f in wanted if f in flags], "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def kernels(path: Path, threads: int = THREADS) -> dict[str, int]:
    """Node types of the graph ONNX Runtime really runs on the CPU (after fusion), with counts."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        session(path, threads, optimized=optimized)
        counts: dict[str, int] = {}
        for node in onnx.load(str(optimized)).graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def measure_speed(sessions: dict[str, Any], images: np.ndarray, passes: int = PASSES,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Batch-1 latency (ms an image) and batch-64 throughput (images/s) of every session, side by side:
    each pass times every session in turn; the median over the passes, and every pass kept."""
    need = max(LATENCY_IMAGES, THROUGHPUT_BATCH * THROUGHPUT_BATCHES)
    images = np.resize(images, (need, *images.shape[1:])).astype(np.float32)  # repeats a short set
    singles = [images[i:i + 1] for i in range(LATENCY_IMAGES)]
    batches = [images[i * THROUGHPUT_BATCH:(i + 1) * THROUGHPUT_BATCH] for i in range(THROUGHPUT_BATCHES)]
    for sess in sessions.values():  # first-call set-up is not inference speed
        sess.run(None, {INPUT: singles[0]})
        sess.run(None, {INPUT: batches[0]})
    latency: dict[str, list[float]] = {name: [] for name in sessions}
    throughput: dict[str, list[float]] = {name: [] for name in sessions}
    for p in range(passes):
        for name, sess in sessions.items():
            start = time.perf_counter()
            for x in singles:
                sess.run(None, {INPUT: x})
            latency[name].append(1000.0 * (time.perf_counter() - start) / len(singles))
            start = time.perf_counter()
            for x in batches:
                sess.run(None, {INPUT: x})
            throughput[name].append(THROUGHPUT_BATCH * len(batches) / (time.perf_counter() - start))
        if progress:
            progress(f"speed pass {p + 1}/{passes}: " + ", ".join(
                f"{n} {throughput[n][-1]:.0f} img/s" for n in sessions))
    return {name: {"latency_ms_batch1": statistics.median(latency[name]),
                   "throughput_images_per_s_batch64": statistics.median(throughput[name]),
                   "latency_ms_batch1_passes": latency[name], "throughput_batch64_passes": throughput[name]}
            for name in sessions}


def _providers() -> list[str]:
    import onnxruntime as ort

    return ["CPUExecutionProvider"] + (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])


def _print(message: str) -> None:
    print(f"  onnx: {message}", flush=True)


def runtimes(evaluated: Evaluated, passes: int = PASSES) -> dict[str, Any]:
    """The report's `runtimes` section: export each evaluated model file to ONNX (model_<p>.onnx beside
    it), run it in ONNX Runtime on the same test images, and time every file side by side."""
    import onnxruntime as ort

    files, not_exported = {}, {}
    for name in evaluated.precisions:
        if name not in EXPORTERS:
            not_exported[name] = refusal(name)
            _print(not_exported[name])
            continue
        model, _ = load(evaluated.files[name])  # what is exported is what is on disk
        meta = {"eurosat.source": evaluated.files[name].name}
        if name == "int8" and evaluated.calibration:
            import json

            meta["eurosat.calibration"] = json.dumps(evaluated.calibration)
        files[name] = write(evaluated.out_dir / f"model_{name}.onnx", exported(model, name, meta))
        _print(f"wrote {files[name].name} ({os.path.getsize(files[name]) / MB:.3f} MB)")
    labels = evaluated.testset.labels.numpy()
    isa = cpu_isa()
    rows: dict[str, dict[str, Any]] = {}
    for provider in _providers():
        device = "cuda" if provider.startswith("CUDA") else "cpu"
        sessions = {name: session(path, provider=provider) for name, path in files.items()}
        for name, sess in sessions.items():
            predicted = logits(sess, evaluated.testset).argmax(1)
            accuracy = 100.0 * float((predicted == labels).mean())
            key = name if device == "cpu" else f"{name}@cuda"
            rows[key] = {
                "precision": name, "provider": provider, "file": files[name].name,
                "file_size_bytes": os.path.getsize(files[name]), "file_size_mb": os.path.getsize(files[name]) / MB,
                "compute": EXPORTERS[name].compute_cpu if device == "cpu" else EXPORTERS[name].compute_cuda,
                "accuracy": accuracy, "pytorch_accuracy": evaluated.accuracy[name],
                "accuracy_minus_pytorch": accuracy - evaluated.accuracy[name],
                "agreement_percent": 100.0 * float((predicted == evaluated.predictions[name]).mean()),
                "agreement_with_pytorch_fp32_percent": 100.0 * float((predicted == evaluated.predictions["fp32"]).mean()),
            }
            _print(f"{key}: {accuracy:.2f}% accuracy, {rows[key]['agreement_percent']:.2f}% agreement with PyTorch")
        _print(f"timing {', '.join(sessions)} side by side on {provider}, {THREADS} threads each, {passes} passes "
               f"({isa['isa'] if device == 'cpu' else 'CUDA'})")
        images = np.concatenate([x.numpy() for x, _ in evaluated.testset.take(
            THROUGHPUT_BATCH * THROUGHPUT_BATCHES).batches(256)])
        for name, speed in measure_speed(sessions, images, passes, _print).items():
            rows[name if device == "cpu" else f"{name}@cuda"].update(speed)
    for key, row in rows.items():
        base = rows.get("fp32" if "@" not in key else "fp32@cuda")
        row["throughput_ratio_to_fp32"] = (row["throughput_images_per_s_batch64"] / base["throughput_images_per_s_batch64"]
                                           if base else None)
        row["latency_ratio_to_fp32"] = row["latency_ms_batch1"] / base["latency_ms_batch1"] if base else None
        if row["provider"] == "CPUExecutionProvider":
            row["kernels"] = kernels(evaluated.out_dir / row["file"])
    return {"runtimes": {
        "onnxruntime": ort.__version__, "providers": _providers(), "threads": THREADS,
        "speed": {"passes": passes, "statistic": "median", "latency_images": LATENCY_IMAGES,
                  "throughput_batch": THROUGHPUT_BATCH, "throughput_images": THROUGHPUT_BATCH * THROUGHPUT_BATCHES,
                  "order": "side by side: each pass times every file in turn",
                  "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "machine": isa, "test_samples": len(labels), "precisions": rows, "not_exported": not_exported,
        "targets": targets(rows, isa)}}


def targets(rows: dict[str, dict[str, Any]], isa: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked on this run: accuracy against PyTorch, and INT8's speed-up on an x86 CPU."""
    out: dict[str, Any] = {"accuracy": {
        name: {"within_points": limit, "difference": rows[name]["accuracy_minus_pytorch"],
               "met": abs(rows[name]["accuracy_minus_pytorch"]) <= limit}
        for name, limit in TARGETS.items() if name in rows}}
    if "int8" in rows and "fp32" in rows and isa["x86"]:
        need = INT8_SPEEDUP["vnni" if isa["vnni"] else "x86"]
        ratio = rows["int8"]["throughput_ratio_to_fp32"]
        out["int8_throughput_batch64"] = {"ratio_to_fp32": ratio, "at_least": need, "isa": isa["isa"],
                                          "met": ratio >= need}
    return out


def format_runtimes(section: dict[str, Any]) -> str:
    """The section as lines for the terminal: one per file, the machine, the targets, the INT8 kernels."""
    machine, speed = section["machine"], section["speed"]
    lines = [f"ONNX Runtime {section['onnxruntime']} on {machine['cpu']} ({machine['isa']}), {section['threads']} threads "
             f"each; speed: median of {speed['passes']} passes, side by side (load average {speed['load_average_1min_at_end']:.2f})",
             f"{'File':<22}{'Accuracy':>9}{'vs torch':>9}{'Agree':>9}{'b1 ms':>8}{'b64 img/s':>11}{'x fp32':>8}"
             f"{'MB':>8}  compute"]
    for key, r in section["precisions"].items():
        ratio = r.get("throughput_ratio_to_fp32")
        lines.append(f"{r['file'] + ('@cuda' if '@' in key else ''):<22}{r['accuracy']:>8.2f}%"
                     f"{r['accuracy_minus_pytorch']:>+9.2f}{r['agreement_percent']:>8.2f}%{r['latency_ms_batch1']:>8.2f}"
                     f"{r['throughput_images_per_s_batch64']:>11.0f}{(f'{ratio:.2f}x' if ratio else '-'):>8}"
                     f"{r['file_size_mb']:>8.3f}  {r['compute']}")
    for name, why in section.get("not_exported", {}).items():
        lines.append(f"  {why}")
    t = section["targets"]
    lines.append("targets: " + "; ".join(
        f"{n} within {a['within_points']:g} of PyTorch: {'met' if a['met'] else 'NOT met'} ({a['difference']:+.2f})"
        for n, a in t["accuracy"].items()))
    if "int8_throughput_batch64" in t:
        s = t["int8_throughput_batch64"]
        lines.append(f"targets: INT8 throughput at batch 64 >= {s['at_least']:g}x FP32 ({s['isa']}): "
                     f"{'met' if s['met'] else 'NOT met'} ({s['ratio_to_fp32']:.2f}x)")
    if "int8" in section["precisions"] and "kernels" in section["precisions"]["int8"]:
        lines.append("INT8 graph as ONNX Runtime runs it: " + ", ".join(
            f"{op} x{n}" for op, n in section["precisions"]["int8"]["kernels"].items()))
    return "\n".join(lines)
