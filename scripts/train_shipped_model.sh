#!/usr/bin/env bash
# Regenerate the model shipped in checkpoints/add3_cot (mathllm.utils.SHIPPED_CHECKPOINT): 3-digit addition with
# two operands in the chain-of-thought format, trained by the project's own trainer from configs/add3_cot.json.
# The notebooks 03-07, the playground and the browser test use it so that they run at once on a fresh clone.
#
#   bash scripts/train_shipped_model.sh          # resumes if interrupted
#
# Only the final weights, configs, test results and logs are kept (checkpoint-N/ folders are deleted at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/setup.sh)"
CONFIG=configs/add3_cot.json
OUT=checkpoints/add3_cot
"$PY" scripts/generate_data.py --config "$CONFIG"
"$PY" scripts/train.py --config "$CONFIG"
rm -rf "$OUT"/checkpoint-*
"$PY" -c "import json; r = json.load(open('$OUT/test_results.json')); print('shipped model: test exact match', r['exact_match'])"
