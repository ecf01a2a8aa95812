"""The one small interface every training mode implements, with teacher forcing as its default behaviour.

A *training mode* says what the model is trained on and how a trained model is used. The trainer
(``mathllm.train``), the evaluator (``mathllm.evaluate``), the playground and the scripts only call this
interface; they never ask which mode they hold. The modes themselves live in ``mathllm.modes`` (one module
each), on top of the trainer and the evaluator; the core finds them by name through the ``mathllm.modes``
entry-point group in ``pyproject.toml`` (the way pytest finds its plugins), so it never imports them::

    >>> mode = get_mode("answer-only")
    >>> mode.training_texts(["12+34=<think>2+4=6 1+3=4</think>46<end>"])
    ['12+34=46<end>']
    >>> mode.to_dict()
    {'mode': 'answer-only'}

What a mode provides (``TrainingMode``; every method has the teacher-forcing default):

* ``training_texts`` / ``training_data``: the lines it trains on, as length-grouped batches;
* ``training_step``: one forward and backward on a batch (gradients accumulate into ``.grad``);
* ``validation_loss``: the loss on the validation split in the mode's own format;
* ``generate``: how a trained model of this mode completes prompts (``drafts=`` for fast verification);
* ``scoring_texts``: the lines teacher-forced token accuracy is measured on.

A mode's own settings are a dataclass (``Settings``); each field becomes a ``scripts/train.py`` flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch

from mathllm.batches import LengthGroupedData, completion_loss, local_count
from mathllm.generate import generate
from mathllm.text import split_text

ENTRY_POINT_GROUP = "mathllm.modes"
DEFAULT_MODE = "teacher"


@dataclass
class NoSettings:
    """A mode without settings of its own."""


@dataclass
class Batch:
    """One training batch: ``ids`` ``[B, L]`` from one group of ``LengthGroupedData`` (key ``key``)."""

    key: Any  # the group key: the token length, or a mode's own layout
    ids: torch.Tensor  # [B, L] token ids, on the training device
    mask: Optional[torch.Tensor]  # [B, L-1] completion loss mask (None for modes without one)


@dataclass
class StepOutput:
    """What one training step reports."""

    loss: torch.Tensor  # detached scalar
    tokens: int  # tokens processed (for tokens/s)
    metrics: dict[str, float] = field(default_factory=dict)  # anything else worth logging


@dataclass
class StepContext:
    """What a training step needs besides the model and the batch.

    Under data parallelism (``torchrun``) each process holds ``rows`` of a global batch of ``global_batch`` rows:
    a mean over tokens divides by ``normalize(local count)`` (the count over every process, divided by the number
    of processes, since DistributedDataParallel averages the gradients), and randomness drawn per row is drawn for
    the global batch and sliced, so that the result equals one process's."""

    step: int  # the optimizer step being taken (0-based)
    autocast: Callable[[], Any]  # a context manager factory: mixed precision, or a no-op
    loss_scale: Optional[float] = None  # a GradScaler's scale (fp16): multiply the loss before backward
    normalize: Callable[[torch.Tensor], torch.Tensor] = local_count  # a token count -> the mean's divisor
    rows: Optional[slice] = None  # this process's rows of the global batch (None: all of them)
    global_batch: Optional[int] = None  # rows in the global batch (None: this batch's)

    def global_rows(self, local: int) -> tuple[int, slice]:
        """(rows of the global batch, this process's slice of them) for a batch of ``local`` rows."""
        if self.rows is None:
            return local, slice(0, local)
        return self.global_batch, self.rows


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed for one step's randomness; ``stream`` separates independent uses (noise, mixing, smoothing)."""
    return (seed * 2_147_483_629 + step * 7_919 + stream * 1_000_000_007) % (2**63 - 1)


