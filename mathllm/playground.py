"""Talk to a model: parse what a person typed, let the model complete it, check it against the truth.

Shared by ``scripts/interactive.py`` (terminal) and ``mathllm.widgets`` (notebook playground)::

    >>> parse_expression("658+189").prompt
    '658+189='
    >>> parse_expression("7+").partial        # the model writes the rest: 7+3=10<end>
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from mathllm.checkpoints import TrainedModel
from mathllm.evaluate import model_and_mode
from mathllm.text import parse_completion
from mathllm.tokenizer import END_ID, TOKENIZER
from mathllm.training_mode import TrainingMode


class ExpressionError(ValueError):
    """What a person typed is not something the model can complete; the message says why."""


@dataclass
class ParsedExpression:
    prompt: str  # what the model is given, e.g. "658+189=" or, for a partial input, "7+"
    operands: list[int] | None  # None for a partial input (the model writes the rest)
    partial: bool  # True when the person typed only the start of an expression
    warnings: list[str] = field(default_factory=list)


@dataclass
class PlaygroundResult:
    prompt: str  # "658+189="
    completion: str  # what the model generated after the prompt: "<think>8+9=17 ...</think>847<end>"
    full_text: str  # prompt + completion
    think_steps: list[str]  # ["8+9=17", "5+8+1=14", "6+1+1=8"]
    model_answer: int | None  # 847, or None when the model wrote no readable answer
    operands: list[int] | None  # the operands (for a partial input: as the model completed them)
    true_answer: int | None  # sum of the operands
    correct: bool | None  # model_answer == true_answer (None when there is nothing to compare)
    tokens: list[str]  # generated tokens, one label each
    token_probs: list[float]  # probability the model gave to each generated token
    warnings: list[str] = field(default_factory=list)
    mode: str = "teacher"  # the name of the training mode (mathllm.modes)
    mode_note: Optional[str] = None  # what to know about that mode when reading the output (None: teacher forcing)


_ALLOWED = set("0123456789+= ")


def parse_expression(text: str, max_digits: int | None = None, max_operands: int | None = None) -> ParsedExpression:
    """Check a typed expression and turn it into a prompt; raise ExpressionError naming the problem.

    Accepts ``658+189``, ``658+189=``, ``1+2+3`` and partial inputs such as ``7+`` or ``7``.
    """
    raw = text
    text = text.strip().replace(" ", "")
    if not text:
        raise ExpressionError("type an addition such as 658+189 (or the start of one, such as 7+)")
    for pos, ch in enumerate(raw):
        if ch not in _ALLOWED:
            hint = " (this model does addition only)" if ch in "-*/x×" else ""
            raise ExpressionError(f"unexpected character {ch!r} at position {pos}{hint}; use digits and '+', "
                                  "e.g. 658+189")
    if text.count("=") > 1 or ("=" in text and not text.endswith("=")):
        raise ExpressionError("'=' may only appear once, at the end (e.g. 658+189=)")
    body = text.rstrip("=")
    if body.startswith("+"):
        raise ExpressionError("the expression starts with '+': an operand is missing before it")
    if "++" in body:
        pos = body.index("++") + 1
        raise ExpressionError(f"empty operand at position {pos}: two '+' in a row")
    partial = body.endswith("+") or "+" not in body
    if text.endswith("=") and partial:
        raise ExpressionError("an addition needs at least two operands before '=' (e.g. 12+34=)")
    warnings = []
    parts = [p for p in body.split("+") if p]
    if max_digits is not None and any(len(p) > max_digits for p in parts):
        warnings.append(f"the model was trained on operands of at most {max_digits} digits; expect mistakes")
    n_ops = len(parts) + (1 if partial else 0)
    if max_operands is not None and n_ops > max_operands:
        warnings.append(f"the model was trained on at most {max_operands} operands; expect mistakes")
    if partial:
        return ParsedExpression(prompt=body, operands=None, partial=True, warnings=warnings)
    return ParsedExpression(prompt=body + "=", operands=[int(p) for p in parts], partial=False, warnings=warnings)


def training_limits(model) -> tuple[int | None, int | None]:
    """(max_digits, max_operands) of the data a ``TrainedModel`` was trained on, when its run recorded them."""
    if not isinstance(model, TrainedModel):
        return None, None
    args = model.data_arguments
    return args.get("max_digits"), args.get("max_operands")


@torch.inference_mode()
def sample_completion(model, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                      seed: int | None = None, mode: Optional[TrainingMode] = None) -> tuple[list[int], list[float]]:
    """Generate after ``prompt`` the way the model's mode is used; return the token ids and the probability of each."""
    model, mode = model_and_mode(model, mode)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.W_E.device).manual_seed(seed)
    (gen,) = mode.generate(model, [prompt], max_new_tokens=max_new_tokens, return_probs=True,
                           temperature=temperature, generator=generator)
    return gen.token_ids, gen.probs


_OPERANDS_RE = re.compile(r"^(\d+(?:\+\d+)+)=")


def run_expression(model, text: str, temperature: float = 0.0, max_new_tokens: int | None = None,
                   seed: int | None = None, mode: Optional[TrainingMode] = None) -> PlaygroundResult:
    """Parse ``text``, let the model complete it, and compare with the true sum.

    ``model`` is a ``TrainedModel`` (``mathllm.checkpoints.load``: its mode and training limits are used) or a bare
    model (teacher forcing unless ``mode`` is given)::

        run_expression(load("checkpoints/add3_cot"), "658+189").full_text
        # '658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>'
    """
    max_digits, max_operands = training_limits(model)
    model, mode = model_and_mode(model, mode)
    parsed = parse_expression(text, max_digits=max_digits, max_operands=max_operands)
    prompt_len = len(TOKENIZER.encode(parsed.prompt))
    room = model.cfg.n_ctx - prompt_len
    if room <= 0:
        raise ExpressionError(f"the expression is {prompt_len} tokens long; this model reads at most {model.cfg.n_ctx}")
    max_new = min(max_new_tokens or room, room)
    ids, probs = sample_completion(model, parsed.prompt, max_new, temperature, seed, mode)
    completion = TOKENIZER.decode(ids)
    full_text = parsed.prompt + completion
    warnings = list(parsed.warnings)
    if not ids or ids[-1] != END_ID:
        warnings.append(f"the model did not finish with <end> within {max_new} tokens")

    operands = parsed.operands
    answer_part = completion
    if parsed.partial:
        m = _OPERANDS_RE.match(full_text)
        if m:
            operands = [int(p) for p in m.group(1).split("+")]
            answer_part = full_text[m.end():]
        else:
            warnings.append("the model did not complete the expression into operands followed by '='")
            answer_part = ""
    think, answer = parse_completion(answer_part)
    model_answer = int(answer) if answer is not None and answer.isdigit() else None
    true_answer = sum(operands) if operands else None
    correct = None if true_answer is None else model_answer == true_answer
    return PlaygroundResult(
        prompt=parsed.prompt, completion=completion, full_text=full_text,
        think_steps=think.split() if think else [], model_answer=model_answer, operands=operands,
        true_answer=true_answer, correct=correct, tokens=TOKENIZER.str_tokens(ids),
        token_probs=list(probs), warnings=warnings, mode=mode.name, mode_note=mode.note,
    )
