"""Attention patterns: for one expression, or averaged over problems that line up token by token.

    att = attention_patterns(model, "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>")
    att.pattern.shape                      # [layer, head, query, key]
    att.top_keys(2, 1, "ans1")             # where head 2.1 looks from the position of ans1

    mean = mean_attention(model, same_template_problems([658, 189], 200))
    mean.attention_to("s1.=", ["a1", "b1"])   # [layer, head]: weight on those keys from that query

Queries and keys are named by position kind (``mathllm.interp.positions``): ``a1`` is the tens digit of the
first operand, ``s1.=`` the ``=`` of the think block's second step, ``ans1`` the tens digit of the answer.
Remember that the output at a position predicts the *next* token: the position of ``s1.=`` is where the model
writes step 1's result, and the position of ``ans2`` is where it writes ``ans1``.

Plots are in ``mathllm.plots`` (``plot_attention_heads``, ``plot_attention_head``, ``save_attention_heads_png``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mathllm.interp.positions import axis_labels, position_kinds, position_of
from mathllm.tokenizer import TOKENIZER
from mathllm.utils import eval_mode


def pattern_hook_names(cfg) -> list[str]:
    return [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)]


@dataclass
class AttentionPatterns:
    """Attention weights ``pattern[layer, head, query, key]`` over one token sequence (or a mean over many
    sequences with the same kinds, ``num_examples`` > 1)."""

    text: str
    tokens: list[str]
    kinds: list[str]
    pattern: np.ndarray  # [layer, head, query, key], rows sum to 1
    num_examples: int = 1

    @property
    def labels(self) -> list[str]:
        """Axis labels: the token and its kind (``"7 s0.r0"``); for a mean, the kind alone."""
        return axis_labels(self.tokens, self.kinds) if self.num_examples == 1 else list(self.kinds)

    def head(self, layer: int, head: int) -> np.ndarray:
        return self.pattern[layer, head]

    def top_keys(self, layer: int, head: int, query: str | int, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` keys that ``query`` (a kind or an index) attends to most in one head: ``[(kind, weight)]``."""
        q = query if isinstance(query, int) else position_of(self.kinds, query)
        row = self.pattern[layer, head, q]
        order = np.argsort(-row, kind="stable")[:k]
        return [(self.kinds[i], float(row[i])) for i in order]

    def attention_to(self, query: str | int, keys: Sequence[str]) -> np.ndarray:
        """``[layer, head]``: total weight from ``query`` on the positions of ``keys`` (absent kinds count 0)."""
        q = query if isinstance(query, int) else position_of(self.kinds, query)
        cols = [i for i, kind in enumerate(self.kinds) if kind in set(keys)]
        return self.pattern[:, :, q, cols].sum(-1)

    def strongest_links(self, queries: Sequence[str] | None = None, min_weight: float = 0.5) -> list[dict[str, Any]]:
        """For each query kind and head, the key with the most weight when that weight is >= ``min_weight``
        and the key is not the query itself: a readable list of what each head fetches, and from where."""
        rows = []
        queries = list(self.kinds) if queries is None else list(queries)
        L, H = self.pattern.shape[:2]
        for query in queries:
            if query not in self.kinds:
                continue
            q = self.kinds.index(query)
            for layer in range(L):
                for head in range(H):
                    row = self.pattern[layer, head, q]
                    key = int(np.argmax(row))
                    if row[key] >= min_weight and key != q:
                        rows.append({"query": query, "head": f"{layer}.{head}", "key": self.kinds[key],
                                     "weight": float(row[key])})
        return rows

    def format_links(self, queries: Sequence[str], min_weight: float = 0.5) -> str:
        """``strongest_links`` as text, one line per query, naming what that position writes next::

            s0.= (writes s0.r1):  0.2 -> s0.a 0.99   0.3 -> s0.b 0.98   ...
        """
        links = self.strongest_links(queries, min_weight)
        lines = []
        for query in queries:
            if query not in self.kinds:
                continue
            q = self.kinds.index(query)
            writes = self.kinds[q + 1] if q + 1 < len(self.kinds) else "-"
            found = [f"{r['head']} -> {r['key']} {r['weight']:.2f}" for r in links if r["query"] == query]
            lines.append(f"{query + ' (writes ' + writes + '):':<26}" + ("   ".join(found) or "(no head above "
                                                                            f"{min_weight:.0%})"))
        return "\n".join(lines)


def _as_ids(model, text_or_ids) -> torch.Tensor:
    if isinstance(text_or_ids, str):
        return torch.tensor([TOKENIZER.encode(text_or_ids)], device=model.W_E.device)
    ids = torch.as_tensor(text_or_ids, device=model.W_E.device)
    return ids.unsqueeze(0) if ids.dim() == 1 else ids


@torch.inference_mode()
def _patterns(model, ids: torch.Tensor) -> torch.Tensor:
    names = set(pattern_hook_names(model.cfg))
    with eval_mode(model):
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names, return_cache_object=False)
    return torch.stack([cache[n] for n in pattern_hook_names(model.cfg)], dim=1)  # [batch, layer, head, q, k]


def attention_patterns(model, text: str) -> AttentionPatterns:
    """Every layer's and head's attention over one sequence (e.g. a whole problem with its trace)."""
    ids = _as_ids(model, text)
    pattern = _patterns(model, ids)[0].float().cpu().numpy()
    tokens = TOKENIZER.str_tokens(ids[0].tolist())
    return AttentionPatterns(TOKENIZER.decode(ids[0].tolist()), tokens, position_kinds(tokens), pattern)


def mean_attention(model, examples: Sequence[Mapping[str, Any] | str], batch_size: int = 256) -> AttentionPatterns:
    """The attention pattern averaged over problems whose texts line up token by token (same kinds at every
    position, e.g. from ``same_template_problems``); raises when they do not."""
    texts = [ex if isinstance(ex, str) else ex["text"] for ex in examples]
    if not texts:
        raise ValueError("mean_attention needs at least one example")
    kinds = position_kinds(texts[0])
    for text in texts[1:]:
        if position_kinds(text) != kinds:
            raise ValueError(f"{text!r} does not line up with {texts[0]!r} (different position kinds); "
                             "use same_template_problems to draw problems that do")
    total = None
    for start in range(0, len(texts), batch_size):
        ids = torch.tensor([TOKENIZER.encode(t) for t in texts[start : start + batch_size]], device=model.W_E.device)
        part = _patterns(model, ids).double().sum(0)
        total = part if total is None else total + part
    mean = (total / len(texts)).float().cpu().numpy()
    return AttentionPatterns(texts[0], TOKENIZER.str_tokens(texts[0]), kinds, mean, num_examples=len(texts))


def circuitsvis_attention(patterns: AttentionPatterns, layer: int):
    """circuitsvis's interactive view of one layer's heads when the package is installed, else None."""
    try:
        import circuitsvis as cv  # optional; not a dependency of mathllm
    except ImportError:
        return None
    return cv.attention.attention_patterns(tokens=patterns.labels, attention=torch.tensor(patterns.pattern[layer]))


__all__ = ["AttentionPatterns", "attention_patterns", "mean_attention", "circuitsvis_attention",
           "pattern_hook_names"]
