"""Post-training quantization report: FP32 vs FP16 vs INT8 (and the seed's dynamic INT8).

For each precision: quantize, save, reload the file (so what is evaluated is what is on
disk), evaluate on the whole test split, and measure the file, the speed and the cost of
sending it in federated training. Honest labels: `compute_dtype` says what the arithmetic ran
in (FP16 on a CPU is float16 storage computed in float32); a speed ratio is only taken between
precisions that ran on the same device; a cost is `measured` only where it is the bytes a run
really sent (the checkpoint's run folder), and a `what-if` otherwise (see cost.py).

The precisions are the registry's (eurosat/quant/registry.py `CONFIGS`); the one analysis
tied to a name is the INT8 verdict (verdict.py's thresholds, and INT8 against FP16 under
corruption), made where `int8` was compared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from eurosat.report.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from eurosat.report.cost import (MEASURED, WHAT_IF_CLIENTS, WHAT_IF_ROUNDS, Cost, RunTraffic, communication_cost,
                                  read_run_traffic, reference, run_cost, savings)
from eurosat.fl.config import project_defaults
from eurosat.fl.record import METRICS_FILE
from eurosat.data.loading import CLASS_NAMES, TensorData, load_split, resolve_source
from eurosat.quant.registry import CONFIGS, Evaluation, Fp32Config, read, evaluation, is_fully_quantized, load, needs_calibration, quantize, save
from eurosat.train.checkpoints import CheckpointError, load_checkpoint, net_from_state, state_dict_of
from eurosat.data.check import check_source
from eurosat.common.files import write_json
from eurosat.common.paths import check_output_files
from eurosat.report.stats import Interval, paired_accuracy_difference
from eurosat.train.loop import evaluate
from eurosat.report.verdict import NOT_MEANINGFUL, baseline_problems, judge

MB = 1024 * 1024
RESULT_FILE = "quantization_comparison.json"
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")  # what --precisions compares unless told; any of CONFIGS may be named
JUDGED = "int8"  # the precision verdict.py's thresholds were written for
ROBUSTNESS_REFERENCE = "fp16"  # under corruption, JUDGED is held against this one's drop
ROBUSTNESS_MARGIN = 0.5  # points: INT8 may lose at most this much more than FP16 under corruption


@dataclass(frozen=True)
class CompareOptions:
    data: str
    out_dir: Path
    clients: int | None = None  # with `rounds`: a what-if cost; both None: the checkpoint's run, else 10 x 10
    rounds: int | None = None
    cost_per_mb: float | None = None  # None: the run's own cost-per-mb, else the project default
    calibration_samples: int = 1024
    calibration_split: str = "train"
    device: str = "cpu"
    batch_size: int = 256
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    test_data: str | None = None  # another folder to evaluate on (calibration stays on `data`)
    test_split: str = "test"
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0  # corruption noise


def load_fp32_net(path: Path) -> torch.nn.Module:
    """A trained FP32 `Net` from a plain state dict; anything else is a one-line CheckpointError."""
    obj = load_checkpoint(path)
    if isinstance(obj, dict):
        state, config = read(obj, path)  # our own model_fp32.pt carries a header: read it off
        if not isinstance(config, Fp32Config):
            raise CheckpointError(f"{path}: is an already-quantized model file; give the FP32 checkpoint")
        obj = state if "state_dict" not in obj else obj
    return net_from_state(state_dict_of(obj, path), path).eval()


def calibration_batches(source, split: str, n: int, batch_size: int = 64) -> list[torch.Tensor]:
    """The INT8 calibration images (a seeded sample of `split`, never test): one function, so the
    PyTorch INT8 model and its ONNX export (eurosat/deploy) are calibrated on the same images."""
    images = load_split(source, split, sample=n, seed=0)
    return [x for x, _ in images.batches(batch_size)]


def run_data(checkpoint: Path) -> str | None:
    """The `data` of the run whose folder holds `checkpoint` (its metrics.json), if any: the report
    evaluates on what the model was trained against, on an offline node too."""
    try:
        config = json.loads((Path(checkpoint).resolve().parent / METRICS_FILE).read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        return None
    data = config.get("data") if isinstance(config, dict) else None
    return data if isinstance(data, str) and data else None


@dataclass(frozen=True)
class Evaluated:
    """What the report computed, handed to a section a later room adds to it (the ONNX runtimes of
    eurosat/deploy): that room compares against these very predictions, files and images."""

    net: torch.nn.Module  # the FP32 baseline
    precisions: list[str]
    files: dict[str, Path]  # model_<precision>.pt as written and evaluated
    predictions: dict[str, np.ndarray]  # each precision's predicted class, in test-set order
    accuracy: dict[str, float]  # percent
    testset: TensorData
    calibration: dict | None  # where the INT8 calibration images came from (the report's field)
    out_dir: Path


Section = Callable[[Evaluated], dict]  # returns {key: value} merged into the report before it is written


def _score(loaded: Evaluation, testset: TensorData, batch_size: int, progress: str | None = None) -> dict:
    return evaluate(loaded.model, testset, batch_size, loaded.device, loaded.input_dtype, progress=progress)


def _clean_result(loaded: Evaluation, testset: TensorData, batch_size: int, precision: str) -> dict:
    warm = next(testset.batches(batch_size, device=loaded.device))[0].to(loaded.input_dtype)
    with torch.no_grad():
        loaded.model(warm)  # first-call set-up is not inference speed
    result = _score(loaded, testset, batch_size, progress=f"evaluating {precision}")
    confusion = torch.tensor(result["confusion_matrix"])
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
    correct = np.asarray(result["correct"], dtype=bool)
    # this precision's own accuracy with its 95% interval: the bootstrap of stats.py against "none right"
    accuracy_ci = paired_accuracy_difference(correct, np.zeros_like(correct)).as_dict()
    del accuracy_ci["excludes_zero"]
    return {
        "accuracy": 100.0 * result["accuracy"],
        "accuracy_ci95": accuracy_ci,
        "test_loss": result["loss"],
        "per_class_accuracy": dict(zip(CLASS_NAMES, [100.0 * a for a in per_class])),
        "confusion_matrix": result["confusion_matrix"],
        "throughput_images_per_s": result["num_examples"] / result["seconds"],
        "latency_ms_per_batch": 1000.0 * result["seconds"] / result["batches"],
        "batch_size": batch_size,
        "device": str(loaded.device),
        "compute_dtype": loaded.compute,
        "fully_quantized": is_fully_quantized(loaded.model) if loaded.compute.startswith("int8") else None,
        "_correct": result["correct"],
        "_predicted": result["predicted"],
    }


def robustness(models: dict[str, Evaluation], testset: TensorData, clean: dict[str, float], opts: CompareOptions) -> dict:
    """Accuracy of every precision under every corruption and severity. Each corrupted image set is
    made once and evaluated by every precision."""
    results: dict[str, dict] = {name: {} for name in models}
    total = len(opts.corruptions) * len(opts.severities)
    done = 0
    for corruption in opts.corruptions:
        for name in models:
            results[name][corruption] = {}
        for severity in opts.severities:
            images = TensorData(corrupt(testset.images, corruption, severity, opts.seed), testset.labels)
            accuracy = {name: 100.0 * _score(loaded, images, opts.batch_size)["accuracy"] for name, loaded in models.items()}
            for name, acc in accuracy.items():
                results[name][corruption][str(severity)] = {
                    "accuracy": acc, "drop_vs_clean": clean[name] - acc, "drop_vs_fp32": accuracy["fp32"] - acc}
            done += 1
            print(f"  robustness {done}/{total}: {corruption} severity {severity}: "
                  + ", ".join(f"{n} {a:.1f}%" for n, a in accuracy.items()), flush=True)
    summary: dict[str, dict] = {"mean_corruption_accuracy": {}, "mean_drop_vs_clean": {}, "worst": {}}
    for name, by_corruption in results.items():
        cells = [(c, int(s), v) for c, by_sev in by_corruption.items() for s, v in by_sev.items()]
        summary["mean_corruption_accuracy"][name] = sum(v["accuracy"] for *_, v in cells) / len(cells)
        summary["mean_drop_vs_clean"][name] = sum(v["drop_vs_clean"] for *_, v in cells) / len(cells)
        c, s, v = min(cells, key=lambda cell: cell[2]["accuracy"])
        summary["worst"][name] = {"corruption": c, "severity": s, "accuracy": v["accuracy"]}
    per_corruption = {c: sum(results["fp32"][c][str(s)]["accuracy"] for s in opts.severities) / len(opts.severities)
                      for c in opts.corruptions}
    summary["worst_corruption_fp32"] = min(per_corruption, key=per_corruption.get)
    if JUDGED in results and ROBUSTNESS_REFERENCE in results:  # the INT8-specific check, as the verdict
        i8, f16 = summary["mean_drop_vs_clean"][JUDGED], summary["mean_drop_vs_clean"][ROBUSTNESS_REFERENCE]
        holds = i8 <= f16 + ROBUSTNESS_MARGIN
        summary[f"{JUDGED}_within_{ROBUSTNESS_REFERENCE}_plus_margin"] = holds
        summary["verdict"] = (f"INT8 {'holds up' if holds else 'does not hold up'} under corruption: mean drop "
                              f"{i8:+.2f} points vs FP16's {f16:+.2f} (allowed: FP16's + {ROBUSTNESS_MARGIN})")
    return {"corruptions": {c: {"parameter": CORRUPTIONS[c].parameter, "levels": list(CORRUPTIONS[c].levels)}
                            for c in opts.corruptions},
            "severities": list(opts.severities), "seed": opts.seed, "results": results, "summary": summary}


@dataclass(frozen=True)
class CostPlan:
    """Where the communication cost comes from: the checkpoint's run, or a what-if."""

    traffic: RunTraffic | None  # the training run whose folder holds the checkpoint, if any
    use_run: bool  # price the run's own traffic (else clients x rounds)
    clients: int | None  # the what-if's (None with use_run)
    rounds: int | None
    cost_per_mb: float
    cost_per_mb_from: str  # "--cost-per-mb", "run config" or "project default"


