"""Local training and evaluation loops, device choice, seeding, mixed precision.

`precision="fp16"` means torch.autocast(float16) with a gradient scaler on CUDA. CPU autocast
in float16 is slow or missing for convolutions, so on CPU it uses bfloat16, and `ComputePlan`
records the dtype that really ran: results never claim fp16 where it was not computed.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from eurosat.data.augment import augmenter
from eurosat.data.loading import NUM_CLASSES, TensorData
from eurosat.train.model import for_inference
from eurosat.train.schedule import LrSchedule, Span

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {requested!r} requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


@dataclass(frozen=True)
class ComputePlan:
    """Where and in which dtype the forward/backward pass really runs."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    # NHWC: oneDNN and cuDNN convolutions and max-pooling run faster on it (bench/step_time.py)
    memory_format: torch.memory_format = torch.channels_last

    @classmethod
    def mixed(cls, device: torch.device) -> "ComputePlan":
        """Mixed precision: float16 autocast on CUDA; bfloat16 on a CPU (float16 is slow or missing there)."""
        if device.type != "cuda" and not cpu_has_bf16():
            log.warning("precision=fp16 on a CPU runs bfloat16 autocast; this CPU has no bf16 instructions "
                        "(avx512_bf16/amx_bf16), so it is emulated and much slower than fp32 (see docs/benchmarks.md)")
        return cls(device, torch.float16 if device.type == "cuda" else torch.bfloat16)

    @property
    def compute_dtype(self) -> str:
        return str(self.autocast_dtype or torch.float32).removeprefix("torch.")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """Loss scaling is needed for float16 gradients only (bfloat16 has float32's range)."""
        if self.autocast_dtype == torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None


OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("ce", "balanced")  # `local-loss`: cross-entropy, or balanced softmax (log_prior)


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains in one round, resolved once from the run config (`RunConfig.local_training`)."""

    epochs: int = 1
    batch_size: int = 32
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only (Nesterov)
    augment: str = "none"
    schedule: LrSchedule = LrSchedule()
    keep_optimizer_state: bool = False  # carry the optimizer's moments from round to round (per node)
    proximal_mu: float = 0.0  # FedProx: mu/2 ||w - w_received||^2 added to the loss (0: plain local training)
    balanced_loss: bool = False  # balanced softmax over the partition's class counts (`local-loss`)

    def make_optimizer(self, params, device: torch.device) -> torch.optim.Optimizer:
        """`adam` (L2 weight decay, the original system's), `adamw` (decoupled), `sgd` (Nesterov
        momentum). Fused kernels on CUDA, where they exist for all three."""
        lr = self.schedule.peak
        kernels = {"fused": True} if device.type == "cuda" else {}
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, nesterov=self.momentum > 0,
                                   weight_decay=self.weight_decay, **kernels)
        kind = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        return kind(params, lr=lr, weight_decay=self.weight_decay, **kernels)


def proximal_term(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's mu/2 ||w - w_received||^2 over the trainable parameters (Li et al., 2020; what
    Flower's FedProx asks its clients to add)."""
    return (mu / 2) * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))


