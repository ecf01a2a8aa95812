"""Activation patching on clean/corrupted pairs of problems, with TransformerLens's own patching functions.

A pair is two problems that differ in one operand digit and line up token by token. Both are fed to the model
teacher-forced up to the position where they must diverge, and the metric is the logit difference there
between the clean problem's next token and the corrupted one's. Patching copies one activation (a layer's
residual stream at one position, one head's output, ...) from the clean run into the corrupted run; the
*normalised* metric is 0 when that changes nothing and 1 when it restores the clean logit difference.

Two kinds of pair:

* ``digit_change_pairs``: operand ``b``'s digit in one column changes but no carry does (``658+189`` ->
  ``658+159``), so the whole trace lines up; the metric is read where the model writes that column's answer
  digit (``ans1``: 4 vs 1). Which positions carry the digit there: the prompt, the trace, or both?
* ``carry_flip_pairs``: a digit changes so that the column's carry flips (``658+189`` -> ``658+121``); the
  traces stop lining up after that column's step, so both sequences end at that step's ``=``, where the model
  writes the column total's first digit (``17`` vs ``9``: a ``1`` means a carry). Where is the carry decided?

    pairs = digit_change_pairs(problems, column=1)
    result = patch_residual(model, pairs)        # transformer_lens.patching.get_act_patch_resid_pre
    result.values                                # [layer, pos], normalised
    manual_patch(model, pairs, "blocks.2.hook_resid_pre", pos)   # one cell by hand, with run_with_hooks
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from mathllm.arithmetic import addition_columns, digit
from mathllm.data import make_example
from mathllm.interp.positions import (LETTERS, axis_labels, position_kinds, position_of,
                                      template_of)
from mathllm.tokenizer import TOKENIZER


@dataclass
class PatchingPairs:
    """Clean and corrupted token sequences of equal length; the metric reads the logits at the last position."""

    clean_texts: list[str]
    corrupted_texts: list[str]
    clean_tokens: torch.Tensor  # [batch, pos]
    corrupted_tokens: torch.Tensor  # [batch, pos]
    clean_target: torch.Tensor  # [batch] the token the clean problem needs next
    corrupted_target: torch.Tensor  # [batch] the token the corrupted problem needs next
    kinds: list[str]  # position kinds, the same for every row
    description: str = ""

    def __len__(self) -> int:
        return len(self.clean_texts)

    @property
    def labels(self) -> list[str]:
        """Axis labels from the first pair (its clean tokens and the kinds)."""
        return axis_labels(self.clean_tokens[0].tolist(), self.kinds)

    def differing_positions(self) -> list[int]:
        """Positions where some clean and corrupted tokens differ."""
        return (self.clean_tokens != self.corrupted_tokens).any(0).nonzero().flatten().tolist()


def _pairs(clean: list[str], corrupted: list[str], clean_next: list[str], corrupted_next: list[str],
           kinds: list[str] | None, description: str) -> PatchingPairs:
    if not clean or kinds is None:
        raise ValueError("no clean/corrupted pairs could be made from these problems")
    clean_ids = torch.tensor([TOKENIZER.encode(t) for t in clean])
    corrupted_ids = torch.tensor([TOKENIZER.encode(t) for t in corrupted])
    return PatchingPairs(clean, corrupted, clean_ids, corrupted_ids,
                         torch.tensor([TOKENIZER.encode(t)[0] for t in clean_next]),
                         torch.tensor([TOKENIZER.encode(t)[0] for t in corrupted_next]), kinds, description)


def _with_digit(operands: list[int], operand: int, column: int, new_digit: int) -> list[int]:
    out = list(operands)
    x = out[operand]
    out[operand] = x + (new_digit - digit(x, column)) * 10**column
    return out


def _prefix_through(text: str, kind: str) -> tuple[str, str, list[str]]:
    """``(text up to and including the token of kind, the next token, the kinds of that prefix)``; the kinds
    are those of the whole text (a cut answer ``84`` is still ``ans2 ans1``, not ``ans1 ans0``)."""
    tokens = TOKENIZER.str_tokens(text)
    kinds = position_kinds(tokens)
    i = position_of(kinds, kind)
    return "".join(tokens[: i + 1]), tokens[i + 1], kinds[: i + 1]


def digit_change_pairs(problems: Sequence[Mapping[str, Any]], column: int = 1, operand: int = 1,
                       seed: int = 0) -> PatchingPairs:
    """For each problem, a copy whose ``operand``'s digit in ``column`` differs but whose text lines up with it
    token by token (no carry changes, same lengths): ``658+189`` -> ``658+159`` for column 1 of ``b``.

    Both texts end just before answer digit ``column``; the metric compares the two answer digits there. All
    problems must share one template (``same_template_problems``). A problem with no such copy is skipped.
    """
    rng = np.random.default_rng(seed)
    clean, corrupted, clean_next, corrupted_next = [], [], [], []
    template = kinds = None
    for ex in problems:
        ops = list(ex["operands"])
        if template is None:
            template = template_of(ops)
        elif template_of(ops) != template:
            raise ValueError(f"{ex['text']!r} does not line up with the first problem; draw problems with "
                             "same_template_problems")
        for other in _other_digits(ops, operand, column, rng):
            new = _with_digit(ops, operand, column, other)
            if template_of(new) == template:
                text_c, next_c, kinds = _prefix_through(make_example(ops)["text"],
                                                        _before_answer_digit(template, column))
                text_x, next_x, _ = _prefix_through(make_example(new)["text"], _before_answer_digit(template, column))
                if next_c != next_x:
                    clean.append(text_c), corrupted.append(text_x)
                    clean_next.append(next_c), corrupted_next.append(next_x)
                    break
    return _pairs(clean, corrupted, clean_next, corrupted_next, kinds,
                  f"operand {LETTERS[operand]}'s digit in column {column} changes, no carry does; metric at "
                  f"the position that writes answer digit {column}")


def _other_digits(ops: Sequence[int], operand: int, column: int, rng: np.random.Generator) -> list[int]:
    """The digits ``operand`` could have in ``column`` instead of its own, shuffled (no leading zero)."""
    width = len(str(ops[operand]))
    low = 1 if column == width - 1 and width > 1 else 0
    candidates = [d for d in range(low, 10) if d != digit(ops[operand], column)]
    rng.shuffle(candidates)
    return candidates


def _before_answer_digit(template: Sequence[str], column: int) -> str:
    i = position_of(template, f"ans{column}")
    return template[i - 1]


def carry_flip_pairs(problems: Sequence[Mapping[str, Any]], column: int = 0, operand: int = 1,
                     seed: int = 0) -> PatchingPairs:
    """For each problem, a copy whose ``operand``'s digit in ``column`` differs so that the carry *out of*
    that column flips (``658+189`` -> ``658+121``: 8+9=17 carries, 8+1=9 does not). The texts end at the
    ``=`` of step ``column``, where the model writes the column total's first digit (``1`` vs ``9``).

    All problems must agree on the carries of the columns before ``column``, so that the prefixes line up;
    the later columns may differ. Pairs whose first digits coincide (a total of 1) are skipped.
    """
    rng = np.random.default_rng(seed)
    clean, corrupted, clean_next, corrupted_next = [], [], [], []
    end_kind = f"s{column}.="
    kinds = None
    for ex in problems:
        ops = list(ex["operands"])
        text = make_example(ops)["text"]
        text_c, next_c, prefix_kinds = _prefix_through(text, end_kind)
        if kinds is None:
            kinds = prefix_kinds
        elif prefix_kinds != kinds:
            raise ValueError(f"{text!r} does not line up with the first problem up to {end_kind}")
        carry = addition_columns(ops)[column].carry_out
        for other in _other_digits(ops, operand, column, rng):
            new = _with_digit(ops, operand, column, other)
            if addition_columns(new)[column].carry_out == carry:
                continue
            text_x, next_x, corrupted_kinds = _prefix_through(make_example(new)["text"], end_kind)
            if corrupted_kinds == kinds and next_x != next_c:
                clean.append(text_c), corrupted.append(text_x)
                clean_next.append(next_c), corrupted_next.append(next_x)
                break
    return _pairs(clean, corrupted, clean_next, corrupted_next, kinds,
                  f"operand {LETTERS[operand]}'s digit in column {column} changes so that the carry out of "
                  f"column {column} flips; metric at step {column}'s '=' (the total's first digit)")


# ----------------------------------------------------------------------------------------------
# Metric
# ----------------------------------------------------------------------------------------------

def logit_diff(logits: torch.Tensor, pairs: PatchingPairs) -> torch.Tensor:
    """``[batch]``: logit of the clean next token minus that of the corrupted one, at the last position."""
    last = logits[:, -1]
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, pairs.clean_target.to(last.device)] - last[rows, pairs.corrupted_target.to(last.device)]


@dataclass
class PatchingResult:
    """Normalised patching effects (0: as corrupted, 1: as clean) and the numbers behind them."""

    values: torch.Tensor  # e.g. [layer, pos] or [layer, head]
    axis_names: list[str]
    pairs: PatchingPairs
    clean_logit_diff: float  # mean over pairs, unpatched clean run
    corrupted_logit_diff: float  # mean over pairs, unpatched corrupted run
    activation: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 5) -> list[tuple[tuple[int, ...], float]]:
        """The ``k`` largest cells: ``[((layer, pos), value)]``."""
        flat = self.values.flatten()
        order = torch.argsort(flat, descending=True)[:k]
        return [(tuple(int(i) for i in np.unravel_index(int(j), tuple(self.values.shape))), float(flat[j]))
                for j in order]


def _baselines(model, pairs: PatchingPairs):
    device = model.W_E.device
    with torch.inference_mode():
        clean_logits, clean_cache = model.run_with_cache(pairs.clean_tokens.to(device))
        corrupted_logits = model(pairs.corrupted_tokens.to(device))
    clean = float(logit_diff(clean_logits, pairs).mean())
    corrupted = float(logit_diff(corrupted_logits, pairs).mean())
    if abs(clean - corrupted) < 1e-6:
        raise ValueError("the clean and corrupted runs give the same logit difference: nothing to restore")
    return clean_cache, clean, corrupted


def normalised_metric(pairs: PatchingPairs, clean: float, corrupted: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``logits -> (mean logit diff - corrupted) / (clean - corrupted)``: 0 = corrupted, 1 = clean."""
    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logit_diff(logits, pairs).mean() - corrupted) / (clean - corrupted)
    return metric


