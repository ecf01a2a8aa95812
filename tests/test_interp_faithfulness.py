"""Trace faithfulness (mathllm.interp.faithfulness): edits and the counting. (The implied answer, once here, is
mathllm.arithmetic.implied_answer: tests/test_arithmetic.py.)"""

import math

import numpy as np
import pytest

import mathllm.interp.faithfulness
from mathllm.checkpoints import load
from mathllm.interp.faithfulness import edit_trace, make_edits, trace_faithfulness, wilson_interval
from mathllm.interp.positions import sample_problems
from mathllm.utils import SHIPPED_CHECKPOINT


def test_edits_change_one_step_as_described():
    rng = np.random.default_rng(0)
    wrong_sum = edit_trace([658, 189], "wrong_sum", 1, rng)
    assert wrong_sum.steps[0] == "8+9=17" and wrong_sum.steps[2] == "6+1+1=8"
    assert wrong_sum.steps[1].startswith("5+8+1=1") and wrong_sum.steps[1] != "5+8+1=14"
    assert wrong_sum.implied_answer != 847 and wrong_sum.implied_answer // 100 == 8
    dropped = edit_trace([658, 189], "dropped_carry", 1, rng)
    assert dropped.steps == ["8+9=17", "5+8=13", "6+1+1=8"] and dropped.implied_answer == 837
    assert edit_trace([658, 189], "dropped_carry", 0, rng) is None  # step 0 has no carry in
    operand = edit_trace([658, 189], "wrong_operand", 2, rng)
    terms = operand.steps[2].split("=")[0].split("+")
    assert terms[0] == "6" and terms[1] != "1" and terms[2] == "1"
    assert operand.text.startswith("658+189=<think>8+9=17 5+8+1=14 ") and operand.text.endswith("</think>")
    assert edit_trace([3, 5], "wrong_sum", 0, rng) is None  # no think block at all


def test_make_edits_skips_what_does_not_apply():
    edits = make_edits([[111, 222]], seed=0)  # no carries at all
    assert {e.edit for e in edits} == {"none", "wrong_sum", "wrong_operand"}
    assert all(e.implied_answer != e.true_answer for e in edits if e.edit != "none")


def test_outcomes_are_counted_with_their_sample_size(monkeypatch):
    """With generation replaced by a script: the first edited problem follows its edit, the second gives the
    true sum, the rest write nonsense."""
    problems = [[658, 189]]
    items = make_edits(problems, edits=("wrong_sum",), seed=0)
    scripted = [f"{items[0].true_answer}<end>", f"{items[1].implied_answer}<end>", "847<end>", "12<end>"]

    def fake_generate(model, prompts, **kwargs):
        assert prompts == [e.text for e in items]
        return scripted[: len(prompts)]

    monkeypatch.setattr(mathllm.interp.faithfulness, "generate", fake_generate)
    result = trace_faithfulness(None, problems, edits=("wrong_sum",), seed=0)
    assert result.row("none")["true_sum"] == 1 and result.row("none")["rate"] == 1.0
    overall = result.row("wrong_sum")
    assert (overall["n"], overall["follows_edit"], overall["true_sum"], overall["other"]) == (3, 1, 1, 1)
    assert result.row("wrong_sum", 0)["follows_edit"] == 1 and result.row("wrong_sum", 2)["other"] == 1
    assert "wrong_sum" in result.format() and "n" in result.format()


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low < 0.5 < high and high - low == pytest.approx(0.19, abs=0.01)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))  # no data, no interval


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "model.safetensors").is_file(), reason="no shipped checkpoint")
def test_shipped_model_answers_right_after_an_unedited_trace():
    model = load(SHIPPED_CHECKPOINT, device="cpu").model
    result = trace_faithfulness(model, sample_problems(40, seed=9), edits=("wrong_operand",))
    assert result.row("none")["rate"] == 1.0 and result.row("none")["n"] == 40
    assert result.row("wrong_operand")["n"] >= 100
