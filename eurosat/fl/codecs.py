"""Wire codecs: how model arrays travel between the server and the clients.

A codec is a small config object (`Codec(name, bits)`) whose `encode` and `decode` sit side by
side, and every encode logs the bytes before and after. Rules for each tensor:
- integer buffers (`num_batches_tracked`) travel unchanged;
- `fp32`: float32; `fp16`: float16;
- `int8`/`int4`: weight tensors (ndim >= 2) as symmetric per-output-channel codes plus one
  float32 scale per channel, `int4` packed two codes per byte; small tensors (biases,
  BatchNorm) stay float32: they are under 0.5% of the bytes and sensitive to rounding.

Decoding always yields float32 (or the original integer dtype), so aggregation never averages
codes or scales and the global model never drifts into a low-precision dtype.
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


@dataclass(frozen=True)
class Codec:
    name: str
    bits: int

    @property
    def lossy(self) -> bool:
        """Whether decoding loses anything, i.e. whether error feedback has anything to carry."""
        return self.bits < 32

    def encode(self, state: Mapping[str, np.ndarray], quiet: bool = False) -> ArrayRecord:
        """`quiet`: a reference or residual encoding that is not sent, so not logged as traffic."""
        record = ArrayRecord()
        for key, value in state.items():
            for name, array in self._encode_one(key, np.asarray(value)):
                record[name] = Array(contiguous(array))
        if not quiet:
            log.info("transport %s: encoded %d B -> %d B", self.name, raw_nbytes(state), record.count_bytes())
        return record

    def decode(self, record: ArrayRecord) -> State:
        arrays = {k: v.numpy() for k, v in record.items()}
        return {k: self._decode_one(k, arrays) for k in arrays if "::" not in k}

    def _encode_one(self, key: str, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
        if not np.issubdtype(x.dtype, np.floating):
            return [(key, x)]
        if self.bits == 32:
            return [(key, x.astype(np.float32))]
        if self.bits == 16:
            return [(key, x.astype(np.float16))]
        if x.ndim < 2:
            return [(key, x.astype(np.float32))]
        codes, scale = quantize(x, self.bits)
        if self.bits == 8:
            return [(key, codes), (key + SCALE, scale)]
        unsigned = (codes.astype(np.int16) + qmax(self.bits)).astype(np.uint8)
        return [(key, pack_bits(unsigned, self.bits)), (key + SCALE, scale),
                (key + SHAPE, np.asarray(x.shape, dtype=np.int32))]

    def _decode_one(self, key: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        x = arrays[key]
        if key + SCALE not in arrays:
            return x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
        if key + SHAPE in arrays:
            shape = tuple(int(d) for d in arrays[key + SHAPE])
            x = unpack_bits(x, self.bits, shape).astype(np.int16) - qmax(self.bits)
        return dequantize(x, arrays[key + SCALE])


CODECS: dict[str, Codec] = {c.name: c for c in (Codec("fp32", 32), Codec("fp16", 16), Codec("int8", 8), Codec("int4", 4))}


def wire_name(transport: str, error_feedback: bool) -> str:
    """The transport as it ran: `int4`, or `int4+ef` with error feedback (fp32 has no error to feed back)."""
    return f"{transport}+ef" if error_feedback and transport != "fp32" else transport


def get_codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"transport: unknown value {name!r}; allowed: {', '.join(CODECS)}")
    return CODECS[name]
