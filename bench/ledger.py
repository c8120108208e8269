"""The folder of a resumable benchmark: what ran, with which code on which machine, and which runs
may be paired. Shared by the accuracy, transport-frontier and poisoning benchmarks.

A folder holds one protocol and one code (a SHA-256 of the package, see `code_fingerprint`); each
seed's runs come from one machine's arithmetic (see docs/benchmarks.md, "Reproducibility"), so a
benchmark run in parts may move between machines a seed at a time. A run of a row is paired with the
baseline's run of the same seed only where both ran the same code on the same arithmetic with configs
that differ in nothing but the row's own keys.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import code_fingerprint, file_sha256, machine
from eurosat.common.files import atomic_write, read_json
from eurosat.report.plots import OKABE_ITO, styled, subplots
from eurosat.report.stats import mean_std, paired_difference

RUN_KEYS = ("run-dir", "output-dir", "resume")  # keys that name a run rather than decide what it trains


class ProvenanceError(ValueError):
    """Runs that must not be compared: other code, machine or protocol, or configs that differ beyond a row's keys."""


class RunFailed(RuntimeError):
    """A benchmark run that did not complete; the message names it and its folder."""


def arithmetic(machine_info: Mapping[str, Any]) -> dict:
    """What decides a run's bits besides code, config and seed: torch, the kernels' CPU capability,
    its vector instructions, the threads."""
    return {k: machine_info.get(k) for k in ("torch", "cpu_capability", "cpu_flags", "threads")}


def open_state(path: Path, protocol: Mapping[str, Any]) -> dict[str, Any]:
    """The benchmark's JSON state (new or resumed) with `results`, `runs` and `provenance`, and
    `machine` this session's machine; a folder of another protocol or other code is refused."""
    state = read_json(path) if path.exists() else {}
    if state and state.get("protocol") != dict(protocol):
        raise ProvenanceError(f"{path} holds another protocol {state.get('protocol')}; use another --out")
    code = code_fingerprint()
    if state.get("results") and state.get("code", {}).get("code_sha256") != code["code_sha256"]:
        held = state.get("code", {}).get("commit", "code of unknown provenance")
        raise ProvenanceError(f"{path} holds runs of {held}, this is {code['commit']}: runs of different code are "
                              "never paired; use another --out")
    state.setdefault("protocol", dict(protocol))
    state.setdefault("code", code)
    state["machine"] = machine()  # each run's provenance keeps the machine it ran on
    for key in ("results", "runs", "provenance"):
        state.setdefault(key, {})
    return state


def set_aside_other_machines(state: dict[str, Any], seed: int, names: Sequence[str]) -> list[str]:
    """Before `seed`'s rows run here: its runs made on another machine's arithmetic, when some of
    `names` are still to run for it, are set aside under `superseded` (kept, with where they ran) and
    run again, so that every pair of a seed shares one arithmetic. A seed complete elsewhere stays."""
    results, key = state["results"], str(seed)
    if all(key in results.get(name, {}) for name in names):
        return []
    here = arithmetic(state["machine"])
    moved = []
    for name, by_seed in results.items():
        run = f"{name}@{seed}"
        ran_on = state["provenance"].get(run, {}).get("machine", {})
        if key in by_seed and arithmetic(ran_on) != here:
            state.setdefault("superseded", []).append(
                {"run": run, "result": by_seed.pop(key), "provenance": state["provenance"].pop(run, None),
                 "folder": state["runs"].pop(run, None), "why": f"seed {seed} unfinished, resumed on {here}"})
            moved.append(run)
    return moved


