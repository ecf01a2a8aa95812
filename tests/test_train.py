"""Trainer: the config and its checks, experiment files, schedule, teacher mixing, outputs, exact resume,
interrupts, W&B fallback. (Batches and the loss: tests/test_batches.py; checkpoint files: tests/test_checkpoints.py.)"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mathllm.checkpoints import find_checkpoints, load_model, read_metrics
from mathllm.train import (TrainConfig, Trainer, config_from_file, is_teacher_step, lr_lambda_for,
                           read_config_file, teacher_fraction, train)

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(data_dir: Path, output_dir: Path, **overrides) -> TrainConfig:
    base = dict(model_size="tiny", data_dir=str(data_dir), output_dir=str(output_dir), batch_size=32,
                learning_rate=3e-3, warmup_steps=5, max_steps=20, logging_steps=5, eval_steps=10,
                save_steps=10, eval_examples=32, wandb=False, progress=False, seed=3, evaluate_test=False)
    base.update(overrides)
    return TrainConfig.from_dict(base)  # a mode's settings may be given flat: think_tokens="4"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).state_dict()


# --- the config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 0}, "--batch-size must be a positive integer"),
    ({"batch_size": 2.5}, "--batch-size must be a positive integer"),
    ({"eval_batch_size": 0}, "--eval-batch-size must be a positive integer"),
    ({"logging_steps": 0}, "--logging-steps must be a positive integer"),
    ({"eval_steps": 0}, "--eval-steps must be a positive integer"),
    ({"save_steps": 0}, "--save-steps must be a positive integer"),
    ({"num_epochs": 0}, "--num-epochs must be a positive integer"),
    ({"max_steps": 0}, "--max-steps must be >= 1"),
    ({"eval_examples": -1}, "--eval-examples must be >= 0"),
    ({"save_total_limit": -1}, "--save-total-limit must be >= 0"),
    ({"warmup_steps": -1}, "--warmup-steps must be >= 0"),
    ({"max_length": 1}, "--max-length must be in 2.."),
    ({"learning_rate": 0.0}, "--learning-rate must be positive"),
    ({"learning_rate": float("nan")}, "--learning-rate must be positive"),
    ({"min_lr_ratio": 1.5}, r"--min-lr-ratio must be in \[0, 1\]"),
    ({"max_grad_norm": 0.0}, "--max-grad-norm must be positive"),
    ({"weight_decay": -0.1}, "--weight-decay must be >= 0"),
    ({"threads": 0}, "--threads must be >= 1"),
    ({"operand_balance": -1.0}, "--operand-balance must be >= 0"),
    ({"prompt_loss_weight": -1.0}, "--prompt-loss-weight must be >= 0"),
    ({"stratum_focus": 1.5}, r"--stratum-focus must be in \[0, 1\]"),
    ({"stratum_focus": 0.5, "stratum_focus_every": 0}, "--stratum-focus-every must be a positive integer"),
    ({"stratum_focus": 0.5, "curriculum_start": 1}, "does not combine"),
    ({"mix_teacher": 1.5, "mode": "gumbel"}, r"--mix-teacher must be in \[0, 1\]"),
    ({"mix_teacher_end": -0.1, "mode": "gumbel"}, r"--mix-teacher-end must be in \[0, 1\]"),
    ({"mix_teacher": 0.5}, "it means nothing with --mode teacher"),
    ({"mode": "gumbel", "prompt_loss_weight": 0.1}, "the gumbel mode scores the answer"),
    ({"mode": "bogus"}, "unknown mode 'bogus'"),
    ({"mode": "pause", "mode_settings": {"think_tokens": "lots"}}, "think-tokens"),
    ({"mode": "pause", "mode_settings": {"think_tokens": "trace"}}, "retired"),
    ({"mode": "teacher", "mode_settings": {"think_tokens": "4"}}, "mode 'teacher' has no setting think_tokens"),
])
def test_bad_settings_are_refused_when_the_config_is_made(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_mode_settings_live_in_their_own_dict_and_may_be_given_flat():
    cfg = TrainConfig(mode="gumbel", mode_settings={"think_tokens": "8"}, batch_size=4)
    assert cfg.training_mode().to_dict()["think_tokens"] == "8" and cfg.training_mode().name == "gumbel"
    assert TrainConfig.from_dict({"mode": "gumbel", "think_tokens": "8", "batch_size": 4}) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the record round-trips
    assert "think_tokens" not in cfg.to_dict() and "use_gumbel" not in cfg.to_dict()
    assert TrainConfig.from_dict({"use_gumbel": True}).mode == "gumbel"  # the seed's flag, in old records
    with pytest.raises(ValueError, match=r"unknown training config fields: \['think_tokens'\].*--mode teacher"):
        TrainConfig.from_dict({"think_tokens": "8"})
    with pytest.raises(ValueError, match=r"unknown training config fields: \['bogus'\]"):
        TrainConfig.from_dict({"mode": "pause", "bogus": 1})
    assert not TrainConfig().mixes_teacher and TrainConfig(mode="pause", mix_teacher_end=0.2).mixes_teacher


def test_an_experiment_file_is_a_config_that_flags_override(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"//": "a comment", "data": {"num_examples": 10, "max_digits": 1},
                                "mode": "pause", "think_tokens": "3", "batch_size": 4, "seed": 9}))
    cfg = config_from_file(path, batch_size=8)
    assert (cfg.batch_size, cfg.seed, cfg.mode, cfg.mode_settings) == (8, 9, "pause", {"think_tokens": "3"})
    assert read_config_file(path)["data"] == {"num_examples": 10, "max_digits": 1}
    (tmp_path / "bad.json").write_text('{"batch_size": 4,\n "seed": }')
    with pytest.raises(ValueError, match=r"bad.json:2:10: not valid JSON"):
        config_from_file(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object of settings, got list"):
        config_from_file(tmp_path / "list.json")
    (tmp_path / "typo.json").write_text('{"batch_sise": 4}')
    with pytest.raises(ValueError, match="batch_sise"):
        config_from_file(tmp_path / "typo.json")
    with pytest.raises(FileNotFoundError, match="no config file"):
        config_from_file(tmp_path / "nowhere.json")


def test_the_shipped_experiment_files_are_valid_configs():
    """Every configs/*.json reads as a TrainConfig, and its data section holds arguments of generate_dataset."""
    import inspect

    from mathllm.data import generate_dataset

    known = set(inspect.signature(generate_dataset).parameters)
    paths = sorted((ROOT / "configs").glob("*.json"))
    assert paths
    for path in paths:
        assert isinstance(config_from_file(path), TrainConfig)
        assert set(read_config_file(path).get("data", {})) <= known, path


# --- schedules -----------------------------------------------------------------------------------

def test_shape_overrides_reach_the_model(tmp_path):
    from mathllm.data import generate_dataset, write_dataset

    write_dataset(generate_dataset(num_examples=300, max_digits=2, seed=1), tmp_path / "data")
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", max_steps=2, n_heads=8, d_mlp=128, save_steps=100)
    train(cfg, console_log=False)
    model = load_model(tmp_path / "run")
    assert (model.cfg.n_heads, model.cfg.d_mlp, model.cfg.d_model, model.cfg.n_layers) == (8, 128, 64, 2)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lam = lr_lambda_for(cfg, total_steps=110)
    assert lam(0) == pytest.approx(0.1) and lam(9) == pytest.approx(1.0)
    assert lam(60) == pytest.approx(0.55, abs=0.01)
    assert lam(109) == pytest.approx(0.1, abs=1e-3)
    assert all(lam(s) >= lam(s + 1) for s in range(10, 109))


def test_teacher_mixing_is_a_pure_function_of_the_seed_and_the_step():
    fixed = TrainConfig(mode="gumbel", mix_teacher=0.3, seed=1)
    assert teacher_fraction(fixed, 0, 100) == teacher_fraction(fixed, 99, 100) == 0.3
    annealed = TrainConfig(mode="gumbel", mix_teacher=0.8, mix_teacher_end=0.0)
    assert teacher_fraction(annealed, 0, 11) == 0.8 and teacher_fraction(annealed, 10, 11) == 0.0
    assert teacher_fraction(annealed, 5, 11) == pytest.approx(0.4)
    steps = [is_teacher_step(fixed, s, 1000) for s in range(1000)]
    assert steps == [is_teacher_step(fixed, s, 1000) for s in range(1000)]
    assert 0.25 < sum(steps) / 1000 < 0.35
    other_seed = TrainConfig(mode="gumbel", mix_teacher=0.3, seed=2)
    assert steps != [is_teacher_step(other_seed, s, 1000) for s in range(1000)]
    assert not any(is_teacher_step(TrainConfig(mode="gumbel"), s, 50) for s in range(50))
    assert all(is_teacher_step(TrainConfig(mode="gumbel", mix_teacher=1.0), s, 50) for s in range(50))


# --- a real (tiny) training run ---------------------------------------------------------------------

def test_training_writes_every_output_and_learns(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", max_steps=60, evaluate_test=True, eval_steps=30)
    result = train(cfg, console_log=False)
    out = tmp_path / "run"
    for name in ("model.safetensors", "config.json", "training_config.json", "test_results.json",
                 "logs/training.log", "logs/metrics.jsonl", "trainer_state.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "training_config.json").read_text())
    assert record["config"]["seed"] == 3 and record["config"]["model_size"] == "tiny"
    assert "mathllm" in record["code_version"] and record["data_meta"] is not None
    losses = [m["loss"] for m in read_metrics(out) if "loss" in m]
    assert len(losses) == 12 and losses[-1] < losses[0] * 0.7, losses
    assert all(math.isfinite(l) for l in losses)
    assert any("val_exact_match" in m for m in read_metrics(out))
    tests = json.loads((out / "test_results.json").read_text())
    assert tests["num_examples"] == 300 and 0.0 <= tests["exact_match"] <= 1.0
    assert result.test_results["exact_match"] == tests["exact_match"]
    log = (out / "logs" / "training.log").read_text()
    assert "step 60/60" in log and "test exact match" in log


def test_train_is_a_trainers_fit_and_validation_uses_the_modes_loss(tiny_dataset, tmp_path):
    from mathllm.train import load_training_texts
    from mathllm.training_mode import TrainingMode

    logged = []
    train(tiny_config(tiny_dataset, tmp_path / "a", max_steps=4, eval_steps=4), console_log=False)
    trainer = Trainer(tiny_config(tiny_dataset, tmp_path / "b", max_steps=4, eval_steps=4), on_log=logged.append,
                      console_log=False)
    result = trainer.fit()
    assert result.step == trainer.step == 4 and not result.interrupted
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(m["grad_norm"] > 0 and m["tokens_per_s"] > 0 for m in logged if "loss" in m)
    (val,) = [m for m in logged if "val_loss" in m]
    assert val["step"] == 4 and val["val_examples_decoded"] == 32 and 0 <= val["val_exact_match"] <= 1
    model = load_model(tmp_path / "b").eval()
    expected = TrainingMode().validation_loss(model, load_training_texts(tiny_dataset, "val"), 4, 64)
    assert val["val_loss"] == pytest.approx(expected, rel=1e-4)
    assert result.history == read_metrics(tmp_path / "b")
    again = Trainer(tiny_config(tiny_dataset, tmp_path / "b", max_steps=4, eval_steps=4), console_log=False).fit()
    assert again.step == 4 and again.history == result.history  # a finished run is reported, not retrained


def test_same_seed_same_model_and_other_seed_other_model(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, tmp_path / "a", max_steps=8), console_log=False)
    train(tiny_config(tiny_dataset, tmp_path / "b", max_steps=8), console_log=False)
    train(tiny_config(tiny_dataset, tmp_path / "c", max_steps=8, seed=4), console_log=False)
    a, b, c = (weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class _StopAt:
    """An on_log callback that raises KeyboardInterrupt (as Ctrl-C would) once ``step`` is logged."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, metrics):
        if metrics["step"] == self.step and "loss" in metrics:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_weights(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, tmp_path / "straight"), console_log=False)

    cfg = tiny_config(tiny_dataset, tmp_path / "resumed")
    first = train(cfg, on_log=_StopAt(15), console_log=False)
    assert first.interrupted and first.step == 15
    assert [s for s, _ in find_checkpoints(tmp_path / "resumed")] == [10, 15]
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    second = train(cfg, console_log=False)
    assert not second.interrupted and second.step == 20

    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    steps = [m["step"] for m in read_metrics(tmp_path / "resumed") if "loss" in m]
    assert steps == [5, 10, 15, 20]


def test_a_run_with_stratum_focus_measures_the_strata_and_resumes_to_the_same_weights(tiny_dataset, tmp_path):
    settings = dict(stratum_focus=0.5, stratum_focus_every=7)
    train(tiny_config(tiny_dataset, tmp_path / "straight", **settings), console_log=False)
    cfg = tiny_config(tiny_dataset, tmp_path / "resumed", **settings)
    assert train(cfg, on_log=_StopAt(15), console_log=False).interrupted
    state = json.loads((tmp_path / "resumed" / "checkpoint-15" / "trainer_state.json").read_text())
    assert set(state["stratum_focus"]) >= {"2+2", "2+2+2"} and all(v > 0 for v in state["stratum_focus"].values())
    assert train(cfg, console_log=False).step == 20
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    shares = [m for m in read_metrics(tmp_path / "straight") if any(k.startswith("focus_share/") for k in m)]
    assert [m["step"] for m in shares] == [7, 14]
    assert all(sum(v for k, v in m.items() if k != "step") == pytest.approx(1.0) for m in shares)
    train(tiny_config(tiny_dataset, tmp_path / "plain"), console_log=False)
    assert any(not torch.equal(straight[k], weights(tmp_path / "plain")[k]) for k in straight)


def test_resume_with_other_settings_is_refused(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    train(cfg, on_log=_StopAt(10), console_log=False)
    with pytest.raises(ValueError, match=r"learning_rate: checkpoint 0\.003 vs now 0\.001"):
        train(tiny_config(tiny_dataset, tmp_path / "run", learning_rate=1e-3), console_log=False)


def test_checkpoints_are_pruned_and_never_left_half_written(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", max_steps=40, save_steps=5, save_total_limit=2)
    train(cfg, console_log=False)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert [n for n in names if n.startswith("checkpoint-")] == ["checkpoint-30", "checkpoint-35"]
    assert not [n for n in names if n.endswith(".tmp")]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint-35").iterdir()) == [
        "config.json", "model.safetensors", "trainer_state.json", "training_state.json", "training_state.safetensors"]
    assert not list((tmp_path / "run").rglob("*.pt"))  # nothing pickled: loading never runs code


def test_missing_data_directory_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="scripts/generate_data.py"):
        train(tiny_config(tmp_path / "nowhere", tmp_path / "run"), console_log=False)


def test_mode_flags_are_checked_before_anything_runs(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown mode 'gumbal'"):
        train(tiny_config(tiny_dataset, tmp_path / "run", mode="gumbal"), console_log=False)
    assert not (tmp_path / "run").exists()


def test_a_run_records_its_mode_and_logs_step_time(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, tmp_path / "run", max_steps=5, mode="answer-only"), console_log=False)
    record = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert record["config"]["mode"] == "answer-only" and record["config"]["mode_settings"] == {}
    assert record["mode"] == {"mode": "answer-only"} and "use_gumbel" not in record["config"]
    logged = [m for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert logged and all(m["step_seconds"] > 0 for m in logged)


def test_old_checkpoints_without_newer_fields_still_resume(tiny_dataset, tmp_path):
    """A run written before some fields existed resumes: missing fields take their defaults."""
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    train(cfg, on_log=_StopAt(10), console_log=False)
    (step, ckpt), = [c for c in find_checkpoints(tmp_path / "run") if c[0] == 10]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    for name in ("mode_settings", "init_from", "mix_teacher", "mix_teacher_end", "operand_balance",
                 "prompt_loss_weight"):
        state["config"].pop(name)
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    assert train(cfg, console_log=False).step == 20


def test_wandb_without_login_warns_and_trains(tiny_dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    start = time.perf_counter()
    result = train(tiny_config(tiny_dataset, tmp_path / "run", max_steps=4, wandb=True), console_log=False)
    assert result.step == 4 and time.perf_counter() - start < 120
    log = (tmp_path / "run" / "logs" / "training.log").read_text()
    assert "W&B" in log and ("offline" in log or "continuing without it" in log)


# --- the command line, Ctrl-C included -----------------------------------------------------------------

def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--model-size", "tiny", "--data-dir", str(data),
            "--output-dir", str(out), "--no-wandb", "--batch-size", "16", "--learning-rate", "3e-3",
            "--warmup-steps", "5", "--save-steps", "1000", "--eval-steps", "1000", "--logging-steps", "5",
            "--eval-examples", "16", *extra]


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    cmd = _train_cmd(tiny_dataset, out, "--max-steps", "100000", "--no-evaluate-test")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    metrics = out / "logs" / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted at step" in stderr
    (step, ckpt), = find_checkpoints(out)
    assert step >= 10 and (ckpt / "model.safetensors").is_file()

    resumed = subprocess.run(_train_cmd(tiny_dataset, out, "--max-steps", str(step + 5), "--no-evaluate-test"),
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    # a different --max-steps changes the schedule, so the resume must be refused with a clear message
    assert resumed.returncode == 2 and "max_steps" in resumed.stderr and "Traceback" not in resumed.stderr


def test_cli_errors_are_one_clear_line(tmp_path):
    proc = subprocess.run(_train_cmd(tmp_path / "missing", tmp_path / "run", "--max-steps", "2"),
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert "generate_data.py" in proc.stderr and "Traceback" not in proc.stderr


def test_fp16_flag_does_not_break_on_cpu(tiny_dataset, tmp_path):
    result = train(tiny_config(tiny_dataset, tmp_path / "run", max_steps=3, fp16=True, device="cpu"),
                   console_log=False)
    assert result.step == 3
    assert "needs CUDA" in (tmp_path / "run" / "logs" / "training.log").read_text()
