"""What a bit-width choice saves: exact bytes of a packed model, part by part.

Counts tensor bytes (what the model *is*), and, where files exist, bytes on disk (what
torch.save adds around them). The parts:
- packed weights: conv/linear weights at N bits, rows padded to whole bytes;
- overhead: per-channel scales (float32; symmetric grids need no zero points) and the
  activation ranges (two float32 per layer) when activations are quantized;
- unquantized: biases, BatchNorm parameters and statistics (FP32), integer buffers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from eurosat.train.checkpoints import CheckpointError, load_checkpoint, net_from_state, state_dict_of
from eurosat.common.files import save_torch, write_json
from eurosat.common.paths import check_output_file
from eurosat.quant.packing import packed_nbytes
from eurosat.quant.qat import QATConfig, fp32_state, prepare_qat, qat_layers
from eurosat.quant.registry import Fp32Config, PackedConfig, load, read, save
from eurosat.quant.recipe import ACTIVATION_BITS, WEIGHT_BITS

MB = 1024 * 1024


def activation_bytes(model: nn.Module, bits: int) -> tuple[int, int]:
    """Bytes of every conv/linear input in one forward pass of one image: (FP32, at `bits`)."""
    sizes: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].numel()))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return 4 * sum(sizes), -(-sum(sizes) * bits // 8)


def compression_report(model: nn.Module, packed_file: Path | None = None, fp32_file: Path | None = None) -> dict:
    """Report for a fake-quantized model (see qat.prepare_qat)."""
    layers = qat_layers(model)
    first = next(iter(layers.values()))
    wbits, abits = first.weight_bits, first.activation_bits
    quantized_keys = {f"{name}.weight" for name in layers}
    fp32_bytes = packed = overhead = unquantized = quantized_fp32 = quantized_params = 0
    for key, value in model.state_dict().items():
        if key.endswith("act_range"):
            overhead += value.numel() * 4 if abits < 32 else 0
            continue
        nbytes = value.numel() * (4 if value.is_floating_point() else value.element_size())
        fp32_bytes += nbytes
        if key in quantized_keys:
            quantized_fp32 += nbytes
            quantized_params += value.numel()
            if wbits == 16:
                packed += value.numel() * 2
            else:
                packed += packed_nbytes(tuple(value.shape), wbits)
                overhead += value.shape[0] * 4  # one float32 scale per output channel
        else:
            unquantized += nbytes
    compressed = packed + overhead + unquantized
    ideal = quantized_params * wbits / 8 + overhead + unquantized
    act_fp32, act_q = activation_bytes(model, abits)
    report = {
        "weight_bits": wbits,
        "activation_bits": abits,
        "fp32_size_bytes": fp32_bytes,
        "fp32_size_mb": fp32_bytes / MB,
        "compressed_size_bytes": compressed,
        "compressed_size_mb": compressed / MB,
        "compression_ratio": fp32_bytes / compressed,
        "size_reduction_percent": 100.0 * (1 - compressed / fp32_bytes),
        "parts": {
            "packed_weight_bytes": packed,
            "scale_and_zero_point_bytes": overhead,
            "unquantized_bytes": unquantized,
            "quantized_parameters": quantized_params,
        },
        "ideal_size_bytes": ideal,
        "size_vs_ideal": compressed / ideal,
        "weight_compression_ratio": quantized_fp32 / packed,
        "activation_compression_ratio": act_fp32 / act_q,
        "activation_bytes_per_image": {"fp32": act_fp32, "quantized": act_q},
        "model_compression_ratio": fp32_bytes / compressed,
    }
    if packed_file is not None and fp32_file is not None:
        on_disk = os.path.getsize(packed_file)
        report["files"] = {
            "fp32_file": str(fp32_file), "fp32_file_bytes": os.path.getsize(fp32_file),
            "packed_file": str(packed_file), "packed_file_bytes": on_disk,
            "file_compression_ratio": os.path.getsize(fp32_file) / on_disk,
            "packed_file_vs_ideal": on_disk / ideal,
        }
    return report


def format_report(report: dict) -> str:
    p = report["parts"]
    rows = [
        ("bits (weights/activations)", f"{report['weight_bits']}/{report['activation_bits']}"),
        ("FP32 size", f"{report['fp32_size_bytes']:,} B ({report['fp32_size_mb']:.3f} MB)"),
        ("compressed size", f"{report['compressed_size_bytes']:,} B ({report['compressed_size_mb']:.3f} MB)"),
        ("  packed weights", f"{p['packed_weight_bytes']:,} B"),
        ("  scales / zero points", f"{p['scale_and_zero_point_bytes']:,} B"),
        ("  unquantized (bias, BN)", f"{p['unquantized_bytes']:,} B"),
        ("compression ratio", f"{report['compression_ratio']:.2f}x ({report['size_reduction_percent']:.1f}% smaller)"),
        ("weight compression", f"{report['weight_compression_ratio']:.2f}x"),
        ("activation compression", f"{report['activation_compression_ratio']:.2f}x"),
        ("size vs ideal", f"{report['size_vs_ideal']:.4f}"),
    ]
    if "files" in report:
        f = report["files"]
        rows.append(("files on disk", f"{f['fp32_file_bytes']:,} B -> {f['packed_file_bytes']:,} B "
                                      f"({f['file_compression_ratio']:.2f}x, {f['packed_file_vs_ideal']:.3f} of ideal)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def measure_checkpoint(path: Path, weight_bits: int, activation_bits: int, out: Path | None = None) -> tuple[dict, Path]:
    """The report for any FP32 or packed checkpoint re-quantized at the given widths, measured on
    real files, written as JSON (default `compression_w<W>a<A>.json` beside the checkpoint)."""
    if weight_bits not in WEIGHT_BITS or activation_bits not in ACTIVATION_BITS:
        raise ValueError(f"--weight_bits must be one of {WEIGHT_BITS} and --activation_bits one of {ACTIVATION_BITS}")
    if weight_bits == 32:
        raise ValueError("--weight_bits 32 is the FP32 baseline itself; choose 16 or fewer")
    obj = load_checkpoint(path)
    _, stored = read(obj, path)
    if isinstance(stored, PackedConfig):
        latent = fp32_state(load(path, expect=PackedConfig)[0])
    elif isinstance(stored, Fp32Config):
        latent = state_dict_of(obj, path)
    else:
        raise CheckpointError(f"{path}: a {stored.name} model file; give an FP32 or packed N-bit checkpoint")
    model = prepare_qat(net_from_state(latent, path), QATConfig(weight_bits, activation_bits)).eval()
    out = check_output_file(out or Path(path).resolve().parent / f"compression_w{weight_bits}a{activation_bits}.json",
                            "--out")
    with tempfile.TemporaryDirectory() as tmp:  # real files, to report bytes on disk too
        fp32_file = save_torch(Path(tmp) / "fp32.pt", latent)
        packed_file = save(model, PackedConfig(weight_bits, activation_bits), Path(tmp) / f"{weight_bits}bit.pt")
        report = compression_report(model, packed_file, fp32_file)
    report["checkpoint"] = str(Path(path).resolve())
    for key in ("fp32_file", "packed_file"):
        report["files"].pop(key)
    return report, write_json(out, report)
