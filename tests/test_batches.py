"""Length-grouped batches and loss masks (mathllm.batches): no padding, every example once per epoch, a
deterministic epoch order, operand balance, and a loss on the completion only (plus the optional prompt loss)."""

from __future__ import annotations

import pytest
import torch

from mathllm.batches import (LengthGroupedData, completion_loss, completion_mask, num_operands, prompt_targets)
from mathllm.tokenizer import PAD_ID, PAUSE_ID, TOKENIZER


# --- grouping and batches ------------------------------------------------------------------------

def test_loss_mask_covers_exactly_the_completion():
    text = "12+34=<think>2+4=6 1+3=4</think>46<end>"
    data = LengthGroupedData.from_texts([text], max_length=128)
    (length, ids), = data.groups.items()
    mask = data.loss_masks[length][0]
    targets = TOKENIZER.str_tokens(ids[0, 1:])
    masked_targets = [t for t, m in zip(targets, mask.tolist()) if m]
    assert "".join(masked_targets) == "<think>2+4=6 1+3=4</think>46<end>"


def test_ignored_targets_are_never_scored():
    """The pause mode's pauses are given, never targets."""
    text = "12+34=<pause><pause>46<end>"
    data = LengthGroupedData.from_texts([text], max_length=64, ignore_target_ids=(PAUSE_ID,))
    (length, ids), = data.groups.items()
    targets = TOKENIZER.str_tokens(ids[0, 1:])
    assert [t for t, m in zip(targets, data.loss_masks[length][0].tolist()) if m] == ["4", "6", "<end>"]
    plain = LengthGroupedData.from_texts([text], max_length=64)
    assert plain.loss_masks[length][0].sum() == 5  # without it, the pauses are targets too
    assert torch.equal(completion_mask(ids, (PAUSE_ID,)), data.loss_masks[length])


def test_batches_hold_no_padding_and_cover_every_example_once():
    texts = ["1+2=3<end>", "10+20=30<end>", "3+4=7<end>", "12+34=<think>2+4=6 1+3=4</think>46<end>", "5+5=10<end>"]
    data = LengthGroupedData.from_texts(texts, max_length=64)
    assert data.num_examples == 5 and data.num_tokens() == sum(len(TOKENIZER.encode(t)) for t in texts)
    seen = []
    for length, index in data.epoch_batches(batch_size=2, epoch=0, seed=0):
        batch = data.groups[length][index]
        assert (batch != PAD_ID).all() and batch.shape[1] == length and len(batch) <= 2
        seen.extend(TOKENIZER.decode(row) for row in batch)
    assert sorted(seen) == sorted(texts)


def test_operand_balance_repeats_rare_operand_counts():
    two = [f"{a}+{b}=<think>{a}+{b}={a + b}</think>{a + b}<end>" for a, b in [(1, 2), (3, 4)]]
    three = [f"{a}+{b}+{c}={a + b + c}<end>" for a, b, c in
             [(1, 1, 1), (1, 2, 3), (2, 2, 2), (3, 1, 2), (1, 1, 4), (2, 1, 1), (1, 3, 1), (2, 3, 1)]]

    def operand_counts(balance: float) -> dict[int, int]:
        data = LengthGroupedData.from_texts(two + three, max_length=64, operand_balance=balance)
        counts = {2: 0, 3: 0}
        for length, index in data.epoch_batches(batch_size=3, epoch=0, seed=0):
            for row in data.groups[length][index]:
                counts[TOKENIZER.decode(row).split("=")[0].count("+") + 1] += 1
        return counts

    assert operand_counts(0.0) == {2: 2, 3: 8}  # as generated: every example once
    assert operand_counts(1.0) == {2: 8, 3: 8}  # 4x fewer two-operand problems, each repeated 4 times
    assert operand_counts(0.5) == {2: 4, 3: 8}  # sqrt(4) = 2 repeats
    assert num_operands("12+3=") == 2 and num_operands("1+2+3=") == 3


def test_epoch_order_is_deterministic_per_seed_and_changes_between_epochs():
    texts = [f"{a}+{b}={a + b}<end>" for a in range(10) for b in range(10)]
    data = LengthGroupedData.from_texts(texts, max_length=64)

    def order(epoch, seed):
        return [tuple(i.tolist()) for _, i in data.epoch_batches(8, epoch, seed)]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(1, 1)
    assert order(0, 1) != order(0, 2)


