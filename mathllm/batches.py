"""Length-grouped batches and loss masks: no compute is spent on padding.

Examples are tokenized once and grouped by token length; every batch is drawn from one group, so it is a
dense ``[batch, length]`` tensor with no ``<pad>`` in it. The loss is taken on the completion only (the tokens
after the first ``=``), so the model is never asked to predict the random operands::

    >>> data = LengthGroupedData.from_texts(["12+34=46<end>", "3+5=8<end>"], max_length=16)
    >>> {length: ids.shape[0] for length, ids in data.groups.items()}
    {6: 1, 9: 1}
    >>> data.loss_masks[6].int().tolist()   # targets "+", "5", "=", "8", "<end>": only "8" and "<end>" are scored
    [[0, 0, 0, 1, 1]]

The batch order of every epoch is a pure function of the seed and the epoch (``epoch_batches``), so a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from mathllm.text import split_text
from mathllm.tokenizer import EQUALS_ID, TOKENIZER


def num_operands(prompt: str) -> int:
    """``num_operands("12+3=") == 2``; what ``operand_balance`` balances."""
    return 1 + sum(prompt.count(op) for op in "+-*")


def stratum(prompt: str) -> tuple[int, ...]:
    """A prompt's stratum, what ``stratum_min_share`` balances: its operands' lengths in order (which gives their
    count too), ``stratum("658+7=") == (3, 1)``; leading zeros do not count (``stratum("0658+0007=") == (3, 1)``,
    the zero-padded prompts of the answer-slots mode)."""
    body = prompt.split("=", 1)[0]
    for op in "-*":
        body = body.replace(op, "+")
    return tuple(len(part.lstrip("0") or part[:1]) for part in body.split("+"))


@dataclass
class LengthGroupedData:
    """Examples tokenized and grouped by length: ``groups[L]`` is a ``[n, L]`` long tensor.

    ``loss_masks[L][i, t]`` is True when target token ``t + 1`` of example ``i`` is in the completion
    (after the first ``=``), i.e. the positions the loss is taken on.
    """

    groups: dict[Any, torch.Tensor]
    loss_masks: dict[Any, torch.Tensor]
    num_examples: int
    # repeats[L][i]: how often example i of length L appears in one epoch (None = once each)
    repeats: dict[Any, torch.Tensor] | None = None
    # digits[L][i]: the length of example i's longest operand, leading zeros not counted (a curriculum filters on it)
    digits: dict[Any, torch.Tensor] | None = None
    # strata[L][i]: example i's stratum, the tuple of its operands' lengths (``stratum``; what --stratum-focus watches)
    strata: dict[Any, list[tuple[int, ...]]] | None = None

    @classmethod
    def from_texts(cls, texts: Sequence[str], max_length: int, source: str = "data",
                   operand_balance: float = 0.0, ignore_target_ids: tuple[int, ...] = (),
                   stratum_min_share: float = 0.0) -> "LengthGroupedData":
        """``operand_balance`` p: an operand count (``12+3=`` has 2, ``1+2+3=`` 3) with k times fewer
        examples than the most common one is repeated ``round(k ** p)`` times per epoch: 0 = as generated,
        1 = equal shares, 0.5 = in between (2-digit, 2-3 operands: 9% two-operand problems becomes 24%).
        ``stratum_min_share`` s: then every stratum (the tuple of operand lengths, ``stratum``) whose examples make
        up less than a share s of the epoch is repeated until they do: there are only 100 one-digit pairs and 1,000
        one-digit triples, so without it the model rarely sees them, while the large strata keep their shares.
        ``ignore_target_ids``: targets never scored (``<pause>``: the pause mode forces them).
        """
        if not texts:
            raise ValueError(f"{source}: no examples")
        by_length: dict[int, list[list[int]]] = {}
        labels_by_length: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
        for line_no, text in enumerate(texts, 1):
            ids = TOKENIZER.encode(text)
            if len(ids) > max_length:
                raise ValueError(
                    f"{source}, example {line_no}: {len(ids)} tokens is longer than --max-length {max_length}: {text!r}"
                )
            if EQUALS_ID not in ids:
                raise ValueError(f"{source}, example {line_no}: no '=' in {text!r}")
            by_length.setdefault(len(ids), []).append(ids)
            prompt = split_text(text).prompt
            labels_by_length.setdefault(len(ids), []).append((num_operands(prompt), stratum(prompt)))
        groups, masks = {}, {}
        for length in sorted(by_length):
            ids = torch.tensor(by_length[length], dtype=torch.long)
            groups[length] = ids
            masks[length] = completion_mask(ids, ignore_target_ids)
        return cls(groups, masks, len(texts),
                   example_repeats(labels_by_length, operand_balance, stratum_min_share, groups),
                   _longest_operands(labels_by_length, groups), _strata(labels_by_length, groups))

    @classmethod
    def from_rows(cls, rows: dict[Any, list[list[int]]], labels: dict[Any, list[tuple[int, tuple[int, ...]]]],
                  operand_balance: float = 0.0, stratum_min_share: float = 0.0) -> "LengthGroupedData":
        """Groups under any sortable keys (the gumbel mode keys them by layout); no loss masks. ``labels`` holds,
        per row, its operand count and its stratum (what the balancing options balance)."""
        if not rows:
            raise ValueError("no examples")
        groups = {key: torch.tensor(rows[key], dtype=torch.long) for key in sorted(rows)}
        n = sum(len(r) for r in rows.values())
        return cls(groups, {}, n, example_repeats(labels, operand_balance, stratum_min_share, groups),
                   _longest_operands(labels, groups), _strata(labels, groups))

    def num_tokens(self) -> int:
        return sum(g.numel() for g in self.groups.values())

    def batch_order(self, batch_size: int, seed: int) -> "BatchOrder":
        return BatchOrder(self, batch_size, seed)

    def epoch_batches(self, batch_size: int, epoch: int, seed: int) -> list[tuple[Any, torch.Tensor]]:
        """The deterministic batch order of one epoch: a list of (group key, example indices)."""
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
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


def example_repeats(labels_by_key: dict[Any, list[tuple[int, tuple[int, ...]]]], operand_balance: float,
                    stratum_min_share: float, groups: dict[Any, torch.Tensor]) -> dict[Any, torch.Tensor] | None:
    """Per group, how often each example appears in an epoch (None: once each); ``labels_by_key`` holds each
    example's (operand count, stratum). See ``LengthGroupedData.from_texts`` for the two options."""
    if not operand_balance and not stratum_min_share:
        return None
    if not 0 <= stratum_min_share < 1:
        raise ValueError(f"stratum_min_share must be in [0, 1), got {stratum_min_share}")
    repeats = {key: [1] * len(labels) for key, labels in labels_by_key.items()}
    if operand_balance:
        counts: dict[int, int] = {}
        for labels in labels_by_key.values():
            for operands, _ in labels:
                counts[operands] = counts.get(operands, 0) + 1
        largest = max(counts.values())
        repeats = {key: [round((largest / counts[ops]) ** operand_balance) for ops, _ in labels]
                   for key, labels in labels_by_key.items()}
    if stratum_min_share:
        weight: dict[tuple[int, ...], int] = {}
        for key, labels in labels_by_key.items():
            for (_, s), r in zip(labels, repeats[key]):
                weight[s] = weight.get(s, 0) + r
        need = stratum_min_share * sum(weight.values())
        boost = {s: max(1, math.ceil(need / w)) for s, w in weight.items()}
        repeats = {key: [r * boost[s] for (_, s), r in zip(labels, repeats[key])]
                   for key, labels in labels_by_key.items()}
    return {key: torch.tensor(repeats[key]) for key in groups}


