"""A small decoder-only transformer with TransformerLens hooks, built for speed and for looking inside.

One file, nanoGPT-style: a config dataclass, a few small modules, one model class.

    >>> cfg = ModelConfig.from_preset("tiny")
    >>> model = MathTransformer(cfg)
    >>> logits = model(torch.tensor([[1, 10, 2, 11]]))          # [batch, pos, d_vocab]
    >>> logits, cache = model.run_with_cache("12+34=")           # transformer_lens.ActivationCache
    >>> cache["blocks.0.attn.hook_pattern"].shape               # [batch, head, query_pos, key_pos]
    torch.Size([1, 4, 6, 6])

Architecture (chosen to compute exactly what TransformerLens 4's ``TransformerBridge.boot_native``
model computes, so ``model.to_bridge()`` gives the same logits):

* pre-LN blocks: ``resid += attn(ln1(resid)); resid += mlp(ln2(resid))``; a final LayerNorm.
  LayerNorm is the standard one (mean-centred, biased variance, ``eps`` inside the sqrt, weight and bias).
* attention: biases on Q, K, V and O; scores divided by ``sqrt(d_head)``; causal.
* positions: ``"rotary"`` (RoPE on Q and K over the whole head, base 10000, *adjacent pairs*
  (x0, x1), (x2, x3)... rotate together, as in the bridge's NativeRotary) or ``"learned"`` (absolute
  ``W_pos`` added to the token embedding).
* MLP: ``W_in`` -> activation (exact erf GELU by default) -> ``W_out``, with biases.
* unembedding: ``W_U`` with no bias; not tied to ``W_E``.

Parameters are stored under the classic TransformerLens (HookedTransformer) names and per-head shapes,
so ``model.blocks[0].attn.W_Q`` is ``[n_heads, d_model, d_head]`` and ``state_dict()`` keys look like
``blocks.0.attn.W_Q``; TransformerLens's own ``convert_tl_checkpoint`` maps them onto the bridge.

Speed: attention has two paths that agree to float rounding (tested). The explicit one computes
the scores with one ``baddbmm`` (scale and causal mask fused in), a softmax and a ``bmm``, so the
pattern exists and hooks on ``hook_attn_scores``/``hook_pattern`` see and edit it. The fused one is
``F.scaled_dot_product_attention``. With no hook on the pattern, ``attention_backend="auto"`` takes the
explicit path on a CPU for up to ``CPU_MATMUL_ATTENTION_MAX_KEYS`` keys (measured 1.2-2x faster there than
SDPA's CPU flash kernel for this project's 10-128-token sequences, forward and backward) and SDPA
elsewhere (CUDA, long sequences). ``model.set_attention_backend("sdpa" | "explicit" | "auto")`` pins one.
"""

from __future__ import annotations

import contextlib
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens import ActivationCache, FactoredMatrix, HookedRootModule
from transformer_lens.hook_points import HookPoint

from mathllm import tokenizer as _tok

_ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU, what the bridge's native model calls "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "relu": F.relu,
    "silu": F.silu,
}
_POSITIONAL = ("rotary", "learned")
MAX_N_CTX = 1 << 16  # longest context a config may ask for


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Shape and hyper-parameters of a :class:`MathTransformer`. JSON round-trips via to_dict/from_dict."""

    n_layers: int = 2  # number of transformer blocks
    d_model: int = 64  # width of the residual stream
    n_heads: int = 4  # attention heads per block; d_head = d_model // n_heads
    d_mlp: int = 256  # hidden width of each block's MLP
    d_vocab: int = _tok.VOCAB_SIZE  # vocabulary size; ids are fixed in mathllm.tokenizer
    n_ctx: int = 128  # longest sequence (prompt + generated tokens) the model accepts
    positional: str = "rotary"  # "rotary" (RoPE on q/k) or "learned" (absolute W_pos added to the embedding)
    rotary_base: int = 10000  # RoPE frequency base (an int: the bridge config stores it as one)
    act_fn: str = "gelu"  # MLP activation: "gelu" (exact erf), "gelu_new" (tanh approx.), "relu", "silu"
    eps: float = 1e-5  # LayerNorm epsilon (added to the variance inside the sqrt)
    dropout: float = 0.0  # dropout on embeddings, attention probabilities and block outputs (training only)
    init_std: float = 0.02  # std of the normal init; W_O and W_out get init_std / sqrt(2 * n_layers)
    n_loops: int = 1  # run the block stack this many times with shared weights (1 = one pass), re-adding the input
    # Not constructor arguments and not saved: where the model lives. TransformerLens's patching
    # functions read cfg.device; MathTransformer keeps it in sync on .to()/.cuda()/.cpu().
    device: str = field(default="cpu", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab", "n_ctx", "rotary_base", "n_loops"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.positional not in _POSITIONAL:
            raise ValueError(f"positional must be one of {_POSITIONAL}, got {self.positional!r}")
        if self.positional == "rotary" and self.d_head % 2:
            raise ValueError(f"rotary positions need an even d_head, got {self.d_head}")
        if self.act_fn not in _ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {sorted(_ACTIVATIONS)}, got {self.act_fn!r}")
        if self.d_vocab < _tok.VOCAB_SIZE:
            raise ValueError(f"d_vocab ({self.d_vocab}) is smaller than the tokenizer's vocabulary ({_tok.VOCAB_SIZE})")
        if self.n_ctx > MAX_N_CTX:
            raise ValueError(f"ModelConfig.n_ctx {self.n_ctx} is above {MAX_N_CTX}: arithmetic here needs a few hundred "
                             "positions, and the rotary table alone would take n_ctx x d_head floats")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.eps > 0 or not self.init_std > 0:
            raise ValueError("eps and init_std must be positive")

    # ---- derived values, and the names TransformerLens code reads from model.cfg ----
    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_key_value_heads(self) -> None:  # no grouped-query attention
        return None

    @property
    def normalization_type(self) -> str:
        return "LN"

    @property
    def attn_only(self) -> bool:
        return False

    @property
    def final_rms(self) -> bool:
        return False

    @property
    def positional_embedding_type(self) -> str:
        return "rotary" if self.positional == "rotary" else "standard"

    @property
    def rotary_dim(self) -> int:
        return self.d_head

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    # ---- (de)serialisation ----
    def to_dict(self) -> dict[str, Any]:
        """The constructor fields, JSON-able. ``d_head`` is included for readers; from_dict checks it."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        out["d_head"] = self.d_head
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        d_head = data.pop("d_head", None)
        data.pop("device", None)
        allowed = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; allowed: {sorted(allowed)}")
        cfg = cls(**data)
        if d_head is not None and d_head != cfg.d_head:
            raise ValueError(f"config says d_head={d_head} but d_model/n_heads = {cfg.d_head}")
        return cfg

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """``ModelConfig.from_preset("small", positional="learned")``. Presets: see ``PRESETS``."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {list(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def shape_summary(self) -> str:
        return (
            f"n_layers={self.n_layers}, d_model={self.d_model}, n_heads={self.n_heads}, "
            f"d_mlp={self.d_mlp}, d_vocab={self.d_vocab}, positional={self.positional}"
            + (f", n_ctx={self.n_ctx}" if self.positional == "learned" else "")
            + (f", n_loops={self.n_loops}" if self.n_loops > 1 else "")
        )


# Shapes only; everything else takes the ModelConfig defaults. Real parameter counts (rotary,
# d_vocab 37; `learned` adds n_ctx * d_model = 128 * d_model): see parameter_count() / README.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, d_mlp=256),  # 104,832 params: CPU demos and tests
    "mini": dict(n_layers=4, d_model=128, n_heads=4, d_mlp=512),  # 802,816: the shipped 3-digit model
    "small": dict(n_layers=4, d_model=256, n_heads=4, d_mlp=512),  # 2,127,872
    "medium": dict(n_layers=6, d_model=512, n_heads=8, d_mlp=1024),  # 12,655,616
    "large": dict(n_layers=8, d_model=512, n_heads=8, d_mlp=2048),  # 25,257,984
}


def parameter_count(config: Union[ModelConfig, str], **overrides: Any) -> int:
    """Number of trainable parameters, computed from the shapes (equals ``sum(p.numel())``, tested).

    >>> parameter_count("tiny")
    104832
    """
    cfg = ModelConfig.from_preset(config, **overrides) if isinstance(config, str) else config
    d, m, L = cfg.d_model, cfg.d_mlp, cfg.n_layers
    attn = 4 * d * d + 4 * d  # W_Q, W_K, W_V, W_O (n_heads * d_head == d_model) + their biases
    mlp = 2 * d * m + m + d  # W_in, W_out, b_in, b_out
    norms = 2 * 2 * d  # ln1, ln2 (weight + bias)
    total = L * (attn + mlp + norms) + 2 * d  # + ln_final
    total += 2 * cfg.d_vocab * d  # W_E and W_U (untied, no unembed bias)
    if cfg.positional == "learned":
        total += cfg.n_ctx * d
    return total


def preset_parameter_counts(positional: str = "rotary") -> dict[str, int]:
    return {name: parameter_count(name, positional=positional) for name in PRESETS}


# --------------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of the positions seen so far, for fast generation.

    Per layer, ``keys[l]`` and ``values[l]`` are ``[batch, n_heads, capacity, d_head]`` buffers of which
    positions ``[0, length)`` are filled (keys already rotated when positions are rotary). The model
    writes new positions in place and grows the buffers (doubling) when they are full. Pass the same
    object as ``past_key_values`` on every step; positions continue from ``len(cache)``.

    ``differentiable=True`` keeps the autograd graph: new keys/values are concatenated (no in-place writes
    into tensors that backward needs), so a loss on later positions back-propagates into earlier cached
    steps (Gumbel-softmax training, ``mathllm.modes``). It costs a copy of the cache per call.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, d_head: int, capacity: int,
                 device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                 differentiable: bool = False):
        self.differentiable = differentiable
        shape = (batch, n_heads, 0 if differentiable else max(1, capacity), d_head)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.length = 0

    @classmethod
    def for_model(cls, model: "MathTransformer", batch: int, capacity: Optional[int] = None,
                  differentiable: bool = False) -> "KVCache":
        """A cache for ``model`` as it runs now: one slot per layer and iteration (``model.n_loops``)."""
        cfg = model.cfg
        cap = cfg.n_ctx if capacity is None else min(capacity, cfg.n_ctx)
        return cls(cfg.n_layers * model.n_loops, batch, cfg.n_heads, cfg.d_head, cap, model.W_E.device,
                   model.W_E.dtype, differentiable=differentiable)

    def __len__(self) -> int:
        return self.length

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def _grow(self, needed: int) -> None:
        new_cap = max(needed, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = old.new_empty(old.shape[:2] + (new_cap,) + old.shape[3:])
                new[:, :, : self.length] = old[:, :, : self.length]
                store[i] = new

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` ``[batch, head, new, d_head]`` after the cached positions; return all keys/values."""
        if k.shape[0] != self.batch_size:
            raise ValueError(f"KV cache holds {self.batch_size} rows but the input has {k.shape[0]}")
        if self.differentiable:
            if self.length:
                k = torch.cat([self.keys[layer][:, :, : self.length], k], dim=2)
                v = torch.cat([self.values[layer][:, :, : self.length], v], dim=2)
            self.keys[layer], self.values[layer] = k, v
            return k, v
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (indices, in that order) — e.g. drop finished generations."""
        n = self.length
        if self.differentiable:
            for store in (self.keys, self.values):
                for i, buf in enumerate(store):
                    store[i] = buf[:, :, :n].index_select(0, rows)
            return
        for store in (self.keys, self.values):
            for i, buf in enumerate(store):
                new = buf.new_empty((len(rows),) + buf.shape[1:])
                new[:, :, :n] = buf[:, :, :n].index_select(0, rows)
                store[i] = new


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


def _has_hooks(*points: HookPoint) -> bool:
    """True when any PyTorch hook (TransformerLens fwd/bwd hooks use these) is attached to a point."""
    return any(p._forward_hooks or p._backward_hooks or p._forward_pre_hooks for p in points)


def _rotate_adjacent(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """RoPE with adjacent pairs: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), as the bridge does.

    Written as one complex multiply (4x fewer kernels than slicing and stacking): each pair is a
    complex number; ``rotation`` holds ``(cos, sin)`` pairs, shape ``[pos, d_head / 2, 2]``, and ``x`` is
    ``[batch, head, pos, d_head]`` (the result is contiguous in that layout, ready for the attention matmuls).
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # complex32 is barely supported
    pairs = x.unflatten(-1, (-1, 2)).to(dtype)
    try:
        z = torch.view_as_complex(pairs)
    except RuntimeError:  # strides a hook may have produced; view_as_complex needs even strides
        z = torch.view_as_complex(pairs.contiguous())
    return torch.view_as_real(z * torch.view_as_complex(rotation.to(dtype))).flatten(-2).to(x.dtype)


