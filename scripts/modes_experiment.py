#!/usr/bin/env python
"""Train every training mode for several seeds with the same compute, and write one JSON summary.

    python scripts/modes_experiment.py --data-dir data/add2_ops3_cot --model-size tiny --max-steps 3000 \\
        --batch-size 64 --seeds 1 2 3 --device cuda
    python scripts/modes_experiment.py --data-dir data --modes teacher answer-only \\
        "gumbel-latent:mode=gumbel,think_alphabet=latent,think_tokens=8" --seeds 1 --max-steps 500 \\
        --learning-rate 1e-3 --warmup-steps 100          # any other flag goes to every run (scripts/train.py's)

Every run gets the same number of optimizer steps (``--max-steps``) of the same batch size, so the modes get the
same number of updates and examples (not the same FLOPs: a gumbel step also samples its think tokens; the
summary records seconds per step). Run ``NAME`` (a mode, or ``NAME:field=value,...`` for a variant, where the
fields are ``TrainConfig``'s and ``mode=`` says which mode it is; ``{seed}`` in a value becomes the run's seed, e.g.
``warm:mode=gumbel,init_from=checkpoints/modes/teacher-seed{seed}``; runs go seed by seed in the order given, so a
teacher run listed first exists when its warm start needs it) with seed N trains into
``<output-root>/<NAME>-seed<N>/``; a run that already finished there is read back, not retrained (``--overwrite``
retrains), and an interrupted one resumes.

The summary (``--summary``, default ``<output-root>/summary.json``, rewritten after every run) holds, per run:
name, mode, seed, output_dir, the mode's settings and the whole training config, test exact match and the rest of
test_results.json (breakdowns by digits / carries / operands), seconds per step (median of the logged windows
after the first; and over the second half of training, the steady state: on CUDA a gumbel run spends its first
epoch or two capturing one CUDA graph per batch shape, so short runs overstate its step time), training seconds, the learning curve (every line of logs/metrics.jsonl), and, for runs that
write think tokens (gumbel), an analysis of them on ``--analyse-examples`` test problems (example traces, token
statistics per position, mutual information with the true carries and column sums against a shuffled baseline,
``mathllm.free_thinking``). Per name it also aggregates exact match over the seeds (mean, std, min, max).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import traceback
import typing
from pathlib import Path
from typing import Any

from mathllm.checkpoints import load, read_metrics, seconds_per_step
from mathllm.cli import run_cli, training_parser
from mathllm.data import load_split
from mathllm.free_thinking import collect_think_traces, think_label_information, token_statistics
from mathllm.tokenizer import VOCAB
from mathllm.train import TrainConfig, train
from mathllm.training_mode import available_modes, mode_class
from mathllm.utils import atomic_write_json, resolve_device

DEFAULT_MODES = ["teacher", "answer-only", "pause", "gumbel", "internalize"]
DRIVER_FIELDS = {"data_dir", "model_size", "max_steps", "batch_size", "device", "seed", "mode", "output_dir",
                 "use_gumbel", "config"}


def parse_run_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"gumbel"`` -> ("gumbel", {"mode": "gumbel"}); ``"g8:mode=gumbel,think_tokens=8"`` -> ("g8", {...}).

    The fields are ``TrainConfig``'s and the settings of the run's mode."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name or "/" in name:
        raise ValueError(f"bad run name in {spec!r}")
    items = [item.partition("=") for item in filter(None, (s.strip() for s in rest.split(",")))]
    raw = {key.strip().replace("-", "_"): value.strip() for key, eq, value in items if eq}
    if len(raw) != len(items):
        raise ValueError(f"in {spec!r}: every item must be field=value")
    mode = raw.get("mode", name)
    if mode not in available_modes():
        raise ValueError(f"run {name!r} is not a mode ({', '.join(available_modes())}); say which with {name}:mode=...")
    hints = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(mode_class(mode).Settings)}
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ValueError(f"in {spec!r}: {', '.join(unknown)} is neither a TrainConfig field nor a setting of mode {mode}")
    return name, {"mode": mode, **{key: _coerce(hints[key], value) for key, value in raw.items()}}


def _coerce(hint, text: str):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if text.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    if base is bool:
        return text.lower() in ("1", "true", "yes", "on")
    return base(text)


def analyse_think(output_dir: Path, data_dir: str, n: int, device: str) -> dict[str, Any]:
    """Think traces of a trained run on the first ``n`` test problems: examples, token statistics, MI table."""
    trained = load(output_dir, device=device)
    traces = collect_think_traces(trained, load_split(Path(data_dir) / "test.jsonl")[:n])
    stats = token_statistics(traces)
    table = think_label_information(traces)
    return {
        "examples": n, "exact_match": traces.accuracy,
        "example_traces": traces.examples(12), "wrong_examples": traces.examples(6, only=False),
        "distinct_traces": stats["distinct_traces"],
        "tokens_used": [VOCAB[t] for t in stats["tokens_used"]],
        "entropy_bits_per_position": stats["entropy_bits"].tolist(),
        "top_tokens_per_position": stats["top"],
        "counts_per_position": {VOCAB[t]: stats["counts"][:, t].tolist() for t in stats["tokens_used"]},
        "mutual_information": table.to_dict(),
        "most_informative": table.best(12),
    }


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for run in runs:
        out.setdefault(run["name"], []).append(run)
    agg = {}
    for name, rs in out.items():
        ems = [r["test_exact_match"] for r in rs if r.get("test_exact_match") is not None]
        secs = [r["seconds_per_step"] for r in rs if r.get("seconds_per_step")]
        late = [r["seconds_per_step_second_half"] for r in rs if r.get("seconds_per_step_second_half")]
        agg[name] = {"mode": rs[0]["mode"], "seeds": [r["seed"] for r in rs], "runs_finished": len(ems),
                     "exact_match_mean": statistics.mean(ems) if ems else None,
                     "exact_match_std": statistics.stdev(ems) if len(ems) > 1 else None,
                     "exact_match_min": min(ems) if ems else None, "exact_match_max": max(ems) if ems else None,
                     "seconds_per_step_mean": statistics.mean(secs) if secs else None,
                     "seconds_per_step_second_half_mean": statistics.mean(late) if late else None}
    return agg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # --seed must not pass for --seeds, nor --mode for --modes
    p.add_argument("--data-dir", required=True, help="cot data (scripts/generate_data.py --format cot)")
    p.add_argument("--model-size", default="tiny")
    p.add_argument("--max-steps", type=int, required=True, help="optimizer steps of every run")
    p.add_argument("--batch-size", type=int, default=64, help="examples per step of every run (default: 64)")
    p.add_argument("--modes", nargs="+", default=DEFAULT_MODES,
                   help="runs: mode names or NAME:field=value,... variants (default: the five modes)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--output-root", default="checkpoints/modes")
    p.add_argument("--summary", default=None, help="summary JSON (default: <output-root>/summary.json)")
    p.add_argument("--analyse-examples", type=int, default=2000,
                   help="test problems whose think traces are analysed for runs that write think tokens (0: none)")
    p.add_argument("--overwrite", action="store_true", help="retrain runs that already finished")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first failing run (default: go on)")
    p.add_argument("--wandb", action="store_true", help="log every run to W&B (default: off)")
    p.add_argument("--progress", action="store_true", help="show each run's progress bar")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their configs, train nothing")
    args, passthrough = p.parse_known_args(argv)

    extra = vars(training_parser().parse_args(passthrough))
    for flag in ("overwrite", "use_gumbel", "config"):
        extra.pop(flag, None)
    flags = {a.split("=", 1)[0] for a in passthrough if a.startswith("--")}
    clash = sorted(f for f in DRIVER_FIELDS if {f"--{f.replace('_', '-')}", f"--no-{f.replace('_', '-')}"} & flags)
    if clash:
        raise ValueError(f"set {', '.join(clash)} with the driver's own flags or in a --modes variant, not as a "
                         "passthrough flag")
    specs = [parse_run_spec(s) for s in args.modes]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be distinct: {names}")

    root = Path(args.output_root)
    summary_path = Path(args.summary) if args.summary else root / "summary.json"
    device = resolve_device(args.device)
    header = {
        "command": " ".join(sys.argv if argv is None else ["modes_experiment.py", *argv]),
        "data_dir": args.data_dir, "model_size": args.model_size, "max_steps": args.max_steps,
        "batch_size": args.batch_size, "seeds": args.seeds, "runs_requested": args.modes,
        "device": str(device), "passthrough": passthrough, "platform": platform.platform(),
    }
    try:
        import torch

        header["torch"] = torch.__version__
        if device.type == "cuda":
            header["gpu"] = torch.cuda.get_device_name(device)
    except Exception:  # noqa: BLE001
        pass
    runs: list[dict[str, Any]] = []

    def write_summary() -> None:
        atomic_write_json(summary_path, {**header, "aggregate": summarize_runs(runs), "runs": runs})

    for seed in args.seeds:
        for name, overrides in specs:
            cfg_dict = {**extra, "data_dir": args.data_dir, "model_size": args.model_size, "max_steps": args.max_steps,
                        "batch_size": args.batch_size, "device": args.device, "seed": seed,
                        "output_dir": str(root / f"{name}-seed{seed}"), "wandb": args.wandb,
                        "progress": args.progress,
                        **{k: v.replace("{seed}", str(seed)) if isinstance(v, str) else v for k, v in overrides.items()}}
            cfg = TrainConfig.from_dict(cfg_dict)
            mode = cfg.training_mode()
            record: dict[str, Any] = {"name": name, "mode": cfg.mode, "seed": seed, "output_dir": cfg.output_dir,
                                      "settings": mode.to_dict(), "config": cfg.to_dict()}
            print(f"=== {name} seed {seed}: {cfg.output_dir}", flush=True)
            if args.dry_run:
                runs.append(record)
                continue
            start = time.perf_counter()
            try:
                result = train(cfg, overwrite=args.overwrite)
                if result.interrupted:
                    record["error"] = "interrupted"
                    runs.append(record)
                    write_summary()
                    return 130
                history = read_metrics(cfg.output_dir)
                tests = result.test_results or {}
                record.update({
                    "test_exact_match": tests.get("exact_match"),
                    "test_results": {k: v for k, v in tests.items() if k != "failures"},
                    "seconds_per_step": seconds_per_step(history),
                    "seconds_per_step_second_half": seconds_per_step(history, second_half=True),
                    "train_seconds": result.train_seconds or None,
                    "wall_seconds": time.perf_counter() - start,
                    "final_val_exact_match": next((m["val_exact_match"] for m in reversed(history)
                                                   if "val_exact_match" in m), None),
                    "learning_curve": history,
                })
                if mode.writes_own_thoughts and args.analyse_examples > 0:
                    record["think_analysis"] = analyse_think(Path(cfg.output_dir), args.data_dir,
                                                             args.analyse_examples, args.device)
                em = record["test_exact_match"]
                sps = record["seconds_per_step"]
                print(f"=== {name} seed {seed}: test exact match {em if em is None else f'{em:.4f}'}, "
                      f"{sps if sps is None else f'{sps * 1e3:.1f} ms'}/step", flush=True)
            except KeyboardInterrupt:
                record["error"] = "interrupted"
                runs.append(record)
                write_summary()
                return 130
            except Exception as err:  # noqa: BLE001 - one failing run must not lose the others
                if args.stop_on_error:
                    raise
                record["error"] = f"{type(err).__name__}: {err}"
                record["traceback"] = traceback.format_exc()
                print(f"=== {name} seed {seed} FAILED: {record['error']}", file=sys.stderr, flush=True)
            runs.append(record)
            write_summary()
    write_summary()
    agg = summarize_runs(runs)
    print(f"\nwrote {summary_path}\n{'run':<28}{'mode':<14}{'exact match (mean ± std over seeds)':<40}"
          f"{'ms/step':>9}{'2nd half':>10}")
    for name, a in agg.items():
        em = "-" if a["exact_match_mean"] is None else f"{a['exact_match_mean']:.4f}" + (
            f" ± {a['exact_match_std']:.4f}" if a["exact_match_std"] is not None else "") + f"  (n={a['runs_finished']})"
        ms = "-" if a["seconds_per_step_mean"] is None else f"{a['seconds_per_step_mean'] * 1e3:.1f}"
        late = "-" if a["seconds_per_step_second_half_mean"] is None else f"{a['seconds_per_step_second_half_mean'] * 1e3:.1f}"
        print(f"{name:<28}{a['mode']:<14}{em:<40}{ms:>9}{late:>10}")
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
