"""Post-training quantization report: FP32 vs FP16 vs INT8 (and the seed's dynamic INT8).

For each precision: quantize, save, reload the file (so what is evaluated is what is on
disk), evaluate on the whole test split, and measure the file, the speed and the cost of
sending it in federated training. Honest labels: `compute_dtype` says what the arithmetic ran
in (FP16 on a CPU is float16 storage computed in float32).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from eurosat.cost import communication_cost, savings, verdict
from eurosat.data import TensorData, load_split, resolve_source
from eurosat.model import Net
from eurosat.ptq import CONFIGS, is_fully_quantized, load_quantized, quantize_, save_quantized
from eurosat.results import CheckpointError, load_state_dict, write_json
from eurosat.training import evaluate

MB = 1024 * 1024
RESULT_FILE = "quantization_comparison.json"
CLASS_NAMES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
               "PermanentCrop", "Residential", "River", "SeaLake"]


@dataclass(frozen=True)
class CompareOptions:
    data: str
    out_dir: Path
    clients: int = 10
    rounds: int = 10
    cost_per_mb: float = 5.0
    calibration_samples: int = 1024
    calibration_split: str = "train"
    device: str = "cpu"
    batch_size: int = 256
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")


def load_fp32_net(path: Path) -> Net:
    """A trained FP32 `Net` from a plain state dict; anything else is a one-line CheckpointError."""
    state = load_state_dict(path)
    if "__precision__" in state:
        raise CheckpointError(f"{path}: is an already-quantized model file; give the FP32 checkpoint")
    net = Net()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{path}: not a EuroSAT Net state dict (another architecture): {detail[:200]}") from None
    return net.eval()


def _calibration(source, split: str, n: int, batch_size: int) -> list[torch.Tensor]:
    images = load_split(source, split, sample=n, seed=0)
    return [x for x, _ in images.batches(batch_size)]


def _evaluate_file(path: Path, precision: str, testset: TensorData, device: torch.device, batch_size: int) -> dict:
    """Evaluate a saved model file as a user would load it."""
    model, stored = load_quantized(path)
    assert stored == precision, (stored, precision)
    eval_device, input_dtype, compute = torch.device("cpu"), torch.float32, "float32"
    if precision.startswith("int8"):
        compute = "int8 (quantized kernels, CPU)" if precision == "int8" else "int8 Linear + float32 Conv2d (CPU)"
    elif precision == "fp16" and device.type == "cuda":
        eval_device, input_dtype, compute = device, torch.float16, "float16"
    elif precision == "fp16":
        model = model.float()  # CPU half convolutions are slow or missing: compute in float32
        compute = "float32 (float16 storage upcast)"
    else:
        eval_device = device
    model = model.to(eval_device)
    warm = next(testset.batches(batch_size, device=eval_device))[0].to(input_dtype)
    with torch.no_grad():
        model(warm)  # first-call set-up is not inference speed
    result = evaluate(model, testset, batch_size, eval_device, input_dtype, progress=f"evaluating {precision}")
    confusion = torch.tensor(result["confusion_matrix"])
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
    return {
        "accuracy": 100.0 * result["accuracy"],
        "test_loss": result["loss"],
        "per_class_accuracy": dict(zip(CLASS_NAMES, [100.0 * a for a in per_class])),
        "confusion_matrix": result["confusion_matrix"],
        "throughput_images_per_s": result["num_examples"] / result["seconds"],
        "latency_ms_per_batch": 1000.0 * result["seconds"] / result["batches"],
        "batch_size": batch_size,
        "device": str(eval_device),
        "compute_dtype": compute,
        "fully_quantized": is_fully_quantized(model) if precision.startswith("int8") else None,
    }


def compare(checkpoint: Path, opts: CompareOptions) -> dict:
    """Run the whole comparison; write model files and the JSON into `opts.out_dir`."""
    net = load_fp32_net(checkpoint)  # bad input fails here, before anything is written
    unknown = [p for p in opts.precisions if p not in CONFIGS]
    if unknown:
        raise ValueError(f"--precisions: unknown {', '.join(unknown)}; allowed: {', '.join(CONFIGS)}")
    precisions = ["fp32"] + [p for p in opts.precisions if p != "fp32"]  # fp32 is the baseline
    source = resolve_source(opts.data)
    device = torch.device(opts.device)
    started = time.perf_counter()
    testset = load_split(source, "test")
    calibration = (_calibration(source, opts.calibration_split, opts.calibration_samples, 64)
                   if "int8" in precisions else None)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in precisions:
        config = CONFIGS[name]
        path = opts.out_dir / f"model_{name}.pt"
        save_quantized(quantize_(net, config, calibration if name == "int8" else None), config, path)
        size = os.path.getsize(path)
        results[name] = {"file": path.name, "file_size_bytes": size, "file_size_mb": size / MB,
                         **_evaluate_file(path, name, testset, device, opts.batch_size)}
        print(f"  {name}: {results[name]['accuracy']:.2f}% accuracy, {size / MB:.3f} MB", flush=True)
    base = results["fp32"]
    base_cost = communication_cost(base["file_size_bytes"], opts.clients, opts.rounds, opts.cost_per_mb)
    for r in results.values():
        r["accuracy_drop_percent"] = base["accuracy"] - r["accuracy"]  # percentage points, as in the seed
        r["compression_ratio"] = base["file_size_bytes"] / r["file_size_bytes"]
        r["size_reduction_percent"] = 100.0 * (1 - r["file_size_bytes"] / base["file_size_bytes"])
        cost = communication_cost(r["file_size_bytes"], opts.clients, opts.rounds, opts.cost_per_mb)
        r["communication"] = {**cost.as_dict(), **savings(cost, base_cost)}
    report = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "data": source.name,
        "test_samples": len(testset),
        "calibration": {"split": opts.calibration_split, "samples": opts.calibration_samples} if calibration else None,
        "device": str(device),
        "timestamp": datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "quantized_engine": torch.backends.quantized.engine},
        "communication_settings": {"clients": opts.clients, "rounds": opts.rounds, "cost_per_mb": opts.cost_per_mb,
                                   "formula": "file MB x 2 (down+up) x clients x rounds x cost per MB"},
        "precisions": results,
        "seconds": time.perf_counter() - started,
    }
    if "int8" in results:
        i8 = results["int8"]
        report["verdict"] = verdict(i8["accuracy_drop_percent"], i8["compression_ratio"],
                                    i8["communication"]["savings_percent"])
    write_json(opts.out_dir / RESULT_FILE, report)
    return report


def format_table(report: dict) -> str:
    lines = [f"{'Precision':<13}{'Accuracy':>9}{'Drop':>8}{'Size (MB)':>11}{'Compression':>13}"
             f"{'img/s':>9}{'Cost ($)':>10}{'Saved':>8}  compute"]
    for name, r in report["precisions"].items():
        lines.append(f"{name:<13}{r['accuracy']:>8.2f}%{r['accuracy_drop_percent']:>+8.2f}{r['file_size_mb']:>11.3f}"
                     f"{r['compression_ratio']:>12.2f}x{r['throughput_images_per_s']:>9.0f}"
                     f"{r['communication']['total_cost']:>10.2f}{r['communication']['savings_percent']:>7.1f}%"
                     f"  {r['compute_dtype']}")
    if "verdict" in report:
        lines.append(f"INT8 verdict: {report['verdict']}")
    return "\n".join(lines)

