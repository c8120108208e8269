#!/usr/bin/env bash
# setup.sh - create .venv in the project and install the package with its dependencies.
#
#   ./setup.sh            set up only (idempotent; a second run only checks)
#
# torch: an installed torch is kept (a cluster's CUDA build, say): if the python that creates
# the venv already has torch, the venv sees it (--system-site-packages). Otherwise torch==2.13.0
# is installed first, exactly that version, from pip's configured index: where the project's figures
# were measured a local wheel makes it the CPU build (from PyPI on Linux it is the CUDA build; a venv
# made first with the CPU wheel from download.pytorch.org/whl/cpu is kept), and any looser torch
# requirement would pull several GB of CUDA packages there.
# Environment: PYTHON (interpreter to build the venv from) [python3], VENV [.venv].
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;; esac

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found (set PYTHON=/path/to/python3.11+)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c 'import torch' 2>/dev/null; then
        echo "setup: $PYTHON has torch $("$PYTHON" -c 'import torch; print(torch.__version__)'); the venv keeps it"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "setup: no torch found; installing torch==2.13.0"
    "$PY" -m pip install -q "torch==2.13.0"
fi
if ! "$PY" -c 'import eurosat, flwr, flwr_datasets, pytest, onnx, onnxruntime' 2>/dev/null \
   || [ pyproject.toml -nt "$VENV/.installed" ]; then
    echo "setup: installing the eurosat package and its dependencies into $VENV"
    "$PY" -m pip install -q -e ".[test,deploy]"  # deploy: ONNX export and ONNX Runtime, tested in CI
    touch "$VENV/.installed"
fi
echo "setup: ready: torch $("$PY" -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'), flwr $("$PY" -c 'import flwr; print(flwr.__version__)')"