def provenance_of(state: Mapping[str, Any], run_dir: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What a finished run records beside its figure: code, date, machine, resolved config, model digest."""
    return {**state["code"], "date": time.strftime("%Y-%m-%d"), "machine": state["machine"],
            "config": {k: v for k, v in metrics["config"].items() if k not in RUN_KEYS},
            "client_compute": metrics["summary"].get("client_compute"),
            "final_test_loss": metrics["summary"].get("final_test_loss"),
            "final_model_sha256": file_sha256(run_dir / "final_model.pt")}


def check_pairable(name: str, seed: int, provenance: Mapping[str, dict], ignore: set[str], base: str) -> None:
    """`name`'s run and `base`'s run of the same seed: same code and arithmetic, configs equal but for `ignore`."""
    mine, theirs = provenance.get(f"{name}@{seed}"), provenance.get(f"{base}@{seed}")
    if mine is None or theirs is None:
        return
    if mine["code_sha256"] != theirs["code_sha256"]:
        raise ProvenanceError(f"{name}@{seed} ran at {mine['commit']}, {base}@{seed} at {theirs['commit']}: not paired")
    if arithmetic(mine.get("machine", {})) != arithmetic(theirs.get("machine", {})):
        raise ProvenanceError(f"{name}@{seed} and {base}@{seed} ran on different machines "
                              f"({arithmetic(mine.get('machine', {}))} vs {arithmetic(theirs.get('machine', {}))}): not paired")
    ignore = set(ignore) | set(RUN_KEYS)
    differ = sorted(k for k in set(mine["config"]) | set(theirs["config"])
                    if k not in ignore and mine["config"].get(k) != theirs["config"].get(k))
    if differ:
        raise ProvenanceError(f"{name}@{seed} and {base}@{seed} differ in {', '.join(differ)}: not paired")


def ledger_seeds(results: Mapping[str, Mapping[str, float]], seeds: Sequence[int]) -> list[int]:
    """`seeds` and every seed the ledger already holds: a later call over fewer seeds (say, one
    more row at seed 42) must not narrow the summary of the runs already made."""
    return sorted(set(seeds) | {int(s) for by_seed in results.values() for s in by_seed})


def seeds_label(results: Mapping[str, Mapping[str, float]], seeds: Sequence[int]) -> str:
    return ",".join(map(str, ledger_seeds(results, seeds)))


def paired_rows(results: Mapping[str, Mapping[str, float]], seeds: list[int], provenance: Mapping[str, dict],
                keys_of: Callable[[str], set[str]], base: str) -> list[dict]:
    """Per row: mean and std over seeds (`ledger_seeds`), and its difference to `base` paired by seed
    (`diff`, `diff_low`, `diff_high`: a Student-t 95 % interval; `real`: it excludes 0), over the
    seeds both have whose runs are pairable."""
    seeds = ledger_seeds(results, seeds)
    rows = []
    reference = results.get(base, {})
    for name, by_seed in results.items():
        values = [by_seed[str(s)] for s in seeds if str(s) in by_seed]
        if not values:
            continue
        mean, std = mean_std(values)
        row = {"row": name, "seeds": len(values), "mean": mean, "std": std, "per_seed": dict(by_seed)}
        paired = [s for s in seeds if str(s) in by_seed and str(s) in reference]
        for s in paired:
            check_pairable(name, s, provenance, keys_of(name), base)
        if name != base and len(paired) >= 2:
            diff = paired_difference([by_seed[str(s)] for s in paired], [reference[str(s)] for s in paired])
            row.update(diff=diff.estimate, diff_low=diff.low, diff_high=diff.high, real=diff.excludes_zero)
        rows.append(row)
    return rows


def launch_run(key: str, overrides: list[str], ok: Sequence[int] = (0,)) -> tuple[Path, dict[str, Any]]:
    """One real `python -m eurosat.launch` run: (its folder, its metrics.json)."""
    from eurosat.launch.launcher import launch

    exit_code, run_dir = launch(overrides)
    if exit_code not in ok:
        raise RunFailed(f"{key}: run did not complete (exit {exit_code}); see {run_dir}")
    return run_dir, read_json(run_dir / "metrics.json")


def run_all(state: dict[str, Any], names: Sequence[str], seeds: Sequence[int], run_one: Callable[[str, int], Any],
            persist: Callable[[], Any], describe: Callable[[Any], str]) -> None:
    """Every (row, seed) not yet in `state["results"]`: each seed of every row before any row's next
    seed; after each run its result is recorded and `persist()` writes the folder, so an interrupted
    benchmark resumes where it stopped (on another machine, a seed left unfinished runs again:
    `set_aside_other_machines`). `run_one` records its own run folder and provenance."""
    results = state["results"]
    for seed in seeds:
        moved = set_aside_other_machines(state, seed, names)
        if moved:
            persist()
            print(f"== seed {seed}: {len(moved)} runs made on another machine set aside ({', '.join(moved)}); "
                  "the seed runs again here", flush=True)
        for name in names:
            if str(seed) in results.get(name, {}):
                continue
            started = time.perf_counter()
            results.setdefault(name, {})[str(seed)] = run_one(name, seed)
            persist()
            print(f"== {name}@{seed}: {describe(results[name][str(seed)])} ({time.perf_counter() - started:.0f} s)",
                  flush=True)


CURVE_KEYS = ("round", "server_test_accuracy", "elapsed_seconds", "cumulative_mb")


def run_curve(metrics: Mapping[str, Any]) -> list[dict]:
    """A run's learning curve for the ledger: the rounds the server evaluated, with the keys a
    curves figure needs, so the figure can be drawn again from the ledger alone."""
    return [{k: r[k] for k in CURVE_KEYS if k in r} for r in metrics["rounds"] if "server_test_accuracy" in r]


def fill_curves(state: dict[str, Any]) -> list[str]:
    """Curves of ledger runs made before the ledger kept them, read from their run folders where
    those are still on this machine; returns the runs that have none."""
    curves = state.setdefault("curves", {})
    for key, run_dir in state.get("runs", {}).items():
        path = Path(run_dir) / "metrics.json"
        if key not in curves and path.is_file():
            curves[key] = run_curve(read_json(path))
    return [key for key in state.get("runs", {}) if key not in curves]


def curve_groups(state: Mapping[str, Any], names: Sequence[str],
                 seeds: Sequence[int]) -> tuple[list[tuple[str, list[dict]]], list[int]]:
    """(row, [{"rounds": curve} per seed]) for `curves_figure`, and the seeds drawn: those for which
    every row with a curve has one, so that the lines compare the same partitions."""
    curves = state.get("curves", {})
    drawn = [n for n in names if any(f"{n}@{s}" in curves for s in seeds)]
    common = [s for s in seeds if all(f"{n}@{s}" in curves for n in drawn)]
    return [(n, [{"rounds": curves[f"{n}@{s}"]} for s in common]) for n in drawn] if common else [], common


def run_benchmark(state: dict[str, Any], names: Sequence[str], seeds: Sequence[int], run_one: Callable[[str, int], Any],
                  persist: Callable[[], list[dict]], describe: Callable[[Any], str],
                  report: Callable[[list[dict]], str]) -> int:
    """`run_all`, then the report of every row; a run that fails is exit 1, runs that must not be
    paired exit 2 (one line each)."""
    try:
        run_all(state, names, seeds, run_one, persist, describe)
        rows = persist()
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ProvenanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(rows))
    return 0


def write_csv(path: Path, rows: list[dict], fields: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()), mode="w")


def chosen_rows(args: Any, known: Mapping[str, Any], default: Sequence[str], base: str, min_seeds: int = 2,
                what: str = "rows") -> tuple[list[int], list[str]]:
    """The seeds and rows a benchmark's command line asks for (`--seeds`, `--only`, `--skip` where
    the script has it, `--set`, `--data`), checked, the baseline `base` first: a ValueError names
    what is wrong in one line."""
    from eurosat.fl.config import override_pairs

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    skip = set(getattr(args, "skip", "").split(","))
    names = [n for n in (args.only.split(",") if args.only else default) if n not in skip]
    unknown = [n for n in names if n not in known]
    if unknown or len(seeds) < min_seeds:
        plural = "s" if min_seeds > 1 else ""
        raise ValueError(f"unknown {what} {unknown} (known: {', '.join(known)}), or fewer than {min_seeds} seed{plural}")
    if args.set:
        override_pairs(args.set)  # a malformed one is a ValueError naming it
    if not args.data.is_dir() and not getattr(args, "redraw", False):  # a redraw reads no data
        raise ValueError(f"--data {args.data}: no such folder")
    return seeds, ([base] if base not in names else []) + names


def format_paired(rows: list[dict], base: str, width: int = 16) -> str:
    """The report's table: each row's mean +- std over seeds and its paired difference to `base`."""
    head = f"vs {base}, paired (95% interval)"
    out = [f"{'row':<{width}}{'seeds':>6}{'accuracy % (mean +- std)':>27}{head:>38}"]
    for r in rows:
        diff = f"{r['diff']:+.2f} [{r['diff_low']:+.2f}, {r['diff_high']:+.2f}]" if "diff" in r else ""
        out.append(f"{r['row']:<{width}}{r['seeds']:>6}{r['mean']:>18.2f} +- {r['std']:<5.2f}{diff:>38}")
    return "\n".join(out)

@styled
def seed_figure(rows: list[dict], title: str):
    """Each row's mean +- std over seeds, and every seed's own accuracy beside it."""
    fig, ax = subplots(figsize=(max(7.0, 1.1 * len(rows)), 4.5))
    for i, r in enumerate(rows):
        color = OKABE_ITO[i % len(OKABE_ITO)]
        ax.errorbar([i], [r["mean"]], yerr=[r["std"]], fmt="o", ms=7, capsize=5, color=color, zorder=3)
        ax.scatter([i] * len(r["per_seed"]), list(r["per_seed"].values()), s=14, color=color, alpha=0.5, zorder=2)
    ax.set_xticks(range(len(rows)), [r["row"] for r in rows], rotation=20)
    ax.set(ylabel="test accuracy (%)", title=title)
    return fig
