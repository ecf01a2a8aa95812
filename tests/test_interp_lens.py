"""The logit lens (mathllm.interp.lens)."""

import numpy as np
import pytest

from mathllm.interp.lens import logit_lens, logit_lens_accuracy
from mathllm.interp.positions import position_kinds, sample_problems
from mathllm.interp.probes import cache_activations
from mathllm.tokenizer import TOKENIZER

TEXT = "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"


def test_the_last_stream_s_lens_is_the_model_s_output(model):
    lens = logit_lens(model, TEXT)
    probs = model(TEXT)[0].softmax(-1).detach().numpy()
    assert lens.streams == ["embed", "L0", "L1"] and lens.probs.shape == (3, *probs.shape)
    np.testing.assert_allclose(lens.probs[-1], probs, atol=1e-5)
    ids = TOKENIZER.encode(TEXT)
    target = lens.target_probs()
    assert np.isnan(target[:, -1]).all()
    np.testing.assert_allclose(target[-1, 3], probs[3, ids[4]], atol=1e-6)
    assert lens.top_tokens()[-1, 0] == TOKENIZER.vocab[int(probs[0].argmax())]


def test_early_streams_differ_from_the_output(model):
    lens = logit_lens(model, TEXT)
    assert not np.allclose(lens.probs[0], lens.probs[-1], atol=1e-3)


def test_lens_accuracy_of_the_last_stream_is_teacher_forced_accuracy(model):
    problems = sample_problems(40, num_digits=2, seed=0)
    acts = cache_activations(model, problems)
    acc = logit_lens_accuracy(model, acts)
    k = acc.kinds.index("s0.=")
    right = 0
    for ex in problems:
        ids = TOKENIZER.encode(ex["text"])
        pos = position_kinds(ex["text"]).index("s0.=")
        right += int(model(ex["text"])[0, pos].argmax()) == ids[pos + 1]
    assert acc.count[k] == 40
    assert acc.accuracy[-1, k] == pytest.approx(right / 40)
    assert acc.first_correct_stream(threshold=1.01)["s0.="] is None
