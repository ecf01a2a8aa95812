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

Subtraction (two operands, ``a >= b``) works the same columns with borrows: column i is ``a_i-b_i`` minus the
borrow into it, written as a last term ``-1`` only when it is not 0; its signed result r gives the answer digit
``r % 10`` and a borrow out when ``r < 0``::

    >>> subtraction_steps(658, 189), subtraction_steps(105, 99), count_borrows(105, 99)
    (['8-9=-1', '5-8-1=-4', '6-1-1=4'], ['5-9=-4', '0-9-1=-10', '1-0-1=0'], 2)

Multiplication (two operands) is long multiplication with a running sum ("rsum"): for each digit ``b_j`` of the
second operand (units first) and each digit ``a_i`` of the first (units first), one step ``a_i*b_j+r+c=t``, where
``r`` is digit ``i+j`` of the running sum ``a * (b mod 10^j)`` (absent in the first row, written even when 0
later) and ``c`` the carry from the row's previous step (written only when not 0); after every row but the last
the new running sum is written out as a bare number. Every step has one product of one-digit factors plus
numbers of at most two digits, so its total is at most 81 + 9 + 9 = 99::

    >>> multiplication_steps(123, 456)
    ['3*6=18', '2*6+1=13', '1*6+1=7', '738', '3*5+3=18', '2*5+7+1=18', '1*5+0+1=6', '6888', '3*4+8=20', '2*4+6+2=16', '1*4+0+1=5']

