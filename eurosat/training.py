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
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from eurosat.data import TensorData
from eurosat.model import NUM_CLASSES

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

    @classmethod
    def for_precision(cls, precision: str, device: torch.device) -> "ComputePlan":
        if precision != "fp16":
            return cls(device)
        if device.type != "cuda" and not cpu_has_bf16():
            log.warning("precision=fp16 on a CPU runs bfloat16 autocast; this CPU has no bf16 instructions "
                        "(avx512_bf16/amx_bf16), so it is emulated and much slower than fp32 (see README)")
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


def train(
    model: nn.Module, data: TensorData, epochs: int, lr: float, batch_size: int,
    plan: ComputePlan, seed: int = 0,
) -> dict[str, float]:
    """Adam over `epochs` local epochs; returns the mean loss/accuracy over all seen samples."""
    model.to(plan.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    scaler = plan.scaler()
    generator = torch.Generator().manual_seed(seed)
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    start = time.perf_counter()
    for _ in range(epochs):
        for images, labels in data.batches(batch_size, shuffle=True, generator=generator, device=plan.device):
            optimizer.zero_grad(set_to_none=True)
            with plan.autocast():
                logits = model(images)
                loss = criterion(logits, labels)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            steps += 1
    seconds = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "train_seconds": seconds,
        "train_images": seen,
        "train_steps": steps,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, data: TensorData, batch_size: int = 256, device: torch.device | str = "cpu",
    input_dtype: torch.dtype = torch.float32, plan: ComputePlan | None = None, progress: str | None = None,
) -> dict[str, object]:
    """Loss, accuracy, confusion matrix (rows = true class) and timing over all of `data`.

    `progress` names a progress bar on stderr; `seconds` covers the forward passes only.
    """
    model.to(device).eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    total_loss = 0.0
    context = plan.autocast() if plan else contextlib.nullcontext()
    batches = data.batches(batch_size, device=device)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=progress, total=-(-len(data) // batch_size), unit="batch", leave=False)
    seconds, count = 0.0, 0
    for images, labels in batches:
        images = images.to(input_dtype)
        start = time.perf_counter()
        with context:
            logits = model(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        count += 1
        total_loss += criterion(logits.float(), labels).item()
        confusion += torch.bincount(
            labels.cpu() * NUM_CLASSES + logits.argmax(1).cpu(), minlength=NUM_CLASSES**2
        ).reshape(NUM_CLASSES, NUM_CLASSES)
    n = int(confusion.sum())
    return {
        "loss": total_loss / max(n, 1),
        "accuracy": float(confusion.diag().sum()) / max(n, 1),
        "num_examples": n,
        "confusion_matrix": confusion.tolist(),
        "seconds": seconds,
        "batches": count,
    }
