"""The default corruption sweep of the PTQ report, timed: 7 corruptions x 5 severities x 3 precisions.

    .venv/bin/python bench/robustness_sweep.py CHECKPOINT [--data ../shared/data/eurosat] [--out DIR]

Runs `compare_quantizations.py CHECKPOINT --corruptions all --severity 1..5` in-process on the whole
real test split (2,700 images), prints its table, the robustness summary, and the time the whole
comparison took against the 3-minute target. Use a converged fp32 model: the accuracies are the
README's robustness figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eurosat.report.compare import CompareOptions, compare, format_table  # noqa: E402
from eurosat.report.corruptions import CORRUPTIONS, SEVERITIES  # noqa: E402

TARGET_S = 180.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a trained FP32 final_model.pt")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eurosat"))
    parser.add_argument("--out", type=Path, help="keep the report and model files here [a temp folder]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        started = time.perf_counter()
        report = compare(args.checkpoint, CompareOptions(data=args.data, out_dir=out, corruptions=tuple(CORRUPTIONS),
                                                         severities=SEVERITIES))
        seconds = time.perf_counter() - started
    print(format_table(report))
    rob = report["robustness"]
    print(f"\n{'corruption':<16}" + "".join(f"{'sev ' + str(s):>22}" for s in SEVERITIES))
    for corruption in CORRUPTIONS:
        cells = [" / ".join(f"{rob['results'][p][corruption][str(s)]['accuracy']:.1f}" for p in rob["results"])
                 for s in SEVERITIES]
        print(f"{corruption:<16}" + "".join(f"{c:>22}" for c in cells))
    print(f"(cells: {' / '.join(rob['results'])} accuracy %)")
    sets = len(CORRUPTIONS) * len(SEVERITIES)
    print(f"\nwhole comparison: {seconds:.1f} s for {sets} corrupted sets x {len(rob['results'])} precisions on "
          f"{report['test_samples']} images (target < {TARGET_S:.0f} s): {'PASS' if seconds < TARGET_S else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
