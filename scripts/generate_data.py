#!/usr/bin/env python
"""Generate arithmetic problems as train/val/test JSON Lines (the seed's flags and defaults).

    python scripts/generate_data.py --num-examples 100000 --max-digits 2
    python scripts/generate_data.py --operation mul --num-examples 300000 --max-digits 3 --output-dir data/mul3_cot
    python scripts/generate_data.py --operation add,sub --max-digits 3        # a mix, equal shares
    python scripts/generate_data.py --config configs/main.json      # the experiment file's data section
    python scripts/generate_data.py --num-examples 1000000 --max-digits 3 --max-operands 3 --format plain \\
        --output-dir data/plain3

Writes OUTPUT_DIR/train.jsonl, val.jsonl, test.jsonl and meta.json. One line looks like
    {"text": "12+34=<think>2+4=6 1+3=4</think>46<end>", "prompt": "12+34=", "operands": [12, 34], ...}
A subtraction or multiplication line also says "operation": "sub" / "mul". Formats, balancing and the
leakage-free split are described in mathllm/data.py.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

from mathllm.cli import run_cli
from mathllm.data import FORMATS, OPERATION_NAMES, generate_dataset, parse_operations, write_dataset
from mathllm.train import read_config_file

DEFAULTS = dict(num_examples=100_000, max_digits=2, max_operands=2, seed=42, output_dir="data", train_ratio=0.8,
                val_ratio=0.1, test_ratio=0.1, fmt="cot", whole_strata_below=0, operation="add", min_digits=1)


def operations(text: str) -> str:
    """``--operation`` checked at parse time: ``"sub,add"`` -> ``"add,sub"``."""
    try:
        return ",".join(parse_operations(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config", default=None,
                   help="an experiment file (configs/*.json): its \"data\" section gives the arguments and its "
                        "data_dir the output directory; the other flags override them")
    p.add_argument("--num-examples", type=int,
                   help="distinct problems to generate, all splits together (default: 100000)")
    p.add_argument("--max-digits", type=int,
                   help="each operand has 1..max-digits digits, lengths balanced (default: 2)")
    p.add_argument("--min-digits", type=int,
                   help="each operand has at least this many digits (default: 1; --min-digits 3 --max-digits 3: "
                        "3-digit operands only)")
    p.add_argument("--max-operands", type=int,
                   help="each problem has 2..max-operands operands, counts balanced (default: 2)")
    p.add_argument("--seed", type=int, help="same seed and flags give identical files (default: 42)")
    p.add_argument("--output-dir", help="where the .jsonl files and meta.json go (default: data)")
    p.add_argument("--train-ratio", type=float, help="(default: 0.8)")
    p.add_argument("--val-ratio", type=float, help="(default: 0.1)")
    p.add_argument("--test-ratio", type=float, help="(default: 0.1)")
    p.add_argument("--format", dest="fmt", choices=FORMATS,
                   help="cot: 12+34=<think>2+4=6 1+3=4</think>46<end>; plain: 12+34=46<end>; "
                        "reversed: 12+34=64<end> (default: cot)")
    p.add_argument("--operation", type=operations,
                   help=f"{'|'.join(OPERATION_NAMES)}, or a comma list such as add,sub that mixes them in equal "
                        "shares (default: add). Subtraction (a >= b) and multiplication take two operands")
    p.add_argument("--whole-strata-below", type=int,
                   help="strata with fewer distinct problems than this go to the training split whole "
                        "(101: the 100 one-digit pairs are a table to learn; default: 0, none)")
    p.add_argument("--quiet", action="store_true", help="print nothing but warnings and errors (no progress bars)")
    return p


def main(argv=None) -> int:
    given = vars(build_parser().parse_args(argv))
    args = dict(DEFAULTS)
    config = given.pop("config", None)
    if config:
        experiment = read_config_file(config)
        if not isinstance(experiment.get("data"), dict):
            raise ValueError(f"{config} has no \"data\" section (the arguments of mathllm.data.generate_dataset)")
        unknown = sorted(set(experiment["data"]) - set(DEFAULTS) - {"output_dir"})
        if unknown:
            raise ValueError(f"{config}: unknown data argument(s) {unknown}; known: {sorted(DEFAULTS)}")
        args.update(experiment["data"])
        args["output_dir"] = experiment.get("data_dir", args["output_dir"])
    args.update(given)
    output_dir, quiet = args.pop("output_dir"), args.pop("quiet", False)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    start = time.perf_counter()
    progress = False if quiet else None  # None: a progress bar for big jobs
    dataset = generate_dataset(**args, progress=progress)
    paths = write_dataset(dataset, output_dir, progress=progress)
    seconds = time.perf_counter() - start
    if not quiet:
        meta = dataset.meta
        counts = ", ".join(f"{name} {n:,}" for name, n in meta["counts"].items())
        print(f"wrote {meta['num_examples']:,} {args['fmt']} examples ({counts}) to {Path(output_dir)}/ "
              f"in {seconds:.1f} s")
        for key, values in meta.items():
            if key.startswith(("num_carries_counts", "num_borrows_counts")):
                what = key.replace("_counts", "").replace("num_", "").replace("_", " of ")
                total = sum(values.values())
                shares = ", ".join(f"{c}: {n / total:.0%}" for c, n in values.items())
                print(f"{what} per problem: {shares}")
        if "shape_counts" in meta:
            print("problems per shape: " + ", ".join(f"{k}: {v:,}" for k, v in meta["shape_counts"].items()))
        print(f"first training line: {dataset['train'][0]['text']}" if len(dataset["train"]) else "")
        print(f"metadata: {paths['meta']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
