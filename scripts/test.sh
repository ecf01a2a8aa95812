#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: set up the environment, then the package's doctests
# (pytest --doctest-modules mathllm), pytest (unit tests) and nbval (every notebook, run top to bottom in a
# fresh kernel with MATHLLM_SMOKE=1 to shrink the work).
# Extra arguments go to pytest instead, e.g. `bash scripts/test.sh -k tokenizer`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/setup.sh)"
export MATHLLM_SMOKE=1 PYTHONHASHSEED=0 WANDB_MODE=offline
if [ "$#" -gt 0 ]; then
    exec "$PY" -m pytest "$@"
fi
"$PY" -m pytest --doctest-modules mathllm -p no:cacheprovider -q
exec "$PY" -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/nbval_sanitize.cfg \
    --nbval-current-env -p no:cacheprovider
