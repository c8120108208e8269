# Sourced by submit_job.sh, run_comparison.sh and submit_all_quantization.sh: what they share.
# usage: the script's header comment; die: one line on stderr, exit 2 (bad input, nothing submitted).

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }
need_sbatch() { command -v sbatch >/dev/null || die "sbatch not found: no Slurm here; use --local to run without Slurm"; }

# venv_python: set PY to the job's Python, from --venv in PASS, else EUROSAT_VENV, else .venv.
venv_python() {
    local venv=${EUROSAT_VENV:-$PROJECT/.venv} i
    for ((i = 0; i < ${#PASS[@]}; i++)); do [ "${PASS[$i]}" = --venv ] && venv=${PASS[$((i + 1))]}; done
    PY="$venv/bin/python"
    [ -x "$PY" ] || die "no Python environment at $venv (run ./setup.sh, or pass --venv / EUROSAT_VENV)"
}

# app_default KEY: the key's default in pyproject.toml's [tool.flwr.app.config], the one source of
# defaults (a whole float such as 10.0 prints as 10). Needs PY (venv_python).
app_default() {
    "$PY" -c 'import sys, tomllib
v = tomllib.load(open(sys.argv[1], "rb"))["tool"]["flwr"]["app"]["config"][sys.argv[2]]
print(int(v) if isinstance(v, float) and v.is_integer() else v)' "$PROJECT/pyproject.toml" "$1" 2>/dev/null \
        || die "cannot read $1 from $PROJECT/pyproject.toml [tool.flwr.app.config]"
}

# The options the wrapper scripts hand on to submit_job.sh unchanged.
PASS_FLAGS=" --gpu "
PASS_VALUED=" --partition --account --cpus --mem --gpus --venv --data --margin --slurm-minutes --signal-lead --set "

# pass_on "$@": if $1 is one of those options, append it (with its value) to the array PASS and set
# TAKEN to the number of words used; otherwise TAKEN=0.
pass_on() {
    TAKEN=0
    if [[ "$PASS_FLAGS" == *" $1 "* ]]; then
        PASS+=("$1"); TAKEN=1
    elif [[ "$PASS_VALUED" == *" $1 "* ]]; then
        [ $# -ge 2 ] || die "$1 needs a value"
        PASS+=("$1" "$2"); TAKEN=2
    fi
}
