#!/usr/bin/env bash
# run_comparison.sh - FP32 vs FP16 vs INT8 training in the same time budget, then the PTQ report.
#
#   ./run_comparison.sh [options]
#
# 1. submits fp32, fp16 and int8 training jobs (submit_job.sh), each at most ROUNDS rounds / MINUTES;
# 2. waits for them (polls squeue; its own overall timeout), and reports each job's end state;
# 3. runs compare_quantizations.py on the best FP32 model (highest final test accuracy among
#    finished fp32 runs under outputs/);
# 4. runs create_comparison_plots.py (PTQ figure + training_comparison.png).
# Continues with the runs that succeeded and says which failed and where their logs are.
#
# Options:
#   --minutes M        training minutes per job [time-limit-min in pyproject.toml]
#   --rounds R         rounds per job, a cap [num-server-rounds in pyproject.toml]
#   --precisions LIST  comma-separated presets [fp32,fp16,int8]
#   --timeout MIN      give up waiting after MIN minutes [MINUTES + 30]
#   --poll S           seconds between squeue polls [15]
#   --output-dir DIR   output root for the runs and the search for the best FP32 model [outputs/]
#   --local            run the jobs one after another here, without Slurm
#   every other option (--partition, --account, --cpus, --mem, --gpu, --gpus, --venv, --data,
#   --margin, --slurm-minutes, --signal-lead, --set) is passed on to submit_job.sh; see ./submit_job.sh --help
#   -h, --help
set -euo pipefail
PROJECT=$(cd "$(dirname "$0")" && pwd)
source "$PROJECT/eurosat/launch/jobs.sh"
log() { printf '[run_comparison %(%H:%M:%S)T] %s\n' -1 "$*"; }

MINUTES="" ROUNDS="" PRECISIONS=fp32,fp16,int8 TIMEOUT="" POLL=15 LOCAL=0 PASS=() OUT_DIR=$PROJECT/outputs
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --local) LOCAL=1 ;;
        --minutes|--rounds|--precisions|--timeout|--poll|--output-dir)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in --minutes) MINUTES=$2 ;; --rounds) ROUNDS=$2 ;; --precisions) PRECISIONS=$2 ;;
                         --timeout) TIMEOUT=$2 ;; --poll) POLL=$2 ;; --output-dir) OUT_DIR=$2 ;; esac
            shift ;;
        *) pass_on "$@"; [ "$TAKEN" -gt 0 ] || die "unknown argument $1 (see --help)"; shift $((TAKEN - 1)) ;;
    esac
    shift
