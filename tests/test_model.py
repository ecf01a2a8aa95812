"""Behavioural tests for mathllm.model: shapes, causality, the two attention paths, the KV cache,
TransformerLens hooks/patching and bridge equivalence. (Saving and loading: tests/test_checkpoints.py.)"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mathllm.model import (
    PRESETS,
    KVCache,
    MathTransformer,
    ModelConfig,
    parameter_count,
)
from mathllm.tokenizer import TOKENIZER, VOCAB_SIZE

POSITIONAL = ["rotary", "learned"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's spinning threads
    make every op ~5x slower; one thread keeps this file fast and its timing steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(positional: str = "rotary", seed: int = 0, **overrides) -> MathTransformer:
    """Tiny model with weights big enough (init_std 0.1, non-zero biases and LN params) that every
    part of the architecture visibly matters, in eval mode."""
    torch.manual_seed(seed)
    model = MathTransformer(ModelConfig.from_preset("tiny", positional=positional, init_std=0.1, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def random_ids(batch: int = 3, pos: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB_SIZE, (batch, pos), generator=g)


# ---------------------------------------------------------------------------------------------
# config and presets


def test_preset_parameter_counts_match_the_real_models():
    expected = {"tiny": 104_832, "mini": 802_816, "small": 2_127_872, "medium": 12_655_616, "large": 25_257_984}
    assert set(PRESETS) >= set(expected)
    for name in PRESETS:
        assert parameter_count(name) == sum(p.numel() for p in MathTransformer.from_preset(name).parameters())
    for name, count in expected.items():
        assert parameter_count(name) == count
    learned = MathTransformer.from_preset("tiny", positional="learned")
    assert parameter_count("tiny", positional="learned") == sum(p.numel() for p in learned.parameters())
    assert parameter_count("tiny", positional="learned") == expected["tiny"] + 128 * 64


def test_config_round_trips_through_json_and_rejects_nonsense():
    cfg = ModelConfig.from_preset("small", positional="learned", dropout=0.1)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.d_head) == (4, 256, 4, 512, 64)
    assert cfg.d_vocab == VOCAB_SIZE and cfg.n_ctx == 128
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layer": 3})
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=65, n_heads=4)
    with pytest.raises(ValueError, match="positional"):
        ModelConfig(positional="alibi")
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.from_preset("huge")
    # what TransformerLens reads from model.cfg
    assert cfg.n_key_value_heads is None and cfg.normalization_type == "LN" and cfg.device == "cpu"


# ---------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("positional", POSITIONAL)
def test_forward_shapes_and_input_forms(positional):
    model = make_model(positional)
    ids = random_ids(2, 7)
    logits = model(ids)
    assert logits.shape == (2, 7, VOCAB_SIZE)
    torch.testing.assert_close(model(ids[0]), logits[:1])  # [pos] is a batch of one
    text = "12+34=<think>"
    torch.testing.assert_close(model(text), model(torch.tensor([TOKENIZER.encode(text)])))
    loss = model(ids, return_type="loss")
    assert loss.shape == () and loss.item() > 0
    both_logits, both_loss = model(ids, return_type="both")
    torch.testing.assert_close(both_logits, logits)
    torch.testing.assert_close(both_loss, loss)
    assert model(ids, return_type=None) is None
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        model(random_ids(1, 129))
    with pytest.raises(ValueError, match="exactly one"):
        model()


@pytest.mark.parametrize("positional", POSITIONAL)
def test_future_tokens_do_not_change_past_logits(positional):
    model = make_model(positional)
    ids = random_ids(2, 10)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % VOCAB_SIZE
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3


@pytest.mark.parametrize("positional", POSITIONAL)
def test_fused_and_explicit_attention_agree(positional):
    model = make_model(positional)
    ids = random_ids(3, 20)
    model.set_attention_backend("sdpa")
    fused = model(ids)
    model.force_explicit_attention(True)
    explicit = model(ids)
    model.set_attention_backend("auto")  # explicit on this CPU
    torch.testing.assert_close(model(ids), explicit, rtol=0, atol=0)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    # and the gradients agree too
    model.train()
    grads = []
    for backend in ("sdpa", "explicit"):
        model.zero_grad()
        model.set_attention_backend(backend)
        model(ids, return_type="loss").backward()
        grads.append(model.blocks[0].attn.W_Q.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("backend", ["sdpa", "explicit"])
def test_kv_cache_gives_the_same_logits_as_one_full_pass(positional, backend):
    model = make_model(positional)
    model.set_attention_backend(backend)
    ids = random_ids(3, 24)
    full = model(ids)
    cache = KVCache.for_model(model, 3, capacity=4)  # small on purpose: it has to grow
    pieces = [model(ids[:, :7], past_key_values=cache)]
    for i in range(7, 12):  # one token at a time
        pieces.append(model(ids[:, i : i + 1], past_key_values=cache))
    out, same = model(ids[:, 12:], past_key_values=cache, use_cache=True)  # several after a cache
    pieces.append(out)
    assert same is cache and len(cache) == 24 and cache.capacity >= 24
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=2e-5)
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        model(random_ids(3, 105), past_key_values=cache)


def test_kv_cache_select_keeps_rows():
    model = make_model()
    ids = random_ids(4, 9)
    cache = KVCache.for_model(model, 4, capacity=16)
    model(ids[:, :8], past_key_values=cache)
    cache.select(torch.tensor([3, 1]))
    last = model(ids[[3, 1], 8:], past_key_values=cache)
    torch.testing.assert_close(last, model(ids[[3, 1]])[:, 8:], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("positional", POSITIONAL)
def test_inputs_embeds_path_equals_ids_path_and_carries_gradients(positional):
    model = make_model(positional)
    ids = random_ids(2, 9)
    one_hot = torch.nn.functional.one_hot(ids, VOCAB_SIZE).float().requires_grad_(True)
    via_embeds = model(inputs_embeds=one_hot @ model.W_E)
    torch.testing.assert_close(via_embeds, model(ids), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.embed_tokens(ids), model.W_E[ids])
    via_embeds[:, -1, 3].sum().backward()
    assert one_hot.grad is not None and one_hot.grad.abs().sum() > 0
    # a frozen model after no-grad use (cached fused weights) still passes gradients to its input
    model.requires_grad_(False)
    with torch.inference_mode():
        model(ids)
    one_hot.grad = None
    model(inputs_embeds=one_hot @ model.W_E)[:, -1, 3].sum().backward()
    assert one_hot.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        model(inputs_embeds=torch.zeros(2, 3, 5))


def test_in_place_weight_edits_take_effect_even_through_data():
    model = make_model()
    ids = random_ids()
    with torch.inference_mode():
        before = model(ids)
        model.blocks[0].attn.W_V.data[1] = 0  # an ablation as notebooks write it (untracked by autograd)
        after = model(ids)
    assert (after - before).abs().max() > 1e-3


def test_a_few_training_steps_lower_the_loss():
    model = make_model(dropout=0.1).train()
    ids = random_ids(8, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(ids, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------------------------------------
# TransformerLens hooks, cache and patching


def expected_hook_shapes(cfg: ModelConfig, batch: int, pos: int) -> dict[str, tuple]:
    d, h, dh, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    shapes = {"hook_embed": (batch, pos, d)}
    if cfg.positional == "learned":
        shapes["hook_pos_embed"] = (batch, pos, d)
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        shapes.update({
            b + "hook_resid_pre": (batch, pos, d),
            b + "ln1.hook_scale": (batch, pos, 1),
            b + "ln1.hook_normalized": (batch, pos, d),
            b + "attn.hook_q": (batch, pos, h, dh),
            b + "attn.hook_k": (batch, pos, h, dh),
            b + "attn.hook_v": (batch, pos, h, dh),
            b + "attn.hook_attn_scores": (batch, h, pos, pos),
            b + "attn.hook_pattern": (batch, h, pos, pos),
            b + "attn.hook_z": (batch, pos, h, dh),
            b + "hook_attn_out": (batch, pos, d),
            b + "hook_resid_mid": (batch, pos, d),
            b + "ln2.hook_scale": (batch, pos, 1),
            b + "ln2.hook_normalized": (batch, pos, d),
            b + "mlp.hook_pre": (batch, pos, m),
            b + "mlp.hook_post": (batch, pos, m),
            b + "hook_mlp_out": (batch, pos, d),
            b + "hook_resid_post": (batch, pos, d),
        })
        if cfg.positional == "rotary":
            shapes[b + "attn.hook_rot_q"] = (batch, pos, h, dh)
            shapes[b + "attn.hook_rot_k"] = (batch, pos, h, dh)
    shapes["ln_final.hook_scale"] = (batch, pos, 1)
    shapes["ln_final.hook_normalized"] = (batch, pos, d)
    return shapes


@pytest.mark.parametrize("positional", POSITIONAL)
def test_run_with_cache_has_every_standard_hook_with_its_shape(positional):
    from transformer_lens import ActivationCache

    model = make_model(positional)
    ids = random_ids(2, 11)
    logits, cache = model.run_with_cache(ids)
    assert isinstance(cache, ActivationCache)
    shapes = {name: tuple(cache[name].shape) for name in cache.keys()}
    assert shapes == expected_hook_shapes(model.cfg, 2, 11)
    torch.testing.assert_close(logits, model(ids), rtol=1e-5, atol=1e-5)
    pattern = cache["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 11))
    assert pattern[0, 0].triu(1).abs().max() == 0  # causal
    assert torch.isinf(cache["blocks.0.attn.hook_attn_scores"][0, 0, 0, 1])  # masked score is -inf
    # the residual stream decomposes: resid_post = resid_pre + attn_out + mlp_out
    torch.testing.assert_close(
        cache["blocks.1.hook_resid_post"],
        cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"] + cache["blocks.1.hook_mlp_out"],
    )
    # ActivationCache's model-aware helpers work on it
    assert cache.decompose_resid().shape[1:] == (2, 11, model.cfg.d_model)
    assert cache.stack_head_results(layer=-1).shape == (model.cfg.n_layers * model.cfg.n_heads, 2, 11, 64)
    assert cache.accumulated_resid(apply_ln=True).shape == (model.cfg.n_layers + 1, 2, 11, 64)


def test_hooks_intervene_on_every_kind_of_activation():
    model = make_model()
    ids = random_ids(2, 10)
    clean = model(ids)

    def zero(act, hook):
        return torch.zeros_like(act)

    for name in ["blocks.0.attn.hook_z", "blocks.1.attn.hook_pattern", "blocks.0.attn.hook_attn_scores",
                 "blocks.0.mlp.hook_post", "blocks.1.ln1.hook_normalized", "blocks.0.attn.hook_rot_k",
                 "blocks.1.hook_resid_mid", "hook_embed"]:
        ablated = model.run_with_hooks(ids, fwd_hooks=[(name, zero)])
        assert (ablated - clean).abs().max() > 1e-3, name
    # a hook that only reads leaves the output unchanged; hooks are gone afterwards
    seen = []
    out = model.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, hook: seen.append(a.shape))])
    assert seen == [(2, 4, 10, 10)]
    torch.testing.assert_close(out, clean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(ids), clean, rtol=0, atol=0)
    # zero-ablating one head's z equals removing that head's contribution through W_O
    _, cache = model.run_with_cache(ids)

    def kill_head(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    patched_attn = []
    model.run_with_hooks(ids, fwd_hooks=[
        ("blocks.0.attn.hook_z", kill_head),
        ("blocks.0.hook_attn_out", lambda a, hook: patched_attn.append(a)),
    ])
    head_2 = cache["blocks.0.attn.hook_z"][:, :, 2] @ model.blocks[0].attn.W_O[2]
    torch.testing.assert_close(patched_attn[0], cache["blocks.0.hook_attn_out"] - head_2, rtol=1e-5, atol=1e-5)


def test_transformer_lens_patching_runs_on_the_model():
    from transformer_lens import patching

    model = make_model()
    clean = model.to_tokens(["12+34=<think>", "56+78=<think>"])
    corrupt = model.to_tokens(["12+35=<think>", "56+79=<think>"])
    _, clean_cache = model.run_with_cache(clean)
    answer = TOKENIZER.encode("6")[0]

    def metric(logits):
        return logits[:, -1, answer].mean()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resid = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
        heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric)
    n_pos = clean.shape[1]
    assert resid.shape == (model.cfg.n_layers, n_pos)
    assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
    # patching the whole residual stream at the only differing position restores the clean metric,
    # patching a position where the runs agree changes nothing
    torch.testing.assert_close(resid[0, 4], metric(model(clean)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(resid[0, 0], metric(model(corrupt)), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# TransformerBridge equivalence


@pytest.mark.parametrize("positional", POSITIONAL)
def test_transformer_bridge_gives_the_same_logits(positional):
    model = make_model(positional)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = model.to_bridge()
        ids = random_ids(3, 40)
        theirs = bridge(ids)
        _, bridge_cache = bridge.run_with_cache(ids)
    ours = model(ids)
    assert ours.abs().max() > 1.0  # weights large enough that a mismatch would show
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # the same tensors, reshaped: bridge's per-head views equal ours
    torch.testing.assert_close(bridge.blocks[1].attn.W_Q, model.blocks[1].attn.W_Q, rtol=0, atol=0)
    torch.testing.assert_close(bridge.W_U, model.W_U, rtol=0, atol=0)
    _, our_cache = model.run_with_cache(ids)
    for name in ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.mlp.hook_post",
                 "blocks.0.ln1.hook_normalized", "blocks.1.hook_resid_post"]:
        torch.testing.assert_close(bridge_cache[name], our_cache[name], rtol=1e-5, atol=1e-5)


def test_cfg_device_follows_the_model():
    model = make_model()
    assert model.cfg.device == "cpu"
    model.to(torch.float64)
    assert model.cfg.device == "cpu" and model.W_E.dtype == torch.float64
    assert model(random_ids()).dtype == torch.float64
    other = MathTransformer(model.cfg)
    assert other.cfg is not model.cfg  # each model owns its config copy


def test_attention_backend_is_checked_and_a_hooked_pattern_is_computed_even_with_sdpa():
    model = make_model()
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        model.set_attention_backend("flash")
    model.set_attention_backend("sdpa")
    ids = random_ids(2, 12)
    _, cache = model.run_with_cache(ids, names_filter="blocks.0.attn.hook_pattern")
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (2, model.cfg.n_heads, 12, 12)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, model.cfg.n_heads, 12))
    assert float(pattern.triu(1).abs().max()) == 0.0  # causal


def test_frozen_weights_give_the_same_logits_and_are_released_after_the_block():
    model = make_model()
    ids = random_ids(2, 10)
    before = model(ids)
    with model.frozen_weights():
        torch.testing.assert_close(model(ids), before, rtol=0, atol=0)
        assert all(block.attn.frozen_qkv is not None for block in model.blocks)
    assert all(block.attn.frozen_qkv is None for block in model.blocks)
    with torch.no_grad():
        model.blocks[0].attn.W_Q.mul_(2.0)  # an edit after the block takes effect
    assert (model(ids) - before).abs().max() > 1e-4
