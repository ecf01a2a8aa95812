"""Checkpoints (mathllm.checkpoints): model weights saved and loaded with clear errors, resumable training state
written atomically and read back whole (damaged ones skipped), the metrics log, and ``load`` returning a model
with its training mode and run record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from mathllm.checkpoints import (CheckpointError, TrainedModel, clean_leftovers, dataset_for_checkpoint,
                                 find_checkpoints, is_run_directory, load, load_model, mode_metadata,
                                 newest_readable_checkpoint, read_checkpoint, read_metadata, read_metrics, remove_run,
                                 restore, save_checkpoint, save_model, training_record, write_metrics, append_metrics)
from mathllm.model import MathTransformer, ModelConfig
from mathllm.tokenizer import VOCAB_SIZE
from mathllm.training_mode import get_mode
from mathllm.utils import SHIPPED_CHECKPOINT

POSITIONAL = ["rotary", "learned"]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_model(positional: str = "rotary", seed: int = 0) -> MathTransformer:
    torch.manual_seed(seed)
    return MathTransformer(ModelConfig.from_preset("tiny", positional=positional, init_std=0.1)).eval()


def random_ids(batch: int = 3, pos: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (batch, pos), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Model weights (was MathTransformer.save_pretrained / from_pretrained)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("positional", POSITIONAL)
def test_save_and_load_round_trip(tmp_path, positional):
    model = make_model(positional)
    assert save_model(model, tmp_path / "ckpt") == tmp_path / "ckpt"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    ids = random_ids()
    for path in (tmp_path / "ckpt", tmp_path / "ckpt" / "model.safetensors"):
        loaded = load_model(path).eval()
        assert loaded.cfg == model.cfg
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    # a config override with the same shape but other settings is accepted
    loaded = load_model(tmp_path / "ckpt", config=ModelConfig.from_dict({**model.cfg.to_dict(), "dropout": 0.2}))
    assert loaded.cfg.dropout == 0.2
    assert load_model(tmp_path / "ckpt", config={**model.cfg.to_dict(), "dropout": 0.3}).cfg.dropout == 0.3


def test_metadata_is_stored_beside_the_weights(tmp_path):
    save_model(make_model(), tmp_path / "a", metadata={"note": "hello", "number": 3})
    meta = read_metadata(tmp_path / "a")
    assert meta["note"] == "hello" and meta["number"] == "3" and meta["mathllm_model"] == "MathTransformer"
    save_model(make_model(), tmp_path / "b", metadata=mode_metadata(get_mode("pause", think_tokens="2")))
    assert json.loads(read_metadata(tmp_path / "b" / "model.safetensors")["mathllm_mode"]) == {
        "mode": "pause", "think_tokens": "2"}


def test_checkpoint_errors_are_clear(tmp_path):
    ckpt = save_model(make_model(), tmp_path / "ckpt")

    with pytest.raises(CheckpointError, match=r"model_size 'small' expects .*d_model=256.* has .*d_model=64"):
        load_model(ckpt, model_size="small")
    with pytest.raises(CheckpointError, match="unknown model_size 'huge'"):
        load_model(ckpt, model_size="huge")
    with pytest.raises(CheckpointError, match="d_model=64"):
        load_model(ckpt, config=ModelConfig.from_preset("tiny", positional="learned"))
    with pytest.raises(CheckpointError, match="bad model config"):
        load_model(ckpt, config={"n_layer": 2})

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (ckpt / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    (truncated / "config.json").write_text((ckpt / "config.json").read_text())
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_model(truncated)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_metadata(truncated)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"no config\.json .*model_size"):
        load_model(no_config)
    assert load_model(no_config, model_size="tiny").cfg.d_model == 64  # a preset supplies the shape

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"transformer.h.0.attn.c_attn.weight": torch.zeros(3, 3)}, foreign)
    with pytest.raises(CheckpointError, match="does not look like a mathllm"):
        load_model(foreign, model_size="tiny")
    integers = tmp_path / "integers.safetensors"
    save_file({"embed.W_E": torch.zeros(3, 3, dtype=torch.long)}, integers)
    with pytest.raises(CheckpointError, match="non-float tensors"):
        load_model(integers, model_size="tiny")

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(tmp_path / "nowhere")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "model.pt").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="never loaded"):
        load_model(pickled)
    with pytest.raises(CheckpointError, match="not a .safetensors file"):
        load_model(pickled / "model.pt")
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid model config"):
        load_model(ckpt)
    assert issubclass(CheckpointError, ValueError)


# ----------------------------------------------------------------------------------------------
# Resumable training state: checkpoint-N/
# ----------------------------------------------------------------------------------------------

def _training_objects(seed: int = 0):
    model = make_model(seed=seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    return model, optimizer, scheduler


def _steps(model, optimizer, scheduler, n: int) -> None:
    for _ in range(n):
        optimizer.zero_grad()
        model(random_ids(), return_type="loss").backward()
        optimizer.step()
        scheduler.step()


def test_a_checkpoint_holds_everything_to_resume_and_nothing_pickled(tmp_path):
    model, optimizer, scheduler = _training_objects()
    _steps(model, optimizer, scheduler, 3)
    path = save_checkpoint(tmp_path, 3, model, optimizer, scheduler, None, {"step": 3, "config": {}}, keep=2,
                           metadata={"mathllm_mode": json.dumps({"mode": "teacher"})})
    assert path == tmp_path / "checkpoint-3"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "trainer_state.json",
                                                      "training_state.json", "training_state.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    assert json.loads(read_metadata(path)["mathllm_mode"]) == {"mode": "teacher"}
    expected_rng = torch.rand(3)  # what the RNG gives right after the saved state
    torch.rand(5)  # move it on: restore must bring it back

    # a fresh model, optimizer and scheduler restored from the checkpoint continue exactly as the originals
    resume = read_checkpoint(path)
    assert resume.step == 3 and resume.trainer_state == {"step": 3, "config": {}}
    other, other_opt, other_sched = _training_objects(seed=1)
    restore(resume, other, other_opt, other_sched, None)
    assert torch.equal(torch.rand(3), expected_rng)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    _steps(model, optimizer, scheduler, 2)
    _steps(other, other_opt, other_sched, 2)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert scheduler.get_last_lr() == other_sched.get_last_lr()


def test_only_the_newest_checkpoints_are_kept_and_a_step_can_be_saved_again(tmp_path):
    model, optimizer, scheduler = _training_objects()
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, model, optimizer, scheduler, None, {"step": step}, keep=2)
    assert [s for s, _ in find_checkpoints(tmp_path)] == [10, 15]
    _steps(model, optimizer, scheduler, 1)
    save_checkpoint(tmp_path, 15, model, optimizer, scheduler, None, {"step": 15, "again": True}, keep=2)
    assert [s for s, _ in find_checkpoints(tmp_path)] == [10, 15]
    assert read_checkpoint(tmp_path / "checkpoint-15").trainer_state["again"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-15"]
    save_checkpoint(tmp_path, 20, model, optimizer, scheduler, None, {"step": 20}, keep=0)  # 0: keep them all
    assert [s for s, _ in find_checkpoints(tmp_path)] == [10, 15, 20]


def test_find_checkpoints_sees_only_complete_ones(tmp_path):
    model, optimizer, scheduler = _training_objects()
    save_checkpoint(tmp_path, 2, model, optimizer, scheduler, None, {"step": 2}, keep=5)
    save_checkpoint(tmp_path, 10, model, optimizer, scheduler, None, {"step": 10}, keep=5)
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()  # written last: without it, unfinished
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-7").write_text("a file")
    assert find_checkpoints(tmp_path) == [(2, tmp_path / "checkpoint-2")]
    assert find_checkpoints(tmp_path / "nowhere") == []


def test_leftovers_of_killed_runs_are_cleaned_or_put_back(tmp_path):
    model, optimizer, scheduler = _training_objects()
    save_checkpoint(tmp_path, 4, model, optimizer, scheduler, None, {"step": 4}, keep=5)
    save_checkpoint(tmp_path, 8, model, optimizer, scheduler, None, {"step": 8}, keep=5)
    (tmp_path / ".checkpoint-12.tmp").mkdir()  # killed while writing
    (tmp_path / "checkpoint-8").rename(tmp_path / ".checkpoint-8.old")  # killed between the two renames
    (tmp_path / ".checkpoint-4.old").mkdir()  # killed after the new one arrived
    done = clean_leftovers(tmp_path)
    assert "removed the unfinished .checkpoint-12.tmp" in done and "restored checkpoint-8 from .checkpoint-8.old" in done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert read_checkpoint(tmp_path / "checkpoint-8").step == 8
    assert clean_leftovers(tmp_path) == [] and clean_leftovers(tmp_path / "nowhere") == []


def test_a_damaged_checkpoint_is_skipped_for_the_newest_readable_one(tmp_path, caplog):
    model, optimizer, scheduler = _training_objects()
    for step in (3, 6):
        save_checkpoint(tmp_path, step, model, optimizer, scheduler, None, {"step": step}, keep=5)
    weights = tmp_path / "checkpoint-6" / "training_state.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a disk that filled up
    with pytest.raises(CheckpointError, match="training_state.safetensors"):
        read_checkpoint(tmp_path / "checkpoint-6")
    with caplog.at_level(logging.WARNING, logger="mathllm.checkpoints"):
        resume = newest_readable_checkpoint(tmp_path)
    assert resume.step == 3 and "checkpoint-6 is damaged" in caplog.text
    (tmp_path / "checkpoint-3" / "training_state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no 'optimizer' entry"):
        read_checkpoint(tmp_path / "checkpoint-3")
    assert newest_readable_checkpoint(tmp_path) is None


def test_an_optimizer_state_of_another_model_is_refused(tmp_path):
    model, optimizer, scheduler = _training_objects()
    _steps(model, optimizer, scheduler, 1)
    save_checkpoint(tmp_path, 1, model, optimizer, scheduler, None, {"step": 1}, keep=1)
    resume = read_checkpoint(tmp_path / "checkpoint-1")
    few = make_model()
    opt = torch.optim.AdamW(list(few.parameters())[:3])
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        restore(resume, few, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), None)


# ----------------------------------------------------------------------------------------------
# Run directories and the metrics log
# ----------------------------------------------------------------------------------------------

def test_remove_run_deletes_runs_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_config.json").write_text("{}")
    assert is_run_directory(run)
    remove_run(run)
    assert not run.exists()
    remove_run(tmp_path / "nowhere")  # nothing to do
    other = tmp_path / "papers"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    assert not is_run_directory(other)
    with pytest.raises(ValueError, match="not a training run"):
        remove_run(other)
    assert (other / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        remove_run(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    remove_run(empty)
    assert not empty.exists()


def test_metrics_are_appended_rewritten_and_read_back(tmp_path):
    assert read_metrics(tmp_path) == []
    write_metrics(tmp_path, [{"step": 1, "loss": 2.0}])
    append_metrics(tmp_path, {"step": 2, "loss": 1.5})
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    write_metrics(tmp_path, [{"step": 1, "loss": 2.0}])  # drop what came after a checkpoint
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]


def test_a_torn_last_metrics_line_is_dropped_and_a_damaged_one_elsewhere_is_an_error(tmp_path, caplog):
    path = tmp_path / "logs" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')  # a kill during the append
    with caplog.at_level(logging.WARNING, logger="mathllm.checkpoints"):
        assert read_metrics(tmp_path) == [{"step": 1}, {"step": 2}]
    assert "torn last line" in caplog.text
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
        read_metrics(tmp_path)


# ----------------------------------------------------------------------------------------------
# Trained models: load() gives the model with its mode and run record
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pause_run(tiny_dataset, tmp_path_factory) -> Path:
    """A two-step pause-mode run of a tiny model."""
    from mathllm.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "pause"
    cfg = TrainConfig(model_size="tiny", data_dir=str(tiny_dataset), output_dir=str(out), batch_size=8,
                      max_steps=2, warmup_steps=1, logging_steps=1, eval_steps=2, save_steps=1, save_total_limit=1,
                      eval_examples=4, wandb=False, progress=False, evaluate_test=False, mode="pause",
                      mode_settings={"think_tokens": "2"})
    train(cfg, console_log=False)
    return out


def test_load_gives_the_model_its_mode_and_its_run_record(pause_run, tiny_dataset):
    trained = load(pause_run, device="cpu")
    assert isinstance(trained, TrainedModel) and trained.path == pause_run
    assert trained.mode.to_dict() == {"mode": "pause", "think_tokens": "2"}
    assert not trained.model.training and trained.model.W_E.device.type == "cpu"
    assert trained.record["config"]["mode"] == "pause" and trained.record == training_record(pause_run)
    assert trained.data_arguments["max_digits"] == 2 and trained.data_arguments["seed"] == 7
    (completion,) = trained.generate(["12+34="], max_new_tokens=3)
    assert completion.startswith("<pause><pause>") and not completion.startswith("<pause>" * 3)
    assert trained.generate(["12+34="], max_new_tokens=3) == trained.mode.generate(trained.model, ["12+34="],
                                                                                     max_new_tokens=3)
    # the same weights through load_model: a bare model, which knows nothing of its mode
    bare = load_model(pause_run)
    assert isinstance(bare, MathTransformer) and not hasattr(bare, "training_meta")
    for a, b in zip(bare.state_dict().values(), trained.model.state_dict().values()):
        assert torch.equal(a, b)
    # the run's checkpoint-N and the weights file find the same record (the run directory above them)
    assert training_record(pause_run / "checkpoint-1") == training_record(pause_run / "model.safetensors") \
        == trained.record
    assert load(pause_run / "checkpoint-1", device="cpu").mode.to_dict() == trained.mode.to_dict()


def test_a_lone_safetensors_file_still_names_its_mode(pause_run, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("model.safetensors", "config.json"):
        (lone / name).write_bytes((pause_run / name).read_bytes())
    assert training_record(lone) is None
    trained = load(lone, device="cpu")
    assert trained.record is None and trained.data_arguments == {}
    assert trained.mode.to_dict() == {"mode": "pause", "think_tokens": "2"}


def test_weights_without_a_mode_are_a_teacher_forcing_model(tmp_path):
    save_model(make_model(), tmp_path / "bare")
    trained = load(tmp_path / "bare", device="cpu")
    assert trained.mode.name == "teacher" and trained.record is None


def test_the_dataset_of_a_checkpoint_is_regenerated_exactly(pause_run, tiny_dataset, tmp_path):
    from mathllm.data import load_split

    dataset = dataset_for_checkpoint(pause_run)
    assert [ex["text"] for ex in dataset["test"]] == [ex["text"] for ex in load_split(tiny_dataset / "test.jsonl")]
    save_model(make_model(), tmp_path / "bare")
    with pytest.raises(ValueError, match="no training_config.json"):
        dataset_for_checkpoint(tmp_path / "bare")


@pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "model.safetensors").is_file(), reason="no shipped checkpoint")
def test_the_shipped_checkpoint_loads_as_a_teacher_forcing_model():
    trained = load(device="cpu")  # the default path is the shipped checkpoint
    assert trained.mode.name == "teacher" and trained.path == SHIPPED_CHECKPOINT
    assert trained.model.cfg.n_layers == 4 and trained.data_arguments["max_digits"] == 3
    assert trained.generate(["658+189="], max_new_tokens=30) == ["<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>"]
