"""The logit lens: read a prediction out of the residual stream after every block, not only the last.

The residual stream after block ``l`` is pushed through the final LayerNorm (its statistics recomputed on that
stream) and the unembedding, as if the remaining blocks were skipped (nostalgebraist 2020). The last stream's
lens is exactly the model's output.

    lens = logit_lens(model, "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>")
    lens.top_tokens()[:, lens.kinds.index("ans2")]     # what each stream would write after '8' -> ans1
    lens.target_probs()                                 # [stream, pos]: probability of the true next token

    acc = logit_lens_accuracy(model, acts)              # over many problems, per stream x position kind
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mathllm.interp.positions import axis_labels, position_kinds
from mathllm.interp.probes import Activations, residual_streams
from mathllm.tokenizer import TOKENIZER, VOCAB
from mathllm.utils import eval_mode


def lens_logits(model, resid: torch.Tensor) -> torch.Tensor:
    """``unembed(ln_final(resid))`` for residual vectors ``[..., d_model]`` (LayerNorm statistics recomputed)."""
    ln = model.ln_final
    x = torch.nn.functional.layer_norm(resid, (resid.shape[-1],), ln.w, ln.b, ln.eps)
    return x @ model.W_U


@dataclass
class LogitLens:
    """The lens over one sequence: ``probs[stream, pos, token]``; position ``pos`` predicts token ``pos + 1``."""

    text: str
    tokens: list[str]
    kinds: list[str]
    streams: list[str]
    probs: np.ndarray  # [stream, pos, d_vocab]

    @property
    def labels(self) -> list[str]:
        return axis_labels(self.tokens, self.kinds)

    def top_tokens(self) -> np.ndarray:
        """``[stream, pos]``: the most likely next token according to each stream."""
        return np.array(VOCAB, dtype=object)[self.probs.argmax(-1)]

    def top_probs(self) -> np.ndarray:
        return self.probs.max(-1)

    def target_probs(self) -> np.ndarray:
        """``[stream, pos]``: probability of the token that actually comes next (NaN at the last position)."""
        ids = TOKENIZER.encode(self.text)
        out = np.full(self.probs.shape[:2], np.nan)
        for pos in range(len(ids) - 1):
            out[:, pos] = self.probs[:, pos, ids[pos + 1]]
        return out


@torch.inference_mode()
def logit_lens(model, text: str) -> LogitLens:
    ids = torch.tensor([TOKENIZER.encode(text)], device=model.W_E.device)
    streams = residual_streams(model.cfg)
    names = {hook for _, hook in streams}
    with eval_mode(model):
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names, return_cache_object=False)
    stacked = torch.stack([cache[hook][0] for _, hook in streams])  # [stream, pos, d_model]
    probs = lens_logits(model, stacked).softmax(-1).float().cpu().numpy()
    tokens = TOKENIZER.str_tokens(ids[0].tolist())
    return LogitLens(text, tokens, position_kinds(tokens), [label for label, _ in streams], probs)


@dataclass
class LensAccuracy:
    """Over many problems: how often each stream's lens predicts the true next token, per position kind."""

    streams: list[str]
    kinds: list[str]
    accuracy: np.ndarray  # [stream, kind]
    count: np.ndarray  # [kind] problems with that kind (and a next token)

    def first_correct_stream(self, threshold: float = 0.99) -> dict[str, str | None]:
        """Per kind, the earliest stream whose lens is right on at least ``threshold`` of the problems."""
        out = {}
        for k, kind in enumerate(self.kinds):
            ok = np.flatnonzero(np.nan_to_num(self.accuracy[:, k]) >= threshold)
            out[kind] = self.streams[ok[0]] if len(ok) else None
        return out


@torch.inference_mode()
def logit_lens_accuracy(model, acts: Activations) -> LensAccuracy:
    """The lens applied to activations cached with ``cache_activations`` (streams must be the residual streams
    of this model): per stream and position kind, the share of problems whose lens argmax is the next token."""
    ids = [TOKENIZER.encode(ex["text"]) for ex in acts.examples]
    n, K = acts.present.shape
    target = torch.full((n, K), -1, dtype=torch.long)
    for row, seq in enumerate(ids):
        for k in range(K):
            pos = int(acts.positions[row, k])
            if 0 <= pos < len(seq) - 1:
                target[row, k] = seq[pos + 1]
    valid = target >= 0
    count = valid.sum(0).numpy()
    accuracy = np.full((len(acts.streams), K), np.nan)
    device = model.W_E.device
    for s in range(len(acts.streams)):
        pred = lens_logits(model, acts.acts[s].to(device)).argmax(-1).cpu()  # [n, K]
        right = ((pred == target) & valid).sum(0).numpy()
        accuracy[s] = np.where(count > 0, right / np.maximum(count, 1), np.nan)
    return LensAccuracy(list(acts.streams), list(acts.kinds), accuracy, count)


__all__ = ["lens_logits", "LogitLens", "logit_lens", "LensAccuracy", "logit_lens_accuracy"]
