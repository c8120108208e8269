"""The server's step: how a round's aggregated update moves the global model (`strategy`).

- `fedavg`, `fedprox`, `scaffold`: base + `server-lr` x update (FedProx differs on the client: its
  proximal term, `proximal-mu`, in eurosat/train/loop.py; SCAFFOLD in its control variates, which
  the server keeps and sends (eurosat/fl/scaffold.py): Flower has no SCAFFOLD on its Message API).
- `fedadam`, `fedyogi`, `fedadagrad` (`server-lr` is their eta, with `tau`, `beta-1`, `beta-2`) and
  `fedavgm` (`server-lr`, `server-momentum`): Flower's own strategy objects take the step. Each is
  handed one reply holding base + update with weight 1, so its FedAvg averaging returns exactly that
  and its server optimizer (moments, momentum) does the rest: Flower's code, composed, not copied.
  The update itself comes from this project's checked, decoded, possibly robust aggregate
  (robust.py), so every strategy keeps the budget, the transport, the checks and the records.

Only the model's parameters take the optimizer's step. Its buffers are not parameters: batch-norm
running statistics (`running_mean`, `running_var`) take the clients' average as FedAvg does, and
integer buffers (`num_batches_tracked`) are added as they come. Flower's strategies step every
array, which breaks batch norm: FedAvgM's momentum overshoots a falling `running_var` below zero
(NaN at evaluation: chance accuracy at Dirichlet alpha 0.1), and FedAdam's eta-sized steps all but
freeze the statistics at their initial values. The optimizer's state (`state()`) is saved with each checkpoint and `load()`ed
on `--resume`, so a resumed FedAdam continues its moments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi

from eurosat.fl.robust import as_replies
from eurosat.fl.state import State, add, contiguous, is_parameter

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "scaffold")
ADAPTIVE = ("fedadam", "fedyogi", "fedadagrad")  # FedOpt: server-lr is eta, moments per weight
FLOWER = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad, "fedavgm": FedAvgM}


@dataclass(frozen=True)
class ServerOptimizer:
    """The `strategy` and its server-side keys, resolved once (`RunConfig.server_optimizer`)."""

    strategy: str = "fedavg"
    lr: float = 1.0  # server-lr: FedAvg's scale, FedOpt's eta, FedAvgM's server learning rate
    momentum: float = 0.0  # server-momentum (fedavgm)
    tau: float = 1e-3  # FedOpt's adaptivity
    beta_1: float = 0.9
    beta_2: float = 0.99

    def flower(self):
        """Flower's strategy object that takes this step, or None (fedavg, fedprox, scaffold)."""
        if self.strategy in ADAPTIVE:
            kwargs = {"eta": self.lr, "tau": self.tau}
            if self.strategy != "fedadagrad":  # FedAdagrad fixes its betas at 0 (no momentum, no decay)
                kwargs.update(beta_1=self.beta_1, beta_2=self.beta_2)
            return FLOWER[self.strategy](**kwargs)
        if self.strategy == "fedavgm":
            return FedAvgM(server_learning_rate=self.lr, server_momentum=self.momentum)
        return None


class ServerStep:
    """One run's server step, with the optimizer state it carries from round to round."""

    def __init__(self, options: ServerOptimizer = ServerOptimizer()):
        self.options = options
        self.flower = options.flower()

    def apply(self, server_round: int, base: State, update: State) -> State:
        """The new global model from the float32 `base` and the round's aggregated `update`."""
        if self.flower is None:
            return scaled_step(base, update, self.options.lr)
        floats = [k for k, v in base.items() if is_parameter(k, v)]
        moved = {k: contiguous(base[k] + update[k]) for k in floats}
        current = {k: np.asarray(base[k]) for k in floats}
        # Flower's FedOpt keeps the model as a dict of arrays, FedAvgM as an ArrayRecord.
        self.flower.current_arrays = (ArrayRecord({k: Array(contiguous(v)) for k, v in current.items()})
                                      if isinstance(self.flower, FedAvgM) else current)
        arrays, _ = self.flower.aggregate_train(server_round, as_replies([moved], [1.0]))
        new = {k: arrays[k].numpy().astype(base[k].dtype) for k in floats}
        return {k: new[k] if k in new else (base[k] + update[k]).astype(base[k].dtype) for k in base}

    def state(self) -> dict[str, dict[str, np.ndarray]]:
        """The optimizer's state to checkpoint: FedOpt's moments, FedAvgM's momentum; {} for none."""
        f = self.flower
        if f is None:
            return {}
        if isinstance(f, FedAvgM):
            if f.momentum_vector is None or f.current_arrays is None:
                return {}
            return {"momentum": dict(zip(f.current_arrays.keys(), f.momentum_vector))}
        return {name: dict(value) for name, value in (("m_t", f.m_t), ("v_t", f.v_t)) if value}

    def load(self, saved: Mapping[str, Mapping[str, object]]) -> None:
        """Continue from a checkpoint's `state()` (tensors or arrays)."""
        f = self.flower
        if f is None or not saved:
            return
        arrays = {name: {k: np.asarray(v) for k, v in values.items()} for name, values in saved.items()}
        if isinstance(f, FedAvgM):
            f.momentum_vector = list(arrays["momentum"].values()) if "momentum" in arrays else None
            return
        f.m_t, f.v_t = arrays.get("m_t"), arrays.get("v_t")


def scaled_step(base: State, mean: State, server_lr: float = 1.0) -> State:
    """base + `server-lr` x the averaged update: a plain scaling of the step (1 = FedAvg; sign and
    sparse updates may want another); buffers take the update unscaled (`is_parameter`)."""
    if server_lr == 1.0:
        return add(base, mean)
    return {k: (v + (server_lr * mean[k] if is_parameter(k, v) else mean[k])).astype(v.dtype)
            for k, v in base.items()}
