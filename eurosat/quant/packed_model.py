"""The packed N-bit model (`final_model_{N}bit.pt`): what a QAT run really stored.

The body of the registry's `packed` method (quantize.py writes the header: format, method,
weight/activation bits): a few flat tensors, in `Net().state_dict()` order, so the file is the
ideal size (parameters x bits / 8 + scales + FP32 rest) plus about 0.7 KB. It is saved in torch's
non-zip format (`_use_new_zipfile_serialization=False`, documented, and read by every
`torch.load`, `weights_only=True` included): the zip container costs ~1.3 KB fixed plus ~0.3 KB
per tensor, 3.4% of a 61 KB 1-bit model; a dict of one tensor per layer cost 3-5% more. Keys:

- `codes`: uint8, every conv/linear weight's codes packed (see packing.py), rows padded to
  whole bytes; at 16 bits instead `fp16`: those weights as float16;
- `scales`: float32, one per output channel of each weight (absent at 16 bits);
- `fp32`: float32, every other float tensor (biases, BatchNorm) and, when activations are
  quantized, each layer's observed activation range;
- `counters`: the integer buffers (`num_batches_tracked`) as a list of ints.

The layout comes from `Net`, so the loader checks that every part is consumed exactly.
Loads with `torch.load(weights_only=True)`; nothing in it is a pickled object.
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from eurosat.train.model import Net
from eurosat.quant.packing import pack_bits, packed_nbytes, qmax, unpack_bits
from eurosat.quant.qat import QATConfig, dequantize_codes, fp32_state, prepare_qat, qat_layers, weight_codes
from eurosat.train.checkpoints import CheckpointError

LEGACY_FORMAT = "eurosat-packed/2"  # the header of files written before the registry


def _offset(bits: int) -> int:
    """Added to signed codes so they pack as unsigned (1-bit codes already are 0/1)."""
    return 0 if bits == 1 else qmax(bits)


def bits_of(model: nn.Module) -> QATConfig:
    """The weight/activation widths of a fake-quantized model."""
    first = next(iter(qat_layers(model).values()))
    return QATConfig(first.weight_bits, first.activation_bits)


def packed_state(model: nn.Module) -> dict[str, object]:
    """Weights in N bits + per-channel scales; everything else in FP32 (see the module doc)."""
    layers = qat_layers(model)
    bits, abits = bits_of(model).weight_bits, bits_of(model).activation_bits
    weights = _weight_keys(layers)
    codes: list[np.ndarray] = []
    scales: list[torch.Tensor] = []
    rest: list[torch.Tensor] = []
    counters: list[int] = []
    for key, value in fp32_state(model).items():
        if key in weights:
            if bits == 16:
                codes.append(value.half().flatten().numpy())
            else:
                q, scale = weight_codes(value.float(), bits)
                unsigned = (q.numpy().astype(np.int16) + _offset(bits)).astype(np.uint8)
                codes.append(pack_bits(unsigned, bits).ravel())
                scales.append(scale.float())
        elif value.is_floating_point():
            rest.append(value.float().flatten())
        else:
            counters.append(int(value))
    if abits < 32:
        rest.extend(layer.act_range.detach().float() for layer in layers.values())
    state: dict[str, object] = {"fp32": torch.cat(rest), "counters": counters}
    if bits == 16:
        state["fp16"] = torch.from_numpy(np.concatenate(codes))
    else:
        state["codes"] = torch.from_numpy(np.concatenate(codes))
        state["scales"] = torch.cat(scales)
    return state


def _weight_keys(layers: dict[str, nn.Module]) -> set[str]:
    """The state-dict keys stored in N bits: each fake-quantized layer's weight."""
    return {f"{name}.weight" for name in layers}


def unpack(state: dict[str, object], config: QATConfig) -> nn.Module:
    """A fake-quantized `Net` (eval mode) whose weights are exactly the stored N-bit values."""
    bits, abits = config.weight_bits, config.activation_bits
    model = prepare_qat(Net(), QATConfig(bits, abits))
    layers = qat_layers(model)
    weights = _weight_keys(layers)
    parts = {k: _Reader(state[k]) for k in ("codes", "scales", "fp32", "fp16") if k in state}
    counters = list(state["counters"])
    plain: dict[str, torch.Tensor] = {}
    for key, like in Net().state_dict().items():
        if key in weights:
            plain[key] = _read_weight(parts, bits, tuple(like.shape))
        elif like.is_floating_point():
            plain[key] = parts["fp32"].take(like.numel()).reshape(like.shape)
        else:
            plain[key] = torch.tensor(counters.pop(0), dtype=like.dtype)
    model.load_state_dict(plain, strict=False)
    for layer in layers.values():
        if abits < 32:
            layer.act_range.copy_(parts["fp32"].take(2))
        layer.frozen = True
    leftover = [k for k, r in parts.items() if not r.done()] + (["counters"] if counters else [])
    if leftover:
        raise CheckpointError(f"packed parts {', '.join(leftover)} do not match the Net layout")
    return model.eval()


def _read_weight(parts: dict[str, "_Reader"], bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    if bits == 16:
        return parts["fp16"].take(int(np.prod(shape))).reshape(shape).float()
    packed = parts["codes"].take(packed_nbytes(shape, bits)).numpy().reshape(shape[0], -1)
    q = unpack_bits(packed, bits, shape).astype(np.int16) - _offset(bits)
    return dequantize_codes(torch.from_numpy(q).to(torch.int8), parts["scales"].take(shape[0]), bits)


class _Reader:
    """Consumes a flat tensor front to back; running past its end is a layout mismatch."""

    def __init__(self, flat: torch.Tensor):
        self.flat, self.pos = flat, 0

    def take(self, n: int) -> torch.Tensor:
        if self.pos + n > self.flat.numel():
            raise CheckpointError("a packed part is shorter than the Net layout needs")
        out = self.flat[self.pos:self.pos + n]
        self.pos += n
        return out

    def done(self) -> bool:
        return self.pos == self.flat.numel()


def expected_packed_bytes(model: nn.Module) -> int:
    """Bytes the packed weight codes must take, to the byte (rows padded to whole bytes)."""
    layers = qat_layers(model)
    bits = next(iter(layers.values())).weight_bits
    return sum(packed_nbytes(tuple(m.weight.shape), bits) for m in layers.values())