def _longest_operands(labels_by_key: dict[Any, list[tuple[int, tuple[int, ...]]]],
                      groups: dict[Any, torch.Tensor]) -> dict[Any, torch.Tensor]:
    """Per group, each example's longest operand (from its stratum), for a curriculum over operand length."""
    return {key: torch.tensor([max(s) if s else 0 for _, s in labels_by_key[key]], dtype=torch.long)
            for key in groups}


def _strata(labels_by_key: dict[Any, list[tuple[int, tuple[int, ...]]]],
            groups: dict[Any, torch.Tensor]) -> dict[Any, list[tuple[int, ...]]]:
    return {key: [s for _, s in labels_by_key[key]] for key in groups}


def stratum_label(s: tuple[int, ...]) -> str:
    """``stratum_label((2, 1)) == "2+1"``: a stratum as the focus logs and saves it (for every operation joined by
    ``+``; ``mathllm.evaluate.stratum_name`` names a problem's stratum with its own operator)."""
    return "+".join(map(str, s))


class BatchOrder:
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


class CurriculumOrder:
    """Batches under a curriculum over operand length (Fan et al. 2024): batch ``step`` is drawn from the examples
    whose longest operand has at most ``max_digits_at(step)`` digits (``LengthGroupedData.digits``).

    A group is chosen with probability proportional to its eligible examples, then ``batch_size`` distinct eligible
    examples of it, with a generator seeded by the seed and the step: the batch of a step is a pure function of
    both, so a resumed run sees the same batches. (Examples are drawn afresh every step, not in epochs; the
    balancing options' repeats are not used.)

        >>> data = LengthGroupedData.from_texts(["1+2=3<end>", "12+34=46<end>", "123+4=127<end>"], 16)
        >>> order = CurriculumOrder(data, 2, seed=0, max_digits_at=lambda step: 1 + step)
        >>> key, rows = order[0]; key, rows.tolist()        # step 0: one-digit operands only
        (6, [0])
    """

    def __init__(self, data: LengthGroupedData, batch_size: int, seed: int, max_digits_at):
        if data.digits is None:
            raise ValueError("a curriculum needs each example's operand length (LengthGroupedData.digits)")
        self.data, self.batch_size, self.seed, self.max_digits_at = data, batch_size, seed, max_digits_at
        self.steps_per_epoch = max(1, math.ceil(data.num_examples / batch_size))
        self._eligible: dict[int, tuple[list[Any], torch.Tensor, list[torch.Tensor]]] = {}

    def eligible(self, max_digits: int) -> tuple[list[Any], torch.Tensor, list[torch.Tensor]]:
        """``(group keys, eligible counts, eligible row indices per key)`` for a digit limit."""
        if max_digits not in self._eligible:
            keys, counts, rows = [], [], []
            for key, digits in self.data.digits.items():
                ok = (digits <= max_digits).nonzero().flatten()
                if len(ok):
                    keys.append(key), counts.append(len(ok)), rows.append(ok)
            if not keys:
                raise ValueError(f"the curriculum asks for operands of at most {max_digits} digits, and the data "
                                 "has none that short")
            self._eligible[max_digits] = (keys, torch.tensor(counts, dtype=torch.float64), rows)
        return self._eligible[max_digits]

    def __getitem__(self, step: int) -> tuple[Any, torch.Tensor]:
        keys, counts, rows = self.eligible(self.max_digits_at(step))
        gen = torch.Generator().manual_seed((self.seed * 2_147_483_629 + step * 7_919 + 5_000_000_029)
                                            % (2**63 - 1))
        g = int(torch.multinomial(counts, 1, generator=gen)) if len(keys) > 1 else 0
        pick = torch.randperm(len(rows[g]), generator=gen)[: self.batch_size]
        return keys[g], rows[g][pick]


