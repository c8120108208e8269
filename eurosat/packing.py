"""Symmetric per-channel integer quantization and sub-byte bit packing (NumPy).

Shared by the wire codecs (transport.py) and the packed low-bit model files (qat.py), so a
4-bit tensor on the wire and a 4-bit tensor on disk are the same bytes.
"""

from __future__ import annotations

import numpy as np


def qmax(bits: int) -> int:
    """Largest code of a symmetric signed `bits`-bit grid: codes lie in [-qmax, qmax]."""
    if bits < 2:
        raise ValueError("symmetric integer grids need >= 2 bits (1 bit is sign x scale)")
    return 2 ** (bits - 1) - 1


def channel_scales(x: np.ndarray, bits: int) -> np.ndarray:
    """One float32 scale per output channel (axis 0): max|x| / qmax, never zero."""
    flat = np.abs(x.reshape(x.shape[0], -1).astype(np.float32))
    scale = flat.max(axis=1) / qmax(bits)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def quantize(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric codes (int8 array, values in [-qmax, qmax]) and scales."""
    scale = channel_scales(x, bits)
    q = qmax(bits)
    shaped = scale.reshape((-1,) + (1,) * (x.ndim - 1))
    codes = np.clip(np.rint(x.astype(np.float32) / shaped), -q, q).astype(np.int8)
    return codes, scale


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
