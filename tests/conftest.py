"""Shared fixtures: small datasets made by the project's own generator, and a few-step tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mathllm.model import MathTransformer
from mathllm.tokenizer import TOKENIZER

ROOT = Path(__file__).resolve().parent.parent


def generate_data_cli(output_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``scripts/generate_data.py`` as a user would."""
    cmd = [sys.executable, str(ROOT / "scripts" / "generate_data.py"), "--output-dir", str(output_dir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """2-digit addition, 2-3 operands, cot format, 3,000 examples (train/val/test)."""
    out = tmp_path_factory.mktemp("data") / "add2"
    proc = generate_data_cli(out, "--num-examples", "3000", "--max-digits", "2", "--max-operands", "3",
                             "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    return out


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
