"""The benchmarks' provenance: a folder holds one code's runs, a seed's runs one machine's, and a row
pairs with fp32 only where the two runs' configs differ in nothing but the row's own keys."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench.accuracy_benchmark import ProvenanceError, summarize  # noqa: E402
from bench.common import code_fingerprint  # noqa: E402


MACHINE = {"torch": "2.13.0", "cpu_capability": "AVX512", "cpu_flags": ["avx2", "avx512f"], "threads": 2}


def _prov(commit="abc", code="c0de", machine=MACHINE, **config):
    base = {"seed": 42, "transport": "fp32", "lr": 0.001, "local-epochs": 1}
    return {"commit": commit, "code_sha256": code, "machine": machine, "config": {**base, **config}}


def test_rows_pair_only_with_runs_of_the_same_code_and_config():
    results = {"fp32": {"42": 88.4, "43": 88.5}, "tx-int8": {"42": 88.3, "43": 88.2}}
    provenance = {"fp32@42": _prov(), "fp32@43": _prov(seed=43),
                  "tx-int8@42": _prov(transport="int8"), "tx-int8@43": _prov(seed=43, transport="int8")}
    [_, row] = summarize(results, [42, 43], provenance)
    assert row["diff_vs_fp32"] == pytest.approx(-0.2)  # the row's own key (transport) may differ
    with pytest.raises(ProvenanceError, match="tx-int8@43 ran at def, fp32@43 at abc: not paired"):
        summarize(results, [42, 43], {**provenance, "tx-int8@43": _prov("def", "other", seed=43, transport="int8")})
    avx2 = {**MACHINE, "cpu_capability": "AVX2", "cpu_flags": ["avx2"]}
    with pytest.raises(ProvenanceError, match="tx-int8@42 and fp32@42 ran on different machines"):
        summarize(results, [42, 43], {**provenance, "tx-int8@42": _prov(transport="int8", machine=avx2)})
    with pytest.raises(ProvenanceError, match="tx-int8@42 and fp32@42 differ in local-epochs: not paired"):
        summarize(results, [42, 43], {**provenance, "tx-int8@42": _prov(transport="int8", **{"local-epochs": 8})})


def test_a_call_over_fewer_seeds_still_summarizes_every_seed_in_the_ledger():
    from bench.ledger import seeds_label
    results = {"fp32": {"42": 88.4, "43": 88.5}, "tx-int8": {"42": 88.3, "43": 88.2}}
    provenance = {"fp32@42": _prov(), "fp32@43": _prov(seed=43),
                  "tx-int8@42": _prov(transport="int8"), "tx-int8@43": _prov(seed=43, transport="int8")}
    [_, row] = summarize(results, [42], provenance)  # say, `--seeds 42 --only` one more row
    assert row["seeds"] == 2 and row["diff_vs_fp32"] == pytest.approx(-0.2)
    assert seeds_label(results, [44]) == "42,43,44"


def test_a_seed_unfinished_on_another_machine_runs_again_here_and_a_finished_one_stays():
    from bench.ledger import arithmetic, paired_rows, set_aside_other_machines

    amd = {**MACHINE, "cpu_flags": ["avx2", "avx512f", "avx512_bf16"]}
    results = {"fp32": {"42": 88.0, "43": 87.0}, "tx-int8": {"42": 87.5}}
    provenance = {"fp32@42": _prov(machine=amd), "tx-int8@42": _prov(machine=amd, transport="int8"),
                  "fp32@43": _prov(machine=amd, seed=43)}
    state = {"results": results, "provenance": provenance, "runs": {"fp32@43": "runs/a"}, "machine": MACHINE}
    assert set_aside_other_machines(state, 42, ["fp32", "tx-int8"]) == []  # finished on its machine: stays
    assert set_aside_other_machines(state, 43, ["fp32", "tx-int8"]) == ["fp32@43"]
    assert results == {"fp32": {"42": 88.0}, "tx-int8": {"42": 87.5}} and "fp32@43" not in provenance
    [kept] = state["superseded"]
    assert kept["result"] == 87.0 and kept["folder"] == "runs/a" and arithmetic(kept["provenance"]["machine"]) == arithmetic(amd)
    # seed 43 runs again here; its pairs share this machine, seed 42's pair its own
    results["fp32"]["43"], results["tx-int8"]["43"] = 86.0, 86.5
    provenance.update({"fp32@43": _prov(seed=43), "tx-int8@43": _prov(seed=43, transport="int8")})
    [_, row] = paired_rows(results, [42, 43], provenance, lambda name: {"transport"}, "fp32")
    assert row["diff"] == pytest.approx(0.0)


def test_a_folder_of_other_code_is_refused_before_anything_runs(tmp_path):
    state = {"protocol": {"rounds": 60, "fraction": 1.0, "set": "", "clients": 10,
                          "data": str((ROOT.parent / "shared" / "data" / "eurosat").resolve()),
                          "recipe": "local-epochs=1 augment='none'"},
             "code": {"commit": "0213074", "code_sha256": "0" * 64}, "results": {"fp32": {"42": 88.44}}}
    (tmp_path / "accuracy_benchmark.json").write_text(json.dumps(state))
    proc = subprocess.run([sys.executable, "bench/accuracy_benchmark.py", "--only", "fp32", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"error: {tmp_path / 'accuracy_benchmark.json'} holds runs of 0213074, this is "
                                   f"{code_fingerprint()['commit']}: runs of different code are never paired; use another --out")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_benchmark_row_records_its_provenance_and_resumes(tiny_data, tmp_path):
    command = [sys.executable, "bench/accuracy_benchmark.py", "--data", str(tiny_data), "--seeds", "42,43",
               "--rounds", "1", "--only", "fp32", "--set", "local-epochs=1", "--out", str(tmp_path)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "accuracy_benchmark.json").read_text())
    assert state["code"] == code_fingerprint() and state["machine"]["cpu_capability"]
    for seed in (42, 43):
        prov = state["provenance"][f"fp32@{seed}"]
        assert prov["config"]["seed"] == seed and prov["config"]["data"] == str(tmp_path / "data")
        assert len(prov["final_model_sha256"]) == 64 and prov["client_compute"] and prov["final_test_loss"] > 0
    assert state["provenance"]["fp32@42"]["final_model_sha256"] != state["provenance"]["fp32@43"]["final_model_sha256"]
    runs = sorted((tmp_path / "runs").rglob("status.json"))
    assert len(runs) == 2
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "== fp32@" not in again.stdout  # resumed: nothing ran again
    assert sorted((tmp_path / "runs").rglob("status.json")) == runs  # no new run folder
    resumed = json.loads((tmp_path / "accuracy_benchmark.json").read_text())
    assert (resumed["results"], resumed["provenance"]) == (state["results"], state["provenance"])


def _bench(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_bench", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_strategy_row_pairs_with_fedavg_only_where_it_differs_in_its_own_keys():
    from bench.ledger import paired_rows

    bench = _bench("strategies")
    results = {"fedavg": {"42": 70.0, "43": 72.0}, "fedadam": {"42": 75.0, "43": 76.0}}
    provenance = {"fedavg@42": _prov(strategy="fedavg"), "fedavg@43": _prov(seed=43, strategy="fedavg"),
                  "fedadam@42": _prov(strategy="fedadam", **{"server-lr": 0.01, "tau": 0.001}),
                  "fedadam@43": _prov(seed=43, strategy="fedadam", **{"server-lr": 0.01, "tau": 0.001})}
    [_, row] = paired_rows(results, [42, 43], provenance, bench.row_keys, "fedavg")
    assert row["diff"] == pytest.approx(4.5)
    provenance["fedadam@43"]["config"]["dirichlet-alpha"] = 0.5  # other partitions: never paired
    with pytest.raises(ProvenanceError, match="fedadam@43 and fedavg@43 differ in dirichlet-alpha"):
        paired_rows(results, [42, 43], provenance, bench.row_keys, "fedavg")


def test_the_strategies_benchmark_refuses_bad_input_in_one_line(tmp_path):
    from conftest import in_process

    bench = _bench("strategies")
    for args, message in ((["--only", "fedsgd"], "unknown rows ['fedsgd']"), (["--seeds", "42"], "fewer than 2 seeds"),
                          (["--data", tmp_path / "nowhere"], "no such folder"), (["--set", "lr"], "lr")):
        proc = in_process(bench.main, *args, "--out", tmp_path / "out")
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_the_strategies_ledger_keeps_each_runs_curve_and_redraws_its_figures_without_running(tiny_data, tmp_path):
    """Two real FedAvg runs of 2 rounds: the ledger holds each run's evaluated rounds, so `--redraw`
    draws the figures again at any code from the ledger alone, and fills the curve of a run made
    before ledgers kept curves from its run folder (and names one whose folder is gone)."""
    from conftest import in_process

    bench = _bench("strategies")
    proc = in_process(bench.main, "--data", tiny_data, "--only", "fedavg", "--seeds", "42,43",
                      "--set", "num-server-rounds=2 server-eval-every=1 num-supernodes=2", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "strategies.json").read_text())
    assert [r["round"] for r in state["curves"]["fedavg@42"]] == [1, 2]
    assert 0 < state["curves"]["fedavg@43"][-1]["server_test_accuracy"] <= 1
    assert state["curves"]["fedavg@43"][-1]["server_test_accuracy"] == pytest.approx(state["results"]["fedavg"]["43"] / 100)
    assert (tmp_path / "strategies_curves.png").stat().st_size > 0

    older = {**state, "curves": {}, "runs": {**state["runs"], "fedavg@43": str(tmp_path / "gone")}}
    (tmp_path / "strategies.json").write_text(json.dumps(older))
    (tmp_path / "strategies_curves.png").unlink()
    folders = sorted((tmp_path / "runs").rglob("status.json"))
    proc = in_process(bench.main, "--redraw", "--out", tmp_path)
    assert proc.returncode == 0 and "no curve for fedavg@43 (run folders gone)" in proc.stdout, proc.stderr
    redrawn = json.loads((tmp_path / "strategies.json").read_text())
    assert redrawn["curves"] == {"fedavg@42": state["curves"]["fedavg@42"]}
    assert redrawn["results"] == state["results"] and (tmp_path / "strategies_curves.png").exists()
    assert sorted((tmp_path / "runs").rglob("status.json")) == folders  # nothing ran


def test_the_scale_benchmark_refuses_bad_input_in_one_line(tmp_path):
    from conftest import in_process

    bench = _bench("scale")
    for args, message in ((["--ef", "maybe"], "--ef 'maybe'"), (["--client-cpus", "0"], "--client-cpus 0: must be in [1,"),
                          (["--clients", "5"], "every --clients >= 10"), (["--clients", "ten"], "comma-separated integers"),
                          (["--data", tmp_path / "nowhere"], "no such folder")):
        proc = in_process(bench.main, *args, "--out", tmp_path / "out")
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written before the input is checked


def test_the_scale_report_shows_how_many_workers_trained_side_by_side():
    bench = _bench("scale")
    row = {"clients": 1000, "error_feedback": False, "side_by_side": 1, "trained_clients": 49, "peak_pss_total_gb": 1.6,
           "peak_pss_serverapp_gb": 0.7, "overhead_s": 0.5}
    header, line = bench.report([row]).splitlines()[:2]
    assert header.split()[:3] == ["clients", "EF", "workers"] and line.split()[:4] == ["1000", "off", "1", "49"]