# Up to this many key positions, attention_backend="auto" computes attention explicitly on a CPU.
CPU_MATMUL_ATTENTION_MAX_KEYS = 512
ATTENTION_BACKENDS = ("auto", "explicit", "sdpa")


def _causal_bias(n_queries: int, n_keys: int, past: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[n_queries, n_keys]``: 0 where query ``past + i`` may see key ``j`` (``j <= past + i``), -inf after."""
    future = torch.arange(n_keys, device=device)[None, :] > torch.arange(past, past + n_queries, device=device)[:, None]
    return torch.zeros((n_queries, n_keys), dtype=dtype, device=device).masked_fill_(future, float("-inf"))


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens names: weight ``w``, bias ``b``.

    Fused ``F.layer_norm`` unless a hook sits on ``hook_scale``/``hook_normalized``; then it is computed
    step by step so both exist (and edits to them take effect).
    """

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]        sqrt(var(x) + eps)
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]  (x - mean) / scale, before w and b (as the bridge)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _has_hooks(self.hook_scale, self.hook_normalized):
            return F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        return x * self.w + self.b


class Attention(nn.Module):
    """Causal multi-head self-attention with per-head TransformerLens weights."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(H, d, dh))  # [head, d_model, d_head]
        self.W_K = nn.Parameter(torch.empty(H, d, dh))
        self.W_V = nn.Parameter(torch.empty(H, d, dh))
        self.W_O = nn.Parameter(torch.empty(H, dh, d))  # [head, d_head, d_model]
        self.b_Q = nn.Parameter(torch.zeros(H, dh))
        self.b_K = nn.Parameter(torch.zeros(H, dh))
        self.b_V = nn.Parameter(torch.zeros(H, dh))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.attn_scale = math.sqrt(dh)
        self.backend = "auto"  # "auto" | "explicit" | "sdpa": set by MathTransformer.set_attention_backend
        self.frozen_qkv: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # set by MathTransformer.frozen_weights
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]  before rotary
        self.hook_k = HookPoint()  # [batch, pos, head, d_head]  before rotary; new positions only when cached
        self.hook_v = HookPoint()  # [batch, pos, head, d_head]
        if cfg.positional == "rotary":
            self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]  after rotary
            self.hook_rot_k = HookPoint()  # [batch, pos, head, d_head]  after rotary
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]  / sqrt(d_head), -inf above the diagonal
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]  softmax of the scores
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]  pattern-weighted values, before W_O

    def _qkv_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_Q, W_K, W_V as one ``[d_model, 3 * head * d_head]`` matrix (and the biases), for one matmul.

        Rebuilt on every call (a copy of 3 d_model^2 floats, a few % of a decode step): caching it
        would go stale when a notebook edits ``W_Q.data`` in place, which PyTorch does not track. Inside
        ``MathTransformer.frozen_weights()`` (``generate`` uses it) the matrix built on entry is returned.
        """
        if self.frozen_qkv is not None:
            return self.frozen_qkv
        d, n = self.cfg.d_model, 3 * self.cfg.n_heads * self.cfg.d_head
        W = torch.cat([self.W_Q, self.W_K, self.W_V], dim=0).permute(1, 0, 2).reshape(d, n)
        b = torch.cat([self.b_Q, self.b_K, self.b_V], dim=0).reshape(n)
        return W, b

    def explicit(self, device: torch.device, n_keys: int) -> bool:
        """Whether this call computes the pattern itself (see the module docstring) or calls SDPA."""
        if self.backend == "explicit" or _has_hooks(self.hook_attn_scores, self.hook_pattern):
            return True
        return self.backend == "auto" and device.type == "cpu" and n_keys <= CPU_MATMUL_ATTENTION_MAX_KEYS

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor],
                cache: Optional[KVCache], layer: int) -> torch.Tensor:
        B, P, d = x.shape
        H, dh = self.cfg.n_heads, self.cfg.d_head
        W, b = self._qkv_weight()
        q, k, v = torch.addmm(b, x.reshape(B * P, d), W).view(B, P, 3, H, dh).unbind(2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, head, pos, d_head]
        if rope is not None:  # hooks see [batch, pos, head, d_head], like every other per-head hook
            q = self.hook_rot_q(_rotate_adjacent(q, rope).transpose(1, 2)).transpose(1, 2)
            k = self.hook_rot_k(_rotate_adjacent(k, rope).transpose(1, 2)).transpose(1, 2)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        S = k.shape[2]  # key positions: past + P
        dropout_p = self.cfg.dropout if self.training else 0.0

        if self.explicit(x.device, S):
            # [batch * head, query_pos, key_pos]: q k^T / sqrt(d_head) + mask, in one baddbmm
            scores = torch.baddbmm(_causal_bias(P, S, past, q.dtype, x.device), q.reshape(B * H, P, dh),
                                   k.reshape(B * H, S, dh).transpose(1, 2), alpha=1.0 / self.attn_scale)
            scores = self.hook_attn_scores(scores.view(B, H, P, S))
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            if dropout_p:
                pattern = F.dropout(pattern, dropout_p, training=True)
            z = torch.bmm(pattern.reshape(B * H, P, S), v.reshape(B * H, S, dh)).view(B, H, P, dh)
        elif past == 0:
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif P == 1:  # one new query attends to every cached key: no mask needed
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:  # several new queries after a cache: is_causal would align the mask top-left, so build it
            allowed = torch.arange(S, device=x.device)[None, :] <= torch.arange(past, past + P, device=x.device)[:, None]
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)

        z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head, d_head]
        out = torch.addmm(self.b_O, z.reshape(B * P, H * dh), self.W_O.reshape(H * dh, d))
        return out.view(B, P, d)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))  # [d_model, d_mlp]
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))  # [d_mlp, d_model]
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = _ACTIVATIONS[cfg.act_fn]
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]  before the activation
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]  after the activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, P, d = x.shape
        pre = self.hook_pre(torch.addmm(self.b_in, x.reshape(B * P, d), self.W_in).view(B, P, -1))
        post = self.hook_post(self.act(pre))
        return torch.addmm(self.b_out, post.reshape(B * P, -1), self.W_out).view(B, P, d)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.dropout = cfg.dropout
        self.ln1 = LayerNorm(cfg.d_model, cfg.eps)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.eps)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]  attention output incl. b_O
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]  resid_pre + attn_out
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]  resid_mid + mlp_out

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, training=True) if self.dropout and self.training else x

    def forward(self, resid: torch.Tensor, rope, cache: Optional[KVCache], slot: Optional[int] = None) -> torch.Tensor:
        """``slot``: this call's place in the KV cache (layer + iteration * n_layers in a looped model)."""
        resid = self.hook_resid_pre(resid)
        slot = self.layer if slot is None else slot
        attn_out = self.hook_attn_out(self._drop(self.attn(self.ln1(resid), rope, cache, slot)))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self._drop(self.mlp(self.ln2(resid))))
        return self.hook_resid_post(resid + mlp_out)


