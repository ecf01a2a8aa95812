"""Linear probes (mathllm.interp.probes): they read what is there, and they can fail."""

import numpy as np
import pytest
import torch

from mathllm.checkpoints import load
from mathllm.interp.positions import label_table, position_kinds, sample_problems
from mathllm.interp.probes import (_lda_predict, _standardize, cache_activations, fit_logistic_probe, fit_probes,
                                   residual_streams, split_examples)
from mathllm.model import MathTransformer
from mathllm.utils import SHIPPED_CHECKPOINT

needs_checkpoint = pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "model.safetensors").is_file(),
                                      reason="no shipped checkpoint")


@pytest.fixture(scope="module")
def shipped_acts():
    model = load(SHIPPED_CHECKPOINT, device="cpu").model
    problems = sample_problems(1500, num_digits=3, seed=11)
    return cache_activations(model, problems, kinds=["a0", "b1", "=", "s0.=", "s1.=", "ans1"])


def _synthetic(n=2000, d=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=gen)
    directions = torch.randn(5, d, generator=gen)
    x = directions[labels] + 0.3 * torch.randn(n, d, generator=gen)  # class means far apart
    noise = torch.randint(0, 5, (n,), generator=gen)  # independent of x
    return x, labels, noise


@pytest.mark.parametrize("method", ["lda", "logistic"])
def test_classifiers_read_a_linear_label_and_stay_at_chance_on_noise(method):
    x, labels, noise = _synthetic()
    train, test = slice(0, 1500), slice(1500, None)
    z_train, z_test = _standardize(x[train], x[test])
    if method == "lda":
        pred = _lda_predict(z_train, torch.stack([labels[train], noise[train]]), z_test, 5, 0.05)
    else:
        pred = torch.stack([fit_logistic_probe(x[train], y[train], x[test], 5) for y in (labels, noise)])
    assert (pred[0] == labels[test]).float().mean() > 0.98
    assert (pred[1] == noise[test]).float().mean() < 0.2 + 3 * (0.2 * 0.8 / 500) ** 0.5


def test_cached_activations_are_the_model_s_own_at_each_position():
    model = MathTransformer.from_preset("tiny").eval()
    problems = sample_problems(6, num_digits=2, seed=0) + sample_problems(5, num_digits=1, seed=1)
    acts = cache_activations(model, problems, batch_size=4)  # mixed lengths: padded batches
    assert acts.streams == ["embed", "L0", "L1"] and acts.acts.shape[:3] == (3, 11, len(acts.kinds))
    for row, ex in enumerate(problems):
        _, cache = model.run_with_cache(ex["text"])
        for k, kind in enumerate(acts.kinds):
            pos = int(acts.positions[row, k])
            if pos < 0:
                assert not acts.present[row, k] and not acts.acts[:, row, k].any()
                continue
            assert position_kinds(ex["text"])[pos] == kind
            for s, (_, hook) in enumerate(residual_streams(model.cfg)):
                torch.testing.assert_close(acts.acts[s, row, k], cache[hook][0, pos], atol=1e-5, rtol=1e-5)


def test_split_is_by_problem_and_seeded():
    a, b = split_examples(1000, 0.2, seed=4), split_examples(1000, 0.2, seed=4)
    assert a.sum() == 200 and (a == b).all() and not (a == split_examples(1000, 0.2, seed=5)).all()


@needs_checkpoint
def test_operand_digit_at_its_own_position_is_read_perfectly(shipped_acts):
    results = fit_probes(shipped_acts, quantities=["a[0]", "b[1]"])
    for quantity, kind in (("a[0]", "a0"), ("b[1]", "b1")):
        for stream in results.streams:
            cell = results.cell(quantity, stream, kind)
            assert cell["accuracy"] >= 0.95, cell
            assert cell["control"] < 0.2 and cell["majority"] < 0.2, cell
        assert results.meaningful()[results.quantities.index(quantity)].any()


@needs_checkpoint
def test_a_label_the_input_does_not_determine_stays_at_chance(shipped_acts):
    results = fit_probes(shipped_acts, quantities=["random"])
    acc = results.accuracy[0]
    n = results.n_test.min()
    assert n >= 250
    assert np.nanmax(acc) < 0.1 + 4 * (0.1 * 0.9 / n) ** 0.5, acc  # chance is 10 %: 10 classes
    assert not results.meaningful()[0].any()
    assert results.first_readable("random") is None


@needs_checkpoint
def test_probes_find_the_carry_where_the_trace_computes_it(shipped_acts):
    """A known fact about the shipped model (notebook 06): the carry into column 1 is linearly readable at the
    first step's '=' (where the model writes 8+9=*1*7), but not from the first operand's units digit alone."""
    results = fit_probes(shipped_acts, quantities=["carry_in[1]"])
    assert results.cell("carry_in[1]", "L1", "s0.=")["accuracy"] > 0.98
    at_a0 = results.cell("carry_in[1]", "L3", "a0")
    assert at_a0["accuracy"] < 0.9  # a0 alone does not determine the carry (b0 comes later)
    labels = label_table(shipped_acts.examples)
    assert 0.3 < labels["carry_in[1]"].mean() < 0.7


@needs_checkpoint
def test_probe_summary_names_cells_and_baselines(shipped_acts):
    results = fit_probes(shipped_acts, quantities=["a[0]", "random"])
    text = results.format_summary()
    assert "a[0]" in text and "random" in text and "never" in text  # random is never readable
    best = results.best("a[0]", meaningful_only=True)
    assert best["kind"] == "a0" and best["accuracy"] >= 0.95
