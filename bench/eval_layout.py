"""Evaluation speed of FP32, FP16 and INT8: NCHW vs NHWC (channels_last) vs NHWC with the batch
norms folded, side by side.

    .venv/bin/python bench/eval_layout.py CHECKPOINT [--data ../shared/data/eurosat] [--images 1024] [--passes 3]

The checkpoint's FP32 model, its FP16 file's model and its real INT8 model (torch.ao, calibrated on
1,024 train images) each evaluate the same `--images` real test images in each form, in turn,
`--passes` times; prints images/s per form (median over passes), the ratios, and whether every
form gives the same predictions; then the folded convolutions alone, the ceiling of any float32
evaluation of this `Net` on the machine. `evaluate()` (server evaluation each round,
`compare_quantizations.py`, the robustness sweep) uses NHWC, folded, on this evidence. INT8 has
nothing to fold (its convolutions were fused with their batch norms when it was quantized).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eurosat.report.compare import load_fp32_net  # noqa: E402
from eurosat.data.loading import load_split, resolve_source  # noqa: E402
from eurosat.train.model import FoldedNet  # noqa: E402
from eurosat.quant.registry import Fp16Config, Fp32Config, Int8StaticConfig, evaluation, quantize  # noqa: E402
from eurosat.train.loop import evaluate  # noqa: E402

FORMS = {"NCHW": (torch.contiguous_format, False), "NHWC": (torch.channels_last, False),
         "NHWC folded": (torch.channels_last, True)}
CONV_INPUTS = ((3, 64, 64), (32, 30, 30), (64, 13, 13))  # what each of Net's convolutions sees


@torch.inference_mode()
def convolutions_alone(net: torch.nn.Module, passes: int, batch: int = 256) -> float:
    """Images/s of the three folded NHWC convolutions by themselves (no pooling, ReLU or Linear):
    a ceiling for any float32 evaluation of this Net on this machine."""
    convs = FoldedNet(net.eval()).to(memory_format=torch.channels_last).convs
    inputs = [torch.rand(batch, *shape).contiguous(memory_format=torch.channels_last) for shape in CONV_INPUTS]
    for conv, x in zip(convs, inputs):
        conv(x)  # first-call set-up
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        for conv, x in zip(convs, inputs):
            conv(x)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a trained FP32 final_model.pt")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eurosat"))
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    source = resolve_source(args.data)
    testset = load_split(source, "test", sample=args.images, seed=0)
    calibration = [x for x, _ in load_split(source, "train", sample=1024, seed=0).batches(256)]
    cpu = torch.device("cpu")
    print(f"{len(testset)} real test images, batch 256, {args.passes} passes, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    print(f"{'model':<8}" + "".join(f"{name + ' img/s':>19}" for name in FORMS)
          + f"{'NHWC/NCHW':>11}{'folded/NHWC':>13}  same predictions")
    for config in (Fp32Config(), Fp16Config(), Int8StaticConfig()):
        model = quantize(load_fp32_net(args.checkpoint), config, calibration)
        loaded = evaluation(model, config, cpu)
        rates: dict[str, list[float]] = {name: [] for name in FORMS}
        correct = {}
        for _ in range(args.passes):
            for name, (layout, fold) in FORMS.items():
                result = evaluate(loaded.model, testset, 256, cpu, loaded.input_dtype, memory_format=layout, fold=fold)
                rates[name].append(result["num_examples"] / result["seconds"])
                correct[name] = result["correct"]
        nchw, nhwc, folded = (statistics.median(rates[n]) for n in FORMS)
        same = all(bool((correct[n] == correct["NCHW"]).all()) for n in FORMS)
        print(f"{config.name:<8}{nchw:>19.0f}{nhwc:>19.0f}{folded:>19.0f}{nhwc / nchw:>10.2f}x{folded / nhwc:>12.2f}x"
              f"  {same}", flush=True)
    ceiling = convolutions_alone(load_fp32_net(args.checkpoint), max(args.passes, 5))
    print(f"fp32 convolutions alone (folded, NHWC, batch 256): {ceiling:.0f} img/s, the ceiling of float32 "
          "evaluation here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
