"""Flower's Deployment Engine on this machine: one SuperLink and N SuperNodes as real processes.

    flower-superlink --host H --port P --disable-runtime-dependency-installation TLS --enable-supernode-auth
    flwr supernode register supernode-i.pub eurosat        (each SuperNode's public key, before it starts)
    flower-supernode --superlink H:P --port Q --node-config "partition-id=i num-partitions=N"
                     --root-certificates ca.crt --auth-supernode-private-key supernode-i.key

(flwr 1.42: one HTTP port serves the SuperLink's Fleet, Control and Runtime APIs; each SuperNode
has its own runtime port.) The federation is written into `$FLWR_HOME/config.toml` as
`[superlink.eurosat]`, and `flwr run . eurosat --stream` submits to it. With `certificates` (a
folder with `ca.crt`, `server.pem`, `server.key`) the SuperLink serves TLS and SuperNodes and
`flwr run` verify it against the CA; without, insecure mode, with a warning when the SuperLink
listens beyond loopback. With `auth` (TLS only, as Flower requires) the SuperLink admits only the
SuperNodes whose public keys were registered (security.py makes them); the refusals it logs are
read back as one line each (`Federation.refusals`). Every process inherits the caller's
environment, so the run token finds and stops them (processes.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from eurosat.launch import security

FEDERATION = "eurosat"
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
    _log_read: int = 0  # how far the SuperLink's log was read for refusals

    def dead(self) -> str | None:
        """Why the federation can no longer work (the SuperLink exited), or None."""
        code = self.superlink.poll()
        return None if code is None else f"the SuperLink exited with status {code}"

    def refusals(self) -> list[str]:
        """The SuperNodes the SuperLink refused since the last call, one line each (whole log lines only)."""
        if self.log_dir is None:
            return []
        try:
            with open(self.log_dir / "superlink.log", "rb") as log:
                log.seek(self._log_read)
                new = log.read()
        except OSError:
            return []
        complete = new[:new.rfind(b"\n") + 1]
        self._log_read += len(complete)
        return security.refusals(complete.decode(errors="replace"))


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
                    certificates: Path | None = None, auth: bool = False) -> subprocess.Popen:
    """`auth`: only SuperNodes whose public keys are registered (`register`) may join; needs TLS."""
    args = [tool("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if certificates:
        args += ["--ssl-certfile", str(certificates / "server.pem"), "--ssl-keyfile", str(certificates / "server.key"),
                 "--ssl-ca-certfile", str(certificates / "ca.crt")]
        args += ["--enable-supernode-auth"] if auth else []
    else:
        args.append("--insecure")
        if host not in LOOPBACK:
            print(f"warning: the SuperLink listens on {host} without TLS: anyone who reaches this port can join "
                  "or submit runs; leave out --insecure", file=sys.stderr)
    with open(log_dir / "superlink.log", "ab") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(args, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    _wait_for_port(host, port, process)
    return process


def register(home: Path, env: dict[str, str], public_keys: list[Path], timeout_s: float = 120.0) -> None:
    """`flwr supernode register KEY eurosat` for each key (side by side: each is a CLI start of ~2 s),
    through the SuperLink's Control API named in `$FLWR_HOME/config.toml`."""
    procs = [(key, subprocess.Popen([tool("flwr"), "supernode", "register", str(key), FEDERATION, "--format", "json"],
                                    env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
             for key in public_keys]
    for key, proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise DeploymentError(f"flwr supernode register {key}: no answer within {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            try:
                why = json.loads(out).get("error-message") or out
            except (ValueError, AttributeError):
                why = out
            lines = [line.strip(" │╭╮╰╯─") for line in str(why).splitlines()]
            raise DeploymentError(f"flwr supernode register {key}: {' '.join(l for l in lines if l)[-300:]}")


def start_supernode(address: str, partition: int, partitions: int, env: dict[str, str], log_dir: Path,
                    certificates: Path | None = None, extra: str = "", private_key: Path | None = None) -> subprocess.Popen:
    """One SuperNode serving `partition`; `extra` node config, e.g. a device choice; `private_key`
    the key it authenticates with (its public key registered)."""
    args = [tool("flower-supernode"), "--superlink", address, "--port", str(free_port()),
            "--node-config", f"partition-id={partition} num-partitions={partitions} {extra}".strip()]
    args += ["--root-certificates", str(certificates / "ca.crt")] if certificates else ["--insecure"]
    args += ["--auth-supernode-private-key", str(private_key)] if private_key else []
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
          cpus: int = 1, auth: bool = False, public_keys: tuple[Path, ...] = (),
          node_keys: Path | None = None) -> Federation:
    """A SuperLink on `port` (a free one) of `host`, and `supernodes` SuperNodes on this machine,
    unless they are `external` (started elsewhere, e.g. by srun on every node of a Slurm job).
    With `auth`, `public_keys` are registered before any SuperNode starts, and the SuperNodes
    started here use `node_keys/supernode-<i>.key`. The `cpus` are shared among the SuperNodes
    (OMP_NUM_THREADS), as Ray shares them in simulation."""
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / security.REGISTERED).unlink(missing_ok=True)
    port = port or free_port(host)
    superlink = start_superlink(home, env, host, port, log_dir, certificates, auth)
    federation = Federation(f"{_reachable(host)}:{port}", superlink, log_dir=log_dir)
    write_federation(home, federation.address, certificates)  # `flwr supernode register` reads it
    if auth:
        register(home, env, list(public_keys))
        # External SuperNodes (supernode.py) wait for this launcher's mark, not an earlier attempt's.
        (log_dir / security.REGISTERED).write_text(f"{os.getpid()}\n")
    node_env = {**env, "OMP_NUM_THREADS": str(max(1, cpus // max(supernodes, 1)))}
    for i in range(0 if external else supernodes):
        key = security.key_paths(node_keys, i)[0] if auth and node_keys else None
        federation.supernodes.append(start_supernode(federation.address, i, supernodes, node_env, log_dir, certificates,
                                                     private_key=key))
    return federation
