"""Test doubles shared by several test files (imported as ``from model_doubles import ScriptedModel``)."""

import torch

from mathllm.model import MathTransformer
from mathllm.tokenizer import TOKENIZER


class ScriptedModel(MathTransformer):
    """A tiny model whose next token is forced by a script (the logits of every other token are -inf)."""

    def __init__(self, completion: str):
        super().__init__(MathTransformer.from_preset("tiny").cfg)
        self.script = TOKENIZER.encode(completion)
        self.prompt_len = None

    def forward(self, input_ids=None, **kwargs):
        logits = super().forward(input_ids, **kwargs)
        if isinstance(logits, tuple):
            logits, rest = logits[0], logits[1:]
        else:
            rest = None
        cache = kwargs.get("past_key_values")  # already holds this call's tokens after the forward
        position = len(cache) if cache is not None else input_ids.shape[1]
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        index = min(position - self.prompt_len, len(self.script) - 1)
        forced = torch.full_like(logits[:, -1], float("-inf"))
        forced[:, self.script[index]] = 0.0
        logits = logits.clone()
        logits[:, -1] = forced
        return (logits, *rest) if rest is not None else logits