def cost_plan(checkpoint: Path, opts: CompareOptions, precisions: list[str] | tuple[str, ...]) -> CostPlan:
    """The run beside the checkpoint (a folder with its `metrics.json`) is priced unless --clients or
    --rounds ask for a what-if; an unusable run record is a one-line ValueError then, never a guess."""
    what_if = opts.clients is not None or opts.rounds is not None
    folder = Path(checkpoint).resolve().parent
    try:
        traffic = read_run_traffic(folder)
    except ValueError:
        if not what_if:
            raise
        traffic = None  # a what-if was asked for: the broken record is not needed
    use_run = traffic is not None and not what_if
    if use_run:
        reference(traffic, precisions)  # its traffic can be re-priced per precision, or a one-line error
    if opts.cost_per_mb is not None:
        price, source = opts.cost_per_mb, "--cost-per-mb"
    elif traffic is not None and traffic.cost_per_mb is not None:
        price, source = traffic.cost_per_mb, "run config"
    else:
        price, source = float(project_defaults()["cost-per-mb"]), "project default"
    clients = None if use_run else opts.clients if opts.clients is not None else WHAT_IF_CLIENTS
    rounds = None if use_run else opts.rounds if opts.rounds is not None else WHAT_IF_ROUNDS
    return CostPlan(traffic, use_run, clients, rounds, price, source)


