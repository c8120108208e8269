"""Flower's Deployment Engine on loopback: real SuperLink and SuperNode processes, real faults."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import LEARNED_ACCURACY, ROOT, launch, run_dir_of

from eurosat.train.model import Net

pytestmark = pytest.mark.slow


def _start(args: list[str], result: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eurosat.launch.launcher", *args, "--result-json", str(result)], cwd=ROOT,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


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
def test_a_killed_supernode_is_named_and_rejoins_after_a_restart(tiny_data, tmp_path):
    """SuperNode 1 is killed during round 2: the round completes with the other two and names it.
    Started again, it rejoins; with error feedback it is sent the whole model."""
    result, log = tmp_path / "result.json", tmp_path / "launcher.log"
    proc = _start(["--engine", "deployment", "--supernodes", "3", "-c",
                   f"num-server-rounds=6 fraction-train=1.0 time-limit-min=0 min-clients-fraction=0.5 round-timeout-s=90 "
                   f"transport=int8 transport-error-feedback=true data='{tiny_data}' output-dir='{tmp_path}'"],
                  result, log)
    run_dir, home = _live(result)
    pid, argv, env = _supernode(home, 1)
    os.kill(pid, signal.SIGKILL)
    _live(result, rounds=2)
    subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # the same node again
    assert proc.wait(timeout=900) == 3, log.read_text()[-3000:]
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    failed = [r for r in rounds if r["client_failures"]]
    assert failed and all(r["clients"] == 2 and r["clients_asked"] == 3 for r in failed)
    assert any("partition 1" in f["error"] or f["partition"] == 1 for r in failed for f in r["client_failures"])
    assert rounds[-1]["clients"] == 3, "the restarted SuperNode rejoined"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed_with_failures"
    _no_process_left(home)


@pytest.mark.long  # waits out a round timeout
def test_a_hung_supernode_ends_its_round_at_the_timeout(tiny_data, tmp_path):
    result, log = tmp_path / "result.json", tmp_path / "launcher.log"
    proc = _start(["--engine", "deployment", "--supernodes", "2", "-c",
                   f"num-server-rounds=3 fraction-train=1.0 time-limit-min=0 min-clients-fraction=0.5 round-timeout-s=60 "
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


def test_a_killed_superlink_fails_the_run_and_leaves_nothing(tiny_data, tmp_path):
    """Listening on every interface without TLS, which the launcher warns of once."""
    result, log = tmp_path / "result.json", tmp_path / "launcher.log"
    proc = _start(["--engine", "deployment", "--supernodes", "2", "--host", "0.0.0.0", "-c",
                   f"num-server-rounds=50 time-limit-min=0 data='{tiny_data}' output-dir='{tmp_path}'"], result, log)
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


def test_an_interrupted_run_resumes_in_its_folder(tiny_data, tmp_path):
    """On the Deployment Engine without TLS (2 SuperNodes): stopped after its second round (of
    many: rounds take seconds here), resumed with a new round count: the same folder, the rounds
    appended, each with its attempt, the schedule continued; no process of either attempt left."""
    result, log = tmp_path / "result.json", tmp_path / "launcher.log"
    engine = ["--engine", "deployment", "--supernodes", "2"]
    proc = _start([*engine, "-c", f"num-server-rounds=40 time-limit-min=0 data='{tiny_data}' output-dir='{tmp_path}'"],
                  result, log)
    run_dir, home = _live(result, rounds=2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    _no_process_left(home)
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
    refused = launch(["--resume", str(run_dir)], timeout=120)
    assert refused.returncode == 2 and "only a failed or interrupted run can be resumed" in refused.stderr


def _certificates(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (the `cryptography` package)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir()
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eurosat test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return folder


def test_tls_federation_on_loopback_end_to_end(small_data, tmp_path):
    """Three SuperNodes and a SuperLink over TLS, two rounds: the whole run and its files. (Without
    TLS, a run is stopped and resumed in the resume test below.)"""
    certs = _certificates(tmp_path / "certs")
    proc = launch(["--engine", "deployment", "--supernodes", "3", "--certificates", str(certs), "-c",
                   f"num-server-rounds=2 fraction-train=1.0 time-limit-min=0 data='{small_data}' output-dir='{tmp_path / 'out'}'"],
                  timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_of(proc)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["engine"] == "deployment" and metrics["summary"]["engine"] == "deployment"
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["clients_asked"] == 3 and r["clients"] == 3 for r in metrics["rounds"])
    assert metrics["summary"]["final_test_accuracy"] > LEARNED_ACCURACY
    Net().load_state_dict(torch.load(run_dir / "final_model.pt", weights_only=True))
    assert {"superlink.log", "supernode-0.log", "supernode-2.log"} <= {p.name for p in (run_dir / "deployment").iterdir()}
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    bad = launch(["--engine", "deployment", "--certificates", str(tmp_path), "-c", f"data='{small_data}'"], timeout=60)
    assert bad.returncode == 2 and "missing ca.crt" in bad.stderr
