"""Batched generation with a KV cache.

With a trained model::

    texts = generate(model, ["12+34=", "658+189="])      # greedy, stops at <end>
    texts[0]                    # '<think>2+4=6 1+3=4</think>46<end>'
    parse_completion(texts[0])  # ('2+4=6 1+3=4', '46'), from mathllm.text

How it is fast: prompts are grouped by token length, so a batch never needs padding and every row
shares positions; each batch runs one forward over the prompts and then one single-token forward per
step, reusing the cached keys/values. Rows that emit ``<end>`` are dropped from the batch (their cache
rows too) once enough of them have finished. On a CPU, batches run in parallel Python threads with one
torch thread each (torch releases the GIL inside its kernels): for these small matrices that beats
torch's own intra-op threads, by 3-5x when other processes compete for the cores.
"""

from __future__ import annotations

import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from mathllm.model import KVCache, MathTransformer
from mathllm.tokenizer import END_ID, PAD_ID, TOKENIZER
from mathllm.utils import eval_mode

Prompt = Union[str, Sequence[int], torch.Tensor]


@dataclass
class Generation:
    """One prompt's result when ``generate(..., return_probs=True)``."""

    prompt: str  # the prompt as text
    text: str  # the generated completion, ending in "<end>" when the model emitted it
    token_ids: list[int]  # the generated ids, same tokens as `text`
    probs: list[float]  # per generated token: the model's probability of it (softmax at temperature 1)
    finished: bool  # True when generation stopped at <end> (False: max_new_tokens, n_ctx, or stop_at_end=False)

    @property
    def tokens(self) -> list[str]:
        """One label per generated token, for plot axes."""
        return TOKENIZER.str_tokens(self.token_ids)


def _encode_prompts(prompts) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() == 1:
            prompts = prompts.unsqueeze(0)
        if prompts.dim() != 2:
            raise ValueError(f"a tensor of prompts must be [n, pos], got shape {tuple(prompts.shape)}")
        return prompts.tolist()
    if isinstance(prompts, str):
        raise TypeError("generate() takes a list of prompts; wrap a single prompt in a list: [prompt]")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            ids = TOKENIZER.encode(p)
        elif isinstance(p, torch.Tensor):
            ids = p.reshape(-1).tolist()
        else:
            ids = [int(t) for t in p]
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        out.append(ids)
    return out


def _draft_ids(draft, vocab: int) -> list[int]:
    if draft is None:
        return []
    if isinstance(draft, str):
        ids = TOKENIZER.encode(draft)
    elif isinstance(draft, torch.Tensor):
        ids = draft.reshape(-1).tolist()
    else:
        ids = [int(t) for t in draft]
    if ids and (min(ids) < 0 or max(ids) >= vocab):
        raise ValueError(f"a draft has token ids outside the vocabulary (0-{vocab - 1})")
    return ids


def _pick(logits: torch.Tensor, temperature: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _generate_batch(model: MathTransformer, ids: torch.Tensor, max_new: int, temperature: float,
                    stop_at_end: bool, return_probs: bool, generator: Optional[torch.Generator]):
    """Generate for ``ids`` ``[B, P]`` (all rows the same length). Returns tokens, probs, lengths."""
    B, P = ids.shape
    tokens = torch.full((B, max_new), PAD_ID, dtype=torch.long)
    probs = torch.zeros((B, max_new)) if return_probs else None
    lengths = torch.full((B,), max_new, dtype=torch.long)
    finished = torch.zeros(B, dtype=torch.bool)
    if max_new <= 0:
        return tokens, probs, lengths.zero_(), finished

    cache = KVCache.for_model(model, B, capacity=P + max_new)
    logits = model(ids, past_key_values=cache)[:, -1]
    rows = torch.arange(B)  # original row of each row still in the batch
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)  # rows in the batch that already ended
    for t in range(max_new):
        nxt = _pick(logits, temperature, generator)
        live = ~done
        live_cpu = live.cpu()
        tokens[rows[live_cpu], t] = nxt[live].cpu()
        if return_probs:
            p = torch.softmax(logits.float(), dim=-1).gather(1, nxt[:, None]).squeeze(1)
            probs[rows[live_cpu], t] = p[live].cpu()
        if stop_at_end:
            newly = (nxt == END_ID) & live
            if bool(newly.any()):
                newly_cpu = newly.cpu()
                lengths[rows[newly_cpu]] = t + 1
                finished[rows[newly_cpu]] = True
                done |= newly
                n_done = int(done.sum())
                if n_done == len(done):
                    break
                if 8 * n_done >= len(done):  # drop finished rows once they are an eighth of the batch
                    keep = (~done).nonzero().squeeze(1)
                    cache.select(keep)
                    rows, nxt, done = rows[keep.cpu()], nxt[keep], done[keep]
        if t == max_new - 1:
            break
        logits = model(nxt[:, None], past_key_values=cache)[:, -1]
    return tokens, probs, lengths, finished


