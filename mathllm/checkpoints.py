"""Checkpoints: save, find, resume and load. Nothing here is pickled, so loading never runs code.

A trained run is a directory::

    model.safetensors, config.json     final weights (safetensors, with the training mode in its metadata)
    training_config.json               the run record: full TrainConfig, mode, seed, code version, data meta
    trainer_state.json                 written last: the run finished
    test_results.json                  evaluation of the final model on the test split
    logs/training.log, logs/metrics.jsonl
    checkpoint-N/                      resumable state at step N: model.safetensors + config.json,
                                       training_state.safetensors (optimizer moments, RNG states),
                                       training_state.json (optimizer settings, scheduler, grad scaler) and,
                                       written last to mark it complete, trainer_state.json

Load a trained model with its training record and its mode::

    >>> trained = load(SHIPPED_CHECKPOINT)
    >>> trained.mode.name, trained.model.cfg.n_layers
    ('teacher', 4)

Every write is atomic (a temporary name, then a rename): a crash never leaves a truncated file under the final
name. A checkpoint that is unreadable anyway (a disk that filled up, a copy cut short) is skipped on resume in
favour of the newest complete one, and the log says which one was used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from mathllm.data import generate_dataset
from mathllm.model import PRESETS, MathTransformer, ModelConfig
from mathllm.training_mode import TrainingMode, mode_from_config
from mathllm.utils import SHIPPED_CHECKPOINT, atomic_write_bytes, atomic_write_json, resolve_device  # noqa: F401

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
RUN_RECORD = "training_config.json"
TRAINER_STATE = "trainer_state.json"
TRAINING_STATE_TENSORS = "training_state.safetensors"
TRAINING_STATE_JSON = "training_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
METRICS = Path("logs") / "metrics.jsonl"
MODE_METADATA_KEY = "mathllm_mode"

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, foreign, or does not fit the requested model shape."""


# ----------------------------------------------------------------------------------------------
# Model weights: model.safetensors + config.json
# ----------------------------------------------------------------------------------------------

