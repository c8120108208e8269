"""Shared fixtures: a small slice of the real EuroSAT, and one real end-to-end Flower run.

The slice keeps the hub's parquet layout (image bytes untouched), stratified by class, so
every test trains and evaluates on real Sentinel-2 chips in seconds. Only where the shared
data folder is missing do tests fall back to generated images in the same layout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Expectations that depend on the device read it: the suite passes on GPU nodes too.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # what training in this process uses
FP16_COMPUTE = "float16" if DEVICE == "cuda" else "bfloat16"  # what precision=fp16 really computes in
# What a launched run's clients get: the launcher grants no GPU unless asked (`--gpus 0` by default),
# so Ray hides CUDA from them even on a GPU node.
LAUNCHED_DEVICE, LAUNCHED_FP16_COMPUTE = "cpu", "bfloat16"
SHARED_DATA = ROOT.parent / "shared" / "data" / "eurosat"
REAL_DATA = SHARED_DATA.exists()
# "It learnt", stated for each kind of data. Real EuroSAT: a 2-round model on the slice must clearly
# beat chance (10 %). Generated images (label = brightness, only where the real data is missing) are
# an easy task: one epoch on 1,200 of them reaches ~70 %, so the bar is higher and says less.
LEARNED_ACCURACY = 0.15 if REAL_DATA else 0.5
# Variables of the calling shell that would change what the suite tests (a data folder, a cache, a
# removed switch): the suite runs without them, so it is the same on every machine.
HOST_VARIABLES = ("QUANTIZATION_BITS", "WANDB_MODE", "WANDB_DIR", "FLWR_HOME")


def pytest_configure(config):
    """Hermetic: no EUROSAT_* or removed variable from the calling shell, and every cache and home
    the suite's processes would write (the project's, Hugging Face's, Flower's, Ray's, matplotlib's,
    wandb's) in one private folder, removed at the end; nothing goes to the network."""
    for name in [n for n in os.environ if n.startswith("EUROSAT_") or n in HOST_VARIABLES]:
        if not name.startswith("EUROSAT_TEST_"):  # the suite's own opt-ins stay
            del os.environ[name]
    assert "datasets" not in sys.modules, "datasets read its cache folder before the suite chose it"
    config._eurosat_cache = tempfile.mkdtemp(prefix="eurosat-test-cache-")
    private = Path(config._eurosat_cache)
    os.environ.update({"EUROSAT_CACHE": str(private / "eurosat"), "HF_HOME": str(private / "hf"),
                       "HF_DATASETS_CACHE": str(private / "hf" / "datasets"), "HF_HUB_OFFLINE": "1",
                       "HF_DATASETS_OFFLINE": "1", "FLWR_HOME": str(private / "flwr"),
                       "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                       "MPLCONFIGDIR": str(private / "matplotlib"), "RAY_TMPDIR": str(private / "ray"),
                       "WANDB_CONFIG_DIR": str(private / "wandb"), "WANDB_CACHE_DIR": str(private / "wandb"),
                       "WANDB_DATA_DIR": str(private / "wandb")})  # WANDB_DIR unset: runs keep theirs in the run folder


def pytest_unconfigure(config):
    import shutil

    shutil.rmtree(getattr(config, "_eurosat_cache", ""), ignore_errors=True)


def pytest_report_header(config):
    data = (f"real EuroSAT slices from {SHARED_DATA}" if REAL_DATA else
            f"GENERATED images (label = brightness; {SHARED_DATA} is missing): learning checks are against "
            "that easy task, not EuroSAT")
    return [f"eurosat data: {data}; a model has learnt at test accuracy > {LEARNED_ACCURACY}",
            f"eurosat device: in-process {DEVICE}, launched clients {LAUNCHED_DEVICE}"]
SLICE = {"train": 1200, "test": 300, "validation": 200}
TINY = {"train": 300, "test": 100, "validation": 100}  # for runs that test plumbing, not learning