class StratumFocus:
    """``--stratum-focus F``: a share F of the batches goes to the strata the model currently gets most wrong.

    Every ``--stratum-focus-every`` steps the trainer measures each stratum's loss (summed over an example's
    completion, averaged over examples) on a fixed probe of up to ``probe`` of its training examples (``probe_batches``, then ``update``). After that, each step is, with
    probability F (a pure function of the seed and the step), a *focus batch*: a stratum drawn in proportion to its
    loss, then ``batch_size`` of its examples of one token length. It works on the worst group, as group DRO does
    (Sagawa et al. 2020), by sampling instead of by reweighting the loss; unlike repeating rare strata by a fixed
    factor (``stratum_min_share``), it lets go of a stratum once it is learned.

        >>> data = LengthGroupedData.from_texts(["1+2=3<end>", "12+34=46<end>", "12+3=15<end>"], 16)
        >>> focus = StratumFocus(data, share=1.0, batch_size=2, seed=0)
        >>> focus.draw(0) is None                            # nothing measured yet: the epoch order's batch
        True
        >>> focus.update({(1, 1): 0.0, (2, 2): 0.0, (2, 1): 0.5})
        >>> key, rows = focus.draw(0); [data.strata[key][int(i)] for i in rows]
        [(2, 1), (2, 1)]
    """

    def __init__(self, data: LengthGroupedData, share: float, batch_size: int, seed: int, probe: int = 32):
        if data.strata is None or not data.loss_masks:
            raise ValueError("--stratum-focus needs whole lines with loss masks (the teacher and answer-only modes)")
        if not 0 < share <= 1:
            raise ValueError(f"--stratum-focus must be in (0, 1], got {share}")
        self.data, self.share, self.batch_size, self.seed = data, share, batch_size, seed
        # rows[s]: [(group key, row indices of stratum s in that group)]
        rows: dict[tuple[int, ...], list[tuple[Any, torch.Tensor]]] = {}
        for key, labels in data.strata.items():
            by_stratum: dict[tuple[int, ...], list[int]] = {}
            for i, s in enumerate(labels):
                by_stratum.setdefault(s, []).append(i)
            for s, idx in by_stratum.items():
                rows.setdefault(s, []).append((key, torch.tensor(idx)))
        self.rows = dict(sorted(rows.items()))
        gen = torch.Generator().manual_seed(seed)
        self.probe: dict[tuple[int, ...], list[tuple[Any, torch.Tensor]]] = {}
        for s, parts in self.rows.items():  # a fixed sample of each stratum, spread over its lengths
            flat = [(key, int(i)) for key, idx in parts for i in idx]
            pick = torch.randperm(len(flat), generator=gen)[:probe].tolist()
            chosen: dict[Any, list[int]] = {}
            for j in sorted(pick):
                chosen.setdefault(flat[j][0], []).append(flat[j][1])
            self.probe[s] = [(key, torch.tensor(idx)) for key, idx in chosen.items()]
        self.losses: dict[tuple[int, ...], float] | None = None

    def probe_batches(self) -> list[tuple[tuple[int, ...], Any, torch.Tensor]]:
        """``[(stratum, group key, rows)]``: the examples whose loss ``update`` wants, per stratum."""
        return [(s, key, idx) for s, parts in self.probe.items() for key, idx in parts]

    def update(self, losses: dict[tuple[int, ...], float]) -> None:
        """Each stratum's loss on its probe (``Trainer.focus_step``: summed per example, averaged over examples)."""
        unknown = set(losses) - set(self.rows)
        if unknown:
            raise ValueError(f"strata not in the training data: {sorted(unknown)}")
        self.losses = {s: max(0.0, float(losses.get(s, 0.0))) for s in self.rows}

    def shares(self) -> dict[tuple[int, ...], float]:
        """The focus batches' share per stratum: proportional to its loss (equal when every loss is 0)."""
        if self.losses is None:
            return {}
        total = sum(self.losses.values())
        n = len(self.losses)
        return {s: (v / total if total > 0 else 1 / n) for s, v in self.losses.items()}

    def draw(self, step: int) -> tuple[Any, torch.Tensor] | None:
        """The focus batch of ``step``, or None (the epoch order's batch) before the first measurement and on a
        share 1 - F of the steps."""
        if self.losses is None:
            return None
        gen = torch.Generator().manual_seed((self.seed * 2_147_483_647 + step * 104_729 + 17) % (2**63 - 1))
        if float(torch.rand((), generator=gen)) >= self.share:
            return None
        shares = self.shares()
        strata = list(shares)
        weights = torch.tensor([shares[s] for s in strata], dtype=torch.float64)
        s = strata[int(torch.multinomial(weights, 1, generator=gen))]
        parts = self.rows[s]
        sizes = torch.tensor([len(idx) for _, idx in parts], dtype=torch.float64)
        key, idx = parts[int(torch.multinomial(sizes, 1, generator=gen))]
        if len(idx) >= self.batch_size:
            pick = torch.randperm(len(idx), generator=gen)[: self.batch_size]
        else:  # fewer examples of this stratum and length than a batch: each at least once, then repeats
            pick = torch.cat([torch.randperm(len(idx), generator=gen),
                              torch.randint(len(idx), (self.batch_size - len(idx),), generator=gen)])
        return key, idx[pick]

    def state(self) -> dict[str, float] | None:
        """What a resumed run needs (saved with every checkpoint): the last measured losses by stratum name."""
        return None if self.losses is None else {stratum_label(s): v for s, v in self.losses.items()}

    def load_state(self, state: dict[str, float] | None) -> None:
        if state is None:
            self.losses = None
            return
        by_name = {stratum_label(s): s for s in self.rows}
        self.update({by_name[name]: v for name, v in state.items()})


