#!/usr/bin/env bash
# submit_job.sh - submit one federated EuroSAT training job to Slurm (or run it here with --local).
#
#   ./submit_job.sh [options] PRESET ROUNDS MINUTES
#   ./submit_job.sh [options] --resume RUN_DIR ROUNDS MINUTES
#
#   PRESET   fp32 | fp16 | int8, or any configs/<PRESET>.toml (bits-4, w8a6, ...)
#   ROUNDS   at most this many rounds          MINUTES  training wall-clock limit (minutes)
#
# Options (environment variable in brackets, then default):
#   --local              run the same job here, in the foreground, without Slurm
#   --partition P        [SLURM_PARTITION]  cluster default
#   --account A          [SLURM_ACCOUNT]    none
#   --cpus N             [EUROSAT_CPUS]     4    CPUs per task; Ray is told exactly this
#   --mem M              [EUROSAT_MEM]      16G
#   --gpu | --gpus N     [EUROSAT_GPUS]     0    no --gres is requested with 0
#   --venv DIR           [EUROSAT_VENV]     .venv   Python environment the job activates
#   --data DIR           [EUROSAT_DATA]     run-config default (the hub)   dataset location
#   --job-name NAME                         fl-PRESET
#   --margin MIN         [EUROSAT_TIME_MARGIN_MIN] 5   Slurm --time = MINUTES + margin
#   --slurm-minutes N    Slurm --time exactly N minutes (overrides the margin)
#   --signal-lead S      [EUROSAT_SIGNAL_LEAD_S] 60    SIGTERM this many seconds before the kill
#   --set 'k=v ...'      extra run-config overrides (repeatable)
#   --nodes N            Deployment Engine over N nodes: the SuperLink and the ServerApp on the first,
#                        srun starts --clients-per-node SuperNodes on every node [1: simulation]
#   --clients-per-node K SuperNode tasks per node [num-supernodes / N]; each gets --cpus CPUs, and with
#                        --gpus one GPU; the federation has N x K clients
#   --insecure           with --nodes: no TLS and no SuperNode auth (the default makes a throwaway CA and
#                        one registered key per SuperNode in the run folder); only on a private network
#   --resume RUN_DIR     continue that failed or interrupted run (same folder, a fresh time budget)
#   --print-id           print only the job id (for scripts)
#   --check              validate the arguments and the run config, then exit 0 without running or
#                        submitting anything (the wrapper scripts check every job before the first)
#   [EUROSAT_LOG_DIR]    log folder [logs/]
#   -h, --help
#
# Logs: logs/<job-name>-r<ROUNDS>-t<MINUTES>m-<jobid>.out/.err, and .json: the run folder and its final
# state (python -m eurosat.launch --result-json). Results: outputs/<label>/<date>/<time>/.
# The job exits non-zero (Slurm state FAILED) when the run's status.json is not "completed".
set -euo pipefail
PROJECT=$(cd "$(dirname "$0")" && pwd)
source "$PROJECT/eurosat/launch/jobs.sh"

LOCAL=0 PRINT_ID=0 CHECK=0 INSECURE="" JOB_NAME="" SLURM_MINUTES="" SETS=() NODES=1 PER_NODE="" RESUME=""
PARTITION=${SLURM_PARTITION:-} ACCOUNT=${SLURM_ACCOUNT:-}
CPUS=${EUROSAT_CPUS:-4} MEM=${EUROSAT_MEM:-16G} GPUS=${EUROSAT_GPUS:-0}
VENV=${EUROSAT_VENV:-$PROJECT/.venv} DATA=${EUROSAT_DATA:-}
MARGIN=${EUROSAT_TIME_MARGIN_MIN:-5} LEAD=${EUROSAT_SIGNAL_LEAD_S:-60}
POS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --local) LOCAL=1 ;;
        --print-id) PRINT_ID=1 ;;
        --check) CHECK=1 ;;
        --insecure) INSECURE=--insecure ;;
        --gpu) GPUS=1 ;;
        --partition|--account|--cpus|--mem|--gpus|--venv|--data|--job-name|--margin|--slurm-minutes|--signal-lead|--set|--nodes|--clients-per-node|--resume)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --partition) PARTITION=$2 ;; --account) ACCOUNT=$2 ;; --cpus) CPUS=$2 ;; --mem) MEM=$2 ;;
                --gpus) GPUS=$2 ;; --venv) VENV=$2 ;; --data) DATA=$2 ;; --job-name) JOB_NAME=$2 ;;
                --margin) MARGIN=$2 ;; --slurm-minutes) SLURM_MINUTES=$2 ;; --signal-lead) LEAD=$2 ;;
                --set) SETS+=("$2") ;; --nodes) NODES=$2 ;; --clients-per-node) PER_NODE=$2 ;; --resume) RESUME=$2 ;;
            esac
            shift ;;
        -[0-9]*) POS+=("$1") ;;  # a negative number is a (bad) positional value, not an option
        -*) die "unknown option $1 (see --help)" ;;
        *) POS+=("$1") ;;
    esac
    shift
