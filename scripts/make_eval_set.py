#!/usr/bin/env python
"""Write an evaluation file with problems from every stratum of a checkpoint's range, for scripts/evaluate.py.

    python scripts/make_eval_set.py --checkpoint checkpoints/add3_cot --per-stratum 500 --output eval.jsonl
    python scripts/evaluate.py --checkpoint checkpoints/add3_cot --data-path eval.jsonl --predictions-file p.jsonl

The checkpoint's data is regenerated from its record (same arguments, same bytes). Every stratum (tuple of operand
lengths) contributes up to ``--per-stratum`` problems from the held-out test split, which the model never saw. A
stratum that went to the training split whole (``whole_strata_below``: the 100 one-digit pairs are a table to know,
not a rule to generalise) has no held-out problems; it is included whole, every line marked
``"seen_in_training": true``, so that "all 100 one-digit pairs are right" can be checked and read for what it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

from mathllm.checkpoints import dataset_for_checkpoint
from mathllm.cli import positive_int, run_cli
from mathllm.evaluate import stratum_name
from mathllm.utils import atomic_write_bytes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run directory with its training_config.json")
    p.add_argument("--per-stratum", type=positive_int, default=500, help="held-out problems per stratum (default 500)")
    p.add_argument("--output", required=True, help="the JSONL file to write")
    args = p.parse_args(argv)
    dataset = dataset_for_checkpoint(args.checkpoint)
    held_out: dict[str, list[dict]] = defaultdict(list)
    for example in dataset["test"]:
        cell = held_out[stratum_name(example["prompt"])]
        if len(cell) < args.per_stratum:
            cell.append(example)
    seen: dict[str, list[dict]] = defaultdict(list)
    for example in dataset["train"]:
        name = stratum_name(example["prompt"])
        if name not in held_out:
            seen[name].append({**example, "seen_in_training": True})
    lines = [ex for name in sorted(held_out) for ex in held_out[name]]
    lines += [ex for name in sorted(seen) for ex in seen[name]]
    atomic_write_bytes(args.output, "".join(json.dumps(ex) + "\n" for ex in lines).encode())
    for name in sorted(set(held_out) | set(seen)):
        kind = f"{len(held_out[name])} held out" if name in held_out else f"{len(seen[name])} seen in training (whole)"
        print(f"{name:<8} {kind}")
    print(f"wrote {len(lines)} problems to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
