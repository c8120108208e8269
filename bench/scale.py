"""A thousand clients: memory of the simulation and the server's overhead per round at 10, 100 and
1,000 clients, 10 of them a round, with error feedback off and on.

    .venv/bin/python bench/scale.py [--data ../shared/data/eurosat] [--clients 10,100,1000]
        [--rounds 5] [--fraction 0.1] [--ef off,on] [--client-cpus N] [--out DIR]

Each setting is a real `python -m eurosat.launch` run in simulation: `num-supernodes` = N, 10 clients
a round (`fraction-train` = 10/N), 1 local epoch, `--rounds` rounds, the server evaluating only in
the last, on a stratified `--fraction` of the train split (the overhead leaves training out, so
less data changes nothing but the wait); error feedback on is `transport="int8"` with
`transport-error-feedback=true` (each trained node then keeps a residual and a replica, ~1.7 MB
each, in the simulation's memory), off is fp32.

Memory: every 0.5 s the script sums the memory (PSS: resident pages, shared ones divided among the
processes that map them, so each counts once) of every process of the run (the
processes whose environment holds the run's own FLWR_HOME: SuperLink, the simulation process that
runs the ServerApp, Ray's workers) and keeps the peak of the sum and of the ServerApp's process.
Time: the server's overhead per round is the round's training phase less the clients' own
training seconds divided by how many train side by side, the median of rounds 2 to `--rounds`.
Targets (issue 28): at most 2 GB in all at 1,000 clients without error feedback, and an overhead
at 1,000 clients at most 1.3 x that at 10. Settings run one after another on this machine, never
beside other work: the overheads are times. Writes `scale.json` (each setting with its provenance)
and prints the table with both ratios.

The clients that train side by side are Ray workers, each a process with torch, its data and a
model (~0.6 GB); `--client-cpus` (the launcher's option) sets how many: the CPUs // it. With
`--client-cpus` equal to the CPUs one worker trains the round's clients one after another, with all
CPUs each: the least memory, whatever the federation's size.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_parser, code_fingerprint, machine, make_slice  # noqa: E402
from eurosat.common.cli import fail  # noqa: E402
from eurosat.common.files import read_json, write_json  # noqa: E402

PER_ROUND = 10
GB = 1024**3
SERVER_PROCESS = "flwr-simulation"  # the process that runs the ServerApp (and Ray's driver) in simulation


def run_processes(flwr_home: str) -> dict[int, str]:
    """pid -> command name of every process whose environment holds FLWR_HOME=`flwr_home`."""
    needle = f"FLWR_HOME={flwr_home}\0".encode()
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes() + b"\0":
                cmd = (environ.parent / "cmdline").read_bytes().split(b"\0")
                found[int(environ.parent.name)] = " ".join(c.decode(errors="replace") for c in cmd[:3])
        except OSError:
            continue
    return found


def pss_bytes(pid: int) -> int:
    """The process's proportional set size: its own pages plus its share of pages mapped by several
    (torch's libraries in every Ray worker), so a sum over processes counts each page once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory(threading.Thread):
    """Samples the run's processes until stopped: the peak of their summed memory (PSS) and of the ServerApp's."""

    def __init__(self, flwr_home: str, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.flwr_home, self.every_s = flwr_home, every_s
        self.total = self.server = 0
        self.processes = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            found = run_processes(self.flwr_home)
            sizes = {pid: pss_bytes(pid) for pid in found if pid != os.getpid()}
            self.total = max(self.total, sum(sizes.values()))
            self.server = max([self.server] + [sizes[p] for p, cmd in found.items() if SERVER_PROCESS in cmd and p in sizes])
            self.processes = max(self.processes, len(sizes))
            self._done.wait(self.every_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


def overhead_per_round(metrics: dict, side_by_side: int) -> float:
    """Median over rounds 2.. of the training phase less the clients' training seconds / side_by_side."""
    later = [r for r in metrics["rounds"] if r["round"] >= 2]
    return statistics.median(r["train_phase_seconds"] - r["client_train_seconds"] / side_by_side for r in later)


def run_setting(clients: int, ef: bool, rounds: int, data: Path, out: Path, client_cpus: int | None = None) -> dict:
    flwr_home = tempfile.mkdtemp(prefix="flwr-home-scale-")
    transport = "transport='int8' transport-error-feedback=true" if ef else "transport='fp32'"
    name = f"{clients}-{'ef' if ef else 'noef'}" + (f"-cpus{client_cpus}" if client_cpus else "")
    result = out / f"launch-{name}.json"
    workers = ["--client-cpus", str(client_cpus)] if client_cpus else []
    command = [sys.executable, "-m", "eurosat.launch", "--flwr-home", flwr_home, "--result-json", str(result), *workers, "-c",
               f"num-supernodes={clients} fraction-train={PER_ROUND / clients} num-server-rounds={rounds} "
               f"time-limit-min=0 local-epochs=1 server-eval-every={rounds} {transport} data='{data}' "
               f"output-dir='{out / 'runs'}'"]
    sampler = PeakMemory(flwr_home)
    sampler.start()
    started = time.perf_counter()
    with open(out / f"launch-{name}.log", "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    sampler.stop()
    if code != 0:
        raise RuntimeError(f"{clients} clients, ef={ef}: run failed (exit {code}); see {result}")
    run_dir = Path(read_json(result)["run_dir"])
    metrics = read_json(run_dir / "metrics.json")
    cpus = os.cpu_count() or 1
    # the launcher gives each client cpus // clients-a-round (>= 1) unless --client-cpus says otherwise
    side_by_side = max(1, min(PER_ROUND, cpus // (client_cpus or 1)))
    trained = len({p for r in metrics["rounds"] for p in r["partitions"]})
    return {"clients": clients, "error_feedback": ef, "rounds": rounds, "trained_clients": trained,
            "peak_pss_total_gb": sampler.total / GB, "peak_pss_serverapp_gb": sampler.server / GB,
            "processes": sampler.processes, "overhead_s": overhead_per_round(metrics, side_by_side),
            "side_by_side": side_by_side, "client_cpus": client_cpus, "wall_s": time.perf_counter() - started, "run_dir": str(run_dir)}


def report(rows: list[dict]) -> str:
    out = [f"{'clients':>8}{'EF':>5}{'workers':>9}{'trained':>9}{'peak PSS, all (GB)':>20}{'ServerApp (GB)':>16}{'overhead/round (s)':>20}"]
    for r in rows:
        out.append(f"{r['clients']:>8}{'on' if r['error_feedback'] else 'off':>5}{r['side_by_side']:>9}{r['trained_clients']:>9}"
                   f"{r['peak_pss_total_gb']:>20.2f}{r['peak_pss_serverapp_gb']:>16.2f}{r['overhead_s']:>20.2f}")
    by = {(r["clients"], r["error_feedback"]): r for r in rows}
    lo, hi = min(r["clients"] for r in rows), max(r["clients"] for r in rows)
    if (lo, False) in by and (hi, False) in by and lo != hi:
        ratio = by[(hi, False)]["overhead_s"] / max(by[(lo, False)]["overhead_s"], 1e-9)
        out.append(f"\noverhead at {hi} clients / at {lo}: {ratio:.2f} (target <= 1.3)")
        out.append(f"peak memory (PSS) at {hi} clients without error feedback: {by[(hi, False)]['peak_pss_total_gb']:.2f} GB "
                   "(target <= 2 GB)")
    if (hi, True) in by and (hi, False) in by:
        extra = by[(hi, True)]["peak_pss_total_gb"] - by[(hi, False)]["peak_pss_total_gb"]
        out.append(f"error feedback at {hi} clients: +{extra * 1024:.0f} MB for {by[(hi, True)]['trained_clients']} "
                   f"trained clients, {extra * 1024 / max(by[(hi, True)]['trained_clients'], 1):.1f} MB each")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated federation sizes [10,100,1000]")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run (>= 2; the overhead is rounds 2..) [5]")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the train split used [0.1]")
    parser.add_argument("--ef", default="off,on", help="error feedback settings to run, comma-separated [off,on]")
    parser.add_argument("--client-cpus", type=int, help="CPUs per client, so CPUs // it Ray workers train side by side "
                                                        "[the launcher's: CPUs // 10, at least 1]")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "scale", help="results folder [%(default)s]")
    args = parser.parse_args(argv)
    try:
        sizes = [int(c) for c in args.clients.split(",")]
    except ValueError:
        return fail(f"--clients {args.clients!r}: expected comma-separated integers")
    efs = [e.strip() for e in args.ef.split(",")]
    if not efs or any(e not in ("off", "on") for e in efs):
        return fail(f"--ef {args.ef!r}: expected off, on or off,on")
    if args.client_cpus is not None and not 1 <= args.client_cpus <= (os.cpu_count() or 1):
        return fail(f"--client-cpus {args.client_cpus}: must be in [1, {os.cpu_count() or 1}] (this machine's CPUs)")
    if args.rounds < 2 or not 0 < args.fraction <= 1 or any(c < PER_ROUND for c in sizes):
        return fail(f"--rounds must be >= 2, --fraction in (0, 1], every --clients >= {PER_ROUND}")
    if not args.data.is_dir():
        return fail(f"--data {args.data}: no such folder")
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_slice(args.data.resolve(), args.out / "data", args.fraction)
    rows = []
    for clients in sizes:
        for ef in (e == "on" for e in efs):
            print(f"== {clients} clients, error feedback {'on' if ef else 'off'} ...", flush=True)
            try:
                rows.append(run_setting(clients, ef, args.rounds, data, args.out, args.client_cpus))
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            write_json(args.out / "scale.json", {"code": code_fingerprint(), "machine": machine(),
                                                 "date": time.strftime("%Y-%m-%d"), "fraction": args.fraction,
                                                 "rows": rows})
    print(report(rows))
    print(f"\nwrote {args.out / 'scale.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
