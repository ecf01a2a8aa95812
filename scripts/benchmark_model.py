#!/usr/bin/env python
"""Measure MathTransformer speed on this machine and print ratios (not a test; nothing asserts).

    .venv/bin/python scripts/benchmark_model.py                       # small model, all three parts
    .venv/bin/python scripts/benchmark_model.py --model-size tiny --steps 20 --skip-bridge

1. training: fwd + bwd + AdamW (fused) step on random token batches; tokens/s and model FLOP/s as a fraction
   of this machine's own fp32 matmul FLOP/s (2048x2048 matmuls measured in the same run);
2. the same config trained as ``TransformerBridge.boot_native`` (TransformerLens 4): ours / bridge;
3. generation: examples/s for 2-digit, 2-3 operand addition prompts with ``mathllm.generate``, forced
   to ``--max-new-tokens`` and to the mean chain-of-thought length (a random model never says <end>);
4. the same with ``drafts=`` set to the right completions (one verifying pass, as for a model that is
   always right);
5. with ``--loops L``: the same model looped L times (shared weights, input re-added every iteration): its
   training step and its forward pass as a ratio to the one-pass model's (the goal: about L x, no more).

Training and bridge timings alternate and each keeps its best repeat, so a machine shared with
other work biases both alike. Model FLOPs per token: 6*N (N = parameters outside the embedding and
unembedding) + 6*n_layers*seq*d_model (attention scores and mixing, fwd+bwd, no causal discount).
"""

from __future__ import annotations

import argparse
import random
import time
import warnings

import torch
import torch.nn.functional as F

from mathllm.data import format_example, format_prompt
from mathllm.generate import generate
from mathllm.model import PRESETS, MathTransformer, ModelConfig
from mathllm.tokenizer import TOKENIZER, VOCAB_SIZE


def matmul_flops(n: int = 2048, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):
        reps, start = 0, CLOCK()
        while CLOCK() - start < seconds / 3:
            a @ b
            reps += 1
        best = min(best, (CLOCK() - start) / reps)
    return 2 * n**3 / best


