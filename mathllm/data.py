"""Arithmetic problems with chain of thought: formats, balanced leakage-free generation, JSONL files.

Three text formats for the same problem (``658+189``)::

    cot       658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>
    plain     658+189=847<end>
    reversed  658+189=748<end>          (answer digits least significant first)

Three operations (``operation="add"``, ``"sub"``, ``"mul"``, or a comma list such as ``"add,sub"`` that mixes
them in equal shares); the traces are computed in ``mathllm.arithmetic``::

    658-189=<think>8-9=-1 5-8-1=-4 6-1-1=4</think>469<end>
    12*34=<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>408<end>

Each split is a JSON Lines file with one object per problem, for example::

    {"text": "12+34=<think>2+4=6 1+3=4</think>46<end>", "prompt": "12+34=", "operands": [12, 34], "answer": 46,
     "num_digits": 2, "num_operands": 2, "num_carries": 0, "format": "cot"}

(one line in the file). A subtraction line counts borrows instead of carries and names its operation,
``{"text": "7-3=4<end>", "prompt": "7-3=", "operands": [7, 3], "answer": 4, "num_digits": 1, "num_operands": 2,
"num_borrows": 0, "format": "cot", "operation": "sub"}``; a multiplication line counts the steps that carry
(``num_carries``) and says ``"operation": "mul"``; an addition line has no ``operation`` field, so addition files
are what they always were. ``generate_dataset`` makes the splits, ``write_dataset`` writes them with a
``meta.json``, ``load_split`` reads a split back and checks every line, ``load_problems`` reads a user's list of
problems (only ``prompt`` and ``answer`` needed) and renders it in a given format.

How problems are drawn (``generate_dataset``):

* A problem's *shape* is its operand lengths in order, e.g. ``(3, 1)`` for ``658+7``; its number of carries
  is the number of columns whose outgoing carry is not 0. A stratum is one (shape, number of carries) pair.
* Every stratum's number of distinct problems is counted exactly by dynamic programming over the columns.
* Quotas: the number of operands is uniform over 2..max_operands and each operand's length uniform over
  1..max_digits (so every shape of n operands gets an equal share); within a shape, every number of carries
  it allows gets an equal share (Lee et al. 2023, "Teaching Arithmetic to Small Transformers": balance the
  carries). A stratum with fewer problems than its share gives all it has and the rest goes to the shape's
  other carry counts, or to the other shapes ("where possible": only 100 problems have shape (1, 1)).
* Problems within a stratum are uniform: small shapes are enumerated, large ones are sampled digit column by
  digit column from the exact conditional distribution, with top-ups until the quota of distinct problems
  is met. Asking for more problems than exist gives all of them (logged, and ``"exhausted"`` in meta.json).
* The problems are shuffled and cut into train/val/test, so an operand tuple lives in exactly one split.
* Subtraction (``a >= b``) and multiplication take two operands. Their shapes (operand lengths) get equal
  shares, capped by how many distinct problems each has; within a shape problems are uniform (small shapes
  enumerated, large ones sampled with top-ups until the quota of distinct problems is met); borrows and carries
  are not balanced. A mix of operations gives each an equal share (capped the same way); a problem is its
  operation and its operands, and lives in one split.

Everything is vectorised with numpy (the JSON lines too), so a million problems take a few seconds
(``scripts/benchmark_data.py``).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import mathllm
from mathllm.arithmetic import (OPERATIONS, Operation, column_totals, count_borrows_array,
                                count_carries_array, count_multiplication_carries_array, multiplication_arrays,
                                num_digits_array, operation as get_operation, subtraction_columns_array)
from mathllm.text import parse_prompt
from mathllm.tokenizer import TOKENIZER, VOCAB
from mathllm.utils import atomic_write_chunks, code_version

logger = logging.getLogger(__name__)

FORMATS = ("cot", "plain", "reversed")
SPLITS = ("train", "val", "test")
FIELDS = ("text", "prompt", "operands", "answer", "num_digits", "num_operands", "num_carries", "format")
REQUIRED_FIELDS = ("text", "operands", "answer", "num_digits", "num_operands", "num_carries", "format")
MAX_DIGITS_LIMIT = 17  # operands and sums stay inside int64
MAX_OPERANDS_LIMIT = 10  # column carries stay one digit
MAX_PAIR_DIGITS_LIMIT = 9  # subtraction and multiplication: products stay inside int64
OPERATION_NAMES = tuple(OPERATIONS)  # ("add", "sub", "mul"), the canonical order of a mix
GENERATE_COMMAND = "python scripts/generate_data.py --num-examples 100000 --max-digits 2"


# ----------------------------------------------------------------------------------------------
# The formats, one problem at a time (the readable reference; the vectorised writer must agree)
# ----------------------------------------------------------------------------------------------

def parse_operations(operation: str | Sequence[str] | Operation = "add") -> tuple[str, ...]:
    """``"sub,add"`` -> ``("add", "sub")``: the operations of a (mixed) dataset, by name, in canonical order.

    >>> parse_operations("mul"), parse_operations("sub,add"), parse_operations(["*", "+"])
    (('mul',), ('add', 'sub'), ('add', 'mul'))
    """
    if isinstance(operation, Operation):
        return (operation.name,)
    parts = operation.split(",") if isinstance(operation, str) else list(operation)
    names = {get_operation(part.strip()).name for part in parts if str(part).strip()}
    if not names:
        raise ValueError(f"no operation given ({operation!r}); choose from {', '.join(OPERATION_NAMES)}, "
                         "or a comma list such as add,sub")
    return tuple(name for name in OPERATION_NAMES if name in names)


def format_prompt(operands: Sequence[int], operation: str | Operation = "add") -> str:
    """``format_prompt([658, 189]) == "658+189="``: the part of the text the model is given."""
    return get_operation(operation).prompt(operands)


def format_example(operands: Sequence[int], fmt: str = "cot", operation: str | Operation = "add") -> str:
    """The text of one problem.

    >>> format_example([99, 21])
    '99+21=<think>9+1=10 9+2+1=12</think>120<end>'
    >>> format_example([3, 5]), format_example([12, 34], "plain"), format_example([12, 34], "reversed")
    ('3+5=8<end>', '12+34=46<end>', '12+34=64<end>')
    >>> format_example([105, 99], operation="sub"), format_example([7, 3], operation="-")
    ('105-99=<think>5-9=-4 0-9-1=-10 1-0-1=0</think>6<end>', '7-3=4<end>')
    >>> format_example([7, 8], operation="mul"), format_example([12, 34], "reversed", "mul")
    ('7*8=<think>7*8=56</think>56<end>', '12*34=804<end>')

    cot: a two-operand problem of two one-digit numbers has no think block for ``+`` and ``-`` (its one step
    would only repeat the answer), but keeps its one step for ``*``; the final carry appears only in the answer.
    reversed: the answer's digits least significant first (``99+21=021<end>``).
    """
    op = get_operation(operation)
    operands = op.check(operands)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    prompt, answer = op.prompt(operands), str(op.answer(operands))
    if fmt == "plain":
        return f"{prompt}{answer}<end>"
    if fmt == "reversed":
        return f"{prompt}{answer[::-1]}<end>"
    if not op.has_think(operands):
        return f"{prompt}{answer}<end>"
    return f"{prompt}<think>{' '.join(op.steps(operands))}</think>{answer}<end>"


def make_example(operands: Sequence[int], fmt: str = "cot", operation: str | Operation = "add") -> dict[str, Any]:
    """The JSON object of one problem, fields in file order (see the module docstring).

    >>> make_example([7, 3], operation="sub")["num_borrows"], make_example([12, 34], operation="mul")["operation"]
    (0, 'mul')
    """
    op = get_operation(operation)
    operands = op.check(operands)
    example = {
        "text": format_example(operands, fmt, op),
        "prompt": op.prompt(operands),
        "operands": operands,
        "answer": op.answer(operands),
        "num_digits": max(len(str(x)) for x in operands),
        "num_operands": len(operands),
        op.count_field: op.count(operands),
        "format": fmt,
    }
    if op.name != "add":
        example["operation"] = op.name
    return example


def example_operation(example: Mapping[str, Any]) -> Operation:
    """The operation of a data line (``"operation"``, absent for addition)."""
    return get_operation(example.get("operation", "add"))


def count_tokens(text: str) -> int:
    """Number of tokens without running the tokenizer: ``count_tokens("3+5=8<end>") == 6``."""
    return len(_TAG.sub("#", text))


_TAG = re.compile(r"<[^<>]*>")
_VALID_TEXT = re.compile(
    "(?:" + "|".join(re.escape(t) for t in VOCAB if len(t) > 1)
    + "|[" + "".join(re.escape(t) for t in VOCAB if len(t) == 1) + "])*"
)


# ----------------------------------------------------------------------------------------------
# Counting and drawing problems of one shape with an exact number of carries
# ----------------------------------------------------------------------------------------------

def _max_carry(num_operands: int) -> int:
    carry = 0
    while (9 * num_operands + carry) // 10 != carry:
        carry = (9 * num_operands + carry) // 10
    return carry


def _digit_kind(length: int, column: int) -> str:
    """What an operand of ``length`` digits holds in ``column``: "absent" (0), "leading" (1-9) or "any"."""
    if column >= length:
        return "absent"
    return "leading" if column == length - 1 and length > 1 else "any"


_ALLOWED_DIGITS = {"absent": [0], "leading": list(range(1, 10)), "any": list(range(10))}
_ALLOWED_MASK = {kind: np.isin(np.arange(10), digits) for kind, digits in _ALLOWED_DIGITS.items()}


@dataclass
class _Column:
    """The digits one column may hold, e.g. ``("leading", "any", "absent")`` for column 1 of ``47+185+3``.

    ``ways_from[i][t]``: in how many ways operands i.. can have digits summing to t (``ways_from[0]`` counts
    each column sum), which lets us draw digits with a given sum uniformly, operand by operand.
    """

    kinds: tuple[str, ...]
    ways_from: list[np.ndarray]

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def build(kinds: tuple[str, ...]) -> "_Column":
        ways_from = [np.zeros(9 * len(kinds) + 1) for _ in range(len(kinds) + 1)]
        ways_from[-1][0] = 1
        for i in reversed(range(len(kinds))):
            for digit in _ALLOWED_DIGITS[kinds[i]]:
                ways_from[i][digit:] += ways_from[i + 1][: len(ways_from[i]) - digit]
        return _Column(kinds, ways_from)

    def draw_digits(self, sums: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Digits ``[rows, operands]`` drawn uniformly among those adding up to ``sums``."""
        remaining = sums.copy()
        digits = np.zeros((len(sums), len(self.kinds)), dtype=np.int64)
        candidates = np.arange(10)
        for i, kind in enumerate(self.kinds):
            if kind == "absent":
                continue
            if i == len(self.kinds) - 1 or all(k == "absent" for k in self.kinds[i + 1 :]):
                digits[:, i] = remaining  # the others are fixed, so this digit is too
                break
            rest = remaining[:, None] - candidates  # what the later operands must add up to
            weights = _ALLOWED_MASK[kind] * np.where(rest >= 0, self.ways_from[i + 1][np.clip(rest, 0, None)], 0)
            digits[:, i] = _draw_index(weights, rng)
            remaining -= digits[:, i]
        return digits