@contextlib.contextmanager
def _quiet_progress():
    """TransformerLens's sweeps draw a tqdm bar (a widget in notebooks); keep them silent."""
    import transformer_lens.patching as tl_patching

    original = tl_patching.tqdm
    tl_patching.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        tl_patching.tqdm = original


def _require_eval(model) -> None:
    if model.training:
        raise RuntimeError("call model.eval() before patching (dropout would make every patch random); "
                           "transformer_lens.patching refuses a model in training mode too")


def _sweep(model, pairs: PatchingPairs, fn, activation: str, axis_names: list[str]) -> PatchingResult:
    _require_eval(model)
    clean_cache, clean, corrupted = _baselines(model, pairs)
    metric = normalised_metric(pairs, clean, corrupted)
    with _quiet_progress(), torch.inference_mode():
        values = fn(model, pairs.corrupted_tokens.to(model.W_E.device), clean_cache, metric)
    return PatchingResult(values.detach().cpu(), axis_names, pairs, clean, corrupted, activation)


def patch_residual(model, pairs: PatchingPairs) -> PatchingResult:
    """``get_act_patch_resid_pre``: the residual stream entering each block, at each position: ``[layer, pos]``."""
    from transformer_lens.patching import get_act_patch_resid_pre

    return _sweep(model, pairs, get_act_patch_resid_pre, "resid_pre", ["layer", "pos"])


