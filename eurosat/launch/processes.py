"""The processes of one run: found by a token in their environment, stopped together, and
reaped by a watchdog when the launcher itself is killed hard.

`flwr run` starts a detached SuperLink, which starts the simulation, which starts Ray's daemons
and workers: they are neither one process group nor all children of the launcher. But each
inherits the environment, so the launcher puts `EUROSAT_RUN_TOKEN=<random>` in it and finds them
all through `/proc/<pid>/environ`. A `kill -9` of the launcher cannot run any handler, so it
starts a small watchdog (`python -m eurosat.launch.processes PARENT TOKEN RUN_DIR [HOME]`) that notices
when its parent is gone, stops every process carrying the token, marks the run interrupted (its
last completed round becomes the final model) and removes the temp `FLWR_HOME`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

TOKEN_ENV = "EUROSAT_RUN_TOKEN"
POLL_S = 0.5


def new_token() -> str:
    return uuid.uuid4().hex


def run_pids(token: str) -> list[int]:
    """Every process (but this one) whose environment carries `EUROSAT_RUN_TOKEN=token`."""
    needle = f"{TOKEN_ENV}={token}".encode() + b"\0"
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes() + b"\0":
                pids.append(int(environ.parent.name))
        except OSError:  # gone, or another user's process
            continue
    return [p for p in pids if p != os.getpid()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_pids(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _alive(p)]
            time.sleep(0.1)
        if not alive:
            return


def stop_run(token: str, grace_s: float = 10.0, limit_s: float = 60.0, settle_s: float = 1.5) -> None:
    """Stop every process of the run: SIGTERM first, then SIGKILL for what is left and for anything
    started meanwhile (Ray restarts workers, and its daemons start agents, while being stopped),
    until no process of the run has been seen for `settle_s`: one empty scan is not enough, since
    a process still being spawned by a dying parent shows up a moment later."""
    deadline = time.monotonic() + limit_s
    pids = run_pids(token)
    if pids:
        stop_pids(pids, grace_s)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        pids = run_pids(token)
        if not pids and time.monotonic() - quiet_since >= settle_s:
            return
        if pids:
            quiet_since = time.monotonic()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.2)


def start_watchdog(token: str, run_dir: Path, remove: Path | None = None) -> subprocess.Popen:
    """A watchdog that reaps the run if this process dies without doing so itself."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    args = [sys.executable, "-m", "eurosat.launch.processes", str(os.getpid()), token, str(run_dir)]
    return subprocess.Popen(args + ([str(remove)] if remove else []), env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def watch(parent: int, token: str, run_dir: Path, remove: Path | None) -> None:
    """Wait until `parent` is gone; then stop the run's processes, close the run as interrupted
    (the last completed round becomes the final model) and remove `remove`."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the launcher's normal "stand down"
    while _alive(parent) and os.getppid() == parent:
        time.sleep(POLL_S)
    stop_run(token)
    from eurosat.fl.record import METRICS_FILE, mark_interrupted  # only now: it imports torch

    if (run_dir / METRICS_FILE).exists():
        mark_interrupted(run_dir, reason="launcher killed")
    if remove is not None:
        shutil.rmtree(remove, ignore_errors=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]) if len(sys.argv) > 4 else None)
