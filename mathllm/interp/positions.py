"""Where things are in a sequence, what the reasoning needs to know, and problems to look at.

**Position kinds** name every token by its role, so that positions line up across problems of different
lengths. For ``658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>``::

    6   5   8   +   1   8   9   =   <think>  8     +      9     =     1     7     sp    5    ...
    a2  a1  a0  +b  b2  b1  b0  =   <think>  s0.a  s0.+b  s0.b  s0.=  s0.r1 s0.r0 s0.sp s1.a ...

    ... 5+8+1=14:  s1.a s1.+b s1.b s1.+carry s1.carry s1.= s1.r1 s1.r0
    ... </think>847<end>:  </think> ans2 ans1 ans0 <end>

Operands are ``a, b, c, ...``; digits are numbered by column from the least significant (``a0`` is the units
digit of the first operand), so ``a0`` is the same kind in ``7+5`` and in ``658+189``. Step ``k`` of the think
block works on column ``k``; its result digits are ``r0`` (the column's output digit) and ``r1`` (the carry out,
present only when there is one). Answer digits are numbered from the least significant too.

Subtraction (``658-189=<think>8-9=-1 5-8-1=-4 6-1-1=4</think>469<end>``): the operator is ``-b``; step 1,
``5-8-1=-4``, is ``s1.a s1.-b s1.b s1.-borrow s1.borrow s1.= s1.sign s1.r0`` (``sign`` is the minus of a negative
column result; ``0-9-1=-10`` has ``s1.r1`` too).

Multiplication (``12*34=<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>408<end>``): the operator is ``*b``; steps
are numbered in trace order (row by row); step 3, ``2*3+4=10``, is ``s3.a s3.*b s3.b s3.+rs s3.rs s3.= s3.r1
s3.r0`` (``rs``: the running sum's digit added in, present from the second row on), step 4 ``1*3+0+1=4`` adds
``s4.+carry s4.carry``; the running sum written out after step 1, ``48``, is ``s1.sum1 s1.sum0`` and the space
after it ``s1.sum.sp``.

**Quantities** are what a correct procedure must compute, per problem (``quantities``): the carry into each
column, each column's digit sum, each answer digit, each operand digit, and (in ``label_table``) a ``random``
label that the input does not determine, the probes' negative control.

**Problems**: ``sample_problems`` draws distinct problems with a given number of digits; ``heldout_problems``
leaves out every problem a checkpoint was trained (or validated) on.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mathllm.arithmetic import addition_columns, digit
from mathllm.checkpoints import TrainedModel, dataset_for_checkpoint
from mathllm.data import make_example
from mathllm.tokenizer import TOKENIZER

LETTERS = "abcdefghij"  # operand names, in order (mathllm allows at most 10 operands)


# ----------------------------------------------------------------------------------------------
# Position kinds
# ----------------------------------------------------------------------------------------------

def _as_tokens(text_or_tokens: str | Sequence[int] | Sequence[str] | Any) -> list[str]:
    if isinstance(text_or_tokens, str):
        return TOKENIZER.str_tokens(text_or_tokens)
    if hasattr(text_or_tokens, "tolist"):
        text_or_tokens = text_or_tokens.tolist()
    items = list(text_or_tokens)
    if items and all(isinstance(t, str) for t in items):
        return items
    return TOKENIZER.str_tokens([int(t) for t in items])


def _term_name(index: int, num_operands: int, symbol: str = "+", row: int = 0) -> str:
    """The name of term ``index`` of a step: operands, then what the operation adds (carry, borrow, running sum)."""
    if symbol == "-":
        return ("a", "b", "borrow")[index] if index < 3 else f"t{index}"
    if symbol == "*":
        extra = ("rs", "carry") if row else ("carry",)
        names = ("a", "b", *extra)
        return names[index] if index < len(names) else f"t{index}"
    if index < num_operands:
        return LETTERS[index]
    return "carry" if index == num_operands else f"t{index}"


def position_kinds(text_or_tokens: str | Sequence[int] | Sequence[str]) -> list[str]:
    """One kind per token (see the module docstring); ``<pad>`` stays ``<pad>``.

    >>> position_kinds("12+3=15<end>")
    ['a1', 'a0', '+b', 'b0', '=', 'ans1', 'ans0', '<end>']
    >>> position_kinds("31-7=<think>1-7=-6 3-0-1=2</think>24<end>")[5:13]
    ['<think>', 's0.a', 's0.-b', 's0.b', 's0.=', 's0.sign', 's0.r0', 's0.sp']

    Anything that does not parse as a problem in the project's formats (a model's malformed output) gets
    ``?<index>``, never an exception.
    """
    tokens = _as_tokens(text_or_tokens)
    kinds = [f"?{i}" for i in range(len(tokens))]
    for i, tok in enumerate(tokens):
        if tok == "<pad>":
            kinds[i] = "<pad>"
    if "=" not in tokens:
        return kinds
    eq = tokens.index("=")
    symbols = [t for t in tokens[:eq] if t in "+-*"]
    symbol = symbols[0] if symbols else "+"
    # The prompt: operands separated by the operator.
    groups: list[list[int]] = [[]]
    for i in range(eq):
        if tokens[i] in "+-*":
            groups.append([])
            kinds[i] = f"{tokens[i]}{LETTERS[len(groups) - 1]}" if len(groups) - 1 < len(LETTERS) else f"?{i}"
        elif tokens[i].isdigit():
            groups[-1].append(i)
    num_operands = len(groups)
    for j, group in enumerate(groups[: len(LETTERS)]):
        for t, i in enumerate(group):
            kinds[i] = f"{LETTERS[j]}{len(group) - 1 - t}"
    kinds[eq] = "="
    i = eq + 1
    if i < len(tokens) and tokens[i] == "<think>":
        kinds[i] = "<think>"
        i += 1
        step, row, term, after_equals, result, item = 0, 0, 0, False, [], []

        def close_item(space: int | None) -> None:
            """Name what the item that ends here wrote: a step's result digits, or a bare running sum."""
            nonlocal step, row
            if symbol == "*" and not after_equals and item and term == 0 and step:  # a running sum, e.g. 738
                for t, r in enumerate(item):
                    kinds[r] = f"s{step - 1}.sum{len(item) - 1 - t}"
                if space is not None:
                    kinds[space] = f"s{step - 1}.sum.sp"
                row += 1
                return
            for t, r in enumerate(result):
                kinds[r] = f"s{step}.r{len(result) - 1 - t}"
            if space is not None:
                kinds[space] = f"s{step}.sp"
            step += 1

        while i < len(tokens) and tokens[i] not in ("</think>", "<end>", "<pad>"):
            tok = tokens[i]
            if tok == " ":
                close_item(i)
                term, after_equals, result, item = 0, False, [], []
            elif tok == "=" and not after_equals:
                kinds[i] = f"s{step}.="
                after_equals = True
            elif tok in "+-*" and not after_equals:
                term += 1
                kinds[i] = f"s{step}.{tok}{_term_name(term, num_operands, symbol, row)}"
            elif tok == "-" and after_equals and not result:
                kinds[i] = f"s{step}.sign"
            elif tok.isdigit():
                if after_equals:
                    result.append(i)
                else:
                    item.append(i)
                    kinds[i] = f"s{step}.{_term_name(term, num_operands, symbol, row)}"
            i += 1
        close_item(None)
        if i < len(tokens) and tokens[i] == "</think>":
            kinds[i] = "</think>"
            i += 1
    answer = []
    while i < len(tokens) and tokens[i].isdigit():
        answer.append(i)
        i += 1
    for t, a in enumerate(answer):
        kinds[a] = f"ans{len(answer) - 1 - t}"
    if i < len(tokens) and tokens[i] == "<end>":
        kinds[i] = "<end>"
    return kinds


