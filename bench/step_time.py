"""CPU (or GPU) time per training step of every precision preset against FP32, side by side.

    .venv/bin/python bench/step_time.py [--data ../shared/data/eurosat] [--steps 20] [--passes 3]
        [--presets fp32,fp16,int8,bits-16,bits-8,bits-4,bits-2,bits-1,w4a8,w6a6]

Each preset is the model and compute plan a client really trains with (`task.make_model`,
`PrecisionRecipe.compute_plan`) running the real local loop (`training.train`) over the same
`--steps` batches of 32 real train images. The presets are timed in turn, `--passes` times,
and each pass's time is divided by FP32's in that pass, so a slow moment of this shared machine
hits every preset alike; the median over passes is printed. What it shows: the cost of fake
quantization per step, and (on a CPU without bfloat16 instructions) that `fp16`'s bfloat16
autocast is emulated and slow.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eurosat.fl import task  # noqa: E402
from eurosat.fl.config import load_run_config  # noqa: E402
from eurosat.data.loading import load_split, resolve_source  # noqa: E402
from eurosat.train.loop import pick_device, train  # noqa: E402
from eurosat.common.cli import fail  # noqa: E402

DEFAULT = "fp32,fp16,int8,bits-16,bits-8,bits-4,bits-2,bits-1,w4a8,w6a6"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (batches of 32) per preset and pass [20]")
    parser.add_argument("--passes", type=int, default=3, help="rounds over all presets [3]")
    parser.add_argument("--presets", default=DEFAULT, help=f"configs/<name>.toml, comma-separated [{DEFAULT}]")
    args = parser.parse_args()
    names = args.presets.split(",")
    if names[0] != "fp32":
        names.insert(0, "fp32")
    missing = [n for n in names if not (ROOT / "configs" / f"{n}.toml").exists()]
    if missing:
        return fail(f"no preset {', '.join(missing)} in configs/")
    data = load_split(resolve_source(str(args.data.resolve())), "train", sample=32 * args.steps, seed=0)
    device = pick_device()
    cfgs = {n: load_run_config([str(ROOT / "configs" / f"{n}.toml")]) for n in names}
    print(f"{len(data)} real train images, batch 32, {args.steps} steps x {args.passes} passes, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}", flush=True)
    ratios: dict[str, list[float]] = {n: [] for n in names}
    ms: dict[str, list[float]] = {n: [] for n in names}
    dtype: dict[str, str] = {}
    for p in range(args.passes):
        seconds = {}
        for name in names:
            cfg = cfgs[name]
            plan = cfg.recipe.compute_plan(device)
            model = task.make_model(cfg)
            local = replace(cfg.local_training(), epochs=1, batch_size=32)
            train(model, data.take(64), local, plan)  # warm-up: first-call costs, observers
            seconds[name] = train(model, data, local, plan)["train_seconds"]
            dtype[name] = plan.compute_dtype
            ms[name].append(1000 * seconds[name] / args.steps)
        for name in names:
            ratios[name].append(seconds[name] / seconds["fp32"])
        print(f"pass {p + 1}/{args.passes}: " + ", ".join(f"{n} {seconds[n] / seconds['fp32']:.2f}x" for n in names),
              flush=True)
    print(f"\n{'preset':<10}{'W/A bits':>10}{'compute':>10}{'ms/step':>10}{'vs fp32':>10}")
    for name in names:
        cfg = cfgs[name]
        bits = "/".join(map(str, cfg.recipe.bits))
        print(f"{name:<10}{bits:>10}{dtype[name]:>10}{statistics.median(ms[name]):>10.1f}"
              f"{statistics.median(ratios[name]):>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
