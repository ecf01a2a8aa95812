#!/usr/bin/env bash
# The main job, from a fresh clone on a CPU: set up, generate 2-digit addition with 2-3 operands in the
# chain-of-thought format, train a model, and evaluate it on the held-out test split.
# The trainer evaluates the final model on the test split (test_results.json) and prints the report.
# Re-running resumes training where it stopped (or reports the finished run).
#   MATHLLM_MAIN_ARGS="--max-steps 500" bash scripts/main.sh    # extra flags for scripts/train.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/setup.sh)"
DATA=data/add2_ops3_cot
RUN=checkpoints/main
"$PY" scripts/generate_data.py --num-examples 300000 --max-digits 2 --max-operands 3 --format cot \
    --seed 42 --output-dir "$DATA"
# shellcheck disable=SC2086
"$PY" scripts/train.py --data-dir "$DATA" --output-dir "$RUN" --no-wandb \
    --model-size tiny --n-heads 8 --operand-balance 0.5 --batch-size 64 --eval-batch-size 256 --learning-rate 3e-3 --warmup-steps 200 \
    --min-lr-ratio 0 --max-steps 7500 --eval-steps 2500 --save-steps 500 --logging-steps 250 --prompt-loss-weight 0.03 ${MATHLLM_MAIN_ARGS:-}
