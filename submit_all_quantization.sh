#!/usr/bin/env bash
# submit_all_quantization.sh - one training job per weight bit-width: 32, 16, 8, 4, 2, 1.
#
#   ./submit_all_quantization.sh [--gpu] [options]
#
# Jobs are named quant-32bit ... quant-1bit and use configs/bits-N.toml (QAT with N-bit weights,
# FP32 activations; 32 = plain FP32). When they have finished, tabulate them with
#   python analyze_results.py
# Options:
#   --rounds R     rounds per job, a cap [num-server-rounds in pyproject.toml]
#   --minutes M    training minutes per job [time-limit-min in pyproject.toml]
#   --bits LIST    comma-separated widths [32,16,8,4,2,1]
#   --local        run the jobs one after another here, without Slurm
#   every other option (--gpu, --gpus, --partition, --account, --cpus, --mem, --venv, --data, --margin,
#   --slurm-minutes, --signal-lead, --set) is passed on to submit_job.sh; see ./submit_job.sh --help
#   -h, --help
set -euo pipefail
PROJECT=$(cd "$(dirname "$0")" && pwd)
source "$PROJECT/eurosat/launch/jobs.sh"

ROUNDS="" MINUTES="" BITS=32,16,8,4,2,1 LOCAL=0 PASS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --local) LOCAL=1 ;;
        --rounds|--minutes|--bits)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in --rounds) ROUNDS=$2 ;; --minutes) MINUTES=$2 ;; --bits) BITS=$2 ;; esac
            shift ;;
        *) pass_on "$@"; [ "$TAKEN" -gt 0 ] || die "unknown argument $1 (see --help)"; shift $((TAKEN - 1)) ;;
    esac
    shift
done
venv_python
ROUNDS=${ROUNDS:-$(app_default num-server-rounds)}
MINUTES=${MINUTES:-$(app_default time-limit-min)}
positive --rounds "$ROUNDS"
positive --minutes "$MINUTES"
IFS=, read -r -a WIDTHS <<<"$BITS"
for b in "${WIDTHS[@]}"; do [ -f "$PROJECT/configs/bits-$b.toml" ] || die "no preset for $b-bit weights (allowed: 32,16,8,4,2,1)"; done
[ "$LOCAL" = 1 ] || need_sbatch
# Every job's arguments and run config are checked before the first one starts or is submitted.
for b in "${WIDTHS[@]}"; do
    "$PROJECT/submit_job.sh" --check $([ "$LOCAL" = 1 ] && echo --local) --job-name "quant-${b}bit" "${PASS[@]+"${PASS[@]}"}" "bits-$b" "$ROUNDS" "$MINUTES" || exit 2
done

status=0
for b in "${WIDTHS[@]}"; do
    if [ "$LOCAL" = 1 ]; then
        echo "training quant-${b}bit here (--local)"
        "$PROJECT/submit_job.sh" --local --job-name "quant-${b}bit" "${PASS[@]+"${PASS[@]}"}" "bits-$b" "$ROUNDS" "$MINUTES" || status=1
    else
        id=$("$PROJECT/submit_job.sh" --print-id --job-name "quant-${b}bit" "${PASS[@]+"${PASS[@]}"}" "bits-$b" "$ROUNDS" "$MINUTES")
        echo "submitted quant-${b}bit as job $id (log logs/quant-${b}bit-r$ROUNDS-t${MINUTES}m-$id.out)"
    fi
done
[ "$LOCAL" = 1 ] || echo "watch: squeue -u \$USER    when done: python analyze_results.py"
exit $status
