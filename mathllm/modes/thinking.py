"""What the modes that think in tokens share: the think budget K and the think alphabets.

The budget may depend only on what the prompt shows, never on the answer: a fixed number of tokens, or
``"shape"``, the longest human trace of any problem with the prompt's operand lengths (the trace of the
all-nines problem of that shape, where every column carries)::

    >>> think_budget("658+189=", "shape"), think_budget("100+100=", "shape"), think_budget("3+5=", "shape")
    (24, 24, 0)
    >>> think_budget("658+189=", "8")
    8

(The human trace's own length, the ``"trace"`` budget of earlier versions, is retired: for two operands of
known lengths it tells the number of carries, and with it much of the answer.)
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from mathllm.data import format_example
from mathllm.generate import Generation, generate
from mathllm.text import operand_lengths, parse_prompt, split_text
from mathllm.tokenizer import DIGIT_IDS, END_ID, EQUALS_ID, LATENT_IDS, PLUS_ID, SPACE_ID, TOKENIZER

THINK_ALPHABETS = {
    "digits": DIGIT_IDS + [PLUS_ID, EQUALS_ID, SPACE_ID],  # the symbols of human traces
    "latent": list(LATENT_IDS),  # <z0>..<z15>: mean nothing to a human
    "both": DIGIT_IDS + [PLUS_ID, EQUALS_ID, SPACE_ID] + list(LATENT_IDS),
}
RETIRED_BUDGETS = {"trace": "is retired: the human trace's length tells the model how many carries the problem "
                            "has (and so part of its answer); use 'shape' (the longest trace of the prompt's shape) "
                            "or a fixed number"}


def check_budget(think_tokens: str) -> str:
    """``think_tokens`` as text; a ValueError unless it is a non-negative integer or ``"shape"``."""
    value = str(think_tokens)
    if value in RETIRED_BUDGETS:
        raise ValueError(f"--think-tokens {value} {RETIRED_BUDGETS[value]}")
    if value != "shape" and not (value.isdigit() and int(value) >= 0):
        raise ValueError(f"--think-tokens must be a non-negative integer or 'shape', got {think_tokens!r}")
    return value


def check_alphabet(name: str) -> str:
    if name not in THINK_ALPHABETS:
        raise ValueError(f"unknown --think-alphabet {name!r}; choose one of {', '.join(THINK_ALPHABETS)}")
    return name


@functools.lru_cache(maxsize=4096)
def shape_budget(lengths: tuple[int, ...]) -> int:
    """The longest human trace (in tokens) of a problem whose operands have these lengths."""
    text = format_example([10**n - 1 for n in lengths], "cot")
    trace = split_text(text).think
    return len(TOKENIZER.tokenize(trace)) if trace else 0


def think_budget(prompt: str, think_tokens: str) -> int:
    """K for a prompt such as ``"658+189="``: a fixed number, or the shape budget of its operand lengths."""
    if think_tokens == "shape":
        return shape_budget(operand_lengths(prompt))
    return int(think_tokens)


def generate_with_forced_thoughts(model, prompts: Sequence[str], thoughts, max_new_tokens: int, batch_size: int,
                                  return_probs: bool, temperature: float, generator: Optional[torch.Generator]):
    """Complete each prompt up to its ``=`` (plain generation, for partial input), append the forced text
    ``thoughts(full_prompts)`` gives for the complete ones, then let the model write the answer. The forced tokens
    do not count against ``max_new_tokens``. With ``return_probs`` each token's probability is read from one
    teacher-forced pass over the whole completion."""
    prompts = list(prompts)
    kwargs = dict(temperature=temperature, batch_size=batch_size, generator=generator)
    heads = [""] * len(prompts)  # what plain generation added to a partial prompt, up to its '='
    partial = [i for i, p in enumerate(prompts) if not p.endswith("=")]
    if partial:
        done = generate(model, [prompts[i] for i in partial], max_new_tokens=max_new_tokens, **kwargs)
        for i, text in zip(partial, done):
            heads[i] = text[: text.index("=") + 1] if "=" in text else text
    full = [p + h for p, h in zip(prompts, heads)]
    ready = [i for i, p in enumerate(full) if p.endswith("=") and _parses(p)]
    forced = [""] * len(prompts)
    for i, text in zip(ready, thoughts([full[i] for i in ready])):
        forced[i] = text
    room = [max(0, min(max_new_tokens, model.cfg.n_ctx - len(TOKENIZER.encode(p + f)))) for p, f in zip(full, forced)]
    answers = [""] * len(prompts)
    for r in sorted(set(room)):
        rows = [i for i in ready if room[i] == r]
        if rows and r > 0:
            for i, text in zip(rows, generate(model, [full[i] + forced[i] for i in rows], max_new_tokens=r, **kwargs)):
                answers[i] = text
    completions = [h + f + a for h, f, a in zip(heads, forced, answers)]
    if not return_probs:
        return completions
    probs = token_probabilities(model, prompts, completions, batch_size)
    out = []
    for p, c, pr in zip(prompts, completions, probs):
        ids = TOKENIZER.encode(c)
        out.append(Generation(prompt=p, text=c, token_ids=ids, probs=pr, finished=bool(ids) and ids[-1] == END_ID))
    return out


def _parses(prompt: str) -> bool:
    try:
        parse_prompt(prompt)
    except ValueError:
        return False
    return True


@torch.inference_mode()
def token_probabilities(model, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 128) -> list[list[float]]:
    """Per completion token, the probability the model gives it after the prompt and the tokens before it."""
    device = model.W_E.device
    seqs = [TOKENIZER.encode(p + c) for p, c in zip(prompts, completions)]
    starts = [len(TOKENIZER.encode(p)) for p in prompts]
    out: list[list[float]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_length.setdefault(len(s), []).append(i)
    for length, rows in sorted(by_length.items()):
        if length < 2:
            continue
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids = torch.tensor([seqs[i] for i in chunk], dtype=torch.long, device=device)
            probs = torch.softmax(model(ids[:, :-1]).float(), -1).gather(2, ids[:, 1:, None]).squeeze(2).cpu()
            for row, i in enumerate(chunk):
                out[i] = probs[row, starts[i] - 1 :].tolist()
    return out


__all__ = ["THINK_ALPHABETS", "check_alphabet", "check_budget", "generate_with_forced_thoughts", "shape_budget",
           "think_budget", "token_probabilities"]
