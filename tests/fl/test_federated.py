"""Real `flwr run` simulations on a slice of the real data (no mocks of Flower or torch)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import LAUNCHED_DEVICE, LEARNED_ACCURACY, cli, in_process, launch, run_dir_of

from eurosat.launch.launcher import main as launch_main
from eurosat.train.model import Net
from eurosat.train.checkpoints import load_state_dict


def test_end_to_end_run_writes_results(e2e_run):
    proc, run_dir = e2e_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {"final_model.pt", "metrics.json", "checkpoint.pt", "status.json"} <= {p.name for p in run_dir.iterdir()}
    assert run_dir.parts[-3] == "fp32"  # <root>/fp32/YYYY-MM-DD/HH-MM-SS
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for r in metrics["rounds"]:
        assert r["clients"] == 3 and r["bytes_sent"] > 3 * 1.7e6 and r["bytes_received"] > 3 * 1.7e6
        assert [c.split("x")[0] for c in r["client_compute"]] == [f"float32@{LAUNCHED_DEVICE}"]
        assert {"server_test_loss", "client_train_loss", "client_train_accuracy", "round_seconds", "elapsed_seconds"} <= set(r)
    summary = metrics["summary"]
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["time_limit_reached"] is False
    assert summary["final_test_accuracy"] > LEARNED_ACCURACY, "no better than chance (0.10)"
    net = Net()
    net.load_state_dict(torch.load(run_dir / "final_model.pt", weights_only=True))
    assert load_state_dict(run_dir / "checkpoint.pt").keys() == net.state_dict().keys()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    home = next(line for line in proc.stdout.splitlines() if "FLWR_HOME=" in line).split("=", 1)[1].split(" ports")[0]
    assert not Path(home).exists(), "the launcher's temporary FLWR_HOME is removed when the run ends"


@pytest.mark.slow
def test_failed_run_is_marked_and_exits_nonzero(tiny_data, tmp_path):
    """`flwr run` itself exits 0 here; the launcher must read the run's marker instead. A client
    fails at run time (the test hook makes it raise), and the error shown is its root cause, not
    Ray's wrapper."""
    proc = launch(["-c", f"num-server-rounds=1 num-supernodes=3 fraction-train=1.0 test-hook='raise@1' "
                         f"data='{tiny_data}' output-dir='{tmp_path / 'out'}'", "--cpus", "2"],
                  env={"EUROSAT_TEST_HOOKS": "1"})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    status = json.loads((run_dir_of(proc) / "status.json").read_text())
    assert status["state"] == "failed" and "partition 1: RuntimeError: test hook" in status["error"]
    assert "RayTaskError" not in status["error"]
    assert "run failed" in proc.stderr
    table = cli("analyze_results.py", tmp_path / "out", "--csv", tmp_path / "t.csv")
    assert table.returncode == 0 and ",failed," in (tmp_path / "t.csv").read_text()  # listed, not skipped


@pytest.mark.parametrize("overrides, message", [
    ("num-supernodes=40 partitioner='dirichlet' dirichlet-alpha=0.01",
     "dirichlet at dirichlet-alpha 0.01 cannot split 300 train rows into 40 partitions of at least 10 each"),
    ("num-supernodes=1000", "300 train rows cannot fill 1000 partitions (num-supernodes): the smallest would be "
                            "empty; lower num-supernodes to at most 300"),
])
def test_a_split_the_partitioner_cannot_make_is_refused_at_start(tiny_data, tmp_path, overrides, message):
    proc = launch(["-c", f"{overrides} data='{tiny_data}' output-dir='{tmp_path / 'out'}'"], timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_input_fails_before_anything_starts(tmp_path):
    for override, needle in [('precision="fp8"', "precision"), ('partitioner="x"', "partitioner"),
                             ("time-limit-min=-1", "time-limit-min"), ("fraction-train=0.0", "fraction-train"),
                             (f"data='{tmp_path}'", "no parquet files")]:
        # the first case through the real command line, the others through its main()
        override += f" output-dir='{tmp_path / 'out'}'"  # nothing, not even the write check, in the project
        proc = launch(["-c", override], timeout=300) if "fp8" in override else in_process(launch_main, "-c", override)
        assert proc.returncode == 2, (override, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        assert "run folder" not in proc.stdout and not (tmp_path / "out").exists()


def _fab(folder: Path) -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(folder)


def test_the_staged_app_bundles_exactly_what_flower_would(tmp_path):
    """fab.stage prunes whole folders (.venv, .git, ignored ones) instead of walking them: the
    FAB built from its copy must be Flower's own FAB of the project, byte for byte."""
    from eurosat.launch import fab

    project = tmp_path / "project"
    files = {
        "pyproject.toml": (Path(__file__).parents[2] / "pyproject.toml").read_text(),
        ".gitignore": ".venv/\n__pycache__/\n/outputs/*\n!/outputs/.gitkeep\n*.log\n",
        "eurosat/__init__.py": "", "eurosat/deep/nested/mod.py": "X = 1\n", "README.md": "# app\n",
        "configs/a.toml": "lr = 0.1\n", "tests/test_x.py": "def test(): pass\n", "notes.log": "ignored\n",
        ".venv/lib/site.py": "", ".venv/pyvenv.cfg": "", "outputs/run/metrics.json": "{}", "outputs/.gitkeep": "",
        "build/lib/x.py": "", ".git/HEAD": "ref: refs/heads/main\n", "eurosat/__pycache__/m.py": "", "data.bin": "\0",
    }
    for rel, text in files.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    (project / "eurosat" / "linked.py").symlink_to(project / "README.md")
    staged = fab.stage(project, tmp_path / "staged")
    assert (staged / "eurosat/deep/nested/mod.py").is_file() and not (staged / ".venv").exists()
    assert _fab(staged) == _fab(project)


@pytest.mark.slow
def test_the_staged_copy_of_this_project_bundles_like_flower(tmp_path):
    from eurosat.launch import fab

    root = Path(__file__).parents[2]
    assert _fab(fab.stage(root, tmp_path / "staged")) == _fab(root)


@pytest.mark.slow
def test_a_thousand_clients_ten_a_round(small_data, tmp_path):
    """1,000 SuperNodes in simulation, 10 sampled a round by partition (each holds one or two of
    the slice's 1,200 images): the roll call, sampling and records hold at that size."""
    proc = launch(["-c", f"num-supernodes=1000 fraction-train=0.01 num-server-rounds=2 time-limit-min=0 local-epochs=1 "
                         f"data='{small_data}' output-dir='{tmp_path}'"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = json.loads((run_dir_of(proc) / "metrics.json").read_text())
    assert [r["clients"] for r in metrics["rounds"]] == [10, 10]
    partitions = [set(r["partitions"]) for r in metrics["rounds"]]
    assert all(len(p) == 10 and max(p) < 1000 for p in partitions) and partitions[0] != partitions[1]
