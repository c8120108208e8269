"""Training recipes side by side: the measurements behind the default recipe.

    .venv/bin/python bench/recipe_comparison.py [--data ../shared/data/eurosat] [--rounds 5] [--seeds 42]
        [--recipe NAME='k=v ...' ...] [--set 'k=v ...'] [--out DIR]

Each recipe is a real `python -m eurosat.launch` run (10 clients, IID, the whole real train split,
`--rounds` rounds, no time limit, the full test split) with the default run config plus its own
overrides; every recipe runs on the same seeds. Prints the test accuracy per round and at the end
(mean and standard deviation over seeds), and writes `recipe_comparison.json` into --out. Without
--recipe, the default against the original system's recipe (configs/original.toml).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import bench_parser, code_fingerprint, file_sha256, machine  # noqa: E402
from eurosat.common.files import read_json, write_json  # noqa: E402
from eurosat.launch.launcher import launch  # noqa: E402
from eurosat.report.stats import mean_std  # noqa: E402

DEFAULT_RECIPES = {"default": "", "original": str(ROOT / "configs" / "original.toml")}


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", default="42", help="comma-separated [42]")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME='k=v ...'",
                        help="a recipe: its name and run-config overrides (a .toml file or k=v pairs); repeatable")
    parser.add_argument("--set", default="", help="overrides for every recipe")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "recipe_comparison")
    args = parser.parse_args()
    recipes = dict(r.split("=", 1) for r in args.recipe) if args.recipe else DEFAULT_RECIPES
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict] = {}
    for name, overrides in recipes.items():
        results[name] = {"overrides": overrides, "seeds": {}}
        for seed in seeds:
            started = time.perf_counter()
            base = [overrides] if overrides.endswith(".toml") else []
            extra = "" if overrides.endswith(".toml") else overrides
            code, run_dir = launch(base + [f"num-server-rounds={args.rounds} time-limit-min=0 server-eval-every=1 seed={seed} "
                                          f"data='{args.data}' output-dir='{args.out / 'runs'}' {extra} {args.set}"])
            if code != 0:
                print(f"error: {name} seed {seed}: the run did not complete (exit {code}); see {run_dir}", file=sys.stderr)
                return 1
            rounds = read_json(run_dir / "metrics.json")["rounds"]
            curve = [round(100 * r["server_test_accuracy"], 2) for r in rounds if "server_test_accuracy" in r]
            results[name]["seeds"][str(seed)] = {"run_dir": str(run_dir), "accuracy_per_round": curve,
                                                 "config": read_json(run_dir / "metrics.json")["config"],
                                                 "final_model_sha256": file_sha256(run_dir / "final_model.pt")}
            print(f"== {name} seed {seed}: {curve} ({time.perf_counter() - started:.0f} s)", flush=True)
        finals = [s["accuracy_per_round"][-1] for s in results[name]["seeds"].values()]
        results[name]["mean"], results[name]["std"] = mean_std(finals)
        write_json(args.out / "recipe_comparison.json", {"rounds": args.rounds, "seeds": seeds, "recipes": results,
                                                          "code": code_fingerprint(), "machine": machine(),
                                                          "date": time.strftime("%Y-%m-%d")})
    print(f"\n# {args.rounds} rounds, 10 clients, IID, whole train split, seeds {args.seeds}\n")
    print(f"{'recipe':<16}{'accuracy % (mean +- std)':>28}  overrides")
    for name, r in results.items():
        print(f"{name:<16}{r['mean']:>19.2f} +- {r['std']:<5.2f}  {r['overrides'] or '(defaults)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
