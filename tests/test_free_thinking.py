"""mathllm.free_thinking: labels, token statistics, plug-in mutual information with a shuffled baseline, traces of a
gumbel-mode model; and the mode / free-thinking plots of mathllm.plots."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from mathllm.data import make_example
from mathllm.free_thinking import (ThinkTraces, collect_think_traces, column_labels, mutual_information,
                                   think_label_information, think_tokens, token_statistics)
from mathllm.checkpoints import TrainedModel
from mathllm.generate import generate
from mathllm.model import MathTransformer
from mathllm.text import parse_answer
from mathllm.tokenizer import LATENT_IDS, TOKENIZER
from mathllm.training_mode import get_mode


def teacher_budget(examples) -> int:
    """collect_think_traces's default max_new_tokens: the longest example plus 4."""
    return max(len(TOKENIZER.encode(ex["text"])) for ex in examples) + 4


def test_mutual_information_of_known_distributions():
    x = np.array([0, 1, 2, 3] * 50)
    assert mutual_information(x, x) == pytest.approx(2.0)
    assert mutual_information(x, x % 2) == pytest.approx(1.0)  # y is a function of x: MI = H(y)
    assert mutual_information(np.repeat([0, 1], 100), np.tile([0, 1], 100)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        mutual_information([0, 1], [0])


def test_column_labels_follow_the_human_trace():
    labels = column_labels([[658, 189], [99, 21], [5, 7, 9]], n_columns=3)
    assert labels["column_sum_0"].tolist() == [17, 10, 21] and labels["carry_out_0"].tolist() == [1, 1, 2]
    assert labels["column_sum_1"].tolist() == [14, 12, 2] and labels["carry_in_1"].tolist() == [1, 1, 2]
    assert labels["sum_digit_2"].tolist() == [8, 1, 0] and labels["num_carries"].tolist() == [2, 2, 1]
    assert labels["num_carries"].tolist() == [make_example(o)["num_carries"] for o in ([658, 189], [99, 21], [5, 7, 9])]


def synthetic_traces(n: int = 600, seed: int = 0) -> ThinkTraces:
    """Position 0 writes the first column's carry as <z0>/<z1>; position 1 is noise; position 2 is constant."""
    rng = random.Random(seed)
    operands = [[rng.randint(0, 99), rng.randint(0, 99)] for _ in range(n)]
    carry = column_labels(operands)["carry_out_0"]
    think = [[LATENT_IDS[c], LATENT_IDS[rng.randint(2, 5)], LATENT_IDS[9]] for c in carry]
    prompts = [f"{a}+{b}=" for a, b in operands]
    completions = ["<think>" + TOKENIZER.decode(t) + f"</think>{sum(o)}<end>" for t, o in zip(think, operands)]
    return ThinkTraces(prompts, operands, think, completions, [sum(o) for o in operands], [True] * n, "gumbel")


def test_an_invented_carry_code_is_found_and_noise_is_not():
    traces = synthetic_traces()
    table = think_label_information(traces, shuffles=5)
    best = table.best(2)  # carry_out_0 and carry_in_1 are the same variable
    assert {(b["position"], b["label"]) for b in best} == {(0, "carry_out_0"), (0, "carry_in_1")}
    h = table.label_entropy[table.labels.index("carry_out_0")]
    assert best[0]["mi_bits"] == pytest.approx(h) and best[0]["fraction_of_label_entropy"] > 0.95
    noise = table.excess()[table.positions.index(1)]
    assert np.abs(noise).max() < 0.05  # the shuffled baseline removes the plug-in estimate's upward bias
    assert table.baseline[1].mean() > 0  # ... which is there
    assert np.all(table.mi[2] == 0)  # a constant token tells nothing


def test_token_statistics_count_each_position():
    traces = synthetic_traces(100)
    stats = token_statistics(traces)
    assert stats["counts"].shape[0] == 3 and stats["n"].tolist() == [100, 100, 100]
    assert stats["entropy_bits"][2] == 0.0 and stats["top"][2] == [("<z9>", 1.0)]
    assert set(stats["tokens_used"]) <= set(LATENT_IDS) and stats["lengths"][3] == 100
    assert think_tokens("<think><z1>7</think>8<end>") == [LATENT_IDS[1], 7] and think_tokens("8<end>") == []


def test_traces_of_a_gumbel_model():
    torch.manual_seed(0)
    model = MathTransformer.from_preset("tiny").eval()
    mode = get_mode("gumbel", think_tokens="4", think_alphabet="latent")
    examples = [make_example([a, b]) for a, b in [(12, 34), (99, 21), (5, 7), (658, 189)]]
    traces = collect_think_traces(TrainedModel(model, mode, None), examples)
    assert traces.mode == "gumbel" and len(traces) == 4
    assert all(len(t) == 4 and set(t) <= set(LATENT_IDS) for t in traces.think_ids)
    assert all(c.startswith("<think>") for c in traces.completions) and 0.0 <= traces.accuracy <= 1.0
    assert traces.model_answers == [parse_answer(c) for c in traces.completions]
    assert traces.correct == [a == sum(ex["operands"]) for a, ex in zip(traces.model_answers, examples)]
    # a bare model with the mode given is the same; a bare model alone is a teacher-forcing one
    again = collect_think_traces(model, examples, mode=mode)
    assert again.completions == traces.completions and again.think_ids == traces.think_ids
    teacher = collect_think_traces(model, examples)
    assert teacher.mode == "teacher" and teacher.completions == generate(model, teacher.prompts,
                                                                          max_new_tokens=teacher_budget(examples))


def fake_summary() -> dict:
    runs = []
    for name, mode in (("teacher", "teacher"), ("gumbel", "gumbel")):
        for seed in (1, 2):
            curve = [{"step": s, "loss": 1 / s, "step_seconds": 0.01} for s in (10, 20)]
            curve += [{"step": 20, "val_loss": 0.5, "val_exact_match": 0.3 * seed}]
            runs.append({"name": name, "mode": mode, "seed": seed, "test_exact_match": 0.4 + 0.1 * seed,
                         "seconds_per_step": 0.01, "learning_curve": curve})
    return {"runs": runs}


def test_mode_and_free_thinking_plots(tmp_path):
    from mathllm.plots import (plot_mode_comparison, plot_mode_learning_curves, plot_think_information,
                               plot_think_token_frequencies, save_mode_comparison_png, save_think_information_png)

    summary = fake_summary()
    fig = plot_mode_comparison(summary)
    assert [t.name for t in fig.data][:2] == ["mean", "seeds"] and list(fig.data[0].y) == pytest.approx([0.55, 0.55])
    curves = plot_mode_learning_curves(summary)
    assert len(curves.data) == 4 and list(curves.data[0].y) == [0.3]
    assert save_mode_comparison_png(summary, tmp_path / "modes.png").stat().st_size > 1000
    traces = synthetic_traces(200)
    table = think_label_information(traces, shuffles=2)
    heat = plot_think_information(table)
    assert np.asarray(heat.data[0].z).shape == (len(table.labels), len(table.positions))
    freq = plot_think_token_frequencies(token_statistics(traces))
    assert math.isclose(float(np.asarray(freq.data[0].z).sum()), 3.0)  # each position's shares sum to 1
    assert save_think_information_png(table, tmp_path / "mi.png").stat().st_size > 1000
