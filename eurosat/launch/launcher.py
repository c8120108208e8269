"""Run one federated training job with `flwr run`, isolated, and report how it really ended.

    python -m eurosat.launch --run-config configs/fp16.toml --run-config "num-server-rounds=5"

What this adds around `flwr run . --stream`:
- checks its options, the run config, the output folder and every data file first: one line
  and exit 2, nothing started (a data folder that passed is remembered, see datacheck.py);
- makes the run folder exclusively before anything starts, so two launches never share one, and
  says where it is (`--result-json` writes it with the final state for scripts);
- its own `FLWR_HOME` (a temp folder, removed at the end) and free SuperLink ports, so two jobs
  on one node never meet; `flwr run` gets a copy of only the app's files (fab.py: no 10 s walk of `.venv`), and `FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1` (offline nodes);
- stops every process of the run when it ends, and a watchdog does so if the launcher is
  killed hard (see processes.py);
- exits by the run's own `status.json` (see record.EXIT_CODES), since `flwr run` exits 0 even
  when the ServerApp raised;
- on SIGTERM/SIGINT (Slurm's warning before its time limit) stops the processes, then marks the
  run interrupted with the last completed round's model as the final model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

from eurosat.launch import deployment, fab, security
from eurosat.fl.config import (ENGINES, PROJECT_DIR, PROJECT_ENV, ConfigError, RunConfig, load_run_config, override_pairs,
                               project_defaults, run_config_values, to_override_string)
from eurosat.data.loading import DataError, partition_sizes, resolve_source
from eurosat.data.check import check_source
from eurosat.common.paths import OutputPathError, check_output_dir, check_output_file
from eurosat.launch.processes import TOKEN_ENV, new_token, start_watchdog, stop_run
from eurosat.fl.record import (BAD_INPUT_EXIT, CHECKPOINT_FILE, EXIT_CODES, METRICS_FILE, STATUS_FILE, RunDirError,
                            mark_failed, check_run_dir, mark_interrupted, new_run_dir, read_status, resumable_config,
                            write_launch_result)
from eurosat.train.checkpoints import load_checkpoint

INPUT_ERRORS = (ConfigError, DataError, OutputPathError, RunDirError)
class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; the run is already stopped and marked."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quote_strings(override: str) -> str:
    """`precision=fp16` -> `precision="fp16"` for string keys: Flower's TOML parser needs the quotes,
    users do not type them. TOML files and quoted values pass unchanged."""
    if override.endswith(".toml"):
        return override
    pairs = override_pairs(override)
    kinds = {f.name.replace("_", "-"): f.type for f in fields(RunConfig)}

    def value(key: str, raw: str) -> str:
        return json.dumps(raw) if kinds.get(key) == "str" and raw[0] not in "'\"" else raw

    return " ".join(f"{k}={value(k, v)}" for k, v in pairs)


def federation_config(cfg: RunConfig, cpus: int, gpus: float, client_cpus: int, client_gpus: float) -> str:
    """Tell Ray what this job was granted; otherwise it takes the whole node."""
    return (f"num-supernodes={cfg.num_supernodes} init-args-num-cpus={cpus} init-args-num-gpus={gpus:g} "
            f"client-resources-num-cpus={client_cpus} client-resources-num-gpus={client_gpus:g}")


@dataclass(frozen=True)
class Resources:
    cpus: int | None = None
    gpus: float = 0.0
    client_cpus: int | None = None
    client_gpus: float | None = None

    def for_run(self, cfg: RunConfig) -> tuple[int, int, float]:
        """(CPUs for Ray, CPUs per client, GPUs per client) of a simulation. The clients of one
        round share the CPUs: one client a round (the default) gets them all, 2 of 10 a round on 2
        CPUs train side by side on one each, on a 16-CPU node on 8 each. Clients share the GPUs:
        10 on 1 GPU -> 0.1 each."""
        cpus = self.cpus or int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
        client_cpus = self.client_cpus or max(1, cpus // cfg.clients_per_round)
        client_gpus = self.client_gpus
        if client_gpus is None:
            client_gpus = min(1.0, self.gpus / cfg.num_supernodes) if self.gpus > 0 else 0.0
        return cpus, client_cpus, client_gpus

    def check(self) -> None:
        for name in ("cpus", "client_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
        for name in ("gpus", "client_gpus"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0, got {value}")


@dataclass(frozen=True)
class Engine:
    """Which Flower engine runs the federation, and the Deployment Engine's settings."""

    name: str = "simulation"  # or "deployment"
    supernodes: int | None = None  # deployment: SuperNodes to start [num-supernodes]
    host: str = "127.0.0.1"  # deployment: where the SuperLink listens
    certificates: Path | None = None  # deployment: TLS (ca.crt, server.pem, server.key)
    port: int | None = None  # deployment: the SuperLink's port [a free one]
    external: bool = False  # deployment: SuperNodes are started elsewhere (srun); only wait for them
    insecure: bool = False  # deployment: no TLS, no SuperNode auth (the explicit way out)
    register_keys: tuple[Path, ...] = ()  # deployment: a site's own SuperNodes' public keys to register

    @property
    def auth(self) -> bool:
        """TLS and SuperNode auth: the Deployment Engine's default."""
        return self.name == "deployment" and not self.insecure

    def check(self) -> None:
        if self.name not in ENGINES:
            raise ConfigError(f"--engine: unknown value {self.name!r}; allowed: {', '.join(ENGINES)}")
        if self.supernodes is not None and self.supernodes < 1:
            raise ConfigError(f"--supernodes: must be >= 1, got {self.supernodes}")
        if self.name == "simulation" and (self.supernodes is not None or self.certificates or self.host != "127.0.0.1"
                                          or self.port or self.external or self.insecure or self.register_keys):
            raise ConfigError("--supernodes, --host, --port, --certificates, --external-supernodes, --insecure and "
                              "--register-key are for --engine deployment")
        if self.insecure and (self.certificates or self.register_keys):
            raise ConfigError("--insecure: not with --certificates or --register-key (SuperNode auth needs TLS)")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"--port: must be a TCP port, got {self.port}")
        if self.name == "deployment":
            try:  # an address this machine can listen on, or a name that resolves to one
                socket.getaddrinfo(self.host, None, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                raise ConfigError(f"--host {self.host!r}: not an address or host name this machine can resolve") from None
        if self.certificates:  # what this machine's SuperNodes and `flwr run` dial must be in it
            security.check_certificates(self.certificates, deployment._reachable(self.host))
        for key in self.register_keys:
            security.read_public_key(key)


def prepare(overrides: list[str], project: Path, flwr_home: Path | None, check_data: bool = True,
            engine: Engine = Engine(), resume: Path | None = None,
            resources: Resources = Resources()) -> tuple[RunConfig, Path]:
    """Every check that can fail on input, then the run folder (made exclusively, or the run to
    resume); nothing runs yet."""
    cfg = check_run(overrides, project, flwr_home, check_data, engine, resume, resources)
    return cfg, new_run_dir(cfg.output_root(), cfg.label, cfg.run_dir, resume=cfg.resume)


def check_run(overrides: list[str], project: Path, flwr_home: Path | None, check_data: bool = True,
              engine: Engine = Engine(), resume: Path | None = None, resources: Resources = Resources()) -> RunConfig:
    """Every check that can fail on input, writing nothing: `prepare`'s first half, and all of
    `--check` (a job script's submit-time check, so that bad input fails before the job queues)."""
    resources.check()
    engine.check()
    if not (project / "pyproject.toml").is_file():
        raise ConfigError(f"--project {project}: not a Flower app folder (no pyproject.toml)")
    if flwr_home is not None:
        check_output_dir(flwr_home, "--flwr-home")
    base = [to_override_string(resumable_config(resume))] if resume else []
    given = base + [quote_strings(o) for o in overrides]
    check_engine_key(run_config_values(given, project).get("engine"), project_defaults(project).get("engine"), engine)
    extra = [f"engine={json.dumps(engine.name)}"]
    if engine.name == "deployment" and engine.supernodes:
        extra.append(f"num-supernodes={engine.supernodes}")
    if resume:
        extra.append(f"run-dir={json.dumps(str(resume))} resume=true")
    cfg = load_run_config(given + extra, project)
    check_output_dir(cfg.output_root(), "output-dir")
    if cfg.run_dir:  # a taken folder is named before the data is read (which may take a while)
        check_run_dir(cfg.output_root(), cfg.run_dir, cfg.resume)
    if resume:
        check_resume_model(resume, cfg)
    source = resolve_source(cfg.data)
    if check_data:
        check_source(source)
        partition_sizes(source, cfg.partitioner, cfg.num_supernodes, cfg.dirichlet_alpha, cfg.seed)
    return cfg


def check_engine_key(given: object, default: object, engine: Engine) -> None:
    """`engine` in the run config records what `--engine` ran: a value set there (a typo, or the
    other engine) would be silently replaced, so it is refused."""
    if given != default and given != engine.name:
        raise ConfigError(f"engine={given!r} in --run-config: the launcher's --engine sets it (allowed: "
                          f"{', '.join(ENGINES)}; this run: --engine {engine.name}); drop it from the run config")


def check_resume_model(run_dir: Path, cfg: RunConfig) -> None:
    """The checkpoint of a run to resume must name its round and load, strictly, into the model this
    run trains, as the clients load it: other keys or shapes would start the run and fail its next
    round, after its record was reopened. One line instead, the run folder untouched."""
    from eurosat.fl.state import to_numpy
    from eurosat.fl.task import load_state, make_model

    path = run_dir / CHECKPOINT_FILE
    checkpoint = load_checkpoint(path)  # check_resumable has read it once: a mapping with a state dict
    done = checkpoint.get("round") if isinstance(checkpoint, dict) else None
    why = "names no completed round (not a round checkpoint of this project)"
    if isinstance(done, int) and not isinstance(done, bool) and done >= 1:
        try:
            load_state(make_model(cfg), to_numpy(checkpoint["state_dict"]))
            return
        except (RuntimeError, TypeError, ValueError, KeyError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = f"does not fit this run's {cfg.label} model ({(lines[1:] or lines or [type(exc).__name__])[0][:200].rstrip('.')})"
    raise RunDirError(f"--resume {run_dir}: cannot be resumed: {path} {why}; the run folder is left as it is")


def warn_if_no_gpu(resources: Resources, engine: Engine) -> None:
    """`--gpus N` where no GPU is visible: Ray would be told of GPUs that are not there and the
    clients would train on the CPU without a word."""
    import torch

    if engine.name == "simulation" and resources.gpus > 0 and torch.cuda.device_count() == 0:
        print(f"warning: --gpus {resources.gpus:g}: no GPU is visible on this machine; the clients train on the CPU",
              file=sys.stderr, flush=True)


def launch(
    overrides: list[str], project: Path = PROJECT_DIR, flwr_home: Path | None = None,
    resources: Resources = Resources(), check_data: bool = True, result_json: Path | None = None,
    engine: Engine = Engine(), resume: Path | None = None,
) -> tuple[int, Path]:
    """Validate, run `flwr run --stream`, clean up; return (exit status, run folder).

    `result_json`: written as soon as the run folder exists (state "running", with the run's
    FLWR_HOME and launcher PID), so a script can follow a live run, and rewritten by `main` at the end.
    `resume`: continue that failed or interrupted run in its own folder (see record.py).
    """
    cfg, run_dir = prepare(overrides, project, flwr_home, check_data, engine, resume, resources)
    warn_if_no_gpu(resources, engine)
    cpus, client_cpus, client_gpus = resources.for_run(cfg)
    overrides_str = to_override_string({**cfg.to_mapping(), "data": cfg.data, "run-dir": str(run_dir)})
    temp_home = flwr_home is None
    home = Path(flwr_home or tempfile.mkdtemp(prefix="flwr-home-"))
    token = new_token()
    env = {
        **os.environ,
        TOKEN_ENV: token,
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
    print(f"eurosat.launch.launcher: run folder {run_dir}", flush=True)
    if result_json:
        write_launch_result(result_json, run_dir, "running", flwr_home=str(home), launcher_pid=os.getpid())
    watchdog = start_watchdog(token, run_dir, home if temp_home else None)
    federation = None
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="app-", dir=home))  # in a temp home the watchdog's cleanup covers it
    try:
        app = fab.stage(project, staging / "app")  # what flwr bundles, without its walk of .venv
        if engine.name == "deployment":
            certificates, node_keys = _secrets(engine, cfg.num_supernodes, run_dir / "deployment" / "secrets")
            public_keys = (*engine.register_keys, *sorted(node_keys.glob("*.pub") if node_keys else []))
            federation = deployment.start(home, env, cfg.num_supernodes, run_dir / "deployment", engine.host,
                                          certificates, engine.port, engine.external, cpus, engine.auth,
                                          public_keys, node_keys)
            print(f"eurosat.launch.launcher: Deployment Engine: SuperLink {federation.address}, {cfg.num_supernodes} "
                  f"SuperNodes{' (started elsewhere)' if engine.external else ''}; logs in {run_dir / 'deployment'}",
                  flush=True)
            command = [deployment.tool("flwr"), "run", str(app), deployment.FEDERATION,
                       "--stream", "--run-config", overrides_str]
        else:
            print(f"eurosat.launch.launcher: FLWR_HOME={home} ports {env['FLWR_LOCAL_SUPERLINK_HTTP_API_PORT']}/"
                  f"{env['FLWR_LOCAL_CONTROL_API_PORT']}", flush=True)
            command = [deployment.tool("flwr"), "run", str(app), "--stream",
                       "--run-config", overrides_str,
                       "--federation-config", federation_config(cfg, cpus, resources.gpus, client_cpus, client_gpus)]
        code = _run(command, env, project, run_dir, token, federation)
    except deployment.DeploymentError as exc:
        mark_failed(run_dir, f"DeploymentError: {exc}")
        code = EXIT_CODES["failed"]
    finally:
        stop_run(token)  # before the marker is read: a ServerApp still alive would rewrite it
        watchdog.terminate()
        shutil.rmtree(staging, ignore_errors=True)
        if temp_home:
            shutil.rmtree(home, ignore_errors=True)
    return (finish(run_dir) if code is None else code), run_dir


def _secrets(engine: Engine, supernodes: int, folder: Path) -> tuple[Path | None, Path | None]:
    """(TLS folder, SuperNode keys folder) of a deployment run, made in the run's own `folder`
    unless `--insecure`: a throwaway CA unless `--certificates`, and one key pair per SuperNode
    unless a site brings its own SuperNodes' keys (`--register-key` with `--external-supernodes`).
    A resumed run makes new ones: an earlier attempt's are of no use to anyone."""
    if not engine.auth:
        return None, None
    shutil.rmtree(folder, ignore_errors=True)
    nodes = 0 if engine.external and engine.register_keys else supernodes
    certificates, keys = security.make_run_secrets(folder, engine.host, engine.certificates, nodes)
    made = [f"a throwaway CA and server certificate in {certificates}"] if not engine.certificates else []
    made += [f"{nodes} SuperNode key pair(s) in {keys}"] if keys else []
    print(f"eurosat.launch.launcher: TLS and SuperNode auth: {' and '.join(made) or f'TLS from {certificates}'} "
          f"(0600); {nodes + len(engine.register_keys)} public key(s) registered", flush=True)
    return certificates, keys


def _run(command: list[str], env: dict[str, str], project: Path, run_dir: Path, token: str,
         federation: deployment.Federation | None) -> int | None:
    """`flwr run` until it ends, the SuperLink dies (deployment: the run fails), or a signal stops it.
    The exit status where this decides it; None where the run's own marker does (`finish`, read
    once the run's processes are stopped)."""
    proc = subprocess.Popen(command, env=env, cwd=project)

    def on_term(signum: int, _frame) -> None:
        # Stop first, mark second: a live ServerApp would rewrite metrics.json (or record its own
        # death as a failure) after the mark.
        name = signal.Signals(signum).name
        print(f"eurosat.launch.launcher: {name}: stopping the run", flush=True)
        stop_run(token)
        status = mark_interrupted(run_dir, reason=name) if (run_dir / METRICS_FILE).exists() else {}
        print(f"eurosat.launch.launcher: run marked {status.get('state', 'not started')}: {run_dir}", flush=True)
        raise Interrupted(name)

    def federation_broke() -> bool:
        """The SuperLink died: the run fails with that reason, also over the "failed" a dying
        ServerApp may have written for itself (its own error names only the interruption)."""
        if federation is None or not (why := federation.dead()):
            return False
        print(f"eurosat.launch.launcher: {why}: stopping the run", flush=True)
        stop_run(token)
        mark_failed(run_dir, f"DeploymentError: {why}")
        return True

    def name_refusals() -> None:
        for line in federation.refusals() if federation else []:
            print(f"eurosat.launch.launcher: {line}", flush=True)

    previous = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while proc.poll() is None:
            if federation_broke():
                return EXIT_CODES["failed"]
            name_refusals()
            time.sleep(0.5)
    except Interrupted:
        return EXIT_CODES["interrupted"]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        name_refusals()
    if federation_broke():  # `flwr run` can end before the loop above sees the SuperLink gone
        return EXIT_CODES["failed"]
    return None


def finish(run_dir: Path) -> int:
    """The exit status from the run's marker; a run that never started leaves no empty folder."""
    if not (run_dir / STATUS_FILE).exists():
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
        return EXIT_CODES["failed"]
    state = read_status(run_dir).get("state", "unknown")
    if state == "running":  # the ServerApp died without closing its run (e.g. killed)
        state = mark_interrupted(run_dir, reason="server process ended without finishing").get("state")
    return EXIT_CODES.get(state, EXIT_CODES["failed"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eurosat.launch",
        description="Run federated EuroSAT training with Flower (simulation or Deployment Engine), isolated, with a "
                    "trustworthy exit status: 0 completed, 1 failed, 2 bad input, 3 completed with client failures, "
                    "143 interrupted.",
    )
    parser.add_argument("--run-config", "-c", action="append", default=[], metavar="TOML|'k=v ...'",
                        help="run-config overrides: a configs/*.toml file or 'key=value ...'; repeatable, later wins")
    parser.add_argument("--flwr-home", type=Path, help="FLWR_HOME for this run, kept [a fresh temp folder, removed]")
    parser.add_argument("--cpus", type=int, help="CPUs Ray may use [$SLURM_CPUS_PER_TASK or all]")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs Ray may use [0]")
    parser.add_argument("--client-cpus", type=int, help="CPUs per client [--cpus / clients a round, at least 1: the round's clients share the CPUs]")
    parser.add_argument("--client-gpus", type=float, help="GPUs per client [--gpus / num-supernodes, at most 1]")
    parser.add_argument("--project", type=Path, default=PROJECT_DIR, help="the Flower app folder [%(default)s]")
    parser.add_argument("--skip-data-check", action="store_true",
                        help="trust the data folder: skip decoding every image up front (bad rows then fail clients)")
    parser.add_argument("--result-json", type=Path, metavar="PATH",
                        help="write {run_dir, state, ...} here when the run starts and {run_dir, state, exit_code, "
                             "error} when it ends (for scripts)")
    parser.add_argument("--engine", choices=ENGINES, default="simulation",
                        help="simulation: Ray actors in one process tree; deployment: a SuperLink and SuperNodes as "
                             "separate processes [simulation]")
    parser.add_argument("--supernodes", type=int, help="deployment: SuperNodes to start [num-supernodes]")
    parser.add_argument("--host", default="127.0.0.1", help="deployment: the address the SuperLink listens on "
                        "[127.0.0.1; a cluster: the node's address or 0.0.0.0]")
    parser.add_argument("--certificates", type=Path, metavar="DIR",
                        help="deployment: TLS with DIR/ca.crt, server.pem, server.key [a throwaway CA made for the run]")
    parser.add_argument("--insecure", action="store_true",
                        help="deployment: no TLS and no SuperNode auth: anyone who reaches the port can join [TLS + auth]")
    parser.add_argument("--register-key", type=Path, action="append", default=[], metavar="PUB",
                        help="deployment: register this SuperNode public key (OpenSSH ECDSA, e.g. ssh-keygen -t ecdsa "
                             "-b 384) so a site's own SuperNode may join; repeatable")
    parser.add_argument("--port", type=int, help="deployment: the SuperLink's port [a free one]")
    parser.add_argument("--external-supernodes", action="store_true",
                        help="deployment: start only the SuperLink; --supernodes SuperNodes are started elsewhere "
                             "(srun on every node of a Slurm job) and the first round waits for them")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue this failed or interrupted run from its last checkpoint, in its own folder")
    parser.add_argument("--check", action="store_true",
                        help="check the options, the run config and the data as a run would, print the resolved run "
                             "config as one 'key=value ...' line, and exit 0 (2 on bad input) without running or "
                             "writing anything")
    args = parser.parse_args(argv)
    resources = Resources(args.cpus, args.gpus, args.client_cpus, args.client_gpus)
    engine = Engine(args.engine, args.supernodes, args.host,
                    args.certificates.expanduser().resolve() if args.certificates else None, args.port,
                    args.external_supernodes, args.insecure, tuple(k.expanduser().resolve() for k in args.register_key))
    project = args.project.expanduser().resolve()
    resume = args.resume.expanduser().resolve() if args.resume else None
    try:
        if args.result_json:
            check_output_file(args.result_json, "--result-json")
        if args.check:
            cfg = check_run(args.run_config, project, args.flwr_home, not args.skip_data_check, engine, resume, resources)
            print(to_override_string({**cfg.to_mapping(), "data": cfg.data}), flush=True)
            return 0
        code, run_dir = launch(args.run_config, project, args.flwr_home, resources, check_data=not args.skip_data_check,
                               result_json=args.result_json, engine=engine, resume=resume)
    except INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT_EXIT
    status = read_status(run_dir) if (run_dir / STATUS_FILE).exists() else {}
    state = status.get("state", "not started")
    print(f"eurosat.launch.launcher: run {state}: {run_dir}", flush=True)
    if code == EXIT_CODES["failed"]:
        print(f"error: run failed: {status.get('error', 'the run did not start; see the log above')}", file=sys.stderr)
    if code == EXIT_CODES["completed_with_failures"]:
        print(f"warning: {status.get('client_failures')} client failure(s) in accepted rounds; see metrics.json "
              "(client_failures per round)", file=sys.stderr)
    if args.result_json:
        write_launch_result(args.result_json, run_dir, state, exit_code=code, error=status.get("error"))
    return code


if __name__ == "__main__":
    sys.exit(main())