def save_model(model: MathTransformer, directory: Union[str, Path], metadata: Optional[dict[str, str]] = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (each atomically)."""
    from safetensors.torch import save

    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "mathllm_model": "MathTransformer"}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata=meta))
    atomic_write_json(directory / CONFIG_NAME, model.cfg.to_dict())
    return directory


def load_model(path: Union[str, Path], *, config: Union[ModelConfig, dict, None] = None,
               model_size: Optional[str] = None, device: Union[str, torch.device, None] = None) -> MathTransformer:
    """The ``MathTransformer`` in a checkpoint directory (or its ``.safetensors`` file with ``config.json`` beside it).

    ``config`` replaces config.json; ``model_size`` (a preset name) replaces the four shape fields (n_layers,
    d_model, n_heads, d_mlp) and keeps the rest from config.json. Anything that does not fit raises
    :class:`CheckpointError` naming the expected and the found shapes.
    """
    weights_path, config_path = _resolve_paths(Path(path))
    state = _read_safetensors(weights_path)
    found = _shape_from_state(state, weights_path)
    file_cfg: Optional[dict] = None
    if config_path.is_file():
        file_cfg = _read_json(config_path, "model config")
    try:
        if config is not None:
            cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
            source = "the given config"
        elif model_size is not None:
            if model_size not in PRESETS:
                raise CheckpointError(f"unknown model_size {model_size!r}; choose one of {list(PRESETS)}")
            base = ModelConfig.from_dict(file_cfg).to_dict() if file_cfg is not None else {}
            base.pop("d_head", None)
            cfg = ModelConfig(**{**base, **PRESETS[model_size]})
            source = f"model_size {model_size!r}"
        elif file_cfg is not None:
            cfg = ModelConfig.from_dict(file_cfg)
            source = str(config_path)
        else:
            raise CheckpointError(
                f"no {CONFIG_NAME} next to {weights_path}; pass config=ModelConfig(...) or "
                f"model_size=<{'|'.join(PRESETS)}> to say what shape the weights have (the weights look like: {found})")
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"bad model config for {weights_path}: {e}") from None

    model = MathTransformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = [k for k in expected if k in got and expected[k] != got[k]]
    if missing or unexpected or wrong:
        details = [f"{k}: expected {expected[k]}, found {got[k]}" for k in wrong[:3]]
        if missing:
            details.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        raise CheckpointError(f"{source} expects {cfg.shape_summary()} but the checkpoint {weights_path} has {found}. "
                              + "; ".join(details))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    if device is not None:
        model.to(device)
    return model


def read_metadata(path: Union[str, Path]) -> dict[str, str]:
    """The string metadata of a checkpoint's ``model.safetensors`` (empty when it has none)."""
    from safetensors import safe_open

    weights, _ = _resolve_paths(Path(path))
    try:
        with safe_open(str(weights), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise CheckpointError(f"{weights} is not a readable safetensors file: {e}") from None


def _resolve_paths(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            present = sorted(p.name for p in path.iterdir())[:8]
            hint = ""
            if any(n.endswith((".pt", ".pth", ".bin", ".ckpt")) for n in present):
                hint = " (pickled .pt/.pth/.bin files are never loaded: they can run code)"
            raise CheckpointError(f"no {WEIGHTS_NAME} in {path}; it contains {present or 'nothing'}{hint}")
        return weights, path / CONFIG_NAME
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file; give a checkpoint directory or its "
                                  f"{WEIGHTS_NAME} (pickled .pt/.pth files are never loaded)")
        return path, path.parent / CONFIG_NAME
    raise CheckpointError(f"no checkpoint at {path} (no such file or directory)")


def _read_safetensors(path: Path, floats_only: bool = True) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    try:
        state = load(data)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, not safetensors at all
        raise CheckpointError(f"{path} is not a readable safetensors file ({len(data)} bytes; truncated or "
                              f"corrupt?): {e}") from None
    bad = [k for k, v in state.items() if not v.is_floating_point()] if floats_only else []
    if bad:
        raise CheckpointError(f"{path} holds non-float tensors {bad[:3]}; not a mathllm model checkpoint")
    return state


def _read_json(path: Path, what: str) -> Any:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a valid {what} ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} is not a valid {what} (not a JSON object)")
    return value


def _shape_from_state(state: dict[str, torch.Tensor], path: Path) -> str:
    """Describe the shape a state dict implies, for error messages."""
    if "embed.W_E" not in state or "blocks.0.attn.W_Q" not in state:
        raise CheckpointError(f"{path} does not look like a mathllm MathTransformer checkpoint "
                              f"(no embed.W_E / blocks.0.attn.W_Q; its first keys are {sorted(state)[:5]})")
    d_vocab, d_model = state["embed.W_E"].shape
    n_heads = state["blocks.0.attn.W_Q"].shape[0]
    layers = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    parts = [f"n_layers={len(layers)}", f"d_model={d_model}", f"n_heads={n_heads}"]
    if "blocks.0.mlp.W_in" in state:
        parts.append(f"d_mlp={state['blocks.0.mlp.W_in'].shape[-1]}")
    parts.append(f"d_vocab={d_vocab}")
    parts.append(f"positional=learned, n_ctx={state['pos_embed.W_pos'].shape[0]}" if "pos_embed.W_pos" in state
                 else "positional=rotary")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Resumable training state: checkpoint-N/
# ----------------------------------------------------------------------------------------------

def find_checkpoints(output_dir: Union[str, Path]) -> list[tuple[int, Path]]:
    """Complete checkpoints (those whose trainer_state.json exists), oldest first."""
    output_dir = Path(output_dir)
    found = []
    if output_dir.is_dir():
        for p in output_dir.iterdir():
            suffix = p.name[len(CHECKPOINT_PREFIX):]
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and (p / TRAINER_STATE).is_file():
                found.append((int(suffix), p))
    return sorted(found)


def _training_state(optimizer, scheduler, scaler) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's tensors and the RNG states as tensors; everything else as JSON."""
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, s in enumerate(cuda_states):
        tensors[f"rng.cuda.{i}"] = s
    opt = optimizer.state_dict()
    state_json: dict[str, dict[str, Any]] = {}
    for index, entry in opt["state"].items():
        state_json[str(index)] = {}
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                state_json[str(index)][name] = value
    record = {"optimizer": {"param_groups": opt["param_groups"], "state": state_json},
              "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
              "cuda_rng_devices": len(cuda_states)}
    return tensors, record


def save_checkpoint(output_dir: Union[str, Path], step: int, model: MathTransformer, optimizer, scheduler, scaler,
                    state: dict[str, Any], keep: int, metadata: Optional[dict[str, str]] = None) -> Path:
    """Write ``checkpoint-{step}/`` atomically: built in a temporary directory, then renamed into place.

    A checkpoint of the same step is replaced by two renames (the old one out of the way, the new one in), so a
    kill at any moment leaves one complete copy (``clean_leftovers`` restores it). Only the newest ``keep``
    checkpoints are kept.
    """
    from safetensors.torch import save

    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, tmp, metadata=metadata)
    tensors, record = _training_state(optimizer, scheduler, scaler)
    atomic_write_bytes(tmp / TRAINING_STATE_TENSORS, save(tensors))
    atomic_write_json(tmp / TRAINING_STATE_JSON, record)
    atomic_write_json(tmp / TRAINER_STATE, state)  # written last: marks the checkpoint complete
    if final.exists():
        old = output_dir / f".{CHECKPOINT_PREFIX}{step}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    for _, stale in find_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def clean_leftovers(output_dir: Union[str, Path]) -> list[str]:
    """Remove what killed runs left behind (``.checkpoint-N.tmp``), and put back a checkpoint that was
    moved aside for a re-save (``.checkpoint-N.old``) when its replacement never arrived. Returns what it did."""
    output_dir = Path(output_dir)
    done = []
    if not output_dir.is_dir():
        return done
    for p in sorted(output_dir.iterdir()):
        if not (p.is_dir() and p.name.startswith(f".{CHECKPOINT_PREFIX}")):
            continue
        if p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed the unfinished {p.name}")
        elif p.name.endswith(".old"):
            final = output_dir / p.name[1 : -len(".old")]
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}")
            else:
                os.replace(p, final)
                done.append(f"restored {final.name} from {p.name}")
    return done