def log_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The log of a partition's class frequencies, the shift of balanced softmax (Ren et al., 2020):
    trained on `logits + log_prior`, the model learns scores free of the partition's label skew. A
    class the partition lacks is log 0 = -inf: out of the softmax, so its weights get an exact zero
    gradient (as FedRS restricts the softmax), which Adam leaves alone. Uniform labels give a
    constant shift: plain cross-entropy."""
    counts = torch.bincount(labels.flatten().long().cpu(), minlength=num_classes).double()
    return torch.log(counts / counts.sum()).float()


def train(
    model: nn.Module, data: TensorData, local: LocalTraining, plan: ComputePlan, seed: int = 0,
    span: Span | None = None, optimizer_state: dict[str, dict[str, torch.Tensor]] | None = None,
    deadline: float | None = None, on_step: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.time, correction: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """`local.epochs` epochs over `data`; the learning rate follows `span` of the schedule step by
    step (None: the schedule's peak throughout). Returns the mean loss/accuracy over all seen samples.

    `optimizer_state` (per-parameter tensors, e.g. Adam's moments, keyed by parameter index): loaded
    into the fresh optimizer if it holds any, and replaced by the state after training.
    `deadline` (`clock()` time, wall-clock seconds: the server's round deadline): training stops at
    the last step that fits, judged by the slowest of the last 5 steps as `clock` timed them (one
    clock for both, so a test can drive them together; the first step, a warm-up, always
    runs and is left out once a second is timed),
    and the schedule's span is fitted to the steps that will run; once the deadline cuts them short
    the round is the run's last (the server stops after a cut round), so the span then runs on to
    the schedule's end: the learning rate reaches its floor where training ends. `on_step(seconds)` runs after each step (the slow-client test hook). `train_steps` and
    `train_images` say what really ran, `planned_steps` what the epochs asked for, `lr_sum` the sum
    of the steps' learning rates. `correction` (SCAFFOLD's `c - c_i`, one tensor per parameter in
    `model.parameters()` order): after each optimizer step every parameter also moves by
    `-lr x correction` (eurosat/fl/scaffold.py).
    Loss and accuracy are summed on the device and read once at the end: no host sync per step
    (with a deadline on CUDA, one per step, to time it).
    """
    model.to(plan.device, memory_format=plan.memory_format).train()
    optimizer = local.make_optimizer(model.parameters(), plan.device)
    if optimizer_state:
        optimizer.load_state_dict({"state": {int(k): {n: t.to(plan.device) if t.dim() else t for n, t in v.items()}
                                             for k, v in optimizer_state.items()},
                                   "param_groups": optimizer.state_dict()["param_groups"]})
    criterion = nn.CrossEntropyLoss()
    shift = log_prior(data.labels, NUM_CLASSES).to(plan.device) if local.balanced_loss else None
    # FedProx: the weights as received, which the proximal term keeps the local ones near
    anchor = [p.detach().clone() for p in model.parameters()] if local.proximal_mu > 0 else None
    scaler = plan.scaler()
    params = list(model.parameters())
    if correction is not None:
        correction = [c.to(device=plan.device, dtype=p.dtype) for c, p in zip(correction, params, strict=True)]
    lr_sum = 0.0
    augment = augmenter(local.augment)
    generator = torch.Generator().manual_seed(seed)
    planned = steps = local.epochs * -(-len(data) // local.batch_size)
    total_loss = torch.zeros((), device=plan.device)
    correct = torch.zeros((), dtype=torch.long, device=plan.device)
    seen = step = 0
    recent: deque[float] = deque(maxlen=5)  # the last steps' seconds: what the next one may take
    start = time.perf_counter()
    last = clock()
    out_of_time = False
    for _ in range(local.epochs):
        for images, labels in data.batches(local.batch_size, shuffle=True, generator=generator, device=plan.device,
                                           augment=augment, memory_format=plan.memory_format):
            if deadline is not None and recent:
                fit = int((deadline - clock()) // max(recent))
                if fit < 1:
                    out_of_time = True
                    break
                steps = min(steps, step + fit)  # the span's end moves to the last step that fits
            step += 1
            if span is not None:
                reach = span if steps == planned else Span(span.start, max(span.stop, local.schedule.end))
                for group in optimizer.param_groups:
                    group["lr"] = local.schedule.lr_at(reach.at(step / steps))
            optimizer.zero_grad(set_to_none=True)
            with plan.autocast():
                logits = model(images)
                if shift is not None:
                    logits = logits + shift
                loss = criterion(logits, labels)
            objective = loss if anchor is None else loss + proximal_term(model, anchor, local.proximal_mu)
            if scaler is not None:
                scaler.scale(objective).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                objective.backward()
                optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            lr_sum += lr
            if correction is not None:
                with torch.no_grad():
                    torch._foreach_add_(params, correction, alpha=-lr)
            total_loss += loss.detach().float() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if deadline is not None or on_step is not None:
                if deadline is not None and plan.device.type == "cuda":
                    torch.cuda.synchronize()
                if on_step is not None:
                    on_step(clock() - last)
                now = clock()
                if step == 2:
                    recent.clear()  # the first step's warm-up (allocation, kernel choice) is not the pace
                recent.append(now - last)
                last = now
        if out_of_time:
            break
    if plan.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format)
    if optimizer_state is not None:
        optimizer_state.clear()
        optimizer_state.update({str(k): {n: t.detach().cpu().contiguous() for n, t in v.items()}
                                for k, v in optimizer.state_dict()["state"].items()})
    return {
        "train_loss": total_loss.item() / max(seen, 1),
        "train_accuracy": correct.item() / max(seen, 1),
        "train_seconds": seconds,
        "train_images": seen,
        "train_steps": step,
        "planned_steps": planned,
        "lr_last": optimizer.param_groups[0]["lr"],
        "lr_sum": lr_sum,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, data: TensorData, batch_size: int = 256, device: torch.device | str = "cpu",
    input_dtype: torch.dtype = torch.float32, plan: ComputePlan | None = None, progress: str | None = None,
    memory_format: torch.memory_format = torch.channels_last, fold: bool = True,
) -> dict[str, object]:
    """Loss, accuracy, confusion matrix (rows = true class), per-image correctness and predicted class
    (in data order, for paired comparisons and agreement with another runtime) and timing over all of `data`.

    `progress` names a progress bar on stderr; `seconds` covers the forward passes only. Images go
    in as NHWC (`memory_format`), as in training: oneDNN's and fbgemm's convolutions run faster on
    it, and the model's layout follows. A float32 `Net` runs with its batch norms folded
    (`model.for_inference`; `fold=False` runs it as trained); `bench/eval_layout.py` measures both.
    """
    model = model.to(device).eval()
    model = (for_inference(model) if fold else model).to(memory_format=memory_format)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    confusion: torch.Tensor | None = None  # classes x classes, sized by the model's output
    total_loss = 0.0
    context = plan.autocast() if plan else contextlib.nullcontext()
    batches = data.batches(batch_size, device=device)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=progress, total=-(-len(data) // batch_size), unit="batch", leave=False)
    seconds, count, correct, predictions = 0.0, 0, [], []
    for images, labels in batches:
        images = images.to(input_dtype).contiguous(memory_format=memory_format)
        start = time.perf_counter()
        with context:
            logits = model(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        count += 1
        total_loss += criterion(logits.float(), labels).item()
        predicted = logits.argmax(1).cpu()
        correct.append(predicted == labels.cpu())
        predictions.append(predicted)
        k = logits.shape[1]
        counts = torch.bincount(labels.cpu() * k + predicted, minlength=k * k).reshape(k, k)
        confusion = counts if confusion is None else confusion + counts
    if confusion is None:
        confusion = torch.zeros(0, 0, dtype=torch.long)
    n = int(confusion.sum())
    return {
        "loss": total_loss / max(n, 1),
        "accuracy": float(confusion.diag().sum()) / max(n, 1),
        "num_examples": n,
        "confusion_matrix": confusion.tolist(),
        "correct": torch.cat(correct).numpy() if correct else torch.zeros(0, dtype=torch.bool).numpy(),
        "predicted": torch.cat(predictions).numpy() if predictions else torch.zeros(0, dtype=torch.long).numpy(),
        "seconds": seconds,
        "batches": count,
    }