class FocusedOrder:
    """The epoch order, with ``StratumFocus``'s batches in place of some of its batches."""

    def __init__(self, base: BatchOrder, focus: StratumFocus):
        self.base, self.focus, self.steps_per_epoch = base, focus, base.steps_per_epoch

    def __getitem__(self, step: int) -> tuple[Any, torch.Tensor]:
        drawn = self.focus.draw(step)
        return drawn if drawn is not None else self.base[step]


# ----------------------------------------------------------------------------------------------
# Loss masks and the completion loss
# ----------------------------------------------------------------------------------------------

def completion_mask(ids: torch.Tensor, ignore_target_ids: Sequence[int] = ()) -> torch.Tensor:
    """``[n, L-1]``: True where target ``ids[:, t + 1]`` comes after the first ``=`` (and is not ignored)."""
    first_eq = (ids == EQUALS_ID).int().argmax(dim=1, keepdim=True)  # [n, 1]
    mask = torch.arange(1, ids.shape[1], device=ids.device).unsqueeze(0) > first_eq  # [n, L-1]
    for token in ignore_target_ids:
        mask &= ids[:, 1:] != token
    return mask


def prompt_targets(ids: torch.Tensor) -> torch.Tensor:
    """``[b, L-1]``: True where target ``ids[:, t + 1]`` is in the prompt (no ``=`` among ``ids[:, :t + 1]``)."""
    return (ids[:, :-1] == EQUALS_ID).cumsum(dim=1) == 0


