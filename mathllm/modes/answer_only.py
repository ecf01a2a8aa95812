"""Answer only: the think block is removed, the model answers at once.

    12+34=<think>2+4=6 1+3=4</think>46<end>   ->   12+34=46<end>     loss on 46<end>
"""

from __future__ import annotations

from typing import Sequence

from mathllm.training_mode import TrainingMode, answer_only_text


class AnswerOnly(TrainingMode):
    """No trace: the baseline every label-free mode is compared with."""

    name = "answer-only"
    writes_human_trace = False
    description = "the answer (no think block)"
    note = "it answers at once, without a trace"

    def training_texts(self, texts: Sequence[str]) -> list[str]:
        return [answer_only_text(t) for t in texts]
