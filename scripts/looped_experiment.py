#!/usr/bin/env python
"""Latent reasoning in depth (issue 16): looped answer-only models against their controls, by carry-chain length.

    python scripts/looped_experiment.py --task add8 --seeds 0 1                       # every run of the plan
    python scripts/looped_experiment.py --task add8 --runs looped-uniform one-pass-uniform --seeds 0
    python scripts/looped_experiment.py --task add8 --dry-run                         # print the plan only

Every run is answer-only (no trace labels, no warm start, no teacher mixing) except the ``trace`` reference, and
is trained by the package's own trainer (``mathllm.train``). The runs of a task share one data directory (made here
if missing: ``mathllm.chains.uniform_dataset``, operand lengths uniform in 1..N, digits uniform, so long carry
chains are rare), so runs with the same seed see the same examples in the same order; ``-chains`` runs replace 30 %
of the training problems by problems with a planted carry chain (``--planted-chains``: plain problems with their
answers). The plan (``RUNS``; L = ``--loops``, 4 by default):

=========================  ==================================================================================
looped-chains              2 layers looped L times, answer slots, planted chains
one-pass-chains            the same block run once, the same examples
looped-uniform             2 layers looped L times, answer slots, uniform data
one-pass-uniform           the same block run once, the same examples
one-pass-uniform-flops     run once with L x the steps (and the curriculum stretched L x): equal FLOPs
untied-uniform             2L untied layers run once (the looped model's depth, L x the parameters)
loops-random-uniform       looped, L drawn per batch in 2..2L, progressive loss (alpha 0.5, k <= L)
loops-random-chains        the same, planted chains (does it settle to a fixed point past L?)
trace-uniform              the human trace, teacher-forced (the same 2-layer block, one pass): the reference
answer-only-uniform        the answer written digit by digit, most significant first (no slots)
pause-uniform              8 <pause> tokens before the answer
gumbel-uniform             8 latent think tokens sampled by the model, straight-through with the exact gradient
                           (--gumbel-grad-depth 8)
=========================  ==================================================================================

Every answer-slots run zero-pads the operands to N digits and uses a curriculum over operand length (Fan et al.:
``--curriculum-start 3``, one more digit every ``--curriculum-interval`` steps). After training, each run is
measured on the same fixed sets (``mathllm.depth``): 2,000 uniform problems and 300 for each carry-chain length
k = 0..N, at its trained L, at L = 1 (the same weights), and, for looped runs, after every iteration 1..2L (does the
state settle past L?), with the logit lens after every layer of every iteration by chain length
(``mathllm.interp.iterations``). Each run writes ``chain_results.json`` beside its checkpoint; the summary (``--summary``,
rewritten after every run) holds the command, the code version, every run's config, seed, times and results, and a
table per run name over the seeds. A run that already finished is read back (``--overwrite`` retrains), an
interrupted one resumes.

``--task mul3`` (the issue's second candidate, 3x3-digit multiplication) runs the same plan on ``mathllm.data``'s
multiplication data (204,000 distinct problems, the shapes 1*1 .. 3*3 balanced up to their number of problems, 80/10/10
split), 5,000 steps, a curriculum from 1-digit operands (one more digit every 500 steps); there are no carry chains,
so each run is measured by stratum (operand lengths): the first 2,000 test problems and up to 300 of each stratum
(``mathllm.depth.stratum_sets``, ``strata_results.json``), at its L, at L = 1 and per iteration; the ``-chains`` runs
do not apply.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mathllm.chains import uniform_dataset, write_examples
from mathllm.checkpoints import load, read_metrics, seconds_per_step
from mathllm.cli import run_cli
from mathllm.data import generate_dataset, load_split, write_dataset
from mathllm.depth import evaluate_chains, evaluate_strata, format_chains, format_strata, iteration_curves, stratum_sets
from mathllm.interp.iterations import chain_problem_sets, fit_steps, iteration_lens
from mathllm.train import TrainConfig, train
from mathllm.utils import atomic_write_json, code_version

TASKS: dict[str, dict[str, Any]] = {
    "add8": {"max_digits": 8, "num_examples": 204_000, "max_steps": 2500, "curriculum_interval": 200},
    "add6": {"max_digits": 6, "num_examples": 204_000, "max_steps": 2500, "curriculum_interval": 250},
    "add4": {"max_digits": 4, "num_examples": 204_000, "max_steps": 3000, "curriculum_interval": 300},
    "smoke": {"max_digits": 3, "num_examples": 3_000, "max_steps": 12, "curriculum_interval": 4},
    # 3x3-digit multiplication (the second candidate): mathllm.data's balanced shapes 1*1 .. 3*3, measured by
    # stratum (operand lengths), curriculum from 1-digit operands; a longer budget: one pass is far from solving it
    "mul3": {"operation": "mul", "max_digits": 3, "num_examples": 204_000, "max_steps": 5000, "curriculum_interval": 500,
             "curriculum_start": 1, "max_length": 192},
    "smoke-mul": {"operation": "mul", "max_digits": 2, "num_examples": 3_000, "max_steps": 12, "curriculum_interval": 4,
                  "curriculum_start": 1, "max_length": 192},
}
BLOCK = {"model_size": "tiny", "d_model": 128, "d_mlp": 512, "n_heads": 4, "n_layers": 2}
SLOTS = {"mode": "answer-slots"}  # + pad_operands = N
RUNS: dict[str, dict[str, Any]] = {
    "looped-chains": {**SLOTS, "loops": "L", "planted_chains": 0.3},
    "one-pass-chains": {**SLOTS, "loops": 1, "planted_chains": 0.3},
    "looped-uniform": {**SLOTS, "loops": "L"},
    "one-pass-uniform": {**SLOTS, "loops": 1},
    "one-pass-uniform-flops": {**SLOTS, "loops": 1, "steps_times": "L"},
    "untied-uniform": {**SLOTS, "loops": 1, "n_layers": "2L"},
    "loops-random-uniform": {**SLOTS, "loops": "L", "loops_min": 2, "loops_max": "2L", "progressive_loss": 0.5,
                             "progressive_max_backprop": "L"},
    "loops-random-chains": {**SLOTS, "loops": "L", "loops_min": 2, "loops_max": "2L", "progressive_loss": 0.5,
                            "progressive_max_backprop": "L", "planted_chains": 0.3},
    "trace-uniform": {"mode": "teacher", "loops": 1},
    "answer-only-uniform": {"mode": "answer-only", "loops": 1},
    "pause-uniform": {"mode": "pause", "think_tokens": "8", "loops": 1},
    "gumbel-uniform": {"mode": "gumbel", "think_tokens": "8", "think_alphabet": "latent", "gumbel_grad_depth": 8,
                       "loops": 1},
}
DEFAULT_RUNS = ["one-pass-uniform", "looped-uniform", "one-pass-chains", "looped-chains", "one-pass-uniform-flops",
                "untied-uniform", "trace-uniform", "gumbel-uniform"]
SLOT_MODES = {SLOTS["mode"]}


def _value(value: Any, loops: int) -> Any:
    """``"L"`` -> loops, ``"2L"`` -> 2 x loops; anything else as it is."""
    if value == "L":
        return loops
    if value == "2L":
        return 2 * loops
    return value


def run_config(name: str, task: str, seed: int, loops: int, data_dir: Path, output_dir: Path,
               max_steps: int | None = None, threads: int | None = 1, device: str = "cpu") -> TrainConfig:
    """The ``TrainConfig`` of run ``name`` (one of ``RUNS``) with ``seed``."""
    if name not in RUNS:
        raise ValueError(f"unknown run {name!r}; the plan has {', '.join(RUNS)}")
    spec = {k: _value(v, loops) for k, v in RUNS[name].items()}
    t = TASKS[task]
    steps = max_steps or t["max_steps"]
    times = spec.pop("steps_times", 1)
    slots = spec["mode"] in SLOT_MODES
    cfg: dict[str, Any] = {
        **BLOCK, "data_dir": str(data_dir), "output_dir": str(output_dir), "seed": seed, "device": device,
        "threads": threads, "batch_size": 64, "learning_rate": 1e-3, "warmup_steps": min(200, steps // 4) * times,
        "max_steps": steps * times, "eval_steps": steps * times, "save_steps": 500, "logging_steps": 100,
        "eval_examples": 256, "eval_loss_examples": 500, "eval_batch_size": 256, "max_length": t.get("max_length", 128),
        "bf16": device == "cpu", "wandb": False, "progress": False,
        "curriculum_start": t.get("curriculum_start", min(3, t["max_digits"])),
        "curriculum_interval": t["curriculum_interval"] * times,
    }
    if slots:
        cfg["pad_operands"] = t["max_digits"]
    cfg.update(spec)
    return TrainConfig.from_dict(cfg)


def ensure_data(task: str, data_root: Path, seed: int = 0) -> Path:
    """The task's uniform data directory, made once (``mathllm.chains.uniform_dataset``; multiplication:
    ``mathllm.data.generate_dataset``, shapes balanced, 80/10/10 split)."""
    t = TASKS[task]
    out = data_root / f"looped_{task}_uniform"
    if (out / "meta.json").is_file():
        return out
    if t.get("operation"):
        print(f"making {out} ({t['num_examples']:,} problems, {t['operation']})", flush=True)
        write_dataset(generate_dataset(num_examples=t["num_examples"], max_digits=t["max_digits"], seed=seed,
                                       fmt="cot", operation=t["operation"]), out)
        return out
    args = {"num_examples": t["num_examples"], "max_digits": t["max_digits"], "seed": seed, "fmt": "cot",
            "val_examples": 2000 if task != "smoke" else 200, "test_examples": 2000 if task != "smoke" else 200}
    print(f"making {out} ({args['num_examples']:,} problems)", flush=True)
    write_examples(uniform_dataset(**args), out, {"generator": "mathllm.chains.uniform_dataset", **args})
    return out


def measure_strata(run_dir: Path, data_dir: Path, per_stratum: int, n_uniform: int, looped: bool) -> dict[str, Any]:
    """``measure`` for a task without carry chains (multiplication): the first ``n_uniform`` problems of the test split
    and up to ``per_stratum`` of each stratum (``mathllm.depth.stratum_sets``), at the run's L, at L = 1, and per
    iteration 1..2L (looped runs)."""
    cached = run_dir / "strata_results.json"
    key = {"per_stratum": per_stratum, "n_uniform": n_uniform, "split": str(data_dir / "test.jsonl")}
    if cached.is_file():
        old = json.loads(cached.read_text())
        if old.get("sets") == key:
            return old
    trained = load(run_dir, device="cpu")
    sets = stratum_sets(load_split(data_dir / "test.jsonl"), per_stratum, n_uniform)
    trained_loops = trained.model.cfg.n_loops
    out: dict[str, Any] = {"sets": key, "trained_loops": trained_loops}
    start = time.perf_counter()
    out["at_trained_loops"] = evaluate_strata(trained, sets)
    print(format_strata(out["at_trained_loops"]), flush=True)
    if trained_loops > 1:
        out["at_one_loop"] = evaluate_strata(trained, sets, loops=1)
    if looped:
        out["per_iteration"] = iteration_curves(trained, 0, 2 * trained_loops, sets=sets, progress=False)
    out["eval_seconds"] = time.perf_counter() - start
    atomic_write_json(cached, out)
    return out


def measure(run_dir: Path, max_digits: int, loops: int, per_k: int, n_uniform: int, looped: bool) -> dict[str, Any]:
    """A finished run's results on the fixed sets: at its L, at L = 1, and per iteration (looped runs)."""
    cached = run_dir / "chain_results.json"
    key = {"per_k": per_k, "n_uniform": n_uniform}
    if cached.is_file():
        old = json.loads(cached.read_text())
        if old.get("sets") == key:
            return old
    trained = load(run_dir, device="cpu")
    trained_loops = trained.model.cfg.n_loops
    out: dict[str, Any] = {"sets": key, "trained_loops": trained_loops}
    start = time.perf_counter()
    out["at_trained_loops"] = evaluate_chains(trained, max_digits, per_k, n_uniform)
    print(format_chains(out["at_trained_loops"]), flush=True)
    if trained_loops > 1:
        out["at_one_loop"] = evaluate_chains(trained, max_digits, per_k, n_uniform, loops=1)
    if looped:
        out["per_iteration"] = iteration_curves(trained, max_digits, 2 * trained_loops, per_k, n_uniform,
                                                progress=False)
    if looped and getattr(trained.mode, "line", None) is not None:  # what the iterations compute: the lens by depth
        lens = iteration_lens(trained, chain_problem_sets(max_digits, per_k=100), max_loops=2 * trained_loops)
        steps = lens.steps_to_answer()
        out["lens"] = {"labels": lens.labels, "trained_steps": trained_loops * lens.n_layers,
                       "accuracy_by_depth": lens.accuracy_by_depth(), "steps_to_answer": steps,
                       "chain_end_steps": lens.chain_end_steps(),
                       "fit": fit_steps({k: v["mean_step"] for k, v in steps.items()})}
        print(lens.summary(), flush=True)
    out["eval_seconds"] = time.perf_counter() - start
    atomic_write_json(cached, out)
    return out


