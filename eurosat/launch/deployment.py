"""Flower's Deployment Engine on this machine: one SuperLink and N SuperNodes as real processes.

    flower-superlink --insecure --host H --port P --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink H:P --port Q --node-config "partition-id=i num-partitions=N"

(flwr 1.42: one HTTP port serves the SuperLink's Fleet, Control and Runtime APIs; each SuperNode
has its own runtime port.) The federation is written into `$FLWR_HOME/config.toml` as
`[superlink.eurosat]`, and `flwr run . eurosat --stream` submits to it. With `certificates` (a
folder with `ca.crt`, `server.pem`, `server.key`) the SuperLink serves TLS and SuperNodes and
`flwr run` verify it against the CA; without, insecure mode, with a warning when the SuperLink
listens beyond loopback. Every process inherits the caller's environment, so the run token
finds and stops them (processes.py).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

FEDERATION = "eurosat"
CERT_FILES = ("ca.crt", "server.pem", "server.key")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class DeploymentError(RuntimeError):
    """The federation could not be brought up; one line for the user."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host if host != "0.0.0.0" else "", 0))
        return sock.getsockname()[1]


def _reachable(host: str) -> str:
    """Where this machine reaches a SuperLink listening on `host` (a wildcard: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def check_certificates(folder: Path) -> Path:
    from eurosat.fl.config import ConfigError

    missing = [name for name in CERT_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"--certificates {folder}: missing {', '.join(missing)} (expected {', '.join(CERT_FILES)})")
    return folder.resolve()


def tool(name: str) -> str:
    """A Flower command of this interpreter's environment (not whichever is first on PATH)."""
    return str(Path(sys.executable).with_name(name))


@dataclass
class Federation:
    """The processes of a running deployment; `log_dir` holds each one's output."""

    address: str
    superlink: subprocess.Popen
    supernodes: list[subprocess.Popen] = field(default_factory=list)
    log_dir: Path | None = None

    def dead(self) -> str | None:
        """Why the federation can no longer work (the SuperLink exited), or None."""
        code = self.superlink.poll()
        return None if code is None else f"the SuperLink exited with status {code}"


def _wait_for_port(host: str, port: int, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(f"flower-superlink exited with status {process.returncode} while starting")
        try:
            with socket.create_connection((_reachable(host), port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise DeploymentError(f"flower-superlink did not listen on {host}:{port} within {timeout_s:.0f} s")


def start_superlink(home: Path, env: dict[str, str], host: str, port: int, log_dir: Path,
                    certificates: Path | None = None) -> subprocess.Popen:
    args = [tool("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if certificates:
        args += ["--ssl-certfile", str(certificates / "server.pem"), "--ssl-keyfile", str(certificates / "server.key"),
                 "--ssl-ca-certfile", str(certificates / "ca.crt")]
    else:
        args.append("--insecure")
        if host not in LOOPBACK:
            print(f"warning: the SuperLink listens on {host} without TLS: anyone who reaches this port can join "
                  "or submit runs; give --certificates", file=sys.stderr)
    with open(log_dir / "superlink.log", "ab") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(args, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    _wait_for_port(host, port, process)
    return process


def start_supernode(address: str, partition: int, partitions: int, env: dict[str, str], log_dir: Path,
                    certificates: Path | None = None, extra: str = "") -> subprocess.Popen:
    """One SuperNode serving `partition`; `extra` node config, e.g. a device choice."""
    args = [tool("flower-supernode"), "--superlink", address, "--port", str(free_port()),
            "--node-config", f"partition-id={partition} num-partitions={partitions} {extra}".strip()]
    args += ["--root-certificates", str(certificates / "ca.crt")] if certificates else ["--insecure"]
    with open(log_dir / f"supernode-{partition}.log", "ab") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def write_federation(home: Path, address: str, certificates: Path | None = None) -> str:
    """`[superlink.eurosat]` in `$FLWR_HOME/config.toml`, the default federation of `flwr run`."""
    security = f'root-certificates = "{certificates / "ca.crt"}"' if certificates else "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\naddress = "{address}"\n{security}\n')
    return FEDERATION


def start(home: Path, env: dict[str, str], supernodes: int, log_dir: Path, host: str = "127.0.0.1",
          certificates: Path | None = None, port: int | None = None, external: bool = False,
          cpus: int = 1) -> Federation:
    """A SuperLink on `port` (a free one) of `host`, and `supernodes` SuperNodes on this machine,
    unless they are `external` (started elsewhere, e.g. by srun on every node of a Slurm job).
    The `cpus` are shared among the SuperNodes (OMP_NUM_THREADS), as Ray shares them in simulation."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    superlink = start_superlink(home, env, host, port, log_dir, certificates)
    federation = Federation(f"{_reachable(host)}:{port}", superlink, log_dir=log_dir)
    node_env = {**env, "OMP_NUM_THREADS": str(max(1, cpus // max(supernodes, 1)))}
    for i in range(0 if external else supernodes):
        federation.supernodes.append(start_supernode(federation.address, i, supernodes, node_env, log_dir, certificates))
    write_federation(home, federation.address, certificates)
    return federation
