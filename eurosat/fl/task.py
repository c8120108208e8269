"""What a client and the server do with the model: the glue between the Flower apps and the
package (model, data, training loop, precision, transport). Keeps both apps a few lines long.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eurosat.fl.checks import ReplyLimits
from eurosat.fl.config import RunConfig
from eurosat.data.loading import TensorData, load_client_data, load_split, partition_sizes, resolve_source
from eurosat.quant.compression import compression_report
from eurosat.quant.registry import Fp16Config, Int8StaticConfig, PackedConfig, quantize, save
from eurosat.quant.qat import fp32_state
from eurosat.quant.recipe import FP16_MODEL, INT8_MODEL, PACKED
from eurosat.fl.protocol import EvalReport, Instruction, TrainReport
from eurosat.fl.record import save_run_file
from eurosat.fl.scaffold import in_order, trainable_shapes
from eurosat.train.loop import evaluate, pick_device, train
from eurosat.fl.state import State, subtract, to_numpy


def make_model(cfg: RunConfig) -> nn.Module:
    return cfg.recipe.make_model()


def initial_state(cfg: RunConfig) -> State:
    """The model a run starts from, made from `seed` alone (the global RNG is left as it was): a node
    rebuilds it instead of receiving it, so error feedback's replicas start there, not at zeros."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return to_numpy(make_model(cfg).state_dict())


def load_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> nn.Module:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model


def trainable(cfg: RunConfig) -> dict[str, tuple[int, ...]]:
    """The model's trainable parameters by name and shape: the tensors SCAFFOLD keeps controls for."""
    return trainable_shapes(make_model(cfg).named_parameters())


def local_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A batch-order seed of its own for each client and round: reproducible, never repeating."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> tuple[TensorData, TensorData]:
    """This client's (train, local test) data under the run's partitioning."""
    return load_client_data(resolve_source(cfg.data), partition_id, num_partitions, cfg.partitioner,
                            cfg.dirichlet_alpha, cfg.seed, cfg.local_test_fraction)


def reply_limits(cfg: RunConfig) -> ReplyLimits:
    """What the server holds each client's reply to: its partition's true size (read from the same
    partitioner the clients use; no image is decoded) and the run's share and norm limits."""
    sizes = partition_sizes(resolve_source(cfg.data), cfg.partitioner, cfg.num_supernodes, cfg.dirichlet_alpha, cfg.seed)
    return ReplyLimits(sizes, cfg.max_weight_share, cfg.max_update_norm, cfg.check_replies)


_ON_DEVICE: dict[tuple[int, str], TensorData] = {}


