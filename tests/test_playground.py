"""Playground logic shared by scripts/interactive.py and the notebook widget: parsing, completing, checking."""

import pytest

from mathllm.checkpoints import TrainedModel
from mathllm.playground import ExpressionError, parse_expression, run_expression, training_limits
from mathllm.training_mode import get_mode
from model_doubles import ScriptedModel


@pytest.mark.parametrize("text, prompt, operands", [
    ("658+189", "658+189=", [658, 189]),
    ("658+189=", "658+189=", [658, 189]),
    (" 1 + 2 + 3 ", "1+2+3=", [1, 2, 3]),
])
def test_full_expressions_become_prompts(text, prompt, operands):
    parsed = parse_expression(text)
    assert (parsed.prompt, parsed.operands, parsed.partial) == (prompt, operands, False)


@pytest.mark.parametrize("text", ["7+", "7", "12+34+"])
def test_partial_expressions_are_left_for_the_model(text):
    parsed = parse_expression(text)
    assert parsed.partial and parsed.prompt == text and parsed.operands is None


@pytest.mark.parametrize("text, message", [
    ("12+a=", "unexpected character 'a' at position 3"),
    ("5-3", "unexpected character '-' at position 1 (this model does addition only)"),
    ("12++3", "empty operand at position 3"),
    ("+5", "operand is missing"),
    ("12=3", "'=' may only appear once, at the end"),
    ("7=", "at least two operands"),
    ("", "type an addition"),
])
def test_bad_input_is_named(text, message):
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        parse_expression(text)


def test_training_limits_turn_into_warnings_not_errors():
    parsed = parse_expression("1234+5", max_digits=3, max_operands=2)
    assert any("at most 3 digits" in w for w in parsed.warnings)
    assert any("at most 2 operands" in w for w in parse_expression("1+2+3", 3, 2).warnings)


def test_run_expression_checks_the_model_against_the_true_sum():
    model = ScriptedModel("<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>")
    result = run_expression(model, "658+189")
    assert result.full_text == "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"
    assert result.think_steps == ["8+9=17", "5+8+1=14", "6+1+1=8"]
    assert (result.model_answer, result.true_answer, result.correct) == (847, 847, True)
    assert len(result.token_probs) == len(result.tokens) and all(p == pytest.approx(1.0) for p in result.token_probs)


def test_a_wrong_answer_is_marked_wrong():
    result = run_expression(ScriptedModel("<think>8+9=17 5+8+1=14 6+1+1=8</think>848<end>"), "658+189=")
    assert (result.model_answer, result.correct) == (848, False)


def test_partial_input_is_completed_by_the_model_and_checked():
    result = run_expression(ScriptedModel("3=10<end>"), "7+")
    assert result.full_text == "7+3=10<end>"
    assert (result.operands, result.model_answer, result.true_answer, result.correct) == ([7, 3], 10, 10, True)


def test_a_teacher_forcing_result_names_its_mode_without_a_note():
    result = run_expression(ScriptedModel("<think>2+4=6 1+3=4</think>46<end>"), "12+34")
    assert result.mode == "teacher" and result.mode_note is None


def test_the_limits_of_a_trained_models_data_become_warnings():
    record = {"data_meta": {"arguments": {"max_digits": 2, "max_operands": 2, "seed": 1}}}
    trained = TrainedModel(ScriptedModel("<think>4+5=9 3+0=3 2+0=2 1+0=1</think>1239<end>"), get_mode(), record)
    assert training_limits(trained) == (2, 2)
    assert training_limits(trained.model) == (None, None)  # a bare model has no record
    assert training_limits(TrainedModel(trained.model, get_mode(), None)) == (None, None)
    result = run_expression(trained, "1234+5")
    assert result.correct and any("at most 2 digits" in w for w in result.warnings)


def test_a_model_is_run_in_its_mode_and_the_result_says_so():
    trained = TrainedModel(ScriptedModel("46<end>"), get_mode("pause", think_tokens="2"), None)
    result = run_expression(trained, "12+34")
    assert result.completion == "<pause><pause>46<end>" and result.full_text == "12+34=<pause><pause>46<end>"
    assert (result.model_answer, result.correct, result.think_steps) == (46, True, [])
    assert result.mode == "pause" and result.mode_note == get_mode("pause").note
    assert result.tokens == ["<pause>", "<pause>", "4", "6", "<end>"] and len(result.token_probs) == 5
    bare = run_expression(ScriptedModel("46<end>"), "12+34", mode=get_mode("pause", think_tokens="2"))
    assert bare.completion == result.completion and bare.mode == "pause"
