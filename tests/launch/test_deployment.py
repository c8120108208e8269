"""Flower's Deployment Engine on loopback: real SuperLink and SuperNode processes, real faults."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import LEARNED_ACCURACY, ROOT, launch, run_dir_of

from eurosat.launch import security
from eurosat.launch.deployment import free_port
from eurosat.train.model import Net

pytestmark = pytest.mark.slow


def _start(spawn, args: list[str], result: Path, log: Path, netns: list[str] = ()) -> subprocess.Popen:
    """A launcher in the background (`spawn`: conftest's, reaped if the test fails); `netns`: a
    command prefix that runs it in a network namespace of its own."""
    return spawn([*netns, sys.executable, "-m", "eurosat.launch.launcher", *args, "--result-json", str(result)],
                 cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def _live(result: Path, timeout: float = 300, rounds: int = 1) -> tuple[Path, str]:
    """Wait until the run has completed `rounds` rounds; (run folder, FLWR_HOME)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result.exists():
            live = json.loads(result.read_text())
            metrics = Path(live["run_dir"]) / "metrics.json"
            if metrics.exists() and len(json.loads(metrics.read_text())["rounds"]) >= rounds:
                return Path(live["run_dir"]), live["flwr_home"]
        time.sleep(0.5)
    raise AssertionError(f"fewer than {rounds} round(s) completed within {timeout} s")


def _processes(home: str, name: str = "") -> dict[int, tuple[list[str], dict[str, str]]]:
    """{pid: (argv, environ)} of every process of the run whose command line mentions `name`."""
    out = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env_bytes = environ.read_bytes()
            argv = [a.decode() for a in (environ.parent / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if f"FLWR_HOME={home}".encode() in env_bytes and any(name in a for a in argv):
            env = dict(e.decode().split("=", 1) for e in env_bytes.split(b"\0") if b"=" in e)
            out[int(environ.parent.name)] = (argv, env)
    return out


def _supernode(home: str, partition: int) -> tuple[int, list[str], dict[str, str]]:
    found = [(pid, argv, env) for pid, (argv, env) in _processes(home, "flower-supernode").items()
             if f"partition-id={partition}" in " ".join(argv)]
    assert len(found) == 1, found
    return found[0]


def _no_process_left(home: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _processes(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes(home), {p: a[:3] for p, (a, _) in _processes(home).items()}


@pytest.mark.long  # waits out a round timeout
def test_a_killed_supernode_is_named_and_rejoins_after_a_restart(tiny_data, tmp_path, spawn):
    """SuperNode 1 is killed during round 2: the round completes with the other two and names it.
    Started again, it rejoins; with error feedback it starts again from the initial model."""
    result, log = tmp_path / "result.json", tmp_path / "launcher.log"
    proc = _start(spawn, ["--engine", "deployment", "--supernodes", "3", "-c",
                          f"num-server-rounds=6 fraction-train=1.0 time-limit-min=0 min-clients-fraction=0.5 "
                          f"round-timeout-s=90 "
                          f"transport=int8 transport-error-feedback=true data='{tiny_data}' output-dir='{tmp_path}'"],
                  result, log)
    run_dir, home = _live(result)
    pid, argv, env = _supernode(home, 1)
    os.kill(pid, signal.SIGKILL)
    _live(result, rounds=2)
    spawn(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # the same node again
    assert proc.wait(timeout=900) == 3, log.read_text()[-3000:]
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    failed = [r for r in rounds if r["client_failures"]]
    assert failed and all(r["clients"] == 2 and r["clients_asked"] == 3 for r in failed)
    assert any("partition 1" in f["error"] or f["partition"] == 1 for r in failed for f in r["client_failures"])
    assert rounds[-1]["clients"] == 3, "the restarted SuperNode rejoined"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed_with_failures"
    _no_process_left(home)


@pytest.mark.long  # waits out a round timeout
def test_a_hung_supernode_ends_its_round_at_the_timeout(tiny_data, tmp_path, spawn):
    result, log = tmp_path / "result.json", tmp_path / "launcher.log"
    proc = _start(spawn, ["--engine", "deployment", "--supernodes", "2", "-c",
                          f"num-server-rounds=3 fraction-train=1.0 time-limit-min=0 min-clients-fraction=0.5 "
                          f"round-timeout-s=60 "
                          f"data='{tiny_data}' output-dir='{tmp_path}'"], result, log)
    run_dir, home = _live(result)
    for pid in _processes(home, "partition-id=0"):
        os.kill(pid, signal.SIGSTOP)  # hangs: alive, never answers
    assert proc.wait(timeout=600) == 3, log.read_text()[-3000:]
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    hung = [f for r in rounds[1:] for f in r["client_failures"]]
    assert hung and all("no reply within 60 s" in f["error"] for f in hung)
    assert all(r["round_seconds"] < 60 + 15 for r in rounds[1:])
    _no_process_left(home)


def _private_network() -> list[str]:
    """A command prefix that runs its command in a network namespace of its own, loopback its only
    interface: a SuperLink listening on every interface there is reachable from nowhere else."""
    prefix = ["unshare", "--net", *([] if os.geteuid() == 0 else ["--map-root-user"]),
              "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"no private network namespace here: {exc}")
    if probe.returncode:
        pytest.skip(f"no private network namespace here: {probe.stderr.strip()[-200:]}")
    return prefix


def test_a_killed_superlink_fails_the_run_and_leaves_nothing(tiny_data, tmp_path, spawn):
    """Listening on every interface without TLS (--insecure), which the launcher warns of once; in a
    network namespace of the test's own, so no other machine could reach that SuperLink."""
    result, log = tmp_path / "result.json", tmp_path / "launcher.log"
    proc = _start(spawn, ["--engine", "deployment", "--supernodes", "2", "--host", "0.0.0.0", "--insecure", "-c",
                          f"num-server-rounds=50 time-limit-min=0 data='{tiny_data}' output-dir='{tmp_path}'"],
                  result, log, netns=_private_network())
    run_dir, home = _live(result)
    (superlink,) = _processes(home, "flower-superlink")
    os.kill(superlink, signal.SIGKILL)
    started = time.monotonic()
    assert proc.wait(timeout=120) == 1, log.read_text()[-3000:]
    assert time.monotonic() - started < 60
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "SuperLink exited" in status["error"]
    assert (run_dir / "checkpoint.pt").exists()
    _no_process_left(home)
    warnings = [line for line in log.read_text().splitlines() if "without TLS" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ")


def test_an_interrupted_run_resumes_in_its_folder(tiny_data, tmp_path, spawn):
    """On the Deployment Engine with TLS and SuperNode auth, the default (2 SuperNodes, each with the
    key pair the launcher made and registered): stopped after its second round (of
    many: rounds take seconds here), resumed with a new round count: the same folder, the rounds
    appended, each with its attempt, the schedule continued; no process of either attempt left."""
    result, log = tmp_path / "result.json", tmp_path / "launcher.log"
    engine = ["--engine", "deployment", "--supernodes", "2"]
    proc = _start(spawn, [*engine, "-c",
                          f"num-server-rounds=40 time-limit-min=0 data='{tiny_data}' output-dir='{tmp_path}'"],
                  result, log)
    run_dir, home = _live(result, rounds=2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    _no_process_left(home)
    first_keys = {p.name: p.read_bytes() for p in (run_dir / "deployment" / "secrets" / "keys").iterdir()}
    assert sorted(first_keys) == ["supernode-0.key", "supernode-0.pub", "supernode-1.key", "supernode-1.pub"]
    done = len(json.loads((run_dir / "metrics.json").read_text())["rounds"])
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    total = done + 2
    resumed = launch([*engine, "--resume", str(run_dir), "-c", f"num-server-rounds={total}"], timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert run_dir_of(resumed) == run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, total + 1))
    assert [r["attempt"] for r in metrics["rounds"]] == [1] * done + [2] * 2
    assert [a["first_round"] for a in metrics["attempts"]] == [1, done + 1]
    assert metrics["attempts"][0]["ended"] == "interrupted"
    spans = [r["lr_span"] for r in metrics["rounds"]]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "the schedule continues where it stopped"
    # server-eval-every=3 (the default): each attempt's first round, every third, and the last
    evaluated = [r["round"] for r in metrics["rounds"] if "server_test_accuracy" in r]
    assert evaluated == sorted({1, done + 1, total} | set(range(3, total + 1, 3)))
    assert metrics["summary"]["final_test_accuracy"] == metrics["rounds"][-1]["server_test_accuracy"]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert metrics["config"]["engine"] == "deployment" and (run_dir / "deployment" / "superlink.log").exists()
    keys = run_dir / "deployment" / "secrets" / "keys"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys.iterdir()) and stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert (keys / "supernode-0.key").read_bytes() != first_keys["supernode-0.key"], "a resumed run makes new keys"
    refused = launch(["--resume", str(run_dir)], timeout=120)
    assert refused.returncode == 2 and "only a failed or interrupted run can be resumed" in refused.stderr


def _supernode_process(spawn, address: str, ca: Path, key: Path, partition: int, partitions: int,
                       log: Path) -> subprocess.Popen:
    """A site's own SuperNode: TLS against the run's CA, authenticated with `key`."""
    return spawn([str(Path(sys.executable).with_name("flower-supernode")), "--superlink", address,
                  "--port", str(free_port()), "--root-certificates", str(ca),
                  "--auth-supernode-private-key", str(key),
                  "--node-config", f"partition-id={partition} num-partitions={partitions}"],
                 stdout=open(log, "w"), stderr=subprocess.STDOUT,
                 env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                      "OMP_NUM_THREADS": "1"})


def test_only_registered_supernodes_join_over_tls(small_data, tmp_path, spawn):
    """TLS and SuperNode auth, the default: the launcher makes a throwaway CA in the run's folder
    (0600 in 0700) and registers the site's two public keys (--register-key); those two SuperNodes
    join and complete a round. A third SuperNode, with a key nobody registered, is refused (it exits),
    receives no model, and the launcher's log names its key."""
    site = security.make_node_keys(tmp_path / "site", 3)  # 0 and 1 registered, 2 not
    result, log = tmp_path / "result.json", tmp_path / "launcher.log"
    proc = _start(spawn, ["--engine", "deployment", "--supernodes", "2", "--external-supernodes",
                          "--register-key", str(site[0]), "--register-key", str(site[1]), "-c",
                          f"num-server-rounds=1 fraction-train=1.0 time-limit-min=0 data='{small_data}' "
                          f"output-dir='{tmp_path / 'out'}'"], result, log)
    deadline = time.monotonic() + 180
    while not (result.exists() and (Path(json.loads(result.read_text())["run_dir"]) / "deployment" /
                                    security.REGISTERED).exists()):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    live = json.loads(result.read_text())
    run_dir = Path(live["run_dir"])
    address = re.search(r'address = "([^"]+)"', (Path(live["flwr_home"]) / "config.toml").read_text())[1]
    secrets = run_dir / "deployment" / "secrets"
    ca = secrets / "tls" / "ca.crt"
    intruder = _supernode_process(spawn, address, ca, security.key_paths(tmp_path / "site", 2)[0], 0, 2,
                                  tmp_path / "intruder.log")
    assert intruder.wait(timeout=120) != 0, "an unregistered SuperNode is refused and exits"
    nodes = [_supernode_process(spawn, address, ca, security.key_paths(tmp_path / "site", i)[0], i, 2,
                                tmp_path / f"site-{i}.log")
             for i in range(2)]
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    for node in nodes:
        node.terminate()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["engine"] == "deployment" and metrics["summary"]["engine"] == "deployment"
    assert [(r["round"], r["clients_asked"], r["clients"]) for r in metrics["rounds"]] == [(1, 2, 2)]
    assert metrics["summary"]["final_test_accuracy"] > LEARNED_ACCURACY
    Net().load_state_dict(torch.load(run_dir / "final_model.pt", weights_only=True))
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert "Receiving" not in (tmp_path / "intruder.log").read_text(), "the refused SuperNode got no message"
    assert all("Receiving" in (tmp_path / f"site-{i}.log").read_text() for i in range(2))
    key = security.read_public_key(site[2])
    named = [line for line in log.read_text().splitlines() if "refused a SuperNode" in line]
    assert named == [f"eurosat.launch.launcher: the SuperLink refused a SuperNode (key {security.fingerprint(key)}): "
                     "its key is not registered"], log.read_text()[-3000:]
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700 and not (secrets / "keys").exists()  # the site has its keys
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (secrets / "tls").iterdir())
    bad = launch(["--engine", "deployment", "--certificates", str(tmp_path), "-c", f"data='{small_data}'"], timeout=60)
    assert bad.returncode == 2 and "missing ca.crt" in bad.stderr
