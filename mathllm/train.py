"""Trainer: a short loop over the training mode's step, with exact resume, checkpoints, logs and W&B.

A training example is one rendered line such as ``12+34=<think>2+4=6 1+3=4</think>46<end>``. What the model
reads of it, and what the loss is taken on, is the *training mode*'s business (``mathllm.training_mode``; the
modes live in ``mathllm.modes``): teacher forcing (the default) reads the whole line and scores the
completion, everything after the first ``=``. The trainer only calls the mode's interface::

    trainer = Trainer(TrainConfig(model_size="tiny", data_dir="data", output_dir="checkpoints/run1"))
    result = trainer.fit()        # training_step until max_steps, validation_step every eval_steps

The output directory is described in ``mathllm.checkpoints``. Running the same command on the same output
directory resumes from the newest readable checkpoint and reaches the same weights as an uninterrupted run.
Ctrl-C saves a checkpoint and exits.

An experiment is a file: ``configs/main.json`` holds a run's settings (every ``TrainConfig`` field, the mode's
settings, and a ``data`` section for ``scripts/generate_data.py``); ``scripts/train.py --config FILE`` reads it
and flags override it (``config_from_file``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from mathllm.batches import CurriculumOrder, FocusedOrder, StratumFocus, row_losses, stratum_label
from mathllm.chains import plant_chains
from mathllm.checkpoints import (TRAINER_STATE, append_metrics, clean_leftovers, load_model, mode_metadata,
                                 newest_readable_checkpoint, read_metrics, remove_run, restore, save_checkpoint,
                                 save_model, write_metrics)
from mathllm.data import load_split
from mathllm.distributed import Distributed
from mathllm.evaluate import evaluate_split, exact_match_texts
from mathllm.model import MAX_N_CTX, MathTransformer, ModelConfig
from mathllm.text import split_text
from mathllm.training_mode import (StepContext, StepOutput, TrainingMode, available_modes, get_mode, mode_class,
                                   step_seed)
from mathllm.utils import atomic_write_json, code_version, resolve_device, seed_everything

# The example command that makes data, for error messages.
GENERATE_EXAMPLE = "python scripts/generate_data.py --num-examples 100000 --max-digits 2"


@dataclass
class TrainConfig:
    """Every knob of a training run; saved whole to ``training_config.json``.

    Defaults are the seed's. ``scripts/train.py`` exposes each field as ``--field-name`` (and each setting of
    each mode, e.g. ``--think-tokens``, which lands in ``mode_settings``).
    """

    model_size: str = "small"  # preset in mathllm.model.PRESETS: tiny, mini, small, medium, large
    positional: str | None = None  # "rotary" | "learned"; None = the preset's default
    n_layers: int | None = None  # override the preset's number of layers (None = the preset's)
    d_model: int | None = None  # override the preset's residual width
    n_heads: int | None = None  # override the preset's number of attention heads
    d_mlp: int | None = None  # override the preset's MLP width
    max_length: int = 128  # context length of the model (n_ctx); longer examples are an error
    batch_size: int = 32  # training examples per step
    eval_batch_size: int = 64  # batch size for evaluation
    learning_rate: float = 1e-4  # peak learning rate after warmup
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not applied to norms, biases, embeddings)
    num_epochs: int = 10  # passes over the training split (ignored when max_steps is set)
    max_steps: int | None = None  # total optimizer steps; overrides num_epochs
    warmup_steps: int = 500  # linear warmup, then cosine decay to min_lr_ratio * learning_rate
    min_lr_ratio: float = 0.1  # floor of the cosine decay, as a fraction of the peak
    max_grad_norm: float = 1.0  # gradient clipping
    data_dir: str = "data"  # directory with train.jsonl / val.jsonl / test.jsonl (scripts/generate_data.py)
    output_dir: str = "checkpoints"  # where checkpoints, logs and the final model go
    num_workers: int = 4  # accepted for the seed's CLI; data is pre-tokenized in memory, so unused
    save_steps: int = 1000  # write checkpoint-N every this many steps
    save_total_limit: int = 2  # keep only the newest this many checkpoint-N directories
    eval_steps: int = 1000  # validate (loss + exact match on eval_examples) every this many steps
    eval_examples: int = 512  # validation examples decoded for exact match at each evaluation
    eval_loss_examples: int | None = None  # validation loss on the first this many val examples (None: all)
    logging_steps: int = 100  # log loss / lr / throughput every this many steps
    fp16: bool = False  # mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler)
    wandb: bool = True  # log to Weights & Biases when importable; offline with a warning when no login
    wandb_project: str = "mathllm"
    seed: int = 42  # seeds data order, initialisation and dropout
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    threads: int | None = None  # torch intra-op threads; None = torch's default
    mode: str = "teacher"  # the training mode (mathllm.modes): teacher, answer-only, pause, gumbel, internalize
    mode_settings: dict[str, Any] = field(default_factory=dict)  # the mode's own settings (its flags)
    init_from: str | None = None  # warm start: load these weights (a run directory or .safetensors) at step 0
    mix_teacher: float = 0.0  # modes other than teacher: share of steps trained by teacher forcing instead
    mix_teacher_end: float | None = None  # anneal that share linearly to this by the last step (a curriculum)
    operand_balance: float = 0.0  # oversample rare operand counts: repeat ~(largest/count)**this; 1 = equal shares
    stratum_min_share: float = 0.0  # repeat every stratum (tuple of operand lengths) to at least this share of an epoch
    stratum_focus: float = 0.0  # draw this share of the batches from the strata with the highest loss now (mathllm.batches.StratumFocus)
    stratum_focus_every: int = 250  # --stratum-focus: measure every stratum's loss on a fixed probe every this many steps
    prompt_loss_weight: float = 0.0  # also score the prompt tokens, at this weight (0 = completion only); > 0 lets a model finish "7+"
    planted_chains: float = 0.0  # replace this share of the two-operand additions by problems of the same lengths whose carry ripples k columns (k uniform)
    loops: int = 1  # a looped model: run the blocks this many times with shared weights, input re-added (1 = one pass)
    loops_min: int | None = None  # draw the iterations of each batch uniformly from loops_min..loops_max (None: --loops)
    loops_max: int | None = None  # (the draw is a pure function of the seed and the step; evaluation runs --loops)
    progressive_loss: float = 0.0  # Bansal et al. 2022: weight alpha of the loss after n iterations without gradient, then k with
    progressive_max_backprop: int | None = None  # progressive loss: at most this many iterations with gradient (None: all)
    curriculum_start: int | None = None  # Fan et al. 2024: train on operands of at most this many digits first (None: off)
    curriculum_interval: int = 250  # curriculum: one more digit every this many steps, up to the data's longest operands
    bf16: bool = False  # bf16 autocast for the training steps on any device (~1.9x faster on a CPU with AVX512-BF16)
    evaluate_test: bool = True  # evaluate the final model on test.jsonl and write test_results.json
    progress: bool = True  # show tqdm progress bars

    def __post_init__(self) -> None:
        self.mode_settings = dict(self.mode_settings or {})
        for name in ("batch_size", "eval_batch_size", "logging_steps", "eval_steps", "save_steps", "num_epochs"):
            _require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                     f"--{_flag(name)} must be a positive integer, got {getattr(self, name)!r}")
        _require(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}")
        _require(self.eval_examples >= 0, f"--eval-examples must be >= 0, got {self.eval_examples}")
        _require(self.eval_loss_examples is None or self.eval_loss_examples >= 1,
                 f"--eval-loss-examples must be >= 1, got {self.eval_loss_examples}")
        _require(self.save_total_limit >= 0, f"--save-total-limit must be >= 0, got {self.save_total_limit}")
        _require(self.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        _require(2 <= self.max_length <= MAX_N_CTX, f"--max-length must be in 2..{MAX_N_CTX}, got {self.max_length}")
        _require(math.isfinite(self.learning_rate) and self.learning_rate > 0,
                 f"--learning-rate must be positive, got {self.learning_rate}")
        _require(0.0 <= self.min_lr_ratio <= 1.0, f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        _require(self.max_grad_norm > 0, f"--max-grad-norm must be positive, got {self.max_grad_norm}")
        _require(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _require(self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}")
        _require(self.operand_balance >= 0, f"--operand-balance must be >= 0, got {self.operand_balance}")
        _require(0 <= self.stratum_min_share < 1,
                 f"--stratum-min-share must be in [0, 1), got {self.stratum_min_share}")
        _require(0 <= self.stratum_focus <= 1, f"--stratum-focus must be in [0, 1], got {self.stratum_focus}")
        _require(isinstance(self.stratum_focus_every, int) and self.stratum_focus_every >= 1,
                 f"--stratum-focus-every must be a positive integer, got {self.stratum_focus_every!r}")
        _require(self.prompt_loss_weight >= 0, f"--prompt-loss-weight must be >= 0, got {self.prompt_loss_weight}")
        self._check_depth()
        for name in ("mix_teacher", "mix_teacher_end"):
            value = getattr(self, name)
            _require(value is None or 0.0 <= value <= 1.0, f"--{_flag(name)} must be in [0, 1], got {value}")
        mode = self.training_mode()  # an unknown mode or setting is an error here
        if self.mixes_teacher and not mode.can_mix_teacher:
            raise ValueError(f"--mix-teacher mixes teacher-forced steps into another mode; it means nothing with "
                             f"--mode {self.mode}")
        mode.check(self)

    def _check_depth(self) -> None:
        """The looped-model, progressive-loss and curriculum settings."""
        for name in ("loops", "loops_min", "loops_max", "progressive_max_backprop", "curriculum_start",
                     "curriculum_interval"):
            value = getattr(self, name)
            _require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                     f"--{_flag(name)} must be a positive integer, got {value!r}")
        low, high = self.loop_range
        _require(low <= self.loops <= high, f"--loops {self.loops} must lie in --loops-min..--loops-max ({low}..{high})")
        _require(0.0 <= self.planted_chains <= 1.0, f"--planted-chains must be in [0, 1], got {self.planted_chains}")
        _require(0.0 <= self.progressive_loss <= 1.0, f"--progressive-loss must be in [0, 1], got {self.progressive_loss}")
        _require(not self.progressive_loss or high > 1,
                 "--progressive-loss needs a looped model: set --loops (or --loops-max) above 1")
        _require(self.progressive_max_backprop is None or self.progressive_loss > 0,
                 "--progressive-max-backprop means something only with --progressive-loss")
        _require(self.curriculum_start is None or not (self.operand_balance or self.stratum_min_share
                                                       or self.stratum_focus),
                 "--curriculum-start draws each batch afresh from the short enough examples; it does not combine "
                 "with --operand-balance, --stratum-min-share or --stratum-focus")

    @property
    def loop_range(self) -> tuple[int, int]:
        """The iterations a training batch may get: ``(loops_min, loops_max)``, each defaulting to ``loops``."""
        return (self.loops if self.loops_min is None else self.loops_min,
                self.loops if self.loops_max is None else self.loops_max)

    @property
    def mixes_teacher(self) -> bool:
        return self.mix_teacher > 0 or (self.mix_teacher_end or 0) > 0

    def training_mode(self) -> TrainingMode:
        """The mode this config names, with its settings."""
        return get_mode(self.mode, **self.mode_settings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """From ``to_dict`` output, or from a flat dict whose extra keys are the mode's settings
        (``{"mode": "gumbel", "think_tokens": "8", ...}``: the layout of config files and of older records)."""
        d = dict(d)
        if d.pop("use_gumbel", False):  # the seed's flag, in records written before the modes moved out
            d["mode"] = mode_class("gumbel").name
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: d.pop(k) for k in list(d) if k not in known}
        if extra:
            mode = d.get("mode") or cls.mode
            unknown = sorted(set(extra) - set(mode_class(mode).setting_names()))
            if unknown:
                raise ValueError(f"unknown training config fields: {unknown} (neither TrainConfig fields nor settings "
                                 f"of --mode {mode})")
            d["mode_settings"] = {**extra, **(d.get("mode_settings") or {})}
        return cls(**d)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# Fields that may differ between an interrupted run and its resumption without changing the result.
RESUME_IGNORED_FIELDS = {"output_dir", "progress", "wandb", "wandb_project", "num_workers", "device", "threads",
                         "evaluate_test", "eval_batch_size"}


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of an experiment file such as ``configs/main.json`` (a bad file names its line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object of settings, got {type(value).__name__}")
    return value


def config_from_file(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The ``TrainConfig`` of an experiment file, with ``overrides`` on top; its ``data`` section (the arguments
    of ``mathllm.data.generate_dataset``) and ``//`` comment keys are not training settings and are skipped."""
    settings = {k: v for k, v in read_config_file(path).items() if k != "data" and not k.startswith("//")}
    try:
        return TrainConfig.from_dict({**settings, **overrides})
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from None


