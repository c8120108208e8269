"""Quantization-aware training: fake-quantized Conv2d/Linear with a straight-through estimator,
and the N-bit weight codes that the packed files (packed_model.py) store.

    model = prepare_qat(Net(), QATConfig(weight_bits=4, activation_bits=8))

- Weights: 16 bits = float16 rounding; 2-8 bits = symmetric per-output-channel integers
  (scale = max|w| / (2^(b-1) - 1)); 1 bit = sign x per-channel mean |w|.
- Activations (the input of every conv/linear): per-tensor affine grid over a running
  min/max (EMA, updated in training, frozen in eval); 16 bits = float16 rounding.
- BatchNorm stays FP32. Layers keep the names `weight`/`bias`, so the state dict is `Net`'s
  plus one `act_range` buffer per layer, which FedAvg averages like any other buffer.

`packed_model.save_packed` writes the weights in N bits plus per-channel scales;
`packed_model.load_packed` rebuilds a model whose outputs match the fake-quantized one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eurosat.quant.packing import channel_codes

EMA = 0.05  # weight of the newest batch in the running activation range


@dataclass(frozen=True)
class QATConfig:
    weight_bits: int = 8
    activation_bits: int = 8


def weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and per-output-channel scales of a weight, as trained and as stored.

    2-8 bits: `packing.channel_codes`, the codes the wire uses too. 1 bit: 1 for w >= 0 else 0,
    scale = mean |w|.
    """
    if bits == 1:
        return (w >= 0).to(torch.int8), w.detach().abs().flatten(1).mean(1).clamp(min=1e-12)
    return channel_codes(w, bits)


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
