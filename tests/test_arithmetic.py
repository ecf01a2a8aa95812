"""The column arithmetic (mathllm.arithmetic): trace steps, columns, carries, the implied answer, and the
vectorised versions the data generator uses, checked against the one-problem reference."""

import numpy as np
import pytest

from mathllm.arithmetic import (BY_SYMBOL, OPERATIONS, Column, MulStep, addition_columns, addition_steps,
                                carry_chain_length, check_operands, column_totals, count_borrows, count_borrows_array,
                                count_carries, count_carries_array, count_multiplication_carries,
                                count_multiplication_carries_array, digit, format_step, implied_answer,
                                multiplication_arrays, multiplication_steps, multiplication_table, num_digits,
                                num_digits_array, operation, parse_step, running_sums, subtraction_columns,
                                subtraction_columns_array, subtraction_steps, width)


# ----------------------------------------------------------------------------------------------
# One problem at a time
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("operands, steps", [
    ([658, 189], ["8+9=17", "5+8+1=14", "6+1+1=8"]),
    ([12, 34], ["2+4=6", "1+3=4"]),
    ([5, 123], ["5+3=8", "0+2=2", "0+1=1"]),  # a shorter operand's missing digits are 0
    ([999, 1], ["9+1=10", "9+0+1=10", "9+0+1=10"]),  # the carry in is the last term, only when not 0
    ([99, 21, 5], ["9+1+5=15", "9+2+0+1=12"]),
    ([999, 999, 999], ["9+9+9=27", "9+9+9+2=29", "9+9+9+2=29"]),  # with 3 operands the carry can be 2
    ([3, 5], ["3+5=8"]),
])
def test_addition_steps(operands, steps):
    assert addition_steps(operands) == steps


def test_columns_hold_digits_carries_and_totals():
    columns = addition_columns([658, 189])
    assert columns[1] == Column(index=1, digits=(5, 8), carry_in=1, total=14)
    assert [(c.digit_sum, c.carry_out, c.result_digit) for c in columns] == [(17, 1, 7), (13, 1, 4), (7, 0, 8)]
    # beyond the operands a column holds only the carry in: the answer's extra digit
    wide = addition_columns([95, 5], n_columns=3)
    assert [(c.digits, c.carry_in, c.total) for c in wide] == [((5, 5), 0, 10), ((9, 0), 1, 10), ((0, 0), 1, 1)]
    assert sum(c.result_digit * 10**c.index for c in wide) == 100


@pytest.mark.parametrize("operands, carries, chain", [
    ([12, 34], 0, 0),
    ([99, 21], 2, 2),
    ([999, 1], 3, 3),
    ([0, 0], 0, 0),
    ([999, 999, 999], 3, 3),
    ([4999, 5001], 4, 4),
    ([19, 91], 2, 2),
    ([15, 51], 0, 0),
    ([505, 505], 2, 1),  # carries in columns 0 and 2, never two in a row
])
def test_carries_and_the_longest_carry_chain(operands, carries, chain):
    assert count_carries(operands) == carries
    assert carry_chain_length(operands) == chain


def test_the_final_carry_counts_only_inside_the_operands_columns():
    assert count_carries([5, 5]) == 1  # 5+5=10: the units column carries out
    assert count_carries([95, 5]) == 2
    assert addition_columns([95, 5], 3)[2].carry_out == 0


def test_digits_and_widths():
    assert [digit(658, j) for j in range(4)] == [8, 5, 6, 0]
    assert num_digits(0) == 1 and num_digits(658) == 3 and num_digits(10**12) == 13
    assert width([5, 1234, 99]) == 4


def test_bad_operands_are_errors():
    with pytest.raises(ValueError, match="at least 2"):
        addition_steps([5])
    with pytest.raises(ValueError, match="non-negative"):
        count_carries([5, -1])
    with pytest.raises(TypeError):
        check_operands([1.5, 2])
    assert check_operands(np.array([3, 4])) == [3, 4] and all(type(x) is int for x in check_operands(np.array([3, 4])))


