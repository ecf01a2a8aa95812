"""Train several configurations in parallel processes and compare their test exact match.

Used to choose the main job's settings and to compare learned vs rotary positions. Each configuration is a
set of TrainConfig overrides on top of a base; every run evaluates its final model on the test split.

    python scripts/sweep.py --configs sweep.json --device cuda --output sweep_results.json
    # sweep.json: {"rotary": {"max_steps": 2400}, "learned": {"max_steps": 2400, "positional": "learned"}}

On a CPU, run one configuration at a time (``--parallel 1``): two torch processes on 2 cores thrash.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

from mathllm.cli import run_cli
from mathllm.train import TrainConfig, read_config_file, train


BASE = dict(model_size="mini", batch_size=64, learning_rate=2e-3, warmup_steps=200, max_steps=2000,
            eval_steps=500, save_steps=100_000, logging_steps=250, eval_examples=1000, wandb=False,
            data_dir="data/add2_ops3_cot", progress=False)


def run_one(job: tuple[str, dict, dict]) -> dict:
    name, overrides, settings = job
    import torch

    torch.set_num_threads(settings["threads"])
    cfg = dict(BASE, output_dir=str(Path(settings["runs_dir"]) / name), device=settings["device"])
    cfg.update(overrides)
    start = time.time()
    result = train(TrainConfig.from_dict(cfg), console_log=False, overwrite=True)
    tests = result.test_results or {}
    out = {"name": name, "overrides": overrides, "test_exact_match": tests.get("exact_match"),
           "by_num_operands": tests.get("by_num_operands"), "seconds": round(time.time() - start, 1),
           "val_curve": [(m["step"], m["val_exact_match"]) for m in result.history if "val_exact_match" in m]}
    print(json.dumps(out), flush=True)
    return out


def check_run_name(name: str, source: str) -> str:
    """A run name becomes a folder under --runs-dir: it may not leave it (no '/', no '..', not empty)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise ValueError(f"{source}: run name {name!r} must be a plain folder name (no '/', no '..', not hidden)")
    return name


def read_configs(path: str) -> dict[str, dict]:
    """``{name: {TrainConfig field: value}}`` from a JSON file, every name and every entry checked."""
    configs = read_config_file(path)
    for name, overrides in configs.items():
        check_run_name(name, path)
        if not isinstance(overrides, dict):
            raise ValueError(f"{path}: run {name!r} must map to an object of TrainConfig settings")
        TrainConfig.from_dict({**BASE, **overrides})  # every setting is checked before anything trains
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", required=True, help="JSON file: {name: {TrainConfig field: value}}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parallel", type=int, default=1, help="processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--runs-dir", default="checkpoints/sweep")
    parser.add_argument("--output", default="sweep_results.json")
    args = parser.parse_args(argv)
    configs = read_configs(args.configs)
    settings = {"device": args.device, "threads": args.threads, "runs_dir": args.runs_dir}
    jobs = [(name, overrides, settings) for name, overrides in configs.items()]
    if args.parallel > 1:
        with mp.get_context("spawn").Pool(args.parallel) as pool:
            results = pool.map(run_one, jobs)
    else:
        results = [run_one(job) for job in jobs]
    Path(args.output).write_text(json.dumps(results, indent=1))
    for r in sorted(results, key=lambda r: -(r["test_exact_match"] or 0)):
        em = "-" if r["test_exact_match"] is None else f"{r['test_exact_match']:.4f}"
        print(f"{r['name']:>24}  test exact match {em}  ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
