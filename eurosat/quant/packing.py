"""Symmetric per-channel integer codes and sub-byte bit packing.

Shared by the wire codecs (transport.py), quantization-aware training (qat.py) and the packed
low-bit model files (packed_model.py), so a 4-bit tensor on the wire, in training and on disk
are the same codes and the same bytes.
"""

from __future__ import annotations

import numpy as np
import torch


def qmax(bits: int) -> int:
    """Largest code of a symmetric signed `bits`-bit grid: codes lie in [-qmax, qmax]."""
    if bits < 2:
        raise ValueError("symmetric integer grids need >= 2 bits (1 bit is sign x scale)")
    return 2 ** (bits - 1) - 1


def channel_codes(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The one definition of per-output-channel symmetric codes, for the wire and the packed file:
    int8 codes in [-qmax, qmax] and one float32 scale per output channel (axis 0),
    scale = max|x| / qmax (never zero), codes = round-half-even(x / scale)."""
    top = qmax(bits)
    x = x.detach().float()
    flat = x.abs().reshape(x.shape[0], -1)
    scale = (flat.amax(1) / top).clamp(min=1e-12)
    codes = torch.clamp(torch.round(x / scale.view(-1, *[1] * (x.dim() - 1))), -top, top)
    return codes.to(torch.int8), scale


def quantize(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """`channel_codes` for NumPy arrays (the wire codecs)."""
    codes, scale = channel_codes(torch.from_numpy(np.ascontiguousarray(x)), bits)
    return codes.numpy(), scale.numpy()


def dequantize(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    shaped = scale.reshape((-1,) + (1,) * (codes.ndim - 1)).astype(np.float32)
    return codes.astype(np.float32) * shaped


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes (each < 2**bits) densely into bytes: bits*n/8 bytes per row.

    Bit-planes little end first, so 4-bit codes are two per byte (low nibble first), 2-bit four,
    1-bit eight, and 6-bit codes four per three bytes. Each row (axis 0, the output channel)
    is padded to whole bytes so channels stay addressable.
    """
    rows = values.reshape(values.shape[0], -1).astype(np.uint8)
    if bits == 8:
        return rows.copy()
    planes = (rows[..., None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(rows.shape[0], -1), axis=1, bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_bits`: unsigned codes in the original `shape`."""
    n = _row_length(shape)
    if bits == 8:
        return packed.reshape(shape).astype(np.uint8)
    planes = np.unpackbits(packed, axis=1, count=n * bits, bitorder="little").reshape(shape[0], n, bits)
    codes = (planes.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=-1)
    return codes.reshape(shape).astype(np.uint8)


def packed_nbytes(shape: tuple[int, ...], bits: int) -> int:
    """Exact size of `pack_bits` output for a tensor of `shape`."""
    return shape[0] * -(-_row_length(shape) * bits // 8)


def _row_length(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