def local_count(count: torch.Tensor) -> torch.Tensor:
    """The divisor of a mean over one process's tokens: the count itself (at least 1)."""
    return count.clamp_min(1.0)


def completion_loss(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor,
                    prompt_weight: float = 0.0, normalize=local_count) -> torch.Tensor:
    """Mean cross-entropy over completion targets. logits ``[b, L-1, V]`` predict ``ids[:, 1:]``.

    ``prompt_weight`` w > 0 adds w times the mean cross-entropy over the prompt's targets (its second token
    up to and including the first ``=``: in ``7+3=<think>...`` the targets ``+``, ``3`` and ``=``), which
    teaches the model to write prompts too, so that it can finish a partial input such as ``7+``.
    ``normalize`` turns a token count into the mean's divisor: under data parallelism the trainer divides by the
    count over every process, so that N processes x B/N examples give one process x B's gradient.
    """
    losses = token_losses(logits, ids)
    mask = loss_mask.flatten().float()
    loss = (losses * mask).sum() / normalize(mask.sum())
    if prompt_weight:
        prompt = prompt_targets(ids).flatten().float()
        loss = loss + prompt_weight * (losses * prompt).sum() / normalize(prompt.sum())
    return loss


def token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every target ``ids[:, 1:]``, flat ``[b * (L-1)]`` (logits ``[b, L-1, V]``, in float32)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")


def row_losses(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed cross-entropy, scored tokens)`` per row ``[b]``, over the completion targets (``loss_mask``)."""
    losses = token_losses(logits, ids)
    mask = loss_mask.float()
    return (losses.view_as(mask) * mask).sum(dim=1), mask.sum(dim=1)


__all__ = ["BatchOrder", "CurriculumOrder", "FocusedOrder", "StratumFocus", "row_losses", "stratum_label", "token_losses", "LengthGroupedData", "completion_loss", "completion_mask", "example_repeats", "local_count",
           "num_operands",
           "prompt_targets", "stratum"]