def test_batch_order_runs_through_the_epochs_as_epoch_batches_gives_them():
    """Batch i of a run is a pure function of i and the seed: a resumed run sees the batches an uninterrupted
    one would (the order object may be created at any step)."""
    texts = [f"{a}+{b}={a + b}<end>" for a in range(10) for b in range(10)]
    data = LengthGroupedData.from_texts(texts, max_length=64)
    order = data.batch_order(batch_size=16, seed=5)
    n = order.steps_per_epoch
    assert n == len(data.epoch_batches(16, 0, 5))
    expected = [b for epoch in range(3) for b in data.epoch_batches(16, epoch, 5)]
    got = [order[i] for i in range(3 * n)]
    assert [(k, i.tolist()) for k, i in got] == [(k, i.tolist()) for k, i in expected]
    late = data.batch_order(batch_size=16, seed=5)
    assert late[2 * n + 1][1].tolist() == expected[2 * n + 1][1].tolist()


def test_groups_under_any_keys():
    """The gumbel mode keys its groups by layout (prompt length, think budget, answer length); no loss masks."""
    labels = {(2, 3, 1): [(2, (1, 1)), (2, (1, 1))], (1, 1, 1): [(3, (1, 1, 1))]}  # (operand count, stratum)
    data = LengthGroupedData.from_rows({(2, 3, 1): [[1, 2], [3, 4]], (1, 1, 1): [[5]]}, labels, operand_balance=1.0)
    assert list(data.groups) == [(1, 1, 1), (2, 3, 1)] and data.loss_masks == {} and data.num_examples == 3
    assert data.repeats[(2, 3, 1)].tolist() == [1, 1] and data.repeats[(1, 1, 1)].tolist() == [2]
    seen = [tuple(row.tolist()) for key, index in data.epoch_batches(4, 0, 0) for row in data.groups[key][index]]
    assert sorted(seen) == [(1, 2), (3, 4), (5,), (5,)]
    with pytest.raises(ValueError, match="no examples"):
        LengthGroupedData.from_rows({}, {})
    assert LengthGroupedData.from_rows({(2, 3, 1): [[1, 2]]}, {(2, 3, 1): [(2, (1, 1))]}).repeats is None


def test_bad_data_is_named():
    with pytest.raises(ValueError, match=r"train.jsonl, example 2: .* longer than --max-length 8"):
        LengthGroupedData.from_texts(["1+2=3<end>", "111+222=333<end>"], max_length=8, source="train.jsonl")
    with pytest.raises(ValueError, match=r"val.jsonl, example 1: no '='"):
        LengthGroupedData.from_texts(["12+34"], max_length=8, source="val.jsonl")
    with pytest.raises(ValueError, match="data: no examples"):
        LengthGroupedData.from_texts([], max_length=8)
    data = LengthGroupedData.from_texts(["1+2=3<end>"], max_length=8)
    with pytest.raises(ValueError, match="batch size must be positive"):
        data.epoch_batches(0, 0, 0)


# --- the loss -------------------------------------------------------------------------------------

def test_completion_loss_ignores_the_prompt():
    text = "12+34=46<end>"
    data = LengthGroupedData.from_texts([text], 64)
    (length, ids), = data.groups.items()
    mask = data.loss_masks[length]
    logits = torch.randn(1, length - 1, TOKENIZER.vocab_size)
    base = completion_loss(logits, ids, mask)
    changed = logits.clone()
    changed[:, :4] += torch.randn_like(changed[:, :4]) * 10  # predictions of prompt tokens
    assert torch.allclose(completion_loss(changed, ids, mask), base)
    changed[:, 5, 0] += 10  # the prediction of the first answer digit
    assert not torch.allclose(completion_loss(changed, ids, mask), base)


def test_prompt_weight_adds_the_weighted_mean_loss_of_the_prompt_targets():
    text = "12+34=46<end>"
    data = LengthGroupedData.from_texts([text], 64)
    (length, ids), = data.groups.items()
    mask = data.loss_masks[length]
    # targets: 2 + 3 4 = | 4 6 <end>: the first five (up to and including "=") are the prompt's
    assert prompt_targets(ids).tolist() == [[True] * 5 + [False] * 3]
    assert not (prompt_targets(ids) & mask).any()
    logits = torch.randn(1, length - 1, TOKENIZER.vocab_size)
    per_token = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="none")
    expected = per_token[5:].mean() + 0.25 * per_token[:5].mean()
    torch.testing.assert_close(completion_loss(logits, ids, mask, prompt_weight=0.25), expected)
    torch.testing.assert_close(completion_loss(logits, ids, mask, prompt_weight=0.0), per_token[5:].mean())