def _costs(plan: CostPlan, sizes: dict[str, int]) -> tuple[dict[str, Cost], dict | None]:
    """Each precision's cost, and (with a run) the traffic every what-if scales from."""
    if not plan.use_run:
        return {n: communication_cost(b, plan.clients, plan.rounds, plan.cost_per_mb) for n, b in sizes.items()}, None
    ref_bytes, ref_name = reference(plan.traffic, list(sizes))
    costs = {n: run_cost(n, b, plan.traffic, ref_bytes, ref_name, sizes[ref_name], plan.cost_per_mb)
             for n, b in sizes.items()}
    return costs, {"precision": ref_name, "bytes": ref_bytes}


def device_names(devices: set[str]) -> dict[str, str]:
    """What each device string of the report is, for the speed figures: 'NVIDIA H200', or the CPU's
    model and the threads torch computed with."""
    names = {}
    for name in sorted(devices):
        device = torch.device(name)
        if device.type == "cuda":
            names[name] = torch.cuda.get_device_name(device)
        else:
            names[name] = f"{_cpu_model()}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}"
    return names


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def check_run_files(out_dir: Path, precisions: Sequence[str]) -> None:
    """A training run's own exports (a QAT run's `model_int8.pt`, an fp16 run's `model_fp16.pt`, named
    in its metrics.json summary) are never overwritten by the report's files of the same name."""
    try:
        summary = json.loads((Path(out_dir) / "metrics.json").read_text()).get("summary", {})
    except (OSError, ValueError, AttributeError):
        return
    own = {v for v in summary.values() if isinstance(v, str)} if isinstance(summary, dict) else set()
    clash = sorted(f"model_{p}.pt" for p in precisions if f"model_{p}.pt" in own and (Path(out_dir) / f"model_{p}.pt").exists())
    if clash:
        raise ValueError(f"--out-dir {out_dir}: holds the training run's own {', '.join(clash)}, which the report "
                         "would overwrite; pass --out-dir DIR (e.g. the run folder's ptq/)")


