"""The README's walk-through "From run to report", run as a new user would, in a fresh copy of the
project, on the test slice: each command exactly as shown, with only `-c "data='SLICE'
num-server-rounds=2"` added (`--set` for the job script), and the run folder the launcher printed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from test_docs import FENCE

SECTION = "## From run to report"


def walkthrough() -> list[str]:
    section = (ROOT / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [body for lang, body in FENCE.findall(section) if lang == "bash"]


def fresh_copy(dst: Path) -> Path:
    """The project's files as a clone has them (plus what is not committed yet), and its venv."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dst / name)
    (dst / ".venv").symlink_to(ROOT / ".venv")
    return dst


def bash(script: str, cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_readme_walkthrough_runs_on_the_slice(tiny_data, tmp_path):
    project = fresh_copy(tmp_path / "eurosat")
    # the reader exported EUROSAT_DATA in "Getting the data"; the copy's package is the one imported
    env = {**os.environ, "EUROSAT_DATA": str(tiny_data), "PYTHONPATH": str(project)}
    added = f"data='{tiny_data}' num-server-rounds=2"
    train, quantize, plots, one_command, deploy = walkthrough()

    # 1. train: the command as shown, plus the slice
    assert "-m eurosat.launch" in train
    proc = bash(f'{train.strip()} -c "{added}"', project, env)
    run_dir = Path(re.search(r"writing results to (\S+)", proc.stdout + proc.stderr).group(1))
    assert run_dir.is_relative_to(project / "outputs")
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"

    # 2. quantize: RUN= is the folder the launcher printed; no data folder needed
    quantize = re.sub(r"^RUN=\S+", f"RUN={run_dir}", quantize, flags=re.M)
    proc = bash(quantize, project, env)
    report = json.loads((run_dir / "quantization_comparison.json").read_text())
    assert report["data"] == str(tiny_data) and {"fp32", "fp16", "int8"} <= set(report["precisions"])
    assert report["communication_settings"]["source"] == "run"  # the run's own bytes, not a what-if
    assert "INT8 verdict" in proc.stdout

    # 3. the figures land beside the report
    bash(f"RUN={run_dir}\n{plots}", project, env)
    for png in ("comparison_plots.png", "comparison_plots_highres.png"):
        assert (run_dir / png).stat().st_size > 10_000, png

    # 5. to a device: ONNX files beside the model, then chips/ (real test chips, written by the
    # README's own command, named by row and true class) classified
    proc = bash(f"RUN={run_dir}\n{deploy}", project, env)
    assert {"model_fp32.onnx", "model_fp16.onnx", "model_int8.onnx"} <= {p.name for p in run_dir.iterdir()}
    chips = sorted((project / "chips").iterdir())
    table = pq.read_table(tiny_data / "test.parquet").to_pylist()
    assert len(chips) == 20 and all(p.read_bytes() == table[int(p.name[:5])]["image"]["bytes"] for p in chips)
    classified = [line for line in proc.stdout.splitlines() if line.startswith("chips/")]
    assert [line.split(":")[0] for line in classified] == [f"chips/{p.name}" for p in chips], proc.stdout

    # 4. the one-command version, here without Slurm (the --local line)
    [local] = [line for line in one_command.splitlines() if "--local" in line]
    proc = bash(f'{local.split("#")[0].strip()} --set "{added}"', project, env, timeout=1500)
    best = re.search(r"best FP32 model: (\S+)", proc.stdout + proc.stderr)
    assert best, proc.stdout[-2000:]
    assert (Path(best.group(1)).parent / "comparison_plots.png").is_file()
