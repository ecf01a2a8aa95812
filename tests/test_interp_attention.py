"""Attention patterns (mathllm.interp.attention)."""

import numpy as np
import pytest

from mathllm.interp.attention import attention_patterns, circuitsvis_attention, mean_attention
from mathllm.interp.positions import same_template_problems

TEXT = "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"


def test_patterns_are_the_model_s_causal_attention(model):
    att = attention_patterns(model, TEXT)
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, len(att.tokens)
    assert att.pattern.shape == (L, H, P, P) and att.kinds[0] == "a2" and att.labels[0] == "6 a2"
    np.testing.assert_allclose(att.pattern.sum(-1), 1.0, atol=1e-5)
    assert np.abs(np.triu(att.pattern, k=1)).max() == 0  # no attention to the future
    _, cache = model.run_with_cache(TEXT)
    np.testing.assert_allclose(att.pattern[1], cache["blocks.1.attn.hook_pattern"][0].numpy(), atol=1e-6)
    keys = att.top_keys(0, 2, "ans1", k=3)
    assert len(keys) == 3 and keys[0][1] >= keys[1][1] >= keys[2][1]
    assert att.top_keys(0, 0, "a2", k=1) == [("a2", pytest.approx(1.0))]  # the first token sees only itself
    assert att.attention_to("ans1", ["s1.r0", "a1"]).shape == (L, H)


def test_mean_attention_averages_problems_that_line_up(model):
    problems = same_template_problems([658, 189], 5, seed=0)
    mean = mean_attention(model, problems, batch_size=2)
    singles = np.mean([attention_patterns(model, p["text"]).pattern for p in problems], axis=0)
    np.testing.assert_allclose(mean.pattern, singles, atol=1e-6)
    assert mean.num_examples == 5 and mean.labels == mean.kinds
    with pytest.raises(ValueError, match="does not line up"):
        mean_attention(model, [TEXT, "12+3=15<end>"])


def test_strongest_links_and_optional_circuitsvis(model):
    att = attention_patterns(model, TEXT)
    links = att.strongest_links(queries=["ans1", "no-such-kind"], min_weight=0.0)
    assert {r["query"] for r in links} <= {"ans1"} and all(r["key"] != "ans1" for r in links)
    try:
        import circuitsvis  # noqa: F401
    except ImportError:
        assert circuitsvis_attention(att, 0) is None
