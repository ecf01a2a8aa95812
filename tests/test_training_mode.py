"""The training-mode interface (mathllm.training_mode): finding modes by name through their entry points, their
settings and the errors for bad ones, and the base TrainingMode, whose every method is teacher forcing."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from mathllm.batches import LengthGroupedData, completion_loss
from mathllm.generate import generate
from mathllm.model import MathTransformer
from mathllm.train import TrainConfig
from mathllm.training_mode import (DEFAULT_MODE, NoSettings, StepContext, TrainingMode, answer_only_text,
                                   available_modes, get_mode, mode_class, mode_from_config, step_seed)

TEXT = "658+189=<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"
TEXTS = [TEXT, "12+34=<think>2+4=6 1+3=4</think>46<end>", "3+5=8<end>", "1+2+3=<think>1+2+3=6</think>6<end>"]


# --- finding modes ---------------------------------------------------------------------------------

def test_every_mode_is_registered_under_its_own_name():
    modes = available_modes()
    assert set(modes) == {"teacher", "answer-only", "pause", "gumbel", "internalize", "answer-slots"}
    for name, cls in modes.items():
        assert cls.name == name and issubclass(cls, TrainingMode) and mode_class(name) is cls
        assert get_mode(name).name == name and get_mode(name).to_dict()["mode"] == name
    assert DEFAULT_MODE == "teacher" and get_mode().name == "teacher"


def test_unknown_modes_and_settings_are_errors_that_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown mode 'bogus'; choose one of answer-only, answer-slots, gumbel, internalize"):
        get_mode("bogus")
    with pytest.raises(ValueError, match="unknown mode 'gumbal'"):
        mode_class("gumbal")
    with pytest.raises(ValueError, match="mode 'pause' has no setting bogus; its settings: think_tokens"):
        get_mode("pause", bogus=1)
    with pytest.raises(ValueError, match="mode 'teacher' has no setting think_tokens; its settings: none"):
        get_mode("teacher", think_tokens="3")
    with pytest.raises(TypeError, match="not both"):
        TrainingMode(NoSettings(), think_tokens="3")


@pytest.mark.parametrize("name, settings, message", [
    ("gumbel", {"think_tokens": "lots"}, "think-tokens must be a non-negative integer or 'shape'"),
    ("pause", {"think_tokens": "-1"}, "think-tokens"),
    ("gumbel", {"think_alphabet": "greek"}, "unknown --think-alphabet 'greek'"),
    ("gumbel", {"gumbel_backward": "magic"}, "unknown --gumbel-backward 'magic'"),
    ("gumbel", {"gumbel_anneal": "cubic"}, "gumbel-anneal"),
    ("gumbel", {"gumbel_temperature": 0.0}, "temperatures must be positive"),
    ("gumbel", {"gumbel_grad_depth": -1}, "gumbel-grad-depth"),
    ("internalize", {"internalize_start": 0.8, "internalize_end": 0.5}, "internalize-start < --internalize-end"),
    ("internalize", {"internalize_stages": 0}, "internalize-stages"),
    ("internalize", {"internalize_smoothing": -1.0}, "internalize-smoothing"),
])
def test_bad_settings_fail_clearly(name, settings, message):
    with pytest.raises(ValueError, match=message):
        get_mode(name, **settings)


@pytest.mark.parametrize("name", ["pause", "gumbel"])
def test_the_trace_budget_is_retired(name):
    """think_tokens="trace" (the human trace's length) leaks the number of carries: refused, pointing to 'shape'."""
    with pytest.raises(ValueError, match="retired.*'shape'"):
        get_mode(name, think_tokens="trace")
    with pytest.raises(ValueError, match="retired.*'shape'"):
        mode_from_config({"mode": name, "mode_settings": {"think_tokens": "trace"}})
    assert get_mode(name).settings.think_tokens == "shape"  # the default


def test_settings_are_kept_as_text_where_the_flag_is_text():
    assert get_mode("gumbel", think_tokens=8).settings.think_tokens == "8"
    assert get_mode("pause", think_tokens="4").to_dict() == {"mode": "pause", "think_tokens": "4"}


def test_mode_from_config_reads_run_records_and_mode_records():
    nested = {"mode": "pause", "mode_settings": {"think_tokens": "4"}, "batch_size": 3}  # TrainConfig.to_dict()
    flat = {"mode": "pause", "think_tokens": "4", "batch_size": 3}  # a mode's own record, or an older run's
    assert mode_from_config(nested).to_dict() == mode_from_config(flat).to_dict() == {"mode": "pause",
                                                                                      "think_tokens": "4"}
    for nothing in (None, {}, {"mode": None}, {"batch_size": 3}):
        assert mode_from_config(nothing).to_dict() == {"mode": "teacher"}
    gumbel = get_mode("gumbel", think_tokens="3", think_alphabet="latent")
    assert mode_from_config(gumbel.to_dict()).to_dict() == gumbel.to_dict()  # round trip
    cfg = TrainConfig(mode="internalize", mode_settings={"internalize_end": 0.5})
    assert mode_from_config(cfg.to_dict()).settings.internalize_end == 0.5


def test_setting_names_are_the_settings_fields():
    for name, cls in available_modes().items():
        assert cls.setting_names() == [f.name for f in dataclasses.fields(cls.Settings)]
    assert mode_class("teacher").setting_names() == []
    assert mode_class("pause").setting_names() == ["think_tokens"]


def test_step_seeds_are_pure_and_separate_streams_and_steps():
    assert step_seed(3, 10, 1) == step_seed(3, 10, 1)
    seeds = {step_seed(seed, step, stream) for seed in (1, 2) for step in range(50) for stream in (1, 2, 3)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 - 1 for s in seeds)


def test_answer_only_text_drops_the_think_block():
    assert answer_only_text(TEXT) == "658+189=847<end>"
    assert answer_only_text("3+5=8<end>") == "3+5=8<end>"


# --- the base mode: teacher forcing -----------------------------------------------------------------

def test_the_base_mode_trains_on_each_line_as_it_is():
    mode = TrainingMode()
    assert mode.name == "teacher" and mode.to_dict() == {"mode": "teacher"} and repr(mode) == "TrainingMode()"
    assert mode.training_texts(TEXTS) == TEXTS and mode.validation_texts(TEXTS, 5) == TEXTS
    assert mode.ignore_target_ids() == () and not mode.stage_changed(10)
    assert mode.writes_human_trace and not mode.writes_own_thoughts
    assert mode.scoring_texts(TEXTS, ["x"] * 4) == (TEXTS, False)
    cfg = TrainConfig(max_length=64)
    data = mode.training_data(TEXTS, cfg)
    expected = LengthGroupedData.from_texts(TEXTS, 64)
    assert data.groups.keys() == expected.groups.keys()
    for key in data.groups:
        assert torch.equal(data.groups[key], expected.groups[key])
        assert torch.equal(data.loss_masks[key], expected.loss_masks[key])
    mode.check(cfg)  # accepts any config


def _tiny(seed=0):
    torch.manual_seed(seed)
    return MathTransformer.from_preset("tiny")


def test_the_base_training_step_is_the_completion_loss_backward():
    cfg = TrainConfig(max_length=64, prompt_loss_weight=0.1)
    mode = TrainingMode()
    data = mode.training_data(TEXTS, cfg)
    mode.setup(cfg, data, total_steps=10)
    assert mode.prompt_loss_weight == 0.1 and mode.total_steps == 10
    key = next(iter(data.groups))
    batch = mode.batch(data, key, torch.arange(len(data.groups[key])), torch.device("cpu"))
    assert torch.equal(batch.ids, data.groups[key]) and torch.equal(batch.mask, data.loss_masks[key])

    model = _tiny()
    out = mode.training_step(model, batch, StepContext(0, contextlib.nullcontext))
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    expected = completion_loss(model(batch.ids[:, :-1]), batch.ids, batch.mask, 0.1)
    expected.backward()
    assert out.loss.item() == pytest.approx(expected.item()) and not out.loss.requires_grad
    assert out.tokens == batch.ids.numel()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad)
    # a GradScaler's scale multiplies the gradient, not the reported loss
    model.zero_grad(set_to_none=True)
    scaled = mode.training_step(model, batch, StepContext(0, contextlib.nullcontext, loss_scale=4.0))
    assert scaled.loss.item() == pytest.approx(out.loss.item())
    torch.testing.assert_close(model.embed.W_E.grad, 4 * grads["embed.W_E"])


def test_the_base_validation_loss_is_the_mean_completion_loss():
    model = _tiny().eval()
    mode = TrainingMode()
    data = LengthGroupedData.from_texts(TEXTS, 128)
    total = count = 0.0
    with torch.no_grad():
        for key, ids in data.groups.items():
            n = data.loss_masks[key].sum().item()
            total += completion_loss(model(ids[:, :-1]), ids, data.loss_masks[key]).item() * n
            count += n
    assert mode.validation_loss(model, TEXTS, step=0, batch_size=2) == pytest.approx(total / count, rel=1e-5)


def test_the_base_mode_generates_plainly_and_uses_drafts():
    model = _tiny().eval()
    prompts = ["12+34=", "658+189=", "7+"]
    plain = generate(model, prompts, max_new_tokens=12)
    mode = TrainingMode()
    assert mode.generate(model, prompts, max_new_tokens=12) == plain
    assert mode.generate(model, prompts, max_new_tokens=12, drafts=["46<end>", None, "3=10<end>"]) == plain
    probs = mode.generate(model, prompts, max_new_tokens=12, return_probs=True)
    assert [g.text for g in probs] == plain and all(len(g.probs) == len(g.token_ids) for g in probs)