class TrainingMode:
    """Teacher forcing on each line as it is (the human trace included), loss on the completion.

    Subclasses override what differs. They are constructed from their ``Settings`` dataclass, or from keyword
    arguments naming its fields (``get_mode("pause", think_tokens="8")``).
    """

    name: ClassVar[str] = DEFAULT_MODE
    Settings: ClassVar[type] = NoSettings
    # Whether the model is trained to write the human trace: only then is "think exact" meaningful.
    writes_human_trace: ClassVar[bool] = True
    # Whether the model writes think tokens of its own (worth analysing: mathllm.free_thinking).
    writes_own_thoughts: ClassVar[bool] = False
    # Whether --mix-teacher (teacher-forced steps mixed in) means something for this mode.
    can_mix_teacher: ClassVar[bool] = True
    # Settings that may change between an interrupted run and its resumption without changing the result.
    resume_ignored: ClassVar[frozenset[str]] = frozenset()
    # Settings values that mean something different from before (refused with a message), {field: {value: why}}
    retired_values: ClassVar[dict[str, dict[str, str]]] = {}
    description: ClassVar[str] = "the completion tokens, think block included"  # what token accuracy is taken on
    note: ClassVar[Optional[str]] = None  # what a reader of the model's output should know about this mode

    def __init__(self, settings: Any = None, **kwargs: Any):
        if settings is not None and kwargs:
            raise TypeError("pass the settings object or keyword arguments, not both")
        self.settings = settings if settings is not None else self.Settings(**kwargs)
        self.cfg: Any = None
        self.total_steps = 0
        self._val_cache: dict[Any, LengthGroupedData] = {}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "mode")
        return f"{type(self).__name__}({fields})"

    # ---- identity -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"mode": name, **settings}``: recorded with every checkpoint."""
        return {"mode": self.name, **dataclasses.asdict(self.settings)}

    @classmethod
    def setting_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Settings)]

    # ---- training -----------------------------------------------------------------------------
    def check(self, cfg: Any) -> None:
        """Raise ValueError when this mode cannot train with ``cfg`` (a ``TrainConfig``)."""

    def training_texts(self, texts: Sequence[str]) -> list[str]:
        """Each line in the format this mode trains on (teacher: as it is)."""
        return list(texts)

    def ignore_target_ids(self) -> tuple[int, ...]:
        """Target tokens that are never scored (the pause mode forces its pauses)."""
        return ()

    def training_data(self, texts: Sequence[str], cfg: Any, source: str = "data") -> LengthGroupedData:
        """The batches this mode trains on."""
        return LengthGroupedData.from_texts(self.training_texts(texts), cfg.max_length, source=source,
                                            operand_balance=cfg.operand_balance,
                                            ignore_target_ids=self.ignore_target_ids(),
                                            stratum_min_share=cfg.stratum_min_share)

    def setup(self, cfg: Any, data: LengthGroupedData, total_steps: int) -> None:
        """Called once before training: the run's config, its data and its length (for schedules)."""
        self.cfg, self.total_steps = cfg, total_steps

    def batch(self, data: LengthGroupedData, key: Any, index: torch.Tensor, device: torch.device) -> Batch:
        """Rows ``index`` of group ``key``, on ``device``."""
        mask = data.loss_masks[key][index].to(device, non_blocking=True) if data.loss_masks else None
        return Batch(key, data.groups[key][index].to(device, non_blocking=True), mask)

    def training_step(self, model, batch: Batch, ctx: StepContext) -> StepOutput:
        """Forward and backward on one batch (gradients accumulate into the parameters' ``.grad``)."""
        with ctx.autocast():
            loss = completion_loss(model(batch.ids[:, :-1]), batch.ids, batch.mask, self.prompt_loss_weight,
                                   ctx.normalize)
        (loss if ctx.loss_scale is None else loss * ctx.loss_scale).backward()
        return StepOutput(loss.detach(), batch.ids.numel())

    @property
    def prompt_loss_weight(self) -> float:
        return getattr(self.cfg, "prompt_loss_weight", 0.0) or 0.0

    def stage_changed(self, step: int) -> bool:
        """Whether the optimizer's moments should be reset before ``step`` (internalize's stages)."""
        return False

    def validation_texts(self, texts: Sequence[str], step: int) -> list[str]:
        """The lines validation loss is taken on at ``step`` (default: the training format)."""
        return self.training_texts(texts)

    @torch.inference_mode()
    def validation_loss(self, model, texts: Sequence[str], step: int, batch_size: int) -> float:
        """Mean completion loss on ``texts`` in this mode's format at ``step`` (teacher forcing)."""
        device = model.W_E.device
        lines = self.validation_texts(texts, step)
        key = (len(lines), hash(tuple(lines)))
        if key not in self._val_cache:
            self._val_cache = {key: LengthGroupedData.from_texts(lines, model.cfg.n_ctx, source="validation",
                                                                 ignore_target_ids=self.ignore_target_ids())}
        data = self._val_cache[key]
        total = count = 0.0
        for length, ids in data.groups.items():
            for i in range(0, len(ids), batch_size):
                batch = ids[i : i + batch_size].to(device)
                mask = data.loss_masks[length][i : i + batch_size].to(device)
                n = mask.sum().item()
                total += completion_loss(model(batch[:, :-1]), batch, mask).item() * n
                count += n
        return total / max(count, 1.0)

    # ---- use ----------------------------------------------------------------------------------
    def generate(self, model, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 128,
                 drafts: Optional[Sequence[str]] = None, return_probs: bool = False, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None):
        """Complete each prompt as a model of this mode is used (teacher: plain generation).

        ``drafts`` (the true completions, greedy only) make it faster without changing the result: each is
        verified in one teacher-forced pass (``mathllm.generate.generate``). A mode whose output cannot be
        guessed ignores them.
        """
        return generate(model, list(prompts), max_new_tokens=max_new_tokens, temperature=temperature,
                        batch_size=batch_size, generator=generator, return_probs=return_probs, drafts=drafts)

    def scoring_texts(self, texts: Sequence[str], completions: Sequence[str]) -> tuple[list[str], bool]:
        """``(lines, answer_only)``: the lines teacher-forced token accuracy is taken on, and whether only the
        answer's tokens count (after ``</think>``, never ``<pause>``). ``completions`` are the model's own."""
        return self.training_texts(texts), False

    def token_accuracy(self, model, texts: Sequence[str], batch_size: int = 64) -> Optional[float]:
        """Token accuracy measured the mode's own way, or None (the default): the evaluator's teacher-forced
        next-token accuracy on ``scoring_texts``. (The answer-slots mode scores each slot on its own token.)"""
        return None