def _draft_batch(model: MathTransformer, seqs: torch.Tensor, prompt_lens: list[int], drafts: list[list[int]],
                 return_probs: bool):
    """Check drafts in one teacher-forced pass over ``seqs`` = prompt + draft (``[B, L]``, no cache).

    Returns per row ``(greedy, probs)``: the greedy tokens at positions ``prompt_len - 1`` ... ``L - 1``
    (one per draft token, plus the token after the whole draft) and their probabilities.
    """
    logits = model(seqs)
    greedy = logits.argmax(-1)  # [B, L]
    probs = None
    if return_probs:
        probs = torch.softmax(logits.float(), -1).gather(2, greedy[..., None]).squeeze(2).tolist()
    greedy = greedy.tolist()
    return [
        (greedy[row][p_len - 1 : p_len + len(draft)], probs[row][p_len - 1 : p_len + len(draft)] if probs else None)
        for row, (p_len, draft) in enumerate(zip(prompt_lens, drafts))
    ]


def _in_parallel(run, n_jobs: int, workers: int) -> None:
    """Call ``run(job)`` for every job; on several threads with one torch thread each when workers > 1."""
    if workers <= 1 or n_jobs <= 1:
        for job in range(n_jobs):
            run(job)
        return
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(workers, n_jobs)) as pool:
            list(pool.map(run, range(n_jobs)))
    finally:
        torch.set_num_threads(threads_before)


