"""Client-loop throughput on one device, every setting side by side in one run (issue: GPU nodes).

    .venv/bin/python bench/gpu_step.py [--data ../shared/data/eurosat] [--images 4096] [--passes 3]

The real local loop (`eurosat.train.loop.train`, the default recipe) over the same real train
images, resident on the device as uint8: fp32, mixed precision (`precision=fp16`: float16 +
GradScaler on CUDA, bfloat16 on a CPU) and int8 QAT, at batch 32 and 256, and a plain PyTorch
loop (fp32, batch 32, no per-step sync) as the yardstick. Each setting runs `--passes` times in
turn; the median images/s and its ratio to fp32 at batch 32 are printed. Runs on a CPU too
(smaller `--images`), but the figures it is for are a GPU's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eurosat.fl.config import load_run_config  # noqa: E402
from eurosat.data.loading import load_split, resolve_source  # noqa: E402
from eurosat.train.model import Net  # noqa: E402
from eurosat.train.loop import pick_device, train  # noqa: E402

SETTINGS = [("fp32", 32), ("fp16", 32), ("int8", 32), ("fp32", 256), ("fp16", 256)]


def plain_loop(data, device: torch.device, batch_size: int) -> float:
    """Images/s of a minimal loop: same model and data, no bookkeeping at all."""
    model = Net().to(device, memory_format=torch.channels_last).train()
    kernels = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.Adam(model.parameters(), 1e-3, **kernels)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for x, y in data.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), device=device,
                             memory_format=torch.channels_last):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eurosat"))
    parser.add_argument("--images", type=int, default=4096, help="train images per pass [4096]")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    device = pick_device()
    data = load_split(resolve_source(args.data), "train", sample=args.images, seed=0).to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{len(data)} real train images on {device} ({name}), torch {torch.__version__}", flush=True)
    rates: dict[str, list[float]] = {}
    for p in range(args.passes):
        for precision, batch in SETTINGS:
            cfg = load_run_config([f"precision={precision!r}".replace("'", '"')])
            local = replace(cfg.local_training(), epochs=1, batch_size=batch)
            plan = cfg.recipe.compute_plan(device)
            model = cfg.recipe.make_model()
            train(model, data.take(2 * batch), local, plan)  # warm-up: kernels, observers, scaler
            stats = train(model, data, local, plan)
            rates.setdefault(f"{precision} b{batch} ({plan.compute_dtype})", []).append(
                stats["train_images"] / stats["train_seconds"])
        rates.setdefault("plain loop fp32 b32", []).append(plain_loop(data, device, 32))
        print(f"pass {p + 1}/{args.passes} done", flush=True)
    base = statistics.median(rates[next(iter(rates))])
    print(f"\n{'setting':<36}{'images/s':>12}{'vs fp32 b32':>14}")
    for key, values in rates.items():
        rate = statistics.median(values)
        print(f"{key:<36}{rate:>12,.0f}{rate / base:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
