"""One SuperNode of a multi-node Slurm job, started by srun before the launcher has made its key.

    python -m eurosat.launch.supernode --result-json LOG.json --superlink HOST:PORT

The launcher (on the job's first node) makes the run's TLS and one key pair per SuperNode in the
run's folder and registers the public keys; only then may a SuperNode start, or the SuperLink
refuses it. So each srun task waits for the launcher's result JSON (which names the run folder and
the launcher's PID), then for `deployment/registered` written by that launcher (an earlier attempt's
is ignored), and becomes `flower-supernode` with the CA and the key of partition `SLURM_PROCID` of
`SLURM_NTASKS`. With `--insecure` it starts at once, without TLS or a key, as the launcher does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from eurosat.launch import security
from eurosat.launch.deployment import free_port, tool


def _wait_for_registration(result_json: Path, timeout_s: float) -> Path:
    """The run folder, once its launcher has registered the SuperNodes' keys."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            live = json.loads(result_json.read_text())
        except (OSError, ValueError):  # not written yet, or being written
            live = {}
        if live.get("state") not in (None, "running"):
            sys.exit(f"error: the run ended ({live['state']}) before this SuperNode could start")
        marker = Path(live.get("run_dir", "/nonexistent")) / "deployment" / security.REGISTERED
        try:
            if marker.read_text().strip() == str(live.get("launcher_pid")):
                return Path(live["run_dir"])
        except OSError:
            pass
        time.sleep(1)
    sys.exit(f"error: no registered SuperNode keys from the launcher ({result_json}) within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eurosat.launch.supernode",
                                     description="Start one SuperNode of a multi-node job once the launcher has "
                                                 "made and registered its key (srun runs one per task).")
    parser.add_argument("--result-json", type=Path, required=True, help="the launcher's --result-json")
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    parser.add_argument("--partition", type=int, default=int(os.environ.get("SLURM_PROCID", 0)),
                        help="the partition it serves [$SLURM_PROCID]")
    parser.add_argument("--partitions", type=int, default=int(os.environ.get("SLURM_NTASKS", 1)),
                        help="partitions in all [$SLURM_NTASKS]")
    parser.add_argument("--insecure", action="store_true", help="no TLS, no key (the launcher's --insecure)")
    parser.add_argument("--timeout-s", type=float, default=900, help="how long to wait for the keys [%(default)s]")
    args = parser.parse_args(argv)
    command = [tool("flower-supernode"), "--superlink", args.superlink, "--port", str(free_port()),
               "--node-config", f"partition-id={args.partition} num-partitions={args.partitions}"]
    if args.insecure:
        command.append("--insecure")
    else:
        secrets = _wait_for_registration(args.result_json, args.timeout_s) / "deployment" / "secrets"
        command += ["--root-certificates", str(secrets / "tls" / "ca.crt"),
                    "--auth-supernode-private-key", str(security.key_paths(secrets / "keys", args.partition)[0])]
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
