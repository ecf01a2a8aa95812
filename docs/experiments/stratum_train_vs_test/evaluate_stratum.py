"""Evaluate a run of the main job on the one-digit triples (1+1+1) of its training and test splits, with the same
budget of new tokens for every problem; write one prediction per line.

    python docs/experiments/stratum_train_vs_test/evaluate_stratum.py RUN_DIR OUT_DIR [DATA_DIR]
"""
import json
import sys
from pathlib import Path

from mathllm.checkpoints import load
from mathllm.data import load_split
from mathllm.evaluate import evaluate_examples

run, out = sys.argv[1], Path(sys.argv[2])
data_dir = sys.argv[3] if len(sys.argv) > 3 else "data/add2_ops3_cot"
trained = load(run, device="cpu")
for split in ("train", "test"):
    examples = [ex for ex in load_split(Path(data_dir) / f"{split}.jsonl") if [len(str(o)) for o in ex["operands"]] == [1, 1, 1]]
    r = evaluate_examples(trained.model, examples, mode=trained.mode, max_new_tokens=40, predictions=True,
                          plain_speed_examples=0)
    with open(out / f"{split}_1+1+1.jsonl", "w") as f:
        for p in r["predictions"]:
            f.write(json.dumps(p) + "\n")
    print(split, len(examples), round(r["exact_match"], 4), "think exact", round(r["think_exact"], 4))
