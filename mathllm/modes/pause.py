"""Pause tokens: K ``<pause>`` tokens after ``=`` give the model room to compute; only the answer is scored.

    12+34=<think>2+4=6 1+3=4</think>46<end>   ->   12+34=<pause><pause>...<pause>46<end>

The pauses are forced at test time too (``generate``). K is a fixed number or ``"shape"`` (the longest human
trace of the prompt's shape; see ``mathllm.modes.thinking``): it never depends on the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mathllm.modes.thinking import RETIRED_BUDGETS, check_budget, generate_with_forced_thoughts, think_budget
from mathllm.text import split_text
from mathllm.tokenizer import PAUSE_ID
from mathllm.training_mode import TrainingMode


@dataclass
class PauseSettings:
    think_tokens: str = "shape"  # pause/gumbel: think budget K, an integer or "shape" (longest trace of the prompt's shape)

    def __post_init__(self) -> None:
        self.think_tokens = check_budget(self.think_tokens)


class Pause(TrainingMode):
    """``<pause>`` tokens, forced; loss on the answer."""

    name = "pause"
    Settings = PauseSettings
    writes_human_trace = False
    retired_values = {"think_tokens": RETIRED_BUDGETS}
    description = "the answer after the pauses"
    note = "it is given <pause> tokens to compute in, then answers"

    def pauses(self, prompt: str) -> str:
        return "<pause>" * think_budget(prompt, self.settings.think_tokens)

    def training_texts(self, texts: Sequence[str]) -> list[str]:
        out = []
        for text in texts:
            parts = split_text(text)
            out.append(parts.prompt + self.pauses(parts.prompt) + parts.answer)
        return out

    def ignore_target_ids(self) -> tuple[int, ...]:
        return (PAUSE_ID,)

    def generate(self, model, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 128,
                 drafts: Optional[Sequence[str]] = None, return_probs: bool = False, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None):
        """The pauses are appended to each complete prompt (one that ends in ``=``), then the model answers;
        a partial prompt (``7+``) is first completed up to its ``=`` by plain generation."""
        return generate_with_forced_thoughts(model, prompts, lambda full: [self.pauses(p) for p in full],
                                             max_new_tokens, batch_size, return_probs, temperature, generator)

    def scoring_texts(self, texts: Sequence[str], completions: Sequence[str]) -> tuple[list[str], bool]:
        return self.training_texts(texts), True