_OPERAND_DIGIT = re.compile(r"^([a-j])(\d+)$")
_STEP = re.compile(r"^s(\d+)\.(.+)$")


def _term_rank(name: str) -> int:
    if name in LETTERS:
        return LETTERS.index(name)
    if name == "rs":
        return 15
    if name in ("carry", "borrow"):
        return 20
    return 30 + int(name[1:]) if name[1:].isdigit() else 99


def kind_sort_key(kind: str) -> tuple:
    """Orders kinds as they appear in a sequence: ``sorted(kinds, key=kind_sort_key)``."""
    if kind[:1] in ("+", "-", "*") and kind[1:] in LETTERS:
        return (0, LETTERS.index(kind[1:]), -1000, "")
    m = _OPERAND_DIGIT.match(kind)
    if m:
        return (0, LETTERS.index(m.group(1)), -int(m.group(2)), "")
    fixed = {"=": 1, "<think>": 2, "</think>": 4, "<end>": 6, "<pad>": 8}
    if kind in fixed:
        return (fixed[kind], 0, 0, "")
    m = _STEP.match(kind)
    if m:
        step, part = int(m.group(1)), m.group(2)
        if part[:1] in ("+", "-", "*"):
            within = 2 * _term_rank(part[1:]) - 1
        elif part == "=":
            within = 1000
        elif part == "sign":
            within = 1500
        elif part.startswith("r") and part[1:].isdigit():
            within = 2000 - int(part[1:])
        elif part == "sp":
            within = 3000
        elif part.startswith("sum") and part[3:].isdigit():
            within = 4000 - int(part[3:])
        elif part == "sum.sp":
            within = 5000
        else:
            within = 2 * _term_rank(part)
        return (3, step, within, "")
    if kind.startswith("ans") and kind[3:].isdigit():
        return (5, -int(kind[3:]), 0, "")
    return (7, 0, 0, kind)


