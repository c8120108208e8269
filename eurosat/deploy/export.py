"""ONNX export of the project's model files: one exporter per precision, in a small registry.

    python -m eurosat.export outputs/fp32/2026-12-04/10-15-02/final_model.pt --to onnx
    python -m eurosat.export MODEL --to onnx --precisions fp32,int8 --out-dir deploy/
    python -m eurosat.export outputs/int8/2026-12-04/11-00-00/model_int8.pt --to onnx

From an FP32 checkpoint it writes model_fp32.onnx, model_fp16.onnx and model_int8.onnx (or the
--precisions named); from a model file of another precision (a report's or a training run's
model_fp16.pt or model_int8.pt), that file's own precision. Each file has a dynamic batch
dimension, passes onnx.checker, and is loaded and run by ONNX Runtime before the command ends.

- fp32: the float graph (ONNX Runtime folds each batch norm into its convolution at load);
- fp16: the same graph with float16 weights and float32 input and output. ONNX Runtime's CPU
  provider has no float16 convolution: on a CPU it casts them to float32 at load (float32 compute);
  real float16 compute runs only on CUDA;
- int8: the PyTorch INT8 model itself (static, per-channel int8 weights, activations calibrated on
  --calibration-samples train images: the images the PTQ report calibrates on), written as a QDQ
  graph, which ONNX Runtime fuses into QLinearConv/QGemm kernels.

Kinds ONNX cannot hold as they are (fp8, the original code's dynamic INT8, packed N-bit QAT files)
are refused by name, in one line. Needs the optional extra: pip install ".[deploy]".
Exit status: 0 done, 2 bad input (one line on stderr; no file half-written).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eurosat.common.cli import one_line_errors
from eurosat.common.files import atomic_write
from eurosat.common.paths import check_output_files
from eurosat.data.check import check_source
from eurosat.data.loading import CLASS_NAMES, DATA_ENV, DataError, resolve_source
from eurosat.deploy.qdq import INPUT, IR_VERSION, OPSET, OUTPUT, qdq_model
from eurosat.fl.config import project_defaults
from eurosat.quant import ptq
from eurosat.quant.registry import CONFIGS, Fp32Config, load, needs_calibration, quantize, read
from eurosat.report.compare import calibration_batches, load_fp32_net, run_data
from eurosat.train.checkpoints import load_checkpoint
from eurosat.train.model import Net

EXTRA = "deploy"
MB = 1024 * 1024
INPUT_SPEC = "float32 NCHW, N x 3 x 64 x 64 RGB, (pixel / 255 - 0.5) / 0.5"
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")


class DeployUnavailable(ValueError):
    """The optional extra is not installed: one line that names it."""


def require_onnx(what: str = "ONNX export") -> None:
    """Import onnx and onnxruntime, or say in one line which extra installs them."""
    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise DeployUnavailable(f"{what} needs the optional extra '{EXTRA}' ({' and '.join(missing)} not installed): "
                                f"pip install \".[{EXTRA}]\"")


class DeployNet(nn.Module):
    """The exported float graph: `Net`'s layers and weights unchanged (the file holds the model file's
    own tensors), with ReLU before max-pooling (equal to `Net`'s order, since ReLU is monotone), the
    order ONNX Runtime fuses into its convolution. A float16 `Net` runs between float32 input and
    output, so every file takes the same input."""

    def __init__(self, net: Net) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval()  # never the caller's modules (a .half() would change them)
        self.dtype = next(self.net.parameters()).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, half = self.net, self.dtype != torch.float32
        x = x.to(self.dtype) if half else x
        for conv, bn in ((n.conv1, n.bn1), (n.conv2, n.bn2), (n.conv3, n.bn3)):
            x = n.pool(F.relu(bn(conv(x))))
        x = torch.flatten(x, 1)
        x = F.relu(n.fc1(x))
        x = F.relu(n.fc2(x))
        return n.fc3(x).float() if half else n.fc3(x)


def _traced(model: nn.Module, opset: int = OPSET, ir_version: int = IR_VERSION) -> Any:
    """`torch.onnx.export` with the TorchScript exporter (offline and without onnxscript), batch dynamic."""
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices; the checks below are what counts
        torch.onnx.export(DeployNet(model), (torch.zeros(2, 3, 64, 64),), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT], do_constant_folding=False,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = ir_version
    return proto


FP8_OPSET, FP8_IR = 19, 9  # DequantizeLinear of float8 e4m3 needs opset 19


def _fp8(model: nn.Module) -> Any:
    """The fp8 model file's own codes: each conv/linear weight as float8 e4m3 with its per-output-channel
    float32 scale, dequantized by a DequantizeLinear node. ONNX Runtime does not fold those into
    constants (it keeps DequantizeLinear nodes for its QDQ fusions), so it dequantizes on every run
    and cannot fold the batch norms: a storage format, slower than fp32 (docs/deploy.md)."""
    from onnx import TensorProto, helper, numpy_helper

    proto = _traced(model, FP8_OPSET, FP8_IR)
    graph = proto.graph
    by_name = {t.name: t for t in graph.initializer}
    dequantize = []
    for key, scale in model.fp8_scales.items():
        name = f"net.{key}"
        weight = torch.from_numpy(numpy_helper.to_array(by_name[name]).copy())
        codes = (weight / scale.view(-1, *[1] * (weight.dim() - 1))).to(torch.float8_e4m3fn)
        graph.initializer.remove(by_name[name])
        graph.initializer.extend([
            helper.make_tensor(f"{name}.fp8", TensorProto.FLOAT8E4M3FN, list(codes.shape),
                               codes.view(torch.uint8).numpy().tobytes(), raw=True),
            numpy_helper.from_array(scale.numpy().astype(np.float32), f"{name}.scale")])
        dequantize.append(helper.make_node("DequantizeLinear", [f"{name}.fp8", f"{name}.scale"], [name],
                                           name=f"{name}.dequantize", axis=0))
    for node in reversed(dequantize):  # before every use: the graph stays topologically sorted
        graph.node.insert(0, node)
    return proto


@dataclass(frozen=True)
class OnnxExporter:
    """How one precision (a registry method, by name) becomes an ONNX graph, and what it computes in."""

    precision: str
    build: Callable[[nn.Module], Any]  # the registry's model of that method -> onnx.ModelProto
    holds: str  # what the file stores
    compute_cpu: str  # honest labels: what the arithmetic runs in, per execution provider
    compute_cuda: str


EXPORTERS: dict[str, OnnxExporter] = {e.precision: e for e in (
    OnnxExporter("fp32", _traced, "float32 weights", "float32", "float32"),
    OnnxExporter("fp16", _traced, "float16 weights (float32 input and output)",
                 "float32 (float16 weights cast to float32 at load: the CPU provider has no float16 convolution)",
                 "float16"),
    OnnxExporter("fp8", _fp8, "float8 e4m3 conv/linear weights with a float32 scale per output channel",
                 "float32 (float8 weights dequantized on every run: ONNX Runtime keeps DequantizeLinear nodes)",
                 "float32 (float8 weights dequantized on every run)"),
    OnnxExporter("int8", lambda model: qdq_model(ptq.int8_static_state(model)),
                 "int8 weights (per channel) and uint8 activation parameters: the PyTorch INT8 model, as QDQ",
                 "int8 (QLinearConv/QGemm after ONNX Runtime's QDQ fusion)", "int8 QDQ (where the CUDA provider fuses it)"),
)}
REFUSED: dict[str, str] = {
    "int8_dynamic": "the original code's dynamic INT8 leaves every convolution in float32; export the FP32 "
                    "checkpoint with --precisions int8 for a fully int8 graph",
    "packed": "packed N-bit QAT weights (2-6 bits, and activations fake-quantized) have no ONNX type ONNX Runtime "
              "runs; export the run's final_model.pt (its latent FP32 weights) or an INT8 QAT run's model_int8.pt",
}


def refusal(precision: str) -> str:
    """One line: why this precision is not exported."""
    return f"{precision}: not exported to ONNX: {REFUSED.get(precision, 'no ONNX exporter registered')}"


def onnx_model(model: nn.Module, precision: str, metadata: dict[str, str] | None = None) -> Any:
    """The checked `onnx.ModelProto` of a registry model of `precision`, with its labels as metadata."""
    import onnx

    if precision not in EXPORTERS:
        raise ValueError(refusal(precision))
    exporter = EXPORTERS[precision]
    proto = exporter.build(model)
    props = {"eurosat.precision": precision, "eurosat.holds": exporter.holds, "eurosat.input": INPUT_SPEC,
             "eurosat.classes": json.dumps(list(CLASS_NAMES)), "eurosat.compute_cpu": exporter.compute_cpu,
             "eurosat.compute_cuda": exporter.compute_cuda, **(metadata or {})}
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def exported(model: nn.Module, precision: str, metadata: dict[str, str] | None = None) -> bytes:
    """The file's bytes: exported, checked by onnx.checker, and run by ONNX Runtime on batches of 1
    and 3 (the batch dimension is dynamic), before anything is written."""
    from eurosat.deploy.runtime import session

    data = onnx_model(model, precision, metadata).SerializeToString()
    sess = session(data)
    for n in (1, 3):
        out = sess.run(None, {INPUT: np.zeros((n, 3, 64, 64), dtype=np.float32)})[0]
        if out.shape != (n, len(CLASS_NAMES)) or not np.isfinite(out).all():
            raise ValueError(f"{precision}: ONNX Runtime gave {out.shape} for a batch of {n}")
    return data


def write(path: Path, data: bytes) -> Path:
    """Atomically: a failure leaves no file, or the previous one."""
    return atomic_write(Path(path), lambda fh: fh.write(data))


def initializer_bytes(path: Path) -> dict[str, int]:
    """Bytes of the file's initializers by element type (the INT8 file's weights really are int8)."""
    import onnx

    counts: dict[str, int] = {}
    for tensor in onnx.load(str(path)).graph.initializer:
        kind = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
        counts[kind] = counts.get(kind, 0) + len(tensor.raw_data or onnx.numpy_helper.to_array(tensor).tobytes())
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m eurosat.export", description=doc[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(doc[1:]))
    parser.add_argument("model", type=Path, help="a model file: an FP32 checkpoint (final_model.pt) or a model_<precision>.pt")
    parser.add_argument("--to", required=True, choices=["onnx"], help="the format to export to")
    parser.add_argument("--precisions", help=f"comma-separated, from: {', '.join(EXPORTERS)} (an FP32 checkpoint only) "
                        f"[{','.join(DEFAULT_PRECISIONS)}; a quantized file: its own]")
    parser.add_argument("--out-dir", type=Path, help="output folder [the model's folder]")
    parser.add_argument("--data", help="where the INT8 calibration images come from [the data the model's run trained "
                        f"on; else ${DATA_ENV}; else the run-config default]")
    parser.add_argument("--calibration-samples", type=int, default=1024, help="INT8 calibration images [%(default)s]")
    parser.add_argument("--calibration-split", choices=["train", "validation"], default="train",
                        help="split the calibration images come from (never test) [%(default)s]")
    return parser.parse_args(argv)


def plan(path: Path, asked: str | None) -> tuple[str, list[str]]:
    """(the file's own precision, the precisions to export), or a one-line error before any work."""
    names = [p.strip() for p in asked.split(",") if p.strip()] if asked is not None else None
    if names == []:
        raise ValueError(f"--precisions: empty; name at least one of: {', '.join(EXPORTERS)}")
    _, config = read(load_checkpoint(path), path)
    if not isinstance(config, Fp32Config):
        if config.name not in EXPORTERS:
            raise ValueError(f"{path}: {refusal(config.name)}")
        if names and names != [config.name]:
            raise ValueError(f"--precisions: {path} is a {config.name} model file; only an FP32 checkpoint is "
                             "exported to other precisions")
        return config.name, [config.name]
    names = names or list(DEFAULT_PRECISIONS)
    for name in names:
        if name not in EXPORTERS:
            raise ValueError(f"--precisions: {refusal(name) if name in CONFIGS or name in REFUSED else f'unknown {name}'}"
                             + ("" if name in CONFIGS else f"; allowed: {', '.join(EXPORTERS)}"))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--precisions: {', '.join(repeated)} named twice")
    return "fp32", names


@one_line_errors(DataError, ValueError)  # CheckpointError, OutputPathError, DeployUnavailable: ValueErrors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_onnx()
    if not 1 <= args.calibration_samples <= 10**6:
        raise ValueError(f"--calibration-samples: must be in [1, 1000000], got {args.calibration_samples}")
    own, names = plan(args.model, args.precisions)
    out_dir = check_output_files(args.out_dir or args.model.resolve().parent, [f"model_{n}.onnx" for n in names],
                                 "--out-dir", inputs=[args.model])
    calibration, about = None, {}
    if own == "fp32" and any(needs_calibration(CONFIGS[n]) for n in names):
        data = args.data or run_data(args.model) or os.environ.get(DATA_ENV) or str(project_defaults()["data"])
        source = resolve_source(data, splits=(args.calibration_split,))
        check_source(source)  # the PTQ report's data check: a bad folder is one line, before any work
        calibration = calibration_batches(source, args.calibration_split, args.calibration_samples)
        samples = sum(len(b) for b in calibration)  # the split may hold fewer than asked
        print(f"calibrating INT8 on {samples} {args.calibration_split} images of {source.name}", flush=True)
        about = {"eurosat.calibration": json.dumps({"source": source.name, "split": args.calibration_split,
                                                    "samples": samples})}
    net = load_fp32_net(args.model) if own == "fp32" else None
    files = {}
    for name in names:  # every file made and checked before the first is written
        model = quantize(net, CONFIGS[name], calibration) if net is not None else load(args.model)[0]
        files[name] = exported(model, name, {"eurosat.source": args.model.name, **(about if name == "int8" else {})})
        print(f"  {name}: exported, onnx.checker and ONNX Runtime ok", flush=True)
    for name, data in files.items():
        path = write(out_dir / f"model_{name}.onnx", data)
        kinds = ", ".join(f"{k} {v / MB:.3f} MB" for k, v in sorted(initializer_bytes(path).items()))
        print(f"wrote {path} ({len(data) / MB:.3f} MB; initializers: {kinds})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
