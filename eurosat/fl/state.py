"""A model's state as NumPy arrays, and the arithmetic FedAvg does on it.

The server, the wire codecs and the clients' uploads all hold a model as `{name: ndarray}`:
float tensors in float32, integer buffers (`num_batches_tracked`) in their own dtype. Deltas,
sums and example-weighted means live here, once, for all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

State = dict[str, np.ndarray]


def contiguous(x: np.ndarray) -> np.ndarray:
    """C-contiguous ndarray, 0-d kept 0-d (np.ascontiguousarray makes it 1-d; arithmetic on 0-d
    arrays returns NumPy scalars, which flwr's Array refuses)."""
    x = np.asarray(x)
    return x if x.flags.c_contiguous else x.copy(order="C")


def raw_nbytes(state: Mapping[str, np.ndarray]) -> int:
    """Bytes the tensors take in their own dtype (the fp32 baseline for float models)."""
    return sum(np.asarray(v).nbytes for v in state.values())


def digest(state: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes, in key order: two ends check they hold the
    same model without sending it."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = contiguous(state[k])
        h.update(f"{k}:{v.dtype.str}:{v.shape};".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def to_numpy(state_dict: Mapping[str, object]) -> State:
    return {k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> State:
    return {k: contiguous(a[k] - b[k]) for k in a}  # 0-d minus 0-d is a NumPy scalar


def add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> State:
    return {k: (a[k] + b[k]).astype(a[k].dtype) for k in a}


def weighted_mean(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> State:
    """Average decoded float32 states in float64; integer tensors are rounded back to integers."""
    if not states:
        raise ValueError("nothing to aggregate: no client update arrived")
    total = float(sum(weights))
    out: State = {}
    for key, first in states[0].items():
        acc = sum(np.asarray(s[key], dtype=np.float64) * (w / total) for s, w in zip(states, weights))
        out[key] = acc.astype(np.float32) if np.issubdtype(first.dtype, np.floating) else np.rint(acc).astype(first.dtype)
    return out
