#!/usr/bin/env python
"""Time data generation plus writing, and print the rate.

    python scripts/benchmark_data.py                       # 1,000,000 three-digit cot examples (the target: <= 10 s)
    python scripts/benchmark_data.py --max-digits 4 --repeats 3
    python scripts/benchmark_data.py --cli                 # also time the real command, interpreter start included

Files go to a temporary directory that is deleted afterwards (or to --output-dir). The numbers depend on
the machine and on what else runs on it, so the load average is printed too.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mathllm.cli import run_cli
from mathllm.data import FORMATS, generate_dataset, write_dataset
from mathllm.utils import REPO_ROOT as ROOT


def time_once(args, output_dir: Path) -> dict:
    start = time.perf_counter()
    cpu_start = time.process_time()
    dataset = generate_dataset(num_examples=args.num_examples, max_digits=args.max_digits,
                               max_operands=args.max_operands, seed=args.seed, fmt=args.fmt, progress=False)
    generated = time.perf_counter()
    write_dataset(dataset, output_dir, progress=False)
    done = time.perf_counter()
    size = sum(p.stat().st_size for p in output_dir.glob("*.jsonl"))
    return {"examples": dataset.meta["num_examples"], "generate_s": generated - start, "write_s": done - generated,
            "wall_s": done - start, "cpu_s": time.process_time() - cpu_start, "megabytes": size / 1e6}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-examples", type=int, default=1_000_000)
    p.add_argument("--max-digits", type=int, default=3)
    p.add_argument("--max-operands", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="cot")
    p.add_argument("--repeats", type=int, default=1, help="runs to time; the best and the median are reported")
    p.add_argument("--output-dir", default=None, help="keep the files here instead of a temporary directory")
    p.add_argument("--cli", action="store_true", help="also time scripts/generate_data.py as a subprocess")
    args = p.parse_args(argv)

    print(f"{args.num_examples:,} examples, max_digits={args.max_digits}, max_operands={args.max_operands}, "
          f"format={args.fmt}; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} before starting")
    with tempfile.TemporaryDirectory(prefix="mathllm-bench-") as tmp:
        output_dir = Path(args.output_dir or tmp)
        runs = []
        for i in range(args.repeats):
            run = time_once(args, output_dir)
            runs.append(run)
            print(f"run {i + 1}: generate {run['generate_s']:.2f} s + write {run['write_s']:.2f} s "
                  f"= {run['wall_s']:.2f} s wall ({run['cpu_s']:.2f} s CPU), "
                  f"{run['examples'] / run['wall_s']:,.0f} examples/s, {run['megabytes']:.0f} MB written")
        walls = [r["wall_s"] for r in runs]
        best = min(walls)
        print(f"wall time: best {best:.2f} s, median {statistics.median(walls):.2f} s; "
              f"rate {runs[0]['examples'] / best:,.0f} examples/s (best run)")
        if args.cli:
            command = [sys.executable, str(ROOT / "scripts" / "generate_data.py"), "--quiet",
                       "--num-examples", str(args.num_examples), "--max-digits", str(args.max_digits),
                       "--max-operands", str(args.max_operands), "--seed", str(args.seed), "--format", args.fmt,
                       "--output-dir", str(output_dir)]
            start = time.perf_counter()
            subprocess.run(command, check=True)
            print(f"command line (python start-up and imports included): {time.perf_counter() - start:.2f} s")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
