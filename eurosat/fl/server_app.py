"""ServerApp: validate the run config, run budgeted FedAvg, save the model and the metrics.

The run folder's `status.json` says how the run ended: `flwr run` exits 0 even when this app
raises, so callers must trust the marker, never the exit code. A failure is also one line in
the log (`eurosat: run failed: ...`), above Flower's traceback.

Before any data is loaded the strategy checks the federation (`BudgetedFedAvg.await_nodes`): in
simulation a size other than `num-supernodes` fails at once with a line naming both numbers
(plain `flwr run .` simulates Flower's default of 2 SuperNodes unless told
`--federation-config num-supernodes=N`); on the Deployment Engine it waits for the SuperNodes.
"""

import platform
import time

import flwr
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from eurosat.common.cli import enable_logging
from eurosat.data.loading import NUM_CLASSES
from eurosat.fl import task, tracking
from eurosat.fl.config import RunConfig, link_wires
from eurosat.fl.scaffold import Controls
from eurosat.fl.strategy import MARGIN_FACTOR, BudgetedFedAvg, TimeBudget
from eurosat.fl.record import RunRecorder, new_run_dir
from eurosat.train.loop import seed_everything
from eurosat.fl.state import raw_nbytes, to_numpy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    enable_logging()
    budget, started = TimeBudget(None), time.time()  # started now: data loading counts against the wall clock
    cfg = RunConfig.from_mapping(context.run_config)  # one-line ConfigError before any work
    budget.limit_s, budget.eval_every = cfg.time_limit_s, cfg.server_eval_every
    run_dir = new_run_dir(cfg.output_root(), cfg.label, cfg.run_dir, resume=cfg.resume)
    print(f"eurosat: writing results to {run_dir}", flush=True)
    extra = {"versions": {"flwr": flwr.__version__, "torch": torch.__version__, "python": platform.python_version()}}
    tracker = tracking.start(cfg.wandb_project, run_dir, cfg.to_mapping(), group=cfg.label)
    seed_everything(cfg.seed)
    initial = task.initial_state(cfg)  # where a fresh run starts, and where error feedback's replicas start
    if cfg.resume:  # the same folder, from the last completed round; the budget starts anew
        recorder, done, checkpoint = RunRecorder.resume(run_dir, cfg.to_mapping(), extra, tracker, started)
        state, position = to_numpy(checkpoint), recorder.data["rounds"][-1]["lr_span"][1]
        print(f"eurosat: resuming after round {done} (attempt {recorder.attempt})", flush=True)
    else:
        recorder = RunRecorder(run_dir, cfg.to_mapping(), extra, tracker, started)
        done, position, state = 0, None, initial
    try:
        strategy = BudgetedFedAvg(
            cfg.link_plan(), cfg.transport_error_feedback, cfg.lr_schedule_plan(), cfg.server_optimizer(),
            min_clients_fraction=cfg.min_clients_fraction, round_timeout_s=cfg.round_timeout_s,
            cost_per_mb=cfg.cost_per_mb, expected_nodes=cfg.num_supernodes, seed=cfg.seed,
            limits=lambda: task.reply_limits(cfg),  # read at the first round, after the federation check
            aggregation=cfg.aggregation, trim_fraction=cfg.trim_fraction,
            controls=Controls(task.trainable(cfg), cfg.num_supernodes) if cfg.strategy == "scaffold" else None,
            initial=initial,  # nodes rebuild it from the seed
            fraction_train=cfg.fraction_train, fraction_evaluate=cfg.fraction_evaluate,
            min_train_nodes=1, min_evaluate_nodes=1 if cfg.fraction_evaluate > 0 else 0, min_available_nodes=1,
        )
        strategy.load_server_state(recorder.server_optimizer)  # a resumed FedAdam continues its moments, SCAFFOLD its controls
        if done < cfg.num_server_rounds:  # the federation first: a mismatch fails in seconds, before any data loads
            strategy.await_nodes(grid, budget)
        if cfg.time_limit_s:  # the final exports (the INT8 model's) must fit in the budget too
            budget.reserve_s = MARGIN_FACTOR * task.export_seconds(cfg)
        outcome = strategy.run(grid, state, cfg.num_server_rounds, budget, cfg.to_mapping(),
                               evaluate_fn=task.server_evaluator(cfg), on_round=recorder.add_round,
                               first_round=done + 1, schedule_position=position)
        exporting = time.perf_counter()
        artifacts = task.save_artifacts(cfg, run_dir, outcome.state)
        artifacts.update(export_seconds=round(time.perf_counter() - exporting, 3), export_reserve_s=round(budget.reserve_s, 3))
        if warning := below_chance(recorder.data["rounds"]):
            print(f"eurosat: warning: {warning}", flush=True)
            artifacts["warning"] = warning
        recorder.finish(
            task.final_state_dict(cfg, outcome.state),
            state="completed_with_failures" if outcome.client_failures else "completed",
            rounds_completed=outcome.rounds_completed,
            stop_reason=outcome.stop_reason,
            time_limit_reached=outcome.time_limit_reached,
            client_failures=outcome.client_failures,
            engine=cfg.engine,
            **dict(zip(("transport_up", "transport_down"), link_wires(cfg.to_mapping()))),
            fp32_model_bytes=raw_nbytes(outcome.state),
            **artifacts,
        )
        print(f"eurosat: finished ({outcome.stop_reason}) after {outcome.rounds_completed} rounds; "
              f"results in {run_dir}", flush=True)
    except BaseException as exc:
        recorder.fail(exc)
        print(f"eurosat: run failed: {type(exc).__name__}: {exc}; status in {run_dir}", flush=True)
        raise


def below_chance(rounds: list[dict]) -> str | None:
    """A model no better than guessing has not learnt, however the run ended: say so (a valid but
    far too high `lr` diverges to ~4 % and would otherwise end `completed` without a word)."""
    accuracy = rounds[-1].get("server_test_accuracy") if rounds else None
    if accuracy is None or accuracy > 1 / NUM_CLASSES:
        return None
    return (f"the final model is below chance ({accuracy:.2%} test accuracy; guessing gives {1 / NUM_CLASSES:.0%}): "
            "training diverged or failed (lr too high?)")