def sort_kinds(kinds: Iterable[str]) -> list[str]:
    """The distinct kinds in sequence order."""
    return sorted(set(kinds), key=kind_sort_key)


def kind_counts(examples: Iterable[Mapping[str, Any] | str]) -> dict[str, int]:
    """In how many examples each kind occurs, in sequence order."""
    counts: Counter = Counter()
    for ex in examples:
        counts.update(set(position_kinds(ex if isinstance(ex, str) else ex["text"])))
    return {k: counts[k] for k in sort_kinds(counts)}


def position_of(kinds: Sequence[str], kind: str) -> int:
    """Index of ``kind`` in a sequence's kinds; ``ValueError`` naming the kinds present when it is absent."""
    try:
        return list(kinds).index(kind)
    except ValueError:
        raise ValueError(f"no position of kind {kind!r}; this sequence has {list(kinds)}") from None


def axis_labels(text_or_tokens, kinds: Sequence[str] | None = None) -> list[str]:
    """``"6 a2"``-style labels (token, then kind) for plot axes; unique because kinds are."""
    tokens = _as_tokens(text_or_tokens)
    kinds = position_kinds(tokens) if kinds is None else kinds
    short = {"<think>": "<th>", "</think>": "</th>", " ": "␣"}
    return [f"{short.get(t, t)} {k}" for t, k in zip(tokens, kinds)]


# ----------------------------------------------------------------------------------------------
# Quantities the reasoning needs
# ----------------------------------------------------------------------------------------------

def quantities(operands: Sequence[int], width: int | None = None) -> dict[str, int]:
    """What a correct procedure computes for one problem, by name (columns counted from the units).

    * ``carry_in[i]``: the carry into column i, for i = 1..width (``carry_in[width]`` is the final carry);
    * ``digit_sum[i]``: the sum of the operands' digits in column i (without the carry), i < width;
    * ``answer[i]``: digit i of the sum, i = 0..width (0 where the sum is shorter);
    * ``a[i]``, ``b[i]``, ...: the operands' digits (0 where an operand is shorter).

    ``width`` (default: the longest operand) fixes the set of names, so problems of different lengths share
    it.

    >>> q = quantities([658, 189]); q["carry_in[1]"], q["digit_sum[1]"], q["answer[0]"], q["b[2]"]
    (1, 13, 7, 1)
    """
    columns = addition_columns(operands, width)
    out: dict[str, int] = {f"carry_in[{c.index + 1}]": c.carry_out for c in columns}
    out.update({f"digit_sum[{c.index}]": c.digit_sum for c in columns})
    total = sum(operands)
    out.update({f"answer[{i}]": digit(total, i) for i in range(len(columns) + 1)})
    for j, x in enumerate(operands):
        out.update({f"{LETTERS[j]}[{i}]": digit(x, i) for i in range(len(columns))})
    return out


QUANTITY_HELP = {
    "carry_in": "carry into the column",
    "digit_sum": "sum of the column's digits (no carry)",
    "answer": "digit of the answer",
    "random": "random label the input does not determine (negative control)",
}


def describe_quantity(name: str) -> str:
    """``"carry_in[1]"`` -> ``"carry into column 1"``."""
    m = re.match(r"^(\w+)\[(\d+)\]$", name)
    if m and m.group(1) == "answer":
        return f"digit {m.group(2)} of the answer (from the units)"
    if m and m.group(1) in QUANTITY_HELP:
        return f"{QUANTITY_HELP[m.group(1)].replace('the column', f'column {m.group(2)}')}"
    if m and m.group(1) in LETTERS:
        return f"operand {m.group(1)}, digit of column {m.group(2)}"
    return QUANTITY_HELP.get(name, name)


def label_table(examples: Sequence[Mapping[str, Any]], width: int | None = None, seed: int = 0,
                random_classes: int = 10) -> dict[str, np.ndarray]:
    """Every quantity for every example, ``{name: int array [n_examples]}``, plus ``random``: a label drawn
    independently of the problem (uniform over ``random_classes`` values, seeded), the probes' negative
    control."""
    if not examples:
        raise ValueError("label_table needs at least one example")
    width = max(len(str(x)) for ex in examples for x in ex["operands"]) if width is None else width
    names: list[str] | None = None
    rows = []
    for ex in examples:
        q = quantities(ex["operands"], width)
        if names is None:
            names = list(q)
        rows.append([q.get(name, 0) for name in names])
    table = np.asarray(rows, dtype=np.int64)
    out = {name: table[:, i] for i, name in enumerate(names or [])}
    out["random"] = np.random.default_rng(seed).integers(0, random_classes, len(examples))
    return out


