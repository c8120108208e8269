"""Plain `flwr run .` from the shell, as Flower's docs describe: no launcher, the venv's `bin` on
PATH, the real `flwr` CLI starting its own local SuperLink.

What the test adds around the command is isolation only, the way a user could too: its own
`FLWR_HOME` (a temp folder) and free ports for the local SuperLink
(`FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`, `FLWR_LOCAL_CONTROL_API_PORT`: otherwise `flwr run` would
hand the run to any SuperLink already listening on Flower's default 39091, with its own settings),
and `FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`, the one line the README gives for offline
machines (Flower would otherwise `uv sync` torch and the rest into a fresh environment per run).

`flwr run` exits 0 even when the ServerApp raised, so the run is judged by its folder's
`status.json` and final model. Flower 1.42 leaves the local SuperLink it started running
(`flower-superlink --insecure --simulation ...`, detached into its own session): every process
of the run carries a token in its environment (eurosat.launch.processes) and is stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT

from eurosat.fl.config import PROJECT_ENV, project_defaults
from eurosat.fl.record import FINAL_MODEL_FILE, STATUS_FILE
from eurosat.launch.launcher import free_port
from eurosat.launch.processes import TOKEN_ENV, new_token, run_pids, stop_run

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # the venv's bin: `flwr`, and the `flower-superlink` it starts


@dataclass
class PlainRun:
    proc: subprocess.CompletedProcess
    seconds: float  # the `flwr run` command's wall time
    left_running: list[str]  # the run's processes still alive once `flwr run` returned
    run_dirs: list[Path]  # folders with a status.json under the run's output-dir

    @property
    def log(self) -> str:
        return f"stdout:\n{self.proc.stdout[-6000:]}\nstderr:\n{self.proc.stderr[-3000:]}"

    def status(self) -> dict:
        assert len(self.run_dirs) == 1, f"expected one run folder, found {self.run_dirs}\n{self.log}"
        return json.loads((self.run_dirs[0] / STATUS_FILE).read_text())


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def flwr_run(tmp_path: Path, run_config: str, federation_config: str, timeout: float = 600) -> PlainRun:
    """`flwr run . --stream --federation-config ... --run-config ...` in the project, then stop
    every process it left (the detached local SuperLink and whatever it still runs)."""
    out = tmp_path / "outputs"
    token = new_token()
    env = {k: v for k, v in os.environ.items() if k not in (PROJECT_ENV, "FLWR_HOME", "RAY_ADDRESS")}
    env.update({
        "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]),
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        TOKEN_ENV: token,
    })
    command = ["flwr", "run", ".", "--stream", "--federation-config", federation_config,
               "--run-config", f"{run_config} output-dir='{out}'"]
    started = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.monotonic() - started
        left = [_cmdline(p) for p in run_pids(token)]
    finally:
        stop_run(token)
    assert not run_pids(token), "processes of the run survived stop_run"
    return PlainRun(proc, seconds, left, sorted(p.parent for p in out.rglob(STATUS_FILE)))


def test_plain_flwr_run_completes_on_the_simulated_federation(tiny_data, tmp_path):
    """The command from the README, 2 simulated SuperNodes, 2 rounds on the tiny slice: the run
    folder says completed and holds the final model; the local SuperLink outlived the command."""
    run = flwr_run(tmp_path, f"data='{tiny_data}' num-supernodes=2 num-server-rounds=2 fraction-train=1.0 "
                             f"local-epochs=1 time-limit-min=0", "num-supernodes=2")
    print(f"flwr run: {run.seconds:.1f} s")
    status = run.status()
    assert status["state"] == "completed", f"{status}\n{run.log}"
    assert status["rounds_completed"] == 2
    assert (run.run_dirs[0] / FINAL_MODEL_FILE).is_file()
    assert "eurosat: finished" in run.proc.stdout, run.log
    assert "simulation: 2 SuperNodes" in run.proc.stdout, run.log
    assert any("flower-superlink" in c and "--simulation" in c for c in run.left_running), (
        f"Flower no longer leaves its local SuperLink running (update README): {run.left_running}")


def test_plain_flwr_run_with_a_federation_of_another_size_fails_at_once_naming_both(tiny_data, tmp_path):
    """The issue's case: Flower simulates 2 SuperNodes, the app's num-supernodes is its default
    (10). One line naming both numbers and what to write, in the log and in status.json, within
    seconds of the ServerApp's start: never "waiting for nodes" for the first round's timeout."""
    app = project_defaults()["num-supernodes"]
    assert app != 2, "the case needs a default other than Flower's 2"
    run = flwr_run(tmp_path, f"data='{tiny_data}' num-server-rounds=2", "num-supernodes=2")
    print(f"flwr run: {run.seconds:.1f} s")
    status = run.status()
    assert status["state"] == "failed", f"{status}\n{run.log}"
    error = status["error"]
    assert error.startswith(f"FederationMismatch: the simulated federation has 2 SuperNodes but num-supernodes is {app}")
    assert "-c num-supernodes=2" in error and f"--federation-config num-supernodes={app}" in error, error
    assert "\n" not in error
    assert f"eurosat: run failed: {error}" in run.proc.stdout, run.log
    assert "waiting for nodes" not in run.proc.stdout
    assert status["wall_seconds"] < 30, status  # from the ServerApp's start: the settle (~1 s), not a wait
    assert not (run.run_dirs[0] / FINAL_MODEL_FILE).exists()
