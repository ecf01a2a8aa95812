"""Playground logic shared by scripts/interactive.py and the notebook widget: parsing, completing, checking."""

import re

import pytest

from mathllm.checkpoints import TrainedModel
from mathllm.playground import (ExpressionError, available_checkpoints, describe_checkpoint, parse_expression,
                                run_expression, training_limits, training_operations)
from mathllm.training_mode import get_mode
from model_doubles import ScriptedModel


@pytest.mark.parametrize("text, prompt, operands", [
    ("658+189", "658+189=", [658, 189]),
    ("658+189=", "658+189=", [658, 189]),
    (" 1 + 2 + 3 ", "1+2+3=", [1, 2, 3]),
    ("658-189", "658-189=", [658, 189]),
    ("7-7=", "7-7=", [7, 7]),
    ("12 * 34", "12*34=", [12, 34]),
])
def test_full_expressions_become_prompts(text, prompt, operands):
    parsed = parse_expression(text)
    assert (parsed.prompt, parsed.operands, parsed.partial) == (prompt, operands, False)
    assert parsed.operation == {"+": "add", "-": "sub", "*": "mul"}[prompt[len(str(operands[0]))]]


@pytest.mark.parametrize("text", ["7+", "7", "12+34+", "7-", "12*"])
def test_partial_expressions_are_left_for_the_model(text):
    parsed = parse_expression(text)
    assert parsed.partial and parsed.prompt == text and parsed.operands is None


@pytest.mark.parametrize("text, message", [
    ("12+a=", "unexpected character 'a' at position 3"),
    ("12/3", "unexpected character '/' at position 2 (division is not supported)"),
    ("12x3", "(write * for multiplication)"),
    ("12++3", "empty operand at position 3"),
    ("12**3", "empty operand at position 3: two '*' in a row"),
    ("+5", "operand is missing"),
    ("-5", "operand is missing before it (negative numbers are not supported)"),
    ("12=3", "'=' may only appear once, at the end"),
    ("7=", "at least two operands"),
    ("7*=", "multiplication needs at least two operands"),
    ("", "type a problem such as 658+189, 658-189 or 12*34"),
    ("3-7", "3-7 would be negative: the model subtracts a smaller number from a larger one (a >= b), e.g. 7-3"),
    ("12+3*4", "mixed operators ('+' and '*'): the model does one operation at a time"),
    ("9-5-1", "subtraction takes exactly two operands"),
    ("2*3*", "multiplication takes exactly two operands"),
])
def test_bad_input_is_named(text, message):
    with pytest.raises(ExpressionError, match=re.escape(message)):
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


def test_an_operation_the_model_was_not_trained_on_is_refused():
    with pytest.raises(ExpressionError, match="trained on addition only; it does not do subtraction"):
        parse_expression("5-3", operations=("add",))
    with pytest.raises(ExpressionError, match=r"trained on multiplication only; it does not do addition \('\+'\)"):
        parse_expression("12+", operations=("mul",))
    assert parse_expression("7", operations=("mul",)).partial  # no operator yet: the model writes one
    record = {"data_meta": {"arguments": {"max_digits": 3, "operation": "mul", "fmt": "cot"}}}
    trained = TrainedModel(ScriptedModel("<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>408<end>"), get_mode(), record)
    assert training_operations(trained) == ("mul",) and training_operations(trained.model) is None
    assert describe_checkpoint(trained) == "multiplication, operands of up to 3 digits, cot format, teacher mode"
    with pytest.raises(ExpressionError, match="does not do addition"):
        run_expression(trained, "12+34")
    assert run_expression(trained, "12*34").correct
    old = TrainedModel(trained.model, get_mode(), {"data_meta": {"arguments": {"max_digits": 3}}})
    assert training_operations(old) == ("add",)  # runs from before issue 14 recorded no operation: addition


def test_subtraction_and_multiplication_are_checked_against_their_true_results():
    sub = run_expression(ScriptedModel("<think>8-9=-1 5-8-1=-4 6-1-1=4</think>469<end>"), "658-189")
    assert (sub.operation, sub.true_answer, sub.model_answer, sub.correct) == ("sub", 469, 469, True)
    assert sub.think_steps == ["8-9=-1", "5-8-1=-4", "6-1-1=4"]
    mul = run_expression(ScriptedModel("<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>418<end>"), "12*34=")
    assert (mul.operation, mul.true_answer, mul.model_answer, mul.correct) == ("mul", 408, 418, False)
    assert mul.think_steps[2] == "48"  # the running sum is an item of the trace too


def test_a_partial_subtraction_or_product_is_completed_and_checked():
    result = run_expression(ScriptedModel("8=<think>7*8=56</think>56<end>"), "7*")
    assert (result.operands, result.operation, result.true_answer, result.correct) == ([7, 8], "mul", 56, True)
    negative = run_expression(ScriptedModel("9=2<end>"), "7-")  # the model wrote a problem with a negative answer
    assert negative.true_answer is None and negative.correct is None
    assert any("a >= b" in w for w in negative.warnings)


def test_a_reversed_format_model_is_read_backwards():
    record = {"data_meta": {"arguments": {"max_digits": 3, "operation": "mul", "fmt": "reversed"}}}
    result = run_expression(TrainedModel(ScriptedModel("804<end>"), get_mode(), record), "12*34")
    assert (result.model_answer, result.correct) == (408, True)


def test_available_checkpoints_lists_trained_runs(tmp_path):
    from mathllm.checkpoints import save_model
    from mathllm.model import MathTransformer

    for name in ("mul3", "add3"):
        save_model(MathTransformer.from_preset("tiny"), tmp_path / name)
        (tmp_path / name / "training_config.json").write_text("{}")
    save_model(MathTransformer.from_preset("tiny"), tmp_path / "weights_only")  # no run record: not a trained run
    (tmp_path / "notes").mkdir()
    assert list(available_checkpoints(tmp_path)) == ["add3", "mul3"]
    assert available_checkpoints(tmp_path / "missing") == {}