def write_slice(dst: Path, sizes: dict[str, int] = SLICE, seed: int = 0) -> Path:
    """Stratified slice of the real data (or generated images where it is missing)."""
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        src = SHARED_DATA / f"{split}.parquet"
        if src.exists():
            table = pq.read_table(src)
            labels = np.asarray(table.column("label"))
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: n // 10] for c in range(10)])
            pq.write_table(table.take(pa.array(np.sort(idx))), dst / f"{split}.parquet")
        else:
            pq.write_table(_generated(n, seed), dst / f"{split}.parquet")
    return dst


def _generated(n: int, seed: int) -> pa.Table:
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 10
        pixels = np.clip(rng.normal(25 * label, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG")
        rows.append({"image": {"bytes": buf.getvalue(), "path": f"gen_{i}.jpg"}, "label": label})
    return pa.Table.from_pylist(rows)


@pytest.fixture
def state() -> dict[str, np.ndarray]:
    """A model's state with weights of a trained model's scale (N(0, 0.05)): the codecs' input."""
    from eurosat.fl.state import to_numpy
    from eurosat.train.model import Net

    net = Net()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    return to_numpy(net.state_dict())


def reap(started: list[subprocess.Popen], grace: float = 90) -> None:
    """The launcher's own stop (`stop_pids`): SIGTERM to each process still running (a launcher then
    stops its federation and closes its run), SIGKILL after `grace` seconds; then collect them."""
    from eurosat.launch.processes import stop_pids

    stop_pids([proc.pid for proc in started if proc.poll() is None], grace)
    for proc in started:
        proc.wait()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """`subprocess.Popen` for processes a test does not wait for: a failing assertion cannot leave
    them running (a launcher, its SuperLink and SuperNodes) to load the tests after it."""
    started: list[subprocess.Popen] = []

    def start(*args, **kwargs) -> subprocess.Popen:
        started.append(subprocess.Popen(*args, **kwargs))
        return started[-1]

    yield start
    reap(started)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return write_slice(tmp_path_factory.mktemp("eurosat-slice"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Rounds of a few seconds even on a loaded machine: for faults, timeouts and resume."""
    return write_slice(tmp_path_factory.mktemp("eurosat-tiny"), TINY)


def launch(args: list[str], timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real launcher (and so the real `flwr run`) in a subprocess. Its `--result-json` (the
    machine-readable run folder and final state) is attached as `proc.result` ({} if none was written)."""
    fd, result = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    os.unlink(result)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "eurosat.launch", *args, "--result-json", result], cwd=ROOT, capture_output=True,
            text=True, timeout=timeout, env={**os.environ, **(env or {})},
        )
        proc.result = json.loads(Path(result).read_text()) if Path(result).exists() else {}
    finally:
        Path(result).unlink(missing_ok=True)
    return proc


def cli(script: str, *args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one of the top-level command-line scripts the way a user does."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def in_process(main: Callable[[list[str]], int | None], *args: object) -> subprocess.CompletedProcess:
    """A command's own `main(argv)` run in this process, for bad-input cases that end before any
    work: the same code as the command line without a new interpreter per case (seconds each).
    Each such test also runs one case as a real subprocess, for the exit status and stderr of the
    command itself."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(argv, code or 0, out.getvalue(), err.getvalue())


def script_main(script: str) -> Callable[[list[str]], int | None]:
    """`main` of one of the top-level scripts, imported from its file."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_dir_of(proc: subprocess.CompletedProcess) -> Path:
    if not getattr(proc, "result", None):
        raise AssertionError(f"no result JSON:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return Path(proc.result["run_dir"])


@pytest.fixture(scope="session")
def e2e_run(small_data, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One real `flwr run`: 3 supernodes, 2 rounds, the real-data slice."""
    out = tmp_path_factory.mktemp("outputs")
    proc = launch(["-c", f"num-server-rounds=2 num-supernodes=3 fraction-train=1.0 time-limit-min=0 "
                         f"data='{small_data}' output-dir='{out}'"])
    return proc, run_dir_of(proc)


SLOW_FIXTURES = {"e2e_run", "qat_runs", "comparison", "slurm"}  # each is a real Flower run or a real Slurm


def pytest_collection_modifyitems(config, items):
    """A test that uses a real run's fixture is slow like the run, and a long test is slow too (so
    the fast tier, -m "not slow", never starts Flower); the others mark themselves."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("long"):
            item.add_marker(pytest.mark.slow)
