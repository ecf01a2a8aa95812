"""Activation patching (mathllm.interp.patching): TransformerLens's sweeps agree with a patch written by hand."""

import pytest
import torch

from mathllm.checkpoints import load
from mathllm.interp.patching import (carry_flip_pairs, digit_change_pairs, logit_diff, manual_patch, patch_blocks,
                                     patch_heads, patch_residual)
from mathllm.interp.positions import same_template_problems, sample_problems, template_of
from mathllm.model import MathTransformer
from mathllm.utils import SHIPPED_CHECKPOINT

needs_checkpoint = pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "model.safetensors").is_file(),
                                      reason="no shipped checkpoint")


@pytest.fixture(scope="module")
def shipped():
    return load(SHIPPED_CHECKPOINT, device="cpu").model


@pytest.fixture(scope="module")
def digit_pairs():
    return digit_change_pairs(same_template_problems([658, 189], 12, seed=2), column=1)


def test_digit_change_pairs_differ_only_in_that_digit_and_what_follows_from_it(digit_pairs):
    pairs = digit_pairs
    assert len(pairs) == 12 and pairs.clean_tokens.shape == pairs.corrupted_tokens.shape
    assert pairs.kinds[-1] == "ans2"  # the sequences end where the model writes answer digit 1
    assert pairs.kinds == list(template_of([658, 189])[: len(pairs.kinds)])  # named as in the whole problem
    differing = {pairs.kinds[p] for p in pairs.differing_positions()}
    assert differing <= {"b1", "s1.b", "s1.r0"} and "b1" in differing
    assert (pairs.clean_target != pairs.corrupted_target).all()


def test_carry_flip_pairs_flip_the_first_digit_of_the_column_total():
    pairs = carry_flip_pairs(sample_problems(20, seed=3), column=0)
    assert pairs.kinds[-1] == "s0.="
    for clean, corrupted, c, x in zip(pairs.clean_texts, pairs.corrupted_texts, pairs.clean_target,
                                      pairs.corrupted_target):
        a, b = (int(v) for v in clean.split("<think>")[1].rstrip("=").split("+"))
        a2, b2 = (int(v) for v in corrupted.split("<think>")[1].rstrip("=").split("+"))
        assert (a + b >= 10) != (a2 + b2 >= 10) and c != x


@needs_checkpoint
def test_patching_sweep_agrees_with_a_hand_written_run_with_hooks_patch(shipped, digit_pairs):
    result = patch_residual(shipped, digit_pairs)
    L, P = shipped.cfg.n_layers, len(digit_pairs.kinds)
    assert result.values.shape == (L, P)
    assert result.clean_logit_diff > 0 > result.corrupted_logit_diff  # the model gets both right
    (layer, pos), value = result.top(1)[0]
    for layer_, pos_ in [(layer, pos), (0, digit_pairs.kinds.index("b1")), (L - 1, P - 1), (1, 3)]:
        by_hand = manual_patch(shipped, digit_pairs, f"blocks.{layer_}.hook_resid_pre", pos_)
        assert result.values[layer_, pos_].item() == pytest.approx(by_hand, abs=1e-4)
    # Known structure: at layer 0 the residual stream is the token embedding, so patching a position whose
    # token is the same in both runs changes nothing at all.
    same = [p for p in range(P) if p not in digit_pairs.differing_positions()]
    assert result.values[0, same].abs().max() < 1e-5
    # ... and the digit's information is found somewhere: some cell restores most of the difference.
    assert value > 0.8


@needs_checkpoint
def test_head_and_block_sweeps_have_their_shapes(shipped):
    pairs = carry_flip_pairs(sample_problems(8, seed=5), column=0)
    heads = patch_heads(shipped, pairs)
    assert heads.values.shape == (shipped.cfg.n_layers, shipped.cfg.n_heads)
    blocks = patch_blocks(shipped, pairs)
    assert blocks.values.shape == (3, shipped.cfg.n_layers, len(pairs.kinds))
    resid = patch_residual(shipped, pairs)
    torch.testing.assert_close(blocks.values[0], resid.values)


def test_patching_refuses_a_model_in_training_mode(digit_pairs):
    model = MathTransformer.from_preset("tiny").train()
    with pytest.raises(RuntimeError, match="eval"):
        patch_residual(model, digit_pairs)
    logits = model.eval()(digit_pairs.clean_tokens)
    assert logit_diff(logits, digit_pairs).shape == (len(digit_pairs),)
