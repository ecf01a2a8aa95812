"""Small shared helpers: reproducibility, atomic writes, the smoke switch, devices.

    >>> resolve_device("cpu")      # "auto" picks CUDA when there is one
    device(type='cpu')
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import torch

import numpy as np

import mathllm

REPO_ROOT = Path(__file__).resolve().parent.parent
# The small trained model shipped with the repository (3-digit addition, chain of thought), so that the
# evaluation, playground and analysis notebooks run at once on a fresh clone. scripts/train_shipped_model.sh
# regenerates it.
SHIPPED_CHECKPOINT = REPO_ROOT / "checkpoints" / "add3_cot"


def smoke_mode() -> bool:
    """The notebooks' smoke switch: ``MATHLLM_SMOKE=1`` shrinks every long step (used by CI/nbval)."""
    return os.environ.get("MATHLLM_SMOKE", "0").strip().lower() not in ("", "0", "false", "no")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def source_hash() -> str:
    """SHA-256 over the package's own sources (``mathllm/**/*.py``, paths and contents, in a fixed order): which
    code ran, even without git or with uncommitted changes."""
    digest = hashlib.sha256()
    package = Path(mathllm.__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_version() -> dict[str, Any]:
    """Package version, a hash of its sources, and the git commit with whether the work tree differed from it
    (uncommitted changes or untracked files)."""
    info: dict[str, Any] = {"mathllm": mathllm.__version__, "source_sha256": source_hash()}
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=5)
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def atomic_write_chunks(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write to a temp file in the same directory, fsync, then rename: never a truncated file.

    ``chunks`` may be a generator, so big files (a million JSON lines) are streamed, not held twice.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; these are ordinary files
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_chunks(path, [data])


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def resolve_device(device: str = "auto") -> "torch.device":
    """``"auto"`` -> cuda when available, else cpu. Asking for cuda without one is a clear error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was requested but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


@contextlib.contextmanager
def eval_mode(model):
    """``with eval_mode(model): ...`` runs in eval mode, then restores the model's own train/eval flag."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
