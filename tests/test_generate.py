"""Tests for mathllm.generate: cached batched generation equals naive generation, stopping,
probabilities, ordering, sampling. (The completion parser, once here, is mathllm.text: tests/test_text.py.)"""

from __future__ import annotations

import random

import pytest
import torch

from mathllm.generate import Generation, generate
from mathllm.model import MathTransformer, ModelConfig
from mathllm.tokenizer import END_ID, TOKENIZER


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_model(positional: str = "rotary", end_boost: float = 2.0) -> MathTransformer:
    """A random tiny model whose <end> logit is boosted so that rows stop after varied lengths."""
    torch.manual_seed(0)
    model = MathTransformer(ModelConfig.from_preset("tiny", positional=positional, init_std=0.3))
    with torch.no_grad():
        model.unembed.W_U[:, END_ID] += end_boost * model.unembed.W_U.std() * torch.randn(model.cfg.d_model)
    return model.eval()


def prompts(n: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["+".join(str(rng.randint(0, 99)) for _ in range(rng.choice([2, 3]))) + "=" for _ in range(n)]


def naive_greedy(model: MathTransformer, prompt: str, max_new_tokens: int, stop_at_end: bool = True) -> str:
    """Reference: re-run the whole sequence every step, no cache, no batching."""
    ids = TOKENIZER.encode(prompt)
    out = []
    with torch.no_grad():
        for _ in range(min(max_new_tokens, model.cfg.n_ctx - len(ids))):
            nxt = int(model(torch.tensor([ids + out]))[0, -1].argmax())
            out.append(nxt)
            if stop_at_end and nxt == END_ID:
                break
    return TOKENIZER.decode(out, skip_pad=False)


@pytest.mark.parametrize("positional", ["rotary", "learned"])
def test_cached_batched_generation_equals_naive_generation(positional):
    model = make_model(positional)
    ps = prompts(40)
    model.set_attention_backend("sdpa")
    got = generate(model, ps, max_new_tokens=20, batch_size=8)  # several batches per prompt length
    lengths = {len(TOKENIZER.tokenize(t)) for t in got}
    assert len(lengths) > 5  # rows stopped at many different steps: the batch shrinks mid-way
    assert got == [naive_greedy(model, p, 20) for p in ps]
    # the fused and the explicit attention paths generate the same
    model.force_explicit_attention(True)
    assert generate(model, ps[:10], max_new_tokens=20) == got[:10]


def test_stop_at_end_and_max_new_tokens():
    model = make_model()
    ps = prompts(12)
    stopped = generate(model, ps, max_new_tokens=15)
    full = generate(model, ps, max_new_tokens=15, stop_at_end=False)
    for s, f in zip(stopped, full):
        tokens = TOKENIZER.tokenize(s)
        assert len(tokens) <= 15
        assert "<end>" not in tokens[:-1]  # stops at the first <end>
        assert tokens[-1] == "<end>" or len(tokens) == 15
        assert len(TOKENIZER.tokenize(f)) == 15
        assert f.startswith(s)  # same greedy path, just not cut at <end>
    assert generate(model, ps[:2], max_new_tokens=0) == ["", ""]


def test_results_come_back_in_input_order_for_any_batch_size():
    model = make_model()
    ps = prompts(30, seed=3)
    reference = generate(model, ps, max_new_tokens=10, batch_size=1)
    for bs in (3, 7, 64):
        assert generate(model, ps, max_new_tokens=10, batch_size=bs) == reference
    reversed_ = generate(model, ps[::-1], max_new_tokens=10, batch_size=7)
    assert reversed_ == reference[::-1]


def test_parallel_workers_give_the_same_results():
    model = make_model()
    ps = prompts(50, seed=5)
    one = generate(model, ps, max_new_tokens=12, batch_size=8, workers=1)
    assert generate(model, ps, max_new_tokens=12, batch_size=8, workers=2) == one
    assert generate(model, ps, max_new_tokens=12, batch_size=64, workers=3) == one
    assert torch.get_num_threads() == 1  # restored after the worker threads


@pytest.mark.parametrize("stop_at_end", [True, False])
def test_drafts_give_exactly_what_greedy_generation_gives(stop_at_end):
    model = make_model(end_boost=1.0)
    ps = prompts(40, seed=2)
    plain = generate(model, ps, max_new_tokens=16, stop_at_end=stop_at_end, return_probs=True)
    texts = [g.text for g in plain]
    # perfect drafts: everything verified in one pass
    same = generate(model, ps, max_new_tokens=16, stop_at_end=stop_at_end, return_probs=True, drafts=texts)
    assert [g.text for g in same] == texts
    assert [g.finished for g in same] == [g.finished for g in plain]
    for a, b in zip(same, plain):
        torch.testing.assert_close(torch.tensor(a.probs), torch.tensor(b.probs), rtol=1e-4, atol=1e-6)
    # bad drafts of every kind: wrong token somewhere, cut short, too long, junk after <end>, none
    rng = random.Random(0)
    bad = []
    for i, g in enumerate(plain):
        ids = list(g.token_ids)
        kind = i % 5
        if kind == 0 and ids:
            ids[rng.randrange(len(ids))] = rng.randrange(model.cfg.d_vocab)
        elif kind == 1:
            ids = ids[: len(ids) // 2]
        elif kind == 2:
            ids = ids + TOKENIZER.encode("12<end>3")
        elif kind == 3:
            ids = [END_ID] + ids
        else:
            ids = None
        bad.append(ids)
    bad[1] = ""
    got = generate(model, ps, max_new_tokens=16, stop_at_end=stop_at_end, return_probs=True, drafts=bad)
    assert [g.text for g in got] == texts
    for a, b in zip(got, plain):
        torch.testing.assert_close(torch.tensor(a.probs), torch.tensor(b.probs), rtol=1e-4, atol=1e-6)


def test_draft_errors():
    model = make_model()
    with pytest.raises(ValueError, match="greedy"):
        generate(model, ["1+2="], drafts=["3<end>"], temperature=1.0)
    with pytest.raises(ValueError, match="1 prompts"):
        generate(model, ["1+2="], drafts=["3<end>", "4<end>"])
    with pytest.raises(ValueError, match="vocabulary"):
        generate(model, ["1+2="], drafts=[[99]])


def test_return_probs_gives_the_probability_of_each_chosen_token():
    model = make_model()
    ps = ["12+34=", "5+6+7="]
    gens = generate(model, ps, max_new_tokens=8, return_probs=True)
    assert all(isinstance(g, Generation) for g in gens)
    assert [g.text for g in gens] == generate(model, ps, max_new_tokens=8)
    for p, g in zip(ps, gens):
        assert g.prompt == p
        assert len(g.probs) == len(g.token_ids) == len(g.tokens)
        assert g.finished == (g.token_ids[-1] == END_ID)
        ids = TOKENIZER.encode(p)
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids + g.token_ids]))[0, len(ids) - 1 : -1], dim=-1)
        expected = probs.gather(1, torch.tensor(g.token_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(g.probs), expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(g.probs), probs.max(-1).values, rtol=1e-4, atol=1e-6)  # greedy


def test_prompt_forms_and_errors():
    model = make_model()
    ids = [TOKENIZER.encode(p) for p in ["12+34=", "56+78="]]
    by_text = generate(model, ["12+34=", "56+78="], max_new_tokens=6)
    assert generate(model, torch.tensor(ids), max_new_tokens=6) == by_text
    assert generate(model, [torch.tensor(ids[0]), ids[1]], max_new_tokens=6) == by_text
    assert generate(model, [], max_new_tokens=6) == []
    with pytest.raises(TypeError, match="list of prompts"):
        generate(model, "12+34=")
    with pytest.raises(ValueError, match="empty"):
        generate(model, [""])
    with pytest.raises(ValueError, match="n_ctx"):
        generate(model, [[1] * 128])
    # a prompt near n_ctx generates only what fits
    out = generate(model, [[1] * 125], max_new_tokens=10, stop_at_end=False)
    assert len(TOKENIZER.tokenize(out[0])) == 3


def test_sampling_is_reproducible_with_a_generator_and_training_mode_is_restored():
    model = make_model(end_boost=0.0).train()
    ps = prompts(6)
    a = generate(model, ps, max_new_tokens=12, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = generate(model, ps, max_new_tokens=12, temperature=1.0, generator=torch.Generator().manual_seed(1))
    c = generate(model, ps, max_new_tokens=12, temperature=1.0, generator=torch.Generator().manual_seed(2))
    assert a == b and a != c
    assert model.training  # generate() switches to eval (no dropout) and back


def test_hooks_are_active_during_generation():
    model = make_model()
    ps = prompts(5)
    clean = generate(model, ps, max_new_tokens=8)

    def zero(act, hook):
        return torch.zeros_like(act)

    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", zero)]):
        ablated = generate(model, ps, max_new_tokens=8)
    assert ablated != clean
    assert generate(model, ps, max_new_tokens=8) == clean  # hooks removed again
