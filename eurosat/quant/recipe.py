"""What a precision setting means, resolved once: the one place that reads `precision`,
`weight-bits` and `activation-bits`.

- `fp32`: plain float32 training;
- `fp16`: mixed precision (autocast float16 + loss scaling on CUDA, bfloat16 on a CPU, recorded
  as such), plus a float16 copy of the final weights;
- `int8`: W8A8 quantization-aware training, the packed 8-bit file, and the real INT8 model;
- `weight-bits` < 32 (with `activation-bits`): QAT at those widths and the packed N-bit file.

Training (`compute_plan`, `make_model`), the exports after training (`exports`), the run label
and the results table all consume a `PrecisionRecipe`; none of them compares the strings again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from eurosat.train.model import Net
from eurosat.quant.qat import QATConfig, prepare_qat
from eurosat.train.loop import ComputePlan

PRECISIONS = ("fp32", "fp16", "int8")
WEIGHT_BITS = (32, 16, 8, 6, 4, 2, 1)
ACTIVATION_BITS = (32, 16, 8, 6, 4)
# exports a recipe may ask for after training (each one an entry of fl/task.py's EXPORTERS)
PACKED, INT8_MODEL, FP16_MODEL = "packed", "int8_model", "fp16_model"


@dataclass(frozen=True)
class PrecisionRecipe:
    precision: str = "fp32"
    weight_bits: int = 32
    activation_bits: int = 32

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> "PrecisionRecipe":
        """From run-config keys (`precision`, `weight-bits`, `activation-bits`), e.g. a stored config."""
        return cls(str(values.get("precision", "fp32")), int(values.get("weight-bits", 32)),
                   int(values.get("activation-bits", 32)))

    def problem(self) -> str | None:
        """Why this combination is invalid, in one line, or None."""
        if self.precision not in PRECISIONS:
            return f"precision: unknown value {self.precision!r}; allowed: {', '.join(PRECISIONS)}"
        if self.weight_bits not in WEIGHT_BITS:
            return f"weight-bits: unknown value {self.weight_bits!r}; allowed: {', '.join(map(str, WEIGHT_BITS))}"
        if self.activation_bits not in ACTIVATION_BITS:
            return (f"activation-bits: unknown value {self.activation_bits!r}; "
                    f"allowed: {', '.join(map(str, ACTIVATION_BITS))}")
        if self.precision != "fp32" and (self.weight_bits, self.activation_bits) != (32, 32):
            return (f"precision={self.precision!r} cannot be combined with weight-bits={self.weight_bits}/"
                    f"activation-bits={self.activation_bits}; use precision='fp32' with bit-widths")
        if self.weight_bits == 32 and self.activation_bits < 32:
            return "activation-bits below 32 needs weight-bits below 32 (e.g. W8A8)"
        return None

    @property
    def qat(self) -> QATConfig | None:
        """`precision=int8` is W8A8 QAT; explicit bit-widths below 32 are QAT at those widths."""
        if self.precision == "int8":
            return QATConfig(8, 8)
        if self.weight_bits < 32:
            return QATConfig(self.weight_bits, self.activation_bits)
        return None

    @property
    def bits(self) -> tuple[int, int]:
        """(weight bits, activation bits) the model really trains at."""
        qat = self.qat
        return (qat.weight_bits, qat.activation_bits) if qat else (32, 32)

    @property
    def label(self) -> str:
        """fp32 | fp16 | int8 | w<W>a<A>: the run folder's first part (before the transport)."""
        return f"w{self.weight_bits}a{self.activation_bits}" if self.weight_bits < 32 else self.precision

    @property
    def exports(self) -> tuple[str, ...]:
        out = [PACKED] if self.qat else []
        if self.precision == "int8":
            out.append(INT8_MODEL)
        if self.precision == "fp16":
            out.append(FP16_MODEL)
        return tuple(out)

    def make_model(self) -> nn.Module:
        """The network that is really trained: plain `Net`, or `Net` with fake-quantized layers."""
        return prepare_qat(Net(), self.qat) if self.qat else Net()

    def compute_plan(self, device: torch.device) -> ComputePlan:
        return ComputePlan.mixed(device) if self.precision == "fp16" else ComputePlan(device)
