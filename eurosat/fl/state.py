"""A model's state as NumPy arrays, and the arithmetic FedAvg does on it.

The server, the wire codecs and the clients' uploads all hold a model as `{name: ndarray}`:
float tensors in float32, integer buffers (`num_batches_tracked`) in their own dtype. Deltas,
sums and example-weighted means live here, once, for all of them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence

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


STATISTICS = (".running_mean", ".running_var")  # torch's batch-norm buffers


def is_parameter(key: str, value: np.ndarray) -> bool:
    """A trained weight, which a server optimizer may step; not a buffer (batch-norm statistics by
    torch's names, integer counters), which takes the clients' average."""
    return np.issubdtype(value.dtype, np.floating) and not key.endswith(STATISTICS)


def is_statistic(key: str, value: np.ndarray) -> bool:
    """A batch-norm running statistic: data moments, not a trained weight."""
    return np.issubdtype(value.dtype, np.floating) and key.endswith(STATISTICS)


def norm(state: Mapping[str, np.ndarray], keep: Callable[[str, np.ndarray], bool]) -> float:
    """The L2 norm over the arrays `keep` selects, summed in float64."""
    return math.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for k, v in state.items() if keep(k, v)))


def nonnegative_variances(state: Mapping[str, np.ndarray]) -> State:
    """`state` with every batch-norm running variance raised to at least 0: a variance cannot be
    negative, and a negative one is NaN at evaluation (a hostile update could drive one there)."""
    return {k: (np.maximum(v, 0, dtype=v.dtype) if k.endswith(".running_var") else v) for k, v in state.items()}


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