``OPERATIONS`` (by name) and ``BY_SYMBOL`` give, per operation, the answer, the steps and the count of
carries (borrows for subtraction) of a problem; ``operation("-")`` / ``operation("sub")`` finds one.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
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
    values, longest, run, carry = check_operands(operands), 0, 0, 0
    while any(values):  # column by column from the units, without building Columns (data generation calls this)
        carry = (sum(x % 10 for x in values) + carry) // 10
        run = run + 1 if carry else 0
        longest = max(longest, run)
        values = [x // 10 for x in values]
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


# ----------------------------------------------------------------------------------------------
# Subtraction: columns with borrows (two operands, a >= b)
# ----------------------------------------------------------------------------------------------

def check_pair(operands: Sequence[int], symbol: str) -> tuple[int, int]:
    """The two operands of a subtraction or multiplication as ints; a subtraction needs ``a >= b``."""
    values = check_operands(operands)
    if len(values) != 2:
        raise ValueError(f"'{symbol}' takes exactly 2 operands, got {len(values)}: {list(operands)!r}")
    a, b = values
    if symbol == "-" and a < b:
        raise ValueError(f"subtraction needs a >= b (the answer may not be negative), got {a}-{b}")
    return a, b


@dataclass(frozen=True)
class SubColumn:
    """One column of a subtraction: ``SubColumn(index=1, a=5, b=8, borrow_in=1, result=-4)`` for 658-189."""

    index: int  # 0 = units
    a: int  # the first operand's digit
    b: int  # the second operand's digit (0 beyond its length)
    borrow_in: int  # 1 when the column to the right went below 0
    result: int  # a - b - borrow_in, signed (-10..9)

    @property
    def borrow_out(self) -> int:
        return int(self.result < 0)

    @property
    def result_digit(self) -> int:
        """The answer's digit in this column."""
        return self.result % 10

    @property
    def step(self) -> str:
        """``"5-8-1=-4"``: the trace step of this column."""
        return f"{self.a}-{self.b}" + ("-1" if self.borrow_in else "") + f"={self.result}"


def subtraction_columns(a: int, b: int) -> list[SubColumn]:
    """The columns of ``a - b`` (``a >= b``), units first, one per digit of ``a``."""
    a, b = check_pair([a, b], "-")
    columns, borrow = [], 0
    for j in range(num_digits(a)):
        column = SubColumn(j, digit(a, j), digit(b, j), borrow, digit(a, j) - digit(b, j) - borrow)
        columns.append(column)
        borrow = column.borrow_out
    return columns


def subtraction_steps(a: int, b: int) -> list[str]:
    """The chain-of-thought steps of ``a - b``, one per column of ``a``, units first: ``a_i-b_i=r``, with the borrow
    in as a last term ``-1`` only when it is not 0 (``subtraction_steps(31, 7) == ['1-7=-6', '3-0-1=2']``)."""
    return [c.step for c in subtraction_columns(a, b)]


def count_borrows(a: int, b: int) -> int:
    """Number of columns of ``a - b`` that borrow (go below 0): ``count_borrows(658, 189) == 2``."""
    return sum(c.borrow_out for c in subtraction_columns(a, b))


# ----------------------------------------------------------------------------------------------
# Multiplication: long multiplication with a running sum (two operands)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MulStep:
    """One step of a multiplication trace: ``MulStep(row=1, column=1, a=2, b=5, sum_digit=7, carry_in=1,
    total=18)`` is ``2*5+7+1=18`` in 123*456 (row j multiplies by ``b_j``, column i takes ``a_i``)."""

    row: int  # j: which digit of the second operand (0 = units)
    column: int  # i: which digit of the first operand (0 = units)
    a: int  # a_i
    b: int  # b_j
    sum_digit: int | None  # digit i+j of the running sum so far; None in row 0 (nothing to add yet)
    carry_in: int  # the carry from the row's previous step (0..9)
    total: int  # a*b + sum_digit + carry_in, at most 99

    @property
    def carry_out(self) -> int:
        return self.total // 10

    @property
    def step(self) -> str:
        """``"2*5+7+1=18"``: the trace step."""
        return (f"{self.a}*{self.b}" + (f"+{self.sum_digit}" if self.sum_digit is not None else "")
                + (f"+{self.carry_in}" if self.carry_in else "") + f"={self.total}")


def running_sums(a: int, b: int) -> list[int]:
    """``a * (b mod 10^(j+1))`` for every row j: what the trace has added up after each row (the last is
    ``a * b``): ``running_sums(123, 456) == [738, 6888, 56088]``."""
    a, b = check_pair([a, b], "*")
    return [a * (b % 10 ** (j + 1)) for j in range(num_digits(b))]


def multiplication_table(a: int, b: int) -> list[MulStep]:
    """Every step of ``a * b`` in trace order: row by row (digits of b, units first), column by column."""
    a, b = check_pair([a, b], "*")
    steps, total_so_far = [], 0
    for j in range(num_digits(b)):
        carry = 0
        for i in range(num_digits(a)):
            sum_digit = digit(total_so_far, i + j) if j else None
            step = MulStep(j, i, digit(a, i), digit(b, j), sum_digit, carry,
                           digit(a, i) * digit(b, j) + (sum_digit or 0) + carry)
            steps.append(step)
            carry = step.carry_out
        total_so_far += a * digit(b, j) * 10**j
    return steps


def multiplication_steps(a: int, b: int) -> list[str]:
    """The chain-of-thought items of ``a * b``: each row's steps, then (except after the last row) the running sum
    as a bare number. ``multiplication_steps(7, 8) == ['7*8=56']``; ``multiplication_steps(12, 34) ==
    ['2*4=8', '1*4=4', '48', '2*3+4=10', '1*3+0+1=4']``."""
    table, sums = multiplication_table(a, b), running_sums(a, b)
    items: list[str] = []
    for step in table:
        items.append(step.step)
        if step.column == num_digits(a) - 1 and step.row < len(sums) - 1:
            items.append(str(sums[step.row]))
    return items


def count_multiplication_carries(a: int, b: int) -> int:
    """Number of steps of ``a * b`` whose carry out is not 0: ``count_multiplication_carries(12, 34) == 1``."""
    return sum(s.carry_out > 0 for s in multiplication_table(a, b))


# ----------------------------------------------------------------------------------------------
# The operation table
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Operation:
    """What the project knows about one operation, for one problem at a time.

    >>> op = operation("*"); op.answer([12, 34]), op.steps([12, 34])[:2], op.count([12, 34]), op.count_field
    (408, ['2*4=8', '1*4=4'], 1, 'num_carries')
    """

    name: str  # "add" | "sub" | "mul": the name used by --operation and in data lines
    symbol: str  # "+" | "-" | "*"
    title: str  # "addition", for messages
    count_field: str  # the data field that counts carries ("num_carries") or borrows ("num_borrows")
    max_operands: int | None  # None: any number (addition); 2 for subtraction and multiplication
    _answer: Callable[[list[int]], int]
    _steps: Callable[[list[int]], list[str]]
    _count: Callable[[list[int]], int]
    _has_think: Callable[[list[int]], bool]

    def check(self, operands: Sequence[int]) -> list[int]:
        """The operands as ints; ValueError naming what this operation cannot take (``a < b`` for ``-``)."""
        if self.max_operands is None:
            return check_operands(operands)
        return list(check_pair(operands, self.symbol))

    def answer(self, operands: Sequence[int]) -> int:
        return self._answer(self.check(operands))

    def steps(self, operands: Sequence[int]) -> list[str]:
        """The trace items (steps and, for multiplication, running sums), whether or not a think block shows them."""
        return self._steps(self.check(operands))

    def count(self, operands: Sequence[int]) -> int:
        """Carries (addition: columns; multiplication: steps) or borrows (subtraction: columns)."""
        return self._count(self.check(operands))

    def has_think(self, operands: Sequence[int]) -> bool:
        """Whether the cot format writes a think block: not for two one-digit operands of ``+`` or ``-`` (one
        step that would only repeat the answer); always for ``*`` (``7*8=<think>7*8=56</think>56<end>``: with
        its step a one-digit product is computed as inside every longer trace, not memorised)."""
        return self._has_think(self.check(operands))

    def prompt(self, operands: Sequence[int]) -> str:
        """``"658-189="``."""
        return self.symbol.join(str(x) for x in self.check(operands)) + "="


OPERATIONS: dict[str, Operation] = {
    "add": Operation("add", "+", "addition", "num_carries", None, sum, addition_steps, count_carries,
                     lambda ops: not (len(ops) == 2 and width(ops) == 1)),
    "sub": Operation("sub", "-", "subtraction", "num_borrows", 2, lambda ops: ops[0] - ops[1],
                     lambda ops: subtraction_steps(*ops), lambda ops: count_borrows(*ops),
                     lambda ops: ops[0] >= 10),
    "mul": Operation("mul", "*", "multiplication", "num_carries", 2, lambda ops: ops[0] * ops[1],
                     lambda ops: multiplication_steps(*ops), lambda ops: count_multiplication_carries(*ops),
                     lambda ops: True),
}
BY_SYMBOL: dict[str, Operation] = {op.symbol: op for op in OPERATIONS.values()}


def operation(name_or_symbol: str | Operation) -> Operation:
    """The ``Operation`` named ``"add"``/``"sub"``/``"mul"`` or written ``"+"``/``"-"``/``"*"``."""
    if isinstance(name_or_symbol, Operation):
        return name_or_symbol
    found = OPERATIONS.get(name_or_symbol) or BY_SYMBOL.get(name_or_symbol)
    if found is None:
        raise ValueError(f"unknown operation {name_or_symbol!r}; choose one of "
                         f"{', '.join(OPERATIONS)} (or {' '.join(BY_SYMBOL)})")
    return found


# ----------------------------------------------------------------------------------------------
# Subtraction and multiplication, vectorised over operand columns a, b ([rows] each)
# ----------------------------------------------------------------------------------------------

def subtraction_columns_array(a: np.ndarray, b: np.ndarray, width: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per column j < width: the signed column result ``a_j - b_j - borrow_in`` and the borrow into it."""
    results, borrows_in = [], []
    borrow = np.zeros(len(a), dtype=np.int64)
    for column in range(width):
        borrows_in.append(borrow)
        result = a // 10**column % 10 - b // 10**column % 10 - borrow
        results.append(result)
        borrow = (result < 0).astype(np.int64)
    return results, borrows_in


def count_borrows_array(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``count_borrows`` of every row (the columns of ``a``; ``a >= b`` makes the last column's borrow 0)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    results, _ = subtraction_columns_array(a, b, int(num_digits_array(a).max(initial=1)))
    return sum(((r < 0).astype(np.int64) for r in results), np.zeros(len(a), dtype=np.int64))


@dataclass
class MulArrays:
    """Every step of every row's multiplication trace: ``totals[j][i]``, ``sum_digits[j][i]`` and
    ``carries_in[j][i]`` are ``[rows]`` arrays for row j (digit of b) and column i (digit of a); entries beyond a
    row's operand lengths are 0. ``running[j]`` is ``a * (b mod 10^(j+1))``."""

    totals: list[list[np.ndarray]]
    sum_digits: list[list[np.ndarray]]
    carries_in: list[list[np.ndarray]]
    running: list[np.ndarray]


def multiplication_arrays(a: np.ndarray, b: np.ndarray, width_a: int, width_b: int) -> MulArrays:
    """``multiplication_table`` for every row at once (up to ``width_a`` x ``width_b`` digits)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    totals, sum_digits, carries_in, running = [], [], [], []
    so_far = np.zeros(len(a), dtype=np.int64)
    for j in range(width_b):
        b_j = b // 10**j % 10
        carry = np.zeros(len(a), dtype=np.int64)
        row_totals, row_sums, row_carries = [], [], []
        for i in range(width_a):
            sum_digit = so_far // 10 ** (i + j) % 10
            total = a // 10**i % 10 * b_j + sum_digit + carry
            row_totals.append(total)
            row_sums.append(sum_digit)
            row_carries.append(carry)
            carry = total // 10
        so_far = so_far + a * b_j * 10**j
        totals.append(row_totals)
        sum_digits.append(row_sums)
        carries_in.append(row_carries)
        running.append(so_far)
    return MulArrays(totals, sum_digits, carries_in, running)


def count_multiplication_carries_array(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``count_multiplication_carries`` of every row."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    len_a, len_b = num_digits_array(a), num_digits_array(b)
    arrays = multiplication_arrays(a, b, int(len_a.max(initial=1)), int(len_b.max(initial=1)))
    count = np.zeros(len(a), dtype=np.int64)
    for j, row in enumerate(arrays.totals):
        for i, total in enumerate(row):
            count += (total >= 10) & (i < len_a) & (j < len_b)
    return count


__all__ = ["BY_SYMBOL", "Column", "MulArrays", "MulStep", "OPERATIONS", "Operation", "SubColumn", "addition_columns",
           "addition_steps", "carry_chain_length", "check_operands", "check_pair", "column_totals", "count_borrows",
           "count_borrows_array", "count_carries", "count_carries_array", "count_multiplication_carries",
           "count_multiplication_carries_array", "digit", "format_step", "implied_answer", "multiplication_arrays",
           "multiplication_steps", "multiplication_table", "num_digits", "num_digits_array", "operation",
           "parse_step", "running_sums", "subtraction_columns", "subtraction_columns_array", "subtraction_steps",
           "width"]