def _draw_index(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of ``weights`` with probability proportional to the weights."""
    cumulative = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cumulative[:, -1]
    return np.minimum((cumulative <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


@dataclass
class _Shape:
    """All problems whose operands have exactly these lengths, e.g. ``(3, 1)`` for ``658+7``.

    ``capacity[c]`` is the exact number of them with c carries. ``transitions[j][carry_in, carries_left, s]``
    counts the completions of columns j.. when column j's digits sum to s (the dynamic program).
    """

    lengths: tuple[int, ...]
    columns: list[_Column]
    transitions: list[np.ndarray]
    capacity: np.ndarray

    @property
    def size(self) -> int:
        return math.prod(10 if length == 1 else 9 * 10 ** (length - 1) for length in self.lengths)

    @classmethod
    @functools.lru_cache(maxsize=4096)
    def build(cls, lengths: tuple[int, ...]) -> "_Shape":
        n, width = len(lengths), max(lengths)
        max_carry, num_sums = _max_carry(n), 9 * n + 1
        columns = [_Column.build(tuple(_digit_kind(length, j) for length in lengths)) for j in range(width)]
        # ways[carry_in, carries]: number of ways to fill the columns not yet visited
        ways = np.zeros((max_carry + 1, width + 1))
        ways[:, 0] = 1
        totals = np.arange(num_sums)[None, :] + np.arange(max_carry + 1)[:, None]  # [carry_in, sum]
        carry_out, carries_here = totals // 10, (totals >= 10).astype(int)
        transitions = [np.empty(0)] * width
        for j in reversed(range(width)):
            shifted = np.concatenate([np.zeros((max_carry + 1, 1)), ways[:, :-1]], axis=1)  # one carry used here
            after = np.where(carries_here[..., None] == 1, shifted[carry_out], ways[carry_out])  # [cin, s, carries]
            weights = columns[j].ways_from[0][None, :, None] * after
            transitions[j] = weights.transpose(0, 2, 1).copy()  # [carry_in, carries, sum]
            ways = weights.sum(axis=1)
        capacity = np.zeros(MAX_DIGITS_LIMIT + 1)
        capacity[: width + 1] = np.rint(ways[0])
        return cls(lengths, columns, transitions, capacity)

    def draw(self, carries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One problem ``[len(carries), operands]`` per entry of ``carries``, uniform (with repeats) among the
        problems of this shape with that many carries: column by column, the sum of the column's digits is
        drawn in proportion to how many ways the remaining columns can still be completed."""
        count = len(carries)
        operands = np.zeros((count, len(self.lengths)), dtype=np.int64)
        carry_in = np.zeros(count, dtype=np.int64)
        carries_left = np.array(carries, dtype=np.int64)
        for j, column in enumerate(self.columns):
            sums = _draw_index(self.transitions[j][carry_in, carries_left], rng)
            operands += column.draw_digits(sums, rng) * 10**j
            carry_in = (sums + carry_in) // 10
            carries_left -= carry_in > 0
        return operands

    def enumerate(self) -> np.ndarray:
        """Every problem of this shape, ``[size, operands]``."""
        ranges = [np.arange(10) if length == 1 else np.arange(10 ** (length - 1), 10**length)
                  for length in self.lengths]
        grids = np.meshgrid(*ranges, indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)

    def keys(self, operands: np.ndarray) -> np.ndarray:
        """One integer per problem (the operands' digits side by side) to find repeats."""
        if sum(self.lengths) > 18:
            return np.unique(operands, axis=0, return_inverse=True)[1].ravel()
        keys = np.zeros(len(operands), dtype=np.int64)
        for i, length in enumerate(self.lengths):
            keys = keys * 10**length + operands[:, i]
        return keys


ENUMERATE_LIMIT = 1 << 21  # shapes with at most this many problems are enumerated instead of sampled


def _rank_within_label(labels: np.ndarray) -> np.ndarray:
    """For each entry, how many earlier entries have the same label: ``[2, 0, 2, 2] -> [0, 0, 1, 2]``."""
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - np.searchsorted(ordered, ordered, side="left")
    return rank


def _distinct_problems(shape: _Shape, quotas: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``quotas[c]`` distinct problems of ``shape`` with c carries, each set uniform among all such sets.

    Returns the operands ``[quotas.sum(), operands]`` and each problem's number of carries.
    """
    total = int(quotas.sum())
    if shape.size <= min(ENUMERATE_LIMIT, 16 * total):  # enumerating is about as cheap as drawing
        every = shape.enumerate()
        every_carries = count_carries_array(every)
        picked = []
        for carries in np.flatnonzero(quotas):
            pool = np.flatnonzero(every_carries == carries)
            if quotas[carries] < len(pool):
                pool = np.sort(rng.choice(pool, size=quotas[carries], replace=False))
            picked.append(pool)
        rows = np.concatenate(picked)
        return every[rows], every_carries[rows]
    # Draw with repeats, keep the first occurrences in draw order (a uniform subset), top up until enough.
    kept = np.zeros((0, len(shape.lengths)), dtype=np.int64)
    kept_carries = np.zeros(0, dtype=np.int64)
    to_draw = quotas + 8 * (quotas > 0)
    while True:
        wanted = np.repeat(np.arange(len(quotas)), to_draw)
        candidates = np.concatenate([kept, shape.draw(wanted, rng)])
        labels = np.concatenate([kept_carries, wanted])
        _, first = np.unique(shape.keys(candidates), return_index=True)
        first.sort()
        candidates, labels = candidates[first], labels[first]
        keep = _rank_within_label(labels) < quotas[labels]
        kept, kept_carries = candidates[keep], labels[keep]
        have = np.bincount(kept_carries, minlength=len(quotas))
        missing = quotas - have
        if not missing.any():
            return kept, kept_carries
        fresh = np.maximum(1.0 - have / np.maximum(shape.capacity[: len(quotas)], 1), 0.01)  # P(not a repeat)
        to_draw = np.where(missing > 0, (missing / fresh * 1.1).astype(np.int64) + 8, 0)


def _fill(total: float, weights: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Split ``total`` in proportion to ``weights`` without exceeding ``capacity``; overflow goes to the rest."""
    amounts = np.zeros_like(weights, dtype=float)
    for _ in range(len(weights.ravel()) + 1):
        room = capacity - amounts
        left = total - amounts.sum()
        open_ = (room > 1e-9) & (weights > 0)
        if left <= 1e-9 * max(total, 1) or not open_.any():
            break
        share = np.where(open_, weights, 0.0)
        amounts += np.minimum(room, left * share / share.sum()) * open_
    return amounts


def _fill_whole(total: int, weights: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """``_fill`` in whole numbers: floors, then one more for the largest remainders (ties: first position)."""
    plan = _fill(total, weights, capacity)
    whole = np.minimum(np.floor(plan + 1e-9), capacity)
    missing = int(round(total - whole.sum()))
    if missing > 0:
        remainder = np.where(whole < capacity, plan - whole, -1.0)
        whole[np.argsort(-remainder, kind="stable")[:missing]] += 1
    return whole.astype(np.int64)


def balanced_quotas(num_examples: int, shapes: Sequence[tuple[int, ...]], capacity: np.ndarray) -> np.ndarray:
    """Integer quotas ``[shapes, carries]`` for the strata, never above ``capacity`` (their distinct problems).

    Shares are equal at every level: each number of operands, then each shape (operand lengths) with that
    many operands, then each number of carries that the shape allows. A group with too few problems gives
    all it has and leaves the rest to its siblings (other carry counts of the shape, other shapes with as
    many operands, other operand counts). Quotas add up to ``min(num_examples, capacity.sum())``.

    >>> balanced_quotas(60, [(1, 1)], np.array([[55, 45]])).tolist()   # 55 problems without a carry, 45 with
    [[30, 30]]
    >>> balanced_quotas(100, [(1, 1)], np.array([[55, 45]])).tolist()
    [[55, 45]]
    """
    capacity = np.asarray(capacity, dtype=float)
    operand_counts = np.array([len(shape) for shape in shapes])
    counts = np.unique(operand_counts)
    total = int(min(num_examples, capacity.sum()))
    per_count = _fill_whole(total, np.ones(len(counts)),
                            np.array([capacity[operand_counts == n].sum() for n in counts]))
    quotas = np.zeros(capacity.shape, dtype=np.int64)
    for n, n_total in zip(counts, per_count):
        rows = np.flatnonzero(operand_counts == n)
        shape_totals = _fill_whole(n_total, np.ones(len(rows)), capacity[rows].sum(axis=1))
        for row, shape_total in zip(rows, shape_totals):
            quotas[row] = _fill_whole(shape_total, (capacity[row] > 0).astype(float), capacity[row])
    return quotas


def count_distinct_problems(max_digits: int, max_operands: int = 2) -> int:
    """How many operand tuples exist: ``count_distinct_problems(2) == 10_000`` (0..99 twice)."""
    return sum(10 ** (max_digits * n) for n in range(2, max_operands + 1))


# ----------------------------------------------------------------------------------------------
# Rendering many lines at once: a byte matrix [rows, width] whose 0 bytes are dropped at the end
# ----------------------------------------------------------------------------------------------

_DROP = 0  # filler byte: the parts of fixed-width fields that a row does not use
_TRIPLES = np.array([list(f"{i:03d}".encode()) for i in range(1000)], dtype=np.uint8)  # 7 -> "007"
_TRIPLES_UNPADDED = np.where(  # 7 -> "\0\07": leading zeros become filler
    (np.arange(1000)[:, None] < np.array([100, 10, 1])) & (np.array([100, 10, 1]) > 1), _DROP, _TRIPLES
).astype(np.uint8)


class _Lines:
    """Build N text lines side by side, one fixed-width field (a ``[rows, width]`` byte array) at a time."""

    def __init__(self, rows: int):
        self.rows = rows
        self.parts: list[np.ndarray] = []

    def text(self, text: str, where: np.ndarray | None = None) -> np.ndarray:
        """The same text on every row (or only where ``where`` is True)."""
        part = np.frombuffer(text.encode(), dtype=np.uint8)[None, :]
        if where is None:
            return self.add(np.broadcast_to(part, (self.rows, part.shape[1])))
        return self.add(part * where[:, None])  # _DROP is 0

    def number(self, values: np.ndarray, width: int, where: np.ndarray | None = None,
               reverse: bool = False) -> np.ndarray:
        """Decimal numbers in a field ``width`` wide (no leading zeros); ``reverse`` writes them backwards."""
        values = np.asarray(values, dtype=np.int64)
        if width == 1:
            digits = (values + ord("0")).astype(np.uint8)[:, None]
        elif width <= 3:  # one table lookup, no division
            digits = _TRIPLES_UNPADDED[values][:, 3 - width :]
        else:
            groups, rest = [], values  # three digits per lookup, least significant group first
            for _ in range(-(-width // 3)):
                rest, low = np.divmod(rest, 1000)
                groups.append(_TRIPLES[low])
            digits = np.concatenate(groups[::-1], axis=1)[:, -width:]
            digits[np.arange(width) < width - num_digits_array(values)[:, None]] = _DROP  # leading zeros
        if where is not None:
            digits = digits * where[:, None]  # _DROP is 0
        return self.add(digits[:, ::-1] if reverse else digits)

    def add(self, part: np.ndarray) -> np.ndarray:
        self.parts.append(part)
        return part

    def tobytes(self) -> bytes:
        """Each row's bytes (fillers dropped) followed by a newline."""
        matrix = np.concatenate(self.parts + [np.full((self.rows, 1), ord("\n"), dtype=np.uint8)], axis=1)
        return matrix.tobytes().translate(None, bytes([_DROP]))


def _render_text(lines: _Lines, operands: np.ndarray, num_operands: np.ndarray, fmt: str) -> list[np.ndarray]:
    """Vectorised ``format_example``: one text per row of ``operands`` ([rows, operands], absent ones 0).

    Returns the fields of the prompt (``"658"``, ``"+"``, ``"189"``, ``"="``) so that they can be reused.
    """
    present = [num_operands > i for i in range(operands.shape[1])]
    lengths = num_digits_array(operands.max(axis=1)) if len(operands) else np.zeros(0, dtype=np.int64)
    width = int(lengths.max(initial=1))
    prompt = []
    for i in range(operands.shape[1]):
        if i:
            prompt.append(lines.text("+", present[i]))
        prompt.append(lines.number(operands[:, i], width, present[i]))
    prompt.append(lines.text("="))
    if fmt == "cot":
        think = ~((num_operands == 2) & (lengths == 1))
        lines.text("<think>", think)
        totals, carries_in = column_totals(operands, width)
        for column in range(width):
            active = think & (column < lengths)
            if column:
                lines.text(" ", active)
            digits = operands // 10**column % 10
            for i in range(operands.shape[1]):
                if i:
                    lines.text("+", active & present[i])
                lines.number(digits[:, i], 1, active & present[i])
            with_carry = active & (carries_in[column] > 0)
            lines.text("+", with_carry)
            lines.number(carries_in[column], 1, with_carry)
            lines.text("=", active)
            lines.number(totals[column], 2, active)
        lines.text("</think>", think)
    answers = operands.sum(axis=1)
    lines.number(answers, int(num_digits_array(answers.max(initial=0))), reverse=(fmt == "reversed"))
    lines.text("<end>")
    return prompt


def render_texts(operands: np.ndarray, num_operands: np.ndarray | None = None, fmt: str = "cot",
                 operations: np.ndarray | None = None) -> list[str]:
    """Vectorised ``format_example`` over an operand array ``[rows, operands]`` (0 where a row has fewer);
    ``operations``: each row's ``OPERATION_CODES`` value (None: all additions)."""
    operands = np.asarray(operands, dtype=np.int64)
    if num_operands is None:
        num_operands = np.full(len(operands), operands.shape[1])
    if len(operands) == 0:
        return []
    pieces = []
    for op, rows in _by_operation(operations, len(operands)):
        lines = _Lines(len(rows))
        if op.name == "add":
            _render_text(lines, operands[rows], np.asarray(num_operands)[rows], fmt)
        else:
            _render_pair_text(lines, op, operands[rows, 0], operands[rows, 1], fmt)
        pieces.append((rows, lines.tobytes()))
    return _interleave(pieces, len(operands)).decode().split("\n")[:-1]


def _render_jsonl(operands: np.ndarray, num_operands: np.ndarray, num_carries: np.ndarray, fmt: str) -> bytes:
    """The JSON Lines of ``make_example`` for every row, byte for byte what ``json.dumps`` writes."""
    lines = _Lines(len(operands))
    lines.text('{"text": "')
    prompt = _render_text(lines, operands, num_operands, fmt)
    lines.text('", "prompt": "')
    for part in prompt:
        lines.add(part)
    lines.text('", "operands": [')
    for i, number in enumerate(prompt[0:-1:2]):  # the operand fields, without "+" and "="
        if i:
            lines.text(", ", num_operands > i)
        lines.add(number)
    answers = operands.sum(axis=1)
    lines.text('], "answer": ')
    lines.number(answers, int(num_digits_array(answers.max(initial=0))))
    lines.text(', "num_digits": ')
    lines.number(num_digits_array(operands.max(axis=1)), 2)
    lines.text(', "num_operands": ')
    lines.number(num_operands, 2)
    lines.text(', "num_carries": ')
    lines.number(num_carries, 2)
    lines.text(f', "format": "{fmt}"}}')
    return lines.tobytes()


def _render_pair_text(lines: _Lines, op: Operation, a: np.ndarray, b: np.ndarray, fmt: str) -> list[np.ndarray]:
    """Vectorised ``format_example`` for subtraction or multiplication: one text per row of ``a``, ``b``.

    Returns the fields of the prompt (``"658"``, ``"-"``, ``"189"``, ``"="``)."""
    len_a, len_b = num_digits_array(a), num_digits_array(b)
    width_a, width_b = int(len_a.max(initial=1)), int(len_b.max(initial=1))
    prompt = [lines.number(a, width_a), lines.text(op.symbol), lines.number(b, width_b), lines.text("=")]
    if fmt == "cot" and op.name == "sub":
        think = a >= 10
        lines.text("<think>", think)
        results, borrows_in = subtraction_columns_array(a, b, width_a)
        for column in range(width_a):
            active = think & (column < len_a)
            if column:
                lines.text(" ", active)
            lines.number(a // 10**column % 10, 1, active)
            lines.text("-", active)
            lines.number(b // 10**column % 10, 1, active)
            lines.text("-1", active & (borrows_in[column] > 0))
            lines.text("=", active)
            lines.text("-", active & (results[column] < 0))
            lines.number(np.abs(results[column]), 2, active)
        lines.text("</think>", think)
    elif fmt == "cot":
        lines.text("<think>")
        steps = multiplication_arrays(a, b, width_a, width_b)
        for j in range(width_b):
            b_j = b // 10**j % 10
            for i in range(width_a):
                active = (i < len_a) & (j < len_b)
                if i or j:
                    lines.text(" ", active)
                lines.number(a // 10**i % 10, 1, active)
                lines.text("*", active)
                lines.number(b_j, 1, active)
                if j:
                    lines.text("+", active)
                    lines.number(steps.sum_digits[j][i], 1, active)
                with_carry = active & (steps.carries_in[j][i] > 0)
                lines.text("+", with_carry)
                lines.number(steps.carries_in[j][i], 1, with_carry)
                lines.text("=", active)
                lines.number(steps.totals[j][i], 2, active)
            shown = j < len_b - 1  # the running sum after every row but the last
            lines.text(" ", shown)
            lines.number(steps.running[j], width_a + width_b, shown)
        lines.text("</think>")
    answers = _pair_answers(op, a, b)
    lines.number(answers, int(num_digits_array(answers.max(initial=0))), reverse=(fmt == "reversed"))
    lines.text("<end>")
    return prompt


def _pair_answers(op: Operation, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a - b if op.name == "sub" else a * b


def _pair_counts(op: Operation, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Borrows (subtraction) or carrying steps (multiplication) of every row."""
    return count_borrows_array(a, b) if op.name == "sub" else count_multiplication_carries_array(a, b)


def _render_pair_jsonl(op: Operation, a: np.ndarray, b: np.ndarray, counts: np.ndarray, fmt: str) -> bytes:
    """The JSON Lines of ``make_example`` for subtraction or multiplication rows, as ``json.dumps`` writes them."""
    lines = _Lines(len(a))
    lines.text('{"text": "')
    prompt = _render_pair_text(lines, op, a, b, fmt)
    lines.text('", "prompt": "')
    for part in prompt:
        lines.add(part)
    lines.text('", "operands": [')
    lines.add(prompt[0])
    lines.text(", ")
    lines.add(prompt[2])
    answers = _pair_answers(op, a, b)
    lines.text('], "answer": ')
    lines.number(answers, int(num_digits_array(answers.max(initial=0))))
    lines.text(', "num_digits": ')
    lines.number(np.maximum(num_digits_array(a), num_digits_array(b)), 2)
    lines.text(f', "num_operands": 2, "{op.count_field}": ')
    lines.number(counts, 2)
    lines.text(f', "format": "{fmt}", "operation": "{op.name}"}}')
    return lines.tobytes()


OPERATION_CODES = {name: code for code, name in enumerate(OPERATION_NAMES)}  # 0 = add, 1 = sub, 2 = mul


def _by_operation(operations: np.ndarray | None, rows: int) -> list[tuple[Operation, np.ndarray]]:
    """``[(operation, row indices)]`` for the operations present (``None``: every row is an addition)."""
    if operations is None:
        return [(OPERATIONS["add"], np.arange(rows))]
    return [(OPERATIONS[name], np.flatnonzero(operations == code)) for name, code in OPERATION_CODES.items()
            if (operations == code).any()]


def _interleave(pieces: list[tuple[np.ndarray, bytes]], rows: int) -> bytes:
    """Lines rendered per operation (``(row indices, bytes of their lines)``) put back in row order."""
    if len(pieces) == 1:
        return pieces[0][1]
    lines: list[bytes] = [b""] * rows
    for index, content in pieces:
        for row, line in zip(index.tolist(), content.split(b"\n")[:-1]):
            lines[row] = line + b"\n"
    return b"".join(lines)


# ----------------------------------------------------------------------------------------------
# Splits and datasets
# ----------------------------------------------------------------------------------------------

class Split(Sequence):
    """One split as arrays; behaves like a list of example dicts (``split[0]["text"]``, ``split[:10]``).

    >>> split = Split("train", np.array([[658, 189]]), np.array([2]), "cot")
    >>> split[0]["text"]
    '658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>'
    >>> Split("test", np.array([[658, 189]]), np.array([2]), "cot", np.array([1])).texts
    ['658-189=<think>8-9=-1 5-8-1=-4 6-1-1=4</think>469<end>']

    ``operations`` holds each row's ``OPERATION_CODES`` value (None: every row is an addition).
    """

    def __init__(self, name: str, operands: np.ndarray, num_operands: np.ndarray, fmt: str = "cot",
                 operations: np.ndarray | None = None):
        self.name = name
        self.fmt = fmt
        self.operands = np.asarray(operands, dtype=np.int64)  # [rows, max_operands], 0 past num_operands
        self.num_operands = np.asarray(num_operands, dtype=np.int64)
        if operations is not None:
            operations = np.asarray(operations, dtype=np.int64)
            if not operations.any():
                operations = None
        self.operations = operations
        self.num_digits = num_digits_array(self.operands.max(axis=1)) if len(self) else np.zeros(0, dtype=np.int64)
        if operations is None:
            self.answers = self.operands.sum(axis=1)
            self.num_carries = count_carries_array(self.operands)
        else:  # carries, or borrows for subtraction rows
            self.answers = np.zeros(len(self), dtype=np.int64)
            self.num_carries = np.zeros(len(self), dtype=np.int64)
            for op, rows in _by_operation(operations, len(self)):
                block = self.operands[rows]
                if op.name == "add":
                    self.answers[rows] = block.sum(axis=1)
                    self.num_carries[rows] = count_carries_array(block)
                else:
                    self.answers[rows] = _pair_answers(op, block[:, 0], block[:, 1])
                    self.num_carries[rows] = _pair_counts(op, block[:, 0], block[:, 1])
        self._texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.operands)

    def __getitem__(self, index):
        if isinstance(index, slice):
            ops = None if self.operations is None else self.operations[index]
            return Split(self.name, self.operands[index], self.num_operands[index], self.fmt, ops)
        row = self.operands[index]
        return make_example(row[: self.num_operands[index]].tolist(), self.fmt, self.operation_of(index))

    def operation_of(self, index: int) -> str:
        """The operation of row ``index`` by name (``"add"``, ``"sub"``, ``"mul"``)."""
        return "add" if self.operations is None else OPERATION_NAMES[int(self.operations[index])]

    def operation_names(self) -> np.ndarray:
        """Every row's operation by name."""
        codes = np.zeros(len(self), dtype=np.int64) if self.operations is None else self.operations
        return np.array(OPERATION_NAMES)[codes]

    def __repr__(self) -> str:
        return f"Split({self.name!r}, {len(self):,} examples, format={self.fmt!r})"

    def operand_lists(self) -> list[list[int]]:
        """``[[658, 189], [12, 34, 5], ...]``: each problem's operands (without the padding)."""
        if (self.num_operands == self.operands.shape[1]).all():
            return self.operands.tolist()
        return [row[:n] for row, n in zip(self.operands.tolist(), self.num_operands.tolist())]

    def operand_tuples(self) -> list[tuple[int, ...]]:
        """Each problem's operands as a tuple; for a split with subtraction or multiplication the problem's
        operation name comes first (``("sub", 658, 189)``), since ``658-189`` and ``658+189`` are different
        problems."""
        if self.operations is None:
            return [tuple(ops) for ops in self.operand_lists()]
        return [(name, *ops) for name, ops in zip(self.operation_names().tolist(), self.operand_lists())]

    @property
    def texts(self) -> list[str]:
        """Every example's text, rendered at once (cached)."""
        if self._texts is None:
            self._texts = render_texts(self.operands, self.num_operands, self.fmt, self.operations)
        return self._texts

    def jsonl_chunks(self, chunk_rows: int = 1 << 13, progress: bool = False) -> Iterator[bytes]:
        """The split's file content in pieces of ``chunk_rows`` lines (one ``make_example`` object per line)."""
        from tqdm.auto import tqdm

        for start in tqdm(range(0, len(self), chunk_rows), desc=f"writing {self.name}", disable=not progress,
                          leave=False):
            rows = slice(start, start + chunk_rows)
            operands, num_operands, counts = self.operands[rows], self.num_operands[rows], self.num_carries[rows]
            operations = None if self.operations is None else self.operations[rows]
            pieces = []
            for op, index in _by_operation(operations, len(operands)):
                if op.name == "add":
                    content = _render_jsonl(operands[index], num_operands[index], counts[index], self.fmt)
                else:
                    content = _render_pair_jsonl(op, operands[index, 0], operands[index, 1], counts[index], self.fmt)
                pieces.append((index, content))
            yield _interleave(pieces, len(operands))

    def to_jsonl(self) -> bytes:
        """The split's whole file content."""
        return b"".join(self.jsonl_chunks())


@dataclass
class Dataset:
    """What ``generate_dataset`` returns: ``dataset["train"]`` is a ``Split``; ``meta`` goes to meta.json."""

    splits: dict[str, Split]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.splits)

    def items(self):
        return self.splits.items()

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={len(split):,}" for name, split in self.splits.items())
        return f"Dataset({counts}, format={self.meta.get('arguments', {}).get('fmt')!r})"


def _shapes(max_digits: int, max_operands: int, min_digits: int = 1) -> list[tuple[int, ...]]:
    """Every tuple of operand lengths: ``_shapes(2, 2) == [(1, 1), (1, 2), (2, 1), (2, 2)]``."""
    return [lengths for n in range(2, max_operands + 1)
            for lengths in itertools.product(range(min_digits, max_digits + 1), repeat=n)]


def _check_arguments(num_examples, max_digits, max_operands, fmt, ratios, operations=("add",), min_digits=1) -> None:
    if not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    if not 1 <= max_digits <= MAX_DIGITS_LIMIT:
        raise ValueError(f"max_digits must be in 1..{MAX_DIGITS_LIMIT}, got {max_digits}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"min_digits must be in 1..max_digits ({max_digits}), got {min_digits}")
    if not 2 <= max_operands <= MAX_OPERANDS_LIMIT:
        raise ValueError(f"max_operands must be in 2..{MAX_OPERANDS_LIMIT}, got {max_operands}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"train/val/test ratios must be >= 0 and add up to 1, got {ratios}")
    pairs = [name for name in operations if name != "add"]
    if pairs and max_digits > MAX_PAIR_DIGITS_LIMIT:
        raise ValueError(f"max_digits must be in 1..{MAX_PAIR_DIGITS_LIMIT} for {', '.join(pairs)}, got {max_digits}")
    if pairs and max_operands > 2 and "add" not in operations:
        raise ValueError(f"{' and '.join(OPERATIONS[n].title for n in pairs)} take{'s' if len(pairs) == 1 else ''} "
                         "exactly 2 operands; "
                         f"max_operands={max_operands} applies to addition only")


def generate_command(**arguments: Any) -> str:
    """The CLI command that makes the same data: ``python scripts/generate_data.py --num-examples 100 ...``."""
    flags = []
    for name, value in arguments.items():
        flags += [f"--{name.replace('_', '-').replace('fmt', 'format')}", str(value)]
    return shlex.join(["python", "scripts/generate_data.py", *flags])


def _numbers_of_length(length: int) -> int:
    """How many numbers have exactly ``length`` digits (0 counts as one digit)."""
    return 10 if length == 1 else 9 * 10 ** (length - 1)


def _pair_shapes(op: Operation, max_digits: int, min_digits: int = 1) -> list[tuple[int, int]]:
    """The operand-length pairs of an operation: ``a >= b`` leaves subtraction only ``len(a) >= len(b)``."""
    return [(la, lb) for la in range(min_digits, max_digits + 1) for lb in range(min_digits, max_digits + 1)
            if op.name != "sub" or lb <= la]


def _pair_capacity(op: Operation, la: int, lb: int) -> int:
    """Distinct problems of one shape: ``_pair_capacity(sub, 1, 1) == 55`` (a >= b), ``(mul, 1, 1) == 100``."""
    na, nb = _numbers_of_length(la), _numbers_of_length(lb)
    return na * (na + 1) // 2 if op.name == "sub" and la == lb else na * nb


def _distinct_pairs(op: Operation, la: int, lb: int, quota: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``quota`` distinct problems of shape (la, lb), a uniform subset (``a >= b`` for subtraction)."""
    low_a, low_b = (0 if la == 1 else 10 ** (la - 1)), (0 if lb == 1 else 10 ** (lb - 1))
    capacity = _pair_capacity(op, la, lb)
    ordered = op.name == "sub" and la == lb
    if capacity <= min(ENUMERATE_LIMIT, 16 * quota):  # enumerating is about as cheap as drawing
        a, b = (g.ravel() for g in np.meshgrid(np.arange(low_a, 10**la), np.arange(low_b, 10**lb), indexing="ij"))
        if ordered:
            a, b = a[a >= b], b[a >= b]
        if quota < len(a):
            rows = np.sort(rng.choice(len(a), size=quota, replace=False))
            a, b = a[rows], b[rows]
        return a.astype(np.int64), b.astype(np.int64)
    # Draw with repeats, keep the first occurrences in draw order (a uniform subset), top up until enough.
    kept_a, kept_b = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    while True:
        missing = quota - len(kept_a)
        fresh = max(1.0 - len(kept_a) / capacity, 0.01)  # P(not a repeat)
        count = int(missing / fresh * (2.2 if ordered else 1.1)) + 8
        a, b = rng.integers(low_a, 10**la, count), rng.integers(low_b, 10**lb, count)
        if ordered:  # rejection keeps the pairs uniform over a >= b
            a, b = a[a >= b], b[a >= b]
        a, b = np.concatenate([kept_a, a]), np.concatenate([kept_b, b])
        _, first = np.unique(a * 10**lb + b, return_index=True)
        first.sort()
        kept_a, kept_b = a[first[:quota]], b[first[:quota]]
        if len(kept_a) == quota:
            return kept_a, kept_b


@dataclass
class _Problems:
    """Problems of one operation: operands ``[rows, width]`` (0 past num_operands), and per row the number of
    carries (borrows) the stratum promised, which the rendered split must reproduce."""

    operands: np.ndarray
    num_operands: np.ndarray
    counts: np.ndarray
    available: int
    shape_counts: dict[str, int]


def _addition_problems(num_examples: int, max_digits: int, max_operands: int, rng: np.random.Generator,
                       progress: bool, requested: int | None = None, min_digits: int = 1) -> _Problems:
    """Balanced distinct additions (shapes, then carries; see the module docstring). ``requested``: the number of
    problems the user asked for, when this is the only operation (a warning says when fewer exist)."""
    from tqdm.auto import tqdm

    shapes = _shapes(max_digits, max_operands, min_digits)
    tables = [_Shape.build(lengths) for lengths in shapes]
    capacity = np.stack([t.capacity[: max_digits + 1] for t in tables])
    available = _available("add", max_digits, max_operands, min_digits)
    exhausted = num_examples >= available
    if exhausted and requested is not None:
        logger.warning(
            "asked for %s examples but only %s distinct problems exist with max_digits=%d, max_operands=%d: "
            "generating all of them", f"{requested:,}", f"{available:,}", max_digits, max_operands)
    quotas = capacity.astype(np.int64) if exhausted else balanced_quotas(num_examples, shapes, capacity)

    operands = np.zeros((int(quotas.sum()), max_operands), dtype=np.int64)
    num_operands = np.zeros(len(operands), dtype=np.int64)
    expected_carries = np.zeros(len(operands), dtype=np.int64)
    row = 0
    shape_counts = {}
    for shape, shape_quotas in tqdm(list(zip(tables, quotas)), desc="sampling strata", disable=not progress):
        if not shape_quotas.any():
            continue
        block, block_carries = _distinct_problems(shape, shape_quotas, rng)
        rows = slice(row, row + len(block))
        operands[rows, : len(shape.lengths)] = block
        num_operands[rows] = len(shape.lengths)
        expected_carries[rows] = block_carries
        shape_counts["+".join(map(str, shape.lengths))] = len(block)
        row += len(block)
    if row != len(operands):
        raise RuntimeError("internal error: a stratum gave fewer problems than its capacity said")
    return _Problems(operands, num_operands, expected_carries, available, shape_counts)


def _pair_problems(op: Operation, num_examples: int, max_digits: int, rng: np.random.Generator,
                   min_digits: int = 1) -> _Problems:
    """Distinct subtraction or multiplication problems, equal shares per shape (capped by what each has)."""
    shapes = _pair_shapes(op, max_digits, min_digits)
    capacity = np.array([_pair_capacity(op, la, lb) for la, lb in shapes], dtype=np.int64)
    total = int(min(num_examples, capacity.sum()))
    quotas = _fill_whole(total, np.ones(len(shapes)), capacity.astype(float))
    blocks = [_distinct_pairs(op, la, lb, int(q), rng) for (la, lb), q in zip(shapes, quotas) if q]
    a = np.concatenate([blk[0] for blk in blocks]) if blocks else np.zeros(0, dtype=np.int64)
    b = np.concatenate([blk[1] for blk in blocks]) if blocks else np.zeros(0, dtype=np.int64)
    shape_counts = {f"{la}{op.symbol}{lb}": int(q) for (la, lb), q in zip(shapes, quotas) if q}
    return _Problems(np.stack([a, b], axis=1), np.full(len(a), 2, dtype=np.int64), _pair_counts(op, a, b),
                     int(capacity.sum()), shape_counts)


def _available(name: str, max_digits: int, max_operands: int, min_digits: int = 1) -> int:
    if name == "add":
        if min_digits == 1:
            return count_distinct_problems(max_digits, max_operands)
        return sum(_Shape.build(lengths).size for lengths in _shapes(max_digits, max_operands, min_digits))
    op = OPERATIONS[name]
    return sum(_pair_capacity(op, la, lb) for la, lb in _pair_shapes(op, max_digits, min_digits))


def generate_dataset(num_examples: int = 100_000, max_digits: int = 2, max_operands: int = 2, seed: int = 42,
                     fmt: str = "cot", train_ratio: float = 0.8, val_ratio: float = 0.1, test_ratio: float = 0.1,
                     progress: bool | None = None, whole_strata_below: int = 0,
                     operation: str | Sequence[str] = "add", min_digits: int = 1) -> Dataset:
    """Balanced, distinct problems split into train/val/test (see the module docstring).

    >>> ds = generate_dataset(num_examples=1000, max_digits=3, seed=0)
    >>> ds
    Dataset(train=800, val=100, test=100, format='cot')
    >>> ds["train"][0]["text"]
    '8+96=<think>8+6=14 0+9+1=10</think>104<end>'
    >>> generate_dataset(num_examples=1000, max_digits=3, seed=0, operation="sub")["train"][0]["text"]
    '91-16=<think>1-6=-5 9-1-1=7</think>75<end>'

    Same arguments, same splits (byte for byte once written). ``progress=None`` shows a bar for big jobs.
    ``operation``: ``"add"``, ``"sub"``, ``"mul"`` or a comma list (``"add,sub"``) that gives each operation an
    equal share; subtraction and multiplication have two operands (``max_operands`` is addition's).

    ``min_digits``: operands have min_digits..max_digits digits (``min_digits=max_digits=3``: only 3-digit operands).

    ``whole_strata_below`` n: a stratum (an operation and a tuple of operand lengths) with fewer than n distinct
    problems goes to the training split whole. It is a table the model must know rather than a rule to generalise:
    there are only 100 one-digit addition pairs (55 one-digit subtractions), written without a think block, and a
    model that sees 80 of them has nothing to compute the other 20 from. (0: every stratum is split like the rest.)
    """
    operations = parse_operations(operation)
    ratios = (train_ratio, val_ratio, test_ratio)
    _check_arguments(num_examples, max_digits, max_operands, fmt, ratios, operations, min_digits)
    progress = num_examples >= 500_000 if progress is None else progress
    rng = np.random.default_rng(seed)
    single_add = operations == ("add",)
    available_per = np.array([_available(name, max_digits, max_operands, min_digits) for name in operations])
    available = int(available_per.sum())
    exhausted = num_examples >= available
    if exhausted and not single_add:
        logger.warning("asked for %s examples but only %s distinct %s problems exist with max_digits=%d: "
                       "generating all of them", f"{num_examples:,}", f"{available:,}", "/".join(operations),
                       max_digits)
    shares = _fill_whole(min(num_examples, available), np.ones(len(operations)), available_per.astype(float))
    parts = []
    for name, share in zip(operations, shares):
        if name == "add":
            parts.append(_addition_problems(int(share), max_digits, max_operands, rng, progress,
                                            num_examples if single_add else None, min_digits))
        else:
            parts.append(_pair_problems(OPERATIONS[name], int(share), max_digits, rng, min_digits))
    width = max_operands if "add" in operations else 2
    operands = np.zeros((sum(len(p.operands) for p in parts), width), dtype=np.int64)
    row = 0
    for part in parts:
        operands[row : row + len(part.operands), : part.operands.shape[1]] = part.operands
        row += len(part.operands)
    num_operands = np.concatenate([p.num_operands for p in parts])
    expected_counts = np.concatenate([p.counts for p in parts])
    codes = np.concatenate([np.full(len(p.operands), OPERATION_CODES[name]) for name, p in zip(operations, parts)])

    order = rng.permutation(len(operands))
    if whole_strata_below > 0:  # the small strata first, so that they all land in the training split
        lengths = num_digits_array(operands) * (np.arange(width)[None, :] < num_operands[:, None])
        strata = np.concatenate([codes[:, None], lengths], axis=1)
        _, stratum_of, stratum_sizes = np.unique(strata, axis=0, return_inverse=True, return_counts=True)
        small = stratum_sizes[stratum_of.ravel()] < whole_strata_below
        order = np.concatenate([order[small[order]], order[~small[order]]])
        if small.sum() > int(round(len(operands) * train_ratio)):
            raise ValueError(f"whole_strata_below={whole_strata_below}: the small strata hold {int(small.sum())} "
                             "problems, more than the training split")
    operands, num_operands, expected_counts = operands[order], num_operands[order], expected_counts[order]
    codes = codes[order]
    total = len(operands)
    n_train = int(round(total * train_ratio))
    n_val = min(int(round(total * val_ratio)), total - n_train)
    bounds = dict(zip(SPLITS, [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, total)]))
    splits = {name: Split(name, operands[a:b], num_operands[a:b], fmt, None if single_add else codes[a:b])
              for name, (a, b) in bounds.items()}
    got_counts = np.concatenate([s.num_carries for s in splits.values()])
    if not np.array_equal(got_counts, expected_counts):
        raise AssertionError("internal error: a drawn problem does not have its stratum's number of carries")

    arguments = dict(num_examples=num_examples, max_digits=max_digits, max_operands=max_operands, seed=seed,
                     fmt=fmt, train_ratio=train_ratio, val_ratio=val_ratio, test_ratio=test_ratio)
    if whole_strata_below:
        arguments["whole_strata_below"] = whole_strata_below
    if not single_add:
        arguments["operation"] = ",".join(operations)
    if min_digits != 1:
        arguments["min_digits"] = min_digits
    meta = {
        "arguments": arguments,
        "command": generate_command(**arguments),
        "num_examples": total,
        "counts": {name: len(split) for name, split in splits.items()},
        "distinct_problems_available": available,
        "exhausted": exhausted,
    }
    if single_add:
        carries_hist = np.bincount(expected_counts, minlength=max_digits + 1)
        meta["num_carries_counts"] = {str(c): int(k) for c, k in enumerate(carries_hist)}
        meta["num_operands_counts"] = {str(n): int((num_operands == n).sum()) for n in range(2, max_operands + 1)}
        meta["balancing"] = ("equal shares for each number of operands, then each tuple of operand lengths, then "
                             "each number of carries, capped by the distinct problems each has")
        meta["fields"] = list(FIELDS)
    else:
        meta["operation_counts"] = {name: int((codes == OPERATION_CODES[name]).sum()) for name in operations}
        meta["shape_counts"] = {shape: n for part in parts for shape, n in part.shape_counts.items()}
        for name in operations:
            field_name = OPERATIONS[name].count_field
            hist = np.bincount(expected_counts[codes == OPERATION_CODES[name]])
            meta[f"{field_name}_counts_{name}"] = {str(c): int(k) for c, k in enumerate(hist) if k}
        meta["balancing"] = (
            "equal shares for each operation, capped by the distinct problems each has; within subtraction and "
            "multiplication, equal shares for each pair of operand lengths (a >= b for subtraction), capped the "
            "same way, problems uniform within it (borrows and carries are not balanced)"
            + ("; within addition, equal shares for each number of operands, then each tuple of operand lengths, "
               "then each number of carries" if "add" in operations else ""))
        meta["fields"] = sorted({f for name in operations for f in _fields_of(OPERATIONS[name])},
                                key=lambda f: _ALL_FIELDS.index(f))
    meta["mathllm_version"] = mathllm.__version__
    meta["code_version"] = code_version()
    if exhausted:
        meta["note"] = (f"asked for {num_examples:,} examples; all {available:,} distinct problems were generated")
    return Dataset(splits, meta)


_ALL_FIELDS = ("text", "prompt", "operands", "answer", "num_digits", "num_operands", "num_carries", "num_borrows",
               "format", "operation")


def _fields_of(op: Operation) -> tuple[str, ...]:
    """The fields of a line of this operation, in file order."""
    fields = [f for f in FIELDS if f != "num_carries"]
    fields.insert(fields.index("format"), op.count_field)
    return tuple(fields) + (("operation",) if op.name != "add" else ())


# ----------------------------------------------------------------------------------------------
# Files: writing and reading JSON Lines
# ----------------------------------------------------------------------------------------------

def write_dataset(dataset: Dataset, output_dir: str | os.PathLike = "data",
                  progress: bool | None = None) -> dict[str, Path]:
    """Write ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and then ``meta.json``, each atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    total = sum(len(s) for s in dataset.splits.values())
    progress = total >= 500_000 if progress is None else progress
    paths = {}
    for name, split in dataset.splits.items():
        paths[name] = output_dir / f"{name}.jsonl"
        atomic_write_chunks(paths[name], split.jsonl_chunks(progress=progress))
    meta = dict(dataset.meta, files={name: path.name for name, path in paths.items()})
    paths["meta"] = output_dir / "meta.json"
    atomic_write_chunks(paths["meta"], iter([(json.dumps(meta, indent=2) + "\n").encode()]))
    return paths


def _missing_data_message(path: Path, what: str) -> str:
    return (f"{what} {path} does not exist. Generate the data first, e.g.\n"
            f"    {GENERATE_COMMAND} --output-dir {path.parent if what == 'file' else path}")


def _require_file(path: Path) -> None:
    if not path.is_file():
        if not path.parent.is_dir():
            raise FileNotFoundError(_missing_data_message(path.parent, "data directory"))
        raise FileNotFoundError(_missing_data_message(path, "file"))


def _parse_line(line: str, where: str) -> dict[str, Any]:
    if not line.strip():
        raise ValueError(f"{where}: empty line (every line must be one JSON object)")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno}): "
                         f"{line.rstrip()[:120]!r}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Each line's JSON object; a line that is not one raises ``ValueError`` naming the file and line."""
    path = Path(path)
    _require_file(path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            yield _parse_line(line, f"{path}:{number}")


def _read_records(path: Path, content: bytes) -> list[dict[str, Any]]:
    """Every line's object: the whole file goes through one ``json.loads`` call, and goes line by line only
    to name a bad line."""
    try:
        lines = content.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        line = content[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text ({err.reason})") from None
    if lines[-1] == "":
        lines.pop()
    if not lines:
        return []
    try:
        records = json.loads("[" + ",".join(lines) + "]")
        if len(records) == len(lines) and all(type(r) is dict for r in records):
            return records
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(lines, start=1):
        _parse_line(line, f"{path}:{number}")  # raises at the first bad line
    raise ValueError(f"{path}: not a JSON Lines file")


INTEGER_FIELDS = ("answer", "num_digits", "num_operands", "num_carries")


def _record_operation(record: dict[str, Any], where: str) -> Operation:
    name = record.get("operation", "add")
    if name not in OPERATIONS:
        raise ValueError(f"{where}: unknown operation {name!r}; known: {', '.join(OPERATION_NAMES)}")
    return OPERATIONS[name]


def _check_record(record: dict[str, Any], where: str) -> None:
    """Everything one line needs, with a message that says what is wrong (``where`` is ``"file:line"``)."""
    op = _record_operation(record, where)
    required = [f for f in _fields_of(op) if f not in ("prompt", "operation")]
    missing = [f for f in required if f not in record]
    if missing:
        example = make_example([12, 34]) if op.name == "add" else make_example([34, 12], "cot", op)
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}; a line looks like {json.dumps(example)}")
    text, operands = record["text"], record["operands"]
    if not isinstance(text, str):
        raise ValueError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    if not _VALID_TEXT.fullmatch(text):
        try:
            TOKENIZER.tokenize(text)
        except ValueError as err:
            raise ValueError(f"{where}: text does not tokenize: {err}") from None
    if "=" not in text:
        raise ValueError(f"{where}: text {text!r} has no '='")
    if (not isinstance(operands, list) or len(operands) < 2
            or any(type(x) is not int or x < 0 for x in operands)):
        raise ValueError(f"{where}: 'operands' must be a list of at least 2 non-negative integers, "
                         f"got {operands!r}")
    if len(operands) > MAX_OPERANDS_LIMIT or max(operands) >= 10**MAX_DIGITS_LIMIT:
        raise ValueError(f"{where}: operands {operands!r} are beyond what mathllm handles "
                         f"({MAX_OPERANDS_LIMIT} operands of {MAX_DIGITS_LIMIT} digits)")
    if op.name != "add":
        try:
            op.check(operands)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if max(operands) >= 10**MAX_PAIR_DIGITS_LIMIT:
            raise ValueError(f"{where}: operands {operands!r} are beyond what mathllm handles for {op.title} "
                             f"({MAX_PAIR_DIGITS_LIMIT} digits)")
    for name in ("answer", "num_digits", "num_operands", op.count_field):
        if type(record[name]) is not int:
            raise ValueError(f"{where}: {name!r} must be an integer, got {record[name]!r}")
    if record["format"] not in FORMATS:
        raise ValueError(f"{where}: unknown format {record['format']!r}; known: {', '.join(FORMATS)}")


def _records_look_right(records: list[dict[str, Any]]) -> bool:
    """``_check_record`` for all records at once, column by column (fast; no message; additions only)."""
    try:
        texts = [r["text"] for r in records]
        operands = [r["operands"] for r in records]
        integers = [[r[name] for r in records] for name in INTEGER_FIELDS]
        formats = [r["format"] for r in records]
    except KeyError:
        return False
    limit = 10**MAX_DIGITS_LIMIT
    return (all("operation" not in r for r in records)
            and all(type(t) is str and "=" in t for t in texts)
            and all(type(o) is list and 2 <= len(o) <= MAX_OPERANDS_LIMIT for o in operands)
            and all(type(x) is int and 0 <= x < limit for o in operands for x in o)
            and all(type(v) is int for column in integers for v in column)
            and all(type(f) is str and f in FORMATS for f in formats))


def load_split(path: str | os.PathLike, check_consistency: bool = True) -> list[dict[str, Any]]:
    """The examples of one JSONL split, as dicts in file order. Every line is checked; none is skipped.

    A malformed line raises ``ValueError("data/train.jsonl:17: ...")``: bad JSON, a missing field, text that
    does not tokenize (naming the character), and, with ``check_consistency``, a text, answer or count that
    does not match the operands (``"12+34=47<end>"`` for ``[12, 34]``), for every operation. A missing file or
    directory says which command generates it. A file exactly as ``write_dataset`` wrote it is checked at once by
    writing it again from its operands and comparing the bytes.
    """
    path = Path(path)
    _require_file(path)
    content = path.read_bytes()
    records = _read_records(path, content)
    if not records or _is_canonical(records, content, path.stem):
        return records
    if not _records_look_right(records):
        for number, record in enumerate(records, start=1):
            _check_record(record, f"{path}:{number}")
    if check_consistency:
        _check_consistency(records, path)
    elif not all(_VALID_TEXT.fullmatch(r["text"]) for r in records):
        for number, record in enumerate(records, start=1):
            _check_record(record, f"{path}:{number}")
    return records


def _operand_array(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    operand_lists = [r["operands"] for r in records]
    num_operands = np.array([len(o) for o in operand_lists], dtype=np.int64)
    operands = np.zeros((len(records), int(num_operands.max())), dtype=np.int64)
    for n in np.unique(num_operands):
        rows = np.flatnonzero(num_operands == n)
        operands[rows, :n] = np.array([operand_lists[i] for i in rows.tolist()], dtype=np.int64)
    return operands, num_operands


def _is_canonical(records: list[dict[str, Any]], content: bytes, name: str) -> bool:
    """Whether ``content`` is byte for byte the file ``write_dataset`` writes for these records' operands
    (then every field of every line is right, and the line-by-line checks can be skipped)."""
    try:
        fmt = records[0]["format"]
        if fmt not in FORMATS or any(r["format"] != fmt for r in records):
            return False
        num_operands = np.array([len(r["operands"]) for r in records], dtype=np.int64)
        if not 2 <= num_operands.min() <= num_operands.max() <= MAX_OPERANDS_LIMIT:
            return False
        operands, num_operands = _operand_array(records)
        if not 0 <= operands.min() <= operands.max() < 10**MAX_DIGITS_LIMIT:
            return False
        operations = None
        if any("operation" in r for r in records):
            operations = np.array([OPERATION_CODES[r.get("operation", "add")] for r in records], dtype=np.int64)
            pairs = operations > 0
            if pairs.any() and (num_operands[pairs].max() != 2 or operands[pairs].max() >= 10**MAX_PAIR_DIGITS_LIMIT
                                or (operands[operations == OPERATION_CODES["sub"], 0]
                                    < operands[operations == OPERATION_CODES["sub"], 1]).any()):
                return False
        return Split(name, operands, num_operands, fmt, operations).to_jsonl() == content
    except (KeyError, TypeError, ValueError, OverflowError):
        return False


def _check_consistency(records: list[dict[str, Any]], path: Path) -> None:
    """Every field must be what ``make_example`` gives for the operands (checked vectorised, per format; lines of
    subtraction and multiplication one by one)."""
    if any("operation" in r for r in records):
        for number, record in enumerate(records, start=1):
            _check_example_line(record, f"{path}:{number}")
        return
    operands, num_operands = _operand_array(records)
    split = Split(path.stem, operands, num_operands)

    def first_difference(got: list, expected: list, rows: list[int]) -> int | None:
        if got == expected:
            return None
        return next(row for row, a, b in zip(rows, got, expected) if a != b)

    every_row = list(range(len(records)))
    expected = {"answer": split.answers, "num_digits": split.num_digits,
                "num_operands": num_operands, "num_carries": split.num_carries}
    for name, values in expected.items():
        values = values.tolist()
        row = first_difference([r[name] for r in records], values, every_row)
        if row is not None:
            r = records[row]
            raise ValueError(f"{path}:{row + 1}: {name} is {r[name]} but operands {r['operands']} give {values[row]}")
    formats = np.array([r["format"] for r in records])
    for fmt in np.unique(formats).tolist():
        rows = np.flatnonzero(formats == fmt).tolist()
        texts = render_texts(operands[rows], num_operands[rows], fmt)
        row = first_difference([records[i]["text"] for i in rows], texts, rows)
        if row is not None:
            _check_record(records[row], f"{path}:{row + 1}")  # a more precise message if the line is malformed
            text = texts[rows.index(row)]
            raise ValueError(f"{path}:{row + 1}: text {records[row]['text']!r} does not match its operands "
                             f"{records[row]['operands']} in format {fmt!r}; expected {text!r}")
    prompts = [r.get("prompt") for r in records]
    expected_prompts = [None if p is None else r["text"][: r["text"].index("=") + 1] for p, r in zip(prompts, records)]
    row = first_difference(prompts, expected_prompts, every_row)
    if row is not None:
        raise ValueError(f"{path}:{row + 1}: prompt {prompts[row]!r} is not the start of the text")


def _check_example_line(record: dict[str, Any], where: str) -> None:
    """One line of any operation against ``make_example`` of its operands (its format, its operation)."""
    _check_record(record, where)
    op = _record_operation(record, where)
    expected = make_example(record["operands"], record["format"], op)
    for name in ("answer", "num_digits", "num_operands", op.count_field):
        if record[name] != expected[name]:
            raise ValueError(f"{where}: {name} is {record[name]} but {op.title} of {record['operands']} gives "
                             f"{expected[name]}")
    if record["text"] != expected["text"]:
        raise ValueError(f"{where}: text {record['text']!r} does not match its operands {record['operands']} in "
                         f"format {record['format']!r}; expected {expected['text']!r}")
    if record.get("prompt", expected["prompt"]) != expected["prompt"]:
        raise ValueError(f"{where}: prompt {record['prompt']!r} is not the start of the text")


def load_problems(path: str | os.PathLike, fmt: str | None = None) -> list[dict[str, Any]]:
    """A list of problems to evaluate, each line needing only ``prompt`` and ``answer``, rendered in ``fmt``.

    Every other field is optional and ignored (a data file of ``write_dataset`` reads as its problems): a line
    such as ``{"prompt": "658-189=", "answer": 469}`` becomes ``make_example([658, 189], fmt, "sub")``, so that a
    model is evaluated in the format it was trained on (``fmt=None``: the line's own ``format``, else cot). A line
    whose prompt does not parse, whose operation cannot take its operands (``3-7=``), or whose answer is wrong is a
    ``ValueError`` naming the file and line.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "mine.jsonl"
    >>> _ = path.write_text('{"prompt": "12*34=", "answer": 408, "source": "homework"}\\n')
    >>> load_problems(path, "cot")[0]["text"]
    '12*34=<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>408<end>'
    """
    path = Path(path)
    _require_file(path)
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    records = _read_records(path, path.read_bytes())
    examples = []
    for number, record in enumerate(records, start=1):
        where = f"{path}:{number}"
        missing = [f for f in ("prompt", "answer") if f not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}; a line needs at least "
                             '{"prompt": "658+189=", "answer": 847}')
        prompt, answer = record["prompt"], record["answer"]
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: 'prompt' must be a string such as \"658+189=\", got {prompt!r}")
        if type(answer) is not int:
            raise ValueError(f"{where}: 'answer' must be an integer, got {answer!r}")
        text = prompt.strip().replace(" ", "")
        try:
            symbol, operands = parse_prompt(text if text.endswith("=") else text + "=")
            op = get_operation(symbol)
            operands = op.check(operands)
        except ValueError as err:
            raise ValueError(f"{where}: prompt {prompt!r} does not parse: {err}") from None
        if max(operands) >= 10 ** (MAX_DIGITS_LIMIT if op.name == "add" else MAX_PAIR_DIGITS_LIMIT) \
                or len(operands) > MAX_OPERANDS_LIMIT:
            raise ValueError(f"{where}: prompt {prompt!r} is beyond what mathllm handles")
        true = op.answer(operands)
        if answer != true:
            raise ValueError(f"{where}: answer {answer} is wrong for {op.prompt(operands)} (it is {true})")
        line_fmt = fmt or record.get("format") or "cot"
        if line_fmt not in FORMATS:
            raise ValueError(f"{where}: unknown format {line_fmt!r}; known: {', '.join(FORMATS)}")
        examples.append(make_example(operands, line_fmt, op))
    return examples


def load_meta(data_dir: str | os.PathLike = "data") -> dict[str, Any]:
    """``data_dir/meta.json`` as written by ``write_dataset``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(_missing_data_message(data_dir, "data directory"))
    if not (data_dir / "meta.json").is_file():
        raise FileNotFoundError(_missing_data_message(data_dir / "meta.json", "file"))
    return json.loads((data_dir / "meta.json").read_text())


def describe(examples: Sequence[Mapping[str, Any]] | Split) -> dict[str, np.ndarray]:
    """Arrays for plots: ``operand_digits`` (every operand's length), ``num_digits``, ``num_carries``,
    ``num_operands`` and ``num_tokens`` (sequence length), for a ``Split`` or a list of example dicts."""
    if isinstance(examples, Split):
        present = np.arange(examples.operands.shape[1])[None, :] < examples.num_operands[:, None]
        return {
            "operand_digits": num_digits_array(examples.operands[present]),
            "num_digits": examples.num_digits,
            "num_carries": examples.num_carries,
            "num_operands": examples.num_operands,
            "num_tokens": np.array([count_tokens(t) for t in examples.texts], dtype=np.int64),
        }
    return {
        "operand_digits": np.array([len(str(x)) for ex in examples for x in ex["operands"]], dtype=np.int64),
        "num_digits": np.array([ex["num_digits"] for ex in examples], dtype=np.int64),
        "num_carries": np.array([ex["num_carries"] for ex in examples], dtype=np.int64),
        "num_operands": np.array([ex["num_operands"] for ex in examples], dtype=np.int64),
        "num_tokens": np.array([count_tokens(ex["text"]) for ex in examples], dtype=np.int64),
    }