@dataclass
class ResumeState:
    """A checkpoint read back whole, before anything is applied to the live objects."""

    step: int
    path: Path
    trainer_state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    record: dict[str, Any]


def read_checkpoint(path: Path) -> ResumeState:
    """Read every file of ``checkpoint-N/``; any missing, truncated or foreign file raises CheckpointError."""
    trainer_state = _read_json(path / TRAINER_STATE, "trainer state")
    model_state = _read_safetensors(path / WEIGHTS_NAME)
    tensors = _read_safetensors(path / TRAINING_STATE_TENSORS, floats_only=False)
    record = _read_json(path / TRAINING_STATE_JSON, "training state")
    for key in ("optimizer", "scheduler"):
        if key not in record:
            raise CheckpointError(f"{path / TRAINING_STATE_JSON} has no {key!r} entry")
    if "rng.torch" not in tensors:
        raise CheckpointError(f"{path / TRAINING_STATE_TENSORS} has no RNG state")
    if "step" not in trainer_state:
        raise CheckpointError(f"{path / TRAINER_STATE} has no step")
    return ResumeState(int(trainer_state["step"]), path, trainer_state, model_state, tensors, record)


def newest_readable_checkpoint(output_dir: Union[str, Path], log: Optional[logging.Logger] = None) -> Optional[ResumeState]:
    """The newest checkpoint that reads back whole (older ones are tried when a newer one is damaged)."""
    log = log or logger
    for step, path in reversed(find_checkpoints(output_dir)):
        try:
            return read_checkpoint(path)
        except CheckpointError as err:
            log.warning("%s is damaged and is skipped: %s", path.name, err)
    return None


