"""The EuroSAT CNN.

Attribute names are fixed: checkpoints written by the original berlin25-eurosat code
(`torch.save(net.state_dict())`) must load into this class unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from eurosat.data.loading import NUM_CLASSES

NUM_PARAMETERS = 434_602


class Net(nn.Module):
    """conv(3→32,k5)-bn-relu-pool, conv(32→64,k5)-bn-relu-pool, conv(64→96,k3)-bn-relu-pool, fc 2400→128→128→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 96, 3)
        self.bn3 = nn.BatchNorm2d(96)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(96 * 5 * 5, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU after max-pooling: the same values and gradients as pool(relu(.)) (ReLU is
        # monotone, so it commutes with max) on a quarter of the elements, a few per cent faster training
        # steps on a CPU (docs/benchmarks.md).
        x = F.relu(self.pool(self.bn1(self.conv1(x))))
        x = F.relu(self.pool(self.bn2(self.conv2(x))))
        x = F.relu(self.pool(self.bn3(self.conv3(x))))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class FoldedNet(nn.Module):
    """A float32 `Net` as inference runs it, 1.4-1.6x faster on a CPU with the same predictions
    (`bench/eval_layout.py`, measured against the original ReLU-before-pooling order): each batch
    norm folded into its convolution (float32 arithmetic throughout, logits equal to ~1e-5), ReLU
    after max-pooling as in `Net.forward`. Evaluation only:
    the folded convolutions are copies, so build it anew from the `Net` for each evaluation, as
    `training.evaluate` does."""

    def __init__(self, net: Net) -> None:
        super().__init__()
        self.convs = nn.ModuleList(fuse_conv_bn_eval(conv, bn) for conv, bn in
                                   ((net.conv1, net.bn1), (net.conv2, net.bn2), (net.conv3, net.bn3)))
        self.pool = net.pool
        self.fcs = nn.ModuleList((net.fc1, net.fc2, net.fc3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(self.pool(conv(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fcs[0](x))
        x = F.relu(self.fcs[1](x))
        return self.fcs[2](x)


def for_inference(model: nn.Module) -> nn.Module:
    """The form of `model` that evaluation runs: a float32 `Net` in eval mode is folded
    (`FoldedNet`); every other model (quantized, QAT, float16 on a GPU) runs as it is, since
    folding would change what its arithmetic computes."""
    if type(model) is Net and not model.training and all(p.dtype == torch.float32 for p in model.parameters()):
        return FoldedNet(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
