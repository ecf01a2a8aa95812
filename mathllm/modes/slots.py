"""Answer slots: every answer digit is read at once from placeholder positions after ``=``; nothing is fed back.

    12+34=<think>2+4=6 1+3=4</think>46<end>

    reads    0012+0034=<pause><pause><pause><pause><pause><pause>      (pad_operands=4)
    scored                0      0      0      4      6     <end>      at the slots themselves

The prompt is followed by one ``<pause>`` per answer digit and one for ``<end>``; the answer is written with
exactly as many digits as the largest answer of the prompt's *shape* can have (``answer_width``: n + 1 for two
n-digit addends, a leading 0 when there is no final carry), most significant first. So the number of slots depends
only on what the prompt shows, never on the answer. Position t of the slot block is scored on answer token t (not
on the next token), and the model's completion is its argmax at every slot, in one forward pass: no answer digit is
ever fed back in, which is what lets a looped model (``--loops``) do all of its work in depth.

``pad_operands`` N writes every operand zero-padded to at least N digits (and to the longest operand), so that a
digit's column is its position: in the prototype this made 4-digit addition learnable in half the steps (the
padding shows only the prompt's shape, no answer information). The completion reads as any other answer:
``parse_answer("00046<end>") == 46``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from mathllm.batches import LengthGroupedData, num_operands, stratum
from mathllm.generate import Generation
from mathllm.text import parse_prompt, split_text
from mathllm.tokenizer import EQUALS_ID, PAUSE_ID, TOKENIZER
from mathllm.training_mode import Batch, StepContext, StepOutput, TrainingMode
from mathllm.utils import eval_mode

SLOT = "<pause>"  # the placeholder token of every slot


@dataclass
class SlotSettings:
    pad_operands: int = 0  # answer-slots: zero-pad every operand to at least this many digits (0: as written)

    def __post_init__(self) -> None:
        if isinstance(self.pad_operands, bool) or not isinstance(self.pad_operands, int) or self.pad_operands < 0:
            raise ValueError(f"--pad-operands must be a non-negative integer, got {self.pad_operands!r}")


def answer_width(op: str, lengths: Sequence[int]) -> int:
    """Digits of the largest answer of a shape: ``answer_width("+", (4, 4)) == 5``.

    >>> answer_width("+", (3, 1)), answer_width("+", (2, 2, 2)), answer_width("*", (3, 3)), answer_width("-", (3, 2))
    (4, 3, 6, 3)
    """
    if op == "+":
        return len(str(sum(10**n - 1 for n in lengths)))
    if op == "*":
        return sum(lengths)
    if op == "-":
        return lengths[0]
    raise ValueError(f"answer slots know +, - and *, not {op!r}")


def _answer(op: str, operands: Sequence[int]) -> int:
    if op == "+":
        return sum(operands)
    out = operands[0]
    for x in operands[1:]:
        out = out * x if op == "*" else out - x
    return out


def slot_prompt(prompt: str, pad_operands: int = 0) -> tuple[str, int, int]:
    """``(rendered prompt, number of slots, answer)`` of a complete prompt; a prompt that does not parse, or whose
    answer is negative, is a ValueError.

    >>> slot_prompt("12+34=", 4)
    ('0012+0034=', 6, 46)
    >>> slot_prompt("658+7=")
    ('658+7=', 5, 665)
    """
    op, operands = parse_prompt(prompt)
    lengths = [len(str(x)) for x in operands]
    width = max([pad_operands, *lengths]) if pad_operands else 0
    shown = [str(x).zfill(width) for x in operands]
    answer = _answer(op, operands)
    if answer < 0:
        raise ValueError(f"answer slots hold non-negative answers; {prompt!r} is {answer}")
    return op.join(shown) + "=", answer_width(op, [len(s) for s in shown]) + 1, answer


def slot_line(prompt: str, pad_operands: int = 0) -> str:
    """The line a slots model is trained on, answer in place of the slots: ``"0012+0034=00046<end>"``.

    >>> slot_line("12+34=", 4), slot_line("99+1=")
    ('0012+0034=00046<end>', '99+1=100<end>')
    """
    rendered, slots, answer = slot_prompt(prompt, pad_operands)
    return f"{rendered}{str(answer).zfill(slots - 1)}<end>"


def slot_inputs(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, slot mask)`` of slot lines ``[B, T]``: every token after the first ``=`` becomes ``<pause>``."""
    first_eq = (ids == EQUALS_ID).int().argmax(1, keepdim=True)
    slots = torch.arange(ids.shape[1], device=ids.device)[None, :] > first_eq
    return torch.where(slots, torch.full_like(ids, PAUSE_ID), ids), slots


