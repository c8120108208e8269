"""Run one federated training job with `flwr run`, isolated, and report how it really ended.

    python -m eurosat.launch --run-config configs/fp16.toml --run-config "num-server-rounds=5"

What this adds around `flwr run . --stream`:
- validates the run config and the data source first: one line and exit 2, nothing started;
- its own `FLWR_HOME` and free SuperLink ports, so two jobs on one node never meet, and
  `FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1` (compute nodes are offline);
- fixes the run folder in advance, so the caller knows where the results land;
- stops the detached SuperLink it started, by PID, when the run ends;
- exits by the run's own `status.json` (0 completed, 1 failed, 143 interrupted), since
  `flwr run` exits 0 even when the ServerApp raised;
- on SIGTERM (Slurm's warning before its time limit) marks the run interrupted with the last
  completed round's model as the final model, then stops the processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from eurosat.config import PROJECT_DIR, PROJECT_ENV, ConfigError, RunConfig, load_run_config, to_override_string
from eurosat.data import DataError, resolve_source
from eurosat.results import mark_interrupted, read_status

EXIT = {"completed": 0, "failed": 1, "interrupted": 143}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plan_run_dir(cfg: RunConfig) -> Path:
    if cfg.run_dir:
        path = Path(cfg.run_dir).expanduser()
        return path if path.is_absolute() else cfg.output_root() / path
    now = datetime.now()
    return cfg.output_root() / cfg.label / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")


def federation_config(cfg: RunConfig, cpus: int, gpus: float, client_cpus: int, client_gpus: float) -> str:
    """Tell Ray what this job was granted; otherwise it takes the whole node."""
    return (f"num-supernodes={cfg.num_supernodes} init-args-num-cpus={cpus} init-args-num-gpus={gpus:g} "
            f"client-resources-num-cpus={client_cpus} client-resources-num-gpus={client_gpus:g}")


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def superlink_pids(flwr_home: Path) -> list[int]:
    """The SuperLink `flwr run` started for this FLWR_HOME (its log file lives there), and its tree."""
    marker = str(flwr_home / "local-superlink")
    roots = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                roots.append(int(cmdline.parent.name))
        except OSError:
            continue
    tree, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree and pid != os.getpid():
            tree.append(pid)
            todo.extend(_children(pid))
    return tree


def stop_pids(pids: list[int], grace_s: float = 10.0) -> None:
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
            time.sleep(0.1)
        if not alive:
            return


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def launch(
    overrides: list[str], project: Path = PROJECT_DIR, flwr_home: Path | None = None,
    cpus: int | None = None, gpus: float = 0.0, client_cpus: int | None = None, client_gpus: float | None = None,
) -> tuple[int, Path]:
    """Validate, run `flwr run --stream`, clean up; return (exit status, run folder)."""
    cfg = load_run_config(overrides, project)
    resolve_source(cfg.data)
    run_dir = plan_run_dir(cfg)
    cpus = cpus or int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
    client_cpus = client_cpus or 1  # single-threaded clients side by side beat one client on all cores (bench/)
    client_gpus = gpus if client_gpus is None else client_gpus
    overrides_str = to_override_string({**cfg.to_mapping(), "data": cfg.data, "run-dir": str(run_dir)})
    home = Path(flwr_home or tempfile.mkdtemp(prefix="flwr-home-"))
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT") or str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": os.environ.get("FLWR_LOCAL_CONTROL_API_PORT") or str(free_port()),
        PROJECT_ENV: str(project),
        "PYTHONUNBUFFERED": "1",
        # `flwr run` starts `flower-superlink` from PATH (flwr >= 1.42): make it this venv's,
        # also when the venv is not activated (CI, tests, a cluster's module system).
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    command = [
        str(Path(sys.executable).with_name("flwr")), "run", str(project), "--stream",
        "--run-config", overrides_str,
        "--federation-config", federation_config(cfg, cpus, gpus, client_cpus, client_gpus),
    ]
    print(f"eurosat.launch: run folder {run_dir}", flush=True)
    print(f"eurosat.launch: FLWR_HOME={home} ports {env['FLWR_LOCAL_SUPERLINK_HTTP_API_PORT']}/"
          f"{env['FLWR_LOCAL_CONTROL_API_PORT']}", flush=True)
    proc = subprocess.Popen(command, env=env, cwd=project)

    def on_term(signum: int, _frame) -> None:
        # Stop first, mark second: a live ServerApp would rewrite metrics.json (or record its own
        # death as a failure) after the mark.
        name = signal.Signals(signum).name
        print(f"eurosat.launch: {name}: stopping the run", flush=True)
        proc.terminate()
        stop_pids(superlink_pids(home))
        status = mark_interrupted(run_dir, reason=name) if (run_dir / "metrics.json").exists() else {}
        print(f"eurosat.launch: run marked {status.get('state', 'not started')}: {run_dir}", flush=True)
        sys.exit(EXIT["interrupted"])

    previous = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop_pids(superlink_pids(home))
    state = read_status(run_dir).get("state", "unknown")
    if state == "running":  # the ServerApp died without closing its run (e.g. killed)
        state = mark_interrupted(run_dir, reason="server process ended without finishing").get("state")
    return EXIT.get(state, 1), run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eurosat.launch",
        description="Run federated EuroSAT training in Flower's simulation, isolated, with a "
                    "trustworthy exit status (0 completed, 1 failed, 2 bad input, 143 interrupted).",
    )
    parser.add_argument("--run-config", "-c", action="append", default=[], metavar="TOML|'k=v ...'",
                        help="run-config overrides: a configs/*.toml file or 'key=value ...'; repeatable, later wins")
    parser.add_argument("--flwr-home", type=Path, help="FLWR_HOME for this run [a fresh temp folder]")
    parser.add_argument("--cpus", type=int, help="CPUs Ray may use [$SLURM_CPUS_PER_TASK or all]")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs Ray may use [0]")
    parser.add_argument("--client-cpus", type=int, help="CPUs per client [1: --cpus clients train side by side]")
    parser.add_argument("--client-gpus", type=float, help="GPUs per client [--gpus]")
    parser.add_argument("--project", type=Path, default=PROJECT_DIR, help="the Flower app folder [%(default)s]")
    args = parser.parse_args(argv)
    try:
        code, run_dir = launch(args.run_config, args.project.resolve(), args.flwr_home, args.cpus, args.gpus,
                               args.client_cpus, args.client_gpus)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = read_status(run_dir)
    print(f"eurosat.launch: run {status.get('state', 'unknown')}: {run_dir}", flush=True)
    if code == 1:
        print(f"error: run failed: {status.get('error', 'no status written; see the log above')}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
