#!/usr/bin/env python
"""Time caching activations and fitting every probe, the way notebook 06 does (not a test; nothing asserts).

    .venv/bin/python scripts/benchmark_interp.py                         # small model, 5,000 problems (goal <= 60 s)
    .venv/bin/python scripts/benchmark_interp.py --checkpoint checkpoints/add3_cot --repeats 3

By default the model is the ``small`` preset (4 layers, d_model 256) with random weights: the work, and so the
time, is the same as for a trained model of that shape (the probes' accuracies are not, and are not printed).
The problems are 3-digit, two-operand chain-of-thought additions; every residual stream (embed + after each
block) is kept at every position kind present in at least 5 % of them (about 40 kinds), and one probe per
quantity (about 17, each with its shuffled-label control) is fit per stream x kind.

The timed part is ``cache_activations`` + ``fit_probes`` (drawing the problems is reported separately). The
numbers depend on the machine and on what else runs on it, so the load average is printed too; each repeat is
printed and the best one is compared with the goal.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from mathllm.checkpoints import load
from mathllm.interp.positions import sample_problems
from mathllm.interp.probes import cache_activations, fit_probes
from mathllm.model import PRESETS, MathTransformer

GOAL_SECONDS = 60.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-examples", type=int, default=5000)
    parser.add_argument("--model-size", default="small", choices=list(PRESETS))
    parser.add_argument("--checkpoint", default=None, help="time a trained checkpoint instead of a random model")
    parser.add_argument("--num-digits", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = load(args.checkpoint, device="cpu").model
        what = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(args.seed)
        model = MathTransformer.from_preset(args.model_size).eval()
        what = f"{args.model_size} preset, random weights"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {what} ({model.cfg.shape_summary()}, {n_params:,} parameters)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    start = time.perf_counter()
    problems = sample_problems(args.num_examples, num_digits=args.num_digits, seed=args.seed)
    print(f"drew {len(problems):,} problems in {time.perf_counter() - start:.2f} s (not counted)")

    best = None
    for repeat in range(args.repeats):
        start = time.perf_counter()
        acts = cache_activations(model, problems, batch_size=args.batch_size)
        cached = time.perf_counter()
        results = fit_probes(acts)
        done = time.perf_counter()
        n_probes = int((~np.isnan(results.accuracy)).sum())
        total = done - start
        print(f"repeat {repeat + 1}: cache {cached - start:.1f} s ({len(acts.streams)} streams x {len(acts.kinds)} "
              f"position kinds, {tuple(acts.acts.shape)} floats) + fit {done - cached:.1f} s ({n_probes:,} probes "
              f"and as many shuffled-label controls) = {total:.1f} s")
        best = total if best is None else min(best, total)
    print(f"best: {best:.1f} s for {args.num_examples:,} examples = {best / GOAL_SECONDS:.2f} x the "
          f"{GOAL_SECONDS:.0f} s goal ({'met' if best <= GOAL_SECONDS else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
