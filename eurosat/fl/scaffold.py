"""SCAFFOLD's control variates (`strategy = "scaffold"`): client drift corrected on hard non-IID data.

Karimireddy et al. (2020) correct each local step by `c - c_i`, where `c_i` estimates the direction
client i's own data pulls in and `c` the federation's mean of them; option II updates both from the
model change alone, at no extra computation: `c_i+ = c_i - c + (x - y_i) / (K lr)`. Here the local
optimizer is usually Adam, so the controls live in the units of a step's update per unit of learning
rate rather than of a gradient: the client moves each trainable parameter by `-lr x (c - c_i)` after
the optimizer's own step (eurosat/train/loop.py), and `K lr` is the sum of the learning rates of the
steps it really took (`TrainReport.lr_sum`; a cosine span or a deadline makes them differ). With
plain SGD that is the paper's algorithm exactly.

The server keeps `c` and every `c_i` (by partition; a partition that never trained has `c_i = 0`), so
a node needs no state of its own and a resumed run continues them from `checkpoint.pt`. Each train
message carries the node's correction `c - c_i` (`control`, in the round's downlink codec, counted as
traffic: fp32 SCAFFOLD sends about twice FedAvg's downlink bytes); the upload is FedAvg's. Only
trainable parameters have controls: batch-norm statistics and integer buffers do not.
After each round, for every accepted update: `c_i+ = c_i - c - delta_i / lr_sum_i`, and
`c += (1 / N) x sum(c_i+ - c_i)` over the round's clients, N the federation's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from eurosat.fl.state import State

CONTROL = "control"  # the train message's ArrayRecord holding the node's correction c - c_i
PREFIX = "scaffold_c"  # checkpoint names: `scaffold_c` the federation's control, `scaffold_c_<partition>` each client's
_GLOBAL, _CLIENT = PREFIX, PREFIX + "_"


class Controls:
    """The server's SCAFFOLD state for one run: `c` and each partition's `c_i`, float32, by parameter name."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], num_partitions: int):
        self.shapes = dict(shapes)
        self.num_partitions = max(int(num_partitions), 1)
        self.c: State = {k: np.zeros(s, np.float32) for k, s in self.shapes.items()}
        self.clients: dict[int, State] = {}

    @property
    def started(self) -> bool:
        """Whether any control is non-zero yet (before the first update every correction is 0: none is sent)."""
        return bool(self.clients)

    def correction(self, partition: int | None) -> State:
        """`c - c_i` for the node holding `partition` (unknown or never trained: `c_i = 0`)."""
        own = self.clients.get(partition) if partition is not None else None
        return {k: (v - own[k] if own is not None else v.copy()) for k, v in self.c.items()}

    def update(self, updates: Iterable[tuple[int, State, float]]) -> None:
        """One round's accepted updates, each (partition, decoded float32 delta, sum of the
        learning rates of its steps); an update without steps (lr_sum 0) changes nothing."""
        change = {k: np.zeros(s, np.float32) for k, s in self.shapes.items()}
        for partition, delta, lr_sum in updates:
            if not lr_sum > 0:
                continue
            old = self.clients.get(partition) or {k: np.zeros(s, np.float32) for k, s in self.shapes.items()}
            new = {k: (old[k] - self.c[k] - np.asarray(delta[k], np.float32) / np.float32(lr_sum)).astype(np.float32)
                   for k in self.shapes}
            for k in self.shapes:
                change[k] += new[k] - old[k]
            self.clients[partition] = new
        for k in self.shapes:
            self.c[k] = (self.c[k] + change[k] / np.float32(self.num_partitions)).astype(np.float32)

    def state(self) -> dict[str, dict[str, np.ndarray]]:
        """What `checkpoint.pt` keeps ({} before the first update)."""
        if not self.started:
            return {}
        return {_GLOBAL: dict(self.c), **{f"{_CLIENT}{p}": dict(v) for p, v in sorted(self.clients.items())}}

    def load(self, saved: Mapping[str, Mapping[str, object]]) -> None:
        """Continue from a checkpoint's `state()` (tensors or arrays); other entries are not ours."""
        if _GLOBAL not in saved:
            return
        as_state = lambda values: {k: np.asarray(values[k], np.float32) for k in self.shapes}  # noqa: E731
        self.c = as_state(saved[_GLOBAL])
        self.clients = {int(name[len(_CLIENT):]): as_state(values) for name, values in saved.items()
                        if name.startswith(_CLIENT)}


def trainable_shapes(named_parameters: Iterable[tuple[str, object]]) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, from a model's `named_parameters()`: the tensors that have controls."""
    return {name: tuple(p.shape) for name, p in named_parameters}


def in_order(correction: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]) -> list[np.ndarray]:
    """The correction as a list in the model's parameter order (`shapes`: `trainable_shapes` of the
    model); a missing, extra or misshapen tensor is a ValueError (a message for another model must
    not train this one, and a small tensor would broadcast silently)."""
    if set(correction) != set(shapes):
        raise ValueError(f"the SCAFFOLD correction names {sorted(set(correction) ^ set(shapes))[:3]} "
                         "that this model's parameters do not match")
    wrong = [k for k, s in shapes.items() if tuple(np.shape(correction[k])) != tuple(s)]
    if wrong:
        raise ValueError(f"the SCAFFOLD correction for {wrong[0]} has shape {tuple(np.shape(correction[wrong[0]]))}, "
                         f"the parameter {tuple(shapes[wrong[0]])}")
    return [np.asarray(correction[n], np.float32) for n in shapes]
