#!/usr/bin/env bash
# Set up a Python environment for mathllm and print the path of its python.
#
#   bash scripts/setup.sh            # idempotent; re-runs only when pyproject.toml changed
#
# Where it installs:
#   * an already active virtualenv or conda env ($VIRTUAL_ENV / $CONDA_PREFIX), as is;
#   * otherwise ./.venv. If your base python3 already has torch (for example a CUDA build), .venv is
#     created with --system-site-packages so that torch is seen and kept; otherwise .venv is isolated.
# torch: if `import torch` already works, it is kept. If not, the CPU build is installed first:
#   from a local wheel when pip can find one (`pip install --no-deps --no-index torch==2.13.0`), else from pip's
#   index with PyTorch's CPU wheel index as an extra. Only a machine with an NVIDIA driver (nvidia-smi) gets a CUDA
#   build from pip's index.
# The install must succeed and every declared dependency must import, or setup fails (and writes no stamp).
#   This matters: an unpinned `torch` requirement would otherwise pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[setup] $*" >&2; }

if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "${VIRTUAL_ENV}/bin/python" ]; then
    PY="${VIRTUAL_ENV}/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "${CONDA_PREFIX}/bin/python" ]; then
    PY="${CONDA_PREFIX}/bin/python"
else
    if [ ! -x .venv/bin/python ]; then
        if python3 -c "import torch" 2>/dev/null; then
            log "creating .venv that sees the torch of $(command -v python3)"
            python3 -m venv --system-site-packages .venv
        else
            log "creating .venv (python: $(command -v python3))"
            python3 -m venv .venv
        fi
    fi
    PY="$(pwd)/.venv/bin/python"
fi

stamp_dir="$("$PY" -c 'import sys; print(sys.prefix)')"
stamp="$stamp_dir/.mathllm-setup-$(sha1sum pyproject.toml | cut -c1-12)"
# every declared dependency, by its import name (pyproject.toml's [project].dependencies)
IMPORTS="mathllm, torch, transformer_lens, safetensors, numpy, tqdm, matplotlib, plotly, ipywidgets, jupyterlab, nbval, pytest"
if [ -f "$stamp" ] && "$PY" -c "import $IMPORTS" 2>/dev/null; then
    echo "$PY"
    exit 0
fi

if "$PY" -c "import torch" 2>/dev/null; then
    log "keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "NVIDIA GPU found: installing torch (CUDA build) from pip's index"
    "$PY" -m pip install --quiet "torch>=2.6"
else
    log "no torch and no GPU: installing the CPU build of torch"
    # a local CPU wheel (pip's --find-links), if this machine has one; then its dependencies as usual
    if "$PY" -m pip install --quiet --no-deps --no-index "torch==2.13.0" 2>/dev/null; then
        "$PY" -m pip install --quiet "torch==2.13.0"
    else  # pip's own index, plus PyTorch's CPU wheels (their +cpu builds win over the CUDA ones)
        "$PY" -m pip install --quiet "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
fi

log "installing mathllm and its dependencies (pip install -e .)"
set +e
"$PY" -m pip install --quiet --disable-pip-version-check -e . 2>&1 | grep -v "is ignored: it is neither a file nor a directory" >&2
pip_status=${PIPESTATUS[0]}
set -e
if [ "$pip_status" -ne 0 ]; then
    log "pip install -e . failed (exit status $pip_status): see above"
    exit 1
fi
if ! "$PY" -c "import $IMPORTS"; then
    log "installed, but a declared dependency does not import (see above)"
    exit 1
fi
rm -f "$stamp_dir"/.mathllm-setup-* && touch "$stamp"
log "ready: $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"
echo "$PY"
