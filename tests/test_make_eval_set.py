"""scripts/make_eval_set.py: held-out problems from every stratum of a checkpoint's data, plus the strata that went to
training whole, marked as seen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_stratum_is_held_out_or_marked_seen(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    arguments = dict(num_examples=3000, max_digits=2, max_operands=2, seed=3, fmt="cot", train_ratio=0.8,
                     val_ratio=0.1, test_ratio=0.1, whole_strata_below=101)
    (run / "training_config.json").write_text(json.dumps({"data_meta": {"arguments": arguments}}))
    out = tmp_path / "eval.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_eval_set.py"), "--checkpoint", str(run),
                           "--per-stratum", "50", "--output", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    seen = [ex for ex in lines if ex.get("seen_in_training")]
    assert len(seen) == 100 and all(max(ex["operands"]) < 10 for ex in seen)  # every one-digit pair
    held = [ex for ex in lines if not ex.get("seen_in_training")]
    counts = {}
    for ex in held:
        key = tuple(len(str(x)) for x in ex["operands"])
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {(1, 2), (2, 1), (2, 2)} and max(counts.values()) <= 50
    assert "1+1" in proc.stdout and "seen in training" in proc.stdout
