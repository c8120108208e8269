"""Quantized models: one registry of methods, one `quantize(model, config)`, one file header.

    qmodel = quantize(net, Int8StaticConfig(), calibration=batches)   # a new model; `net` is untouched
    save(qmodel, Int8StaticConfig(), path)
    qmodel, config = load(path)

A method is a small frozen config (its `name` is what files and reports call it) and a handler
registered for that config type: how it quantizes a trained FP32 `Net`, which plain tensors it
stores, how it rebuilds the model from them, and where and in which dtype the result computes
(honestly labelled). Adding a method is adding a config and a handler here; the CLIs, the file
format and the PTQ report pick it up from the registry.

Every file is one `torch.save` dict that loads with `torch.load(path, weights_only=True)`:
`{"format": "eurosat-quantized/1", "method": NAME, "config": {fields}, ...plain tensors...}`.
Files of earlier versions (a `__precision__` tensor; `eurosat-packed/2`) still load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eurosat.quant import packed_model, ptq
from eurosat.train.checkpoints import CheckpointError, check_finite, load_checkpoint, net_from_state, state_dict_of
from eurosat.common.files import atomic_write
from eurosat.train.model import Net
from eurosat.quant.qat import QATConfig, fp32_state, prepare_qat

FORMAT = "eurosat-quantized/1"
_HEADER = ("format", "method", "config")


@dataclass(frozen=True)
class Fp32Config:
    name: str = "fp32"


@dataclass(frozen=True)
class Fp16Config:
    name: str = "fp16"


@dataclass(frozen=True)
class Fp8Config:
    """Weights (conv/linear) as float8 e4m3 with one float32 scale per output channel; the rest FP32."""

    name: str = "fp8"


@dataclass(frozen=True)
class Int8StaticConfig:
    name: str = "int8"
    engine: str = ptq.ENGINE


@dataclass(frozen=True)
class Int8DynamicConfig:
    name: str = "int8_dynamic"


@dataclass(frozen=True)
class PackedConfig:
    """Weights in N bits, packed (see packed_model.py); activations fake-quantized at `activation_bits`."""

    weight_bits: int = 8
    activation_bits: int = 32
    name: str = "packed"


@dataclass(frozen=True)
class Evaluation:
    """A loaded model ready to evaluate: where it runs, what its inputs are, what really computes."""

    model: nn.Module
    device: torch.device
    input_dtype: torch.dtype
    compute: str


class Handler:
    """The default handler: a float model stored as its state dict, evaluated where asked in float32."""

    zip_file = True  # torch's zip container; packed files use the leaner legacy format
    needs_calibration = False  # whether `quantize` needs calibration batches (training images)

    def quantize(self, net: Net, config: Any, calibration: Iterable[torch.Tensor] | None) -> nn.Module:
        raise NotImplementedError

    def state(self, model: nn.Module, config: Any) -> dict[str, Any]:
        return dict(model.state_dict())

    def load(self, state: dict[str, Any], config: Any) -> nn.Module:
        model = Net()
        model.load_state_dict(state)
        return model.eval()

    def evaluation(self, model: nn.Module, device: torch.device) -> Evaluation:
        return Evaluation(model.to(device), device, torch.float32, "float32")


_HANDLERS: dict[type, Handler] = {}


def register(config_type: type):
    def add(handler_type: type[Handler]) -> type[Handler]:
        _HANDLERS[config_type] = handler_type()
        return handler_type
    return add


def _handler(config: Any) -> Handler:
    try:
        return _HANDLERS[type(config)]
    except KeyError:
        raise ValueError(f"no quantization method registered for {type(config).__name__}") from None


def _fp32_net(model: nn.Module) -> Net:
    """A plain float32 `Net` copy of any trained model (QAT models: their latent weights)."""
    net = Net()
    net.load_state_dict({k: v.detach().cpu().float() if v.is_floating_point() else v.cpu()
                         for k, v in fp32_state(model).items()})
    return net.eval()


@register(Fp32Config)
class _Fp32(Handler):
    def quantize(self, net, config, calibration):
        return net


@register(Fp16Config)
class _Fp16(Handler):
    def quantize(self, net, config, calibration):
        return net.half()

    def load(self, state, config):
        model = Net().half()
        model.load_state_dict(state)
        return model.eval()

    def evaluation(self, model, device):
        if device.type == "cuda":
            return Evaluation(model.to(device), device, torch.float16, "float16")
        # CPU half convolutions are slow or missing: compute in float32, say so
        return Evaluation(model.float(), torch.device("cpu"), torch.float32, "float32 (float16 storage upcast)")


_FP8 = torch.float8_e4m3fn
_FP8_MAX = 448.0  # largest finite e4m3 value


def _fp8_weight_keys() -> set[str]:
    return {f"{name}.weight" for name, m in Net().named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@register(Fp8Config)
class _Fp8(Handler):
    """The in-memory model holds the weights rounded to e4m3 x scale in float32 (what the file
    decodes to); the file holds the e4m3 codes and the scales."""

    def quantize(self, net, config, calibration):
        state = net.state_dict()
        for key in _fp8_weight_keys():
            w = state[key]
            scale = (w.abs().flatten(1).amax(1) / _FP8_MAX).clamp(min=1e-12)
            state[key] = (w / scale.view(-1, *[1] * (w.dim() - 1))).to(_FP8)
            state[key.replace(".weight", ".fp8_scale")] = scale
        return self.load(state, config)  # exactly what the file will decode to

    def state(self, model, config):
        out = dict(model.state_dict())
        for key in _fp8_weight_keys():
            scale = model.fp8_scales[key]
            out[key] = (out[key] / scale.view(-1, *[1] * (out[key].dim() - 1))).to(_FP8)
            out[key.replace(".weight", ".fp8_scale")] = scale
        return out

    def load(self, state, config):
        state = dict(state)
        scales = {key: state.pop(key.replace(".weight", ".fp8_scale")).float() for key in _fp8_weight_keys()}
        for key, scale in scales.items():
            state[key] = state[key].float() * scale.view(-1, *[1] * (state[key].dim() - 1))
        model = Net()
        model.load_state_dict(state)
        model.fp8_scales = scales
        return model.eval()

    def evaluation(self, model, device):
        return Evaluation(model.to(device), device, torch.float32, "float32 (float8 e4m3 storage upcast)")


@register(Int8StaticConfig)
class _Int8Static(Handler):
    needs_calibration = True

    def quantize(self, net, config, calibration):
        if calibration is None:
            raise ValueError("int8 static quantization needs calibration batches")
        return ptq.int8_static(net, calibration, config.engine)

    def state(self, model, config):
        return ptq.int8_static_state(model)

    def load(self, state, config):
        return ptq.load_int8_static(state, config.engine)

    def evaluation(self, model, device):
        return Evaluation(model, torch.device("cpu"), torch.float32, "int8 (quantized kernels, CPU)")


@register(Int8DynamicConfig)
class _Int8Dynamic(Handler):
    def quantize(self, net, config, calibration):
        return ptq.int8_dynamic(net)

    def state(self, model, config):
        return ptq.int8_dynamic_state(model)

    def load(self, state, config):
        return ptq.load_int8_dynamic(state)

    def evaluation(self, model, device):
        return Evaluation(model, torch.device("cpu"), torch.float32, "int8 Linear + float32 Conv2d (CPU)")


@register(PackedConfig)
class _Packed(Handler):
    zip_file = False

    def quantize(self, net, config, calibration):
        return prepare_qat(net, QATConfig(config.weight_bits, config.activation_bits)).eval()

    def state(self, model, config):
        return packed_model.packed_state(model)

    def load(self, state, config):
        return packed_model.unpack(state, QATConfig(config.weight_bits, config.activation_bits))

    def evaluation(self, model, device):
        return Evaluation(model.to(device), device, torch.float32, "float32 (N-bit weights, fake-quantized)")


CONFIGS: dict[str, Any] = {c.name: c for c in (Fp32Config(), Fp16Config(), Fp8Config(), Int8StaticConfig(),
                                                Int8DynamicConfig())}  # what the PTQ report offers by name


def quantize(model: nn.Module, config: Any, calibration: Iterable[torch.Tensor] | None = None) -> nn.Module:
    """The quantized version of a trained model (a new model: `model` is not modified)."""
    return _handler(config).quantize(_fp32_net(model), config, calibration)


def save(model: nn.Module, config: Any, path: Path) -> Path:
    """A quantized model, with the one header, atomically; loads with `torch.load(weights_only=True)`."""
    handler = _handler(config)
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "name"}
    state = {"format": FORMAT, "method": config.name, "config": fields, **handler.state(model, config)}
    return atomic_write(path, lambda fh: torch.save(state, fh, _use_new_zipfile_serialization=handler.zip_file))


def read(state: Any, path: Path | str) -> tuple[dict[str, Any], Any]:
    """(the tensors, the config) of a loaded file: ours with its header, an earlier version's, or a
    plain FP32 state dict (the original berlin25-eurosat format)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a model file (expected a mapping of names to tensors)")
    state = dict(state)
    try:
        if state.get("format") == FORMAT:
            method, fields = state.pop("method"), dict(state.pop("config"))
            state.pop("format")
        elif state.get("format") == packed_model.LEGACY_FORMAT:
            method = "packed"
            fields = {"weight_bits": int(state.pop("weight_bits")), "activation_bits": int(state.pop("activation_bits"))}
            state.pop("format")
        elif "__precision__" in state:  # PTQ files before the registry
            method, fields = bytes(state.pop("__precision__").tolist()).decode(), {}
        else:
            method, fields = "fp32", {}
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: a model file with a malformed header ({state.get('format') or 'its precision tag'})") from None
    if not isinstance(method, str):
        raise CheckpointError(f"{path}: a model file with a malformed header (method {method!r})")
    types = {t().name: t for t in _HANDLERS}
    if method not in types:
        raise CheckpointError(f"{path}: unknown quantization method {method!r}; known: {', '.join(types)}")
    try:
        return state, types[method](**fields)
    except TypeError:
        raise CheckpointError(f"{path}: the {method} header does not fit its config: {fields}") from None


def load(path: str | Path, expect: type | None = None) -> tuple[nn.Module, Any]:
    """Rebuild any quantized (or plain FP32) model file: (model on the CPU, its config).
    `expect`: a config type the file must be (anything else is a one-line CheckpointError).
    An FP32 file is read as the FP32 tools read it (a run's checkpoint.pt too: its state dict), and
    no file may hold NaN or Inf: a model that computes nonsense is refused here, by name."""
    state, config = read(load_checkpoint(path), path)
    if expect is not None and not isinstance(config, expect):
        raise CheckpointError(f"{path}: not a {expect().name} model file (it is {config.name})")
    if isinstance(config, Fp32Config):
        return net_from_state(state_dict_of(state, path), path).eval(), config
    check_finite(state, path)
    try:
        return _handler(config).load(state, config), config
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a {config.name} model file ({type(exc).__name__})") from None


def needs_calibration(config: Any) -> bool:
    return _handler(config).needs_calibration


def evaluation(model: nn.Module, config: Any, device: torch.device) -> Evaluation:
    """Where and in which dtype a model of this method computes, and how that is labelled."""
    return _handler(config).evaluation(model, device)


def is_fully_quantized(model: nn.Module) -> bool:
    return ptq.is_fully_quantized(model)
