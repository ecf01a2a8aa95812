#!/usr/bin/env python
"""Evaluate a checkpoint: exact match (greedy, KV cache), token accuracy, breakdowns by operation, digits,
carries/borrows and operand lengths.

    python scripts/evaluate.py --checkpoint checkpoints/run1 --data-dir data
    python scripts/evaluate.py --checkpoint checkpoints/run1/model.safetensors --data-path data/test.jsonl \\
        --output-file results.json --device cpu
    python scripts/evaluate.py --checkpoint checkpoints/mul3_cot --data-path my_problems.jsonl

The file may be a split written by scripts/generate_data.py or a list of your own problems: each line needs only
"prompt" and "answer", e.g. {"prompt": "123*45=", "answer": 5535}; other fields are optional and ignored. Every
problem is rendered in the format the checkpoint was trained on (its recorded data "fmt"), for any operation; a
line whose prompt does not parse or whose answer is wrong is an error naming the file and line.

The checkpoint's training mode (mathllm.modes) decides how it is run: a gumbel model writes its own think
tokens, a pause model is given its pauses.
"""

import argparse
import json
import sys
from pathlib import Path

from mathllm.checkpoints import load
from mathllm.cli import positive_int, run_cli
from mathllm.data import FORMATS
from mathllm.evaluate import evaluate_file, format_report, iter_failures, save_results
from mathllm.train import GENERATE_EXAMPLE
from mathllm.utils import atomic_write_bytes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model.safetensors file or a directory holding one")
    p.add_argument("--model-size", default=None,
                   help="tiny|mini|small|medium|large; read from the checkpoint's config.json when present "
                        "(a mismatch is an error)")
    p.add_argument("--data-path", default=None,
                   help="a JSONL file to evaluate (overrides --data-dir): a split, or lines holding only "
                        "\"prompt\" and \"answer\"")
    p.add_argument("--data-dir", default="data", help="directory holding test.jsonl (default: data)")
    p.add_argument("--split", default="test", help="split in --data-dir to evaluate (default: test)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--max-length", type=positive_int, default=None,
                   help="context length; the checkpoint's own is used (a different value is reported)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N examples")
    p.add_argument("--format", dest="fmt", default=None, choices=FORMATS,
                   help="render the problems in this format (default: the format of the checkpoint's training data, "
                        "else each line's own, else cot)")
    p.add_argument("--output-file", default=None, help="write the full results as JSON here")
    p.add_argument("--predictions-file", default=None,
                   help="write one JSON line per problem here: prompt, the model's raw completion, its parsed answer, "
                        "the expected answer, correct, stratum")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--loops", type=positive_int, default=None,
                   help="loop iterations of a looped model (default: the trained count; more or fewer is allowed)")
    p.add_argument("--carry-chains", type=positive_int, nargs="?", const=300, default=None, metavar="PER_K",
                   help="instead of a data file: a uniform set and PER_K problems (default 300) for each carry-chain "
                        "length k = 0..max digits, reported per k (mathllm.depth.evaluate_chains)")
    args = p.parse_args(argv)

    trained = load(args.checkpoint, model_size=args.model_size, device=args.device, loops=args.loops)
    if args.carry_chains:
        return carry_chain_report(trained, args)
    n_ctx = trained.model.cfg.n_ctx
    if args.max_length is not None and args.max_length != n_ctx:
        print(f"note: --max-length {args.max_length} differs from the checkpoint's context {n_ctx}; using {n_ctx}",
              file=sys.stderr)
    data_path = Path(args.data_path) if args.data_path else Path(args.data_dir) / f"{args.split}.jsonl"
    if not data_path.is_file():
        raise FileNotFoundError(f"no data at {data_path}. Generate it first, e.g.\n"
                                f"    {GENERATE_EXAMPLE} --output-dir {data_path.parent}")
    results = evaluate_file(trained, data_path, batch_size=args.batch_size, fmt=args.fmt, limit=args.limit,
                            predictions=args.predictions_file is not None)
    results["checkpoint"] = str(args.checkpoint)
    if args.predictions_file:
        records = results.pop("predictions")
        atomic_write_bytes(args.predictions_file, "".join(json.dumps(r) + "\n" for r in records).encode())
    print(format_report(results))
    failures = list(iter_failures(results))
    if failures:
        print("\nsome failures:")
        print("\n".join("  " + f for f in failures[:5]))
    if args.output_file:
        save_results(results, args.output_file)
        print(f"\nwrote {args.output_file}")
    if args.predictions_file:
        print(f"wrote {len(records)} predictions to {args.predictions_file}")
    return 0


def carry_chain_report(trained, args) -> int:
    """``--carry-chains``: accuracy on the uniform set and per carry-chain length, for the checkpoint's digits."""
    from mathllm.depth import evaluate_chains, format_chains

    max_digits = trained.data_arguments.get("max_digits")
    if not max_digits:
        raise ValueError(f"{args.checkpoint}: its run does not record the data's max_digits, which --carry-chains needs")
    results = evaluate_chains(trained, int(max_digits), per_k=args.carry_chains, batch_size=args.batch_size)
    results["checkpoint"] = str(args.checkpoint)
    print(format_chains(results))
    if args.output_file:
        save_results(results, args.output_file)
        print(f"\nwrote {args.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
