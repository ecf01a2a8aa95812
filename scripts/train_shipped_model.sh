#!/usr/bin/env bash
# Regenerate the model shipped in checkpoints/add3_cot (mathllm.utils.SHIPPED_CHECKPOINT): 3-digit addition with
# two operands in the chain-of-thought format, trained by the project's own trainer. The notebooks 03-07, the
# playground and the browser test use it so that they run at once on a fresh clone.
#
#   bash scripts/train_shipped_model.sh          # ~30 min on a 2-core CPU; resumes if interrupted
#
# Only the final weights, configs, test results and logs are kept (checkpoint-N/ folders are deleted at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/setup.sh)"
DATA=data/add3_cot
OUT=checkpoints/add3_cot
"$PY" scripts/generate_data.py --num-examples 100000 --max-digits 3 --max-operands 2 --format cot --seed 42 \
    --output-dir "$DATA"
"$PY" scripts/train.py --model-size mini --data-dir "$DATA" --output-dir "$OUT" --no-wandb \
    --batch-size 64 --learning-rate 2e-3 --warmup-steps 200 --max-steps 6000 \
    --eval-steps 500 --save-steps 500 --logging-steps 250 --seed 42
rm -rf "$OUT"/checkpoint-*
"$PY" -c "import json; r = json.load(open('$OUT/test_results.json')); print('shipped model: test exact match', r['exact_match'])"