def test_steps_parse_and_format_back():
    assert parse_step("5+8+1=14") == ([5, 8, 1], 14)
    assert format_step([5, 8, 1], 14) == "5+8+1=14"
    for step in addition_steps([999, 999, 999]) + addition_steps([658, 189]):
        assert format_step(*parse_step(step)) == step
    for bad in ["8+9", "8+9=", "=17", "a+b=3", "8-9=1", "8+9=17 5+8=13"]:
        with pytest.raises(ValueError, match="not an addition trace step"):
            parse_step(bad)


def test_implied_answer_reads_the_trace_column_by_column():
    assert implied_answer(["8+9=17", "5+8+1=14", "6+1+1=8"]) == 847
    assert implied_answer(["9+1=10", "9+2+1=12"]) == 120
    assert implied_answer(["8+9=13", "5+8+1=14", "6+1+1=8"]) == 843  # a wrong total counts as written
    assert implied_answer(["9+9+9=27", "9+9+9+2=29", "9+9+9+2=29"]) == 2997  # the last carry may exceed 1
    with pytest.raises(ValueError):
        implied_answer(["8+9"])


def test_the_implied_answer_of_the_true_trace_is_the_sum():
    rng = np.random.default_rng(0)
    for _ in range(300):
        operands = [int(x) for x in rng.integers(0, 10 ** rng.integers(1, 6, size=rng.integers(2, 5)))]
        assert implied_answer(addition_steps(operands)) == sum(operands)


# ----------------------------------------------------------------------------------------------
# Vectorised over operand arrays
# ----------------------------------------------------------------------------------------------

def _random_problems(rng, rows, max_operands=4, max_digits=6):
    """Operands of random lengths (zeros and 9s over-represented), 0 past each row's operand count."""
    num_operands = rng.integers(2, max_operands + 1, size=rows)
    lengths = rng.integers(1, max_digits + 1, size=(rows, max_operands))
    operands = rng.integers(0, 10 ** lengths)
    operands[rng.random(operands.shape) < 0.1] = 0
    nines = rng.random(operands.shape) < 0.1
    operands[nines] = 10 ** lengths[nines] - 1
    operands[np.arange(max_operands)[None, :] >= num_operands[:, None]] = 0
    return operands, num_operands


def test_vectorised_carries_equal_the_reference():
    operands, num_operands = _random_problems(np.random.default_rng(1), 3000)
    expected = [count_carries(row[:n]) for row, n in zip(operands.tolist(), num_operands.tolist())]
    assert count_carries_array(operands).tolist() == expected
    assert count_carries_array(np.zeros((0, 2), dtype=np.int64)).tolist() == []


def test_vectorised_column_totals_equal_the_reference():
    operands, num_operands = _random_problems(np.random.default_rng(4), 500)
    totals, carries_in = column_totals(operands, width=7)
    assert len(totals) == len(carries_in) == 7
    for i, (row, n) in enumerate(zip(operands.tolist(), num_operands.tolist())):
        for c in addition_columns(row[:n], n_columns=7):
            assert (totals[c.index][i], carries_in[c.index][i]) == (c.total, c.carry_in)


def test_vectorised_digit_counts():
    values = np.array([0, 9, 10, 99, 100, 123456, 10**17])
    assert num_digits_array(values).tolist() == [num_digits(int(v)) for v in values]


# ----------------------------------------------------------------------------------------------
# Subtraction and multiplication, one problem at a time
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, steps, borrows", [
    (658, 189, ["8-9=-1", "5-8-1=-4", "6-1-1=4"], 2),  # the examples
    (105, 99, ["5-9=-4", "0-9-1=-10", "1-0-1=0"], 2),
    (7, 3, ["7-3=4"], 0),
    (1000, 1, ["0-1=-1", "0-0-1=-1", "0-0-1=-1", "1-0-1=0"], 3),  # a borrow ripples through the zeros
    (500, 500, ["0-0=0", "0-0=0", "5-5=0"], 0),
    (31, 7, ["1-7=-6", "3-0-1=2"], 1),  # b's absent digits are 0
])
def test_subtraction_steps_and_borrows(a, b, steps, borrows):
    assert subtraction_steps(a, b) == steps
    assert count_borrows(a, b) == borrows
    columns = subtraction_columns(a, b)
    assert sum(c.result_digit * 10**c.index for c in columns) == a - b
    assert [c.borrow_out for c in columns][-1] == 0  # a >= b: nothing is owed after the last column


