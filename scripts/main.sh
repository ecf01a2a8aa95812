#!/usr/bin/env bash
# The main job, from a fresh clone on a CPU: set up, generate 2-digit addition with 2-3 operands in the
# chain-of-thought format, train a model, and evaluate it on the held-out test split. Every setting is in
# configs/main.json (notebook 02 reads the same file).
# The trainer evaluates the final model on the test split (test_results.json) and prints the report.
# Re-running resumes training where it stopped (or reports the finished run).
#   MATHLLM_MAIN_ARGS="--max-steps 500" bash scripts/main.sh    # extra flags for scripts/train.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/setup.sh)"
CONFIG=configs/main.json
"$PY" scripts/generate_data.py --config "$CONFIG"
# shellcheck disable=SC2086
"$PY" scripts/train.py --config "$CONFIG" ${MATHLLM_MAIN_ARGS:-}
