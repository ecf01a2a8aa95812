"""Trainer: teacher forcing and the no-CoT-label modes, loss on the completion only, zero padding, exact resume.

A training example is one rendered line such as ``12+34=<think>2+4=6 1+3=4</think>46<end>``. The model
reads all of it; the loss is taken only on the tokens after the first ``=`` (the completion, think
block included), so the model is never asked to predict the random operands.

``--mode`` picks what the model is trained on (``mathllm.modes`` has the details): ``teacher`` (the human
trace, the default), ``answer-only`` (no think block), ``pause`` (K ``<pause>`` tokens, loss on the answer),
``gumbel`` (the model writes K think tokens itself by straight-through Gumbel-softmax; loss on the answer
only) and ``internalize`` (the trace loses tokens from the front as training goes on). Options for free
thinking: ``--init-from`` (warm start), ``--mix-teacher`` (share of teacher batches, optionally annealed),
temperature annealing, an entropy term.

No compute is spent on padding: examples are grouped by token length and every batch is drawn from one
length group, so a batch is a dense ``[batch, length]`` tensor with no ``<pad>`` in it.

The output directory holds::

    model.safetensors, config.json     final weights (written atomically) and model config
    checkpoint-N/                      weights, optimizer, scheduler, RNG states, step (resumable)
    training_config.json               full TrainConfig, seed, code version, data meta
    test_results.json                  evaluation of the final model on the test split
    logs/training.log                  timestamped log (coloured on a terminal)
    logs/metrics.jsonl                 one JSON object per logged step / evaluation

Running the same command on the same output directory resumes from the newest checkpoint and reaches
the same weights as an uninterrupted run. Ctrl-C saves a checkpoint and exits.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mathllm.tokenizer import EQUALS_ID, PAUSE_ID, TOKENIZER
from mathllm.utils import atomic_write_bytes, atomic_write_json, code_version, resolve_device, seed_everything

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"


@dataclass
class TrainConfig:
    """Every knob of a training run; saved whole to ``training_config.json``.

    Defaults are the seed's. ``scripts/train.py`` exposes each field as ``--field-name``.
    """

    model_size: str = "small"  # preset in mathllm.model.PRESETS: tiny, small, medium, large
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
    logging_steps: int = 100  # log loss / lr / throughput every this many steps
    fp16: bool = False  # mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler)
    wandb: bool = True  # log to Weights & Biases when importable; offline with a warning when no login
    wandb_project: str = "mathllm"
    seed: int = 42  # seeds data order, initialisation and dropout
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    threads: int | None = None  # torch intra-op threads; None = torch's default
    mode: str = "teacher"  # teacher | answer-only | pause | gumbel | internalize (see mathllm.modes)
    use_gumbel: bool = False  # the seed's flag: an alias for --mode gumbel
    think_tokens: str = "trace"  # pause/gumbel: think budget K, an integer or "trace" (the human trace's length)
    think_alphabet: str = "digits"  # gumbel: what it may think in: digits (0-9 + = space), latent (<z0>..<z15>), both
    gumbel_temperature: float = 1.0  # gumbel: Gumbel-softmax temperature (the start value when annealed)
    gumbel_temperature_end: float | None = None  # gumbel: anneal the temperature to this by the last step
    gumbel_anneal: str = "exponential"  # gumbel: temperature schedule, linear | exponential
    gumbel_backward: str = "parallel"  # gumbel: parallel (fast) | sequential (cached K steps, exact) | uncached
    gumbel_grad_depth: int = 1  # gumbel, parallel: sampling decisions a gradient path crosses (K = exact)
    gumbel_cuda_graph: bool = True  # gumbel, parallel, on CUDA: replay the K sampling steps as a CUDA graph
    entropy_weight: float = 0.0  # gumbel: + weight * mean think entropy (nats); > 0 sharpens, < 0 explores
    internalize_start: float = 0.0  # internalize: fraction of training before trace tokens start to go
    internalize_end: float = 0.75  # internalize: fraction of training by which the whole trace is gone
    internalize_stages: int | None = None  # internalize: remove in this many equal stages (None: token by token)
    internalize_smoothing: float = 0.0  # internalize: lambda of Deng et al.'s removal smoothing (0 = off; they use 4)
    internalize_reset_optimizer: bool = False  # internalize: reset AdamW state whenever more tokens go (Deng et al.)
    init_from: str | None = None  # warm start: load these weights (a run directory or .safetensors) at step 0
    mix_teacher: float = 0.0  # other modes: share of steps trained in teacher mode instead
    mix_teacher_end: float | None = None  # anneal that share linearly to this by the last step (a curriculum)
    operand_balance: float = 0.0  # oversample rare operand counts: repeat ~(largest/count)**this; 1 = equal shares
    prompt_loss_weight: float = 0.0  # also score the prompt tokens, at this weight (0 = completion only); > 0 lets a model finish "7+"
    evaluate_test: bool = True  # evaluate the final model on test.jsonl and write test_results.json
    progress: bool = True  # show tqdm progress bars

    def __post_init__(self) -> None:
        from mathllm.modes import check_mode_config

        self.think_tokens = str(self.think_tokens)
        if self.use_gumbel:  # the seed's --use-gumbel: normalised to --mode gumbel so both spellings resume alike
            if self.mode not in ("teacher", "gumbel"):
                raise ValueError(f"--use-gumbel contradicts --mode {self.mode}")
            self.mode, self.use_gumbel = "gumbel", False
        check_mode_config(self)
        if self.prompt_loss_weight < 0:
            raise ValueError(f"--prompt-loss-weight must be >= 0, got {self.prompt_loss_weight}")
        if self.prompt_loss_weight and self.mode == "gumbel":
            raise ValueError("--prompt-loss-weight is for the teacher-forced modes; the gumbel mode scores the answer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config fields: {sorted(unknown)}")
        return cls(**d)


# Fields that may differ between an interrupted run and its resumption without changing the result.
_RESUME_IGNORED_FIELDS = {"output_dir", "progress", "wandb", "wandb_project", "num_workers", "device",
                          "threads", "evaluate_test", "eval_batch_size", "gumbel_cuda_graph"}


# ----------------------------------------------------------------------------------------------
# Data: tokenize once, group by length
# ----------------------------------------------------------------------------------------------

@dataclass
class LengthGroupedData:
    """Examples tokenized and grouped by length: ``groups[L]`` is a ``[n, L]`` long tensor.

    ``loss_masks[L][i, t]`` is True when target token ``t + 1`` of example ``i`` is in the completion
    (after the first ``=``), i.e. the positions the loss is taken on.
    """

    groups: dict[int, torch.Tensor]
    loss_masks: dict[int, torch.Tensor]
    num_examples: int
    # repeats[L][i]: how often example i of length L appears in one epoch (None = once each)
    repeats: dict[int, torch.Tensor] | None = None

    @classmethod
    def from_texts(cls, texts: list[str], max_length: int, source: str = "data",
                   operand_balance: float = 0.0, ignore_target_ids: tuple[int, ...] = ()) -> "LengthGroupedData":
        """``operand_balance`` p: an operand count (``12+3=`` has 2, ``1+2+3=`` 3) with k times fewer
        examples than the most common one is repeated ``round(k ** p)`` times per epoch: 0 = as generated,
        1 = equal shares, 0.5 = in between (2-digit, 2-3 operands: 9% two-operand problems becomes 24%).
        ``ignore_target_ids``: targets never scored (``<pause>``: the pause mode forces them).
        """
        by_length: dict[int, list[list[int]]] = {}
        operands_by_length: dict[int, list[int]] = {}
        for line_no, text in enumerate(texts, 1):
            ids = TOKENIZER.encode(text)
            if len(ids) > max_length:
                raise ValueError(
                    f"{source}, example {line_no}: {len(ids)} tokens is longer than --max-length {max_length}: {text!r}"
                )
            if EQUALS_ID not in ids:
                raise ValueError(f"{source}, example {line_no}: no '=' in {text!r}")
            by_length.setdefault(len(ids), []).append(ids)
            prompt = text.split("=", 1)[0]
            operands_by_length.setdefault(len(ids), []).append(1 + sum(prompt.count(op) for op in "+-*"))
        groups, masks = {}, {}
        for length in sorted(by_length):
            ids = torch.tensor(by_length[length], dtype=torch.long)
            groups[length] = ids
            first_eq = (ids == EQUALS_ID).int().argmax(dim=1, keepdim=True)  # [n, 1]
            target_pos = torch.arange(1, length).unsqueeze(0)  # positions of targets ids[:, 1:]
            masks[length] = target_pos > first_eq  # [n, L-1]
            for token in ignore_target_ids:
                masks[length] &= ids[:, 1:] != token
        return cls(groups, masks, len(texts), _operand_repeats(operands_by_length, operand_balance, groups))

    @classmethod
    def from_rows(cls, rows: dict[Any, list[list[int]]], operands: dict[Any, list[int]],
                  operand_balance: float = 0.0) -> "LengthGroupedData":
        """Groups under any sortable keys (the gumbel mode keys them by layout); no loss masks."""
        groups = {key: torch.tensor(rows[key], dtype=torch.long) for key in sorted(rows)}
        n = sum(len(r) for r in rows.values())
        return cls(groups, {}, n, _operand_repeats(operands, operand_balance, groups))

    def num_tokens(self) -> int:
        return sum(g.numel() for g in self.groups.values())

    def batch_order(self, batch_size: int, seed: int) -> "_BatchOrder":
        return _BatchOrder(self, batch_size, seed)

    def epoch_batches(self, batch_size: int, epoch: int, seed: int) -> list[tuple[int, torch.Tensor]]:
        """The deterministic batch order of one epoch: a list of (length, example indices)."""
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        batches = []
        for length, ids in self.groups.items():
            if self.repeats is None:
                order = torch.randperm(len(ids), generator=gen)
            else:
                pool = torch.arange(len(ids)).repeat_interleave(self.repeats[length])
                order = pool[torch.randperm(len(pool), generator=gen)]
            batches.extend((length, order[i : i + batch_size]) for i in range(0, len(order), batch_size))
        shuffle = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i] for i in shuffle]


def _operand_repeats(operands_by_key: dict[Any, list[int]], balance: float,
                     groups: dict[Any, torch.Tensor]) -> dict[Any, torch.Tensor] | None:
    if not balance:
        return None
    counts: dict[int, int] = {}
    for ops in operands_by_key.values():
        for k in ops:
            counts[k] = counts.get(k, 0) + 1
    largest = max(counts.values())
    return {key: torch.tensor([round((largest / counts[k]) ** balance) for k in operands_by_key[key]])
            for key in groups}


class _BatchOrder:
    """Batch ``i`` of the endless sequence of epochs (epoch ``i // steps_per_epoch``), one epoch cached."""

    def __init__(self, data: LengthGroupedData, batch_size: int, seed: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.epoch, self.batches = 0, data.epoch_batches(batch_size, 0, seed)
        self.steps_per_epoch = len(self.batches)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        epoch = index // self.steps_per_epoch
        if epoch != self.epoch:
            self.epoch, self.batches = epoch, self.data.epoch_batches(self.batch_size, epoch, self.seed)
        return self.batches[index % self.steps_per_epoch]


def completion_loss(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor,
                    prompt_weight: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over completion targets. logits ``[b, L-1, V]`` predict ``ids[:, 1:]``.

    ``prompt_weight`` w > 0 adds w times the mean cross-entropy over the prompt's targets (its second token
    up to and including the first ``=``: in ``7+3=<think>...`` the targets ``+``, ``3`` and ``=``), which
    teaches the model to write prompts too, so that it can finish a partial input such as ``7+``.
    """
    targets = ids[:, 1:]
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    mask = loss_mask.flatten().float()
    loss = (losses * mask).sum() / mask.sum().clamp_min(1.0)
    if prompt_weight:
        prompt = prompt_targets(ids).flatten().float()
        loss = loss + prompt_weight * (losses * prompt).sum() / prompt.sum().clamp_min(1.0)
    return loss


def prompt_targets(ids: torch.Tensor) -> torch.Tensor:
    """``[b, L-1]``: True where target ``ids[:, t + 1]`` is in the prompt (no ``=`` among ``ids[:, :t + 1]``)."""
    return (ids[:, :-1] == EQUALS_ID).cumsum(dim=1) == 0


def load_training_texts(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Texts of ``data_dir/split.jsonl``; a missing directory says which command makes it."""
    from mathllm.data import load_split

    path = Path(data_dir) / f"{split}.jsonl"
    if not Path(data_dir).is_dir() or not path.is_file():
        raise FileNotFoundError(
            f"no {split} split at {path}. Generate the data first, e.g.\n"
            f"    python scripts/generate_data.py --num-examples 100000 --max-digits 2 --output-dir {data_dir}"
        )
    return [ex["text"] for ex in load_split(path)]


# ----------------------------------------------------------------------------------------------
# Optimizer and schedule
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


# ----------------------------------------------------------------------------------------------
# Logging and W&B
# ----------------------------------------------------------------------------------------------

class _ColourFormatter(logging.Formatter):
    COLOURS = {logging.WARNING: "\033[33m", logging.ERROR: "\033[31m", logging.INFO: "\033[36m"}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = self.COLOURS.get(record.levelno)
        return f"{colour}{text}\033[0m" if colour else text


def setup_logger(output_dir: Path, console: bool = True) -> logging.Logger:
    """Logger writing timestamped lines to ``logs/training.log`` and (coloured on a tty) to stderr."""
    logger = logging.getLogger(f"mathllm.train.{output_dir.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    (output_dir / "logs").mkdir(parents=True, exist_ok=True)
    fmt = "%(asctime)s %(levelname)s %(message)s"
    file_handler = logging.FileHandler(output_dir / "logs" / "training.log")
    file_handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        formatter_cls = _ColourFormatter if sys.stderr.isatty() else logging.Formatter
        stream.setFormatter(formatter_cls(fmt, "%H:%M:%S"))
        logger.addHandler(stream)
    return logger


class WandbLogger:
    """Logs to W&B when it can; never blocks. With no login, runs offline and warns once."""

    def __init__(self, cfg: TrainConfig, output_dir: Path, logger: logging.Logger, resume_id: str | None):
        self.run = None
        self.run_id = resume_id
        if not cfg.wandb:
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
# Checkpoints
# ----------------------------------------------------------------------------------------------

def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def find_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those whose trainer_state.json exists), oldest first."""
    found = []
    if output_dir.is_dir():
        for p in output_dir.iterdir():
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE).is_file():
                try:
                    found.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
                except ValueError:
                    continue
    return sorted(found)


def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, scaler, state: dict[str, Any],
                    keep: int, metadata: dict[str, str] | None = None) -> Path:
    """Write ``checkpoint-{step}/`` atomically: built in a temp directory, then renamed into place."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, metadata=metadata)
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    atomic_write_bytes(tmp / "optimizer.pt", _torch_bytes(optimizer.state_dict()))
    atomic_write_bytes(tmp / "scheduler.pt", _torch_bytes(scheduler.state_dict()))
    atomic_write_bytes(tmp / "rng_state.pt", _torch_bytes(rng))
    if scaler is not None:
        atomic_write_bytes(tmp / "scaler.pt", _torch_bytes(scaler.state_dict()))
    atomic_write_json(tmp / TRAINER_STATE, state)  # written last: marks the checkpoint complete
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in find_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


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


def _build_model(cfg: TrainConfig, device: torch.device):
    from mathllm.model import MathTransformer, ModelConfig

    overrides: dict[str, Any] = {"n_ctx": cfg.max_length}
    for name in ("positional", "n_layers", "d_model", "n_heads", "d_mlp"):
        if getattr(cfg, name) is not None:
            overrides[name] = getattr(cfg, name)
    model_cfg = ModelConfig.from_preset(cfg.model_size, **overrides)
    return MathTransformer(model_cfg).to(device)


class ModeRunner:
    """The data and the training step of one run's mode (``cfg.mode``), plus teacher batches to mix in.

    Every choice it makes (which batch, teacher or not, how many trace tokens to drop, the Gumbel noise,
    the temperature) is a pure function of the step and the seed, so a resumed run takes the same steps.
    """

    def __init__(self, cfg: TrainConfig, train_texts: list[str], val_texts: list[str], train_source: str = "data"):
        from mathllm.modes import ModeSettings, gumbel_groups, mode_texts

        self.cfg = cfg
        self.settings = ModeSettings.from_config(cfg.to_dict())
        self.mode = cfg.mode
        mixing = cfg.mode != "teacher" and (cfg.mix_teacher > 0 or (cfg.mix_teacher_end or 0) > 0)
        self.teacher_data = None
        if cfg.mode in ("teacher", "internalize") or mixing:
            self.teacher_data = LengthGroupedData.from_texts(train_texts, cfg.max_length, source=train_source,
                                                             operand_balance=cfg.operand_balance)
        if cfg.mode in ("teacher", "internalize"):
            self.data = self.teacher_data
        elif cfg.mode == "gumbel":
            self.data = gumbel_groups(train_texts, self.settings, cfg.max_length, cfg.operand_balance, train_source)
        else:  # answer-only, pause: a fixed rewrite of every line
            self.data = LengthGroupedData.from_texts(mode_texts(train_texts, self.settings), cfg.max_length,
                                                     source=train_source, operand_balance=cfg.operand_balance,
                                                     ignore_target_ids=(PAUSE_ID,))
        self.order = self.data.batch_order(cfg.batch_size, cfg.seed)
        self.teacher_order = self.teacher_data.batch_order(cfg.batch_size, cfg.seed) if mixing else None
        self.steps_per_epoch = self.order.steps_per_epoch
        self.max_trace = 0
        if cfg.mode == "internalize":
            from mathllm.modes import trace_layout

            self.max_trace = max(int(trace_layout(g)[1].max()) for g in self.data.groups.values())
        self.val_texts = val_texts
        self.val_data = None
        if cfg.mode in ("teacher", "answer-only", "pause"):
            self.val_data = LengthGroupedData.from_texts(mode_texts(val_texts, self.settings), cfg.max_length,
                                                         ignore_target_ids=(PAUSE_ID,))
        elif cfg.mode == "gumbel":
            self.val_data = gumbel_groups(val_texts, self.settings, cfg.max_length)
        self.total_steps = 0  # set by train()

    # ---- per-step choices ----
    def removed(self, step: int) -> int:
        from mathllm.modes import internalize_removed

        return internalize_removed(self.cfg, step, self.total_steps, self.max_trace)

    def temperature(self, step: int) -> float:
        from mathllm.modes import gumbel_temperature

        return gumbel_temperature(self.cfg, step, self.total_steps)

    def stage_changed(self, step: int) -> bool:
        """Whether ``step`` removes more trace tokens than the step before (internalize)."""
        return self.mode == "internalize" and step > 0 and self.removed(step) != self.removed(step - 1)

    # ---- one step: forward and backward (gradients accumulate into .grad) ----
    def step(self, model, step: int, device: torch.device, autocast: Callable[[], Any],
             scale: float | None) -> tuple[torch.Tensor, int, dict[str, float]]:
        """Returns (loss, tokens processed, extra metrics)."""
        from mathllm.modes import is_teacher_step

        def backward(loss: torch.Tensor) -> None:
            (loss if scale is None else loss * scale).backward()

        if self.teacher_order is not None and is_teacher_step(self.cfg, step, self.total_steps):
            length, index = self.teacher_order[step]
            ids = self.teacher_data.groups[length][index].to(device, non_blocking=True)
            mask = self.teacher_data.loss_masks[length][index].to(device, non_blocking=True)
            with autocast():
                loss = completion_loss(model(ids[:, :-1]), ids, mask, self.cfg.prompt_loss_weight)
            backward(loss)
            return loss.detach(), ids.numel(), {"teacher_step": 1.0}
        extra = {"teacher_step": 0.0} if self.teacher_order is not None else {}
        key, index = self.order[step]
        rows = self.data.groups[key][index].to(device, non_blocking=True)
        if self.mode == "gumbel":
            return self._gumbel_step(model, step, key, rows, device, autocast, scale, extra)
        if self.mode == "internalize":
            from mathllm.modes import remove_trace_tokens, smoothing_offsets

            removed = self.removed(step) + smoothing_offsets(self.cfg, step, len(rows), self.max_trace)
            ids, mask = remove_trace_tokens(rows, removed.to(device))
            extra["removed_tokens"] = float(self.removed(step))
        else:
            ids, mask = rows, self.data.loss_masks[key][index].to(device, non_blocking=True)
        with autocast():
            loss = completion_loss(model(ids[:, :-1]), ids, mask, self.cfg.prompt_loss_weight)
        backward(loss)
        return loss.detach(), ids.numel(), extra

    def _gumbel_step(self, model, step, key, rows, device, autocast, scale, extra):
        from mathllm.modes import gumbel_backward_parallel, gumbel_loss_sequential, gumbel_noise, step_seed

        cfg = self.cfg
        P, K, A = key
        prompt, answer = rows[:, :P], rows[:, P:]
        alphabet = torch.tensor(self.settings.alphabet, device=device)
        noise = gumbel_noise((len(rows), K, len(alphabet)), step_seed(cfg.seed, step, 3), device)
        tau = self.temperature(step)
        if cfg.gumbel_backward == "parallel":
            out = gumbel_backward_parallel(model, prompt, answer, K, alphabet, noise, tau, cfg.entropy_weight,
                                           cfg.gumbel_grad_depth, 1.0 if scale is None else scale, autocast,
                                           cuda_graph=cfg.gumbel_cuda_graph)
        else:
            with autocast():
                out = gumbel_loss_sequential(model, prompt, answer, K, alphabet, noise, tau, cfg.entropy_weight,
                                             use_cache=cfg.gumbel_backward == "sequential")
            (out.loss if scale is None else out.loss * scale).backward()
        extra.update(temperature=tau, think_entropy=float(out.entropy), answer_loss=float(out.answer_loss))
        return out.loss.detach(), len(rows) * (P + K + A + 1), extra

    # ---- validation loss in the mode's own format ----
    @torch.inference_mode()
    def val_loss(self, model, step: int, device: torch.device, batch_size: int) -> float:
        from mathllm.modes import gumbel_forward_parallel, mode_texts

        data = self.val_data
        if self.mode == "internalize":
            data = LengthGroupedData.from_texts(mode_texts(self.val_texts, self.settings, self.removed(step)),
                                                self.cfg.max_length)
        total, count = 0.0, 0.0
        for key, ids in data.groups.items():
            for i in range(0, len(ids), batch_size):
                batch = ids[i : i + batch_size].to(device)
                if self.mode == "gumbel":
                    P, K, A = key
                    alphabet = torch.tensor(self.settings.alphabet, device=device)
                    logits = gumbel_forward_parallel(model, batch[:, :P], batch[:, P:], K, alphabet, None)[0]
                    n = batch[:, P:].numel()
                    total += F.cross_entropy(logits.flatten(0, 1).float(), batch[:, P:].flatten(), reduction="sum").item()
                    count += n
                    continue
                mask = data.loss_masks[key][i : i + batch_size].to(device)
                logits = model(batch[:, :-1])
                n = mask.sum().item()
                total += completion_loss(logits, batch, mask).item() * n
                count += n
        return total / max(count, 1)


def _mode_metadata(cfg: TrainConfig) -> dict[str, str]:
    """Safetensors metadata naming the training mode, so a lone model.safetensors still says how to use it."""
    from mathllm.modes import MODE_FIELDS

    return {"mathllm_mode": json.dumps({k: getattr(cfg, k) for k in MODE_FIELDS})}


def _warm_start(model, path: str, logger: logging.Logger) -> None:
    from mathllm.model import MathTransformer

    source = MathTransformer.from_pretrained(path, config=model.cfg)
    model.load_state_dict(source.state_dict())
    logger.info("warm start: weights from %s", path)


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    defaults = TrainConfig().to_dict()  # fields added since the checkpoint was written take their defaults
    saved = {**defaults, **saved}
    diffs = {k: (saved.get(k), v) for k, v in cfg.to_dict().items()
             if k not in _RESUME_IGNORED_FIELDS and saved.get(k) != v}
    if diffs:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise ValueError(
            f"cannot resume in {cfg.output_dir}: the existing run used different settings ({lines}). "
            "Use the same settings, another --output-dir, or --overwrite."
        )


def train(
    cfg: TrainConfig,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
    console_log: bool = True,
) -> TrainResult:
    """Train (or resume) a model as described by ``cfg``; return the history and test results.

    ``on_log`` is called with every metrics dict (training logs and evaluations), e.g. to draw live
    curves in a notebook.
    """
    output_dir = Path(cfg.output_dir)
    if overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    logger = setup_logger(output_dir, console=console_log)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # --- data -------------------------------------------------------------------------------
    val_texts = load_training_texts(cfg.data_dir, "val")
    runner = ModeRunner(cfg, load_training_texts(cfg.data_dir, "train"), val_texts,
                        train_source=str(Path(cfg.data_dir) / "train.jsonl"))
    train_data = runner.data
    steps_per_epoch = runner.steps_per_epoch
    total_steps = cfg.max_steps if cfg.max_steps is not None else steps_per_epoch * cfg.num_epochs
    if total_steps <= 0:
        raise ValueError(f"nothing to train: {total_steps} steps (check --max-steps / --num-epochs)")
    runner.total_steps = total_steps

    # --- model, optimizer, schedule, precision --------------------------------------------------
    seed_everything(cfg.seed)
    model = _build_model(cfg, device)
    if cfg.init_from:
        _warm_start(model, cfg.init_from, logger)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda_for(cfg, total_steps))
    autocast_dtype, scaler = None, None
    if cfg.fp16:
        if device.type == "cuda":
            autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if autocast_dtype == torch.float16:
                scaler = torch.amp.GradScaler("cuda")
        else:
            logger.warning("--fp16 asks for mixed precision, which needs CUDA; training in fp32 on %s", device)

    # --- resume -------------------------------------------------------------------------------
    step, wandb_id = 0, None
    history: list[dict[str, Any]] = []
    final_state_path = output_dir / TRAINER_STATE
    finished_state = json.loads(final_state_path.read_text()) if final_state_path.is_file() else {}
    if finished_state.get("finished"):
        state = finished_state
        _check_resumable(state["config"], cfg)
        logger.info("%s already holds a finished run (%d steps); use --overwrite to train again",
                    output_dir, state["step"])
        results = json.loads((output_dir / "test_results.json").read_text()) if (output_dir / "test_results.json").is_file() else None
        return TrainResult(output_dir, state["step"], read_metrics(output_dir), results)
    checkpoints = find_checkpoints(output_dir)
    if checkpoints:
        ckpt_step, ckpt = checkpoints[-1]
        state = json.loads((ckpt / TRAINER_STATE).read_text())
        _check_resumable(state["config"], cfg)
        from mathllm.model import MathTransformer

        loaded = MathTransformer.from_pretrained(ckpt)
        model.load_state_dict(loaded.state_dict())
        optimizer.load_state_dict(_load_torch(ckpt / "optimizer.pt"))
        scheduler.load_state_dict(_load_torch(ckpt / "scheduler.pt"))
        rng = _load_torch(ckpt / "rng_state.pt")
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if scaler is not None and (ckpt / "scaler.pt").is_file():
            scaler.load_state_dict(_load_torch(ckpt / "scaler.pt"))
        step, wandb_id = ckpt_step, state.get("wandb_id")
        history = [m for m in read_metrics(output_dir) if m["step"] <= step]
        _write_metrics(output_dir, history)  # drop lines logged after the checkpoint we resume from
        logger.info("resuming from %s (step %d of %d)", ckpt, step, total_steps)
    else:
        _write_metrics(output_dir, [])

    n_params = sum(p.numel() for p in model.parameters())
    data_meta_path = Path(cfg.data_dir) / "meta.json"
    run_record = {
        "config": cfg.to_dict(),
        "model_config": model.cfg.to_dict(),
        "num_parameters": n_params,
        "seed": cfg.seed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "autocast_dtype": str(autocast_dtype) if autocast_dtype else None,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "train_examples": train_data.num_examples,
        "train_tokens_per_epoch": train_data.num_tokens(),
        "data_meta": json.loads(data_meta_path.read_text()) if data_meta_path.is_file() else None,
        "code_version": code_version(),
    }
    atomic_write_json(output_dir / "training_config.json", run_record)
    model.training_meta = run_record  # generation and evaluation read the mode from it
    metadata = _mode_metadata(cfg)
    logger.info("model %s: %s parameters, %s; %d train examples, %d steps (%d per epoch), device %s, mode %s",
                cfg.model_size, f"{n_params:,}", model.cfg.positional, train_data.num_examples,
                total_steps, steps_per_epoch, device, cfg.mode)
    if cfg.num_workers:
        logger.info("--num-workers %d: not needed, the data is pre-tokenized in memory", cfg.num_workers)
    wandb_logger = WandbLogger(cfg, output_dir, logger, wandb_id)

    def emit(metrics: dict[str, Any]) -> None:
        history.append(metrics)
        _append_metrics(output_dir, metrics)
        wandb_logger.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])
        if on_log is not None:
            on_log(metrics)

    def checkpoint_state(finished: bool = False) -> dict[str, Any]:
        return {"step": step, "epoch": step // steps_per_epoch, "config": cfg.to_dict(),
                "wandb_id": wandb_logger.run_id, "finished": finished, "code_version": code_version()}

    # --- Ctrl-C / SIGTERM: finish the current step, save, exit -----------------------------------
    stop_requested = {"flag": False}

    def request_stop(signum, frame):  # noqa: ARG001
        if stop_requested["flag"]:
            raise KeyboardInterrupt
        stop_requested["flag"] = True

    old_handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old_handlers[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not in the main thread
            pass

    # --- loop -----------------------------------------------------------------------------------
    model.train()
    window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
    window_extra: dict[str, list[float]] = {}
    window_paused = 0.0  # validation and checkpoint time inside the window (not training)

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    train_start = time.perf_counter()
    interrupted = False
    in_step = False  # a hard interrupt inside a step leaves optimizer state half-updated: don't save it
    progress = tqdm(total=total_steps, initial=step, desc="train", disable=not cfg.progress, dynamic_ncols=True)
    try:
        while step < total_steps:
            in_step = True
            if cfg.internalize_reset_optimizer and runner.stage_changed(step):
                optimizer.state.clear()  # Deng et al.: fresh AdamW moments at every removal stage
            optimizer.zero_grad(set_to_none=True)
            loss, n_tokens, extra = runner.step(model, step, device, autocast,
                                                scaler.get_scale() if scaler is not None else None)
            if scaler is not None:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
            scheduler.step()
            step += 1
            in_step = False
            progress.update(1)
            window_loss += loss.item()
            window_tokens += n_tokens
            for k, v in extra.items():
                window_extra.setdefault(k, []).append(v)

            if step % cfg.logging_steps == 0 or step == total_steps:
                seconds = max(time.perf_counter() - window_start - window_paused, 1e-9)
                n = (step - 1) % cfg.logging_steps + 1
                metrics = {"step": step, "epoch": step / steps_per_epoch, "loss": window_loss / n,
                           "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                           "tokens_per_s": window_tokens / max(seconds, 1e-9), "step_seconds": seconds / n,
                           "elapsed_s": time.perf_counter() - train_start}
                metrics.update({k: sum(v) / len(v) for k, v in window_extra.items()})
                window_extra = {}
                emit(metrics)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
                logger.info("step %d/%d epoch %.2f loss %.4f lr %.2e %.0f tok/s", step, total_steps,
                            metrics["epoch"], metrics["loss"], metrics["lr"], metrics["tokens_per_s"])
                window_loss, window_tokens, window_start, window_paused = 0.0, 0, time.perf_counter(), 0.0

            pause_start = time.perf_counter()
            if step % cfg.eval_steps == 0 or step == total_steps:
                val = validate(model, runner, val_texts, cfg, device, step)
                model.train()
                emit({"step": step, **val})
                logger.info("eval step %d: val_loss %.4f val_exact_match %.4f (%d examples)", step,
                            val["val_loss"], val["val_exact_match"], val["val_examples_decoded"])

            if step % cfg.save_steps == 0 and step < total_steps:
                save_checkpoint(output_dir, step, model, optimizer, scheduler, scaler, checkpoint_state(),
                                cfg.save_total_limit, metadata)
            window_paused += time.perf_counter() - pause_start
            if stop_requested["flag"]:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
        if in_step:
            logger.warning("hard interrupt inside step %d: not saving a half-updated state; run the same "
                           "command again to resume from the newest checkpoint", step + 1)
        else:
            path = save_checkpoint(output_dir, step, model, optimizer, scheduler, scaler, checkpoint_state(),
                                   cfg.save_total_limit, metadata)
            logger.warning("interrupted at step %d: saved %s; run the same command again to resume", step, path)
    finally:
        progress.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    train_seconds = time.perf_counter() - train_start
    if interrupted:
        wandb_logger.finish()
        return TrainResult(output_dir, step, history, None, interrupted=True, train_seconds=train_seconds)

    # --- final model, test evaluation -----------------------------------------------------------------
    model.save_pretrained(output_dir, metadata=metadata)
    test_results = None
    if cfg.evaluate_test:
        from mathllm.evaluate import evaluate_checkpoint_on_split

        test_results = evaluate_checkpoint_on_split(model, Path(cfg.data_dir) / "test.jsonl",
                                                    batch_size=cfg.eval_batch_size, device=device)
        test_results["train_seconds_this_session"] = train_seconds
        test_results["mode"] = cfg.mode
        atomic_write_json(output_dir / "test_results.json", test_results)
        logger.info("test exact match %.4f on %d examples", test_results["exact_match"], test_results["num_examples"])
        wandb_logger.log({f"test/{k}": v for k, v in test_results.items() if isinstance(v, (int, float))}, step)
    atomic_write_json(output_dir / TRAINER_STATE, checkpoint_state(finished=True))
    wandb_logger.finish()
    logger.info("done: %s", output_dir / "model.safetensors")
    return TrainResult(output_dir, step, history, test_results, train_seconds=train_seconds)


@torch.inference_mode()
def validate(model, runner: ModeRunner, val_texts: list[str], cfg: TrainConfig,
             device: torch.device, step: int = 0) -> dict[str, Any]:
    """Teacher-forced loss on the whole val split in the mode's format (internalize: at this step's stage;
    gumbel: the answer loss after the model's greedy think tokens) + greedy exact match on a fixed subset,
    generated the way the mode is used (``mathllm.modes.generate_for_mode``)."""
    from mathllm.evaluate import exact_match_texts

    model.eval()
    val_loss = runner.val_loss(model, step, device, cfg.eval_batch_size)
    subset = val_texts[: cfg.eval_examples]
    exact = exact_match_texts(model, subset, batch_size=cfg.eval_batch_size)
    return {"val_loss": val_loss, "val_exact_match": exact, "val_examples_decoded": len(subset)}


def _metrics_path(output_dir: Path) -> Path:
    return output_dir / "logs" / "metrics.jsonl"


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every logged step and evaluation of a run, in order (``logs/metrics.jsonl``)."""
    path = _metrics_path(Path(output_dir))
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(output_dir: Path, metrics: list[dict[str, Any]]) -> None:
    atomic_write_bytes(_metrics_path(output_dir), "".join(json.dumps(m) + "\n" for m in metrics).encode())


def _append_metrics(output_dir: Path, metrics: dict[str, Any]) -> None:
    with open(_metrics_path(output_dir), "a") as f:
        f.write(json.dumps(metrics) + "\n")
