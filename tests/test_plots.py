"""Plots of mathllm.plots, interpretability section: every figure builds and every PNG is written."""


from mathllm import plots
from mathllm.interp import (attention_patterns, cache_activations, carry_flip_pairs, digit_change_pairs, fit_probes,
                            logit_lens, logit_lens_accuracy, patch_heads, patch_residual, same_template_problems,
                            sample_problems)
from mathllm.interp.faithfulness import trace_faithfulness

TEXT = "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    return data


def test_attention_plots(model, tmp_path):
    att = attention_patterns(model, TEXT)
    grid = plots.plot_attention_heads(att)
    assert len(grid.data) == model.cfg.n_layers * model.cfg.n_heads
    head = plots.plot_attention_head(att, 1, 2)
    assert list(head.data[0].x) == list(head.data[0].y) and "6 a2" in head.data[0].x
    _png(plots.save_attention_heads_png(att, tmp_path / "att.png"))


def test_probe_and_lens_plots(model, tmp_path):
    acts = cache_activations(model, sample_problems(200, num_digits=2, seed=0))
    results = fit_probes(acts, quantities=["a[0]", "carry_in[1]", "random"])
    fig = plots.plot_probe_accuracy(results)
    assert len(fig.data) == 3 and [t.visible for t in fig.data] == [True, False, False]
    assert len(fig.layout.updatemenus[0].buttons) == 3
    _png(plots.save_probe_accuracy_png(results, ["a[0]", "random"], tmp_path / "probes.png"))
    lens = logit_lens(model, TEXT)
    assert plots.plot_logit_lens(lens).data[0].z.shape == (3, len(lens.tokens))
    _png(plots.save_logit_lens_png(lens, tmp_path / "lens.png"))
    assert plots.plot_lens_accuracy(logit_lens_accuracy(model, acts)).data[0].z.shape == (3, len(acts.kinds))


def test_patching_and_faithfulness_plots(model, tmp_path):
    pairs = digit_change_pairs(same_template_problems([658, 189], 6, seed=0), column=0)
    flips = carry_flip_pairs(sample_problems(6, seed=1), column=0)
    resid, flip = patch_residual(model, pairs), patch_residual(model, flips)
    assert plots.plot_patching(resid).data[0].z.shape == tuple(resid.values.shape)
    assert plots.plot_patching(patch_heads(model, pairs)).data[0].z.shape == (2, 4)
    _png(plots.save_patching_png([resid, flip], tmp_path / "patch.png"))
    result = trace_faithfulness(model, sample_problems(5, seed=2))
    fig = plots.plot_faithfulness(result)
    assert [t.name for t in fig.data] == ["follows the edited trace", "writes the true sum", "neither"]
    assert fig.data[0].x[-1] == "no edit" and fig.data[0].y[-1] == 0  # nothing to follow without an edit
    _png(plots.save_faithfulness_png(result, tmp_path / "faith.png"))