def test_subtraction_needs_a_at_least_b_and_two_operands():
    with pytest.raises(ValueError, match="a >= b"):
        subtraction_steps(3, 7)
    with pytest.raises(ValueError, match="exactly 2 operands"):
        operation("-").answer([9, 5, 1])
    with pytest.raises(ValueError, match="non-negative"):
        operation("*").steps([-1, 5])


@pytest.mark.parametrize("a, b, items", [
    (7, 8, ["7*8=56"]),
    (12, 34, ["2*4=8", "1*4=4", "48", "2*3+4=10", "1*3+0+1=4"]),
    (123, 456, ["3*6=18", "2*6+1=13", "1*6+1=7", "738", "3*5+3=18", "2*5+7+1=18", "1*5+0+1=6", "6888", "3*4+8=20",
                "2*4+6+2=16", "1*4+0+1=5"]),
    (99, 9, ["9*9=81", "9*9+8=89"]),  # one row: no running sum is written (the answer is the last one)
    (0, 57, ["0*7=0", "0", "0*5+0=0"]),
    (5, 0, ["5*0=0"]),
])
def test_multiplication_steps(a, b, items):
    assert multiplication_steps(a, b) == items
    assert running_sums(a, b)[-1] == a * b


def test_multiplication_steps_hold_their_parts():
    step = multiplication_table(123, 456)[4]
    assert step == MulStep(row=1, column=1, a=2, b=5, sum_digit=7, carry_in=1, total=18)
    assert (step.step, step.carry_out) == ("2*5+7+1=18", 1)
    assert count_multiplication_carries(12, 34) == 1 and count_multiplication_carries(99, 99) == 4
    worst = multiplication_table(9999, 9999)
    assert max(s.total for s in worst) <= 99 and max(s.carry_in for s in worst) <= 9  # every step fits two digits


def test_the_operation_table():
    assert [op.symbol for op in OPERATIONS.values()] == ["+", "-", "*"] and BY_SYMBOL["-"].name == "sub"
    for name, operands, answer, count in [("add", [658, 189], 847, 2), ("sub", [658, 189], 469, 2),
                                          ("mul", [658, 189], 124362, operation("mul").count([658, 189]))]:
        op = operation(name)
        assert operation(op.symbol) is op and op.answer(operands) == answer and op.count(operands) == count
        assert op.prompt(operands) == f"658{op.symbol}189="
    assert [operation(s).has_think(ops) for s, ops in [("+", [3, 5]), ("-", [7, 3]), ("*", [7, 8]), ("-", [10, 3])]] \
        == [False, False, True, True]
    with pytest.raises(ValueError, match="unknown operation '/'"):
        operation("/")


def test_vectorised_subtraction_and_multiplication_equal_the_reference():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 10 ** rng.integers(1, 6, size=2000))
    b = np.minimum(rng.integers(0, 10 ** rng.integers(1, 6, size=2000)), a)
    assert count_borrows_array(a, b).tolist() == [count_borrows(x, y) for x, y in zip(a.tolist(), b.tolist())]
    results, borrows_in = subtraction_columns_array(a, b, 5)
    for i in range(0, 2000, 37):
        for c in subtraction_columns(int(a[i]), int(b[i])):
            assert (results[c.index][i], borrows_in[c.index][i]) == (c.result, c.borrow_in)
    c = rng.integers(0, 10 ** rng.integers(1, 5, size=2000))
    assert count_multiplication_carries_array(a, c).tolist() == [count_multiplication_carries(x, y)
                                                                  for x, y in zip(a.tolist(), c.tolist())]
    arrays = multiplication_arrays(a, c, 5, 4)
    for i in range(0, 2000, 41):
        for s in multiplication_table(int(a[i]), int(c[i])):
            assert arrays.totals[s.row][s.column][i] == s.total
            assert arrays.carries_in[s.row][s.column][i] == s.carry_in
            assert arrays.sum_digits[s.row][s.column][i] == (s.sum_digit or 0)
        assert arrays.running[3][i] == a[i] * c[i]
