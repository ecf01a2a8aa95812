"""Trainer: completion-only loss, zero padding, schedule, outputs, exact resume, interrupts, W&B fallback."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mathllm.model import MathTransformer
from mathllm.tokenizer import PAD_ID, TOKENIZER
from mathllm.train import (LengthGroupedData, TrainConfig, completion_loss, find_checkpoints, lr_lambda_for,
                           read_metrics, train)

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(data_dir: Path, output_dir: Path, **overrides) -> TrainConfig:
    base = dict(model_size="tiny", data_dir=str(data_dir), output_dir=str(output_dir), batch_size=32,
                learning_rate=3e-3, warmup_steps=5, max_steps=20, logging_steps=5, eval_steps=10,
                save_steps=10, eval_examples=32, wandb=False, progress=False, seed=3, evaluate_test=False)
    base.update(overrides)
    return TrainConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return MathTransformer.from_pretrained(path).state_dict()


# --- data and loss -------------------------------------------------------------------------------

def test_loss_mask_covers_exactly_the_completion():
    text = "12+34=<think>2+4=6 1+3=4</think>46<end>"
    data = LengthGroupedData.from_texts([text], max_length=128)
    (length, ids), = data.groups.items()
    mask = data.loss_masks[length][0]
    targets = TOKENIZER.str_tokens(ids[0, 1:])
    masked_targets = [t for t, m in zip(targets, mask.tolist()) if m]
    assert "".join(masked_targets) == "<think>2+4=6 1+3=4</think>46<end>"


def test_batches_hold_no_padding_and_cover_every_example_once():
    texts = ["1+2=3<end>", "10+20=30<end>", "3+4=7<end>", "12+34=<think>2+4=6 1+3=4</think>46<end>", "5+5=10<end>"]
    data = LengthGroupedData.from_texts(texts, max_length=64)
    seen = []
    for length, index in data.epoch_batches(batch_size=2, epoch=0, seed=0):
        batch = data.groups[length][index]
        assert (batch != PAD_ID).all()
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


def test_shape_overrides_reach_the_model(tmp_path):
    from mathllm.data import generate_dataset, write_dataset

    write_dataset(generate_dataset(num_examples=300, max_digits=2, seed=1), tmp_path / "data")
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", max_steps=2, n_heads=8, d_mlp=128, save_steps=100)
    train(cfg, console_log=False)
    model = MathTransformer.from_pretrained(tmp_path / "run")
    assert (model.cfg.n_heads, model.cfg.d_mlp, model.cfg.d_model, model.cfg.n_layers) == (8, 128, 64, 2)


def test_epoch_order_is_deterministic_per_seed_and_changes_between_epochs():
    texts = [f"{a}+{b}={a + b}<end>" for a in range(10) for b in range(10)]
    data = LengthGroupedData.from_texts(texts, max_length=64)

    def order(epoch, seed):
        return [tuple(i.tolist()) for _, i in data.epoch_batches(8, epoch, seed)]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(1, 1)
    assert order(0, 1) != order(0, 2)


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


def test_prompt_loss_weight_adds_the_weighted_mean_loss_of_the_prompt_targets():
    from mathllm.train import prompt_targets

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
    with pytest.raises(ValueError, match="prompt-loss-weight must be >= 0"):
        TrainConfig(prompt_loss_weight=-1.0)


def test_too_long_example_names_source_and_line():
    with pytest.raises(ValueError, match=r"train.jsonl, example 2: .* longer than --max-length 8"):
        LengthGroupedData.from_texts(["1+2=3<end>", "111+222=333<end>"], max_length=8, source="train.jsonl")


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lam = lr_lambda_for(cfg, total_steps=110)
    assert lam(0) == pytest.approx(0.1) and lam(9) == pytest.approx(1.0)
    assert lam(60) == pytest.approx(0.55, abs=0.01)
    assert lam(109) == pytest.approx(0.1, abs=1e-3)
    assert all(lam(s) >= lam(s + 1) for s in range(10, 109))


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
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pt", "trainer_state.json"):
        assert (tmp_path / "run" / "checkpoint-35" / name).is_file()


def test_missing_data_directory_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="scripts/generate_data.py"):
        train(tiny_config(tmp_path / "nowhere", tmp_path / "run"), console_log=False)


def test_mode_flags_are_checked_before_anything_runs(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown --mode 'gumbal'"):
        train(tiny_config(tiny_dataset, tmp_path / "run", mode="gumbal"), console_log=False)
    assert not (tmp_path / "run").exists()


def test_a_run_records_its_mode_and_logs_step_time(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, tmp_path / "run", max_steps=5, mode="answer-only"), console_log=False)
    record = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert record["config"]["mode"] == "answer-only" and record["config"]["use_gumbel"] is False
    logged = [m for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert logged and all(m["step_seconds"] > 0 for m in logged)


def test_old_checkpoints_without_mode_fields_still_resume(tiny_dataset, tmp_path):
    """A run written before the mode fields existed resumes: missing fields take their defaults."""
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    train(cfg, on_log=_StopAt(10), console_log=False)
    (step, ckpt), = [c for c in find_checkpoints(tmp_path / "run") if c[0] == 10]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    for name in ("think_tokens", "think_alphabet", "init_from", "mix_teacher", "internalize_end"):
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