class LoopHooks(nn.Module):
    """The residual stream around one iteration of a looped model (``loops.{i}.hook_resid_pre/post``)."""

    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]  the state entering iteration i (input re-added)
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]  the state after iteration i


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))  # [d_vocab, d_model]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.W_E)


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))  # [n_ctx, d_model]

    def forward(self, start: int, length: int, batch: int) -> torch.Tensor:
        return self.W_pos[start : start + length].unsqueeze(0).expand(batch, -1, -1)


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))  # [d_model, d_vocab]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_U


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class MathTransformer(HookedRootModule):
    """Decoder-only transformer with TransformerLens hook points at the standard names.

    ``MathTransformer(ModelConfig.from_preset("small"))`` or ``MathTransformer.from_preset("small")``.
    Hook points (shapes in the module definitions above): ``hook_embed``, ``hook_pos_embed`` (learned),
    ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.ln1.hook_scale``/``hook_normalized``,
    ``blocks.{l}.attn.hook_q/hook_k/hook_v`` (``hook_rot_q/hook_rot_k`` when rotary),
    ``blocks.{l}.attn.hook_attn_scores/hook_pattern/hook_z``, ``blocks.{l}.hook_attn_out``,
    ``blocks.{l}.hook_resid_mid``, ``blocks.{l}.ln2.*``, ``blocks.{l}.mlp.hook_pre/hook_post``,
    ``blocks.{l}.hook_mlp_out``, ``blocks.{l}.hook_resid_post``, ``ln_final.hook_scale/hook_normalized``.

    **Looped** (``n_loops`` L > 1, Saunshi et al. 2025; McLeish et al. 2024): the block stack runs L times with
    shared weights and the input embedding is re-added at the start of every iteration (input injection):
    ``h = blocks(e); h = blocks(h + e); ...``. Each iteration's residual stream has hook names of its own,
    ``loops.{i}.hook_resid_pre`` / ``loops.{i}.hook_resid_post``, so caches, the lens, probes and patching see
    every iteration (the hooks inside the blocks fire once per iteration; a cache keeps the last).
    ``model.set_loops(L)`` (or ``with model.looping(L):``) runs any number of iterations, e.g. past the trained
    count; the KV cache holds one slot per layer and iteration.
    """

    def __init__(self, cfg: Optional[ModelConfig] = None, **overrides: Any):
        super().__init__()
        cfg = ModelConfig() if cfg is None else cfg
        self.cfg = replace(cfg, **overrides)  # a private copy: .to(device) writes cfg.device
        c = self.cfg
        self.embed = Embed(c)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]  token embeddings (or the given inputs_embeds)
        if c.positional == "learned":
            self.pos_embed = PosEmbed(c)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        else:
            # Same table as the bridge's NativeRotary; cos + i sin per (position, pair of dims).
            inv_freq = 1.0 / (c.rotary_base ** (torch.arange(0, c.d_head, 2).float() / c.d_head))
            freqs = torch.outer(torch.arange(c.n_ctx).float(), inv_freq)  # [n_ctx, d_head / 2]
            # Non-persistent (recomputed from the config, never saved); kept real so .to(dtype) is safe.
            table = torch.stack([freqs.cos(), freqs.sin()], dim=-1)  # [n_ctx, d_head / 2, 2]
            self.register_buffer("rotary", table, persistent=False)
        self.blocks = nn.ModuleList([TransformerBlock(c, layer) for layer in range(c.n_layers)])
        self.loops = nn.ModuleList()  # per-iteration hooks, only when looped (no weights)
        self.ln_final = LayerNorm(c.d_model, c.eps)
        self.unembed = Unembed(c)
        self.init_weights()
        self.n_loops = 1
        self._frozen = 0  # iterations run without gradient (frozen_iterations)
        self.set_loops(c.n_loops)  # also HookedRootModule.setup(): names every HookPoint, builds hook_dict

    def set_loops(self, n_loops: int) -> None:
        """Run the block stack ``n_loops`` times from now on (the trained count is ``cfg.n_loops``)."""
        if isinstance(n_loops, bool) or not isinstance(n_loops, int) or n_loops < 1:
            raise ValueError(f"n_loops must be a positive integer, got {n_loops!r}")
        looped = n_loops > 1 or self.cfg.n_loops > 1
        while looped and len(self.loops) < n_loops:
            self.loops.append(LoopHooks())
        self.n_loops = n_loops
        self.setup()

    @contextmanager
    def looping(self, n_loops: Optional[int]) -> Iterator["MathTransformer"]:
        """``with model.looping(8): ...`` runs 8 iterations inside the block, then goes back (None: no change)."""
        before = self.n_loops
        if n_loops is not None and n_loops != before:
            self.set_loops(n_loops)
        try:
            yield self
        finally:
            if self.n_loops != before:
                self.set_loops(before)

    @contextmanager
    def frozen_iterations(self, n: int) -> Iterator["MathTransformer"]:
        """Inside ``with model.frozen_iterations(n):`` the first ``n`` iterations run without an autograd graph and
        their state is detached, so gradients flow through the later ones only (the progressive loss of Bansal et
        al. 2022). ``n`` must be below the number of iterations run; 0 changes nothing."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"frozen iterations must be a non-negative integer, got {n!r}")
        before = self._frozen
        self._frozen = n
        try:
            yield self
        finally:
            self._frozen = before

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MathTransformer":
        return cls(ModelConfig.from_preset(name, **overrides))

    def init_weights(self, seed: Optional[int] = None) -> None:
        """Normal(0, init_std) weights; W_O and W_out scaled by 1/sqrt(2 n_layers n_loops); zero biases; unit LN."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(seed)
        std = self.cfg.init_std
        # the residual writers scale with the depth the stream passes through: n_layers x n_loops (GPT-2's rule;
        # 1 / sqrt(2 n_layers) for a one-pass model, as before)
        out_std = std / math.sqrt(2 * self.cfg.n_layers * self.cfg.n_loops)
        with torch.no_grad():
            for name, p in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("W_"):
                    s = out_std if leaf in ("W_O", "W_out") else std
                    p.copy_(torch.randn(p.shape, generator=gen) * s)
                elif leaf == "w":
                    p.fill_(1.0)
                else:  # biases and LayerNorm b
                    p.zero_()

    # ---- device bookkeeping for TransformerLens (patching reads model.cfg.device) ----
    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.cfg.device = str(self.embed.W_E.device)
        return out

    def set_attention_backend(self, backend: str = "auto") -> None:
        """``"explicit"``: always compute the pattern (the path a hook on it takes); ``"sdpa"``: fused
        ``F.scaled_dot_product_attention`` unless the pattern is hooked; ``"auto"``: explicit on a CPU for
        short sequences, SDPA otherwise (the default; see the module docstring)."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {list(ATTENTION_BACKENDS)}")
        for block in self.blocks:
            block.attn.backend = backend

    @contextmanager
    def frozen_weights(self) -> Iterator["MathTransformer"]:
        """Inside ``with model.frozen_weights():`` each layer's fused ``[W_Q | W_K | W_V]`` matrix is built once,
        not on every forward (``generate`` uses it: weights cannot change mid-generation, and at batch 64 the
        rebuild is ~5% of a decode step). Edits to the weights inside the block are not seen; no gradients."""
        saved = [block.attn.frozen_qkv for block in self.blocks]
        with torch.no_grad():
            fused = [tuple(t.detach() for t in block.attn._qkv_weight()) for block in self.blocks]
        for block, qkv in zip(self.blocks, fused):
            block.attn.frozen_qkv = qkv
        try:
            yield self
        finally:
            for block, qkv in zip(self.blocks, saved):
                block.attn.frozen_qkv = qkv

    def force_explicit_attention(self, on: bool = True) -> None:
        """Always compute attention explicitly (``True``), or go back to ``"auto"`` (``False``)."""
        self.set_attention_backend("explicit" if on else "auto")

    # ---- forward ----
    def forward(
        self,
        input_ids: Union[torch.Tensor, str, list, None] = None,
        *,
        inputs_embeds: Optional[torch.Tensor] = None,
        past_key_values: Optional[KVCache] = None,
        use_cache: bool = False,
        return_type: Optional[str] = "logits",
    ):
        """Run the model.

        Args:
            input_ids: ``[batch, pos]`` (or ``[pos]``) token ids, or a string / list of ids.
            inputs_embeds: ``[batch, pos, d_model]`` used instead of ``W_E[input_ids]`` (e.g.
                ``one_hot @ model.W_E`` for Gumbel-softmax); passes through ``hook_embed`` likewise.
            past_key_values: a :class:`KVCache` from an earlier call; it is extended in place and the
                new positions continue from ``len(past_key_values)``.
            use_cache: return ``(output, cache)``, creating a cache when none was given.
            return_type: ``"logits"`` ``[batch, pos, d_vocab]``; ``"loss"`` mean next-token
                cross-entropy over ``input_ids`` (targets equal to ``<pad>`` ignored); ``"both"``
                ``(logits, loss)``; ``None`` nothing.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            input_ids = self._as_ids(input_ids)
            x = self.embed(input_ids)
        else:
            x = inputs_embeds
            if x.dim() != 3 or x.shape[-1] != self.cfg.d_model:
                raise ValueError(f"inputs_embeds must be [batch, pos, {self.cfg.d_model}], got {tuple(x.shape)}")
        x = self.hook_embed(x)
        B, P = x.shape[:2]
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache.for_model(self, B, capacity=P)
        past = 0 if cache is None else cache.length
        if past + P > self.cfg.n_ctx:
            raise ValueError(
                f"sequence of {past + P} tokens ({past} cached + {P} new) exceeds n_ctx={self.cfg.n_ctx}"
            )
        if self.cfg.positional == "learned":
            x = x + self.hook_pos_embed(self.pos_embed(past, P, B))
            rope = None
        else:
            rope = self.rotary[past : past + P]  # [pos, d_head / 2, 2]
        if self.cfg.dropout and self.training:
            x = F.dropout(x, self.cfg.dropout, training=True)
        x = self._iterate(x, rope, cache)
        if cache is not None:
            cache.length = past + P
        out = self._output(x, input_ids, return_type)
        return (out, cache) if use_cache else out

    def _iterate(self, embedded: torch.Tensor, rope, cache: Optional[KVCache]) -> torch.Tensor:
        """The block stack, ``n_loops`` times, with the input re-added before every iteration after the first."""
        if not len(self.loops):  # one pass: the plain transformer
            for block in self.blocks:
                embedded = block(embedded, rope, cache)
            return embedded
        resid, n = embedded, self.cfg.n_layers
        frozen = self._frozen
        if frozen and frozen >= self.n_loops:
            raise ValueError(f"{frozen} frozen iterations leave none of the {self.n_loops} to train")
        for i in range(self.n_loops):
            with torch.no_grad() if i < frozen else contextlib.nullcontext():
                resid = self.loops[i].hook_resid_pre(resid if i == 0 else resid + embedded)
                for block in self.blocks:
                    resid = block(resid, rope, cache, slot=i * n + block.layer)
                resid = self.loops[i].hook_resid_post(resid)
            if i + 1 == frozen:
                resid = resid.detach()
        return resid

    def _output(self, resid: torch.Tensor, input_ids: Optional[torch.Tensor], return_type: Optional[str]):
        if return_type is None:
            return None
        logits = self.unembed(self.ln_final(resid))
        if return_type == "logits":
            return logits
        if return_type not in ("loss", "both"):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        if input_ids is None:
            raise ValueError("return_type='loss' needs input_ids (the targets); compute it yourself for inputs_embeds")
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            input_ids[:, 1:].reshape(-1),
            ignore_index=_tok.PAD_ID,
        )
        return loss if return_type == "loss" else (logits, loss)

    def _as_ids(self, input_ids) -> torch.Tensor:
        if isinstance(input_ids, str):
            input_ids = _tok.TOKENIZER.encode(input_ids)
        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.tensor(input_ids, dtype=torch.long)
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, pos], got shape {tuple(input_ids.shape)}")
        return input_ids.to(self.embed.W_E.device, torch.long)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``W_E[input_ids]``: what ``forward`` feeds into ``hook_embed`` for ids."""
        return self.embed(self._as_ids(input_ids) if not isinstance(input_ids, torch.Tensor) else input_ids)

    # ---- TransformerLens conveniences ----
    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, remove_batch_dim: bool = False,
                       **kwargs: Any):
        """Like HookedTransformer.run_with_cache: returns ``(output, ActivationCache)``."""
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    def to_tokens(self, text: Union[str, list[str]]) -> torch.Tensor:
        """``"12+3="`` -> ``[1, 5]`` ids (no BOS). A list is right-padded with ``<pad>``."""
        if isinstance(text, str):
            return torch.tensor([_tok.TOKENIZER.encode(text)], dtype=torch.long, device=self.embed.W_E.device)
        return _tok.TOKENIZER.encode_batch(text).input_ids.to(self.embed.W_E.device)

    def to_str_tokens(self, text_or_ids) -> list[str]:
        if isinstance(text_or_ids, torch.Tensor) and text_or_ids.dim() == 2:
            text_or_ids = text_or_ids[0]
        return _tok.TOKENIZER.str_tokens(text_or_ids)

    def to_string(self, ids) -> str:
        return _tok.TOKENIZER.decode(ids)

    def to_single_token(self, token: str) -> int:
        if token not in _tok.TOKEN_TO_ID:
            raise ValueError(f"{token!r} is not a single token")
        return _tok.TOKEN_TO_ID[token]

    def tokens_to_residual_directions(self, tokens) -> torch.Tensor:
        """Unembedding directions: ``[d_model]`` for one token, ``[..., d_model]`` for a tensor of ids."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        tokens = torch.as_tensor(tokens, device=self.W_U.device)
        return self.W_U[:, tokens].movedim(0, -1)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """Sum of the attention (and MLP) output biases added to the residual stream before ``layer``."""
        total = torch.zeros(self.cfg.d_model, device=self.W_E.device)
        for i in range(layer):
            total = total + self.blocks[i].attn.b_O
            if include_mlp_biases:
                total = total + self.blocks[i].mlp.b_out
        if mlp_input:
            total = total + self.blocks[layer].attn.b_O
        return total

    # Weight views, HookedTransformer-style ([n_layers, ...] stacks for per-layer weights).
    @property
    def W_E(self) -> torch.Tensor:  # [d_vocab, d_model]
        return self.embed.W_E

    @property
    def W_pos(self) -> torch.Tensor:  # [n_ctx, d_model]
        if self.cfg.positional != "learned":
            raise AttributeError("W_pos exists only with positional='learned' (this model is rotary)")
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> torch.Tensor:  # [d_model, d_vocab]
        return self.unembed.W_U

    @property
    def b_U(self) -> torch.Tensor:  # [d_vocab] zeros: there is no unembedding bias
        return torch.zeros(self.cfg.d_vocab, device=self.W_U.device)

    def _stack(self, fn) -> torch.Tensor:
        return torch.stack([fn(block) for block in self.blocks], dim=0)

    W_Q = property(lambda self: self._stack(lambda b: b.attn.W_Q))  # [layer, head, d_model, d_head]
    W_K = property(lambda self: self._stack(lambda b: b.attn.W_K))  # [layer, head, d_model, d_head]
    W_V = property(lambda self: self._stack(lambda b: b.attn.W_V))  # [layer, head, d_model, d_head]
    W_O = property(lambda self: self._stack(lambda b: b.attn.W_O))  # [layer, head, d_head, d_model]
    b_Q = property(lambda self: self._stack(lambda b: b.attn.b_Q))  # [layer, head, d_head]
    b_K = property(lambda self: self._stack(lambda b: b.attn.b_K))
    b_V = property(lambda self: self._stack(lambda b: b.attn.b_V))
    b_O = property(lambda self: self._stack(lambda b: b.attn.b_O))  # [layer, d_model]
    W_in = property(lambda self: self._stack(lambda b: b.mlp.W_in))  # [layer, d_model, d_mlp]
    W_out = property(lambda self: self._stack(lambda b: b.mlp.W_out))  # [layer, d_mlp, d_model]
    b_in = property(lambda self: self._stack(lambda b: b.mlp.b_in))  # [layer, d_mlp]
    b_out = property(lambda self: self._stack(lambda b: b.mlp.b_out))  # [layer, d_model]

    @property
    def QK(self) -> FactoredMatrix:  # [layer, head, d_model, d_model]; ignores rotary
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:  # [layer, head, d_model, d_model]
        return FactoredMatrix(self.W_V, self.W_O)

    # ---- TransformerBridge ----
    def bridge_config(self):
        """The ``TransformerBridgeConfig`` whose native model computes what this model computes."""
        from transformer_lens.config import TransformerBridgeConfig

        c = self.cfg
        return TransformerBridgeConfig(
            n_layers=c.n_layers, d_model=c.d_model, n_heads=c.n_heads, d_head=c.d_head, d_mlp=c.d_mlp,
            d_vocab=c.d_vocab, n_ctx=c.n_ctx, act_fn=c.act_fn, eps=c.eps, normalization_type="LN",
            positional_embedding_type=c.positional_embedding_type, rotary_dim=c.d_head,
            rotary_base=c.rotary_base, original_architecture="mathllm", model_name="mathllm",
            tokenizer_prepends_bos=False, init_weights=False,
        )

    def to_bridge(self):
        """A ``transformer_lens.model_bridge.TransformerBridge`` (``boot_native``) holding these weights.

        The weights go through TransformerLens's own ``convert_tl_checkpoint`` (renamed, per-head
        tensors flattened to nn.Linear layout, values unchanged; the bridge's unembed bias is zero).
        Returned in eval mode on this model's device; it is a copy, not a view.
        """
        if self.n_loops > 1:
            raise NotImplementedError("TransformerBridge runs each block once; a looped model has no bridge")
        import transformer_lens.model_bridge.sources.native  # noqa: F401  (registers boot_native)
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

        bcfg = self.bridge_config()
        bridge = TransformerBridge.boot_native(bcfg, device=self.W_E.device)
        state = {k: v.detach() for k, v in self.state_dict().items()}
        state["unembed.b_U"] = self.b_U
        result = bridge.load_state_dict(convert_tl_checkpoint(state, bcfg), strict=True)
        if result.missing_keys or result.unexpected_keys:  # strict=True raises first; belt and braces
            raise RuntimeError(f"bridge load mismatch: {result}")
        return bridge.eval()