done
if [ -n "$RESUME" ]; then
    [ ${#POS[@]} -eq 2 ] || { usage >&2; die "expected --resume RUN_DIR ROUNDS MINUTES, got ${#POS[@]} argument(s)"; }
    [ -f "$RESUME/metrics.json" ] || die "--resume $RESUME: not a run folder (no metrics.json)"
    RESUME=$(cd "$RESUME" && pwd)
    PRESET=resume ROUNDS=${POS[0]} MINUTES=${POS[1]}
else
    [ ${#POS[@]} -eq 3 ] || { usage >&2; die "expected PRESET ROUNDS MINUTES, got ${#POS[@]} argument(s)"; }
    PRESET=${POS[0]} ROUNDS=${POS[1]} MINUTES=${POS[2]}
    CONFIG="configs/$PRESET.toml"
    [[ "$PRESET" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*$ && -f "$PROJECT/$CONFIG" ]] || die "unknown precision/preset '$PRESET'; allowed: $(cd "$PROJECT/configs" && ls *.toml | sed 's/\.toml$//' | tr '\n' ' ')"
fi
positive --nodes "$NODES"
[ -z "$PER_NODE" ] || positive --clients-per-node "$PER_NODE"
# (at most 7 digits: bash's arithmetic must not overflow into a negative Slurm --time)
[[ "$ROUNDS" =~ ^[1-9][0-9]{0,6}$ ]] || die "ROUNDS must be a positive integer (at most 7 digits), got '$ROUNDS'"
[[ "$MINUTES" =~ ^[1-9][0-9]{0,6}$ ]] || die "MINUTES must be a positive whole number of minutes (at most 7 digits), got '$MINUTES'"
[[ "$CPUS" =~ ^[1-9][0-9]{0,4}$ ]] || die "--cpus must be a positive whole number, got '$CPUS'"
for n in MARGIN LEAD; do [[ "${!n}" =~ ^[0-9]{1,6}$ ]] || die "--${n,,} must be a whole number, got '${!n}'"; done
[[ "$GPUS" =~ ^[0-9]{1,4}$ ]] || die "--gpus must be a whole number, got '$GPUS'"
[ -z "$SLURM_MINUTES" ] || [[ "$SLURM_MINUTES" =~ ^[1-9][0-9]{0,6}$ ]] || die "--slurm-minutes must be a positive integer"
[ -x "$VENV/bin/python" ] || die "no Python environment at $VENV (run ./setup.sh, or pass --venv / EUROSAT_VENV)"
if [ -n "$DATA" ]; then [ -d "$DATA" ] || die "data folder $DATA does not exist"; DATA=$(cd "$DATA" && pwd); fi
JOB_NAME=${JOB_NAME:-fl-$PRESET}
[[ "$JOB_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "--job-name may hold only letters, digits, '.', '_' and '-', got '$JOB_NAME'"
STEM="$JOB_NAME-r$ROUNDS-t${MINUTES}m"
# The run's launcher arguments: the preset (or the run to resume), then the rounds and minutes, then
# every --set, each its own -c (a later key wins).
if [ -n "$RESUME" ]; then LAUNCH=(--resume "$RESUME"); else LAUNCH=(-c "$CONFIG"); fi
LAUNCH+=(-c "num-server-rounds=$ROUNDS time-limit-min=$MINUTES")
for s in ${SETS[@]+"${SETS[@]}"}; do LAUNCH+=(-c "$s"); done
# The launcher's own checks now (options, run config, data, partitions, the run to resume), so bad
# input fails before anything is submitted; it prints the resolved run config.
launch_check() {
    local out
    out=$(cd "$PROJECT" && EUROSAT_DATA="$DATA" "$VENV/bin/python" -m eurosat.launch --check "${LAUNCH[@]}" "$@") || exit 2
    RESOLVED=${out##*$'\n'}
    [ "$out" = "$RESOLVED" ] || printf '%s\n' "${out%$'\n'*}" >&2  # its progress (the data check) is not for stdout
}
launch_check
[[ " $RESOLVED" =~ \ num-supernodes=([0-9]+) ]] || die "the launcher's check printed no num-supernodes"
SUPERNODES=${BASH_REMATCH[1]}
if [ "$NODES" -gt 1 ] || [ -n "$PER_NODE" ]; then  # the Deployment Engine across nodes
    PER_NODE=${PER_NODE:-$(( (SUPERNODES + NODES - 1) / NODES ))}
    SUPERNODES=$((NODES * PER_NODE))
    ENGINE=deployment
    [ "$LOCAL" = 0 ] || die "--nodes/--clients-per-node need Slurm (srun); here, use python -m eurosat.launch --engine deployment"
    launch_check --engine deployment --external-supernodes --host 0.0.0.0 --supernodes "$SUPERNODES" $INSECURE
else
    ENGINE=simulation
    [ -z "$INSECURE" ] || die "--insecure is for --nodes/--clients-per-node (the Deployment Engine)"
fi
[ "$LOCAL" = 1 ] || [ "$CHECK" = 1 ] || need_sbatch
[ "$CHECK" = 0 ] || exit 0
LOG_DIR=${EUROSAT_LOG_DIR:-$PROJECT/logs}
mkdir -p "$LOG_DIR" || die "cannot create the log folder $LOG_DIR"
# Every value the job script holds is shell-quoted (printf %q): a path or run-config value with
# spaces, quotes or \$(...) stays one literal argument and is never run as code.
q() { printf %q "$1"; }
LAUNCH_ARGS=$(printf '%q ' "${LAUNCH[@]}")
Q_LOG=$(q "$LOG_DIR/$STEM")

# The job itself: exec makes the launcher the batch shell, so Slurm's SIGTERM (--signal=B:TERM)
# reaches the process that marks the run interrupted and saves the last completed round.
JOB_SCRIPT=$(cat <<EOF
#!/usr/bin/env bash
set -euo pipefail
cd $(q "$PROJECT")
source $(q "$VENV/bin/activate")
${DATA:+export EUROSAT_DATA=$(q "$DATA")}
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
JOB_ID=\${SLURM_JOB_ID:-local-\$(date +%Y%m%d-%H%M%S)}
echo "job \$JOB_ID on \$(hostname): "$(q "$PRESET")", at most $ROUNDS rounds / $MINUTES min, \${SLURM_CPUS_PER_TASK:-$CPUS} CPUs, $GPUS GPUs, $ENGINE"
if [ "$ENGINE" = deployment ]; then
    # The SuperLink and the ServerApp run here, on the first node, listening on all its addresses;
    # srun starts one SuperNode per task on every node (partition = SLURM_PROCID of SLURM_NTASKS).
    # Unless --insecure, each waits until the launcher has made the run's TLS and its key (in the run
    # folder, 0600) and registered it (eurosat/launch/supernode.py).
    HOST=\$(hostname -I 2>/dev/null | awk '{print \$1}'); HOST=\${HOST:-127.0.0.1}
    PORT=\$(python -c 'from eurosat.launch.deployment import free_port; print(free_port("0.0.0.0"))')
    srun --nodes $NODES --ntasks-per-node $PER_NODE --cpus-per-task $CPUS $([ "$GPUS" -gt 0 ] && echo --gres=gpu:1) \\
        --output $Q_LOG-"\$JOB_ID"-supernode-%t.log python -m eurosat.launch.supernode $INSECURE \\
            --superlink "\$HOST:\$PORT" --result-json $Q_LOG-"\$JOB_ID".json &
    exec python -m eurosat.launch $LAUNCH_ARGS --engine deployment --external-supernodes $INSECURE \\
        --host 0.0.0.0 --port "\$PORT" --supernodes $SUPERNODES --result-json $Q_LOG-"\$JOB_ID".json
fi
exec python -m eurosat.launch $LAUNCH_ARGS \\
    --cpus "\${SLURM_CPUS_PER_TASK:-$CPUS}" --gpus "$GPUS" \\
    --result-json $Q_LOG-"\$JOB_ID".json
EOF
)

if [ "$LOCAL" = 1 ]; then
    ID="local-$(date +%Y%m%d-%H%M%S)"
    LOG="$LOG_DIR/$STEM-$ID"
    echo "running $STEM here (no Slurm); log $LOG.out" >&2
    set +e
    # the job's output goes to the log and to stderr, so stdout carries only --print-id's id
    SLURM_JOB_ID="$ID" bash -c "$JOB_SCRIPT" > >(tee "$LOG.out" >&2) 2> >(tee "$LOG.err" >&2)
    code=$?
    set -e
    wait
    [ "$PRINT_ID" = 1 ] && echo "$ID"
    exit $code
fi

SLURM_TIME=${SLURM_MINUTES:-$((MINUTES + MARGIN))}
ARGS=(--parsable --job-name "$JOB_NAME" --time "$SLURM_TIME" --cpus-per-task "$CPUS" --mem "$MEM"
      --signal "B:TERM@$LEAD" --output "$LOG_DIR/$STEM-%j.out" --error "$LOG_DIR/$STEM-%j.err")
[ -n "$PARTITION" ] && ARGS+=(--partition "$PARTITION")
[ -n "$ACCOUNT" ] && ARGS+=(--account "$ACCOUNT")
if [ "$ENGINE" = deployment ]; then
    ARGS+=(--nodes "$NODES" --ntasks-per-node "$PER_NODE")
    [ "$GPUS" -gt 0 ] && ARGS+=(--gres "gpu:$PER_NODE")  # one GPU per SuperNode task
else
    ARGS+=(--ntasks 1)
    [ "$GPUS" -gt 0 ] && ARGS+=(--gres "gpu:$GPUS")
fi
JOB_ID=$(sbatch "${ARGS[@]}" <<<"$JOB_SCRIPT") || die "sbatch refused the job (see its message above)"
JOB_ID=${JOB_ID%%;*}
if [ "$PRINT_ID" = 1 ]; then
    echo "$JOB_ID"
else
    echo "submitted job $JOB_ID ($JOB_NAME): $PRESET, at most $ROUNDS rounds / $MINUTES min, Slurm --time $SLURM_TIME min"
    echo "  progress: squeue -j $JOB_ID    log: tail -f $LOG_DIR/$STEM-$JOB_ID.out"
fi
