"""The looped model (mathllm.model, n_loops): shared weights run L times with the input re-added, a hook per
iteration, any L at use time, a KV cache that agrees with the full forward, and frozen iterations for the
progressive loss."""

from __future__ import annotations

import math

import pytest
import torch

from mathllm.generate import generate
from mathllm.model import MathTransformer, ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def looped(n_loops: int = 3, seed: int = 0) -> MathTransformer:
    torch.manual_seed(seed)
    return MathTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_loops=n_loops)).eval()


def by_hand(model: MathTransformer, ids: torch.Tensor, n_loops: int) -> torch.Tensor:
    """h = blocks(e); h = blocks(h + e); ...; logits = unembed(ln_final(h))."""
    e = model.embed(ids)
    rope = model.rotary[: ids.shape[1]]
    h = e
    for i in range(n_loops):
        h = h if i == 0 else h + e
        for block in model.blocks:
            h = block(h, rope, None)
    return model.unembed(model.ln_final(h))


def test_a_looped_model_is_the_block_stack_run_again_with_the_input_re_added():
    model = looped(3)
    ids = torch.tensor([[1, 2, 10, 3, 4, 11, 19, 19, 19]])
    torch.testing.assert_close(model(ids), by_hand(model, ids, 3))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in looped(1).parameters())


def test_any_number_of_iterations_at_use_time_and_back():
    model = looped(3)
    ids = torch.tensor([[5, 10, 7, 11, 19, 19]])
    with model.looping(7):
        assert model.n_loops == 7
        torch.testing.assert_close(model(ids), by_hand(model, ids, 7))
    assert model.n_loops == 3
    model.set_loops(1)
    torch.testing.assert_close(model(ids), by_hand(model, ids, 1))
    with pytest.raises(ValueError, match="positive integer"):
        model.set_loops(0)


def test_every_iteration_has_its_own_hooks_and_the_last_one_is_the_output():
    model = looped(3)
    ids = torch.tensor([[1, 2, 10, 3, 4, 11, 19, 19, 19]])
    logits, cache = model.run_with_cache(ids)
    for i in range(3):
        assert cache[f"loops.{i}.hook_resid_post"].shape == (1, 9, 32)
    with model.looping(2):
        two = model(ids)
    lens = model.unembed(model.ln_final(cache["loops.1.hook_resid_post"]))
    torch.testing.assert_close(lens, two)  # the state after iteration 2 is what a 2-iteration run outputs
    final = model.unembed(model.ln_final(cache["loops.2.hook_resid_post"]))
    torch.testing.assert_close(final, logits)
    # the pre-hook of iteration 1 sees the state plus the input embedding
    torch.testing.assert_close(cache["loops.1.hook_resid_pre"],
                               cache["loops.0.hook_resid_post"] + cache["hook_embed"])


def test_a_one_pass_model_is_unchanged_by_the_loop_machinery():
    torch.manual_seed(0)
    one = MathTransformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64)).eval()
    assert len(one.loops) == 0 and one.n_loops == 1
    assert not any(name.startswith("loops.") for name in one.hook_dict)
    ids = torch.tensor([[3, 10, 4, 11]])
    torch.testing.assert_close(one(ids), by_hand(one, ids, 1))


def test_the_kv_cache_of_a_looped_model_agrees_with_the_full_forward():
    model = looped(3)
    ids = torch.tensor([[1, 2, 10, 3, 4, 11, 4, 6, 15]])
    full = model(ids)
    out, cache = model(ids[:, :5], use_cache=True)
    assert len(cache.keys) == 2 * 3  # one slot per (layer, iteration)
    steps = [out]
    for t in range(5, ids.shape[1]):
        steps.append(model(ids[:, t : t + 1], past_key_values=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    with model.looping(5):  # past the trained count, generation with the cache still matches a full forward
        texts = generate(model, ["12+34="], max_new_tokens=4, stop_at_end=False)
        ids5 = torch.tensor([model.to_tokens("12+34=" + texts[0])[0].tolist()])
        greedy = model(ids5[:, :-1]).argmax(-1)[0, 5:]
        assert greedy.tolist() == ids5[0, 6:].tolist()


def test_frozen_iterations_pass_gradients_through_the_later_ones_only():
    model = looped(4).train()
    ids = torch.tensor([[1, 2, 10, 3, 4, 11, 19, 19, 19]])
    with model.looping(3), model.frozen_iterations(1):
        model(ids).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.no_grad():  # by hand: one iteration without a graph, then two with
        e = model.embed(ids)
        rope = model.rotary[:9]
        h = e
        for block in model.blocks:
            h = block(h, rope, None)
    h = h.detach()
    e = model.embed(ids)
    for _ in range(2):
        h = h + e
        for block in model.blocks:
            h = block(h, rope, None)
    model.unembed(model.ln_final(h)).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)
    with model.looping(2), model.frozen_iterations(2), pytest.raises(ValueError, match="leave none"):
        model(ids)
    with pytest.raises(ValueError, match="non-negative"):
        with model.frozen_iterations(-1):
            pass


def test_residual_writers_are_scaled_for_the_depth_the_stream_passes_through():
    torch.manual_seed(0)
    deep = MathTransformer(ModelConfig(n_layers=2, d_model=256, n_heads=4, d_mlp=512, n_loops=4))
    expected = 0.02 / math.sqrt(2 * 2 * 4)
    assert deep.blocks[0].mlp.W_out.std().item() == pytest.approx(expected, rel=0.05)
    assert deep.blocks[0].attn.W_Q.std().item() == pytest.approx(0.02, rel=0.05)
