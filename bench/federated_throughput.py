"""Training throughput of a federated round in simulation vs a plain PyTorch loop, same run.

    .venv/bin/python bench/federated_throughput.py [--data ../shared/data/eurosat] [--rounds 2]

Federated: a real `flwr run` (10 supernodes, the default local recipe) for `--rounds` rounds, on
each of `--engines` (the Simulation Engine, and/or the Deployment Engine: SuperLink and SuperNodes
as separate processes);
throughput = images trained in the last round / that round's training phase (send, train,
receive, aggregate; server evaluation excluded). The first round also pays for Ray actor
start-up and per-process decoding, so the last round is the steady state; both are printed.
Plain: the same client partitions' images, same local recipe (epochs, batch size, optimiser,
augmentation), one process. Targets: simulation >= 0.85 x plain; deployment >= 0.8 x plain (with `--set num-supernodes=2`).
`--gpus 1` runs them on CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eurosat.fl.config import RunConfig, load_run_config  # noqa: E402
from eurosat.launch.launcher import Engine, Resources, launch  # noqa: E402
from eurosat.fl.task import client_data  # noqa: E402
from eurosat.train.loop import seed_everything, train  # noqa: E402


def plain_throughput(cfg: RunConfig, device: torch.device) -> tuple[float, int]:
    """Every client's partition trained in turn in this process with the run's own local recipe."""
    parts = [client_data(cfg, p, cfg.num_supernodes)[0] for p in range(cfg.num_supernodes)]
    local = cfg.local_training()
    seed_everything(0)
    start = time.perf_counter()
    stats = [train(cfg.recipe.make_model(), part, local, cfg.recipe.compute_plan(device)) for part in parts]
    seconds = time.perf_counter() - start
    images = sum(s["train_images"] for s in stats)
    assert images == local.epochs * sum(len(p) for p in parts)
    return images / seconds, images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eurosat"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client-cpus", type=int, help="CPUs per simulated client [the launcher's share: --cpus ÷ clients a round]")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs for the federated run (and the plain loop "
                        "runs on CUDA) [0]")
    parser.add_argument("--client-gpus", type=float, help="GPUs per client [--gpus / clients]")
    parser.add_argument("--set", default="", help="run-config overrides for all, e.g. 'num-supernodes=2'")
    parser.add_argument("--engines", default="simulation", help="comma-separated: simulation, deployment [simulation]")
    args = parser.parse_args()
    overrides = f"data='{args.data}' {args.set}"
    cfg = load_run_config([overrides])
    device = torch.device("cuda" if args.gpus > 0 else "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; data {args.data}", flush=True)

    plain, images = plain_throughput(cfg, device)
    print(f"plain loop: {images} images, {plain:.1f} images/s", flush=True)

    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory() as out:
            code, run_dir = launch([f"{overrides} num-server-rounds={args.rounds} time-limit-min=0 output-dir='{out}'"],
                                   resources=Resources(client_cpus=args.client_cpus, gpus=args.gpus,
                                                       client_gpus=args.client_gpus),
                                   engine=Engine(engine))
            if code != 0:
                print(f"{engine}: federated run did not complete (exit {code})", file=sys.stderr)
                return 1
            rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
        rates = [r["client_train_images"] / r["train_phase_seconds"] for r in rounds]
        last = rounds[-1]
        print(f"{engine}: round images {int(last['client_train_images'])}, per-round images/s "
              f"{', '.join(f'{x:.1f}' for x in rates)}; clients ran as {last['client_compute']}")
        print(f"  last round: {last['train_phase_seconds']:.1f} s training phase, {last['client_train_seconds']:.1f} s "
              f"summed inside clients' train loops")
        print(f"  ratio {engine}/plain (last round): {rates[-1] / plain:.3f}  (target >= "
              f"{0.85 if engine == 'simulation' else 0.8})")
        print(f"  ratio {engine}/plain (first round, with start-up): {rates[0] / plain:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
