"""`python -m eurosat.data download`: the Hub is unreachable here, so the writing path runs on a local
source in the Hub's layout (`data/<split>-00000-of-00001.parquet`) through the same `load_dataset`."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, SHARED_DATA, in_process, write_slice

from eurosat.data.__main__ import main
from eurosat.data.loading import resolve_source

needs_real = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"real EuroSAT not at {SHARED_DATA}")


def hub_layout(src: Path, dst: Path) -> Path:
    (dst / "data").mkdir(parents=True)
    for split in ("train", "test"):
        (dst / "data" / f"{split}-00000-of-00001.parquet").symlink_to(src / f"{split}.parquet")
    return dst


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("EUROSAT_CACHE", str(tmp_path / "eurosat-cache"))


@needs_real
def test_download_writes_the_layout_the_project_reads(tmp_path):
    out = tmp_path / "eurosat"
    proc = in_process(main, "download", out, "--source", hub_layout(SHARED_DATA, tmp_path / "mirror"))
    assert proc.returncode == 0, proc.stderr
    assert "train: 21,600 rows" in proc.stdout and "test: 2,700 rows" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "train.parquet"]  # no staging left
    for split in ("train", "test"):
        written, original = pq.read_table(out / f"{split}.parquet"), pq.read_table(SHARED_DATA / f"{split}.parquet")
        assert written.column("label").to_pylist() == original.column("label").to_pylist()
        assert (written.column("image").combine_chunks().field("bytes").to_pylist()
                == original.column("image").combine_chunks().field("bytes").to_pylist())  # JPEGs not re-encoded
    assert dict(resolve_source(str(out)).files).keys() == {"train", "test"}


def test_a_source_of_the_wrong_size_leaves_the_folder_as_it_was(tmp_path):
    src = hub_layout(write_slice(tmp_path / "slice", {"train": 100, "test": 50}), tmp_path / "mirror")
    out = tmp_path / "eurosat"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "eurosat.data", "download", str(out), "--source", str(src)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # the rest: datasets' progress
    assert errors == proc.stderr.strip().splitlines()[-1:] == [
        f"error: download: {src} split train has 100 rows, expected 21,600 (not the EuroSAT RGB release this project uses)"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_existing_files_are_never_overwritten(tmp_path):
    out = tmp_path / "eurosat"
    out.mkdir()
    (out / "test.parquet").write_bytes(b"keep")
    proc = in_process(main, "download", out, "--source", tmp_path / "anything")
    assert proc.returncode == 2 and "test.parquet already exist" in proc.stderr
    assert (out / "test.parquet").read_bytes() == b"keep"


def test_an_unreachable_hub_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    proc = in_process(main, "download", tmp_path / "eurosat")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: download: cannot load tanganke/eurosat (") and "copy the folder" in line
    assert not (tmp_path / "eurosat").exists()  # the folder it made is removed again: nothing left behind
    kept = tmp_path / "mine"
    kept.mkdir()
    assert in_process(main, "download", kept).returncode == 2
    assert kept.is_dir() and not any(kept.iterdir())  # a folder that was there stays, as it was


def test_check_names_the_bad_row(tmp_path):
    good = write_slice(tmp_path / "good", {"train": 20, "test": 10})
    assert in_process(main, "check", good).returncode == 0
    table = pq.read_table(good / "test.parquet")
    labels = table.column("label").to_pylist()
    labels[3] = 12
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label",
                                    __import__("pyarrow").array(labels)), good / "test.parquet")
    proc = in_process(main, "check", good)
    assert proc.returncode == 2 and "row 3: label 12 is not a class id 0-9" in proc.stderr
