"""What a node keeps between rounds besides its transport replica (link.py): the local
optimizer's state, with `local-optimizer-state = "keep"`.

A fresh Adam starts every round with empty moments, so its first steps move every weight by about
the learning rate whatever its gradient; keeping the moments from the node's last round avoids
that. Flower keeps `context.state` per node within a run (simulation and Deployment Engine alike);
a node that restarted simply starts with fresh moments.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from eurosat.fl.state import contiguous

OPTIMIZER_STATE = "local-optimizer-state"


def load_optimizer_state(store: RecordDict) -> dict[str, dict[str, torch.Tensor]]:
    """The state kept by the node's last round ({} if none), as `training.train` takes it."""
    record = store.array_records.get(OPTIMIZER_STATE)
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, array in (record or {}).items():
        index, name = key.split(".", 1)
        state.setdefault(index, {})[name] = torch.from_numpy(np.array(array.numpy()))
    return state


def save_optimizer_state(store: RecordDict, state: dict[str, dict[str, torch.Tensor]]) -> None:
    store[OPTIMIZER_STATE] = ArrayRecord({f"{index}.{name}": Array(contiguous(t.numpy()))
                                          for index, tensors in state.items() for name, t in tensors.items()})