def epoch_shares(data: LengthGroupedData) -> dict[tuple[int, ...], float]:
    """Share of an epoch's rows per stratum, from the repeats."""
    from mathllm.batches import stratum

    counts: dict[tuple[int, ...], int] = {}
    for length, ids in data.groups.items():
        repeats = data.repeats[length] if data.repeats is not None else torch.ones(len(ids), dtype=torch.long)
        for row, r in zip(ids, repeats.tolist()):
            key = stratum(TOKENIZER.decode(row))
            counts[key] = counts.get(key, 0) + r
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def test_stratum_min_share_lifts_rare_strata_and_keeps_the_rest():
    from mathllm.data import generate_dataset

    texts = generate_dataset(num_examples=6000, max_digits=2, max_operands=3, seed=1)["train"].texts
    plain = epoch_shares(LengthGroupedData.from_texts(texts, 64))
    lifted = epoch_shares(LengthGroupedData.from_texts(texts, 64, stratum_min_share=0.05))
    assert plain[(1, 1)] < 0.02 and lifted[(1, 1)] >= 0.04  # the 80 one-digit pairs are seen enough
    big = max(plain, key=plain.get)
    assert lifted[big] > 0.5 * plain[big]  # the large strata keep most of their share
    both = LengthGroupedData.from_texts(texts, 64, operand_balance=0.5, stratum_min_share=0.05)
    assert min(epoch_shares(both).values()) >= 0.04
    with pytest.raises(ValueError, match="stratum_min_share"):
        LengthGroupedData.from_texts(texts, 64, stratum_min_share=1.5)


# --- stratum focus -------------------------------------------------------------------------------

def test_stratum_focus_draws_the_strata_with_the_highest_loss_at_its_share():
    from mathllm.batches import StratumFocus, stratum
    from mathllm.data import generate_dataset

    texts = generate_dataset(num_examples=3000, max_digits=2, max_operands=3, seed=1)["train"].texts
    data = LengthGroupedData.from_texts(texts, 64)
    focus = StratumFocus(data, share=0.4, batch_size=16, seed=5)
    assert all(focus.draw(step) is None for step in range(50))  # nothing measured yet
    probed = {s for s, _, _ in focus.probe_batches()}
    assert probed == {stratum(TOKENIZER.decode(row)) for ids in data.groups.values() for row in ids}
    assert all(len(rows) <= 32 for _, _, rows in focus.probe_batches())

    losses = {s: 0.0 for s in probed}
    losses[(2, 1)], losses[(1, 1, 1)] = 0.3, 0.1
    focus.update(losses)
    assert focus.shares()[(2, 1)] == pytest.approx(0.75) and focus.shares()[(2, 2, 2)] == 0.0
    drawn = [focus.draw(step) for step in range(2000)]
    again = [focus.draw(step) for step in range(20)]  # a pure function of the step
    assert all((a is None and b is None) or (a[0] == b[0] and torch.equal(a[1], b[1])) for a, b in zip(again, drawn))
    batches = [d for d in drawn if d is not None]
    assert 0.35 < len(batches) / len(drawn) < 0.45  # the share F of the steps
    strata = [{data.strata[key][int(i)] for i in rows} for key, rows in batches]
    assert all(len(s) == 1 for s in strata) and all(len(rows) == 16 for _, rows in batches)  # one stratum, one length
    share_21 = sum(s == {(2, 1)} for s in strata) / len(strata)
    assert 0.68 < share_21 < 0.82
    assert all(s in ({(2, 1)}, {(1, 1, 1)}) for s in strata)  # strata at loss 0 get no focus batch

    restored = StratumFocus(data, share=0.4, batch_size=16, seed=5)
    restored.load_state(focus.state())
    assert restored.shares() == focus.shares()
    with pytest.raises(ValueError, match="strata not in the training data"):
        focus.update({(5, 5): 1.0})
    with pytest.raises(ValueError, match="--stratum-focus must be in"):
        StratumFocus(data, share=1.5, batch_size=16, seed=5)


def test_row_losses_sum_to_the_completion_loss():
    from mathllm.batches import row_losses

    data = LengthGroupedData.from_texts(["12+34=46<end>", "21+43=64<end>"], 16)
    ids, mask = data.groups[9], data.loss_masks[9]
    logits = torch.randn(2, 8, len(TOKENIZER.vocab), generator=torch.Generator().manual_seed(0))
    total, tokens = row_losses(logits, ids, mask)
    assert tokens.tolist() == [3.0, 3.0]
    assert (total.sum() / tokens.sum()).item() == pytest.approx(completion_loss(logits, ids, mask).item(), rel=1e-6)
