"""`python -m eurosat.data chips`: real test chips out of the real data slice, bytes untouched, named by
their row and true class; a folder that is not new is refused and nothing is half-written."""

import subprocess
import sys

import pyarrow.parquet as pq
from conftest import ROOT, in_process

from eurosat.data.__main__ import main
from eurosat.data.loading import CLASS_NAMES


def test_chips_are_the_splits_own_bytes_named_by_row_and_class(small_data, tmp_path):
    out = tmp_path / "chips"
    proc = in_process(main, "chips", small_data, out, "--count", "7", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 7 test chips to {out}" in proc.stdout
    table = pq.read_table(small_data / "test.parquet").to_pylist()
    files = sorted(out.iterdir())
    assert len(files) == 7
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    for path in files:
        row, name = path.stem.split("_", 1)
        assert path.suffix == ".jpg" and path.read_bytes() == table[int(row)]["image"]["bytes"]
        assert name == CLASS_NAMES[table[int(row)]["label"]]
    again = in_process(main, "chips", small_data, tmp_path / "again", "--count", "7", "--seed", "3")
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [p.name for p in files]  # the seed decides


def test_a_folder_that_is_not_new_and_a_bad_count_are_refused_in_one_line(small_data, tmp_path):
    out = tmp_path / "chips"
    out.mkdir()
    (out / "mine.jpg").write_bytes(b"the user's own file")
    proc = subprocess.run([sys.executable, "-m", "eurosat.data", "chips", str(small_data), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: chips: {out} exists and is not an empty folder; give a new one (nothing is overwritten)"]
    assert [p.name for p in out.iterdir()] == ["mine.jpg"]
    proc = in_process(main, "chips", small_data, tmp_path / "new", "--count", "0")
    assert proc.returncode == 2 and "--count 0: at least 1" in proc.stderr and not (tmp_path / "new").exists()
    proc = in_process(main, "chips", small_data, tmp_path / "new", "--split", "nosuch")
    assert proc.returncode == 2 and "no parquet files for split 'nosuch'" in proc.stderr
    assert not (tmp_path / "new").exists()