def on_device(data: TensorData, device: torch.device) -> TensorData:
    """`data` moved to `device` once per process (uint8: normalisation and augmentation run there)."""
    if device.type == "cpu":
        return data
    key = (id(data), str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = data.to(device)
    return _ON_DEVICE[key]


def client_update(
    cfg: RunConfig, received: State, partition_id: int, num_partitions: int,
    instruction: Instruction = Instruction(1), optimizer_state: dict | None = None,
    on_step: Callable[[float], None] | None = None, correction: State | None = None,
) -> tuple[State, TrainReport]:
    """Train locally from `received` until the round's deadline at most; return the delta to upload
    (trained minus received) and the report. `optimizer_state`: the node's kept optimizer state,
    updated in place (see memory.py). `num_examples` stays the partition's size (FedAvg's weight)
    however many steps the deadline allowed; `train_images` says what was really seen.
    `correction`: SCAFFOLD's `c - c_i` by parameter name (scaffold.py), applied at every step."""
    plan = cfg.recipe.compute_plan(pick_device())
    trainset = on_device(client_data(cfg, partition_id, num_partitions)[0], plan.device)
    model = load_state(make_model(cfg), received)
    if correction is not None:
        correction = [torch.from_numpy(c) for c in in_order(correction, trainable_shapes(model.named_parameters()))]
    metrics = train(model, trainset, cfg.local_training(), plan,
                    seed=local_seed(cfg.seed, instruction.server_round, partition_id), span=instruction.span,
                    optimizer_state=optimizer_state, deadline=instruction.deadline, on_step=on_step,
                    correction=correction)
    report = TrainReport(partition=partition_id, num_examples=len(trainset), finished_at=time.time(),
                         compute=f"{plan.compute_dtype}@{plan.device}x{torch.get_num_threads()}", **metrics)
    return subtract(to_numpy(model.state_dict()), received), report


def client_evaluate(cfg: RunConfig, received: State, partition_id: int, num_partitions: int) -> EvalReport:
    _, testset = client_data(cfg, partition_id, num_partitions)
    result = evaluate(load_state(make_model(cfg), received), testset, device=pick_device())
    return EvalReport(partition_id, len(testset), result["loss"], result["accuracy"])


def server_evaluator(cfg: RunConfig) -> Callable[[State], dict[str, float]]:
    """Evaluate the global model on the whole `test` split (decoded once; on a GPU: kept there,
    evaluated in large batches)."""
    device = pick_device()
    testset = on_device(load_split(resolve_source(cfg.data), "test"), device)
    batch_size = 1024 if device.type == "cuda" else 256

    def evaluate_global(state: State) -> dict[str, float]:
        result = evaluate(load_state(make_model(cfg), state), testset, batch_size, device=device)
        return {"loss": result["loss"], "accuracy": result["accuracy"]}

    return evaluate_global


def final_state_dict(cfg: RunConfig, state: State) -> dict[str, torch.Tensor]:
    """The FP32 `Net` state dict saved as `final_model.pt` (QAT: the latent weights)."""
    return fp32_state(load_state(make_model(cfg), state))


def _export_packed(cfg: RunConfig, run_dir: Path, model: nn.Module, fp32_file: Path) -> dict[str, object]:
    """The packed N-bit file of a QAT run, with its exact sizes."""
    bits, abits = cfg.recipe.bits
    packed = save(model, PackedConfig(bits, abits), run_dir / f"final_model_{bits}bit.pt")
    report = compression_report(model, packed, fp32_file)
    save_run_file(run_dir, "compression_metrics.json", report)
    return {"compression_ratio": report["compression_ratio"], "packed_model": packed.name}


CALIBRATION_IMAGES = 1024


def _calibration(cfg: RunConfig) -> list[torch.Tensor]:
    source = resolve_source(cfg.data)
    return [x for x, _ in load_split(source, "train", sample=CALIBRATION_IMAGES, seed=cfg.seed).batches(64)]


def _export_int8(cfg: RunConfig, run_dir: Path, model: nn.Module, fp32_file: Path) -> dict[str, object]:
    """The real INT8 model (calibrated on 1,024 training images) and its test accuracy."""
    int8 = quantize(model, Int8StaticConfig(), _calibration(cfg))
    save(int8, Int8StaticConfig(), run_dir / "model_int8.pt")
    result = evaluate(int8, load_split(resolve_source(cfg.data), "test"), device="cpu")
    return {"int8_model": "model_int8.pt", "int8_model_test_accuracy": result["accuracy"]}


def export_seconds(cfg: RunConfig) -> float:
    """What the recipe's final exports will take after the last round, timed at the start on the
    initial model so that the time budget can keep it free: the INT8 export's calibration (every
    calibration batch through the observers) and its CPU evaluation of the test split dominate
    (seconds on a CPU, more than a GPU's whole server evaluation). Each is a fixed cost plus one per
    batch or image: timed, after a warm-up, at two sizes and extrapolated. The other exports only
    write a file (0). Loads the export's data (cached)."""
    if INT8_MODEL not in cfg.recipe.exports:
        return 0.0
    calibration, test = _calibration(cfg), load_split(resolve_source(cfg.data), "test")

    def calibrate(batches: int) -> tuple[nn.Module, float]:
        started = time.perf_counter()
        model = quantize(make_model(cfg).eval(), Int8StaticConfig(), calibration[:batches])
        return model, time.perf_counter() - started

    def evaluation(model: nn.Module, images: int) -> float:
        started = time.perf_counter()
        evaluate(model, TensorData(test.images[:images], test.labels[:images]), device="cpu")
        return time.perf_counter() - started

    warm, _ = calibrate(1)
    evaluation(warm, 32)
    small, large = min(1, len(calibration)), min(3, len(calibration))
    (_, t_small), (int8, t_large) = calibrate(small), calibrate(large)
    e_small, e_large = evaluation(int8, 64), evaluation(int8, 256)
    return (extrapolate(small, t_small, large, t_large, len(calibration))
            + extrapolate(min(64, len(test)), e_small, min(256, len(test)), e_large, len(test)))


def extrapolate(n1: int, t1: float, n2: int, t2: float, n: int) -> float:
    """The time for `n` items of a fixed-plus-linear cost timed at `n1` and `n2` items (a slope
    below 0, noise, counts as 0; one size only: that measurement scaled by n / n2)."""
    if n2 <= n1:
        return t2 * n / max(n2, 1)
    slope = max(0.0, (t2 - t1) / (n2 - n1))
    return max(0.0, t1 - slope * n1) + slope * n


def _export_fp16(cfg: RunConfig, run_dir: Path, model: nn.Module, fp32_file: Path) -> dict[str, object]:
    """A float16 copy of the final weights."""
    save(quantize(model, Fp16Config()), Fp16Config(), run_dir / "model_fp16.pt")
    return {"fp16_model": "model_fp16.pt"}


# The exports a precision recipe may ask for after training (`PrecisionRecipe.exports`): one entry each.
EXPORTERS: dict[str, Callable[[RunConfig, Path, nn.Module, Path], dict[str, object]]] = {
    PACKED: _export_packed, INT8_MODEL: _export_int8, FP16_MODEL: _export_fp16}


def save_artifacts(cfg: RunConfig, run_dir: Path, state: State) -> dict[str, object]:
    """Files beyond `final_model.pt` that show what the precision really stored (the recipe's
    exports, through `EXPORTERS`); returns summary fields. The fp32 latent weights always."""
    model = load_state(make_model(cfg), state).eval()
    fp32_file = save_run_file(run_dir, "final_model_fp32.pt", fp32_state(model))
    extra: dict[str, object] = {}
    for name in cfg.recipe.exports:
        extra.update(EXPORTERS[name](cfg, run_dir, model, fp32_file))
    return extra
