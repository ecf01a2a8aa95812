"""Accuracy by carry-chain length and per iteration (mathllm.depth), with stand-in modes whose answers are known."""

from __future__ import annotations

import pytest
import torch

from mathllm.chains import carry_chain
from mathllm.data import make_example
from mathllm.depth import (curves_table, evaluate_chains, evaluate_strata, format_chains, format_curves,
                           format_experiment, format_strata, iteration_curves, stratum_sets)
from mathllm.plots import chain_table_rows
from mathllm.model import MathTransformer, ModelConfig
from mathllm.text import parse_prompt
from mathllm.training_mode import TrainingMode

pytestmark = pytest.mark.usefixtures("one_thread")


class Knows(TrainingMode):
    """Right on every problem except those whose chain is ``wrong_k``; with ``needs_loops``, right only when the model
    runs at least that many iterations (a stand-in for depth)."""

    name = "answer-only"

    def __init__(self, wrong_k=None, needs_loops=1):
        super().__init__()
        self.wrong_k, self.needs_loops, self.model = wrong_k, needs_loops, None

    def generate(self, model, prompts, max_new_tokens=64, batch_size=128, drafts=None, return_probs=False,
                 temperature=0.0, generator=None):
        out = []
        for p in prompts:
            _, ops = parse_prompt(p)
            ok = carry_chain(ops) != self.wrong_k and model.n_loops >= self.needs_loops
            out.append(f"{sum(ops) + (0 if ok else 1)}<end>")
        return out


class Multiplies(TrainingMode):
    """Right on every product except those of a ``wrong`` shape (operand lengths, ``"2*1"``), with at least
    ``needs_loops`` iterations."""

    name = "answer-only"

    def __init__(self, wrong=None, needs_loops=1):
        super().__init__()
        self.wrong, self.needs_loops = wrong, needs_loops

    def generate(self, model, prompts, max_new_tokens=64, batch_size=128, drafts=None, return_probs=False,
                 temperature=0.0, generator=None):
        out = []
        for p in prompts:
            a, b = (int(x) for x in p.rstrip("=").split("*"))
            ok = f"{len(str(a))}*{len(str(b))}" != self.wrong and model.n_loops >= self.needs_loops
            out.append(f"{a * b + (0 if ok else 1)}<end>")
        return out


def _products():
    """Every shape of up to 2 digits, file order mixed: 30 problems of each of 1*1, 1*2, 2*1, 2*2."""
    rows = [(a, b) for i in range(30) for a, b in ((2 + i % 8, 3 + i % 7), (4 + i % 5, 11 + i), (12 + i, 5 + i % 4),
                                                   (21 + i, 31 + i))]
    return [make_example([a, b], "plain", "mul") for a, b in rows]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MathTransformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_loops=2, n_ctx=64)).eval()


def test_accuracy_is_reported_per_chain_length_with_the_worst(model):
    results = evaluate_chains(model, 4, per_k=20, n_uniform=50, mode=Knows(wrong_k=3))
    assert results["uniform"]["count"] == 50 and results["loops"] == 2
    assert {k: v["exact_match"] for k, v in results["by_carry_chain"].items()} == {
        "0": 1.0, "1": 1.0, "2": 1.0, "3": 0.0, "4": 1.0}
    assert results["worst_carry_chain"] == {"k": 3, "exact_match": 0.0, "count": 20}
    assert 0.5 < results["uniform"]["exact_match"] < 1.0  # uniform problems with a chain of 3 exist, but few
    assert "k=3: 0.000" in format_chains(results)


def test_any_number_of_iterations_is_measured_and_restored(model):
    mode = Knows(needs_loops=3)
    assert evaluate_chains(model, 3, per_k=5, n_uniform=5, mode=mode)["uniform"]["exact_match"] == 0.0
    deeper = evaluate_chains(model, 3, per_k=5, n_uniform=5, mode=mode, loops=4)
    assert deeper["loops"] == 4 and deeper["worst_carry_chain"]["exact_match"] == 1.0
    assert model.n_loops == 2
    curves = iteration_curves(model, 3, 5, per_k=5, n_uniform=5, mode=mode, progress=False)
    assert curves["uniform"] == [0.0, 0.0, 1.0, 1.0, 1.0] and sorted(curves) == ["k0", "k1", "k2", "k3", "uniform"]


def test_curves_print_as_a_table_and_draw_as_a_chain_table():
    curves = {"uniform": [0.0, 0.5, 1.0], "k0": [0.25, 0.75, 1.0], "k3": [0.0, 0.0, 0.9]}
    text = format_curves(curves, trained=2)
    assert text.splitlines()[0].split() == ["iterations", "1", "2*", "3"] and "90.0%" in text.splitlines()[3]
    names, columns, mean, low = chain_table_rows(curves_table(curves))
    assert names == ["L=1", "L=2", "L=3"] and columns == ["uniform", "k0", "k3"]
    assert mean[:, 1].tolist() == [0.25, 0.75, 1.0] and (mean == low).all()


def test_multiplication_is_measured_by_stratum_with_the_worst_and_per_iteration(model):
    examples = _products()
    sets = stratum_sets(examples, per_stratum=25, n_uniform=40)
    assert list(sets) == ["uniform", "1*1", "1*2", "2*1", "2*2"] and [len(v) for v in sets.values()] == [40] + [25] * 4
    assert sets["uniform"] == examples[:40] and all(ex["prompt"].count("*") == 1 for ex in sets["2*1"])
    results = evaluate_strata(model, sets, mode=Multiplies(wrong="2*1"))
    assert {k: v["exact_match"] for k, v in results["by_stratum"].items()} == {"1*1": 1.0, "1*2": 1.0, "2*1": 0.0,
                                                                               "2*2": 1.0}
    assert results["uniform"] == {"exact_match": 0.75, "count": 40}  # 10 of the first 40 are 2*1
    assert results["worst_stratum"] == {"stratum": "2*1", "exact_match": 0.0, "count": 25}
    assert "worst stratum   2*1: 0.0000 (n=25)" in format_strata(results)
    small = stratum_sets(examples, per_stratum=10, n_uniform=8)  # strata under 20 problems are not called the worst
    assert evaluate_strata(model, small, mode=Multiplies(wrong="2*1"))["worst_stratum"] is None
    curves = iteration_curves(model, 0, 3, sets=sets, mode=Multiplies(needs_loops=2), progress=False)
    assert curves["uniform"] == [0.0, 1.0, 1.0] and curves["2*2"] == [0.0, 1.0, 1.0] and model.n_loops == 2
    row = {"seeds": [0], "uniform": {"mean": 0.75, "min": 0.75, "max": 0.75},
           "worst_stratum": {"mean": 0.0, "min": 0.0, "max": 0.0}, "2*1": {"mean": 0.0, "min": 0.0, "max": 0.0}}
    header, line = format_experiment({"table": {"looped-uniform": row}}).splitlines()
    assert "worst stratum" in header and "worst k" not in header and line.split()[-2:] == ["75.0%", "0.0%"]
    names, columns, mean, _ = chain_table_rows({"table": {"looped-uniform": row}})
    assert columns == ["uniform", "2*1"] and mean.tolist() == [[0.75, 0.0]]