def answer_only_text(text: str) -> str:
    """``12+34=46<end>``: a line with its think block removed."""
    parts = split_text(text)
    return parts.prompt + parts.answer


# ----------------------------------------------------------------------------------------------
# Finding modes by name
# ----------------------------------------------------------------------------------------------

def available_modes() -> dict[str, type[TrainingMode]]:
    """Every registered mode, by name (the ``mathllm.modes`` entry points of the installed packages)."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if not found:
        raise RuntimeError(f"no training modes are registered (entry-point group {ENTRY_POINT_GROUP!r}): "
                           "install mathllm with `pip install -e .` (scripts/setup.sh does)")
    return {name: found[name].load() for name in sorted(found)}


def mode_class(name: str) -> type[TrainingMode]:
    """The mode registered as ``name``; an unknown name is a ValueError listing the known ones."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none (install mathllm with pip install -e .)"
        raise ValueError(f"unknown mode {name!r}; choose one of {known}")
    cls = found[name].load()
    if cls.name != name:
        raise RuntimeError(f"entry point {name!r} loads {cls.__name__}, whose name is {cls.name!r}")
    return cls


def get_mode(name: str = DEFAULT_MODE, **settings: Any) -> TrainingMode:
    """A mode by name with its settings: ``get_mode("gumbel", think_tokens="8", think_alphabet="latent")``."""
    cls = mode_class(name)
    known = set(cls.setting_names())
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"mode {name!r} has no setting {', '.join(unknown)}; its settings: "
                         f"{', '.join(sorted(known)) or 'none'}")
    for key, retired in cls.retired_values.items():
        if str(settings.get(key)) in retired:
            raise ValueError(f"mode {name!r}: {key}={settings[key]!r} {retired[str(settings[key])]}")
    return cls(**settings)


def mode_from_config(config: Optional[dict[str, Any]]) -> TrainingMode:
    """The mode a run's config names (``TrainConfig.to_dict()``: ``{"mode": name, "mode_settings": {...}}``),
    or a mode's own record (``TrainingMode.to_dict()``, flat); teacher when it names none."""
    config = dict(config or {})
    name = config.get("mode") or DEFAULT_MODE
    cls = mode_class(name)
    if "mode_settings" in config:
        settings = dict(config["mode_settings"] or {})
    else:
        settings = {k: config[k] for k in cls.setting_names() if k in config}
    return get_mode(name, **settings)


__all__ = ["Batch", "DEFAULT_MODE", "NoSettings", "StepContext", "StepOutput", "TrainingMode", "answer_only_text",
           "available_modes", "get_mode", "mode_class", "mode_from_config", "step_seed"]
