"""Does a server learning rate above 1 help FedAvg here? The measurement behind leaving it out.

    .venv/bin/python bench/server_step.py [--data ../shared/data/eurosat] [--etas 1,2,3]
        [--fraction 0.25] [--rounds 5] [--clients 10] [--test 1000]

A server step `eta` applies `eta x` the clients' mean update to the trainable parameters (FedAvg is
eta = 1; FedExP-style extrapolation is eta > 1); BatchNorm statistics are averaged as always.
To measure many settings cheaply this runs FedAvg in one process, the clients one after the
other, with the package's own local loop (`eurosat.train.loop.train`, the recipe it was measured with: Adam,
cosine with one warm-up round, batch 32, one local epoch, no augmentation) on `--fraction` of each client's IID partition of the
real train split, and evaluates on a seeded `--test`-image sample of the test split. Prints the
accuracy after every round for each eta; every eta starts from the same model and batch order.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import bench_parser  # noqa: E402
from eurosat.fl.config import load_run_config  # noqa: E402
from eurosat.data.loading import load_client_data, load_split, resolve_source  # noqa: E402
from eurosat.train.model import Net  # noqa: E402
from eurosat.train.schedule import RoundPlanner  # noqa: E402
from eurosat.train.loop import ComputePlan, evaluate, train  # noqa: E402
from eurosat.common.cli import fail  # noqa: E402

RECIPE = "local-epochs=1 augment='none'"  # the recipe behind the README's figures, whatever the defaults


def run(eta: float, clients, test, rounds: int, seed: int) -> list[float]:
    cfg = load_run_config([RECIPE], ROOT)
    local = cfg.local_training()
    planner = RoundPlanner(local.schedule, rounds, lambda cap: cap)
    plan = ComputePlan(torch.device("cpu"))
    torch.manual_seed(seed)
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {name for name, _ in model.named_parameters()}
    accuracy = []
    for rnd in range(1, rounds + 1):
        span = planner.span(rnd)
        deltas = []
        for i, data in enumerate(clients):
            local_model = Net()
            local_model.load_state_dict(state)
            train(local_model, data, local, plan, seed=rnd * 100 + i, span=span)
            deltas.append({k: local_model.state_dict()[k].float() - state[k].float() for k in state})
        for k in state:
            mean = sum(d[k] for d in deltas) / len(deltas)
            step = eta * mean if k in trainable else mean
            state[k] = (state[k].float() + step).to(state[k].dtype)
        model.load_state_dict(state)
        accuracy.append(evaluate(model, test)["accuracy"])
        print(f"eta {eta:g} round {rnd}: test accuracy {100 * accuracy[-1]:.2f} %", flush=True)
    return accuracy


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--etas", default="1,2,3", help="comma-separated server learning rates [1,2,3]")
    parser.add_argument("--fraction", type=float, default=0.25, help="share of each client's partition [0.25]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--test", type=int, default=1000, help="test images, a seeded sample [1000]")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    try:
        etas = [float(e) for e in args.etas.split(",")]
        source = resolve_source(str(args.data))
    except ValueError as exc:
        return fail(str(exc))
    torch.set_num_threads(1)
    started = time.perf_counter()
    clients = []
    for i in range(args.clients):
        train_data = load_client_data(source, i, args.clients)[0]
        clients.append(train_data.take(int(len(train_data) * args.fraction), seed=i))
    test = load_split(source, "test").take(args.test, seed=0)
    results = {eta: run(eta, clients, test, args.rounds, args.seed) for eta in etas}
    print(f"\n{'eta':>5} " + " ".join(f"{'round ' + str(r):>9}" for r in range(1, args.rounds + 1)))
    for eta, acc in results.items():
        print(f"{eta:>5g} " + " ".join(f"{100 * a:>9.2f}" for a in acc))
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