def check_earlier_report(out_dir: Path, files: Sequence[str]) -> None:
    """A rerun into a folder that holds an earlier report must not leave that report's files beside a
    JSON that no longer names them: files its quantization_comparison.json names that this report would
    not replace (fewer --precisions, no --export onnx) are refused, never deleted."""
    try:
        earlier = json.loads((Path(out_dir) / RESULT_FILE).read_text())
        rows = [*earlier["precisions"].values(), *(earlier.get("runtimes") or {}).get("precisions", {}).values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # no readable report there: nothing of one is left behind
    named = {row.get("file") for row in rows if isinstance(row, dict)}
    stale = sorted(n for n in named if isinstance(n, str) and n and Path(n).name == n and n not in files
                   and (Path(out_dir) / n).is_file())
    if stale:
        raise ValueError(f"--out-dir {out_dir}: holds an earlier report's {', '.join(stale)}, which this report would "
                         f"not replace and its {RESULT_FILE} would not name; compare those precisions again (with "
                         "--export onnx where it was used), remove the files, or pass another --out-dir")


def input_kept(checkpoint: Path, out_dir: Path, net: torch.nn.Module) -> bool:
    """Whether --out-dir's model_fp32.pt is the checkpoint itself and already holds, byte for byte, what
    the report would write there (the report's own model_fp32.pt, compared again): then it is kept, not
    rewritten. Any other input in the way of an output is refused by `check_inputs`."""
    target = Path(out_dir) / "model_fp32.pt"
    if not (target.is_file() and os.path.samefile(target, checkpoint)):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        fresh = save(quantize(net, CONFIGS["fp32"]), CONFIGS["fp32"], Path(tmp) / target.name)
        return fresh.read_bytes() == target.read_bytes()


def check_inputs(checkpoint: Path, opts: CompareOptions,
                 section_files: Sequence[str] = ()) -> tuple[torch.nn.Module, bool]:
    """Everything that can be wrong with the input and every output file (the sections' `section_files`
    too), before any work: one-line errors, nothing written. Returns the checkpoint's FP32 net (read once)
    and whether the input is kept as the report's model_fp32.pt (`input_kept`)."""
    if not opts.precisions:
        raise ValueError(f"--precisions: empty; name at least one of: {', '.join(CONFIGS)}")
    unknown = [p for p in opts.precisions if p not in CONFIGS]
    if unknown:
        raise ValueError(f"--precisions: unknown {', '.join(unknown)}; allowed: {', '.join(CONFIGS)}")
    repeated = sorted({p for p in opts.precisions if opts.precisions.count(p) > 1})
    if repeated:
        raise ValueError(f"--precisions: {', '.join(repeated)} named twice")
    for flag, most in (("clients", 10**6), ("rounds", 10**6), ("calibration_samples", 10**6), ("batch_size", 65536)):
        value = getattr(opts, flag)
        if value is not None and not 1 <= value <= most:
            raise ValueError(f"--{flag.replace('_', '-')}: must be in [1, {most}], got {value}")
    if opts.cost_per_mb is not None and not (math.isfinite(opts.cost_per_mb) and opts.cost_per_mb >= 0):
        raise ValueError(f"--cost-per-mb: must be a finite number >= 0, got {opts.cost_per_mb}")
    if not 0 <= opts.seed < 2**63:
        raise ValueError(f"--seed: must be in [0, 2^63 - 1], got {opts.seed}")
    try:
        device = torch.device(opts.device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {opts.device}: not a device (cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {opts.device}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {opts.device}: CUDA is not available")
    net = load_fp32_net(checkpoint)
    cost_plan(checkpoint, opts, _precisions(opts))
    files = [f"model_{p}.pt" for p in _precisions(opts)] + [*section_files, RESULT_FILE]
    kept = Path(opts.out_dir).is_dir() and input_kept(checkpoint, opts.out_dir, net)
    check_output_files(opts.out_dir, [f for f in files if not (kept and f == "model_fp32.pt")], "--out-dir",
                       inputs=[checkpoint])
    check_run_files(opts.out_dir, _precisions(opts))
    check_earlier_report(opts.out_dir, files)
    check_source(resolve_source(opts.data, splits=(opts.calibration_split,)))
    check_source(resolve_source(opts.test_data or opts.data, splits=(opts.test_split,)))
    return net, kept


def _precisions(opts: CompareOptions) -> list[str]:
    return ["fp32"] + [p for p in opts.precisions if p != "fp32"]  # fp32 is the baseline


def compare(checkpoint: Path, opts: CompareOptions, sections: Sequence[Section] = (),
            section_files: Sequence[str] = ()) -> dict:
    """Run the whole comparison; write model files and the JSON into `opts.out_dir`. `sections`:
    later rooms' additions (e.g. `runtimes`), computed from what was evaluated, before the JSON is written;
    `section_files`: the files they write into `opts.out_dir`, checked with the report's own first."""
    net, kept = check_inputs(checkpoint, opts, section_files)  # bad input fails here, before anything is written
    precisions = _precisions(opts)
    plan = cost_plan(checkpoint, opts, precisions)
    source = resolve_source(opts.data, splits=(opts.calibration_split,))
    test_source = resolve_source(opts.test_data or opts.data, splits=(opts.test_split,))
    device = torch.device(opts.device)
    started = time.perf_counter()
    testset = load_split(test_source, opts.test_split)
    calibration = (calibration_batches(source, opts.calibration_split, opts.calibration_samples, 64)
                   if any(needs_calibration(CONFIGS[p]) for p in precisions) else None)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    models: dict[str, Evaluation] = {}
    predictions: dict[str, np.ndarray] = {}
    for name in precisions:
        config = CONFIGS[name]
        path = opts.out_dir / f"model_{name}.pt"
        if not (kept and name == "fp32"):  # the input itself is never rewritten
            save(quantize(net, config, calibration), config, path)
        size = os.path.getsize(path)
        model, stored = load(path)  # what is evaluated is what is on disk
        assert stored == config, (stored, config)
        models[name] = evaluation(model, stored, device)
        results[name] = {"file": path.name, "file_size_bytes": size, "file_size_mb": size / MB,
                         **_clean_result(models[name], testset, opts.batch_size, name)}
        predictions[name] = results[name].pop("_predicted")
        print(f"  {name}: {results[name]['accuracy']:.2f}% accuracy, {size / MB:.3f} MB", flush=True)
    base = results["fp32"]
    costs, reference_traffic = _costs(plan, {n: r["file_size_bytes"] for n, r in results.items()})
    for name, r in results.items():
        r["accuracy_drop_percent"] = base["accuracy"] - r["accuracy"]  # percentage points, as in the seed
        # FP32's accuracy minus this one's, image by image: the drop and its 95% interval
        r["accuracy_drop_ci95"] = paired_accuracy_difference(base["_correct"], r["_correct"]).as_dict()
        r["compression_ratio"] = base["file_size_bytes"] / r["file_size_bytes"]
        r["size_reduction_percent"] = 100.0 * (1 - r["file_size_bytes"] / base["file_size_bytes"])
        # a speed ratio only between runs on the same device (INT8 kernels run on the CPU)
        r["throughput_ratio_to_fp32"] = (r["throughput_images_per_s"] / base["throughput_images_per_s"]
                                         if r["device"] == base["device"] else None)
        r["communication"] = {**costs[name].as_dict(), **savings(costs[name], costs["fp32"])}
    for r in results.values():
        del r["_correct"]
    report = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "data": source.name,
        "test_data": {"source": test_source.name, "split": opts.test_split},
        "test_samples": len(testset),
        "calibration": {"source": source.name, "split": opts.calibration_split, "samples": sum(len(b) for b in calibration),
                        "samples_asked": opts.calibration_samples}
        if calibration else None,
        "device": str(device),
        "device_names": device_names({r["device"] for r in results.values()}),
        "timestamp": datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "quantized_engine": torch.backends.quantized.engine},
        "communication_settings": {
            "source": "run" if plan.use_run else "what-if",
            "clients": plan.clients, "rounds": plan.rounds,
            "cost_per_mb": plan.cost_per_mb, "cost_per_mb_from": plan.cost_per_mb_from,
            "formula": (f"measured: the bytes the run sent (its metrics.json), for {plan.traffic.transport}, the "
                        f"transport it used; what-if for the others: the run's traffic in "
                        f"{reference_traffic['precision']} x this file's bytes / the {reference_traffic['precision']} "
                        "file's; MB x cost per MB") if plan.use_run else
                       "what-if: file MB x 2 (down+up) x clients x rounds x cost per MB",
            "run": plan.traffic.as_dict() if plan.traffic else None,
            "reference": reference_traffic,
        },
        "precisions": results,
    }
    if JUDGED in results:
        judged = results[JUDGED]
        drop = Interval(**{k: judged["accuracy_drop_ci95"][k] for k in ("estimate", "low", "high", "n")})
        report["verdict"], report["verdict_reasons"] = judge(drop, judged["compression_ratio"],
                                                             judged["communication"]["savings_percent"],
                                                             base["confusion_matrix"])
    if opts.corruptions:
        report["robustness"] = robustness(models, testset, {n: r["accuracy"] for n, r in results.items()}, opts)
        problems = baseline_problems(base["confusion_matrix"])
        if problems and "verdict" in report["robustness"]["summary"]:
            report["robustness"]["summary"]["verdict"] = f"{NOT_MEANINGFUL}: baseline not trained ({'; '.join(problems)})"
    if sections:
        evaluated = Evaluated(net, precisions, {n: opts.out_dir / r["file"] for n, r in results.items()}, predictions,
                              {n: r["accuracy"] for n, r in results.items()}, testset, report["calibration"], opts.out_dir)
        for section in sections:
            report.update(section(evaluated))
    report["seconds"] = time.perf_counter() - started
    write_json(opts.out_dir / RESULT_FILE, report)
    return report


def format_table(report: dict) -> str:
    lines = [f"{'Precision':<13}{'Accuracy':>9}{'Drop [95% interval]':>24}{'Size (MB)':>11}{'Compression':>13}"
             f"{'img/s':>9}{'x fp32':>8}{'Cost ($)':>10}{'Saved':>8}  compute"]
    for name, r in report["precisions"].items():
        ci = r["accuracy_drop_ci95"]
        drop = f"{ci['estimate']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}]"
        ratio = r.get("throughput_ratio_to_fp32")
        speed = f"{ratio:.2f}x" if ratio is not None else "-"
        measured = "*" if r["communication"].get("source") == MEASURED else " "
        lines.append(f"{name:<13}{r['accuracy']:>8.2f}%{drop:>24}{r['file_size_mb']:>11.3f}"
                     f"{r['compression_ratio']:>12.2f}x{r['throughput_images_per_s']:>9.0f}{speed:>8}"
                     f"{r['communication']['total_cost']:>9.2f}{measured}{r['communication']['savings_percent']:>7.1f}%"
                     f"  {r['compute_dtype']} on {r['device']}")
    lines.append(f"(drop = FP32 accuracy minus this precision's, in points, on the same {report['test_samples']} "
                 "images; paired bootstrap 95% interval; x fp32 = speed against FP32 on the same device, - where "
                 "they ran on different devices)")
    settings = report.get("communication_settings", {})
    labels: dict[str, list[str]] = {}
    for name, r in report["precisions"].items():
        labels.setdefault(r["communication"].get("label", ""), []).append(name)
    price = f"${settings.get('cost_per_mb'):g}/MB ({settings.get('cost_per_mb_from', '')})"
    for label, names in labels.items():
        star = "* " if any(report["precisions"][n]["communication"].get("source") == MEASURED for n in names) else ""
        lines.append(f"cost {star}{', '.join(names)}: {label}, at {price}")
    if "verdict" in report:
        reasons = report.get("verdict_reasons") or []
        lines.append(f"INT8 verdict: {report['verdict']}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    if "robustness" in report:
        summary = report["robustness"]["summary"]
        lines.append("Under corruption (mean over corruptions and severities): " + ", ".join(
            f"{n} {a:.2f}% (drop {summary['mean_drop_vs_clean'][n]:+.2f})"
            for n, a in summary["mean_corruption_accuracy"].items()))
        lines.append(f"Worst corruption for FP32: {summary['worst_corruption_fp32']}")
        if "verdict" in summary:
            lines.append(summary["verdict"])
    return "\n".join(lines)
