"""The one parser of the project's texts: a line splits into prompt, think block and answer.

    >>> parts = split_text("658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>")
    >>> parts.prompt, parts.think, parts.answer
    ('658+189=', '8+9=17 5+8+1=14 6+1+1=8', '847<end>')
    >>> split_text("3+5=8<end>").think is None
    True
    >>> parse_completion("<think>2+4=6 1+3=4</think>46<end>")
    ('2+4=6 1+3=4', '46')
    >>> parse_prompt("12+34=")
    ('+', [12, 34])

``split_text`` is strict (data lines, which the project writes itself); ``parse_completion`` is lenient (a
model's output may be malformed: missing parts come back as None, never an exception).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

THINK, END_THINK, END = "<think>", "</think>", "<end>"
OPERATORS = "+-*"


@dataclass(frozen=True)
class Parts:
    """A line cut at its first ``=`` and its think block."""

    prompt: str  # "658+189=": what the model is given
    think: Optional[str]  # "8+9=17 5+8+1=14 6+1+1=8", or None when the line has no think block
    answer: str  # everything after the think block (or after "="): "847<end>"

    @property
    def completion(self) -> str:
        """What follows the prompt: ``<think>...</think>847<end>``."""
        return (f"{THINK}{self.think}{END_THINK}" if self.think is not None else "") + self.answer


def split_text(text: str) -> Parts:
    """Cut a line into prompt, think block and answer; a line without ``=`` or with an unclosed think block
    raises ValueError."""
    eq = text.find("=")
    if eq == -1:
        raise ValueError(f"no '=' in {text!r}")
    prompt, rest = text[: eq + 1], text[eq + 1 :]
    if rest.startswith(THINK):
        stop = rest.find(END_THINK)
        if stop == -1:
            raise ValueError(f"unclosed {THINK} in {text!r}")
        return Parts(prompt, rest[len(THINK) : stop], rest[stop + len(END_THINK) :])
    return Parts(prompt, None, rest)


def split_prompt(text: str) -> tuple[str, str]:
    """``"12+34=46<end>"`` -> ``("12+34=", "46<end>")``: the prompt and what follows it."""
    parts = split_text(text)
    return parts.prompt, parts.completion


_ANSWER = re.compile(r"(?:<pause>)*(-?\d+)<end>(?:<pad>)*")  # pause-mode answers follow their pauses


def parse_completion(text: str) -> tuple[Optional[str], Optional[str]]:
    """``(think, answer digits)`` of a model's completion (or of a whole line); None for a part that is missing
    or malformed: an unclosed ``<think>``, an answer that is not digits (with an optional ``-``) then ``<end>``.

    >>> parse_completion("<think>2+4=6 1+3")
    (None, None)
    >>> parse_completion("<think>2+4=6</think>4 6<end>")
    ('2+4=6', None)
    >>> parse_completion("3+5=8<end>")
    (None, '8')
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_completion expects a string, got {type(text).__name__}")
    think: Optional[str] = None
    start = text.find(THINK)
    if start != -1:
        stop = text.find(END_THINK, start)
        if stop == -1:
            return None, None
        think = text[start + len(THINK) : stop]
        if THINK in think:
            think = None
        rest = text[stop + len(END_THINK) :]
    elif END_THINK in text:
        rest = text[text.rfind(END_THINK) + len(END_THINK) :]
    elif "=" in text:
        rest = text[text.rfind("=") + 1 :]
    else:
        rest = text
    match = _ANSWER.fullmatch(rest)
    return think, (match.group(1) if match else None)


def parse_answer(completion: str, fmt: str = "cot") -> Optional[int]:
    """The integer answer of a completion, or None when it is malformed (``reversed``: digits units first).

    >>> parse_answer("<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"), parse_answer("64<end>", "reversed")
    (847, 46)
    """
    answer = parse_completion(completion)[1]
    if answer is None or not answer.lstrip("-").isdigit():
        return None
    return int(answer[::-1]) if fmt == "reversed" else int(answer)


def think_block(completion: str) -> Optional[str]:
    """What a completion writes between ``<think>`` and ``</think>`` (None when there is no closed block).

    >>> think_block("<think><z3><z1></think>46<end>")
    '<z3><z1>'
    """
    start, stop = completion.find(THINK), completion.find(END_THINK)
    if start == -1 or stop == -1 or stop < start:
        return None
    return completion[start + len(THINK) : stop]


def parse_prompt(prompt: str) -> tuple[str, list[int]]:
    """``"658+189="`` -> ``("+", [658, 189])``: the operator and the operands of a complete prompt.

    Raises ValueError when the prompt is not operands joined by one operator and ended by ``=``.
    """
    body = prompt[:-1] if prompt.endswith("=") else None
    ops = {ch for ch in (body or "") if ch in OPERATORS}
    if body is None or len(ops) != 1:
        raise ValueError(f"not a prompt like 12+34=: {prompt!r}")
    op = ops.pop()
    parts = body.split(op)
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a prompt like 12{op}34=: {prompt!r}")
    return op, [int(p) for p in parts]


def operand_lengths(prompt: str) -> tuple[int, ...]:
    """The shape of a prompt: its operands' lengths in order, ``operand_lengths("658+7=") == (3, 1)``."""
    return tuple(len(str(x)) for x in parse_prompt(prompt)[1])


__all__ = ["Parts", "operand_lengths", "parse_answer", "parse_completion", "parse_prompt", "split_prompt",
           "split_text", "think_block"]