# ----------------------------------------------------------------------------------------------
# Problems to look at
# ----------------------------------------------------------------------------------------------

def sample_problems(n: int, num_digits: int | Sequence[int] = 3, num_operands: int = 2, seed: int = 0,
                    exclude: Iterable[tuple[int, ...]] | None = None, fmt: str = "cot",
                    where=None, max_tries: int = 200) -> list[dict[str, Any]]:
    """``n`` distinct problems (``make_example`` dicts) whose operands have exactly ``num_digits`` digits
    (one number for all operands, or one per operand), drawn uniformly, skipping the operand tuples in
    ``exclude`` and those for which ``where(operands)`` is false. Raises when too few exist."""
    digits = [num_digits] * num_operands if isinstance(num_digits, int) else list(num_digits)
    if len(digits) != num_operands:
        raise ValueError(f"num_digits {num_digits!r} does not give one length per operand ({num_operands})")
    low = np.array([0 if d == 1 else 10 ** (d - 1) for d in digits])
    high = np.array([10**d for d in digits])
    excluded = set(map(tuple, exclude)) if exclude is not None else set()
    rng = np.random.default_rng(seed)
    chosen: dict[tuple[int, ...], None] = {}
    for _ in range(max_tries):
        batch = rng.integers(low, high, size=(max(2 * (n - len(chosen)), 64), num_operands))
        for row in map(tuple, batch.tolist()):
            if row in chosen or row in excluded or (where is not None and not where(row)):
                continue
            chosen[row] = None
            if len(chosen) == n:
                return [make_example(list(ops), fmt) for ops in chosen]
    raise ValueError(f"found only {len(chosen)} of the {n} problems asked for with {digits} digits "
                     f"(after excluding {len(excluded):,} and applying the filter)")


def training_problems(checkpoint) -> set[tuple[int, ...]] | None:
    """The operand tuples of a checkpoint's train and val splits (regenerated from its recorded data
    arguments), or None when the checkpoint has no record of its data."""
    if isinstance(checkpoint, TrainedModel):
        checkpoint = checkpoint.path
    try:
        dataset = dataset_for_checkpoint(checkpoint)
    except ValueError:
        return None
    seen: set[tuple[int, ...]] = set()
    for name in ("train", "val"):
        if name in dataset.splits:
            seen.update(dataset[name].operand_tuples())
    return seen


def heldout_problems(checkpoint, n: int, num_digits: int | Sequence[int] = 3, num_operands: int = 2,
                     seed: int = 0, fmt: str = "cot", where=None) -> list[dict[str, Any]]:
    """``sample_problems`` minus every problem the checkpoint was trained or validated on."""
    seen = training_problems(checkpoint)
    if seen is None:
        warnings.warn(f"{checkpoint}: no record of its training data; problems are not checked against it",
                      stacklevel=2)
    return sample_problems(n, num_digits, num_operands, seed=seed, exclude=seen, fmt=fmt, where=where)


def template_of(example_or_operands) -> tuple[str, ...]:
    """The kind sequence of a problem's full text: problems with the same template line up token by token.

    ``template_of([658, 189]) == template_of([537, 285])`` (same lengths, same carries).
    """
    if isinstance(example_or_operands, Mapping):
        text = example_or_operands["text"]
    elif isinstance(example_or_operands, str):
        text = example_or_operands
    else:
        text = make_example(list(example_or_operands))["text"]
    return tuple(position_kinds(text))


def same_template_problems(like: Sequence[int] | str, n: int, seed: int = 0,
                           exclude: Iterable[tuple[int, ...]] | None = None) -> list[dict[str, Any]]:
    """``n`` problems whose text lines up with ``like`` (e.g. ``[658, 189]`` or ``"658+189"``) token by token:
    the same operand lengths and the same carries."""
    operands = _parse_operands(like)
    target = template_of(operands)
    lengths = [len(str(x)) for x in operands]
    return sample_problems(n, lengths, len(operands), seed=seed, exclude=exclude,
                           where=lambda ops: template_of(ops) == target)


def _parse_operands(like: Sequence[int] | str) -> list[int]:
    if isinstance(like, str):
        return [int(x) for x in like.split("=")[0].split("+")]
    return [int(x) for x in like]


__all__ = [
    "LETTERS", "position_kinds", "kind_sort_key", "sort_kinds", "kind_counts", "position_of", "axis_labels",
    "quantities", "describe_quantity", "label_table", "sample_problems", "training_problems",
    "heldout_problems", "template_of", "same_template_problems",
]
