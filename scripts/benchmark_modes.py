#!/usr/bin/env python
"""Time one training step of every mode on the same batch and model, and print the ratios to teacher forcing.

    .venv/bin/python scripts/benchmark_modes.py                                  # small model, CPU or CUDA
    .venv/bin/python scripts/benchmark_modes.py --device cuda --batch-size 64 --model-size small
    .venv/bin/python scripts/benchmark_modes.py --model-size tiny --steps 5 --repeats 2 --json out.json

A step is what the trainer does: zero the gradients, forward + backward (for gumbel: sampling the think tokens
too), clip the gradient norm, a fused AdamW update. Every mode gets the same B problems, all of one layout
(same prompt, trace and answer lengths, so no mode pays for padding), the same model and optimizer settings.
The think budget K defaults to the human trace's length of that layout (``--think-tokens``): all the problems
have that layout, so this equals the longest trace of the shape for timing purposes.

Rows: teacher (the human trace), answer-only, pause (K pauses), internalize (half the trace removed), and
gumbel in four implementations of the same straight-through estimator:

* ``gumbel`` (``parallel``, depth 1, the trainer's default): K cached sampling steps without an autograd graph
  (on CUDA replayed as one captured CUDA graph; the eager row shows the difference), then one full forward, a
  backward to the think tokens' input embeddings (activation gradients only) and one full backward;
* ``gumbel depth=K``: the same with the exact gradient (K activation-only backward passes + one full one);
* ``gumbel sequential``: K single-token steps through a differentiable KV cache (exact gradient);
* ``gumbel uncached``: every step re-runs the whole prefix (what a public predecessor did; exact gradient).

Time: the median over ``--repeats`` of the mean over ``--steps`` steps, modes interleaved so that a shared
machine slows all of them alike. Memory: the peak allocated during one step above what was allocated before it
(weights, optimizer state; gradients were freed by ``zero_grad``) — on CUDA ``torch.cuda.max_memory_allocated``;
on CPU the profiler's allocator events (``torch.profiler`` with ``profile_memory=True``: the running total of
the CPU allocator's allocations and frees during the step, from its level at the step's first event).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

from mathllm.batches import LengthGroupedData, completion_loss
from mathllm.data import generate_dataset
from mathllm.model import MathTransformer, ModelConfig
from mathllm.modes import get_mode
from mathllm.modes.gumbel import gumbel_backward_parallel, gumbel_loss_sequential, gumbel_noise
from mathllm.modes.internalize import remove_trace_tokens
from mathllm.modes.thinking import THINK_ALPHABETS
from mathllm.text import split_text
from mathllm.tokenizer import PAUSE_ID, TOKENIZER
from mathllm.utils import resolve_device

BASELINE = "teacher"  # the row every other row is divided by


def pick_batch(texts: list[str], batch_size: int) -> list[str]:
    """``batch_size`` lines of the most common (prompt, trace, answer) layout with a think block."""
    def layout(t: str):
        parts = split_text(t)
        return (len(TOKENIZER.tokenize(parts.prompt)), len(TOKENIZER.tokenize(parts.think)) if parts.think else 0,
                len(TOKENIZER.tokenize(parts.answer)))

    layouts = [layout(t) for t in texts]
    counts = Counter(l for l in layouts if l[1] > 0)
    best = max(counts, key=lambda l: (counts[l] >= batch_size, l[1] * (counts[l] >= batch_size), counts[l]))
    chosen = [t for t, l in zip(texts, layouts) if l == best][:batch_size]
    if len(chosen) < batch_size:
        raise SystemExit(f"no layout has {batch_size} problems; lower --batch-size or raise --num-examples")
    return chosen


def token_step(ids: torch.Tensor, mask: torch.Tensor) -> Callable[[MathTransformer], None]:
    def run(model):
        completion_loss(model(ids[:, :-1]), ids, mask).backward()
    return run


def build_steps(texts: list[str], k: int, device: torch.device) -> dict[str, Callable[[MathTransformer], Any]]:
    def dense(lines, ignore=()):
        data = LengthGroupedData.from_texts(lines, max_length=256, ignore_target_ids=ignore)
        (length, ids), = data.groups.items()
        return ids.to(device), data.loss_masks[length].to(device)

    teacher = dense(texts)
    trace = len(TOKENIZER.tokenize(split_text(texts[0]).think))
    internal = remove_trace_tokens(teacher[0], torch.full((len(texts),), trace // 2, device=device))
    steps: dict[str, Callable] = {
        BASELINE: token_step(*teacher),
        "answer-only": token_step(*dense(get_mode("answer-only").training_texts(texts))),
        f"pause K={k}": token_step(*dense(get_mode("pause", think_tokens=str(k)).training_texts(texts), ignore=(PAUSE_ID,))),
        f"internalize (-{trace // 2} tokens)": token_step(*internal),
    }
    prompts = [TOKENIZER.encode(split_text(t).prompt) for t in texts]
    answers = [TOKENIZER.encode(split_text(t).answer) for t in texts]
    prompt = torch.tensor(prompts, device=device)
    answer = torch.tensor(answers, device=device)
    alphabet = torch.tensor(THINK_ALPHABETS["digits"], device=device)
    counter = {"step": 0}

    def noise():
        counter["step"] += 1
        return gumbel_noise((len(texts), k, len(alphabet)), counter["step"], device)

    def parallel(depth, graph=False):
        def run(model):
            gumbel_backward_parallel(model, prompt, answer, k, alphabet, noise(), 1.0, depth=depth, cuda_graph=graph)
        return run

    def sequential(use_cache):
        def run(model):
            gumbel_loss_sequential(model, prompt, answer, k, alphabet, noise(), 1.0, use_cache=use_cache).loss.backward()
        return run

    cuda = device.type == "cuda"
    steps[f"gumbel K={k} (parallel, depth 1{', CUDA graph' if cuda else ''})"] = parallel(1, cuda)
    if cuda:
        steps[f"gumbel K={k} (parallel, depth 1, eager)"] = parallel(1)
    steps[f"gumbel K={k} (parallel, depth K: exact)"] = parallel(k, cuda)
    steps[f"gumbel K={k} (sequential, cached: exact)"] = sequential(True)
    steps[f"gumbel K={k} (uncached, predecessor)"] = sequential(False)
    return steps


def full_step(model, optimizer, run) -> None:
    optimizer.zero_grad(set_to_none=True)
    run(model)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(model, optimizer, run, device: torch.device) -> int:
    """Bytes allocated at the peak of one step above the allocation before it (see the module docstring)."""
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        full_step(model, optimizer, run)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    saved = os.dup(2)  # kineto prints start/stop lines on fd 2
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                full_step(model, optimizer, run)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0),
                    key=lambda e: e["ts"])
    if not memory:
        return 0
    # "Total Allocated" is a process-wide running count that carries over between profiler sessions: measure
    # from the level just before this step's first allocation event
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in memory) - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="small")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-digits", type=int, default=2)
    p.add_argument("--max-operands", type=int, default=3)
    p.add_argument("--num-examples", type=int, default=20000, help="problems generated to pick the batch from")
    p.add_argument("--think-tokens", type=int, default=None, help="K for pause/gumbel (default: the trace length)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--only", default=None, help="comma-separated substrings: time only the rows that match")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = generate_dataset(num_examples=args.num_examples, max_digits=args.max_digits,
                            max_operands=args.max_operands, seed=0)
    texts = pick_batch(list(data["train"].texts), args.batch_size)
    trace = len(TOKENIZER.tokenize(split_text(texts[0]).think))
    k = args.think_tokens if args.think_tokens is not None else trace
    torch.manual_seed(0)
    model = MathTransformer(ModelConfig.from_preset(args.model_size)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    steps = build_steps(texts, k, device)
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        steps = {n: f for n, f in steps.items() if n == BASELINE or any(s in n for s in keep)}
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"model {args.model_size} ({sum(p.numel() for p in model.parameters()):,} parameters), batch {args.batch_size} x "
          f"'{texts[0]}' ({len(TOKENIZER.encode(texts[0]))} tokens, trace {trace}), K={k}", flush=True)

    for name, run in steps.items():  # warm-up (and the optimizer's state)
        for _ in range(args.warmup):
            full_step(model, optimizer, run)
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, run in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                full_step(model, optimizer, run)
            sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    memory = {} if args.no_memory else {name: peak_memory(model, optimizer, run, device) for name, run in steps.items()}

    base_t = statistics.median(times[BASELINE])
    base_m = memory.get(BASELINE)
    rows = []
    print(f"\n{'mode':<44}{'ms/step':>10}{'x teacher':>11}{'peak MiB':>10}{'x teacher':>11}")
    for name in steps:
        t = statistics.median(times[name])
        m = memory.get(name)
        row = {"mode": name, "seconds_per_step": t, "time_ratio": t / base_t, "peak_bytes": m,
               "memory_ratio": (m / base_m) if m is not None and base_m else None, "all_seconds": times[name]}
        rows.append(row)
        mem = f"{m / 2**20:>10.2f}{row['memory_ratio']:>10.2f}x" if m is not None else f"{'-':>10}{'-':>11}"
        print(f"{name:<44}{t * 1e3:>10.2f}{t / base_t:>10.2f}x{mem}")
    print("\ngoal for gumbel: <= 3x the time and <= 1.5x the memory of a teacher step on the same batch")
    print("memory: " + ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                        else "CPU allocator events from torch.profiler (profile_memory=True)")
          + "; peak during one step above the allocation before it")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "args": vars(args), "example": texts[0],
                                               "trace_tokens": trace, "think_tokens": k, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
