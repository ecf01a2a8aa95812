"""Talk to a model: parse what a person typed, let the model complete it, check it against the truth.

Shared by ``scripts/interactive.py`` (terminal) and ``mathllm.widgets`` (notebook playground)::

    >>> parse_expression("658+189").prompt, parse_expression("658-189=").operation, parse_expression("12*34").prompt
    ('658+189=', 'sub', '12*34=')
    >>> parse_expression("7+").partial        # the model writes the rest: 7+3=10<end>
    True

What a model cannot do is an ``ExpressionError`` with a message saying why: ``3-7`` (a subtraction needs
``a >= b``), ``12+3*4`` (one operation at a time), ``12*34`` for a model trained on addition only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from mathllm.arithmetic import BY_SYMBOL, OPERATIONS, operation as get_operation
from mathllm.checkpoints import TrainedModel
from mathllm.evaluate import model_and_mode
from mathllm.text import parse_completion
from mathllm.tokenizer import END_ID, TOKENIZER
from mathllm.training_mode import TrainingMode
from mathllm.utils import REPO_ROOT


class ExpressionError(ValueError):
    """What a person typed is not something the model can complete; the message says why."""


@dataclass
class ParsedExpression:
    prompt: str  # what the model is given, e.g. "658+189=" or, for a partial input, "7+"
    operands: list[int] | None  # None for a partial input (the model writes the rest)
    partial: bool  # True when the person typed only the start of an expression
    warnings: list[str] = field(default_factory=list)
    operation: str | None = None  # "add" | "sub" | "mul"; None for a partial input with no operator yet ("7")


@dataclass
class PlaygroundResult:
    prompt: str  # "658+189="
    completion: str  # what the model generated after the prompt: "<think>8+9=17 ...</think>847<end>"
    full_text: str  # prompt + completion
    think_steps: list[str]  # ["8+9=17", "5+8+1=14", "6+1+1=8"]
    model_answer: int | None  # 847, or None when the model wrote no readable answer
    operands: list[int] | None  # the operands (for a partial input: as the model completed them)
    true_answer: int | None  # the true result of the operation
    correct: bool | None  # model_answer == true_answer (None when there is nothing to compare)
    tokens: list[str]  # generated tokens, one label each
    token_probs: list[float]  # probability the model gave to each generated token
    warnings: list[str] = field(default_factory=list)
    mode: str = "teacher"  # the name of the training mode (mathllm.modes)
    mode_note: Optional[str] = None  # what to know about that mode when reading the output (None: teacher forcing)
    operation: str | None = None  # "add" | "sub" | "mul" (None when a partial input was not completed into one)


_ALLOWED = set("0123456789+-*= ")
_HINTS = {"/": " (division is not supported)", "÷": " (division is not supported)",
          "x": " (write * for multiplication)", "×": " (write * for multiplication)", "−": " (write - for minus)"}


def _names(operations) -> str:
    return " and ".join(OPERATIONS[name].title for name in operations)


def parse_expression(text: str, max_digits: int | None = None, max_operands: int | None = None,
                     operations: tuple[str, ...] | None = None) -> ParsedExpression:
    """Check a typed expression and turn it into a prompt; raise ExpressionError naming the problem.

    Accepts ``658+189``, ``658-189=``, ``12*34``, ``1+2+3`` and partial inputs such as ``7+``, ``7*`` or ``7``.
    ``operations``: the operations the model was trained on (None: not known, any is tried).
    """
    raw = text
    text = text.strip().replace(" ", "")
    if not text:
        raise ExpressionError("type a problem such as 658+189, 658-189 or 12*34 (or the start of one, such as 7+)")
    for pos, ch in enumerate(raw):
        if ch not in _ALLOWED:
            raise ExpressionError(f"unexpected character {ch!r} at position {pos}{_HINTS.get(ch, '')}; use digits "
                                  "and one of + - *, e.g. 658+189")
    if text.count("=") > 1 or ("=" in text and not text.endswith("=")):
        raise ExpressionError("'=' may only appear once, at the end (e.g. 658+189=)")
    body = text.rstrip("=")
    symbols = [ch for ch in "+-*" if ch in body]
    if len(symbols) > 1:
        raise ExpressionError(f"mixed operators ({' and '.join(repr(s) for s in symbols)}): the model does one "
                              "operation at a time, e.g. 658+189 or 12*34")
    symbol = symbols[0] if symbols else None
    op = BY_SYMBOL[symbol] if symbol else None
    if symbol and body.startswith(symbol):
        negative = " (negative numbers are not supported)" if symbol == "-" else ""
        raise ExpressionError(f"the expression starts with '{symbol}': an operand is missing before it{negative}")
    if symbol and symbol * 2 in body:
        pos = body.index(symbol * 2) + 1
        raise ExpressionError(f"empty operand at position {pos}: two '{symbol}' in a row")
    if op is not None and operations is not None and op.name not in operations:
        raise ExpressionError(f"this model was trained on {_names(operations)} only; it does not do {op.title} "
                              f"('{symbol}')")
    partial = symbol is None or body.endswith(symbol)
    if text.endswith("=") and partial:
        what = op.title if op else "a problem"
        raise ExpressionError(f"{what} needs at least two operands before '=' (e.g. 12{symbol or '+'}34=)")
    parts = [p for p in body.split(symbol)] if symbol else [body]
    parts = [p for p in parts if p]
    n_ops = len(parts) + (1 if partial and symbol else 0)
    if op is not None and op.max_operands is not None and n_ops > op.max_operands:
        raise ExpressionError(f"{op.title} takes exactly two operands (e.g. 658{symbol}189); "
                              f"got {n_ops}")
    if op is not None and op.name == "sub" and not partial and int(parts[0]) < int(parts[1]):
        raise ExpressionError(f"{parts[0]}-{parts[1]} would be negative: the model subtracts a smaller number from "
                              f"a larger one (a >= b), e.g. {parts[1]}-{parts[0]}")
    warnings = []
    if max_digits is not None and any(len(p) > max_digits for p in parts):
        warnings.append(f"the model was trained on operands of at most {max_digits} digits; expect mistakes")
    if max_operands is not None and (op is None or op.name == "add") and n_ops > max_operands:
        warnings.append(f"the model was trained on at most {max_operands} operands; expect mistakes")
    if partial:
        return ParsedExpression(prompt=body, operands=None, partial=True, warnings=warnings,
                                operation=op.name if op else None)
    return ParsedExpression(prompt=body + "=", operands=[int(p) for p in parts], partial=False, warnings=warnings,
                            operation=op.name)


def training_limits(model) -> tuple[int | None, int | None]:
    """(max_digits, max_operands) of the data a ``TrainedModel`` was trained on, when its run recorded them."""
    if not isinstance(model, TrainedModel):
        return None, None
    args = model.data_arguments
    return args.get("max_digits"), args.get("max_operands")


def training_operations(model) -> tuple[str, ...] | None:
    """The operations a ``TrainedModel`` was trained on (``("mul",)``), or None when its run recorded no data."""
    if not isinstance(model, TrainedModel) or not model.data_arguments:
        return None
    return tuple(part for part in str(model.data_arguments.get("operation", "add")).split(",") if part)


def describe_checkpoint(model) -> str:
    """One line on what a ``TrainedModel`` was trained on: ``"multiplication, operands of up to 3 digits, cot
    format, teacher mode"``."""
    if not isinstance(model, TrainedModel):
        return "a model without a training record"
    operations, (max_digits, max_operands) = training_operations(model), training_limits(model)
    parts = [_names(operations) if operations else "unknown data"]
    if max_digits:
        parts.append(f"operands of up to {max_digits} digits")
    if max_operands and max_operands > 2 and operations and "add" in operations:
        parts.append(f"up to {max_operands} operands")
    if model.data_arguments.get("fmt"):
        parts.append(f"{model.data_arguments['fmt']} format")
    parts.append(f"{model.mode.name} mode")
    return ", ".join(parts)


