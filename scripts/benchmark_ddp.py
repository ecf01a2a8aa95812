#!/usr/bin/env python
"""Training throughput with data parallelism: tokens/s of the same training, run two ways, as a ratio.

    python scripts/benchmark_ddp.py                       # CPU: 1 process x 2 threads vs 2 processes x 1 thread
    python scripts/benchmark_ddp.py --device cuda         # and, on a GPU: plain training vs DDP with 1 process

Each way is a real ``scripts/train.py`` run (``torchrun --standalone`` for the data-parallel ones) on the same data,
model, global batch, seed and steps; the tokens/s the trainer logs (``logs/metrics.jsonl``, the whole job's) are
averaged over the logged windows after the first (warm-up). The same global batch means the same training: the
2-process run reaches the 1-process run's weights (tests/test_distributed.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mathllm.cli import run_cli
from mathllm.data import generate_dataset, write_dataset
from mathllm.utils import REPO_ROOT

TRAIN = str(REPO_ROOT / "scripts" / "train.py")


def run(launcher: list[str], flags: list[str], threads: int, out: Path) -> float:
    """Mean tokens/s of one training run (windows after the first)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    proc = subprocess.run([*launcher, TRAIN, *flags, "--output-dir", str(out), "--threads", str(threads)],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({' '.join(launcher)}):\n{proc.stderr[-2000:]}")
    logged = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    rates = [m["tokens_per_s"] for m in logged if "tokens_per_s" in m][1:]
    return statistics.mean(rates)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="small")
    p.add_argument("--global-batch", type=int, default=64, help="examples per optimizer step, all processes together")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=1, help="run each way this many times; the best counts")
    args = p.parse_args(argv)
    python = [sys.executable]
    torchrun = lambda n: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(generate_dataset(num_examples=20_000, max_digits=3, max_operands=2, seed=0), data, progress=False)
        base = ["--model-size", args.model_size, "--data-dir", str(data), "--max-steps", str(args.steps),
                "--logging-steps", str(max(args.steps // 6, 1)), "--eval-steps", str(10 * args.steps),
                "--save-steps", str(10 * args.steps), "--no-evaluate-test", "--no-wandb", "--no-progress",
                "--device", args.device, "--learning-rate", "1e-3", "--warmup-steps", "10"]
        if args.device == "cpu":
            ways = {"1 process x 2 threads": (python, 2, args.global_batch),
                    "2 processes x 1 thread (gloo)": (torchrun(2), 1, args.global_batch // 2)}
        else:
            ways = {"1 GPU, plain": (python, 1, args.global_batch),
                    "1 GPU, DDP with 1 process (nccl)": (torchrun(1), 1, args.global_batch)}
        rates = {}
        for w, (name, (launcher, threads, batch)) in enumerate(ways.items()):
            rates[name] = max(run(launcher, base + ["--batch-size", str(batch)], threads, Path(tmp) / f"way{w}-{i}")
                              for i in range(args.repeats))
            print(f"{name:<36} {rates[name]:>10,.0f} tokens/s", flush=True)
    first, second = rates.values()
    print(f"ratio (second / first): {second / first:.2f}x   [{args.model_size}, global batch {args.global_batch}, "
          f"{args.steps} steps]")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