def restore(resume: ResumeState, model: MathTransformer, optimizer, scheduler, scaler) -> None:
    """Put a checkpoint's weights, optimizer, scheduler, grad-scaler and RNG states into the live objects."""
    model.load_state_dict({k: v.to(torch.float32) for k, v in resume.model_state.items()}, strict=True)
    saved = resume.record["optimizer"]
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in saved["state"].items()}
    for key, tensor in resume.tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = tensor
    try:
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        scheduler.load_state_dict(resume.record["scheduler"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{resume.path}: the optimizer state does not fit this run ({err})") from None
    torch.set_rng_state(resume.tensors["rng.torch"])
    cuda = [resume.tensors[f"rng.cuda.{i}"] for i in range(resume.record.get("cuda_rng_devices", 0))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if scaler is not None and resume.record.get("scaler"):
        scaler.load_state_dict(resume.record["scaler"])


def is_run_directory(path: Union[str, Path]) -> bool:
    """Whether ``path`` holds a training run (its trainer_state.json or training_config.json, or a checkpoint)."""
    path = Path(path)
    return path.is_dir() and ((path / TRAINER_STATE).is_file() or (path / RUN_RECORD).is_file()
                              or bool(find_checkpoints(path)))


def remove_run(path: Union[str, Path]) -> None:
    """Delete a run directory for ``--overwrite``; refuse anything that is not one, and leave it untouched."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"--overwrite: {path} is a file, not a run directory; not touching it")
    if any(path.iterdir()) and not is_run_directory(path):
        raise ValueError(f"--overwrite: {path} is not a training run (no {TRAINER_STATE} or {RUN_RECORD}); "
                         "refusing to delete it. Choose another --output-dir, or delete it yourself.")
    shutil.rmtree(path)


# ----------------------------------------------------------------------------------------------
# The metrics log: one JSON object per line
# ----------------------------------------------------------------------------------------------

def read_metrics(output_dir: Union[str, Path], log: Optional[logging.Logger] = None) -> list[dict[str, Any]]:
    """Every logged step and evaluation of a run, in order (``logs/metrics.jsonl``).

    A last line cut short (a kill during the append) is dropped with a warning; a damaged line elsewhere is an
    error naming the file and line.
    """
    path = Path(output_dir) / METRICS
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").split("\n")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if all(not rest.strip() for rest in lines[number:]):
                (log or logger).warning("%s:%d: dropped a torn last line (%d characters)", path, number, len(line))
                continue
            raise ValueError(f"{path}:{number}: not a JSON object: {line[:80]!r}") from None
    return out


def seconds_per_step(history: list[dict[str, Any]], second_half: bool = False) -> Optional[float]:
    """Median of the logged windows' seconds per step (``read_metrics``; validation and checkpoints excluded),
    after the first window (warm-up); ``second_half``: over the windows of the second half of training only
    (steady state: on CUDA a gumbel run captures one CUDA graph per batch shape during its first epoch or two).

    >>> seconds_per_step([{"step": 100, "step_seconds": 0.9}, {"step": 200, "step_seconds": 0.25},
    ...                   {"step": 300, "step_seconds": 0.5}, {"step": 300, "val_exact_match": 1.0}])
    0.375
    """
    windows = [(m["step"], m["step_seconds"]) for m in history if "step_seconds" in m]
    if second_half and windows:
        last = windows[-1][0]
        windows = [w for w in windows if w[0] > last / 2]
    elif len(windows) > 1:
        windows = windows[1:]
    return statistics.median(w[1] for w in windows) if windows else None


def write_metrics(output_dir: Union[str, Path], metrics: list[dict[str, Any]]) -> None:
    atomic_write_bytes(Path(output_dir) / METRICS, "".join(json.dumps(m) + "\n" for m in metrics).encode())


def append_metrics(output_dir: Union[str, Path], metrics: dict[str, Any]) -> None:
    with open(Path(output_dir) / METRICS, "a") as f:
        f.write(json.dumps(metrics) + "\n")


# ----------------------------------------------------------------------------------------------
# Trained models: weights + how they were trained
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainedModel:
    """A model with its training mode and the record of the run that made it (``load``)."""

    model: MathTransformer
    mode: TrainingMode  # how to use it: mode.generate(model, prompts)
    record: Optional[dict[str, Any]]  # the run's training_config.json (None for a bare weights file)
    path: Optional[Path] = None

    def generate(self, prompts, **kwargs):
        """``mode.generate(model, prompts, **kwargs)``."""
        return self.mode.generate(self.model, prompts, **kwargs)

    @property
    def data_arguments(self) -> dict[str, Any]:
        """The arguments of ``generate_dataset`` the model was trained on ({} when unrecorded)."""
        return dict(((self.record or {}).get("data_meta") or {}).get("arguments") or {})


def training_record(checkpoint: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The ``training_config.json`` of the run a checkpoint came from, or None when there is none."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    for candidate in (folder / RUN_RECORD, folder.parent / RUN_RECORD):
        if candidate.is_file():
            return _read_json(candidate, "run record")
    return None


def mode_metadata(mode: TrainingMode) -> dict[str, str]:
    """Safetensors metadata naming the training mode, so that a lone model.safetensors still says how to use it."""
    return {MODE_METADATA_KEY: json.dumps(mode.to_dict())}


def load(path: Union[str, Path] = SHIPPED_CHECKPOINT, model_size: Optional[str] = None,
         device: str = "auto", loops: Optional[int] = None) -> TrainedModel:
    """A checkpoint directory or ``model.safetensors`` with its mode and run record, in eval mode on ``device``.

    The mode comes from the run's ``training_config.json``, or, for a lone weights file, from the mode its
    trainer wrote into the safetensors metadata; a model with neither is a teacher-forcing one. ``loops`` runs the
    blocks that many times (a looped model past or short of its trained count; default: the trained count).
    """
    model = load_model(path, model_size=model_size)
    if loops is not None:
        model.set_loops(loops)
    record = training_record(path)
    if record is not None:
        mode = mode_from_config(record.get("config") or {})
    else:
        meta = read_metadata(path).get(MODE_METADATA_KEY)
        mode = mode_from_config(json.loads(meta) if meta else {})
    return TrainedModel(model.to(resolve_device(device)).eval(), mode, record, Path(path))


def dataset_for_checkpoint(checkpoint: Union[str, Path]):
    """Regenerate, exactly, the dataset a checkpoint was trained on (from its recorded data arguments)."""
    record = training_record(checkpoint)
    args = ((record or {}).get("data_meta") or {}).get("arguments")
    if not args:
        raise ValueError(f"{checkpoint}: no training_config.json with the data's arguments beside it; "
                         "load the data with mathllm.data.load_split instead")
    if "generator" in args:  # data made by another generator (mathllm.chains.write_examples records its name)
        from mathllm.chains import regenerate

        return regenerate(args)
    return generate_dataset(**args)


__all__ = ["CheckpointError", "ResumeState", "TrainedModel", "clean_leftovers", "dataset_for_checkpoint",
           "find_checkpoints", "is_run_directory", "load", "load_model", "mode_metadata", "newest_readable_checkpoint",
           "read_checkpoint", "read_metadata", "read_metrics", "remove_run", "restore", "save_checkpoint", "save_model",
           "seconds_per_step",
           "training_record", "write_metrics", "append_metrics"]
