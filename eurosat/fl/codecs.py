"""Wire codecs: how model arrays travel between the server and the clients, one registry.

A codec is one entry in `CODECS`: its tensor encoder and decoder sit side by side, and every
`encode` logs the bytes before and after. Adding a codec means one `register(...)` here plus its
tests; the run config (`transport`), the reports and the figures read the registry. Rules shared by
every codec (the base class):
- integer buffers (`num_batches_tracked`) travel unchanged;
- decoding always yields float32 (or the original integer dtype), so aggregation never averages
  codes or scales and the global model never drifts into a low-precision dtype.
The entries:
- `fp32`: float32; `fp16`: float16;
- `int8`/`int4`/`int2`: weight tensors (ndim >= 2) as symmetric per-output-channel codes plus one
  float32 scale per channel, `int4` packed two codes per byte, `int2` four (codes -1, 0, 1: the
  QAT 2-bit grid); small tensors (biases, BatchNorm) stay float32: they are under 0.5% of the
  bytes and sensitive to rounding;
- `sign`: one bit per weight value (its sign) and one float32 scale per output channel, the mean
  absolute value (the QAT 1-bit code), packed eight to a byte;
- `topk`: of each weight tensor only the `topk-fraction` largest-magnitude entries, as int8 codes
  with one float32 scale, plus their positions: gaps between them one byte each (a gap of 255 or
  more takes extra bytes of 255) or a bitmap of the tensor, whichever is smaller for that tensor
  (about 2 bytes per kept value at 10 %).
Lossy codecs are meant to run with error feedback (link.py): what a message drops is sent later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from eurosat.quant.packing import dequantize, pack_bits, qmax, quantize, unpack_bits
from eurosat.quant.qat import weight_codes
from eurosat.fl.state import State, contiguous, raw_nbytes

log = logging.getLogger(__name__)
SCALE, SHAPE = "::scale", "::shape"
INDEX = "::index"  # topk: the positions kept, as gaps or as a bitmap (the bitmap's length tells which)


class Codec:
    """One wire format. Subclasses say how one float tensor travels (`encode_tensor`) and comes back
    (`decode_tensor`); the whole-state loop, the integer buffers and the byte log are shared."""

    name: str
    bits: int  # bits per weight value on the wire, before scales and headers (32 = lossless)

    @property
    def lossy(self) -> bool:
        """Whether decoding loses anything, i.e. whether error feedback has anything to carry."""
        return self.bits < 32

    @property
    def label(self) -> str:
        """The codec as it runs, with its options (`topk0.01`); records, folders and figures use it."""
        return self.name

    def configured(self, topk_fraction: float) -> "Codec":
        """This codec with the run config's codec options; codecs without options are themselves."""
        return self

    def nbytes(self, state: Mapping[str, np.ndarray]) -> int:
        """What `state` weighs as one message in this codec, as Flower counts it
        (`ArrayRecord.count_bytes()`: every array's .npy bytes and its key), indices and scales included."""
        return self.encode(state, quiet=True).count_bytes()

    def encode(self, state: Mapping[str, np.ndarray], quiet: bool = False) -> ArrayRecord:
        """`quiet`: a reference or residual encoding that is not sent, so not logged as traffic."""
        record = ArrayRecord()
        for key, value in state.items():
            x = np.asarray(value)
            parts = self.encode_tensor(key, x) if np.issubdtype(x.dtype, np.floating) else [(key, x)]
            for name, array in parts:
                record[name] = Array(contiguous(array))
        if not quiet:
            log.info("transport %s: encoded %d B -> %d B", self.name, raw_nbytes(state), record.count_bytes())
        return record

    def decode(self, record: ArrayRecord) -> State:
        arrays = {k: v.numpy() for k, v in record.items()}
        return {k: self._decode_one(k, arrays) for k in arrays if "::" not in k}

    def _decode_one(self, key: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        x = arrays[key]
        if not np.issubdtype(x.dtype, np.floating) and key + SCALE not in arrays:
            return x  # an integer buffer
        return self.decode_tensor(key, arrays).astype(np.float32)

    def encode_tensor(self, key: str, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
        raise NotImplementedError

    def decode_tensor(self, key: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class FloatCodec(Codec):
    """Every float tensor cast to one float dtype."""

    name: str
    dtype: type

    @property
    def bits(self) -> int:
        return np.dtype(self.dtype).itemsize * 8

    def encode_tensor(self, key: str, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
        return [(key, x.astype(self.dtype))]

    def decode_tensor(self, key: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        return arrays[key]


@dataclass(frozen=True)
class IntCodec(Codec):
    """Weight tensors as symmetric per-output-channel integer codes and a float32 scale per channel;
    under 8 bits the codes are packed, several to a byte, with the tensor's shape beside them."""

    name: str
    bits: int

    def encode_tensor(self, key: str, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
        if x.ndim < 2:
            return [(key, x.astype(np.float32))]
        codes, scale = quantize(x, self.bits)
        if self.bits == 8:
            return [(key, codes), (key + SCALE, scale)]
        unsigned = (codes.astype(np.int16) + qmax(self.bits)).astype(np.uint8)
        return [(key, pack_bits(unsigned, self.bits)), (key + SCALE, scale),
                (key + SHAPE, np.asarray(x.shape, dtype=np.int32))]

    def decode_tensor(self, key: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        x = arrays[key]
        if key + SCALE not in arrays:
            return x  # a small tensor sent as float32
        if key + SHAPE in arrays:
            shape = tuple(int(d) for d in arrays[key + SHAPE])
            x = unpack_bits(x, self.bits, shape).astype(np.int16) - qmax(self.bits)
        return dequantize(x, arrays[key + SCALE])


@dataclass(frozen=True)
class SignCodec(Codec):
    """One bit per weight value and a float32 scale per output channel, the channel's mean |x|: the
    QAT 1-bit code (`qat.weight_codes`), so the decoded tensor keeps each channel's L1 norm."""

    name: str
    bits: int = 1

    def encode_tensor(self, key: str, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
        if x.ndim < 2:
            return [(key, x.astype(np.float32))]
        codes, scale = weight_codes(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), 1)
        return [(key, pack_bits(codes.numpy().astype(np.uint8), 1)), (key + SCALE, scale.numpy()),
                (key + SHAPE, np.asarray(x.shape, dtype=np.int32))]

    def decode_tensor(self, key: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        if key + SCALE not in arrays:
            return arrays[key]
        shape = tuple(int(d) for d in arrays[key + SHAPE])
        positive = unpack_bits(arrays[key], 1, shape).astype(bool)
        scale = arrays[key + SCALE].reshape((-1,) + (1,) * (len(shape) - 1)).astype(np.float32)
        return np.where(positive, scale, -scale)


@dataclass(frozen=True)
class TopKCodec(Codec):
    """The `fraction` largest-magnitude entries of each weight tensor (at least one) as int8 codes
    with one float32 scale (max |kept| / 127), and where they are: the gaps between positions, one
    byte each (a gap g >= 255 is g // 255 bytes of 255, then g % 255), or a bitmap, whichever is
    smaller (gaps only when strictly shorter, so an index as long as the bitmap is the bitmap: the
    arrays a tensor travels as are always the same four). Everything is in the message, so
    `count_bytes` counts the indices too."""

    name: str
    fraction: float = 0.1

    @property
    def bits(self) -> int:
        return 8  # each kept value; the rest are dropped (lossy)

    @property
    def label(self) -> str:
        return f"{self.name}{self.fraction:g}"

    def configured(self, topk_fraction: float) -> "Codec":
        if not 0 < topk_fraction <= 1:
            raise ValueError(f"topk-fraction: must be in (0, 1], got {topk_fraction}")
        return replace(self, fraction=float(topk_fraction))

    def kept(self, size: int) -> int:
        """How many entries of a tensor of `size` travel."""
        return min(size, max(1, round(self.fraction * size)))

    def encode_tensor(self, key: str, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
        if x.ndim < 2:
            return [(key, x.astype(np.float32))]
        flat = np.asarray(x, dtype=np.float32).ravel()
        k = self.kept(flat.size)
        positions = np.sort(np.argpartition(-np.abs(flat), k - 1)[:k]) if k < flat.size else np.arange(flat.size)
        values = flat[positions]
        scale = np.float32(max(float(np.abs(values).max()) / 127, 1e-12))
        codes = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
        gaps = _gap_bytes(positions)
        index = gaps if gaps.size < _bitmap_nbytes(flat.size) else _bitmap(positions, flat.size)
        return [(key, codes), (key + SCALE, np.asarray([scale], dtype=np.float32)),
                (key + SHAPE, np.asarray(x.shape, dtype=np.int32)), (key + INDEX, index)]

    def decode_tensor(self, key: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        if key + SCALE not in arrays:
            return arrays[key]
        shape = tuple(int(d) for d in arrays[key + SHAPE])
        size = int(np.prod(shape, dtype=np.int64))
        index = arrays[key + INDEX]
        if index.size == _bitmap_nbytes(size):
            positions = np.flatnonzero(np.unpackbits(index, count=size, bitorder="little"))
        else:
            positions = _positions_from_gaps(index)
        out = np.zeros(size, dtype=np.float32)
        out[positions] = arrays[key].astype(np.float32) * arrays[key + SCALE].astype(np.float32)[0]
        return out.reshape(shape)


def _gap_bytes(positions: np.ndarray) -> np.ndarray:
    """Sorted positions as gaps (g = next - previous - 1, from -1), each g as g // 255 bytes of 255
    then one byte g % 255: the bytes of each gap sum to it."""
    gaps = np.diff(positions.astype(np.int64), prepend=-1) - 1
    runs = gaps // 255
    out = np.full(int(gaps.size + runs.sum()), 255, dtype=np.uint8)
    out[np.cumsum(runs + 1) - 1] = (gaps % 255).astype(np.uint8)
    return out


def _positions_from_gaps(data: np.ndarray) -> np.ndarray:
    """Inverse of `_gap_bytes`: a byte below 255 ends a gap, which is the sum of its bytes."""
    sums = np.cumsum(data.astype(np.int64))[data != 255]
    gaps = np.diff(sums, prepend=0)
    return np.cumsum(gaps + 1) - 1


def _bitmap_nbytes(size: int) -> int:
    return -(-size // 8)


def _bitmap(positions: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=np.uint8)
    mask[positions] = 1
    return np.packbits(mask, bitorder="little")


CODECS: dict[str, Codec] = {}


def register(codec: Codec) -> Codec:
    """Add a codec to the registry; its name is the `transport` value that selects it."""
    if codec.name in CODECS:
        raise ValueError(f"codec {codec.name!r} is already registered")
    CODECS[codec.name] = codec
    return codec


register(FloatCodec("fp32", np.float32))
register(FloatCodec("fp16", np.float16))
register(IntCodec("int8", 8))
register(IntCodec("int4", 4))
register(IntCodec("int2", 2))
register(SignCodec("sign"))
register(TopKCodec("topk"))


def wire_name(transport: str, error_feedback: bool) -> str:
    """The transport as it ran: `int4`, or `int4+ef` with error feedback (fp32 has no error to feed back)."""
    return f"{transport}+ef" if error_feedback and transport != "fp32" else transport


def get_codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"transport: unknown value {name!r}; allowed: {', '.join(CODECS)}")
    return CODECS[name]
