"""The torch.ao backend of INT8 post-training quantization, used by the registry (quantize.py).

- static: torch.ao eager mode; conv+bn+relu and linear+relu fused, per-channel symmetric int8
  weights, int8 activations calibrated on training images. Every convolution and linear layer
  becomes a real quantized kernel (fbgemm/x86 on CPU).
- dynamic: the seed's `quantize_dynamic(model, {Linear, Conv2d})`, kept so users can see that it
  quantizes only the Linear layers (dynamic Conv2d does not exist).

States are plain tensors (codes, per-channel scales, activation qparams), rebuilt by the loaders.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from eurosat.train.model import Net


def _quiet_ao(fn):
    """torch.ao eager quantization is deprecated but is what gives real int8 conv kernels on CPU
    (torchao 0.18 has none); its notices would bury the report. Silenced in these calls only, not
    process-wide; "must run observer" is the uncalibrated skeleton `load_quantized` overwrites."""
    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            for message in (".*torch.ao.quantization.*deprecated.*", ".*quantized tensor creation functions.*deprecated.*",
                            ".*reduce_range will be deprecated.*", ".*must run observer.*"):
                warnings.filterwarnings("ignore", message=message)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao")
            return fn(*args, **kwargs)
    return quiet


FUSE_GROUPS = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["conv3", "bn3", "relu3"],
               ["fc1", "relu4"], ["fc2", "relu5"]]
QUANT_LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2", "fc3")
ENGINE = "x86"  # fbgemm's successor on x86 CPUs; "qnnpack" on ARM


class QuantizableNet(Net):
    """`Net` with module ReLUs and quant/dequant stubs, so eager-mode fusion can see the pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.dequant = torch.ao.quantization.DeQuantStub()
        for i in range(1, 6):
            setattr(self, f"relu{i}", nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        x = self.pool(self.relu3(self.bn3(self.conv3(x))))
        x = torch.flatten(x, 1)
        x = self.relu4(self.fc1(x))
        x = self.relu5(self.fc2(x))
        return self.dequant(self.fc3(x))


def _int8_skeleton(state_dict: dict[str, torch.Tensor] | None, engine: str) -> nn.Module:
    """Fused, observed model; converting it gives the quantized module structure."""
    torch.backends.quantized.engine = engine
    model = QuantizableNet()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=False)
    model.eval()
    torch.ao.quantization.fuse_modules(model, FUSE_GROUPS, inplace=True)
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)  # per-channel symmetric weights
    return torch.ao.quantization.prepare(model, inplace=True)


@_quiet_ao
@_quiet_ao
def int8_static(net: nn.Module, calibration: Iterable[torch.Tensor], engine: str = ENGINE) -> nn.Module:
    """Static PTQ: fused, observed on the calibration batches, converted to quantized kernels."""
    state = {k: v.detach().cpu().float() if v.is_floating_point() else v.cpu() for k, v in net.state_dict().items()}
    observed = _int8_skeleton(state, engine)
    with torch.no_grad():
        for images in calibration:
            observed(images)
    return torch.ao.quantization.convert(observed, inplace=True)


@_quiet_ao
def int8_dynamic(net: nn.Module) -> nn.Module:
    """The seed's `quantize_dynamic(model, {Linear, Conv2d})`: only the Linear layers become int8."""
    return torch.ao.quantization.quantize_dynamic(net.eval(), {nn.Linear, nn.Conv2d}, dtype=torch.qint8)


DYNAMIC_LAYERS = ("fc1", "fc2", "fc3")  # quantize_dynamic has no Conv2d kernel: convs stay float


def int8_dynamic_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors for the file: no packed-params objects, no pickled classes."""
    state = {k: v for k, v in model.state_dict().items() if "_packed_params" not in k}
    for name in DYNAMIC_LAYERS:
        weight, bias = getattr(model, name).weight(), getattr(model, name).bias()
        state[f"{name}.weight_int8"] = weight.int_repr()
        state[f"{name}.weight_scale"] = torch.tensor([weight.q_scale()], dtype=torch.float32)
        state[f"{name}.weight_zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int32)
        state[f"{name}.bias"] = bias.detach().float()
    return state


def int8_static_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Codes, per-channel scales and activation qparams as plain tensors."""
    state: dict[str, torch.Tensor] = {
        "quant.scale": model.quant.scale.float(), "quant.zero_point": model.quant.zero_point.int(),
    }
    for name in QUANT_LAYERS:
        module = getattr(model, name)
        weight, bias = module.weight(), module.bias()
        state[f"{name}.weight_int8"] = weight.int_repr()
        state[f"{name}.weight_scale"] = weight.q_per_channel_scales().float()
        if bias is not None:
            state[f"{name}.bias"] = bias.detach().float()
        state[f"{name}.out_scale"] = torch.tensor(module.scale, dtype=torch.float32)
        state[f"{name}.out_zero_point"] = torch.tensor(module.zero_point, dtype=torch.int32)
    return state


@_quiet_ao
def load_int8_dynamic(state: dict[str, torch.Tensor]) -> nn.Module:
    net = Net()
    net.load_state_dict({k: v for k, v in state.items() if k in net.state_dict()}, strict=False)
    model = torch.ao.quantization.quantize_dynamic(net.eval(), {nn.Linear, nn.Conv2d}, dtype=torch.qint8)
    for name in DYNAMIC_LAYERS:
        weight = torch._make_per_tensor_quantized_tensor(
            state[f"{name}.weight_int8"], float(state[f"{name}.weight_scale"]), int(state[f"{name}.weight_zero_point"]))
        getattr(model, name).set_weight_bias(weight, state[f"{name}.bias"])
    return model.eval()


@_quiet_ao
def load_int8_static(state: dict[str, torch.Tensor], engine: str = ENGINE) -> nn.Module:
    model = torch.ao.quantization.convert(_int8_skeleton(None, engine), inplace=True)  # qparams set below
    model.quant.scale = state["quant.scale"].reshape(1)
    model.quant.zero_point = state["quant.zero_point"].long().reshape(1)
    for name in QUANT_LAYERS:
        module = getattr(model, name)
        scales = state[f"{name}.weight_scale"].double()
        weight = torch._make_per_channel_quantized_tensor(
            state[f"{name}.weight_int8"], scales, torch.zeros_like(scales, dtype=torch.long), 0)
        module.set_weight_bias(weight, state.get(f"{name}.bias"))
        module.scale = float(state[f"{name}.out_scale"])
        module.zero_point = int(state[f"{name}.out_zero_point"])
    return model.eval()


def is_fully_quantized(model: nn.Module) -> bool:
    """True if every Conv2d/Linear of the model is a quantized kernel (the seed's method fails this)."""
    float_layers = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear)]
    return not float_layers
