#!/usr/bin/env python
"""Evaluate a checkpoint: exact match (greedy, KV cache), token accuracy, breakdowns by digits/carries.

    python scripts/evaluate.py --checkpoint checkpoints/run1 --data-dir data
    python scripts/evaluate.py --checkpoint checkpoints/run1/model.safetensors --data-path data/test.jsonl \
        --output-file results.json --device cpu
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mathllm.cli import run_cli  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model.safetensors file or a directory holding one")
    p.add_argument("--model-size", default=None,
                   help="tiny|small|medium|large; read from the checkpoint's config.json when present "
                        "(a mismatch is an error)")
    p.add_argument("--data-path", default=None, help="a JSONL split to evaluate (overrides --data-dir)")
    p.add_argument("--data-dir", default="data", help="directory holding test.jsonl (default: data)")
    p.add_argument("--split", default="test", help="split in --data-dir to evaluate (default: test)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128,
                   help="context length; must equal the checkpoint's (checked)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    p.add_argument("--output-file", default=None, help="write the full results as JSON here")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)

    from mathllm.evaluate import evaluate_checkpoint_on_split, format_report, iter_failures, load_model, save_results

    model = load_model(args.checkpoint, model_size=args.model_size, device=args.device)
    if args.max_length != model.cfg.n_ctx:
        print(f"note: --max-length {args.max_length} differs from the checkpoint's context {model.cfg.n_ctx}; "
              f"using {model.cfg.n_ctx}", file=sys.stderr)
    data_path = Path(args.data_path) if args.data_path else Path(args.data_dir) / f"{args.split}.jsonl"
    if not data_path.is_file():
        raise FileNotFoundError(
            f"no data at {data_path}. Generate it first, e.g.\n"
            f"    python scripts/generate_data.py --num-examples 100000 --max-digits 2 --output-dir {data_path.parent}"
        )
    results = evaluate_checkpoint_on_split(model, data_path, batch_size=args.batch_size, limit=args.limit)
    results["checkpoint"] = str(args.checkpoint)
    print(format_report(results))
    failures = list(iter_failures(results))
    if failures:
        print("\nsome failures:")
        print("\n".join("  " + f for f in failures[:5]))
    if args.output_file:
        save_results(results, args.output_file)
        print(f"\nwrote {args.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
