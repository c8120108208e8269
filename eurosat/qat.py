"""Quantization-aware training: fake-quantized Conv2d/Linear with a straight-through estimator,
and the packed low-bit files that store what was really learned.

    model = prepare_qat(Net(), QATConfig(weight_bits=4, activation_bits=8))

- Weights: 16 bits = float16 rounding; 2-8 bits = symmetric per-output-channel integers
  (scale = max|w| / (2^(b-1) - 1)); 1 bit = sign x per-channel mean |w|.
- Activations (the input of every conv/linear): per-tensor affine grid over a running
  min/max (EMA, updated in training, frozen in eval); 16 bits = float16 rounding.
- BatchNorm stays FP32. Layers keep the names `weight`/`bias`, so the state dict is `Net`'s
  plus one `act_range` buffer per layer, which FedAvg averages like any other buffer.

`save_packed` writes the weights in N bits (sub-byte codes packed, see packing.py) plus
per-channel scales; `load_packed` rebuilds a model whose outputs match the fake-quantized one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eurosat.model import Net
from eurosat.packing import pack_bits, packed_nbytes, qmax, unpack_bits
from eurosat.results import load_checkpoint, save_torch

EMA = 0.05  # weight of the newest batch in the running activation range


@dataclass(frozen=True)
class QATConfig:
    weight_bits: int = 8
    activation_bits: int = 8


def weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and per-output-channel scales, the one definition used for training and storage.

    2-8 bits: symmetric codes in [-qmax, qmax], scale = max|w| / qmax. 1 bit: 1 for w >= 0 else 0,
    scale = mean |w|.
    """
    flat = w.detach().abs().flatten(1)
    if bits == 1:
        return (w >= 0).to(torch.int8), flat.mean(1).clamp(min=1e-12)
    top = qmax(bits)
    scale = (flat.amax(1) / top).clamp(min=1e-12)
    codes = torch.clamp(torch.round(w.detach() / _per_channel(scale, w)), -top, top)
    return codes.to(torch.int8), scale


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    s = _per_channel(scale, codes)
    if bits == 1:
        return torch.where(codes > 0, s, -s)
    return codes.float() * s


