"""Loading model files safely: `torch.load(weights_only=True)` with one-line errors for every way
a file can be wrong (missing, empty, truncated, foreign, a pickle that would run code), and state
dicts of finite tensors only.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from eurosat.train.model import Net


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default container
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")  # after the PROTO opcode 0x80: the legacy format


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint; the message is one line for the user."""


def load_checkpoint(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)` with one-line errors for every way a file can be wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    try:  # torch's unpickler calls any foreign bytes "would run code": tell those apart first
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from None
    if not (head.startswith(ZIP_MAGIC) or (head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS)):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip archive nor a pickle; "
                              f"the file starts with {head!r})")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects that would run code on load "
                "(only tensors and plain containers are accepted)"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {reason})") from None
    except Exception as exc:  # noqa: BLE001 - the unpickler raises KeyError etc. on arbitrary bytes
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__} while reading)") from None


def load_state_dict(path: str | Path, finite: bool = True) -> dict[str, torch.Tensor]:
    """A plain state dict, or the `state_dict` inside one of our round checkpoints.

    `finite`: refuse a model with a NaN or Inf anywhere (quantizing it would fail in ways that
    name nothing useful).
    """
    return state_dict_of(load_checkpoint(path), path, finite)


def state_dict_of(obj: Any, path: str | Path, finite: bool = True) -> dict[str, torch.Tensor]:
    """`load_state_dict` for an object already loaded from `path` (named in errors)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if (not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) for k in obj)
            or not all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    complex_ = [k for k, v in obj.items() if v.is_complex()]
    if complex_:
        raise CheckpointError(f"{path}: {len(complex_)} tensor(s) are complex (first: {complex_[0]}); a model holds real numbers")
    if finite:
        check_finite(obj, path)
    return dict(obj)


def check_finite(state: Mapping[str, Any], path: str | Path) -> None:
    """Refuse a model with a NaN or Inf in any floating tensor of `state` (other values are skipped):
    as float32, the precision every tool computes in, so a float64 1e300 is Inf there."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v.float()).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values (first: {bad[0]}); "
                              "a diverged model cannot be quantized, compared or used")


def net_from_state(state: Mapping[str, torch.Tensor], path: str | Path) -> Net:
    """A `Net` holding `state` (from `path`, named in the error); another architecture is a
    one-line CheckpointError, not PyTorch's list of every mismatched key."""
    net = Net()
    for name, target in net.state_dict().items():
        given = state.get(name)
        if isinstance(given, torch.Tensor) and target.is_floating_point() and not given.is_floating_point():
            raise CheckpointError(f"{path}: {name} holds {str(given.dtype).removeprefix('torch.')} values; "
                                  "a trained Net's weights are floating point")
    if any(k.endswith(".act_range") for k in state):
        raise CheckpointError(f"{path}: a QAT run's round checkpoint (fake-quantized latent weights); "
                              "give the run's final_model_<N>bit.pt (packed) or final_model.pt (its latent FP32 weights)")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{path}: not a EuroSAT Net state dict (another architecture): {detail[:200]}") from None
    return net
