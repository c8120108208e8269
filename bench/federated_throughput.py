"""Training throughput of a federated round in simulation vs a plain PyTorch loop, same run.

    .venv/bin/python bench/federated_throughput.py [--data ../shared/data/eurosat] [--rounds 2]

Federated: a real `flwr run` (10 supernodes, 2 local epochs, batch 32) for `--rounds` rounds;
throughput = images trained in the last round / that round's training phase (send, train,
receive, aggregate; server evaluation excluded). The first round also pays for Ray actor
start-up and per-process decoding, so the last round is the steady state; both are printed.
Plain: the same client partitions' images, same epochs, batch size, optimiser, threads, one
process. Target: federated >= 0.85 x plain.
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

from eurosat.config import load_run_config  # noqa: E402
from eurosat.data import TensorData, load_client_data, resolve_source  # noqa: E402
from eurosat.launch import launch  # noqa: E402
from eurosat.model import Net  # noqa: E402
from eurosat.training import ComputePlan, seed_everything, train  # noqa: E402


def plain_throughput(data: str, partitions: int, epochs: int, batch_size: int, lr: float) -> tuple[float, int]:
    source = resolve_source(data)
    parts = [load_client_data(source, p, partitions)[0] for p in range(partitions)]
    union = TensorData(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    seed_everything(0)
    start = time.perf_counter()
    stats = [train(Net(), part, epochs, lr, batch_size, ComputePlan(torch.device("cpu"))) for part in parts]
    seconds = time.perf_counter() - start
    images = sum(s["train_images"] for s in stats)
    assert images == epochs * len(union)
    return images / seconds, images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eurosat"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--client-cpus", type=int, help="CPUs per simulated client [all: one client at a time]")
    args = parser.parse_args()
    cfg = load_run_config([f"data='{args.data}'"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data {args.data}", flush=True)

    plain, images = plain_throughput(args.data, cfg.num_supernodes, cfg.local_epochs, cfg.batch_size, cfg.lr)
    print(f"plain loop: {images} images, {plain:.1f} images/s", flush=True)

    with tempfile.TemporaryDirectory() as out:
        code, run_dir = launch([f"num-server-rounds={args.rounds} time-limit-min=0 data='{args.data}' output-dir='{out}'"],
                               client_cpus=args.client_cpus)
        if code != 0:
            print(f"federated run did not complete (exit {code})", file=sys.stderr)
            return 1
        rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    rates = [r["client_train_images"] / r["train_phase_seconds"] for r in rounds]
    last = rounds[-1]
    print(f"federated: round images {int(last['client_train_images'])}, per-round images/s "
          f"{', '.join(f'{x:.1f}' for x in rates)}; clients ran as {last['client_compute']}")
    print(f"  last round: {last['train_phase_seconds']:.1f} s training phase, {last['client_train_seconds']:.1f} s "
          f"summed inside clients' train loops")
    print(f"ratio federated/plain (last round): {rates[-1] / plain:.3f}  (target >= 0.85)")
    print(f"ratio federated/plain (first round, with start-up): {rates[0] / plain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
