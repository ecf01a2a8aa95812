"""Position kinds, the quantities the reasoning needs, and the problem samplers of mathllm.interp.positions."""

import pytest

from mathllm.data import make_example
from mathllm.interp.positions import (describe_quantity, heldout_problems, kind_counts, label_table,
                                      position_kinds, quantities, same_template_problems, sample_problems,
                                      sort_kinds, template_of, training_problems)
from mathllm.tokenizer import TOKENIZER
from mathllm.utils import SHIPPED_CHECKPOINT

TEXT = "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"


def test_every_token_of_a_cot_problem_gets_its_role():
    kinds = position_kinds(TEXT)
    tokens = TOKENIZER.str_tokens(TEXT)
    assert len(kinds) == len(tokens) and len(set(kinds)) == len(kinds)
    named = dict(zip(kinds, tokens))
    assert [named[k] for k in ("a2", "a1", "a0", "+b", "b2", "b1", "b0", "=")] == list("658+189=")
    assert named["s0.a"] == "8" and named["s0.b"] == "9" and named["s0.r1"] == "1" and named["s0.r0"] == "7"
    assert named["s1.carry"] == "1" and named["s1.+carry"] == "+" and named["s1.r0"] == "4"
    assert "s2.r1" not in kinds and named["s2.r0"] == "8"  # 6+1+1=8 has no carry out
    assert [named[k] for k in ("ans2", "ans1", "ans0", "<end>")] == ["8", "4", "7", "<end>"]
    assert sort_kinds(reversed(kinds)) == kinds  # the canonical order is the sequence order


def test_kinds_line_up_across_lengths_and_formats():
    assert position_kinds("7+5=12<end>") == ["a0", "+b", "b0", "=", "ans1", "ans0", "<end>"]
    three = position_kinds("1+2+3=<think>1+2+3=6</think>6<end>")
    assert three[:6] == ["a0", "+b", "b0", "+c", "c0", "="] and "s0.c" in three and "s0.carry" not in three
    padded = position_kinds(TOKENIZER.encode("12+3=15<end><pad><pad>"))
    assert padded[-2:] == ["<pad>", "<pad>"]
    # Malformed text (a model's mistake) never raises.
    assert position_kinds("12+3=<think>2+3=5 1+0")[-1] == "s1.b"
    assert position_kinds("12") == ["?0", "?1"]


def test_quantities_are_what_the_procedure_computes():
    q = quantities([658, 189])
    assert (q["carry_in[1]"], q["carry_in[2]"], q["carry_in[3]"]) == (1, 1, 0)
    assert (q["digit_sum[0]"], q["digit_sum[1]"], q["digit_sum[2]"]) == (17, 13, 7)
    assert [q[f"answer[{i}]"] for i in range(4)] == [7, 4, 8, 0]
    assert (q["a[0]"], q["b[2]"]) == (8, 1)
    short = quantities([7, 5], width=3)  # a shorter problem gets the same names, zeros where nothing is
    assert set(short) == set(q) and short["answer[1]"] == 1 and short["a[2]"] == 0
    assert describe_quantity("carry_in[2]") == "carry into column 2"


def test_label_table_has_a_random_control_label():
    examples = [make_example([a, b]) for a, b in [(658, 189), (12, 34), (999, 1)]]
    table = label_table(examples, seed=3)
    assert table["answer[3]"].tolist() == [0, 0, 1]
    assert table["random"].shape == (3,) and table["random"].tolist() == label_table(examples, seed=3)["random"].tolist()


def test_sample_problems_are_distinct_sized_and_respect_exclusions():
    problems = sample_problems(200, num_digits=3, seed=1)
    ops = [tuple(p["operands"]) for p in problems]
    assert len(set(ops)) == 200 and all(100 <= x <= 999 for o in ops for x in o)
    again = sample_problems(50, num_digits=3, seed=1, exclude=ops[:10])
    assert not set(ops[:10]) & {tuple(p["operands"]) for p in again}
    with pytest.raises(ValueError, match="found only"):
        sample_problems(101, num_digits=1, num_operands=2, seed=0, where=lambda o: o[0] == 0)


def test_same_template_problems_line_up_token_by_token():
    problems = same_template_problems("658+189", 20, seed=0)
    assert {template_of(p) for p in problems} == {template_of([658, 189])}
    assert kind_counts(problems)["s1.carry"] == 20


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "training_config.json").is_file(), reason="no shipped checkpoint")
def test_heldout_problems_avoid_the_training_data():
    seen = training_problems(SHIPPED_CHECKPOINT)
    assert len(seen) == 90_000  # train + val of the shipped model's data
    problems = heldout_problems(SHIPPED_CHECKPOINT, 300, seed=0)
    assert not {tuple(p["operands"]) for p in problems} & seen


def test_subtraction_tokens_get_their_roles():
    text = "105-99=<think>5-9=-4 0-9-1=-10 1-0-1=0</think>6<end>"
    kinds = position_kinds(text)
    named = dict(zip(kinds, TOKENIZER.str_tokens(text)))
    assert len(set(kinds)) == len(kinds) and sort_kinds(reversed(kinds)) == kinds
    assert [named[k] for k in ("a2", "a1", "a0", "-b", "b1", "b0", "=")] == list("105-99=")
    assert (named["s0.a"], named["s0.-b"], named["s0.b"], named["s0.sign"], named["s0.r0"]) == ("5", "-", "9", "-", "4")
    assert "s0.borrow" not in kinds and named["s1.-borrow"] == "-" and named["s1.borrow"] == "1"
    assert (named["s1.sign"], named["s1.r1"], named["s1.r0"]) == ("-", "1", "0")  # 0-9-1=-10
    assert "s2.sign" not in kinds and named["s2.r0"] == "0" and named["ans0"] == "6"
    assert position_kinds("7-3=4<end>") == ["a0", "-b", "b0", "=", "ans0", "<end>"]


def test_multiplication_tokens_get_their_roles():
    text = "12*34=<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>408<end>"
    kinds = position_kinds(text)
    named = dict(zip(kinds, TOKENIZER.str_tokens(text)))
    assert len(set(kinds)) == len(kinds) and sort_kinds(reversed(kinds)) == kinds
    assert [named[k] for k in ("a1", "a0", "*b", "b1", "b0")] == list("12*34")
    assert (named["s0.a"], named["s0.*b"], named["s0.b"], named["s0.r0"]) == ("2", "*", "4", "8")
    assert (named["s1.sum1"], named["s1.sum0"], named["s1.sum.sp"]) == ("4", "8", " ")  # the running sum 48
    assert (named["s2.+rs"], named["s2.rs"], named["s2.r1"], named["s2.r0"]) == ("+", "4", "1", "0")  # 2*3+4=10
    assert (named["s3.rs"], named["s3.+carry"], named["s3.carry"]) == ("0", "+", "1")  # 1*3+0+1=4
    assert "s1.carry" not in kinds and "s0.rs" not in kinds  # no carry into 1*4; no running sum in the first row
    assert [named[k] for k in ("ans2", "ans1", "ans0")] == list("408")
    # 98*76 has a carry into every step: one more term per step, the same roles otherwise
    other = position_kinds(make_example([98, 76], operation="mul")["text"])
    assert {"s1.carry", "s3.carry", "s1.sum2"} <= set(other) and set(kinds) - {"s1.sum1", "s1.sum0"} <= set(other)