def available_checkpoints(root: str | Path | None = None) -> dict[str, Path]:
    """The trained models under ``checkpoints/`` (directories holding a ``model.safetensors`` and the run's
    ``training_config.json``), by name, sorted: on a fresh clone the shipped ones (``add3_cot``, ``mul3_cot``, ...).
    """
    root = Path(root) if root is not None else REPO_ROOT / "checkpoints"
    if not root.is_dir():
        return {}
    return {path.name: path for path in sorted(root.iterdir())
            if (path / "model.safetensors").is_file() and (path / "training_config.json").is_file()}


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


_OPERANDS_RE = re.compile(r"^(\d+(?:[-+*]\d+)+)=")


def run_expression(model, text: str, temperature: float = 0.0, max_new_tokens: int | None = None,
                   seed: int | None = None, mode: Optional[TrainingMode] = None) -> PlaygroundResult:
    """Parse ``text``, let the model complete it, and compare with the true result.

    ``model`` is a ``TrainedModel`` (``mathllm.checkpoints.load``: its mode, training limits and operations are
    used) or a bare model (teacher forcing unless ``mode`` is given)::

        run_expression(load("checkpoints/add3_cot"), "658+189").full_text
        # '658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>'
    """
    max_digits, max_operands = training_limits(model)
    operations = training_operations(model)
    reversed_answer = isinstance(model, TrainedModel) and model.data_arguments.get("fmt") == "reversed"
    model, mode = model_and_mode(model, mode)
    parsed = parse_expression(text, max_digits=max_digits, max_operands=max_operands, operations=operations)
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

    operands, op_name = parsed.operands, parsed.operation
    answer_part = completion
    if parsed.partial:
        m = _OPERANDS_RE.match(full_text)
        symbols = {ch for ch in m.group(1) if ch in "+-*"} if m else set()
        if m and len(symbols) == 1:
            op = get_operation(symbols.pop())
            written = [int(p) for p in re.split(r"[-+*]", m.group(1))]
            answer_part = full_text[m.end():]
            try:
                operands, op_name = op.check(written), op.name
            except ValueError as err:
                warnings.append(f"the model wrote {m.group(1)}, which it cannot be checked on: {err}")
        else:
            warnings.append("the model did not complete the expression into operands followed by '='")
            answer_part = ""
    think, answer = parse_completion(answer_part)
    model_answer = None
    if answer is not None and answer.isdigit():
        model_answer = int(answer[::-1]) if reversed_answer else int(answer)
    true_answer = OPERATIONS[op_name].answer(operands) if operands and op_name else None
    correct = None if true_answer is None else model_answer == true_answer
    return PlaygroundResult(
        prompt=parsed.prompt, completion=completion, full_text=full_text,
        think_steps=think.split() if think else [], model_answer=model_answer, operands=operands,
        true_answer=true_answer, correct=correct, tokens=TOKENIZER.str_tokens(ids),
        token_probs=list(probs), warnings=warnings, mode=mode.name, mode_note=mode.note, operation=op_name,
    )
