#!/usr/bin/env bash
# Which tasks need a trace (issue 14, notebook 10): for each task, the same mini model trained with the human trace
# (mode teacher) and without it (mode answer-only: the same cot data with the think block removed), the same steps,
# batch and learning rate, seeds 1 and 2. Operands have exactly N digits (--min-digits N --max-digits N).
#
#   bash scripts/trace_map.sh                     # every row, in order; resumable (finished runs are read back)
#   ROWS="sub3 mul2" bash scripts/trace_map.sh    # some rows
#
# One training at a time, one thread each (OMP_NUM_THREADS=1, --threads 1). Runs train into checkpoints/map/<row>/
# (git-ignored); each row's results, with its exact command, the code version and every run's learning curve and
# test results, go to docs/experiments/trace_map/<row>.json (scripts/modes_experiment.py's summary); notebook 10
# reads them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${MATHLLM_PYTHON:-$(bash scripts/setup.sh)}"
export OMP_NUM_THREADS=1
ROWS="${ROWS:-sub3 sub4 mul2 mul3 mul4}"
OUT=docs/experiments/trace_map
mkdir -p "$OUT"
COMMON=(--model-size mini --seeds 1 2 --modes teacher answer-only --analyse-examples 0 --threads 1
        --learning-rate 2e-3 --warmup-steps 100 --eval-examples 256 --eval-loss-examples 1000 --eval-batch-size 256
        --logging-steps 50 --save-steps 500)

# row NAME OPERATION DIGITS NUM_EXAMPLES STEPS BATCH [extra training flags]
row() {
    local name=$1 op=$2 digits=$3 n=$4 steps=$5 batch=$6
    shift 6
    echo "=== row $name: $op, $digits-digit operands, $steps steps of $batch" >&2
    "$PY" scripts/generate_data.py --operation "$op" --min-digits "$digits" --max-digits "$digits" --num-examples "$n" \
        --train-ratio 0.9 --val-ratio 0.05 --test-ratio 0.05 --seed 14 --output-dir "data/map/$name" --quiet
    "$PY" scripts/modes_experiment.py --data-dir "data/map/$name" --max-steps "$steps" --batch-size "$batch" \
        --output-root "checkpoints/map/$name" --summary "$OUT/$name.json" "${COMMON[@]}" \
        --eval-steps $((steps / 5)) "$@"
}

for r in $ROWS; do
    case $r in
        sub3) row sub3 sub 3 100000 1000 64 ;;
        sub4) row sub4 sub 4 100000 1200 64 ;;
        mul2) row mul2 mul 2 8100 1500 64 ;;
        mul3) row mul3 mul 3 100000 1200 64 ;;
        mul4) row mul4 mul 4 50000 1000 32 --max-length 256 ;;
        *) echo "unknown row $r (known: sub3 sub4 mul2 mul3 mul4)" >&2; exit 2 ;;
    esac
done