def _per_channel(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scale.view(-1, *[1] * (like.dim() - 1))


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (identity backward)."""
    if bits >= 32:
        return w
    q = w.half().float() if bits == 16 else dequantize_codes(*weight_codes(w, bits), bits)
    return _ste(w, q)


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward exactly `q` (x - x.detach() is exactly zero), backward the identity to `x`.

    The common `x + (q - x).detach()` is off by an ulp, so stored codes would not match.
    """
    return q.detach() + (x - x.detach())


def fake_quant_activation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor affine grid over [lo, hi]; gradients pass inside the range, stop outside."""
    if bits >= 32:
        return x
    if bits == 16:
        return _ste(x, x.half().float())
    levels = 2**bits - 1
    scale = torch.clamp((hi - lo) / levels, min=1e-8)
    zero = torch.round(-lo / scale)
    q = (torch.clamp(torch.round(x / scale) + zero, 0, levels) - zero) * scale
    inside = (x >= lo) & (x <= hi)
    return torch.where(inside, _ste(x, q), q.detach())


class _FakeQuant:
    """Mixin for Conv2d/Linear: fake-quantize the input and the weight, then run the float op."""

    weight_bits: int
    activation_bits: int

    def _init_quant(self, config: QATConfig) -> None:
        self.weight_bits, self.activation_bits = config.weight_bits, config.activation_bits
        # [min, max] of this layer's input; min > max means "not observed yet"
        self.register_buffer("act_range", torch.tensor([1.0, -1.0]))

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_bits >= 32:
            return x
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min(), x.detach().max()
                if self.act_range[0] > self.act_range[1]:
                    self.act_range.copy_(torch.stack([lo, hi]))
                else:
                    self.act_range.mul_(1 - EMA).add_(EMA * torch.stack([lo, hi]))
        lo, hi = self.act_range[0], self.act_range[1]
        if lo > hi:  # never observed (evaluated before any training): no activation rounding
            return x
        return fake_quant_activation(x, lo, hi, self.activation_bits)

    frozen = False  # set by load_packed: the weights already are the stored N-bit values

    def quantized_weight(self) -> torch.Tensor:
        return self.weight if self.frozen else fake_quant_weight(self.weight, self.weight_bits)


class QATConv2d(_FakeQuant, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), self.quantized_weight(), self.bias)


class QATLinear(_FakeQuant, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quant_input(x), self.quantized_weight(), self.bias)


def _swap(layer: nn.Module, config: QATConfig) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        new = QATConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, layer.groups, layer.bias is not None)
    else:
        new = QATLinear(layer.in_features, layer.out_features, layer.bias is not None)
    new._init_quant(config)
    new.load_state_dict(layer.state_dict(), strict=False)
    return new


def prepare_qat(model: nn.Module, config: QATConfig) -> nn.Module:
    """Swap every Conv2d/Linear of `model` for its fake-quantized twin (in place)."""
    for name, child in list(model.named_children()):
        if type(child) in (nn.Conv2d, nn.Linear):
            setattr(model, name, _swap(child, config))
    return model


def qat_layers(model: nn.Module) -> dict[str, _FakeQuant]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _FakeQuant)}


def fp32_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The latent full-precision weights as a plain `Net` state dict (no activation ranges)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("act_range")}


# ---------------------------------------------------------------- packed storage

def packed_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights in N bits + per-channel scales; everything else (biases, BatchNorm) in FP32."""
    layers = qat_layers(model)
    bits = next(iter(layers.values())).weight_bits
    abits = next(iter(layers.values())).activation_bits
    state: dict[str, torch.Tensor] = {"__bits__": torch.tensor([bits, abits], dtype=torch.int16)}
    for key, value in fp32_state(model).items():
        layer = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and layer in layers:
            if bits == 16:
                state[key + ".fp16"] = value.half()
            else:
                codes, scale = weight_codes(value.float(), bits)
                unsigned = codes.numpy().astype(np.int16) + (0 if bits == 1 else qmax(bits))
                state[key + ".packed"] = torch.from_numpy(pack_bits(unsigned.astype(np.uint8), bits))
                state[key + ".scale"] = scale.float()
                state[key + ".shape"] = torch.tensor(value.shape, dtype=torch.int16)
        else:
            state[key] = value
    for layer, module in layers.items():
        if abits < 32:
            state[f"{layer}.act_range"] = module.act_range.detach().clone()
    return state


def save_packed(model: nn.Module, path: Path) -> Path:
    return save_torch(path, packed_state(model))


def load_packed(path: str | Path) -> nn.Module:
    """Unpack a `final_model_{N}bit.pt` into a fake-quantized `Net` (eval mode)."""
    state = dict(load_checkpoint(path))
    bits, abits = (int(b) for b in state.pop("__bits__"))
    model = prepare_qat(Net(), QATConfig(bits, abits))
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".packed"):
            name = key.removesuffix(".packed")
            shape = tuple(int(d) for d in state[name + ".shape"])
            unsigned = unpack_bits(value.numpy(), bits, shape).astype(np.int16)
            codes = torch.from_numpy(unsigned - (0 if bits == 1 else qmax(bits))).to(torch.int8)
            plain[name] = dequantize_codes(codes, state[name + ".scale"], bits)
        elif key.endswith(".fp16"):
            plain[key.removesuffix(".fp16")] = value.float()
        elif not key.endswith((".scale", ".shape")):
            plain[key] = value
    model.load_state_dict(plain, strict=False)
    for layer in qat_layers(model).values():
        layer.frozen = True
    missing = set(Net().state_dict()) - set(plain)
    if missing:
        raise ValueError(f"{path}: packed model lacks {sorted(missing)[:3]}")
    return model.eval()


def expected_packed_bytes(model: nn.Module) -> int:
    """Bytes the packed weight codes must take, to the byte (rows padded to whole bytes)."""
    layers = qat_layers(model)
    bits = next(iter(layers.values())).weight_bits
    return sum(packed_nbytes(tuple(m.weight.shape), bits) for m in layers.values())