def patch_blocks(model, pairs: PatchingPairs) -> PatchingResult:
    """``get_act_patch_block_every``: residual stream, attention output and MLP output of each block at each
    position: ``[3, layer, pos]`` (``resid_pre``, ``attn_out``, ``mlp_out``)."""
    from transformer_lens.patching import get_act_patch_block_every

    return _sweep(model, pairs, get_act_patch_block_every, "block_every", ["component", "layer", "pos"])


def patch_heads(model, pairs: PatchingPairs) -> PatchingResult:
    """``get_act_patch_attn_head_out_all_pos``: each head's output (``hook_z``) at every position: ``[layer, head]``."""
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    return _sweep(model, pairs, get_act_patch_attn_head_out_all_pos, "z", ["layer", "head"])


def manual_patch(model, pairs: PatchingPairs, hook_name: str, position: int) -> float:
    """The normalised metric after copying ``hook_name`` at ``position`` from the clean run into the corrupted
    run, written by hand with ``run_with_hooks`` (an independent check of the sweeps above)."""
    _require_eval(model)
    device = model.W_E.device
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(pairs.clean_tokens.to(device), names_filter=[hook_name])
        clean_act = clean_cache[hook_name]
        clean = float(logit_diff(model(pairs.clean_tokens.to(device)), pairs).mean())
        corrupted = float(logit_diff(model(pairs.corrupted_tokens.to(device)), pairs).mean())

        def hook(activation, hook):
            activation = activation.clone()
            activation[:, position] = clean_act[:, position]
            return activation

        logits = model.run_with_hooks(pairs.corrupted_tokens.to(device), fwd_hooks=[(hook_name, hook)])
    return (float(logit_diff(logits, pairs).mean()) - corrupted) / (clean - corrupted)


def patching_hook_names(cfg) -> list[str]:
    """Every hook the sweeps above touch, named the way ``transformer_lens.patching`` names them."""
    from transformer_lens.utilities import get_act_name

    return [get_act_name(kind, layer) for layer in range(cfg.n_layers)
            for kind in ("resid_pre", "attn_out", "mlp_out", "z")]


__all__ = ["PatchingPairs", "digit_change_pairs", "carry_flip_pairs", "logit_diff", "normalised_metric",
           "PatchingResult", "patch_residual", "patch_blocks", "patch_heads", "manual_patch",
           "patching_hook_names"]