def load_training_texts(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Texts of ``data_dir/split.jsonl``; a missing directory says which command makes it."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not Path(data_dir).is_dir() or not path.is_file():
        raise FileNotFoundError(f"no {split} split at {path}. Generate the data first, e.g.\n"
                                f"    {GENERATE_EXAMPLE} --output-dir {data_dir}")
    texts = [ex["text"] for ex in load_split(path)]
    if not texts:
        raise ValueError(f"{path} holds no examples; generate the data again")
    return texts


# ----------------------------------------------------------------------------------------------
# Optimizer, schedule, teacher mixing
# ----------------------------------------------------------------------------------------------

def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices that are not embeddings (nanoGPT's rule, minus embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed" not in name and ".W_E" not in name and ".W_pos" not in name
         else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step instead of a loop over parameters (~4x faster optimizer step on CPU)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.98), eps=1e-8, fused=True)


def lr_lambda_for(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to the peak over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    warmup = min(cfg.warmup_steps, max(total_steps // 2, 1))

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return lr_lambda


def loops_at(cfg: TrainConfig, step: int) -> int:
    """The iterations batch ``step`` is trained with: ``loops``, or uniform in ``loops_min..loops_max`` (a pure
    function of the seed and the step)."""
    low, high = cfg.loop_range
    if low == high:
        return low
    gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 3))
    return int(torch.randint(low, high + 1, (), generator=gen))


def progressive_split(cfg: TrainConfig, step: int, loops: int) -> tuple[int, int]:
    """``(n, k)`` of the progressive loss at ``step`` (Bansal et al. 2022, as in McLeish et al.'s code): ``n``
    uniform in 0..loops-1 iterations without gradient, then ``k`` uniform in 1..min(loops - n, max backprop) with
    it; a pure function of the seed and the step.

    >>> cfg = TrainConfig(loops=4, progressive_loss=1.0, wandb=False)
    >>> all(n + k <= 4 and k >= 1 for n, k in (progressive_split(cfg, s, 4) for s in range(50)))
    True
    """
    gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 4))
    n = int(torch.randint(0, loops, (), generator=gen))
    most = min(loops - n, cfg.progressive_max_backprop or loops)
    return n, int(torch.randint(1, most + 1, (), generator=gen))


