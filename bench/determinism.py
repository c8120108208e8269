"""Is a run reproducible? The same command, run twice in fresh processes, compared bit for bit.

    .venv/bin/python bench/determinism.py [--data ../shared/data/eurosat] [--runs 2]
        [--set 'num-server-rounds=2 time-limit-min=0 seed=43'] [--out DIR]

Each run is a real `python -m eurosat.launch` (its own Flower simulation, its own processes) with
the same run config; the final models (`final_model.pt`) are compared tensor by tensor. A
reviewer who reruns a README command should get the same model: this says whether they do here,
and if not, which tensors differ and by how much. Run it on a quiet machine or not: a round-limited
run's model must not depend on the machine's load. Writes `determinism.json` into --out. Exit
status 0 when every run's model is bit-identical to the first, 1 when one differs.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eurosat.train.checkpoints import load_state_dict  # noqa: E402
from bench.common import bench_parser, code_fingerprint, machine  # noqa: E402
from eurosat.common.cli import fail  # noqa: E402
from eurosat.fl.config import ConfigError, load_run_config  # noqa: E402
from eurosat.common.files import write_json  # noqa: E402
from eurosat.launch.launcher import launch  # noqa: E402

NAME = "determinism"


def digest(state: dict) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def differences(a: dict, b: dict) -> dict[str, float]:
    """Max absolute difference of every tensor that is not bit-identical (a missing one: inf)."""
    out = {}
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b or a[key].shape != b[key].shape:
            out[key] = float("inf")
        elif not a[key].equal(b[key]):
            out[key] = (a[key].double() - b[key].double()).abs().max().item()
    return out


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=2, help="how many fresh runs of the same command [2]")
    parser.add_argument("--set", default="num-server-rounds=2 time-limit-min=0 seed=43",
                        help="the run config of every run [%(default)s]; it must be round-limited")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / NAME, help="results folder [%(default)s]")
    args = parser.parse_args()
    if args.runs < 2:
        return fail("--runs must be at least 2")
    try:
        cfg = load_run_config([args.set])  # the launcher's own reading: every key checked before a run starts
    except ConfigError as exc:
        return fail(str(exc))
    if cfg.time_limit_min != 0:
        return fail("--set must hold time-limit-min=0: a time-limited run stops where the machine's speed says")
    runs = []
    for i in range(args.runs):
        started = time.perf_counter()
        code, run_dir = launch([f"{args.set} data='{args.data.resolve()}' output-dir='{args.out / 'runs'}'"])
        if code != 0:
            return fail(f"run {i + 1} did not complete (exit {code}); see {run_dir}")
        state = load_state_dict(run_dir / "final_model.pt")
        runs.append({"run_dir": str(run_dir), "digest": digest(state), "state": state})
        print(f"== run {i + 1}: {runs[-1]['digest'][:16]} ({time.perf_counter() - started:.0f} s)", flush=True)
    diffs = [differences(runs[0]["state"], r["state"]) for r in runs[1:]]
    identical = not any(diffs)
    write_json(args.out / f"{NAME}.json", {
        "set": args.set, "data": str(args.data.resolve()), "identical": identical,
        "code": code_fingerprint(), "machine": machine(), "date": time.strftime("%Y-%m-%d"),
        "runs": [{k: r[k] for k in ("run_dir", "digest")} for r in runs],
        "differences_vs_first": diffs,
    })
    for i, d in enumerate(diffs, start=2):
        for key, value in d.items():
            print(f"run {i}: {key} differs by up to {value:.3g}")
    print(f"{args.runs} runs of '{args.set}': {'bit-identical' if identical else 'NOT identical'}; "
          f"wrote {args.out / (NAME + '.json')}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
