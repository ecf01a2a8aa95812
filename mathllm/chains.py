"""Carry chains: how far a carry ripples, problems where it ripples far, and accuracy by chain length.

A column *carries* when its digits plus the carry coming in reach 10. A **carry chain** is a run of consecutive
columns that all carry; a problem's chain length k is its longest run (``4999+5001``: every column carries, k=4;
``99+1``: k=2; ``12+34``: k=0). Uniform random problems rarely have long chains (8-digit addition: about 1 in
10^5 has k=8), so a uniform test set hides a model that cannot ripple a carry far; the sets here have exactly k::

    >>> carry_chain([4999, 5001]), carry_chain([99, 1]), carry_chain([12, 34]), carry_chain([658, 189])
    (4, 2, 0, 2)
    >>> sets = chain_test_sets(4, per_k=5, n_uniform=10, seed=0)
    >>> sorted(sets), [carry_chain(p) for p in sets["k3"]]
    (['k0', 'k1', 'k2', 'k3', 'k4', 'uniform'], [3, 3, 3, 3, 3])

* ``planted_problem``: two operands whose longest chain is exactly k (a generating column, k - 1 propagating
  columns above it, a column that stops the carry), digits otherwise uniform;
* ``plant_chains``: replace a share of training lines by planted problems of the same operand lengths (the trainer's
  ``--planted-chains``: plain problems with their answers, no labels of any kind);
* ``uniform_dataset``: train/val/test with operand lengths uniform in 1..N and uniform digits (where long chains
  are rare), written by ``write_examples`` in the format of ``mathllm.data``;

``mathllm.depth.evaluate_chains`` measures exact match on a uniform set and on each chain length k
(``scripts/evaluate.py --carry-chains``).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from mathllm.arithmetic import carry_chain_length as carry_chain  # re-exported: the carry chain of a problem
from mathllm.data import make_example
from mathllm.text import parse_prompt, split_text
from mathllm.utils import atomic_write_bytes, code_version

TEST_SEED = 1234  # the prototype's test seed: the same sets for every model


# ----------------------------------------------------------------------------------------------
# Chains
# ----------------------------------------------------------------------------------------------

def _number(rng: random.Random, length: int) -> int:
    return rng.randrange(10) if length == 1 else rng.randrange(10 ** (length - 1), 10**length)


def uniform_problem(rng: random.Random, max_digits: int) -> tuple[int, int]:
    """Two operands, each of a length uniform in 1..max_digits, digits uniform (no leading zero)."""
    return _number(rng, rng.randint(1, max_digits)), _number(rng, rng.randint(1, max_digits))


def planted_problem(rng: random.Random, max_digits: int, k: int,
                    lengths: Optional[tuple[int, int]] = None, tries: int = 1000) -> tuple[int, int]:
    """Two operands whose longest carry chain is exactly ``k`` (1..max_digits): column s generates (its digits sum
    to 10..18), the next k - 1 columns propagate (they sum to 9), the column after them stops the carry (sums to at
    most 8); every other digit is uniform. ``lengths`` fixes the operands' lengths (else uniform in 1..max_digits,
    redrawn until the chain fits). A draw whose other digits make a longer chain is drawn again.

    >>> rng = random.Random(0)
    >>> all(carry_chain(planted_problem(rng, 8, k)) == k for k in range(1, 9) for _ in range(20))
    True
    """
    if not 1 <= k <= max_digits:
        raise ValueError(f"a planted chain needs 1 <= k <= max_digits ({max_digits}), got {k}")
    if lengths is not None and not (1 <= min(lengths) and max(lengths) <= max_digits and k <= max(lengths)):
        raise ValueError(f"no chain of {k} fits operands of lengths {lengths}")
    for _ in range(tries):
        la, lb = lengths if lengths is not None else (rng.randint(1, max_digits), rng.randint(1, max_digits))
        lo, hi = min(la, lb), max(la, lb)
        top = min(lo - 1, hi - k)
        if top < 0:
            continue
        s = rng.randint(0, top)
        a = [rng.randrange(10) for _ in range(la)]  # least significant digit first
        b = [rng.randrange(10) for _ in range(lb)]
        total = rng.randint(10, 18)
        a[s] = rng.randint(total - 9, 9)
        b[s] = total - a[s]
        for c in range(s + 1, s + k):
            if c < la and c < lb:
                a[c] = rng.randint(0, 9)
                b[c] = 9 - a[c]
            elif c < la:
                a[c] = 9
            else:
                b[c] = 9
        c = s + k
        if c < hi:  # the carry stops here: the column's digits sum to at most 8
            if c < la and c < lb:
                t = rng.randint(0, 8)
                a[c] = rng.randint(0, t)
                b[c] = t - a[c]
            elif c < la:
                a[c] = rng.randint(0, 8)
            else:
                b[c] = rng.randint(0, 8)
        if (la > 1 and a[-1] == 0) or (lb > 1 and b[-1] == 0):
            continue
        x, y = int("".join(map(str, a[::-1]))), int("".join(map(str, b[::-1])))
        if carry_chain([x, y]) == k:
            return x, y
    raise ValueError(f"could not plant a chain of {k} in {tries} draws (lengths {lengths})")


def chain_problems(rng: random.Random, max_digits: int, k: int, count: int,
                   exclude: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """``count`` distinct problems with operands of 1..max_digits digits and longest chain exactly ``k`` (0: no carry
    at all, drawn uniformly and kept when they have none)."""
    seen, out = set(exclude), []
    for _ in range(count * 2000):
        if len(out) == count:
            break
        if k == 0:
            pair = uniform_problem(rng, max_digits)
            if carry_chain(pair):
                continue
        else:
            pair = planted_problem(rng, max_digits, k)
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    if len(out) < count:
        raise ValueError(f"found only {len(out)} distinct problems with a chain of {k} ({max_digits} digits)")
    return out


def chain_test_sets(max_digits: int, per_k: int = 300, n_uniform: int = 2000,
                    seed: int = TEST_SEED) -> dict[str, list[tuple[int, int]]]:
    """``{"uniform": ..., "k0": ..., ..., "k{max_digits}": ...}``: ``n_uniform`` uniform problems (lengths uniform in
    1..max_digits) and ``per_k`` distinct problems for each chain length k (the prototype's test sets, same seed)."""
    rng = random.Random(seed)
    sets = {"uniform": [uniform_problem(rng, max_digits) for _ in range(n_uniform)]}
    for k in range(max_digits + 1):
        sets[f"k{k}"] = chain_problems(rng, max_digits, k, per_k)
    return sets


def chain_examples(pairs: Iterable[Sequence[int]], fmt: str = "cot") -> list[dict[str, Any]]:
    """``mathllm.data.make_example`` lines, each with its ``carry_chain``."""
    return [{**make_example(list(p), fmt), "carry_chain": carry_chain(p)} for p in pairs]


# ----------------------------------------------------------------------------------------------
# Training data
# ----------------------------------------------------------------------------------------------

def _format_of(texts: Sequence[str]) -> str:
    """The data format of lines (``cot``, ``plain`` or ``reversed``), read from their answers."""
    for text in texts:
        parts = split_text(text)
        if parts.think is not None:
            return "cot"
        op, operands = parse_prompt(parts.prompt)
        answer = parts.answer[: -len("<end>")] if parts.answer.endswith("<end>") else parts.answer
        true = str(sum(operands)) if op == "+" else None
        if true is not None and true != true[::-1]:
            return "plain" if answer == true else "reversed"
    return "cot"


def plant_chains(texts: Sequence[str], share: float, seed: int, fmt: Optional[str] = None,
                 exclude: Iterable[str] = ()) -> tuple[list[str], dict[str, Any]]:
    """Replace ``share`` of the two-operand addition lines of ``texts`` (chosen with ``seed``) by planted problems of
    the same operand lengths, their chain length k uniform in 1..longest operand, rendered in ``fmt`` (default: the
    lines' own). Prompts in ``exclude`` (the validation and test problems) are never planted. Returns the new lines
    and a summary (how many were replaced, per k).

    >>> lines = [f"{a}+{b}={a + b}<end>" for a, b in [(12, 34), (5, 6), (123, 45), (7, 1)]]
    >>> new, summary = plant_chains(lines, 0.5, seed=0)
    >>> summary["replaced"], sum(a != b for a, b in zip(lines, new)) <= 2
    (2, True)
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"--planted-chains must be in [0, 1], got {share}")
    texts = list(texts)
    candidates = []
    for i, text in enumerate(texts):
        try:
            op, operands = parse_prompt(split_text(text).prompt)
        except ValueError:
            continue
        if op == "+" and len(operands) == 2:
            candidates.append((i, operands))
    rng = random.Random(seed)
    chosen = rng.sample(candidates, round(share * len(candidates)))
    fmt = fmt or _format_of(texts)
    banned = set(exclude)
    by_k: dict[int, int] = {}
    for i, operands in sorted(chosen):
        lengths = (len(str(operands[0])), len(str(operands[1])))
        for _ in range(100):
            k = rng.randint(1, max(lengths))
            pair = planted_problem(rng, max(lengths), k, lengths)
            text = make_example(list(pair), fmt)["text"]
            if split_text(text).prompt not in banned:
                texts[i] = text
                by_k[k] = by_k.get(k, 0) + 1
                break
    summary = {"share": share, "seed": seed, "replaced": sum(by_k.values()), "candidates": len(candidates),
               "by_chain_length": {str(k): by_k[k] for k in sorted(by_k)}, "format": fmt}
    return texts, summary


def uniform_dataset(num_examples: int, max_digits: int, seed: int = 0, fmt: str = "cot", val_examples: int = 2000,
                    test_examples: int = 2000) -> dict[str, list[dict[str, Any]]]:
    """``{"train", "val", "test"}`` of distinct two-operand additions, operand lengths uniform in 1..max_digits and
    digits uniform (``uniform_problem``), each line with its ``carry_chain``: the data where long chains are rare.

    >>> splits = uniform_dataset(50, 3, seed=0, val_examples=5, test_examples=5)
    >>> [len(splits[s]) for s in ("train", "val", "test")], splits["train"][0]["text"]
    ([40, 5, 5], '66+366=<think>6+6=12 6+6+1=13 0+3+1=4</think>432<end>')
    """
    total = num_examples
    if val_examples + test_examples >= total:
        raise ValueError(f"{num_examples} examples leave none for training after {val_examples} + {test_examples}")
    rng = random.Random(seed)
    seen: dict[tuple[int, int], None] = {}
    for _ in range(total * 50):
        if len(seen) == total:
            break
        seen.setdefault(uniform_problem(rng, max_digits))
    if len(seen) < total:
        raise ValueError(f"only {len(seen)} distinct problems of up to {max_digits} digits were drawn")
    pairs = list(seen)
    test, val, train = (pairs[:test_examples], pairs[test_examples : test_examples + val_examples],
                        pairs[test_examples + val_examples :])
    return {"train": chain_examples(train, fmt), "val": chain_examples(val, fmt), "test": chain_examples(test, fmt)}


def write_examples(splits: Mapping[str, Sequence[Mapping[str, Any]]], output_dir: str | os.PathLike,
                   arguments: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``{split}.jsonl`` (one example a line) and a ``meta.json`` recording ``arguments`` (with the name of the
    function that made the data under ``"generator"``, so ``mathllm.checkpoints.dataset_for_checkpoint`` can call
    it) and the code version."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, examples in splits.items():
        paths[name] = output_dir / f"{name}.jsonl"
        atomic_write_bytes(paths[name], "".join(json.dumps(ex) + "\n" for ex in examples).encode())
    chains: dict[str, int] = {}
    for ex in splits.get("train", []):
        chains[str(ex.get("carry_chain"))] = chains.get(str(ex.get("carry_chain")), 0) + 1
    meta = {"arguments": dict(arguments), "counts": {name: len(ex) for name, ex in splits.items()},
            "num_examples": sum(len(ex) for ex in splits.values()),
            "train_carry_chain_counts": dict(sorted(chains.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1)),
            "files": {name: p.name for name, p in paths.items()}, "code_version": code_version()}
    paths["meta"] = output_dir / "meta.json"
    atomic_write_bytes(paths["meta"], (json.dumps(meta, indent=2) + "\n").encode())
    return paths


def regenerate(arguments: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The splits a ``meta.json`` made by ``write_examples`` describes, made again."""
    args = dict(arguments)
    generator = args.pop("generator", None)
    if generator != "mathllm.chains.uniform_dataset":
        raise ValueError(f"unknown data generator {generator!r}")
    return uniform_dataset(**args)


__all__ = ["TEST_SEED", "carry_chain", "chain_examples", "chain_problems", "chain_test_sets", "plant_chains",
           "planted_problem", "regenerate", "uniform_dataset", "uniform_problem", "write_examples"]
