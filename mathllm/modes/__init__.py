"""Training modes: what the model reads (and, for gumbel, writes), what the loss is on, and how it is used.

Every mode reads the same chain-of-thought data (``scripts/generate_data.py --format cot``); one module each,
behind one interface (``mathllm.training_mode.TrainingMode``)::

    =============  ===========================================================================  =====================
    mode           what the model reads (and, for gumbel, writes)                               loss on
    =============  ===========================================================================  =====================
    teacher        ``12+34=<think>2+4=6 1+3=4</think>46<end>``                                  trace + answer
    answer-only    ``12+34=46<end>``                                                            answer
    pause          ``12+34=<pause><pause>...<pause>46<end>`` (K pauses, forced at test time)    answer
    gumbel         ``12+34=<think>z1 ... zK</think>46<end>``: the model samples z1..zK itself   answer
    internalize    ``12+34=<think>`` + the trace minus its first n tokens + ``</think>46<end>``,   rest of trace + answer
                   n growing with the step until no trace is left
    answer-slots   ``0012+0034=<pause>x6``: every answer digit (and ``<end>``) read at once from   answer, at the slots
                   its own slot, nothing fed back; operands optionally zero-padded
    =============  ===========================================================================  =====================

(``<end>`` is part of the answer.) A mode is found by name, ``get_mode("gumbel", think_tokens="8")``; each is
registered under the ``mathllm.modes`` entry points in ``pyproject.toml``, so adding a mode is one module here and
one line there. This package sits on top of the trainer and the evaluator: it imports them, never the reverse.
"""

from mathllm.modes.answer_only import AnswerOnly
from mathllm.modes.gumbel import Gumbel
from mathllm.modes.internalize import Internalize
from mathllm.modes.pause import Pause
from mathllm.modes.slots import AnswerSlots
from mathllm.modes.teacher import Teacher
from mathllm.training_mode import TrainingMode, available_modes, get_mode

__all__ = ["AnswerOnly", "AnswerSlots", "Gumbel", "Internalize", "Pause", "Teacher", "TrainingMode", "available_modes", "get_mode"]