done
venv_python
MINUTES=${MINUTES:-$(app_default time-limit-min)}
ROUNDS=${ROUNDS:-$(app_default num-server-rounds)}
positive --minutes "$MINUTES"
positive --rounds "$ROUNDS"
positive --poll "$POLL"
TIMEOUT=${TIMEOUT:-$((MINUTES + 30))}
positive --timeout "$TIMEOUT"
IFS=, read -r -a PRESETS <<<"$PRECISIONS"
[ ${#PRESETS[@]} -gt 0 ] || die "--precisions is empty"
declare -A SEEN
for p in "${PRESETS[@]}"; do
    [ -f "$PROJECT/configs/$p.toml" ] || die "unknown precision '$p'"
    [ -z "${SEEN[$p]:-}" ] || die "--precisions names $p twice"; SEEN[$p]=1
done
[ "$LOCAL" = 1 ] || need_sbatch
OUT_DIR=$(realpath -m -- "$OUT_DIR")
[[ "$OUT_DIR" != *[\'\"\\]* ]] || die "--output-dir $OUT_DIR: quotes and backslashes in the path are not supported"
PASS+=(--set "output-dir='$OUT_DIR'")
# Every job's arguments and run config are checked before the first one starts or is submitted.
for p in "${PRESETS[@]}"; do
    "$PROJECT/submit_job.sh" --check $([ "$LOCAL" = 1 ] && echo --local) "${PASS[@]+"${PASS[@]}"}" "$p" "$ROUNDS" "$MINUTES" || exit 2
done
mkdir -p "$OUT_DIR" 2>/dev/null && [ -w "$OUT_DIR" ] || die "--output-dir $OUT_DIR: cannot create or write this folder"
LOG_DIR=${EUROSAT_LOG_DIR:-$PROJECT/logs}
STARTED=$(date +%s)

declare -A JOB STATE
for p in "${PRESETS[@]}"; do
    if [ "$LOCAL" = 1 ]; then
        log "training $p here (--local): at most $ROUNDS rounds / $MINUTES min"
        if id=$("$PROJECT/submit_job.sh" --local --print-id "${PASS[@]+"${PASS[@]}"}" "$p" "$ROUNDS" "$MINUTES"); then
            STATE[$p]=COMPLETED
        else
            STATE[$p]=FAILED  # submit_job.sh printed the id anyway
        fi
        JOB[$p]=$id
    else
        JOB[$p]=$("$PROJECT/submit_job.sh" --print-id "${PASS[@]+"${PASS[@]}"}" "$p" "$ROUNDS" "$MINUTES") || die "submitting $p failed"
        log "submitted $p as job ${JOB[$p]} (log $LOG_DIR/fl-$p-r$ROUNDS-t${MINUTES}m-${JOB[$p]}.out)"
    fi
done

# A job is done when squeue no longer lists it: it prints only the header, or an error once
# the job's record has expired. Its real outcome is the run's final state, which the launcher
# writes with the run folder into logs/<job>-<id>.json (--result-json).
job_state() {  # job_state PRESET -> COMPLETED | FAILED | INTERRUPTED | ... | UNKNOWN (from the launcher's result JSON)
    "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"].upper())' \
        "$LOG_DIR/fl-$1-r$ROUNDS-t${MINUTES}m-${JOB[$1]}.json" 2>/dev/null || echo UNKNOWN
}
if [ "$LOCAL" = 0 ]; then
    pending=("${PRESETS[@]}")
    while [ ${#pending[@]} -gt 0 ]; do
        still=()
        for p in "${pending[@]}"; do
            if squeue -h -j "${JOB[$p]}" -o %T 2>/dev/null | grep -q .; then still+=("$p"); else
                STATE[$p]=$(job_state "$p"); log "job ${JOB[$p]} ($p) ended: ${STATE[$p]}"; fi
        done
        pending=("${still[@]+"${still[@]}"}")
        [ ${#pending[@]} -eq 0 ] && break
        if [ $(( $(date +%s) - STARTED )) -ge $((TIMEOUT * 60)) ]; then
            for p in "${pending[@]}"; do STATE[$p]=TIMEOUT; log "gave up waiting for job ${JOB[$p]} ($p) after $TIMEOUT min; it may still be running"; done
            break
        fi
        sleep "$POLL"
    done
else
    for p in "${PRESETS[@]}"; do [ "${STATE[$p]}" = COMPLETED ] && STATE[$p]=$(job_state "$p"); done
fi

failed=0
for p in "${PRESETS[@]}"; do
    if [ "${STATE[$p]}" = COMPLETED ]; then log "$p: completed"; else
        failed=1; log "$p: ${STATE[$p]}; see $LOG_DIR/fl-$p-r$ROUNDS-t${MINUTES}m-${JOB[$p]}.out and .err"; fi
done

BEST=$(cd "$PROJECT" && "$PY" -c '
import sys
from pathlib import Path
from eurosat.report.runs import best_run, find_runs
run = best_run(find_runs(Path(sys.argv[1])))
print(run.final_model if run else "")' "$OUT_DIR")
if [ -z "$BEST" ]; then
    log "no finished fp32 run with a saved model under $OUT_DIR/fp32: nothing to compare"
    exit 1
fi
log "best FP32 model: $BEST"
DATA_ARGS=()
for ((i = 0; i < ${#PASS[@]}; i++)); do [ "${PASS[$i]}" = --data ] && DATA_ARGS=(--data "${PASS[$((i + 1))]}"); done
(cd "$PROJECT" && "$PY" compare_quantizations.py "$BEST" "${DATA_ARGS[@]+"${DATA_ARGS[@]}"}")
(cd "$PROJECT" && "$PY" create_comparison_plots.py "$(dirname "$BEST")/quantization_comparison.json" --outputs "$OUT_DIR")
log "done in $(( ($(date +%s) - STARTED) / 60 )) min; results beside $BEST"
exit $failed
