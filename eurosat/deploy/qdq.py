"""The PyTorch INT8 model as an ONNX QDQ graph, built from its own stored tensors.

The static INT8 model (torch.ao, eurosat/quant/ptq.py) is written into the graph as it is: the same
int8 weight codes with their per-channel scales, the same activation scales and zero points. So ONNX
Runtime runs the very model the PTQ report evaluated, calibrated on the same images by the same
observers, not a second quantization of the FP32 weights that would differ from it image by image.

    images -> Q -> DQ -> [Conv(DQ(w int8), DQ(b int32)) -> Relu -> Q -> DQ -> MaxPool -> Q -> DQ] x 3
           -> Flatten -> Q -> DQ -> [Gemm -> Relu -> Q -> DQ] x 2 -> Gemm -> Q -> DQ -> logits

ReLU comes before max-pooling, as in the torch.ao model (equal to `Net`'s pool-then-ReLU: ReLU is
monotone). That is the pattern ONNX Runtime's CPU provider fuses at load: DQ-Conv-Relu-Q into one
QLinearConv (the ReLU is absorbed: its output zero point is the range's minimum), DQ-MaxPool-Q into
an int8 max-pool, DQ-Gemm-Q into QGemm; `runtime.kernels` lists what it really ran.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from eurosat.quant.ptq import QUANT_LAYERS

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: loadable by ONNX Runtime 1.12 and later
INPUT, OUTPUT = "images", "logits"
CONVS = ("conv1", "conv2", "conv3")
FCS = ("fc1", "fc2", "fc3")


def qdq_model(state: dict[str, torch.Tensor]) -> Any:
    """An `onnx.ModelProto` from `ptq.int8_static_state(model)` (codes, scales, zero points)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    missing = [f"{n}.{k}" for n in QUANT_LAYERS for k in ("weight_int8", "weight_scale", "out_scale", "out_zero_point")
               if f"{n}.{k}" not in state] + [k for k in ("quant.scale", "quant.zero_point") if k not in state]
    if missing:
        raise ValueError(f"not a static INT8 model state (missing {', '.join(missing[:3])})")
    nodes: list[Any] = []
    initializers: list[Any] = []

    def const(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def quantized(x: str, scale: float, zero_point: int, tag: str) -> str:
        """Q then DQ: the tensor as the int8 model holds it (uint8 activations, as torch.ao's quint8)."""
        s = const(f"{tag}.scale", np.array(scale, dtype=np.float32))
        z = const(f"{tag}.zero_point", np.array(zero_point, dtype=np.uint8))
        q = node("QuantizeLinear", [x, s, z], f"{tag}.q")
        return node("DequantizeLinear", [q, s, z], f"{tag}.dq")

    def weights(layer: str, in_scale: float) -> list[str]:
        """Per-output-channel int8 weights, and the bias as int32 at scale input x weight (as fbgemm)."""
        codes = state[f"{layer}.weight_int8"].numpy().astype(np.int8)
        scales = state[f"{layer}.weight_scale"].numpy().astype(np.float32)
        w = node("DequantizeLinear", [const(f"{layer}.weight_int8", codes), const(f"{layer}.weight_scale", scales),
                                      const(f"{layer}.weight_zero_point", np.zeros_like(scales, dtype=np.int8))],
                 f"{layer}.weight", axis=0)
        bias = state.get(f"{layer}.bias")
        if bias is None:
            return [w]
        bias_scale = (np.float32(in_scale) * scales).astype(np.float32)
        codes = np.clip(np.round(bias.numpy().astype(np.float64) / bias_scale), -2**31, 2**31 - 1).astype(np.int32)
        b = node("DequantizeLinear", [const(f"{layer}.bias_int32", codes), const(f"{layer}.bias_scale", bias_scale),
                                      const(f"{layer}.bias_zero_point", np.zeros_like(codes))], f"{layer}.bias", axis=0)
        return [w, b]

    def qparams(layer: str) -> tuple[float, int]:
        return float(state[f"{layer}.out_scale"]), int(state[f"{layer}.out_zero_point"])

    scale, zero_point = float(state["quant.scale"].reshape(-1)[0]), int(state["quant.zero_point"].reshape(-1)[0])
    x = quantized(INPUT, scale, zero_point, "input")
    for layer in CONVS:
        x = node("Relu", [node("Conv", [x, *weights(layer, scale)], f"{layer}.conv")], f"{layer}.relu")
        scale, zero_point = qparams(layer)
        x = quantized(x, scale, zero_point, f"{layer}.out")
        x = quantized(node("MaxPool", [x], f"{layer}.pool", kernel_shape=[2, 2], strides=[2, 2]), scale, zero_point,
                      f"{layer}.pool")
    x = quantized(node("Flatten", [x], "flatten", axis=1), scale, zero_point, "flatten")
    for layer in FCS:
        x = node("Gemm", [x, *weights(layer, scale)], f"{layer}.gemm", transB=1)
        if layer != FCS[-1]:
            x = node("Relu", [x], f"{layer}.relu")
        scale, zero_point = qparams(layer)
        x = quantized(x, scale, zero_point, f"{layer}.out")
    nodes.append(helper.make_node("Identity", [x], [OUTPUT], name=OUTPUT))
    graph = helper.make_graph(
        nodes, "eurosat_int8_qdq",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", int(state["fc3.weight_int8"].shape[0])])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="eurosat")
    model.ir_version = IR_VERSION
    return onnx.shape_inference.infer_shapes(model)
