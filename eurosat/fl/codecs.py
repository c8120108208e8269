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
- `int8`/`int4`: weight tensors (ndim >= 2) as symmetric per-output-channel codes plus one
  float32 scale per channel, `int4` packed two codes per byte; small tensors (biases,
  BatchNorm) stay float32: they are under 0.5% of the bytes and sensitive to rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

from eurosat.quant.packing import dequantize, pack_bits, qmax, quantize, unpack_bits
from eurosat.fl.state import State, contiguous, raw_nbytes

log = logging.getLogger(__name__)
SCALE, SHAPE = "::scale", "::shape"


class Codec:
    """One wire format. Subclasses say how one float tensor travels (`encode_tensor`) and comes back
    (`decode_tensor`); the whole-state loop, the integer buffers and the byte log are shared."""

    name: str
    bits: int  # bits per weight value on the wire, before scales and headers (32 = lossless)

    @property
    def lossy(self) -> bool:
        """Whether decoding loses anything, i.e. whether error feedback has anything to carry."""
        return self.bits < 32

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


def wire_name(transport: str, error_feedback: bool) -> str:
    """The transport as it ran: `int4`, or `int4+ef` with error feedback (fp32 has no error to feed back)."""
    return f"{transport}+ef" if error_feedback and transport != "fp32" else transport


def get_codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"transport: unknown value {name!r}; allowed: {', '.join(CODECS)}")
    return CODECS[name]
