"""Nothing lost, every failure named: real launches and real CLI calls on real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, cli, in_process, launch, run_dir_of

from eurosat.data.loading import federated_dataset, resolve_source
from eurosat.launch.launcher import main as launch_main
from eurosat.train.model import Net

ROOT_USER = os.geteuid() == 0


def _launcher(spawn, args: list[str], result: Path, log=subprocess.PIPE) -> subprocess.Popen:
    """A launcher in the background (`spawn`: conftest's, reaped if the test fails); `log`: where its
    output goes (a pipe must be drained)."""
    return spawn([sys.executable, "-m", "eurosat.launch.launcher", *args, "--result-json", str(result)], cwd=ROOT,
                            text=True, stdout=log, stderr=subprocess.STDOUT if log is not subprocess.PIPE else log)


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a parquet split with `change(rows)` applied to its rows (list of dicts)."""
    rows = pq.read_table(src).to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(src)), dst)
    return dst


def _copy_slice(small_data: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test", "validation"):
        (dst / f"{split}.parquet").write_bytes((small_data / f"{split}.parquet").read_bytes())
    return dst


@pytest.mark.slow
def test_two_launches_in_the_same_second_keep_apart_and_kill_9_stops_only_its_own(tiny_data, tmp_path, spawn):
    """Side by side, the same recipe: their own folders (same second: the -2 suffix) and, sampling
    2 of 4 clients a round, the same partitions and the same results round by round (node IDs are
    random in every run; the sample is drawn by partition with the seed; a constant learning rate,
    so the round count changes nothing). Then `kill -9` of the long run's launcher: its watchdog
    takes that federation down, closes the run as interrupted with its model, and the other run
    completes untouched."""
    common = (f"num-supernodes=4 fraction-train=0.5 local-epochs=1 lr-schedule='constant' server-eval-every=1 "
              f"time-limit-min=0 data='{tiny_data}' output-dir='{tmp_path}'")
    results = [tmp_path / "short.json", tmp_path / "long.json"]
    logs = [open(tmp_path / "short.log", "w"), open(tmp_path / "long.log", "w")]
    short, long_ = (_launcher(spawn, ["-c", f"num-server-rounds={n} {common}"], r, log)
                    for n, r, log in zip((2, 200), results, logs))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (results[1].exists() and
                                               (Path(json.loads(results[1].read_text())["run_dir"]) / "checkpoint.pt").exists()):
        time.sleep(1)
    live = json.loads(results[1].read_text())  # written when the run starts: run folder, FLWR_HOME
    killed, home = Path(live["run_dir"]), live["flwr_home"]
    assert live["state"] == "running" and (killed / "checkpoint.pt").exists(), "no round completed in time"
    assert _processes_with(f"FLWR_HOME={home}"), "the federation should be running"
    os.kill(long_.pid, signal.SIGKILL)
    long_.wait()
    # the watchdog notices within a poll and then takes at most `stop_run`'s 60 s (SIGTERM, 10 s of
    # grace, SIGKILL until quiet): allow that and a margin for a loaded machine
    deadline = time.monotonic() + 90
    while _processes_with(f"FLWR_HOME={home}") and time.monotonic() < deadline:
        time.sleep(1)
    survivors = {p: _cmdline(p) for p in _processes_with(f"FLWR_HOME={home}")}
    assert not survivors, f"processes of the run survived the launcher: {survivors}"
    for _ in range(30):  # the watchdog closes the run just after stopping it (the ServerApp, losing
        # its clients, may record "failed" first; the watchdog's "interrupted" replaces it), then
        # removes the temporary FLWR_HOME
        if json.loads((killed / "status.json").read_text())["state"] == "interrupted" and not Path(home).exists():
            break
        time.sleep(1)
    status = json.loads((killed / "status.json").read_text())
    assert status["state"] == "interrupted" and status["stop_reason"] == "launcher killed"
    Net().load_state_dict(torch.load(killed / "final_model.pt", weights_only=True))  # the files survive
    assert not Path(home).exists()

    assert short.wait(timeout=600) == 0, (tmp_path / "short.log").read_text()[-2000:]
    for log in logs:
        log.close()
    done = Path(json.loads(results[0].read_text())["run_dir"])
    assert done != killed and done.parent == killed.parent  # same second, own folders (-2 suffix)
    assert json.loads((done / "status.json").read_text())["state"] == "completed"
    assert json.loads((done / "metrics.json").read_text())["run_dir"] == str(done)
    rounds = [json.loads((d / "metrics.json").read_text())["rounds"] for d in (done, killed)]
    assert len(rounds[0]) == 2 and len(rounds[1]) >= 1
    for a, b in zip(*rounds):  # every round both completed: the same clients, the same model
        assert a["partitions"] == b["partitions"] and len(a["partitions"]) == 2
        assert (a["server_test_loss"], a["client_train_loss"]) == (b["server_test_loss"], b["client_train_loss"])


def test_an_explicit_run_dir_that_holds_a_run_is_refused(e2e_run):
    _, run_dir = e2e_run
    proc = launch(["-c", f"run-dir='{run_dir}'"], timeout=120)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_resume_of_a_truncated_checkpoint_is_refused_before_anything_starts(e2e_run, tmp_path):
    """One line, exit 2, and the run folder exactly as it was (its metrics and status untouched)."""
    import shutil

    from eurosat.fl.record import write_status

    run_dir = Path(shutil.copytree(e2e_run[1], tmp_path / "run"))
    write_status(run_dir, "interrupted", stop_reason="SIGTERM")
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    proc = launch(["--resume", str(run_dir)], timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "checkpoint.pt" in proc.stderr and "truncated or corrupt" in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def _interrupted_run(folder: Path, data: Path, checkpoint: object) -> Path:
    """A run folder as the ServerApp leaves it after a round and a SIGTERM, made by the real recorder,
    with `checkpoint` as its checkpoint.pt."""
    from eurosat.common.files import save_torch
    from eurosat.fl.config import load_run_config
    from eurosat.fl.record import RunRecorder, mark_interrupted

    run_dir = folder / "run"
    run_dir.mkdir(parents=True)
    cfg = load_run_config([f"data='{data}' output-dir='{folder}'"])
    RunRecorder(run_dir, {**cfg.to_mapping(), "run-dir": str(run_dir)})
    save_torch(run_dir / "checkpoint.pt", checkpoint)
    mark_interrupted(run_dir)
    return run_dir


def test_resume_of_a_checkpoint_of_another_model_is_refused_before_anything_starts(small_data, tmp_path):
    """Wrong shapes or keys (a run of another model), no round, NaN, an unreadable status.json: each is
    one line naming what is wrong, exit 2, and every file of the run folder as it was."""
    good = Net().state_dict()
    cases = {
        "shape": ({"round": 1, "state_dict": {**good, "conv1.weight": torch.zeros(2, 2)}},
                  "does not fit this run's fp32 model (size mismatch for conv1.weight"),
        "keys": ({"round": 1, "state_dict": {k: v for k, v in good.items() if k != "fc2.bias"}},
                 'does not fit this run\'s fp32 model (Missing key(s) in state_dict: "fc2.bias"'),
        "no_round": (good, "names no completed round"),
        "nan": ({"round": 1, "state_dict": {**good, "fc2.bias": torch.full_like(good["fc2.bias"], float("nan"))}},
                "cannot be resumed: "),
        "status": ({"round": 1, "state_dict": good}, "status.json is not readable"),
    }
    for kind, (checkpoint, needle) in cases.items():
        run_dir = _interrupted_run(tmp_path / kind, small_data, checkpoint)
        if kind == "status":
            (run_dir / "status.json").write_text("garbage{")
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        proc = in_process(launch_main, "--resume", run_dir)
        assert proc.returncode == 2, (kind, proc.stderr)
        [line] = proc.stderr.strip().splitlines()
        assert needle in line and "the run folder is left as it is" in line, (kind, line)
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before, kind
    from eurosat.fl.config import load_run_config
    from eurosat.launch.launcher import check_resume_model

    # the same folder with the run's own model passes (what a real resume then trains from)
    check_resume_model(_interrupted_run(tmp_path / "good", small_data, {"round": 1, "state_dict": good}),
                       load_run_config([]))
    proc = launch(["--resume", str(tmp_path / "shape" / "run")], timeout=120)  # the command itself
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "size mismatch" in proc.stderr, proc.stderr


def test_run_config_values_the_launcher_would_drop_or_misread_are_refused(small_data, tmp_path):
    """`engine` is the launcher's (--engine); an empty output-dir would write into the project; a
    value that is not TOML is named with its key; a Hub id that cannot be reached (the suite is
    offline) is the one-line data error, as in the other tools."""
    out = f"output-dir='{tmp_path / 'out'}'"
    for override, needle in [
        ("engine=bogus", "engine='bogus' in --run-config: the launcher's --engine sets it"),
        ("engine=deployment", "this run: --engine simulation"),
        ('output-dir=""', "output-dir: empty"),
        ("num-server-rounds=abc", "num-server-rounds: expected int, got 'abc'"),
    ]:
        proc = in_process(launch_main, "-c", f"data='{small_data}' {out}", "-c", override)
        assert proc.returncode == 2, (override, proc.stderr)
        [line] = proc.stderr.strip().splitlines()
        assert needle in line, (override, line)
    for data in ("tanganke/eurosat", "bogus/x"):
        proc = launch(["-c", f"data='{data}' {out}"], timeout=120)
        assert proc.returncode == 2, proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: data: cannot load '{data}' split 'train' from the Hugging Face Hub (")
        assert "give a local parquet folder" in line
    assert not (tmp_path / "out").exists() and not (ROOT / "fp32").exists()


def test_check_mode_runs_the_checks_of_a_run_and_writes_nothing(small_data, tmp_path):
    """`--check` (what submit_job.sh calls at submit time): the run's own checks, the resolved run
    config as one line that loads back to the same config, and no run folder, record or output root."""
    from eurosat.fl.config import load_run_config

    out = tmp_path / "out"
    given = f"data='{small_data}' output-dir='{out}'"
    proc = in_process(launch_main, "--check", "-c", "configs/int8.toml", "-c", given, "-c", "lr=0.002")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert load_run_config([line]) == load_run_config(["configs/int8.toml", given, "lr=0.002"])
    for args, needle in [(["-c", "num-supernodes=100000"], "cannot fill 100000 partitions"),
                         (["-c", "engine='deployment'"], "the launcher's --engine sets it"),
                         (["--cpus", "0"], "--cpus: must be >= 1")]:
        proc = in_process(launch_main, "--check", "-c", given, *args)
        assert proc.returncode == 2 and needle in proc.stderr.strip().splitlines()[0], (args, proc.stderr)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_gpus_without_a_visible_gpu_is_one_warning(capsys):
    from eurosat.launch.launcher import Engine, Resources, warn_if_no_gpu

    warn_if_no_gpu(Resources(gpus=1), Engine())
    assert capsys.readouterr().err.splitlines() == [
        "warning: --gpus 1: no GPU is visible on this machine; the clients train on the CPU"]
    warn_if_no_gpu(Resources(), Engine())
    assert capsys.readouterr().err == ""


def test_a_key_repeated_in_one_run_config_string_is_named(tmp_path):
    proc = launch(["-c", f"lr=0.1 seed=3 lr=0.2 output-dir='{tmp_path}'"], timeout=120)
    assert proc.returncode == 2 and "lr given twice in one string" in proc.stderr, proc.stderr
    from eurosat.fl.config import load_run_config

    assert load_run_config(["lr=0.1", "lr=0.2"]).lr == 0.2  # across two -c, the later wins


FULL_DISK = """
import subprocess, sys, torch
from pathlib import Path
from eurosat.common.files import save_torch
from eurosat.train.model import Net
disk = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
small = {"w": torch.ones(10)}
save_torch(disk / "checkpoint.pt", small)
try:
    save_torch(disk / "checkpoint.pt", Net().state_dict())  # 1.7 MB into 1 MiB
except OSError as exc:
    print("refused:", exc)
print("kept:", torch.equal(torch.load(disk / "checkpoint.pt", weights_only=True)["w"], small["w"]))
print("files:", sorted(p.name for p in disk.iterdir()))
"""


def test_a_full_disk_names_the_file_and_keeps_the_previous_version(tmp_path):
    """A 1 MiB tmpfs, mounted in a mount namespace of the test's own: the host never sees it, and
    it goes when the process ends."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", *([] if ROOT_USER else ["--map-root-user"]),
                           sys.executable, "-c", FULL_DISK, str(disk)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode and ("unshare" in proc.stderr or "mount" in proc.stderr) and "refused:" not in proc.stdout:
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    assert f"refused: no space left on device writing {disk / 'checkpoint.pt'}" in proc.stdout
    assert "kept: True" in proc.stdout and "files: ['checkpoint.pt']" in proc.stdout  # no temp file left behind
    assert not any(disk.iterdir())  # the host's folder never held the tmpfs's files


@pytest.mark.slow
def test_a_client_that_fails_is_recorded_and_named(tiny_data, tmp_path):
    """One training row of partition 0 is not an image. With min-clients-fraction=0.5 the round is
    accepted with the other client; the run ends completed_with_failures (exit 3), and the round
    names the partition and the root cause."""
    data = _copy_slice(tiny_data, tmp_path / "data")
    from datasets import Image as ImageFeature

    part0 = federated_dataset(resolve_source(str(data)), "iid", 2, 0.5, 42).load_partition(0, "train")
    victim = part0.cast_column("image", ImageFeature(decode=False))[0]["image"]["path"]

    def spoil(rows):
        for row in rows:
            if row["image"]["path"] == victim:
                row["image"] = {"bytes": b"these bytes are not a JPEG", "path": victim}

    _rewrite(tiny_data / "train.parquet", data / "train.parquet", spoil)
    proc = launch(["--skip-data-check", "-c", f"num-server-rounds=1 num-supernodes=2 fraction-train=1.0 local-epochs=1 "
                   f"min-clients-fraction=0.5 data='{data}' output-dir='{tmp_path / 'out'}'"])
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    run_dir = run_dir_of(proc)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed_with_failures"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (round1,) = metrics["rounds"]
    assert round1["clients_asked"] == 2 and round1["clients"] == 1
    (failure,) = round1["client_failures"]
    assert failure["phase"] == "train" and failure["error"].startswith("partition 0: UnidentifiedImageError")
    assert metrics["summary"]["client_failures"] == 1 and metrics["summary"]["rounds_with_client_failures"] == 1
    assert "1 client failure(s)" in proc.stderr


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "(gone)"


def _processes_with(needle: str) -> list[int]:
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def test_bad_data_is_refused_before_anything_starts(small_data, tmp_path, monkeypatch):
    monkeypatch.setenv("EUROSAT_CACHE", str(tmp_path / "cache"))
    cases = {
        "zero_byte": (lambda d: (d / "train.parquet").write_bytes(b""), "train.parquet: not a readable parquet"),
        "truncated": (lambda d: (d / "test.parquet").write_bytes((small_data / "test.parquet").read_bytes()[:3000]),
                      "test.parquet: not a readable parquet"),
        "wrong_columns": (lambda d: pq.write_table(pa.table({"unrelated": [1, 2]}), d / "test.parquet"),
                          "test.parquet: no column image, label"),
        "label_12": (lambda d: _rewrite(small_data / "test.parquet", d / "test.parquet",
                                        lambda rows: rows[7].update(label=12)), "test.parquet: row 7: label 12"),
        "bad_image": (lambda d: _rewrite(small_data / "train.parquet", d / "train.parquet",
                                         lambda rows: rows[3].update(image={"bytes": b"xx", "path": "x.jpg"})),
                      "train.parquet: row 3: image does not decode"),
    }
    for kind, (spoil, needle) in cases.items():
        data = _copy_slice(small_data, tmp_path / kind)
        spoil(data)
        proc = in_process(launch_main, "-c", f"data='{data}' output-dir='{tmp_path / 'out'}'")
        assert proc.returncode == 2, (kind, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (kind, proc.stderr)
    assert not (tmp_path / "out").exists()  # nothing started, no run folder
    # a mistyped relative path is a missing folder, never a Hub id
    (tmp_path / "data").mkdir()
    proc = subprocess.run([sys.executable, "-m", "eurosat.launch.launcher", "-c", "data='data/eurosat'",
                           "-c", f"output-dir='{tmp_path / 'out'}'"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "data/eurosat does not exist" in proc.stderr, proc.stderr


def test_data_check_is_cached_per_file(small_data, tmp_path, monkeypatch):
    from eurosat.data.check import cache_dir, check_source

    monkeypatch.setenv("EUROSAT_CACHE", str(tmp_path))
    source = resolve_source(str(small_data))
    check_source(source, progress=False)
    assert len(list(cache_dir().glob("*.json"))) == 3  # train, test, validation
    stamps = {p: p.stat().st_mtime_ns for p in cache_dir().glob("*.json")}
    import eurosat.data.check as check

    monkeypatch.setattr(check, "check_file", lambda path: pytest.fail(f"{path} checked again, not read from the cache"))
    check_source(source, progress=False)
    assert {p: p.stat().st_mtime_ns for p in cache_dir().glob("*.json")} == stamps


@pytest.mark.parametrize("cpus, overrides, requested, expected", [
    (2, [], None, 2),                                        # the default job: one client a round, all the CPUs
    (2, ["fraction-train=0.2"], None, 1),                    # 2 of 10 clients a round on 2 CPUs: one each
    (16, ["fraction-train=0.2"], None, 8),                   # the same on a 16-CPU node: 8 threads each
    (16, ["fraction-train=1.0"], None, 1),                   # every client every round
    (16, ["num-supernodes=3 fraction-train=0.5"], None, 16),  # int(1.5) = 1 client a round
    (16, [], 3, 3),                                          # --client-cpus wins
])
def test_the_clients_of_a_round_share_the_cpus(cpus, overrides, requested, expected):
    from eurosat.fl.config import load_run_config
    from eurosat.launch.launcher import Resources

    cfg = load_run_config(overrides)
    assert Resources(cpus=cpus, client_cpus=requested).for_run(cfg) == (cpus, expected, 0.0)
    assert Resources(cpus=cpus, gpus=1.0).for_run(load_run_config(["fraction-train=1.0"]))[2] == 0.1


def test_launcher_options_are_checked_up_front(small_data, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--cpus", "-1"], "--cpus: must be >= 1"),
        (["--client-gpus", "-0.5"], "--client-gpus: must be >= 0"),
        (["--flwr-home", str(a_file)], "--flwr-home"),
        (["--project", str(tmp_path / "missing")], "not a Flower app folder"),
        (["-c", f"output-dir='{a_file}'"], "output-dir"),
        (["-c", "lr=nan"], "lr: expected a finite number"),
        (["-c", "nonsense"], "expected a .toml file or key=value pairs"),
        (["--engine", "deployment", "--host", "bad host name"], "--host 'bad host name': not an address"),
    ]
    broken = tmp_path / "broken-app"
    broken.mkdir()
    (broken / "pyproject.toml").write_text("[tool.flwr.app\n")
    cases.append((["--project", str(broken)], "not valid TOML"))
    for args, needle in cases:
        proc = in_process(launch_main, *args, "-c", f"data='{small_data}'")
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, proc.stderr)


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders: permissions cannot be tested as root")
def test_unwritable_output_folders_are_refused(small_data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = launch(["-c", f"data='{small_data}' output-dir='{locked / 'out'}'"], timeout=120)
        assert proc.returncode == 2 and "is not writable" in proc.stderr, proc.stderr
        proc = cli("analyze_results.py", small_data, "--csv", locked / "t.csv")
        assert proc.returncode == 2 and "is not writable" in proc.stderr, proc.stderr
    finally:
        locked.chmod(0o700)


def test_tools_check_output_paths_before_work(e2e_run, small_data, tmp_path):
    _, run_dir = e2e_run
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for script, args, needle in [
        ("compare_quantizations.py", [run_dir / "final_model.pt", "--data", small_data, "--out-dir", a_file],
         "--out-dir"),
        ("compare_quantizations.py", [run_dir / "final_model.pt", "--data", small_data, "--out-dir", a_file / "sub"],
         "--out-dir"),
        ("measure_compression.py", ["--checkpoint", run_dir / "final_model.pt", "--weight_bits", "4", "--out", tmp_path],
         "--out"),
        ("analyze_results.py", [run_dir.parents[2], "--csv", tmp_path], "--csv"),
        ("create_comparison_plots.py", ["--outputs", run_dir.parents[2], "--out", a_file], "--out"),
    ]:
        proc = cli(script, *args)
        assert proc.returncode == 2, (script, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (script, proc.stderr)
    assert a_file.read_text() == "x"


def test_report_tools_skip_malformed_records_and_replace_nothing_on_error(e2e_run, tmp_path):
    _, run_dir = e2e_run
    outputs = tmp_path / "outputs"
    good = outputs / "fp32" / "2026-01-01" / "00-00-00"
    good.parent.mkdir(parents=True)
    good.mkdir()
    for name in ("metrics.json", "status.json"):
        (good / name).write_bytes((run_dir / name).read_bytes())
    wrong_types = outputs / "fp32" / "2026-01-01" / "00-00-01"
    wrong_types.mkdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["rounds"][0]["server_test_accuracy"] = "high"
    (wrong_types / "metrics.json").write_text(json.dumps(metrics))
    truncated = outputs / "fp32" / "2026-01-01" / "00-00-02"
    truncated.mkdir()
    (truncated / "metrics.json").write_text((run_dir / "metrics.json").read_text()[:200])
    (truncated / "status.json").write_bytes((run_dir / "status.json").read_bytes())
    # valid JSON with values of the wrong kind where the readers group and label runs
    for stamp, edit, field in (("00-00-03", lambda m: m["config"].update(precision=["fp32"]), "config.precision"),
                               ("00-00-04", lambda m: m["config"].update({"weight-bits": "abc"}), "config.weight-bits"),
                               ("00-00-05", lambda m: m["summary"].update(fp32_model_bytes=None), "summary.fp32_model_bytes"),
                               ("00-00-06", lambda m: m["rounds"][-1].update(server_test_accuracy=float("nan")),
                                "server_test_accuracy")):
        odd = json.loads((run_dir / "metrics.json").read_text())
        edit(odd)
        (outputs / "fp32" / "2026-01-01" / stamp).mkdir()
        (outputs / "fp32" / "2026-01-01" / stamp / "metrics.json").write_text(json.dumps(odd))
    proc = cli("analyze_results.py", outputs)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 6 and all(w.startswith("warning: ") and "skipped" in w for w in warnings), proc.stderr
    assert any("00-00-01" in w and "server_test_accuracy" in w for w in warnings)
    assert any("00-00-02" in w for w in warnings)
    for stamp, field in (("00-00-03", "config.precision"), ("00-00-04", "config.weight-bits"),
                         ("00-00-05", "summary.fp32_model_bytes"), ("00-00-06", "server_test_accuracy")):
        assert any(stamp in w and field in w for w in warnings), (stamp, warnings)
    assert "00-00-00" in proc.stdout
    proc = cli("create_comparison_plots.py", "--outputs", outputs, "--out", tmp_path / "figs")
    # the odd records are skipped with a warning each, as above; one good run alone is nothing to compare
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: nothing to plot: "), proc.stderr
    assert len(lines) == 7 and all(w.startswith("warning: ") and "skipped" in w for w in lines[:-1]), proc.stderr
    # a broken report: exit 2, and the figures already there are untouched
    report = tmp_path / "quantization_comparison.json"
    report.write_text(json.dumps({"precisions": {"fp32": {"accuracy": 90.0}}}))
    (tmp_path / "comparison_plots.png").write_bytes(b"old figure")
    proc = cli("create_comparison_plots.py", report, "--outputs", outputs)
    assert proc.returncode == 2 and "accuracy_drop_percent" in proc.stderr, proc.stderr
    assert (tmp_path / "comparison_plots.png").read_bytes() == b"old figure"
    proc = cli("create_comparison_plots.py", tmp_path, "--outputs", outputs)
    assert proc.returncode == 2 and "is a directory" in proc.stderr
    # a report whose fields have the wrong shape (valid JSON): one line naming the file, no traceback
    full = {name: {"accuracy": 90.0, "accuracy_drop_percent": 0.0, "file_size_mb": 1.0, "compression_ratio": 1.0,
                   "communication": {"total_cost": 1.0, "savings_percent": 0.0}, "accuracy_drop_ci95": "wide"}
            for name in ("fp32", "int8")}
    for bad in ({"precisions": full}, {"precisions": {**full, "fp32": {**full["fp32"], "accuracy": float("nan")}}},
                {"precisions": {k: {**v, "accuracy_drop_ci95": [0, 0]} for k, v in full.items()}, "robustness": {}}):
        report.write_text(json.dumps(bad))
        proc = cli("create_comparison_plots.py", report, "--outputs", outputs)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert str(report) in proc.stderr and (tmp_path / "comparison_plots.png").read_bytes() == b"old figure"


def test_script_messages(tmp_path):
    proc = subprocess.run([str(ROOT / "submit_job.sh"), "fp32", "1", "-5"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "MINUTES must be a positive whole number" in proc.stderr, proc.stderr
    proc = subprocess.run([str(ROOT / "setup.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "set -euo" not in proc.stdout and "setup.sh" in proc.stdout


def test_unquoted_string_values_are_quoted_for_flower():
    from eurosat.launch.launcher import quote_strings

    assert quote_strings("precision=fp16 lr=0.01 data=/x/y") == 'precision="fp16" lr=0.01 data="/x/y"'
    assert quote_strings("data='/a b'") == "data='/a b'"
