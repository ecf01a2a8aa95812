"""The trainer's depth options (mathllm.train): a looped model (--loops), iterations drawn per batch
(--loops-min/--loops-max), the progressive loss, a curriculum over operand length, planted carry chains and bf16;
each a pure function of the seed and the step, so that an interrupted run resumes to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mathllm.batches import CurriculumOrder, LengthGroupedData, stratum
from mathllm.chains import carry_chain
from mathllm.checkpoints import load, load_model
from mathllm.text import parse_prompt, split_text
from mathllm.train import (TrainConfig, Trainer, curriculum_digits, loops_at, progressive_split, train)

pytestmark = pytest.mark.usefixtures("one_thread")


def config(data_dir: Path, output_dir: Path, **overrides) -> TrainConfig:
    base = dict(model_size="tiny", data_dir=str(data_dir), output_dir=str(output_dir), batch_size=32,
                learning_rate=3e-3, warmup_steps=5, max_steps=20, logging_steps=5, eval_steps=10, save_steps=10,
                eval_examples=16, eval_loss_examples=64, wandb=False, progress=False, seed=3, evaluate_test=False)
    base.update(overrides)
    return TrainConfig.from_dict(base)


@pytest.mark.parametrize("settings, message", [
    ({"loops": 0}, "--loops must be a positive integer"),
    ({"loops": 2, "loops_min": 3, "loops_max": 5}, r"--loops 2 must lie in --loops-min..--loops-max \(3..5\)"),
    ({"loops": 4, "loops_max": 3}, r"must lie in --loops-min..--loops-max \(4..3\)"),
    ({"progressive_loss": 0.5}, "--progressive-loss needs a looped model"),
    ({"loops": 4, "progressive_loss": 1.5}, r"--progressive-loss must be in \[0, 1\]"),
    ({"loops": 4, "progressive_max_backprop": 2}, "means something only with --progressive-loss"),
    ({"curriculum_start": 0}, "--curriculum-start must be a positive integer"),
    ({"curriculum_start": 2, "operand_balance": 0.5}, "does not combine with --operand-balance"),
    ({"planted_chains": -0.1}, r"--planted-chains must be in \[0, 1\]"),
])
def test_bad_depth_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(wandb=False, **settings)


def test_the_draws_are_pure_functions_of_the_seed_and_the_step():
    cfg = TrainConfig(loops=4, loops_min=2, loops_max=6, progressive_loss=1.0, progressive_max_backprop=2,
                      wandb=False, seed=5)
    draws = [loops_at(cfg, s) for s in range(400)]
    assert draws == [loops_at(cfg, s) for s in range(400)]
    assert set(draws) == {2, 3, 4, 5, 6}
    assert [loops_at(TrainConfig(loops=3, wandb=False), s) for s in range(5)] == [3] * 5
    splits = [progressive_split(cfg, s, 6) for s in range(400)]
    assert all(0 <= n <= 5 and 1 <= k <= 2 and n + k <= 6 for n, k in splits)
    assert {n for n, _ in splits} == set(range(6)) and {k for _, k in splits} == {1, 2}
    other = TrainConfig(loops=4, loops_min=2, loops_max=6, wandb=False, seed=6)
    assert draws != [loops_at(other, s) for s in range(400)]


def test_the_curriculum_draws_only_short_enough_problems_and_the_same_batch_for_the_same_step():
    texts = [f"{a}+{b}={a + b}<end>" for a, b in [(1, 2), (3, 4), (12, 3), (45, 67), (123, 4), (999, 999), (5, 0)]]
    data = LengthGroupedData.from_texts(texts, 32)
    assert sorted(int(d) for g in data.digits.values() for d in g) == [1, 1, 1, 2, 2, 3, 3]
    order = CurriculumOrder(data, 8, seed=0, max_digits_at=lambda step: 1 + step // 10)
    for step in range(40):
        key, rows = order[step]
        limit = 1 + step // 10
        assert (data.digits[key][rows] <= limit).all()
        again_key, again_rows = CurriculumOrder(data, 8, 0, lambda s: 1 + s // 10)[step]
        assert again_key == key and torch.equal(again_rows, rows)
    assert stratum("0012+0345=") == (2, 3) and stratum("0+5=") == (1, 1)
    cfg = TrainConfig(curriculum_start=3, curriculum_interval=100, wandb=False)
    assert [curriculum_digits(cfg, s, 8) for s in (0, 99, 100, 500, 10_000)] == [3, 3, 4, 8, 8]
    with pytest.raises(ValueError, match="has none that short"):
        CurriculumOrder(data, 4, 0, lambda s: 0)[0]


def test_the_model_is_looped_and_records_it(tiny_dataset, tmp_path):
    cfg = config(tiny_dataset, tmp_path / "run", loops=3, max_steps=10, mode="answer-slots")
    train(cfg, console_log=False)
    trained = load(tmp_path / "run")
    assert trained.model.cfg.n_loops == 3 and trained.model.n_loops == 3
    assert load(tmp_path / "run", loops=5).model.n_loops == 5
    record = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert record["model_config"]["n_loops"] == 3 and record["config"]["loops"] == 3


class _StopAt:
    def __init__(self, step):
        self.step = step

    def __call__(self, metrics):
        if metrics["step"] == self.step and "loss" in metrics:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_every_depth_option_at_once_resumes_to_the_same_weights(tiny_dataset, tmp_path):
    settings = dict(mode="answer-slots", pad_operands=2, loops=3, loops_min=2, loops_max=4, progressive_loss=0.5,
                    progressive_max_backprop=2, curriculum_start=1, curriculum_interval=5, planted_chains=0.3,
                    bf16=True)
    train(config(tiny_dataset, tmp_path / "straight", **settings), console_log=False)
    cfg = config(tiny_dataset, tmp_path / "resumed", **settings)
    assert train(cfg, on_log=_StopAt(15), console_log=False).interrupted
    assert train(cfg, console_log=False).step == 20
    a, b = load_model(tmp_path / "straight").state_dict(), load_model(tmp_path / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [m for m in json.loads("[" + ",".join((tmp_path / "resumed" / "logs" / "metrics.jsonl").read_text()
                                                     .split("\n")[:-1]) + "]") if "loss" in m]
    assert all(2 <= m["loops"] <= 4 and m["progressive_backprop"] <= 2 for m in logged)
    for m in logged:
        assert m["progressive_frozen"] + m["progressive_backprop"] <= m["loops"]


def test_the_progressive_step_is_the_weighted_sum_of_its_two_parts(tiny_dataset, tmp_path):
    """With alpha = 0.25: the gradient is 0.75 x (all iterations) + 0.25 x (n frozen, then k), for any mode."""
    cfg = config(tiny_dataset, tmp_path / "run", loops=3, progressive_loss=0.25, mode="answer-only")
    trainer = Trainer(cfg, console_log=False)
    trainer.output_dir.mkdir(parents=True)
    trainer.log = __import__("logging").getLogger("test")
    trainer._prepare()
    trainer.train_model = trainer.model
    key, index = trainer.order[0]
    batch = trainer.mode.batch(trainer.data, key, index, trainer.device)
    from mathllm.training_mode import StepContext

    ctx = StepContext(0, trainer.autocast)
    out = trainer._deep_step(trainer.mode, batch, ctx)
    got = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    n, k = progressive_split(cfg, 0, 3)
    assert out.metrics["progressive_frozen"] == n and out.metrics["progressive_backprop"] == k
    trainer.model.zero_grad()
    full = trainer.mode.training_step(trainer.model, batch, StepContext(0, trainer.autocast, loss_scale=0.75))
    with trainer.model.looping(n + k), trainer.model.frozen_iterations(n):
        part = trainer.mode.training_step(trainer.model, batch, StepContext(0, trainer.autocast, loss_scale=0.25))
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)
    assert out.loss.item() == pytest.approx(0.75 * full.loss.item() + 0.25 * part.loss.item(), rel=1e-5)


def test_planted_chains_replace_training_problems_only_and_are_recorded(tiny_dataset, tmp_path):
    cfg = config(tiny_dataset, tmp_path / "run", planted_chains=0.5, max_steps=2, mode="answer-only")
    trainer = Trainer(cfg, console_log=False)
    result = trainer.fit()
    record = json.loads((tmp_path / "run" / "training_config.json").read_text())
    planted = record["planted_chains"]
    assert planted["replaced"] == round(0.5 * planted["candidates"]) and planted["format"] == "cot"
    assert result.step == 2
    held_out = {split_text(t).prompt for t in trainer.val_texts}
    rows = [trainer.data.groups[key][i] for key in trainer.data.groups for i in range(len(trainer.data.groups[key]))]
    from mathllm.tokenizer import TOKENIZER

    prompts = {split_text(TOKENIZER.decode(r)).prompt for r in rows}
    assert not prompts & held_out
    chained = sum(carry_chain(parse_prompt(p)[1]) >= 1 for p in prompts if parse_prompt(p)[0] == "+")
    assert chained >= planted["replaced"] * 0.9
