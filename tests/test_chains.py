"""Carry chains (mathllm.chains): the chain length, planted problems of exactly k, the fixed test sets, planting into
training lines, the uniform data and its files."""

from __future__ import annotations

import json
import random

import pytest

from mathllm.chains import (carry_chain, chain_problems, chain_test_sets, plant_chains, planted_problem, regenerate,
                            uniform_dataset, uniform_problem, write_examples)
from mathllm.data import load_split, make_example
from mathllm.text import parse_prompt, split_text


@pytest.mark.parametrize("operands, k", [
    ([4999, 5001], 4), ([99, 1], 2), ([12, 34], 0), ([658, 189], 2), ([5, 5], 1), ([909, 91], 3),
    ([0, 0], 0), ([99999999, 1], 8), ([19, 81], 2), ([150, 50], 1), ([9, 9, 9], 1), ([55, 45, 0], 2),
])
def test_the_chain_is_the_longest_run_of_carrying_columns(operands, k):
    assert carry_chain(operands) == k


def test_a_chain_by_brute_force_over_every_pair_of_two_digit_numbers():
    def by_hand(a, b):
        carries, c = [], 0
        for i in range(3):
            c = (a // 10**i % 10 + b // 10**i % 10 + c) // 10
            carries.append(c)
        best = run = 0
        for c in carries:
            run = run + 1 if c else 0
            best = max(best, run)
        return best

    assert all(carry_chain([a, b]) == by_hand(a, b) for a in range(100) for b in range(100))
    with pytest.raises(ValueError, match="non-negative"):
        carry_chain([-1, 3])


def test_planted_problems_have_exactly_k_and_the_asked_lengths():
    rng = random.Random(0)
    for k in range(1, 9):
        for _ in range(30):
            a, b = planted_problem(rng, 8, k)
            assert carry_chain([a, b]) == k and max(len(str(a)), len(str(b))) >= k
    for lengths in [(3, 1), (1, 4), (2, 2)]:
        for k in range(1, max(lengths) + 1):
            a, b = planted_problem(rng, 4, k, lengths)
            assert (len(str(a)), len(str(b))) == lengths and carry_chain([a, b]) == k
    with pytest.raises(ValueError, match="no chain of 3 fits"):
        planted_problem(rng, 4, 3, (2, 1))
    with pytest.raises(ValueError, match="1 <= k <= max_digits"):
        planted_problem(rng, 4, 5)


def test_the_test_sets_are_fixed_distinct_and_exact():
    sets = chain_test_sets(5, per_k=40, n_uniform=100)
    assert sets == chain_test_sets(5, per_k=40, n_uniform=100)  # same seed, same problems for every model
    assert sorted(sets) == ["k0", "k1", "k2", "k3", "k4", "k5", "uniform"]
    for k in range(6):
        pairs = sets[f"k{k}"]
        assert len(set(pairs)) == 40 and all(carry_chain(p) == k for p in pairs)
        assert all(1 <= len(str(x)) <= 5 for p in pairs for x in p)
    lengths = {len(str(x)) for p in sets["uniform"] for x in p}
    assert lengths == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError, match="found only"):
        chain_problems(random.Random(0), 1, 1, 100)  # one-digit pairs with a carry: only 45 exist


def test_uniform_problems_have_uniform_lengths():
    rng = random.Random(0)
    lengths = [len(str(uniform_problem(rng, 4)[0])) for _ in range(4000)]
    shares = [lengths.count(n) / len(lengths) for n in range(1, 5)]
    assert all(abs(s - 0.25) < 0.03 for s in shares)


def test_planting_replaces_a_share_keeps_lengths_and_format_and_never_a_held_out_problem():
    texts = [make_example([a, b], "plain")["text"] for a, b in
             [uniform_problem(random.Random(i), 4) for i in range(400)]]
    banned = {split_text(t).prompt for t in texts[:50]}
    new, summary = plant_chains(texts, 0.3, seed=1, exclude=banned)
    changed = [i for i, (a, b) in enumerate(zip(texts, new)) if a != b]
    assert summary["replaced"] == 120 and len(changed) <= 120 and summary["format"] == "plain"
    for i in changed:
        _, old = parse_prompt(split_text(texts[i]).prompt)
        _, ops = parse_prompt(split_text(new[i]).prompt)
        assert [len(str(x)) for x in ops] == [len(str(x)) for x in old]
        assert carry_chain(ops) >= 1 and new[i] == make_example(ops, "plain")["text"]
    assert not {split_text(new[i]).prompt for i in changed} & banned
    assert sum(int(n) for n in summary["by_chain_length"].values()) == 120
    assert plant_chains(texts, 0.3, seed=1, exclude=banned)[0] == new  # a pure function of the seed
    cot = [make_example([12, 34])["text"], make_example([5, 6])["text"]]
    assert "<think>" in plant_chains(cot, 1.0, seed=0)[0][0]
    with pytest.raises(ValueError, match=r"--planted-chains must be in \[0, 1\]"):
        plant_chains(texts, 1.5, seed=0)


def test_the_uniform_dataset_is_distinct_across_splits_and_reads_back(tmp_path):
    args = dict(num_examples=600, max_digits=3, seed=2, fmt="cot", val_examples=50, test_examples=50)
    splits = uniform_dataset(**args)
    keys = {name: {tuple(ex["operands"]) for ex in split} for name, split in splits.items()}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [500, 50, 50]
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]
    assert all(ex["carry_chain"] == carry_chain(ex["operands"]) for ex in splits["train"])
    record = {"generator": "mathllm.chains.uniform_dataset", **args}
    paths = write_examples(splits, tmp_path, record)
    assert [ex["text"] for ex in load_split(paths["train"])] == [ex["text"] for ex in splits["train"]]
    meta = json.loads(paths["meta"].read_text())
    assert meta["arguments"] == record and meta["counts"] == {"train": 500, "val": 50, "test": 50}
    assert regenerate(meta["arguments"]) == splits
    with pytest.raises(ValueError, match="leave none for training"):
        uniform_dataset(100, 3, val_examples=50, test_examples=50)
    with pytest.raises(ValueError, match="unknown data generator"):
        regenerate({"generator": "elsewhere"})