def adamw(params) -> torch.optim.Optimizer:
    """AdamW, fused when this torch supports it on the device (on CPU ~4x faster than the default)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-4)


def train_step_fn(model, batch: torch.Tensor):
    opt = adamw(model.parameters())

    def step() -> None:
        logits = model(batch)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


CLOCK = time.perf_counter


def time_steps(step, steps: int) -> float:
    start = CLOCK()
    for _ in range(steps):
        step()
    return (CLOCK() - start) / steps


def problems_2digit(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Prompts like "12+34=" and their chain-of-thought completions, rendered by mathllm.data."""
    rng = random.Random(seed)
    prompts, completions = [], []
    for _ in range(n):
        operands = [rng.randint(10, 99) for _ in range(rng.choice([2, 3]))]
        prompt = format_prompt(operands)
        prompts.append(prompt)
        completions.append(format_example(operands)[len(prompt):])
    return prompts, completions


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-size", default="small", choices=list(PRESETS))
    ap.add_argument("--positional", default="rotary", choices=["rotary", "learned"])
    ap.add_argument("--n-heads", type=int, default=None, help="override the preset's heads (the main job: tiny, 8)")
    ap.add_argument("--compare-attention", action="store_true",
                    help="also time training with attention pinned to SDPA and to the explicit path, alternating")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch (rows)")
    ap.add_argument("--seq-len", type=int, default=30, help="training sequence length (tokens)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; the best is kept")
    ap.add_argument("--skip-bridge", action="store_true")
    ap.add_argument("--gen-examples", type=int, default=2048)
    ap.add_argument("--gen-batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="generate(workers=...); default torch's thread count")
    ap.add_argument("--max-new-tokens", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--loops", type=int, default=None,
                    help="also time the model looped this many times against one pass, and print the ratio")
    ap.add_argument("--only-loops", action="store_true", help="with --loops: time only the looped comparison")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: time.process_time, steadier on a shared machine; with --threads 1 and "
                         "--workers 1 it equals wall time on an idle one")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    overrides = {"n_heads": args.n_heads} if args.n_heads else {}
    cfg = ModelConfig.from_preset(args.model_size, positional=args.positional, **overrides)
    torch.manual_seed(0)
    model = MathTransformer(cfg).train()
    n_params = sum(p.numel() for p in model.parameters())
    n_core = n_params - model.W_E.numel() - model.W_U.numel() - (model.W_pos.numel() if cfg.positional == "learned" else 0)
    T, B = args.seq_len, args.batch_size
    flops_per_token = 6 * n_core + 6 * cfg.n_layers * T * cfg.d_model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; model {args.model_size} "
          f"({cfg.shape_summary()}), {n_params:,} params ({n_core:,} outside embeddings)")

    peak = matmul_flops()
    print(f"fp32 2048x2048 matmul: {peak / 1e9:.1f} GFLOP/s")

    batch = torch.randint(0, VOCAB_SIZE, (B, T))
    if args.loops:
        loop_ratio(model, batch, args.loops, args.steps, args.repeats)
        if args.only_loops:
            return
    ours_step = train_step_fn(model, batch)
    bridge_step = None
    if not args.skip_bridge:
        bridge = model.to_bridge().train()
        bridge_step = train_step_fn(bridge, batch)
    for _ in range(3):  # warm-up: allocator, oneDNN primitives
        ours_step()
        if bridge_step:
            bridge_step()
    best_ours = best_bridge = float("inf")
    for _ in range(args.repeats):
        best_ours = min(best_ours, time_steps(ours_step, args.steps))
        if bridge_step:
            best_bridge = min(best_bridge, time_steps(bridge_step, args.steps))
    peak_after = matmul_flops()
    peak = max(peak, peak_after)

    tok_s = B * T / best_ours
    print(f"\n[1] training, batch {B} x {T} tokens, fwd+bwd+AdamW: {best_ours * 1e3:.1f} ms/step, "
          f"{tok_s:,.0f} tokens/s")
    print(f"    model FLOPs {flops_per_token / 1e6:.1f} MFLOP/token -> {tok_s * flops_per_token / 1e9:.1f} GFLOP/s "
          f"= {tok_s * flops_per_token / peak:.0%} of the measured matmul peak ({peak / 1e9:.1f} GFLOP/s)")
    if args.compare_attention:
        best_backend = {"sdpa": float("inf"), "explicit": float("inf")}
        for _ in range(args.repeats):
            for backend in best_backend:
                model.set_attention_backend(backend)
                best_backend[backend] = min(best_backend[backend], time_steps(ours_step, args.steps))
        model.set_attention_backend("auto")
        print(f"[1b] attention pinned, same training step: SDPA {best_backend['sdpa'] * 1e3:.1f} ms/step, explicit "
              f"{best_backend['explicit'] * 1e3:.1f} ms/step; SDPA / explicit = "
              f"{best_backend['sdpa'] / best_backend['explicit']:.2f}x (auto on a CPU = explicit)")
    if bridge_step:
        b_tok_s = B * T / best_bridge
        print(f"[2] TransformerBridge.boot_native, same config and batch: {best_bridge * 1e3:.1f} ms/step, "
              f"{b_tok_s:,.0f} tokens/s; ours / bridge = {best_bridge / best_ours:.2f}x")

    model.eval()
    prompts, references = problems_2digit(args.gen_examples)
    mean_completion = sum(len(TOKENIZER.encode(r)) for r in references) / len(references)
    generate(model, prompts[: args.gen_batch_size], max_new_tokens=4, batch_size=args.gen_batch_size)  # warm-up

    def timed(**kwargs) -> tuple[float, list[str]]:
        best, out = float("inf"), []
        for _ in range(max(1, args.repeats - 1)):
            start = CLOCK()
            out = generate(model, prompts, stop_at_end=False, batch_size=args.gen_batch_size,
                           workers=args.workers, **kwargs)
            best = min(best, CLOCK() - start)
        return best, out

    prompt_tokens = sum(len(TOKENIZER.encode(p)) for p in prompts)
    print(f"[3] generation, {len(prompts)} prompts (2-digit, 2-3 operands; mean prompt "
          f"{prompt_tokens / len(prompts):.1f} tokens, mean cot completion {mean_completion:.1f} tokens), "
          f"batch {args.gen_batch_size}, workers {args.workers or torch.get_num_threads()}:")
    for new_tokens, label in ((args.max_new_tokens, "forced"), (round(mean_completion), "forced, = mean cot length")):
        seconds, outputs = timed(max_new_tokens=new_tokens)
        work = (prompt_tokens + len(prompts) * new_tokens) * 2 * n_core / seconds
        print(f"    {new_tokens} new tokens ({label}): {len(prompts) / seconds:,.0f} examples/s "
              f"({seconds:.2f} s; matmul work {work / 1e9:.1f} GFLOP/s = {work / peak:.0%} of peak)")
    seconds, _ = timed(max_new_tokens=round(mean_completion), drafts=outputs)
    print(f"[4] the same {round(mean_completion)} tokens with drafts=<the right completions> (what an evaluator "
          f"can pass as references when the model is right): {len(prompts) / seconds:,.0f} examples/s ({seconds:.2f} s)")


def loop_ratio(model, batch: torch.Tensor, loops: int, steps: int, repeats: int) -> tuple[float, float]:
    """Time a training step and a forward pass at one pass and at ``loops`` iterations (alternating, best of
    ``repeats``); print and return the two ratios (looped / one pass)."""
    if loops < 1:
        raise SystemExit(f"--loops must be >= 1, got {loops}")
    step = train_step_fn(model, batch)

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    best = {(kind, n): float("inf") for kind in ("train", "forward") for n in (1, loops)}
    for n in (1, loops):  # warm-up
        with model.looping(n):
            step(), forward()
    for _ in range(repeats):
        for n in (1, loops):
            with model.looping(n):
                best["train", n] = min(best["train", n], time_steps(step, steps))
                best["forward", n] = min(best["forward", n], time_steps(forward, steps))
    train_ratio = best["train", loops] / best["train", 1]
    forward_ratio = best["forward", loops] / best["forward", 1]
    B, T = batch.shape
    print(f"\n[5] looped x{loops} vs one pass, batch {B} x {T}: training step {best['train', 1] * 1e3:.1f} -> "
          f"{best['train', loops] * 1e3:.1f} ms = {train_ratio:.2f}x; forward {best['forward', 1] * 1e3:.1f} -> "
          f"{best['forward', loops] * 1e3:.1f} ms = {forward_ratio:.2f}x (goal: about {loops}x, no more; the "
          f"embedding, unembedding and optimizer step are shared, so a little under {loops}x is expected)")
    return train_ratio, forward_ratio


if __name__ == "__main__":
    main()
