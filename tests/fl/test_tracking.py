"""Optional Weights & Biases logging, with the real wandb in offline mode (no network, no account)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import launch, run_dir_of

from eurosat.fl.config import ConfigError, load_run_config
from eurosat.fl.record import RunRecorder
from eurosat.fl.tracking import start

pytest.importorskip("wandb")


def logged_bytes(run_dir) -> bytes:
    """The offline record log W&B would upload with `wandb sync` (keys and values appear as text)."""
    logs = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, logs
    return logs[0].read_bytes()


def test_recorder_mirrors_rounds_and_summary_to_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    tracker = start("eurosat-test", tmp_path, {"weight-bits": 4, "activation-bits": 8}, group="w4a8")
    recorder = RunRecorder(tmp_path, {"weight-bits": 4}, tracker=tracker)
    for rnd, acc in ((1, 0.4321), (2, 0.6543)):
        recorder.add_round({"round": rnd, "server_test_accuracy": acc, "bytes_sent": 10, "bytes_received": 10,
                            "server_test_loss": 1.0, "cumulative_cost": 0.1, "fp32_equivalent_bytes": 20,
                            "client_compute": ["float32@cpu"]}, {})
    recorder.finish({}, compression_ratio=7.5)
    info = json.loads((tmp_path / "metrics.json").read_text())["wandb"]
    assert info["project"] == "eurosat-test" and info["mode"] == "offline" and "error" not in info
    log = logged_bytes(tmp_path)
    for needle in (b"server_test_accuracy", b"0.6543", b"compression_ratio", b"7.5", b"weight-bits", b"completed"):
        assert needle in log, needle


def test_a_wandb_failure_never_stops_the_run(tmp_path):
    # a fresh process: wandb keeps its first settings for the life of a process
    code = ("import sys; from pathlib import Path; from eurosat.fl.record import RunRecorder; "
            "from eurosat.fl.tracking import start; d = Path(sys.argv[1]); "
            "RunRecorder(d, {}, tracker=start('eurosat-test', d, {}, group='fp32')).finish({})")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WANDB_MODE": "not-a-mode"})  # wandb.init raises
    assert proc.returncode == 0, proc.stderr
    assert "wandb: could not start (ValidationError" in proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["summary"]["status"] == "completed"
    assert metrics["wandb"]["error"].startswith("ValidationError") and "\n" not in metrics["wandb"]["error"]


def test_wandb_project_without_wandb_is_a_clear_error(monkeypatch):
    assert load_run_config(["wandb-project='x'"]).wandb_project == "x"
    monkeypatch.setitem(sys.modules, "wandb", None)  # what Python reports for a package that is not installed
    with pytest.raises(ConfigError, match="wandb-project='x' needs wandb: pip install wandb"):
        load_run_config(["wandb-project='x'"])


@pytest.mark.long  # an optional integration; a second run of the e2e config (CI runs its unit tests above)
def test_flower_run_logs_to_wandb_offline_and_trains_the_same_model(e2e_run, small_data, tmp_path):
    """The e2e run's config again, W&B on: same seed, same model bit for bit (and W&B changes nothing)."""
    _, plain_dir = e2e_run
    proc = launch(["-c", f"num-server-rounds=2 num-supernodes=3 fraction-train=1.0 time-limit-min=0 data='{small_data}' "
                         f"output-dir='{tmp_path}' wandb-project='eurosat-test'"], env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = run_dir_of(proc)
    assert json.loads((run_dir / "metrics.json").read_text())["wandb"]["mode"] == "offline"
    assert b"server_test_accuracy" in logged_bytes(run_dir)
    ours, plain = torch.load(run_dir / "final_model.pt", weights_only=True), torch.load(plain_dir / "final_model.pt", weights_only=True)
    assert all(torch.equal(ours[k], plain[k]) for k in plain), "a repeated run with the same seed gave another model"
