"""Shared fixtures: small datasets made by the project's own generator, a few-step tiny model, an untrained
tiny model, and one torch thread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mathllm.model import MathTransformer

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


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    generation and modes tests compare runs and time nothing, and one thread keeps them steady on 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    """An untrained ``tiny`` model, seeded (0), in eval mode: for tests of shapes, hooks and plots."""
    torch.manual_seed(0)
    return MathTransformer.from_preset("tiny").eval()