def _cells(result: dict[str, Any] | None) -> dict[str, Any]:
    if not result:
        return {}
    if "by_stratum" in result:  # multiplication: strata (operand lengths) instead of carry chains
        w = result.get("worst_stratum")
        return {"uniform": result["uniform"]["exact_match"], "worst_stratum": w["exact_match"] if w else None,
                **{name: v["exact_match"] for name, v in result["by_stratum"].items()}}
    chains = result["by_carry_chain"]
    return {"uniform": result["uniform"]["exact_match"],
            "min_k": min((v["exact_match"] for v in chains.values()), default=None),
            **{f"k{k}": v["exact_match"] for k, v in chains.items()}}


def table(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run name: mean, min and max over the seeds of the uniform exact match, the worst chain length and each k;
    the same weights at L = 1; seconds per step."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["name"] for r in runs):
        done = [r for r in runs if r["name"] == name and "results" in r]
        row: dict[str, Any] = {"seeds": [r["seed"] for r in done], "mode": next((r["mode"] for r in done), None)}
        for label, part in (("", "at_trained_loops"), ("same_weights_L1_", "at_one_loop")):
            cells = [_cells(r["results"].get(part)) for r in done]
            cells = [c for c in cells if c]
            for key in (cells[0] if cells else {}):
                values = [c[key] for c in cells if c.get(key) is not None]
                if values:
                    row[f"{label}{key}"] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
        row["parameters"] = next((r.get("parameters") for r in done), None)
        row["loops"] = next((r["config"]["loops"] for r in done), None)
        steps = [r["seconds_per_step"] for r in done if r.get("seconds_per_step")]
        row["seconds_per_step"] = statistics.median(steps) if steps else None
        row["train_steps"] = next((r["config"]["max_steps"] for r in done), None)
        out[name] = row
    return out


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - SIGTERM between trainings (measuring): stop as Ctrl-C does
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The experiment; a SIGTERM while a run is measured would end the process before the summary is written, so it
    is an interrupt here, as Ctrl-C is (the trainer installs its own handler while it trains and puts this one back)."""
    try:
        old = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread
        return _main(argv)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, old)


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="add8", choices=list(TASKS))
    p.add_argument("--runs", nargs="+", default=None, help=f"runs of the plan (default: {' '.join(DEFAULT_RUNS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--loops", type=int, default=4, help="L: the looped runs' iterations (default 4)")
    p.add_argument("--max-steps", type=int, default=None, help="training steps of a one-pass run (default: the task's)")
    p.add_argument("--data-root", default="data", help="where the task's data directory is made (default: data)")
    p.add_argument("--output-root", default="checkpoints/looped", help="runs go to OUTPUT_ROOT/TASK/NAME-seedS")
    p.add_argument("--summary", default=None, help="default: docs/experiments/looped_TASK.json")
    p.add_argument("--per-k", type=int, default=300,
                   help="test problems per carry-chain length, or per stratum for multiplication (default 300)")
    p.add_argument("--n-uniform", type=int, default=2000, help="uniform test problems (default 2000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--overwrite", action="store_true", help="retrain runs that already finished")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its configs, train nothing")
    p.add_argument("--stop-on-error", action="store_true")
    args = p.parse_args(argv)
    names = list(dict.fromkeys(args.runs or DEFAULT_RUNS))  # a name or seed given twice is one run
    args.seeds = list(dict.fromkeys(args.seeds))
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise ValueError(f"unknown run(s) {', '.join(unknown)}; the plan has {', '.join(RUNS)}")
    if args.loops < 2:
        raise ValueError(f"--loops must be at least 2 (a looped model), got {args.loops}")
    task = TASKS[args.task]
    summary_path = Path(args.summary or f"docs/experiments/looped_{args.task}.json")
    root = Path(args.output_root) / args.task
    data_dir = Path(args.data_root) / f"looped_{args.task}_uniform"
    header = {"command": "python scripts/looped_experiment.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "task": args.task, "max_digits": task["max_digits"], "loops": args.loops, "seeds": args.seeds,
              "runs_requested": names, "data_dir": str(data_dir), "platform": platform.platform(),
              "code_version": code_version(), "test_sets": {"per_k": args.per_k, "n_uniform": args.n_uniform,
                                                            "seed": 1234}}
    runs: list[dict[str, Any]] = []
    if summary_path.is_file() and not args.dry_run:  # keep the runs of other invocations (other seeds or runs)
        old = json.loads(summary_path.read_text())
        runs = [r for r in old.get("runs", []) if not (r["name"] in names and r["seed"] in args.seeds)]
        header["earlier_commands"] = sorted(set(old.get("earlier_commands", []) + [old.get("command", "")]) - {""})

    def write_summary() -> None:
        if not args.dry_run:
            order = {n: i for i, n in enumerate(RUNS)}
            runs.sort(key=lambda r: (order.get(r["name"], 99), r["seed"]))
            atomic_write_json(summary_path, {**header, "table": table(runs), "runs": runs})

    if not args.dry_run:
        ensure_data(args.task, Path(args.data_root))
    failed = False
    for seed in args.seeds:
        for name in names:
            out_dir = root / f"{name}-seed{seed}"
            cfg = run_config(name, args.task, seed, args.loops, data_dir, out_dir, args.max_steps, args.threads,
                             args.device)
            record: dict[str, Any] = {"name": name, "seed": seed, "mode": cfg.mode, "output_dir": str(out_dir),
                                      "config": cfg.to_dict()}
            print(f"=== {name} seed {seed}: {out_dir} (mode {cfg.mode}, loops {cfg.loops}, {cfg.max_steps} steps)",
                  flush=True)
            if args.dry_run:
                continue
            start = time.perf_counter()
            try:
                result = train(cfg, overwrite=args.overwrite)
                if result.interrupted:
                    record["error"] = "interrupted"
                    runs.append(record)
                    write_summary()
                    return 130
                history = read_metrics(out_dir)
                meta = json.loads((out_dir / "training_config.json").read_text())
                record.update({"parameters": meta["num_parameters"], "code_version": meta["code_version"],
                               "planted_chains": meta.get("planted_chains"),
                               "seconds_per_step": seconds_per_step(history),
                               "train_seconds": result.train_seconds or None,
                               "test_exact_match": (result.test_results or {}).get("exact_match"),
                               "learning_curve": [m for m in history if "val_exact_match" in m]})
                looped = cfg.loops > 1
                if task.get("operation"):
                    record["results"] = measure_strata(out_dir, data_dir, args.per_k, args.n_uniform, looped)
                else:
                    record["results"] = measure(out_dir, task["max_digits"], cfg.loops, args.per_k, args.n_uniform,
                                                looped)
                record["wall_seconds"] = time.perf_counter() - start
            except KeyboardInterrupt:
                record["error"] = "interrupted"
                runs.append(record)
                write_summary()
                return 130
            except Exception as err:  # noqa: BLE001 - one failing run must not lose the others
                if args.stop_on_error:
                    raise
                failed = True
                record["error"] = f"{type(err).__name__}: {err}"
                record["traceback"] = traceback.format_exc()
                print(f"=== {name} seed {seed} FAILED: {record['error']}", file=sys.stderr, flush=True)
            runs.append(record)
            write_summary()
    write_summary()
    if not args.dry_run:
        print(f"\nwrote {summary_path}")
        for name, row in table(runs).items():
            u, k = row.get("uniform"), row.get("min_k") or row.get("worst_stratum")
            print(f"{name:<26} seeds {row['seeds']}  uniform {u['mean'] if u else float('nan'):.4f}  "
                  f"worst k/stratum {k['mean'] if k else float('nan'):.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