def curriculum_digits(cfg: TrainConfig, step: int, longest: int) -> int:
    """The longest operands the curriculum allows at ``step``: ``curriculum_start`` digits, one more every
    ``curriculum_interval`` steps, up to ``longest`` (the data's).

    >>> cfg = TrainConfig(curriculum_start=3, curriculum_interval=250, wandb=False)
    >>> [curriculum_digits(cfg, s, 8) for s in (0, 249, 250, 1250, 9999)]
    [3, 3, 4, 8, 8]
    """
    if cfg.curriculum_start is None:
        return longest
    return min(longest, cfg.curriculum_start + step // cfg.curriculum_interval)


def teacher_fraction(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Share of teacher-forced batches at this step: ``mix_teacher``, linearly to ``mix_teacher_end`` when set."""
    if cfg.mix_teacher_end is None or total_steps <= 1:
        return cfg.mix_teacher
    p = min(max(step / (total_steps - 1), 0.0), 1.0)
    return cfg.mix_teacher + (cfg.mix_teacher_end - cfg.mix_teacher) * p


def is_teacher_step(cfg: TrainConfig, step: int, total_steps: int) -> bool:
    """Whether ``step`` trains by teacher forcing (a pure function of the seed and the step)."""
    frac = teacher_fraction(cfg, step, total_steps)
    if frac <= 0.0 or frac >= 1.0:
        return frac >= 1.0
    gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 1))
    return bool(torch.rand((), generator=gen) < frac)


# ----------------------------------------------------------------------------------------------
# Logging and W&B
# ----------------------------------------------------------------------------------------------

class _ColourFormatter(logging.Formatter):
    COLOURS = {logging.WARNING: "\033[33m", logging.ERROR: "\033[31m", logging.INFO: "\033[36m"}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = self.COLOURS.get(record.levelno)
        return f"{colour}{text}\033[0m" if colour else text


def setup_logger(output_dir: Path, console: bool = True, file: bool = True) -> logging.Logger:
    """Logger writing timestamped lines to ``logs/training.log`` and (coloured on a tty) to stderr."""
    logger = logging.getLogger(f"mathllm.train.{output_dir.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = "%(asctime)s %(levelname)s %(message)s"
    if file:
        (output_dir / "logs").mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output_dir / "logs" / "training.log")
        file_handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    if not (file or console):
        logger.addHandler(logging.NullHandler())
    if console:
        stream = logging.StreamHandler(sys.stderr)
        formatter_cls = _ColourFormatter if sys.stderr.isatty() else logging.Formatter
        stream.setFormatter(formatter_cls(fmt, "%H:%M:%S"))
        logger.addHandler(stream)
    return logger


class WandbLogger:
    """Logs to W&B when it can; never blocks. With no login, runs offline and warns once."""

    def __init__(self, cfg: TrainConfig, output_dir: Path, logger: logging.Logger, resume_id: str | None,
                 enabled: bool = True):
        self.run = None
        self.run_id = resume_id
        if not (cfg.wandb and enabled):
            return
        try:
            import wandb
        except Exception:  # noqa: BLE001 - any import problem means "not available"
            logger.warning("wandb is not installed; continuing without it (--no-wandb silences this)")
            return
        mode = os.environ.get("WANDB_MODE")
        if mode is None and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
            mode = "offline"
            logger.warning("W&B: no login found, logging offline to %s (sync later with `wandb sync`)",
                           output_dir / "wandb")
        try:
            self.run = wandb.init(
                project=cfg.wandb_project, config=cfg.to_dict(), dir=str(output_dir), mode=mode,
                id=resume_id, resume="allow" if resume_id else None,
                settings=wandb.Settings(init_timeout=30, silent=True, console="off"),
            )
            self.run_id = self.run.id
        except Exception as err:  # noqa: BLE001 - W&B must never stop training
            logger.warning("W&B could not start (%s); continuing without it", str(err).splitlines()[0][:200])
            self.run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            try:
                self.run.log(metrics, step=step)
            except Exception:  # noqa: BLE001
                self.run = None

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:  # noqa: BLE001
                pass


def _netrc_has_wandb() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    output_dir: Path
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    test_results: dict[str, Any] | None = None
    interrupted: bool = False
    train_seconds: float = 0.0


def build_model(cfg: TrainConfig, device: torch.device) -> MathTransformer:
    """The preset named by ``cfg.model_size`` with the config's shape overrides, on ``device``."""
    overrides: dict[str, Any] = {"n_ctx": cfg.max_length, "n_loops": cfg.loops}
    for name in ("positional", "n_layers", "d_model", "n_heads", "d_mlp"):
        if getattr(cfg, name) is not None:
            overrides[name] = getattr(cfg, name)
    return MathTransformer(ModelConfig.from_preset(cfg.model_size, **overrides)).to(device)


def check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to resume a run whose recorded settings differ from ``cfg`` (naming each difference).

    Mode settings are compared as the mode reads them (an omitted setting is its default; ``8`` is ``"8"``). A
    record in the older flat layout holds the settings of every mode; only its own mode's are read.
    """
    saved = dict(saved)
    name = mode_class("gumbel").name if saved.get("use_gumbel") else saved.get("mode") or cfg.mode
    try:
        own = set(mode_class(name).setting_names())
        others = {s for cls in available_modes().values() for s in cls.setting_names()} - own
        saved_cfg = TrainConfig.from_dict({**TrainConfig(mode=cfg.mode).to_dict(),
                                           **{k: v for k, v in saved.items() if k not in others}})
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot resume in {cfg.output_dir}: its recorded settings do not read as a TrainConfig "
                         f"({err}). Use another --output-dir, or --overwrite.") from None
    ignored_settings = cfg.training_mode().resume_ignored
    saved, now = saved_cfg.to_dict(), cfg.to_dict()
    for d, c in ((saved, saved_cfg), (now, cfg)):
        d["mode_settings"] = {k: v for k, v in c.training_mode().to_dict().items()
                              if k != "mode" and k not in ignored_settings}
    diffs = {k: (saved.get(k), v) for k, v in now.items() if k not in RESUME_IGNORED_FIELDS and saved.get(k) != v}
    if diffs:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise ValueError(f"cannot resume in {cfg.output_dir}: the existing run used different settings ({lines}). "
                         "Use the same settings, another --output-dir, or --overwrite.")


class Trainer:
    """One run: ``fit()`` loops ``training_step`` (and ``validation_step`` every ``eval_steps``).

    ``on_log`` is called with every metrics dict (training logs and evaluations), e.g. to draw live curves in a
    notebook. Under ``torchrun`` each process trains on its share of every global batch (``mathllm.distributed``)
    and only rank 0 writes.
    """

    def __init__(self, cfg: TrainConfig, on_log: Optional[Callable[[dict[str, Any]], None]] = None,
                 console_log: bool = True):
        self.cfg, self.on_log, self.console_log = cfg, on_log, console_log
        self.mode = cfg.training_mode()
        self.output_dir = Path(cfg.output_dir)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.dist = Distributed()

    # ---- one optimizer step ---------------------------------------------------------------------
    def training_step(self) -> StepOutput:
        """Forward, backward and update on the batch of ``self.step``; the mode decides what that means."""
        step = self.step
        if self.mode.stage_changed(step):
            self.optimizer.state.clear()  # e.g. internalize: fresh AdamW moments at every removal stage
        self.optimizer.zero_grad(set_to_none=True)
        teacher = self.teacher_order is not None and is_teacher_step(self.cfg, step, self.total_steps)
        mode, data, order = (self.teacher, self.teacher_data, self.teacher_order) if teacher else \
            (self.mode, self.data, self.order)
        key, index = order[step]
        ctx = StepContext(step, self.autocast, self.scaler.get_scale() if self.scaler is not None else None)
        idle = False
        if self.dist.enabled:  # this process's rows of the global batch; means over every process's tokens
            ctx.global_batch = len(index)
            share, ctx.rows = self.dist.split(index)
            ctx.normalize = self.dist.normalizer()
            if not len(share):  # a global batch smaller than the job: take part with a row that counts for nothing
                idle, share, ctx.rows = True, index[:1], slice(0, 1)
                ctx.normalize = _counting_nothing(ctx.normalize)
                ctx.loss_scale = 0.0
            index = share
        out = self._deep_step(mode, mode.batch(data, key, index, self.device), ctx)
        if idle:
            out = StepOutput(torch.zeros((), device=self.device), 0, out.metrics)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        out.metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.teacher_order is not None:
            out.metrics["teacher_step"] = float(teacher)
        self.step += 1
        return out

    def _deep_step(self, mode: TrainingMode, batch, ctx: StepContext) -> StepOutput:
        """The mode's step with the iterations of this step (``loops_at``); with a progressive loss, also (weight
        alpha) the step after n iterations without gradient and k with (``progressive_split``). Both backward passes
        accumulate into the same gradients, each scaled by its weight, so this works for every mode."""
        cfg, step = self.cfg, ctx.step
        loops = loops_at(cfg, step)
        alpha = cfg.progressive_loss
        if not alpha:
            with self.model.looping(loops):
                out = mode.training_step(self.train_model, batch, ctx)
            if cfg.loop_range[0] != cfg.loop_range[1]:
                out.metrics["loops"] = float(loops)
            return out
        scale = 1.0 if ctx.loss_scale is None else ctx.loss_scale
        n, k = progressive_split(cfg, step, loops)
        loss, tokens, metrics = torch.zeros((), device=self.device), 0, {}
        if alpha < 1:
            with self.model.looping(loops):
                full = mode.training_step(self.train_model, batch, dataclasses.replace(ctx, loss_scale=scale * (1 - alpha)))
            loss, tokens, metrics = loss + (1 - alpha) * full.loss, tokens + full.tokens, dict(full.metrics)
        with self.model.looping(n + k), self.model.frozen_iterations(n):
            part = mode.training_step(self.train_model, batch, dataclasses.replace(ctx, loss_scale=scale * alpha))
        metrics.update(part.metrics)
        metrics.update(loops=float(loops), progressive_frozen=float(n), progressive_backprop=float(k))
        return StepOutput(loss + alpha * part.loss, tokens + part.tokens, metrics)

    @torch.inference_mode()
    def validation_step(self) -> dict[str, Any]:
        """Loss on the whole val split in the mode's format + greedy exact match on a fixed subset, generated the
        way the mode is used."""
        self.model.eval()
        try:
            loss_texts = self.val_texts[: self.cfg.eval_loss_examples]
            val_loss = self.mode.validation_loss(self.model, loss_texts, self.step, self.cfg.eval_batch_size)
            subset = self.val_texts[: self.cfg.eval_examples]
            exact = exact_match_texts(self.model, subset, mode=self.mode, batch_size=self.cfg.eval_batch_size)
        finally:
            self.model.train()
        return {"val_loss": val_loss, "val_exact_match": exact, "val_examples_decoded": len(subset)}

    # ---- the run --------------------------------------------------------------------------------
    def fit(self, overwrite: bool = False) -> TrainResult:
        """Train (or resume, or report the finished run); return the history and test results."""
        self.dist = Distributed.from_env()
        main = self.dist.is_main
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"--output-dir {self.output_dir} is a file, not a directory")
        if overwrite and main:
            remove_run(self.output_dir)
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        self.log = setup_logger(self.output_dir, console=self.console_log and main, file=main)
        if main:
            for what in clean_leftovers(self.output_dir):
                self.log.info("%s (left by an interrupted run)", what)
        self.dist.barrier()
        finished = self._finished_run()
        if finished is not None:
            return finished
        self._prepare()
        self._resume_or_start()
        if main:
            self._write_record()
        return self._loop()

    def _finished_run(self) -> Optional[TrainResult]:
        path = self.output_dir / TRAINER_STATE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if not state.get("finished"):
            return None
        check_resumable(state["config"], self.cfg)
        self.log.info("%s already holds a finished run (%d steps); use --overwrite to train again", self.output_dir,
                      state["step"])
        results_path = self.output_dir / "test_results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else None
        return TrainResult(self.output_dir, state["step"], read_metrics(self.output_dir, self.log), results)

    def _prepare(self) -> None:
        """Data, model, optimizer, schedule, precision."""
        cfg = self.cfg
        self.device = self.dist.device(resolve_device(cfg.device))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        train_texts = load_training_texts(cfg.data_dir, "train")
        self.val_texts = load_training_texts(cfg.data_dir, "val")
        self.planted = None
        if cfg.planted_chains:  # answer-only data with long carry chains: no labels, only other problems
            held_out = list(self.val_texts)
            if (Path(cfg.data_dir) / "test.jsonl").is_file():
                held_out += load_training_texts(cfg.data_dir, "test")
            train_texts, self.planted = plant_chains(train_texts, cfg.planted_chains, cfg.seed,
                                                     exclude={split_text(t).prompt for t in held_out})
        source = str(Path(cfg.data_dir) / "train.jsonl")
        global_batch = cfg.batch_size * self.dist.world_size  # --batch-size is per process
        self.data = self.mode.training_data(train_texts, cfg, source)
        self.order = self._batch_order(self.data, global_batch)
        self.focus = None
        if cfg.stratum_focus:
            self.focus = StratumFocus(self.data, cfg.stratum_focus, global_batch, cfg.seed)
            self.order = FocusedOrder(self.order, self.focus)
        self.steps_per_epoch = self.order.steps_per_epoch
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else self.steps_per_epoch * cfg.num_epochs
        self.teacher, self.teacher_data, self.teacher_order = TrainingMode(), None, None
        if cfg.mixes_teacher:  # teacher-forced batches of the raw lines, for the mixed-in steps
            self.teacher_data = self.teacher.training_data(train_texts, cfg, source)
            self.teacher_order = self._batch_order(self.teacher_data, global_batch)
        self.mode.setup(cfg, self.data, self.total_steps)
        self.teacher.setup(cfg, self.teacher_data, self.total_steps)

        seed_everything(cfg.seed)
        self.model = build_model(cfg, self.device)
        if cfg.init_from:
            source_model = load_model(cfg.init_from, config=self.model.cfg)
            self.model.load_state_dict(source_model.state_dict())
            self.log.info("warm start: weights from %s", cfg.init_from)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda_for(cfg, self.total_steps))
        self.autocast_dtype, self.scaler = None, None
        if cfg.bf16:
            self.autocast_dtype = torch.bfloat16
        elif cfg.fp16:
            if self.device.type == "cuda":
                self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                if self.autocast_dtype == torch.float16:
                    self.scaler = torch.amp.GradScaler("cuda")
            else:
                self.log.warning("--fp16 asks for mixed precision, which needs CUDA; training in fp32 on %s",
                                 self.device)
        if self.dist.enabled:
            self.log.info("data parallel: %d processes (world size %d), %d examples per process, global batch %d",
                          self.dist.world_size, self.dist.world_size, cfg.batch_size, global_batch)

    def _batch_order(self, data, global_batch: int):
        """Epochs of shuffled batches, or, with a curriculum, batches drawn from the short enough examples."""
        cfg = self.cfg
        if cfg.curriculum_start is None:
            return data.batch_order(global_batch, cfg.seed)
        longest = max(int(d.max()) for d in data.digits.values())
        return CurriculumOrder(data, global_batch, cfg.seed, lambda step: curriculum_digits(cfg, step, longest))

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def _resume_or_start(self) -> None:
        self.wandb_id = None
        resume = newest_readable_checkpoint(self.output_dir, self.log)
        if resume is not None:
            check_resumable(resume.trainer_state["config"], self.cfg)
            restore(resume, self.model, self.optimizer, self.scheduler, self.scaler)
            self.step, self.wandb_id = resume.step, resume.trainer_state.get("wandb_id")
            if self.focus is not None:
                self.focus.load_state(resume.trainer_state.get("stratum_focus"))
            self.history = [m for m in read_metrics(self.output_dir, self.log) if m["step"] <= self.step]
            self.log.info("resuming from %s (step %d of %d)", resume.path, self.step, self.total_steps)
        if self.dist.is_main:  # drop lines logged after the checkpoint we resume from
            write_metrics(self.output_dir, self.history)
        # every process after rank 0's writes; wrapped only now, so that DDP starts from the restored weights
        self.dist.barrier()
        self.train_model = self.dist.wrap(self.model)

    def _write_record(self) -> None:
        cfg = self.cfg
        n_params = sum(p.numel() for p in self.model.parameters())
        meta_path = Path(cfg.data_dir) / "meta.json"
        record = {
            "config": cfg.to_dict(), "mode": self.mode.to_dict(), "model_config": self.model.cfg.to_dict(),
            "num_parameters": n_params, "seed": cfg.seed, "device": str(self.device),
            "torch_threads": torch.get_num_threads(), "world_size": self.dist.world_size,
            "global_batch_size": cfg.batch_size * self.dist.world_size,
            "autocast_dtype": str(self.autocast_dtype) if self.autocast_dtype else None,
            "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch, "planted_chains": self.planted,
            "train_examples": self.data.num_examples, "train_tokens_per_epoch": self.data.num_tokens(),
            "data_meta": json.loads(meta_path.read_text()) if meta_path.is_file() else None,
            "code_version": code_version(),
        }
        atomic_write_json(self.output_dir / "training_config.json", record)
        self.log.info("model %s: %s parameters, %s; %d train examples, %d steps (%d per epoch), device %s, mode %s",
                      cfg.model_size, f"{n_params:,}", self.model.cfg.positional, self.data.num_examples,
                      self.total_steps, self.steps_per_epoch, self.device, self.mode.name)
        if cfg.num_workers:
            self.log.info("--num-workers %d: not needed, the data is pre-tokenized in memory", cfg.num_workers)

    def _emit(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        if self.dist.is_main:
            append_metrics(self.output_dir, metrics)
            self.wandb.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])
        if self.on_log is not None:
            self.on_log(metrics)

    def _state(self, finished: bool = False) -> dict[str, Any]:
        state = {"step": self.step, "epoch": self.step // self.steps_per_epoch, "config": self.cfg.to_dict(),
                 "wandb_id": self.wandb.run_id, "finished": finished, "code_version": code_version()}
        if self.focus is not None:
            state["stratum_focus"] = self.focus.state()
        return state

    @torch.inference_mode()
    def focus_step(self) -> dict[str, Any]:
        """``--stratum-focus``: measure every stratum's loss on its probe, summed over each example's completion
        tokens and averaged over the examples (for small losses about the chance of getting the example wrong, so a
        long completion with one hard step weighs as much as a short one); return the new shares."""
        totals: dict[tuple[int, ...], list[float]] = {}
        self.model.eval()
        try:
            for s, key, rows in self.focus.probe_batches():
                ids = self.data.groups[key][rows].to(self.device)
                loss, _ = row_losses(self.model(ids[:, :-1]), ids, self.data.loss_masks[key][rows].to(self.device))
                total = totals.setdefault(s, [0.0, 0.0])
                total[0] += loss.sum().item()
                total[1] += len(rows)
        finally:
            self.model.train()
        self.focus.update({s: t[0] / max(t[1], 1.0) for s, t in totals.items()})
        return {"step": self.step, **{f"focus_share/{stratum_label(s)}": v for s, v in self.focus.shares().items()}}

    def _save(self) -> Optional[Path]:
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.output_dir, self.step, self.model, self.optimizer, self.scheduler,
                                   self.scaler, self._state(), self.cfg.save_total_limit, mode_metadata(self.mode))
        self.dist.barrier()
        return path

    def _stop_requested(self, local: bool) -> bool:
        """Whether any process was asked to stop (all of them stop at the same step)."""
        if not self.dist.enabled:
            return local
        return bool(self.dist.sum(torch.tensor(float(local), device=self.device)).item() > 0)

    def _loop(self) -> TrainResult:
        cfg = self.cfg
        main = self.dist.is_main
        self.wandb = WandbLogger(cfg, self.output_dir, self.log, self.wandb_id, enabled=main)
        stop = {"requested": False}

        def request_stop(signum, frame):  # noqa: ARG001 - Ctrl-C / SIGTERM: finish the step, save, exit
            if stop["requested"]:
                raise KeyboardInterrupt
            stop["requested"] = True

        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not in the main thread
                pass
        self.model.train()
        window = _Window()
        start = time.perf_counter()
        interrupted = in_step = False
        progress = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not (cfg.progress and main),
                        dynamic_ncols=True)
        try:
            while self.step < self.total_steps:
                in_step = True  # a hard interrupt inside a step leaves the optimizer half-updated: don't save it
                out = self.training_step()
                in_step = False
                progress.update(1)
                window.add(out)
                if self.step % cfg.logging_steps == 0 or self.step == self.total_steps:
                    metrics = window.metrics(self.step, self.steps_per_epoch, self.scheduler.get_last_lr()[0],
                                             time.perf_counter() - start, self.dist)
                    self._emit(metrics)
                    progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
                    self.log.info("step %d/%d epoch %.2f loss %.4f lr %.2e %.0f tok/s", self.step, self.total_steps,
                                  metrics["epoch"], metrics["loss"], metrics["lr"], metrics["tokens_per_s"])
                    window = _Window()
                if self.focus is not None and self.step % cfg.stratum_focus_every == 0 and self.step < self.total_steps:
                    focus = self.focus_step()  # every process measures the same weights: the same shares
                    self._emit(focus)
                    top = sorted(((v, k) for k, v in focus.items() if k != "step"), reverse=True)[:3]
                    self.log.info("stratum focus step %d: %s", self.step,
                                   ", ".join(f"{k.split('/', 1)[1]} {v:.0%}" for v, k in top))
                pause = time.perf_counter()
                if self.step % cfg.eval_steps == 0 or self.step == self.total_steps:
                    if main:
                        val = self.validation_step()
                        self._emit({"step": self.step, **val})
                        self.log.info("eval step %d: val_loss %.4f val_exact_match %.4f (%d examples)", self.step,
                                      val["val_loss"], val["val_exact_match"], val["val_examples_decoded"])
                    self.dist.barrier()
                if self.step % cfg.save_steps == 0 and self.step < self.total_steps:
                    self._save()
                window.paused += time.perf_counter() - pause
                if self._stop_requested(stop["requested"]):
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            interrupted = True
            if in_step:
                self.log.warning("hard interrupt inside step %d: not saving a half-updated state; run the same "
                                 "command again to resume from the newest checkpoint", self.step + 1)
            else:
                path = self._save()
                self.log.warning("interrupted at step %d: saved %s; run the same command again to resume", self.step,
                                 path)
        finally:
            progress.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        train_seconds = time.perf_counter() - start
        if interrupted:
            self.wandb.finish()
            return TrainResult(self.output_dir, self.step, self.history, None, interrupted=True,
                               train_seconds=train_seconds)
        return self._finish(train_seconds)

    def _finish(self, train_seconds: float) -> TrainResult:
        """The final model, its test evaluation, and the finished marker (rank 0; the others wait)."""
        cfg = self.cfg
        results = None
        if self.dist.is_main:
            save_model(self.model, self.output_dir, metadata=mode_metadata(self.mode))
            if cfg.evaluate_test:
                results = evaluate_split(self.model, Path(cfg.data_dir) / "test.jsonl", mode=self.mode,
                                         batch_size=cfg.eval_batch_size)
                results["train_seconds_this_session"] = train_seconds
                results["world_size"] = self.dist.world_size
                atomic_write_json(self.output_dir / "test_results.json", results)
                self.log.info("test exact match %.4f on %d examples", results["exact_match"], results["num_examples"])
                self.wandb.log({f"test/{k}": v for k, v in results.items() if isinstance(v, (int, float))}, self.step)
            atomic_write_json(self.output_dir / TRAINER_STATE, self._state(finished=True))
            self.log.info("done: %s", self.output_dir / "model.safetensors")
        self.wandb.finish()
        self.dist.barrier()
        return TrainResult(self.output_dir, self.step, self.history, results, train_seconds=train_seconds)


@dataclass
class _Window:
    """Training metrics accumulated between two log lines."""

    loss: float = 0.0
    tokens: int = 0
    steps: int = 0
    extra: dict[str, list[Any]] = field(default_factory=dict)  # floats; grad_norm as tensors (no sync per step)
    started: float = field(default_factory=time.perf_counter)
    paused: float = 0.0  # validation and checkpoint time inside the window (not training)

    def add(self, out: StepOutput) -> None:
        self.loss += out.loss.item()
        self.tokens += out.tokens
        self.steps += 1
        for k, v in out.metrics.items():
            self.extra.setdefault(k, []).append(v)

    def metrics(self, step: int, steps_per_epoch: int, lr: float, elapsed: float,
                dist: Optional[Distributed] = None) -> dict[str, Any]:
        """The window's averages; under data parallelism the loss is the global mean and tokens/s the job's."""
        seconds = max(time.perf_counter() - self.started - self.paused, 1e-9)
        n = max(self.steps, 1)
        loss, tokens = self.loss, self.tokens
        if dist is not None and dist.enabled:
            totals = dist.sum(torch.tensor([loss, float(tokens)], dtype=torch.float64))
            loss, tokens = float(totals[0]) / dist.world_size, int(totals[1])
        out = {"step": step, "epoch": step / steps_per_epoch, "loss": loss / n, "lr": lr,
               "tokens_per_s": tokens / seconds, "step_seconds": seconds / n, "elapsed_s": elapsed}
        out.update({k: float(v[-1]) if k == "grad_norm" else float(sum(v)) / len(v) for k, v in self.extra.items()})
        return out


def _counting_nothing(normalize):
    """A normalizer that adds no tokens of this process to the global count (but still takes part in it)."""
    return lambda count: normalize(count * 0)


def train(cfg: TrainConfig, on_log: Optional[Callable[[dict[str, Any]], None]] = None, overwrite: bool = False,
          console_log: bool = True) -> TrainResult:
    """Train (or resume) a model as described by ``cfg``: ``Trainer(cfg, on_log, console_log).fit(overwrite)``."""
    return Trainer(cfg, on_log, console_log).fit(overwrite)


__all__ = ["RESUME_IGNORED_FIELDS", "TrainConfig", "TrainResult", "Trainer", "build_model", "check_resumable",
           "config_from_file", "curriculum_digits", "is_teacher_step", "load_training_texts", "loops_at",
           "lr_lambda_for", "make_optimizer", "progressive_split",
           "read_config_file", "setup_logger", "teacher_fraction", "train"]
