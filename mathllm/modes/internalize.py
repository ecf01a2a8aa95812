"""Stepwise internalization (Deng, Choi & Shieber 2024): the human trace loses tokens from the front as
training goes on, until the model answers with no trace at all.

    step 0        12+34=<think>2+4=6 1+3=4</think>46<end>
    later         12+34=<think>6 1+3=4</think>46<end>
    at the end    12+34=<think></think>46<end>

The loss is on what is left of the trace plus the answer. Options: when removal starts and ends (fractions of
training), equal stages instead of one token at a time, Deng et al.'s removal smoothing, and fresh optimizer
moments at every stage. Every choice is a pure function of the step and the seed, so resuming is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mathllm.batches import LengthGroupedData, completion_loss
from mathllm.text import split_text
from mathllm.tokenizer import END_THINK_ID, EQUALS_ID, PAD_ID, THINK_ID, TOKENIZER
from mathllm.training_mode import Batch, StepContext, StepOutput, TrainingMode, step_seed


@dataclass
class InternalizeSettings:
    internalize_start: float = 0.0  # internalize: fraction of training before trace tokens start to go
    internalize_end: float = 0.75  # internalize: fraction of training by which the whole trace is gone
    internalize_stages: Optional[int] = None  # internalize: remove in this many equal stages (None: token by token)
    internalize_smoothing: float = 0.0  # internalize: lambda of Deng et al.'s removal smoothing (0 = off; they use 4)
    internalize_reset_optimizer: bool = False  # internalize: reset AdamW state whenever more tokens go (Deng et al.)

    def __post_init__(self) -> None:
        if not 0 <= self.internalize_start < self.internalize_end:
            raise ValueError(f"need 0 <= --internalize-start < --internalize-end, got {self.internalize_start} and "
                             f"{self.internalize_end}")
        if self.internalize_stages is not None and self.internalize_stages < 1:
            raise ValueError(f"--internalize-stages must be >= 1, got {self.internalize_stages}")
        if self.internalize_smoothing < 0:
            raise ValueError(f"--internalize-smoothing must be >= 0, got {self.internalize_smoothing}")


def internalize_text(text: str, removed: int) -> str:
    """The line with the first ``removed`` trace tokens dropped (lines without a trace are unchanged).

    >>> internalize_text("12+34=<think>2+4=6 1+3=4</think>46<end>", 4)
    '12+34=<think>6 1+3=4</think>46<end>'
    """
    parts = split_text(text)
    if parts.think is None:
        return text
    return parts.prompt + "<think>" + "".join(TOKENIZER.tokenize(parts.think)[removed:]) + "</think>" + parts.answer


def removed_at(settings: InternalizeSettings, step: int, total_steps: int, max_trace: int) -> int:
    """Trace tokens removed from the front at ``step`` (before smoothing): none until ``internalize_start``
    (a fraction of training), all ``max_trace`` from ``internalize_end`` on, in between linear, in
    ``internalize_stages`` equal stages (None: one token at a time)."""
    if max_trace <= 0:
        return 0
    progress = (step / max(total_steps, 1) - settings.internalize_start) / (
        settings.internalize_end - settings.internalize_start)
    progress = min(max(progress, 0.0), 1.0)
    stages = settings.internalize_stages or max_trace
    stage = math.floor(progress * stages + 1e-9)
    return min(max_trace, math.floor(max_trace * stage / stages + 1e-9))


def smoothing_offsets(settings: InternalizeSettings, seed: int, step: int, n: int, max_offset: int) -> torch.Tensor:
    """Deng et al.'s removal smoothing: each example removes ``o`` extra tokens, P(o) ∝ exp(-λ o)."""
    if settings.internalize_smoothing <= 0 or max_offset <= 0:
        return torch.zeros(n, dtype=torch.long)
    o = torch.arange(max_offset + 1, dtype=torch.float64)
    probs = torch.exp(-settings.internalize_smoothing * o)
    gen = torch.Generator().manual_seed(step_seed(seed, step, 2))
    return torch.multinomial(probs / probs.sum(), n, replacement=True, generator=gen)


def trace_layout(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``[n, L]`` cot lines: the position of ``<think>`` (-1 when none) and the trace length per row."""
    has = (ids == THINK_ID).any(1)
    think_pos = torch.where(has, (ids == THINK_ID).int().argmax(1), torch.full_like(has, -1, dtype=torch.long))
    end_pos = (ids == END_THINK_ID).int().argmax(1)
    length = torch.where(has, end_pos - think_pos - 1, torch.zeros_like(end_pos))
    return think_pos.long(), length.long()


def remove_trace_tokens(ids: torch.Tensor, removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the first ``removed[i]`` trace tokens of each row of ``ids`` ``[B, L]`` (capped at its trace).

    Returns ``(ids, loss_mask)``: right-padded with ``<pad>`` to the longest row; the mask marks the targets
    after the first ``=`` that are not padding (causal attention: real tokens never see the padding).
    """
    B, L = ids.shape
    think_pos, length = trace_layout(ids)
    r = torch.minimum(removed.to(ids.device), length)
    new_len = L - r
    width = int(new_len.max())
    j = torch.arange(width, device=ids.device)[None, :]
    src = torch.where(j <= think_pos[:, None], j, j + r[:, None]).clamp(max=L - 1)
    valid = j < new_len[:, None]
    out = torch.where(valid, ids.gather(1, src), torch.full_like(src, PAD_ID))
    first_eq = (ids == EQUALS_ID).int().argmax(1, keepdim=True)
    mask = (torch.arange(1, width, device=ids.device)[None, :] > first_eq) & valid[:, 1:]
    return out, mask


class Internalize(TrainingMode):
    """The human trace, shortened from the front as training goes on."""

    name = "internalize"
    Settings = InternalizeSettings
    description = "the fully internalized line (no trace left)"
    note = "its human trace was taken away during training, token by token"

    def setup(self, cfg, data: LengthGroupedData, total_steps: int) -> None:
        super().setup(cfg, data, total_steps)
        self.max_trace = max(int(trace_layout(g)[1].max()) for g in data.groups.values())

    def removed(self, step: int) -> int:
        return removed_at(self.settings, step, self.total_steps, self.max_trace)

    def stage_changed(self, step: int) -> bool:
        return (self.settings.internalize_reset_optimizer and step > 0
                and self.removed(step) != self.removed(step - 1))

    def training_step(self, model, batch: Batch, ctx: StepContext) -> StepOutput:
        removed = self.removed(ctx.step)
        total, mine = ctx.global_rows(len(batch.ids))
        offsets = smoothing_offsets(self.settings, self.cfg.seed, ctx.step, total, self.max_trace)[mine]
        ids, mask = remove_trace_tokens(batch.ids, (removed + offsets).to(batch.ids.device))
        with ctx.autocast():
            loss = completion_loss(model(ids[:, :-1]), ids, mask, self.prompt_loss_weight, ctx.normalize)
        (loss if ctx.loss_scale is None else loss * ctx.loss_scale).backward()
        return StepOutput(loss.detach(), ids.numel(), {"removed_tokens": float(removed)})

    def validation_texts(self, texts: Sequence[str], step: int) -> list[str]:
        return [internalize_text(t, self.removed(step)) for t in texts]

    def scoring_texts(self, texts: Sequence[str], completions: Sequence[str]) -> tuple[list[str], bool]:
        return [internalize_text(t, 10**9) for t in texts], False
