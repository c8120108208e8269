"""What a client and the server do with the model: the glue between the Flower apps and the
package (model, data, training loop, precision, transport). Keeps both apps a few lines long.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eurosat.config import RunConfig
from eurosat.data import load_client_data, load_split, resolve_source
from eurosat.compression import compression_report
from eurosat.model import Net
from eurosat.ptq import Fp16Config, Int8StaticConfig, quantize_, save_quantized
from eurosat.packed_model import save_packed
from eurosat.qat import QATConfig, fp32_state, prepare_qat
from eurosat.protocol import EvalReport, Instruction, TrainReport
from eurosat.files import save_torch, write_json
from eurosat.training import ComputePlan, evaluate, pick_device, train
from eurosat.transport import State, subtract, to_numpy


def qat_config(cfg: RunConfig) -> QATConfig | None:
    """`precision=int8` is W8A8 QAT; explicit bit-widths below 32 are QAT at those widths."""
    if cfg.precision == "int8":
        return QATConfig(8, 8)
    if cfg.weight_bits < 32:
        return QATConfig(cfg.weight_bits, cfg.activation_bits)
    return None


def make_model(cfg: RunConfig) -> nn.Module:
    """The network that is really trained: plain `Net`, or `Net` with fake-quantized layers."""
    qat = qat_config(cfg)
    return prepare_qat(Net(), qat) if qat else Net()


def load_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> nn.Module:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model


def local_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A batch-order seed of its own for each client and round: reproducible, never repeating."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def client_update(
    cfg: RunConfig, received: State, partition_id: int, num_partitions: int,
    instruction: Instruction = Instruction(1),
) -> tuple[State, TrainReport]:
    """Train locally from `received`; return the delta to upload (trained minus received) and the report."""
    source = resolve_source(cfg.data)
    trainset, _ = load_client_data(source, partition_id, num_partitions, cfg.partitioner, cfg.dirichlet_alpha, cfg.seed)
    model = load_state(make_model(cfg), received)
    plan = ComputePlan.for_precision(cfg.precision, pick_device())
    metrics = train(model, trainset, cfg.local_training(), plan,
                    seed=local_seed(cfg.seed, instruction.server_round, partition_id), span=instruction.span)
    report = TrainReport(partition=partition_id, num_examples=len(trainset),
                         compute=f"{plan.compute_dtype}@{plan.device}x{torch.get_num_threads()}", **metrics)
    return subtract(to_numpy(model.state_dict()), received), report


def client_evaluate(cfg: RunConfig, received: State, partition_id: int, num_partitions: int) -> EvalReport:
    source = resolve_source(cfg.data)
    _, testset = load_client_data(source, partition_id, num_partitions, cfg.partitioner, cfg.dirichlet_alpha, cfg.seed)
    result = evaluate(load_state(make_model(cfg), received), testset, device=pick_device())
    return EvalReport(partition_id, len(testset), result["loss"], result["accuracy"])


def server_evaluator(cfg: RunConfig) -> Callable[[State], dict[str, float]]:
    """Evaluate the global model on the whole `test` split (decoded once)."""
    testset = load_split(resolve_source(cfg.data), "test")
    device = pick_device()

    def evaluate_global(state: State) -> dict[str, float]:
        result = evaluate(load_state(make_model(cfg), state), testset, device=device)
        return {"loss": result["loss"], "accuracy": result["accuracy"]}

    return evaluate_global


def final_state_dict(cfg: RunConfig, state: State) -> dict[str, torch.Tensor]:
    """The FP32 `Net` state dict saved as `final_model.pt` (QAT: the latent weights)."""
    return fp32_state(load_state(make_model(cfg), state))


def save_artifacts(cfg: RunConfig, run_dir: Path, state: State) -> dict[str, object]:
    """Files beyond `final_model.pt` that show what the precision really stored; returns summary fields.

    fp32 latent weights always; below 32 weight bits the packed N-bit file and its compression
    report; `precision=int8` also the real INT8 model (same path as the PTQ comparison).
    """
    model = load_state(make_model(cfg), state).eval()
    save_torch(run_dir / "final_model_fp32.pt", fp32_state(model))
    extra: dict[str, object] = {}
    qat = qat_config(cfg)
    if qat is not None:
        packed = save_packed(model, run_dir / f"final_model_{qat.weight_bits}bit.pt")
        report = compression_report(model, packed, run_dir / "final_model_fp32.pt")
        write_json(run_dir / "compression_metrics.json", report)
        extra.update(compression_ratio=report["compression_ratio"], packed_model=packed.name)
    if cfg.precision == "int8":
        source = resolve_source(cfg.data)
        net = load_state(Net(), fp32_state(model))
        calibration = [x for x, _ in load_split(source, "train", sample=1024, seed=cfg.seed).batches(64)]
        int8 = quantize_(net, Int8StaticConfig(), calibration)
        save_quantized(int8, Int8StaticConfig(), run_dir / "model_int8.pt")
        result = evaluate(int8, load_split(source, "test"), device="cpu")
        extra.update(int8_model="model_int8.pt", int8_model_test_accuracy=result["accuracy"])
    if cfg.precision == "fp16":
        save_quantized(quantize_(model, Fp16Config()), Fp16Config(), run_dir / "model_fp16.pt")
        extra.update(fp16_model="model_fp16.pt")
    return extra
