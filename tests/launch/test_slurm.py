"""The job scripts against a real single-node Slurm (slurmctld + slurmd + munge from Debian's
packages, started by tests/slurm/start-local-slurm.sh as plain daemons, stopped by PID).

Skipped, with the reason, where this machine cannot run Slurm: not root, no cgroup
filesystem, or the packages cannot be installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, reap

SLURM = Path(__file__).parents[1] / "slurm"


LOCAL_SLURM_ENV = "EUROSAT_TEST_LOCAL_SLURM"
REAL_SLURM_ENV = "EUROSAT_TEST_REAL_SLURM"  # jobs on a cluster are the user's to allow


def _real_slurm() -> bool:
    """A Slurm this machine already belongs to: the tests submit to it and start or stop nothing."""
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _cannot_run_slurm() -> str | None:
    if os.environ.get(LOCAL_SLURM_ENV) != "1":
        return (f"no Slurm here, and the local one changes the host (apt-get install, /etc/slurm/slurm.conf, "
                f"scancel of every job): set {LOCAL_SLURM_ENV}=1 on a throwaway machine (.ci/run does)")
    if os.geteuid() != 0:
        return "Slurm tests need root (they start slurmctld/slurmd/munged)"
    if not re.search(r" /sys/fs/cgroup(/[a-z]+)? (cgroup|cgroup2) ", Path("/proc/mounts").read_text()):
        return "no cgroup filesystem under /sys/fs/cgroup: slurmd 22.05 cannot start"
    return None


@pytest.fixture(scope="module")
def slurm():
    if os.environ.get(LOCAL_SLURM_ENV) != "1" and _real_slurm():
        if os.environ.get(REAL_SLURM_ENV) != "1":
            pytest.skip(f"this machine belongs to a Slurm cluster: set {REAL_SLURM_ENV}=1 to submit the tests' jobs to it")
        yield  # a real cluster, by the user's choice: submit to it as it is
        return
    reason = _cannot_run_slurm()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "SLURM_CI_CPUS": "6"}  # three 2-CPU jobs side by side (oversubscribed)
    start = subprocess.run([str(SLURM / "start-local-slurm.sh")], capture_output=True, text=True, env=env, timeout=600)
    if start.returncode != 0:
        tail = (start.stdout + start.stderr)[-1500:]
        if "apt-get" in tail or "installing" in tail and "missing" in tail:
            pytest.skip(f"Slurm packages could not be installed: {tail[-300:]}")
        pytest.fail(f"local Slurm did not start:\n{tail}")
    yield
    subprocess.run([str(SLURM / "stop-local-slurm.sh")], capture_output=True, text=True, timeout=120)


def sh(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def wait_for(job_id: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sh("squeue", "-h", "-j", job_id, "-o", "%T").stdout.strip():
            return
        time.sleep(2)
    raise AssertionError(f"job {job_id} still queued/running after {timeout} s")


def run_folder(log: Path) -> Path:
    """The run folder from the launcher's result JSON beside the job's log (what run_comparison.sh reads)."""
    result = log.with_suffix(".json")
    assert result.exists(), f"no {result.name}:\n{log.read_text()[-2000:] if log.exists() else '(no log)'}"
    return Path(json.loads(result.read_text())["run_dir"])


@pytest.fixture
def job_env(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    return {"EUROSAT_DATA": str(tiny_data), "EUROSAT_LOG_DIR": str(logs), "EUROSAT_CPUS": "2",
            "EUROSAT_MEM": "2G"}, logs, tmp_path / "outputs"


def test_bad_arguments_fail_before_anything_is_submitted(job_env):
    env, logs, _ = job_env
    for args, needle in [(["fp8", "10", "1"], "unknown precision/preset 'fp8'"),
                         (["fp32", "ten", "1"], "ROUNDS must be a positive integer"),
                         (["fp32", "10", "1.5"], "MINUTES must be a positive whole number"),
                         (["fp32", "10"], "expected PRESET ROUNDS MINUTES"),
                         (["--data", "/nonexistent", "fp32", "10", "1"], "data folder /nonexistent does not exist")]:
        proc = sh(ROOT / "submit_job.sh", *args, env=env)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)
        assert not logs.exists() or not any(logs.iterdir())
    # a run-config data folder that does not exist (no $EUROSAT_DATA to win over it) fails before the job queues
    proc = sh(ROOT / "submit_job.sh", "--set", "data='/nonexistent'", "fp32", "10", "1", env={**env, "EUROSAT_DATA": ""})
    assert proc.returncode == 2 and "folder /nonexistent does not exist" in proc.stderr, proc.stderr
    proc = sh(ROOT / "submit_job.sh", "fp32", "10", "1", env={**env, "PATH": str(path_without_sbatch(logs.parent))})
    assert proc.returncode == 2 and "sbatch not found" in proc.stderr and "--local" in proc.stderr, proc.stderr
    # The wrappers check every job's options (handed on to submit_job.sh) before the first job starts,
    # also in --local mode, where each job would otherwise run and fail in turn.
    for script, args, needle in [("run_comparison.sh", ["--slurm-minutes", "0"], "--slurm-minutes must be a positive"),
                                 ("run_comparison.sh", ["--set", "lr=-1"], "lr"),
                                 ("run_comparison.sh", ["--precisions", "fp32,fp32"], "names fp32 twice"),
                                 ("run_comparison.sh", ["--output-dir", str(ROOT / "README.md")], "is a file, expected a folder"),
                                 ("submit_all_quantization.sh", ["--cpus", "0"], "--cpus must be a positive whole number")]:
        proc = sh(ROOT / script, "--local", "--minutes", "1", "--rounds", "1", *args, env=env)
        assert proc.returncode == 2 and needle in proc.stderr, (script, args, proc.stderr)
        assert "training" not in proc.stdout, proc.stdout
        assert not logs.exists() or not any(logs.iterdir())
    # the launcher's own checks run at submit time: the partitions, a key the launcher owns
    for args, needle in [(["--set", "num-supernodes=100000"], "cannot fill 100000 partitions"),
                         (["--set", "engine='deployment'"], "the launcher's --engine sets it")]:
        proc = sh(ROOT / "submit_job.sh", "--check", *args, "fp32", "10", "1", env=env)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)
    proc = sh(ROOT / "submit_job.sh", "--check", "fp32", "10", "1", env=env)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr  # valid: checked, nothing run or submitted
    assert not logs.exists() or not any(logs.iterdir())


def test_job_values_are_quoted_never_run_and_resume_is_checked(job_env, tmp_path):
    """Whatever a user passes reaches the launcher as one literal argument: a `--set` value holding
    `$(...)` is not run (the job script is built but not started: `--check`, then Slurm with a
    fake `sbatch` that only keeps the script), a job name that is not a plain word is refused,
    and `--resume` checks the run folder (one with a quote and a space in its name) before submitting."""
    import torch

    from eurosat.fl.config import project_defaults
    from eurosat.train.model import Net

    env, logs, _ = job_env
    marker = tmp_path / "ran"
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "sbatch").write_text(f"#!/bin/sh\ncat > {tmp_path / 'job.sh'}\necho 7\n")
    (fake / "sbatch").chmod(0o755)
    env = {**env, "PATH": f"{fake}:{os.environ['PATH']}"}
    value = f'run-dir="$(touch {marker})"'
    proc = sh(ROOT / "submit_job.sh", "--print-id", "--set", value, "fp32", "5", "5", env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "7", proc.stderr
    script = (tmp_path / "job.sh").read_text()
    # the launcher's line splits back into exactly the words the user meant (shlex: POSIX shell rules)
    line = next(l for l in script.splitlines() if l.startswith("exec python -m eurosat.launch"))
    words = shlex.split(line.rstrip(" \\"))
    assert words[words.index("-c"):][:6] == ["-c", "configs/fp32.toml", "-c", "num-server-rounds=5 time-limit-min=5",
                                                "-c", value], words
    assert not marker.exists()
    proc = sh(ROOT / "submit_job.sh", "--job-name", f'x"$(touch {marker})"', "fp32", "5", "5", env=env)
    assert proc.returncode == 2 and "--job-name may hold only" in proc.stderr and not marker.exists()

    run = tmp_path / "it's a run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"config": project_defaults(ROOT)}))
    torch.save({"round": 1, "state_dict": Net().state_dict()}, run / "checkpoint.pt")
    (run / "status.json").write_text(json.dumps({"state": "completed"}))
    proc = sh(ROOT / "submit_job.sh", "--check", "--resume", run, "5", "5", env=env)
    assert proc.returncode == 2 and "the run is completed" in proc.stderr, proc.stderr
    (run / "status.json").write_text(json.dumps({"state": "interrupted"}))
    assert sh(ROOT / "submit_job.sh", "--check", "--resume", run, "5", "5", env=env).returncode == 0
    torch.save({"round": 1, "state_dict": {"conv1.weight": torch.zeros(2, 2)}}, run / "other.pt")
    (run / "checkpoint.pt").rename(run / "good.pt")
    (run / "other.pt").rename(run / "checkpoint.pt")  # a checkpoint of another model: refused at submit time
    proc = sh(ROOT / "submit_job.sh", "--check", "--resume", run, "5", "5", env=env)
    assert proc.returncode == 2 and "does not fit this run's fp32 model" in proc.stderr, proc.stderr
    (run / "good.pt").replace(run / "checkpoint.pt")
    proc = sh(ROOT / "submit_job.sh", "--resume", run, "5", "5", env=env)
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in (tmp_path / "job.sh").read_text().splitlines() if l.startswith("exec python -m eurosat.launch"))
    words = shlex.split(line.rstrip(" \\"))
    assert words[words.index("--resume") + 1] == str(run), words


def path_without_sbatch(tmp: Path) -> Path:
    """A PATH folder linking every system tool except sbatch: a machine without Slurm."""
    bindir = tmp / "bin-without-slurm"
    bindir.mkdir(exist_ok=True)
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for tool in Path(folder).iterdir():
            if tool.name != "sbatch" and not (bindir / tool.name).exists():
                (bindir / tool.name).symlink_to(tool)
    return bindir


@pytest.mark.slow  # real Flower runs, one of them a Slurm job
def test_the_job_runs_through_slurm_and_in_local_mode_side_by_side(job_env, request):
    """The same job script twice at once: `--local` on a machine without sbatch (PATH without it),
    and submitted to the real Slurm, with its named log; each completes with its results. Where
    Slurm cannot run here, the local half still runs and the test is then skipped with the reason."""
    env, logs, outputs = job_env
    local = subprocess.Popen([str(ROOT / "submit_job.sh"), "--local", "--print-id", "--set",
                              f"output-dir='{outputs / 'local'}' num-supernodes=2", "fp32", "1", "1"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **env, "PATH": str(path_without_sbatch(logs.parent))})
    try:
        reason = _cannot_run_slurm()
        if reason is None:
            request.getfixturevalue("slurm")
            proc = sh(ROOT / "submit_job.sh", "--print-id", "--set", f"output-dir='{outputs}' num-supernodes=3",
                      "fp32", "2", "1", env=env)
            assert proc.returncode == 0, proc.stderr
            job = proc.stdout.strip()
            wait_for(job)
            log = logs / f"fl-fp32-r2-t1m-{job}.out"
            assert log.exists() and (logs / f"fl-fp32-r2-t1m-{job}.err").exists()
            run_dir = run_folder(log)
            assert json.loads((run_dir / "status.json").read_text())["state"] == "completed", log.read_text()[-2000:]
            assert (run_dir / "final_model.pt").exists()
            assert json.loads((run_dir / "metrics.json").read_text())["summary"]["rounds_completed"] >= 1
        out, err = local.communicate(timeout=600)
    finally:
        reap([local])  # SIGTERM first: the launcher stops its federation
    assert local.returncode == 0, err[-3000:]
    job = out.strip()
    assert job.startswith("local-")
    run_dir = run_folder(logs / f"fl-fp32-r1-t1m-{job}.out")
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    if reason is not None:
        pytest.skip(f"--local passed; the Slurm half cannot run here: {reason}")


@pytest.mark.long  # waits out Slurm's 2-minute limit
def test_job_killed_by_its_time_limit_leaves_an_interrupted_run(slurm, job_env):
    env, logs, outputs = job_env
    # the app may train for 10 minutes, Slurm allows 2: SIGTERM comes 45 s before the kill
    # (Slurm checks limits about every 30 s, so the signal lands 75-105 s in, after round 1)
    proc = sh(ROOT / "submit_job.sh", "--print-id", "--slurm-minutes", "2", "--signal-lead", "45",
              "--set", f"output-dir='{outputs}' num-supernodes=2", "fp32", "1000", "10", env=env)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    wait_for(job, timeout=300)
    run_dir = run_folder(logs / f"fl-fp32-r1000-t10m-{job}.out")
    status = json.loads((run_dir / "status.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert status["state"] == "interrupted" and metrics["summary"]["status"] == "interrupted"
    assert metrics["summary"]["rounds_completed"] >= 1, "no round finished before the signal"
    assert (run_dir / "final_model.pt").exists()


@pytest.mark.long  # three jobs, then the report and plots
def test_run_comparison_ends_with_report_and_plots(slurm, job_env):
    env, logs, outputs = job_env
    proc = sh(ROOT / "run_comparison.sh", "--minutes", "1", "--rounds", "2", "--poll", "3", "--timeout", "10",
              "--output-dir", outputs, "--set", "num-supernodes=2 local-epochs=1", "--data", env["EUROSAT_DATA"],
              env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = list(outputs.rglob("quantization_comparison.json"))
    assert len(reports) == 1
    folder = reports[0].parent
    for name in ("comparison_plots.png", "comparison_plots_highres.png", "model_int8.pt"):
        assert (folder / name).exists(), name
    assert (folder / "training_comparison.png").exists()
    for p in ("fp32", "fp16", "int8"):
        assert f"{p}: completed" in proc.stdout


@pytest.mark.long  # a multi-process Deployment Engine inside a Slurm job
def test_deployment_job_runs_supernodes_as_srun_tasks(slurm, job_env):
    """--clients-per-node: one job, the SuperLink and ServerApp in the batch step, srun starting
    one SuperNode per task (here 2 tasks on the one local node), with TLS and SuperNode auth (the
    default); same log and result JSON."""
    env, logs, outputs = job_env
    proc = sh(ROOT / "submit_job.sh", "--print-id", "--nodes", "1", "--clients-per-node", "2", "--cpus", "1",
              "--set", f"output-dir='{outputs}' fraction-train=1.0", "fp32", "2", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    wait_for(job, timeout=420)
    log = logs / f"fl-fp32-r2-t2m-{job}.out"
    run_dir = run_folder(log)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed", log.read_text()[-3000:]
    assert metrics["config"]["engine"] == "deployment" and metrics["config"]["num-supernodes"] == 2
    assert all(r["clients"] == 2 for r in metrics["rounds"])
    # TLS and SuperNode auth by default: each srun task waited for its key, made and registered by the launcher
    assert "TLS and SuperNode auth" in log.read_text() and "refused a SuperNode" not in log.read_text()
    keys = run_dir / "deployment" / "secrets" / "keys"
    assert sorted(p.name for p in keys.glob("*.key")) == ["supernode-0.key", "supernode-1.key"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys.iterdir())
    assert sorted(p.name for p in logs.glob(f"*-{job}-supernode-*.log")) == [
        f"fl-fp32-r2-t2m-{job}-supernode-0.log", f"fl-fp32-r2-t2m-{job}-supernode-1.log"]


def test_wrapper_defaults_come_from_pyproject(tmp_path):
    """run_comparison.sh and submit_all_quantization.sh take their rounds and minutes from
    pyproject.toml (one source of defaults), and a missing Python environment is one line, exit 2."""
    import sys

    from eurosat.fl.config import project_defaults

    defaults = project_defaults()
    venv = Path(sys.executable).parent.parent
    script = f'PROJECT={shlex.quote(str(ROOT))}; PASS=(--venv {shlex.quote(str(venv))}); source eurosat/launch/jobs.sh; ' \
             'venv_python; echo "$(app_default num-server-rounds) $(app_default time-limit-min)"'
    proc = sh("bash", "-c", script, env={"EUROSAT_VENV": ""})
    minutes = defaults["time-limit-min"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(defaults["num-server-rounds"]),
                                   str(int(minutes) if float(minutes).is_integer() else minutes)]
    proc = sh("bash", "-c", script.replace(shlex.quote(str(venv)), str(tmp_path / "none")))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no Python environment" in proc.stderr, proc.stderr
    for wrapper in ("run_comparison.sh", "submit_all_quantization.sh"):
        proc = sh(ROOT / wrapper, "--local", "--venv", tmp_path / "none")
        assert proc.returncode == 2 and "no Python environment" in proc.stderr and not proc.stdout, proc.stderr
        assert "pyproject.toml" in sh(ROOT / wrapper, "--help").stdout
