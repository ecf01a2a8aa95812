"""The one parser of the project's texts (mathllm.text): strict splitting of data lines, lenient parsing of a
model's completions, answers, think blocks and prompts."""

import pytest

from mathllm.data import format_example
from mathllm.text import (Parts, operand_lengths, parse_answer, parse_completion, parse_prompt, split_prompt,
                          split_text, think_block)

TEXT = "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"


# ----------------------------------------------------------------------------------------------
# split_text: data lines (strict)
# ----------------------------------------------------------------------------------------------

def test_a_line_splits_into_prompt_think_and_answer():
    parts = split_text(TEXT)
    assert parts == Parts("658+189=", "8+9=17 5+8+1=14 6+1+1=8", "847<end>")
    assert parts.prompt + parts.completion == TEXT
    assert parts.completion == "<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"


@pytest.mark.parametrize("text, prompt, think, answer", [
    ("3+5=8<end>", "3+5=", None, "8<end>"),  # no think block: None, not ""
    ("12+34=<think></think>46<end>", "12+34=", "", "46<end>"),  # an empty one (internalize's last stage)
    ("12+34=<pause><pause>46<end>", "12+34=", None, "<pause><pause>46<end>"),
    ("1+2+3=<think>1+2+3=6</think>6<end>", "1+2+3=", "1+2+3=6", "6<end>"),  # cut at the first '='
])
def test_lines_with_and_without_a_think_block(text, prompt, think, answer):
    parts = split_text(text)
    assert (parts.prompt, parts.think, parts.answer) == (prompt, think, answer)
    assert parts.prompt + parts.completion == text


@pytest.mark.parametrize("fmt", ["cot", "plain", "reversed"])
def test_every_generated_line_splits_back_into_itself(fmt):
    for operands in ([658, 189], [3, 5], [99, 21, 5], [0, 0], [1234, 9876]):
        text = format_example(operands, fmt)
        parts = split_text(text)
        assert parts.prompt == "+".join(map(str, operands)) + "=" and parts.prompt + parts.completion == text
        assert (parts.think is not None) == ("<think>" in text)


def test_malformed_lines_are_errors():
    with pytest.raises(ValueError, match="no '='"):
        split_text("12+34")
    with pytest.raises(ValueError, match="unclosed <think>"):
        split_text("12+34=<think>2+4=6 1+3")


def test_split_prompt():
    assert split_prompt("12+34=46<end>") == ("12+34=", "46<end>")
    assert split_prompt(TEXT) == ("658+189=", TEXT[len("658+189="):])


# ----------------------------------------------------------------------------------------------
# parse_completion: a model's output (lenient; was mathllm.generate.split_completion)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>", ("8+9=17 5+8+1=14 6+1+1=8", "847")),
        ("<think>2+4=6 1+3=4</think>46<end>", ("2+4=6 1+3=4", "46")),
        ("<think>2+4=6</think>46<end><pad><pad>", ("2+4=6", "46")),
        ("<think><z3><z1></think>46<end>", ("<z3><z1>", "46")),
        ("<think></think>7<end>", ("", "7")),
        ("3+5=8<end>", (None, "8")),
        ("8<end>", (None, "8")),
        ("<pause><pause><pause>46<end>", (None, "46")),  # a pause-mode answer follows its pauses
        ("12+34=<pause><pause>46<end>", (None, "46")),
        ("<think>2+4=6 1+3", (None, None)),  # trace never closed
        ("<think>2+4=6</think>46", ("2+4=6", None)),  # no <end>
        ("<think>2+4=6</think>4 6<end>", ("2+4=6", None)),  # not digits
        ("<think>2+4=6</think><end>", ("2+4=6", None)),  # empty answer
        ("<think>2+4=6</think>46<end>12<end>", ("2+4=6", None)),  # junk after <end>
        ("<think>1<think>2</think>3<end>", (None, "3")),
        ("12+3=<end>", (None, None)),
        ("", (None, None)),
        ("<think>9-5=4</think>-12<end>", ("9-5=4", "-12")),
    ],
)
def test_parse_completion(text, expected):
    assert parse_completion(text) == expected


def test_parse_completion_rejects_non_strings():
    with pytest.raises(TypeError):
        parse_completion(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# parse_answer (was mathllm.evaluate.answer_from_completion), think_block
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, fmt, answer", [
    ("<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>", "cot", 847),
    ("8<end>", "plain", 8),
    ("64<end>", "reversed", 46),
    ("021<end>", "reversed", 120),
    ("<pause><pause>46<end>", "cot", 46),
    ("-12<end>", "cot", -12),
    ("<think>8+9=17</think>84 7<end>", "cot", None),
    ("<think>8+9=17 5+8", "cot", None),
    ("847", "cot", None),  # no <end>: the model did not finish
])
def test_parse_answer(completion, fmt, answer):
    assert parse_answer(completion, fmt) == answer


@pytest.mark.parametrize("completion, block", [
    ("<think><z3><z1></think>46<end>", "<z3><z1>"),
    ("<think>2+4=6 1+3=4</think>46<end>", "2+4=6 1+3=4"),
    ("<think></think>46<end>", ""),
    ("46<end>", None),
    ("<think>2+4", None),  # never closed
    ("</think>46<end><think>", None),  # closed before it opens
])
def test_think_block(completion, block):
    assert think_block(completion) == block


# ----------------------------------------------------------------------------------------------
# parse_prompt, operand_lengths
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, parsed", [
    ("658+189=", ("+", [658, 189])),
    ("1+2+3=", ("+", [1, 2, 3])),
    ("12-3=", ("-", [12, 3])),
    ("12*3=", ("*", [12, 3])),
    ("007+1=", ("+", [7, 1])),
])
def test_parse_prompt(prompt, parsed):
    assert parse_prompt(prompt) == parsed


@pytest.mark.parametrize("prompt", ["12+34", "12+34=5", "+34=", "12+=", "12+3-4=", "a+b=", "=", "12="])
def test_a_prompt_that_is_not_operands_and_one_operator_is_an_error(prompt):
    with pytest.raises(ValueError, match="not a prompt like"):
        parse_prompt(prompt)


def test_operand_lengths_are_the_prompts_shape():
    assert operand_lengths("658+7=") == (3, 1)
    assert operand_lengths("1+22+333=") == (1, 2, 3)
    assert operand_lengths("1000+1000=") == operand_lengths("9999+1001=") == (4, 4)