def _batches(keys: list, batch_size: int, workers: int) -> list[tuple[Any, list[int]]]:
    """Group row indices by key; chunks of at most batch_size, smaller when that leaves a worker idle."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    jobs = []
    for key, indices in sorted(groups.items()):
        size = min(batch_size, max(1, math.ceil(len(indices) / workers)))
        jobs += [(key, indices[s : s + size]) for s in range(0, len(indices), size)]
    return jobs


def _run_generation(model, encoded: list[list[int]], max_news: list[int], temperature: float, stop_at_end: bool,
                    return_probs: bool, batch_size: int, generator, workers: int):
    """Generate for every prompt (``max_news[i]`` tokens at most); returns (ids, probs, finished) per prompt."""
    device = model.W_E.device
    jobs = _batches([(len(ids), m) for ids, m in zip(encoded, max_news)], batch_size, workers)
    seeds: list[Optional[int]] = [None] * len(jobs)
    if temperature > 0:
        seeds = [int(x) for x in torch.randint(0, 2**62, (len(jobs),), generator=generator)]
    results: list[Any] = [None] * len(encoded)

    def run(job: int) -> None:
        (_, max_new), chunk = jobs[job]
        gen = torch.Generator(device=device).manual_seed(seeds[job]) if seeds[job] is not None else None
        with torch.inference_mode():
            ids = torch.tensor([encoded[i] for i in chunk], dtype=torch.long, device=device)
            tokens, probs, lengths, finished = _generate_batch(
                model, ids, max_new, temperature, stop_at_end, return_probs, gen
            )
        for row, i in enumerate(chunk):
            n = int(lengths[row])
            results[i] = (tokens[row, :n].tolist(), probs[row, :n].tolist() if return_probs else None,
                          bool(finished[row]))

    _in_parallel(run, len(jobs), workers)
    return results


def _run_with_drafts(model, encoded: list[list[int]], max_news: list[int], drafts: list[list[int]],
                     stop_at_end: bool, return_probs: bool, batch_size: int, workers: int):
    """Greedy generation that first checks each draft in one teacher-forced pass (speculative decoding
    with the draft as the guess), then generates on from the first token greedy decoding disagrees."""
    device = model.W_E.device
    drafts = [d[:m] for d, m in zip(drafts, max_news)]
    if stop_at_end:
        drafts = [d[: d.index(END_ID) + 1] if END_ID in d else d for d in drafts]
    # a draft that ends in <end> needs no prediction after it: its <end> is not fed (one token less per row)
    feeds = [d[:-1] if stop_at_end and d and d[-1] == END_ID else d for d in drafts]
    seqs = [p + f for p, f in zip(encoded, feeds)]
    jobs = _batches([len(s) for s in seqs], batch_size, workers)
    checked: list[Any] = [None] * len(encoded)

    def run(job: int) -> None:
        _, chunk = jobs[job]
        with torch.inference_mode():
            ids = torch.tensor([seqs[i] for i in chunk], dtype=torch.long, device=device)
            out = _draft_batch(model, ids, [len(encoded[i]) for i in chunk], [feeds[i] for i in chunk], return_probs)
        for i, res in zip(chunk, out):
            checked[i] = res

    _in_parallel(run, len(jobs), workers)

    results: list[Any] = [None] * len(encoded)
    todo = []
    for i, (greedy, probs) in enumerate(checked):
        draft = drafts[i]
        accepted = 0
        while accepted < len(draft) and greedy[accepted] == draft[accepted]:
            accepted += 1
        take = accepted
        if accepted < max_news[i] and not (stop_at_end and accepted and draft[accepted - 1] == END_ID):
            take += 1  # the greedy token where the draft went wrong, or the one after a complete draft
        ids = greedy[:take]
        finished = stop_at_end and bool(ids) and ids[-1] == END_ID
        results[i] = (ids, probs[:take] if return_probs else None, finished)
        if not finished and take < max_news[i]:
            todo.append(i)
    if todo:  # generate on after the verified prefix
        more = _run_generation(model, [encoded[i] + results[i][0] for i in todo],
                               [max_news[i] - len(results[i][0]) for i in todo], 0.0, stop_at_end,
                               return_probs, batch_size, None, workers)
        for i, (ids, probs, finished) in zip(todo, more):
            head_ids, head_probs, _ = results[i]
            results[i] = (head_ids + ids, head_probs + probs if return_probs else None, finished)
    return results


def generate(
    model: MathTransformer,
    prompts: Union[Sequence[Prompt], torch.Tensor],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    stop_at_end: bool = True,
    return_probs: bool = False,
    batch_size: int = 128,
    generator: Optional[torch.Generator] = None,
    workers: Optional[int] = None,
    drafts: Optional[Sequence[Union[Prompt, None]]] = None,
) -> Union[list[str], list[Generation]]:
    """Continue each prompt; results come back in the order of ``prompts``.

    Args:
        prompts: strings (``"12+34="``), lists/1-d tensors of ids, or an ``[n, pos]`` id tensor.
            Prompts of different lengths are fine (they are generated in separate batches).
        max_new_tokens: at most this many new tokens per prompt (also capped by ``model.cfg.n_ctx``).
        temperature: 0 = greedy (argmax); > 0 samples from softmax(logits / temperature), using
            ``generator`` when given.
        stop_at_end: stop a prompt at ``<end>`` (included in its text). False: always generate
            ``max_new_tokens``.
        return_probs: return :class:`Generation` objects (text, ids, per-token probabilities) instead
            of plain strings.
        batch_size: at most this many rows per forward pass (128 suits a CPU and the small model).
        generator: seeds the sampling (each batch gets its own seed drawn from it), so the same
            generator seed, prompts, ``batch_size`` and ``workers`` give the same samples.
        workers: CPU batches run in this many threads with one torch thread each (default:
            ``torch.get_num_threads()``); 1 runs them one after another with torch's own threading.
            Always 1 on a GPU and while hooks are attached to the model (hook functions then see
            batches in a deterministic order).
        drafts: greedy only. One guess per prompt of its completion (e.g. the reference answers when
            evaluating; None or "" for no guess). Each guess is checked in one teacher-forced forward,
            the longest prefix greedy decoding would also produce is kept and generation goes on from
            the first disagreement, so the result is what plain greedy generation gives (up to float
            rounding on near-tied logits), 2-3x faster when most guesses are right.

    Returns:
        ``list[str]`` of generated completions (the prompt is not repeated), or ``list[Generation]``.
        Hooks attached to the model (``model.hooks(...)``) are active during generation.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    encoded = _encode_prompts(prompts)
    n_ctx, vocab = model.cfg.n_ctx, model.cfg.d_vocab
    for i, ids in enumerate(encoded):
        if len(ids) >= n_ctx:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; the model's n_ctx is {n_ctx}")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary (0-{vocab - 1})")
    max_news = [min(max_new_tokens, n_ctx - len(ids)) for ids in encoded]

    hooked = any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())
    workers = torch.get_num_threads() if workers is None else workers
    if model.W_E.device.type != "cpu" or hooked:
        workers = 1
    workers = max(1, workers)

    with eval_mode(model), model.frozen_weights():
        if drafts is None:
            results = _run_generation(model, encoded, max_news, temperature, stop_at_end, return_probs,
                                      batch_size, generator, workers)
        else:
            if temperature > 0:
                raise ValueError("drafts work with greedy generation only (temperature=0)")
            if len(drafts) != len(encoded):
                raise ValueError(f"got {len(drafts)} drafts for {len(encoded)} prompts")
            draft_ids = [_draft_ids(d, vocab) for d in drafts]
            results = _run_with_drafts(model, encoded, max_news, draft_ids, stop_at_end, return_probs,
                                       batch_size, workers)

    out: list[Any] = []
    for ids, (gen_ids, probs, finished) in zip(encoded, results):
        text = TOKENIZER.decode(gen_ids, skip_pad=False)
        if return_probs:
            out.append(Generation(prompt=TOKENIZER.decode(ids, skip_pad=False), text=text, token_ids=gen_ids,
                                  probs=probs, finished=finished))
        else:
            out.append(text)
    return out
