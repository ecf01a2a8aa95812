"""The column arithmetic behind every trace: digits, column sums, carries, and the trace steps.

One problem at a time (the readable reference)::

    >>> addition_steps([658, 189])
    ['8+9=17', '5+8+1=14', '6+1+1=8']
    >>> [(c.total, c.carry_out) for c in addition_columns([658, 189])]
    [(17, 1), (14, 1), (8, 0)]
    >>> count_carries([99, 21]), carry_chain_length([4999, 5001])
    (2, 4)

and vectorised over an operand array ``[rows, operands]`` (absent operands are 0), for the data generator::

    >>> totals, carries_in = column_totals(np.array([[658, 189], [12, 34]]), width=3)
    >>> [t.tolist() for t in totals], [c.tolist() for c in carries_in]
    ([[17, 6], [14, 4], [8, 0]], [[0, 0], [1, 0], [1, 0]])

Columns are numbered from the units (column 0). A column's *total* is its digits plus the carry into it; its
*carry out* is ``total // 10`` and its answer digit ``total % 10``. The data generator (``mathllm.data``), the
interpretability toolkit's labels (``mathllm.interp.positions``, ``mathllm.interp.patching``,
``mathllm.interp.faithfulness``) and the free-thinking analysis (``mathllm.free_thinking``) all compute from here.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def check_operands(operands: Sequence[int]) -> list[int]:
    """The operands as Python ints; at least two, none negative (numpy ints are fine, floats are not)."""
    values = [operator.index(x) for x in operands]
    if len(values) < 2:
        raise ValueError(f"a problem needs at least 2 operands, got {list(operands)!r}")
    if any(x < 0 for x in values):
        raise ValueError(f"operands must be non-negative integers, got {list(operands)!r}")
    return values


def digit(value: int, column: int) -> int:
    """Digit of ``value`` in ``column`` (0 = units): ``digit(658, 1) == 5``; 0 beyond its length."""
    return value // 10**column % 10


def num_digits(value: int) -> int:
    """Decimal length (0 has one digit): ``num_digits(658) == 3``."""
    return len(str(value))


def width(operands: Sequence[int]) -> int:
    """Number of columns of a problem: the length of its longest operand."""
    return max(num_digits(x) for x in operands)


@dataclass(frozen=True)
class Column:
    """One column of an addition: ``Column(index=1, digits=(5, 8), carry_in=1, total=14)`` for 658+189."""

    index: int  # 0 = units
    digits: tuple[int, ...]  # the operands' digits in this column (0 where an operand is shorter)
    carry_in: int  # carry from the column to the right (0 for the units)
    total: int  # sum(digits) + carry_in

    @property
    def digit_sum(self) -> int:
        """The column's digits without the carry."""
        return sum(self.digits)

    @property
    def carry_out(self) -> int:
        return self.total // 10

    @property
    def result_digit(self) -> int:
        """The answer's digit in this column."""
        return self.total % 10


def addition_columns(operands: Sequence[int], n_columns: int | None = None) -> list[Column]:
    """The columns of ``sum(operands)``, units first; ``n_columns`` (default: the longest operand) may go
    beyond the operands, where a column holds only the carry in."""
    operands = check_operands(operands)
    n_columns = width(operands) if n_columns is None else n_columns
    columns, carry = [], 0
    for j in range(n_columns):
        column = Column(j, tuple(digit(x, j) for x in operands), carry, sum(digit(x, j) for x in operands) + carry)
        columns.append(column)
        carry = column.carry_out
    return columns


def addition_steps(operands: Sequence[int]) -> list[str]:
    """The chain-of-thought steps, one per column of the longest operand, units first; the carry in is the
    last term, written only when it is not 0.

    >>> addition_steps([99, 21, 5])
    ['9+1+5=15', '9+2+0+1=12']
    """
    return ["+".join([str(d) for d in c.digits] + ([str(c.carry_in)] if c.carry_in else [])) + f"={c.total}"
            for c in addition_columns(operands)]


def count_carries(operands: Sequence[int]) -> int:
    """Number of columns (of the longest operand) whose carry out is not 0: ``count_carries([99, 21]) == 2``."""
    return sum(c.carry_out > 0 for c in addition_columns(operands))


def carry_chain_length(operands: Sequence[int]) -> int:
    """The longest run of consecutive columns that each carry out (a carry that ripples through k columns):
    ``carry_chain_length([4999, 5001]) == 4``, ``carry_chain_length([19, 91]) == 2``, 0 without carries."""
    longest = run = 0
    for c in addition_columns(operands):
        run = run + 1 if c.carry_out else 0
        longest = max(longest, run)
    return longest


_STEP = re.compile(r"^(\d+(?:\+\d+)*)=(\d+)$")


def parse_step(step: str) -> tuple[list[int], int]:
    """``"5+8+1=14"`` -> ``([5, 8, 1], 14)``; a step that is not ``terms=total`` raises ValueError."""
    m = _STEP.match(step)
    if not m:
        raise ValueError(f"not an addition trace step: {step!r}")
    return [int(t) for t in m.group(1).split("+")], int(m.group(2))


def format_step(terms: Sequence[int], total: int) -> str:
    """``format_step([5, 8, 1], 14) == "5+8+1=14"``."""
    return "+".join(str(t) for t in terms) + f"={total}"


def implied_answer(steps: Sequence[str]) -> int:
    """The answer a trace implies: each step's last digit, column by column, then the last step's carry.

    >>> implied_answer(["8+9=17", "5+8+1=14", "6+1+1=8"])
    847
    """
    digits, total = [], 0
    for step in steps:
        total = parse_step(step)[1]
        digits.append(total % 10)
    return sum(d * 10**i for i, d in enumerate(digits)) + total // 10 * 10 ** len(digits)


# ----------------------------------------------------------------------------------------------
# Vectorised, over operand arrays [rows, operands] (absent operands are 0)
# ----------------------------------------------------------------------------------------------

def num_digits_array(values: np.ndarray) -> np.ndarray:
    """Decimal length of each value (0 has one digit)."""
    values = np.asarray(values, dtype=np.int64)
    out = np.ones(values.shape, dtype=np.int64)
    for k in range(1, 19):
        above = values >= 10**k
        if not above.any():
            break
        out += above
    return out


def column_totals(operands: np.ndarray, width: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per column j < width: the column total (digits plus carry in) and the carry into it, ``[rows]`` each."""
    totals, carries_in = [], []
    carry = np.zeros(len(operands), dtype=np.int64)
    for column in range(width):
        carries_in.append(carry)
        total = (operands // 10**column % 10).sum(axis=1) + carry
        totals.append(total)
        carry = total // 10
    return totals, carries_in


def count_carries_array(operands: np.ndarray) -> np.ndarray:
    """``count_carries`` of every row of ``operands``."""
    lengths = num_digits_array(operands.max(axis=1)) if len(operands) else np.zeros(0, dtype=np.int64)
    totals, _ = column_totals(operands, int(lengths.max(initial=1)))
    carries = np.zeros(len(operands), dtype=np.int64)
    for column, total in enumerate(totals):
        carries += (total >= 10) & (column < lengths)
    return carries


__all__ = ["Column", "addition_columns", "addition_steps", "carry_chain_length", "check_operands", "column_totals",
           "count_carries", "count_carries_array", "digit", "format_step", "implied_answer", "num_digits",
           "num_digits_array", "parse_step", "width"]
