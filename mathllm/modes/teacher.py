"""Teacher forcing on the human trace: the model reads and is scored on the whole completion.

    12+34=<think>2+4=6 1+3=4</think>46<end>        loss on <think>2+4=6 1+3=4</think>46<end>

Everything it does is the default of ``mathllm.training_mode.TrainingMode``; this module gives it its name.
"""

from __future__ import annotations

from mathllm.training_mode import TrainingMode


class Teacher(TrainingMode):
    """The human trace, teacher-forced (the project's default mode)."""

    name = "teacher"
    can_mix_teacher = False  # it is teacher forcing already
