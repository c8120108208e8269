"""Training step time of `Net` (ReLU after max-pooling) against the original order (ReLU before),
side by side.

    .venv/bin/python bench/relu_order.py [--data ../shared/data/eurosat] [--steps 20] [--passes 5]

Both orders compute the same values and gradients (`tests/train/test_model.py`); this shows what the
order costs. Each pass runs the real local loop (`training.train`, FP32, NHWC, Adam) over the same
`--steps` batches of 32 real train images with each order in turn, and divides the times, so a slow
moment of a shared machine hits both alike; prints every pass and the median ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eurosat.common.cli import fail  # noqa: E402
from eurosat.fl.config import load_run_config  # noqa: E402
from eurosat.data.loading import load_split, resolve_source  # noqa: E402
from eurosat.train.model import Net  # noqa: E402
from eurosat.train.loop import pick_device, train  # noqa: E402


class ReluFirstNet(Net):
    """The original berlin25-eurosat forward: pool(relu(bn(conv(x))))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.pool(F.relu(bn(conv(x))))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu(self.fc2(x)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (batches of 32) per order and pass [20]")
    parser.add_argument("--passes", type=int, default=5, help="passes over both orders [5]")
    args = parser.parse_args()
    if args.steps < 1 or args.passes < 1:
        return fail("--steps and --passes must be at least 1")
    data = load_split(resolve_source(str(args.data.resolve())), "train", sample=32 * args.steps, seed=0)
    cfg = load_run_config([])
    plan = cfg.recipe.compute_plan(pick_device())
    local = replace(cfg.local_training(), epochs=1, batch_size=32)
    models = {"relu after pool": Net(), "relu before pool": ReluFirstNet()}
    print(f"{len(data)} real train images, batch 32, {args.steps} steps x {args.passes} passes, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for model in models.values():
        train(model, data.take(64), local, plan)  # warm-up: first-call costs
    ratios = []
    for p in range(args.passes):
        seconds = {name: train(model, data, local, plan)["train_seconds"] for name, model in models.items()}
        ratios.append(seconds["relu before pool"] / seconds["relu after pool"])
        print(f"pass {p + 1}/{args.passes}: " + ", ".join(f"{n} {1000 * s / args.steps:.1f} ms/step"
                                                          for n, s in seconds.items())
              + f"; before/after {ratios[-1]:.3f}x", flush=True)
    print(f"\nmedian: ReLU after pooling is {statistics.median(ratios):.3f}x as fast as before it "
          f"(passes {min(ratios):.3f}-{max(ratios):.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