def slot_loss(logits: torch.Tensor, ids: torch.Tensor, slots: torch.Tensor, normalize=None) -> torch.Tensor:
    """Mean cross-entropy of each slot's logits against the answer token at that slot."""
    losses = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="none")
    mask = slots.flatten().float()
    count = mask.sum()
    return (losses * mask).sum() / (normalize(count) if normalize is not None else count.clamp_min(1.0))


class AnswerSlots(TrainingMode):
    """The prompt, then one ``<pause>`` slot per answer token; every slot scored on its own answer token."""

    name = "answer-slots"
    Settings = SlotSettings
    writes_human_trace = False
    can_mix_teacher = False  # teacher forcing feeds answer digits back, which is what this mode never does
    description = "the answer slots (each slot's argmax against its answer token, one forward pass)"
    note = "it reads every answer digit at once from <pause> slots after '=': nothing it writes is fed back"

    def check(self, cfg) -> None:
        if getattr(cfg, "prompt_loss_weight", 0):
            raise ValueError("--prompt-loss-weight: the answer-slots mode scores only its slots")

    def line(self, prompt: str) -> str:
        return slot_line(prompt, self.settings.pad_operands)

    def training_texts(self, texts: Sequence[str]) -> list[str]:
        return [self.line(split_text(t).prompt) for t in texts]

    def _rows(self, texts: Sequence[str], max_length: int, source: str, operand_balance: float = 0.0,
              stratum_min_share: float = 0.0) -> LengthGroupedData:
        rows: dict[int, list[list[int]]] = {}
        labels: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
        for line_no, text in enumerate(texts, 1):
            prompt = split_text(text).prompt
            ids = TOKENIZER.encode(self.line(prompt))
            if len(ids) > max_length:
                raise ValueError(f"{source}, example {line_no}: {len(ids)} tokens with its slots is longer than "
                                 f"--max-length {max_length}: {text!r}")
            rows.setdefault(len(ids), []).append(ids)
            labels.setdefault(len(ids), []).append((num_operands(prompt), stratum(prompt)))
        return LengthGroupedData.from_rows(rows, labels, operand_balance, stratum_min_share)

    def training_data(self, texts: Sequence[str], cfg, source: str = "data") -> LengthGroupedData:
        return self._rows(texts, cfg.max_length, source, cfg.operand_balance, cfg.stratum_min_share)

    def training_step(self, model, batch: Batch, ctx: StepContext) -> StepOutput:
        inputs, slots = slot_inputs(batch.ids)
        with ctx.autocast():
            loss = slot_loss(model(inputs), batch.ids, slots, ctx.normalize)
        (loss if ctx.loss_scale is None else loss * ctx.loss_scale).backward()
        return StepOutput(loss.detach(), batch.ids.numel())

    @torch.inference_mode()
    def validation_loss(self, model, texts: Sequence[str], step: int, batch_size: int) -> float:
        key = (len(texts), hash(tuple(texts)))
        if key not in self._val_cache:
            self._val_cache = {key: self._rows(texts, model.cfg.n_ctx, "validation")}
        total = count = 0.0
        device = model.W_E.device
        for ids in self._val_cache[key].groups.values():
            for i in range(0, len(ids), batch_size):
                batch = ids[i : i + batch_size].to(device)
                inputs, slots = slot_inputs(batch)
                n = slots.sum().item()
                total += slot_loss(model(inputs), batch, slots).item() * n
                count += n
        return total / max(count, 1.0)

    @torch.inference_mode()
    def slot_logits(self, model, prompts: Sequence[str], batch_size: int = 128) -> list[Optional[torch.Tensor]]:
        """Per prompt, the logits ``[slots, d_vocab]`` at its slots (None for a prompt that is not a complete
        problem, or that does not fit the context)."""
        out: list[Optional[torch.Tensor]] = [None] * len(prompts)
        by_length: dict[int, list[tuple[int, list[int], int]]] = {}
        for i, prompt in enumerate(prompts):
            try:
                rendered, slots, _ = slot_prompt(prompt, self.settings.pad_operands)
            except ValueError:
                continue
            ids = TOKENIZER.encode(rendered + SLOT * slots)
            if len(ids) <= model.cfg.n_ctx:
                by_length.setdefault(len(ids), []).append((i, ids, slots))
        device = model.W_E.device
        with eval_mode(model):
            for length, items in sorted(by_length.items()):
                for start in range(0, len(items), batch_size):
                    chunk = items[start : start + batch_size]
                    logits = model(torch.tensor([ids for _, ids, _ in chunk], device=device)).float()
                    for row, (i, _, slots) in enumerate(chunk):
                        out[i] = logits[row, length - slots :].cpu()
        return out

    def generate(self, model, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 128,
                 drafts: Optional[Sequence[str]] = None, return_probs: bool = False, temperature: float = 0.0,
                 generator: Optional[torch.Generator] = None):
        """One forward pass per batch: each slot's token (argmax, or sampled at ``temperature``). A prompt that is
        not a complete problem (``7+``) gets an empty completion: a slots model does not write prompts.
        ``max_new_tokens`` and ``drafts`` change nothing (the slots are the answer's length)."""
        prompts = list(prompts)
        results = []
        for prompt, logits in zip(prompts, self.slot_logits(model, prompts, batch_size)):
            if logits is None:
                results.append(Generation(prompt=prompt, text="", token_ids=[], probs=[], finished=False))
                continue
            probs = logits.softmax(-1)
            if temperature > 0:
                sampled = torch.softmax(logits / temperature, -1)
                gen = generator if generator is not None and generator.device.type == "cpu" else None
                tokens = torch.multinomial(sampled, 1, generator=gen).flatten()
            else:
                tokens = logits.argmax(-1)
            ids = tokens.tolist()
            results.append(Generation(prompt=prompt, text=TOKENIZER.decode(ids, skip_pad=False), token_ids=ids,
                                      probs=probs.gather(1, tokens[:, None]).flatten().tolist(),
                                      finished=bool(ids) and ids[-1] == TOKENIZER.end_id))
        return results if return_probs else [r.text for r in results]

    def scoring_texts(self, texts: Sequence[str], completions: Sequence[str]) -> tuple[list[str], bool]:
        return self.training_texts(texts), True

    @torch.inference_mode()
    def token_accuracy(self, model, texts: Sequence[str], batch_size: int = 64) -> Optional[float]:
        """The share of slots whose argmax is the answer token there (over ``texts``' slots)."""
        right = total = 0
        device = model.W_E.device
        with eval_mode(model):
            for ids in self._rows(texts, model.cfg.n_ctx, "scoring").groups.values():
                for i in range(0, len(ids), batch_size):
                    batch = ids[i : i + batch_size].to(device)
                    inputs, slots = slot_inputs(batch)
                    right += ((model(inputs).argmax(-1) == batch) & slots).sum().item()
                    total += slots.sum().item()
        return right / max(total, 1)


__all__ = ["AnswerSlots", "SLOT", "SlotSettings", "answer_width", "slot_inputs", "slot_line", "slot_loss",
           "slot_prompt"]
