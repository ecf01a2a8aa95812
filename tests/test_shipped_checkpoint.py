"""The model shipped in checkpoints/ loads, is what its config says, and is accurate on held-out problems."""

import json

import pytest

from mathllm.checkpoints import dataset_for_checkpoint, load
from mathllm.evaluate import evaluate_examples
from mathllm.tokenizer import TOKENIZER
from mathllm.utils import SHIPPED_CHECKPOINT

pytestmark = pytest.mark.skipif(not (SHIPPED_CHECKPOINT / "model.safetensors").is_file(),
                                reason=f"no shipped checkpoint at {SHIPPED_CHECKPOINT} (scripts/train_shipped_model.sh)")


def test_shipped_checkpoint_has_its_run_record():
    for name in ("model.safetensors", "config.json", "training_config.json", "test_results.json",
                 "logs/training.log", "logs/metrics.jsonl"):
        assert (SHIPPED_CHECKPOINT / name).is_file(), name
    record = json.loads((SHIPPED_CHECKPOINT / "training_config.json").read_text())
    assert record["seed"] == 42 and record["code_version"]["git_commit"]
    assert record["data_meta"]["arguments"]["max_digits"] == 3
    size = (SHIPPED_CHECKPOINT / "model.safetensors").stat().st_size
    assert size < 5 * 2**20, f"shipped weights are {size / 2**20:.1f} MiB; keep them to a few MB"


def test_shipped_checkpoint_is_accurate_on_a_fixed_test_set():
    trained = load(SHIPPED_CHECKPOINT, device="cpu")
    assert trained.mode.name == "teacher"
    test = list(dataset_for_checkpoint(SHIPPED_CHECKPOINT)["test"])[:1000]  # regenerated: same seed, same data
    results = evaluate_examples(trained, test, batch_size=250)
    assert results["num_examples"] == 1000 and results["mode"] == "teacher"
    assert results["exact_match"] >= 0.99, results["failures"][:3]


FREE_THINKER = SHIPPED_CHECKPOINT.parent / "free_gumbel_add4"


def test_shipped_free_thinker_records_its_mode_and_writes_its_own_trace():
    """Notebook 08's gumbel model: its mode is recorded, and it writes K think tokens of its alphabet itself,
    K the think budget of the prompt's shape (never the human trace's length, which tells the carries)."""
    from mathllm.modes.thinking import think_budget

    record = json.loads((FREE_THINKER / "training_config.json").read_text())["config"]
    assert record["mode"] == "gumbel" and record["mode_settings"].get("think_tokens", "shape") == "shape"
    trained = load(FREE_THINKER, device="cpu")
    assert trained.mode.name == "gumbel" and trained.mode.settings.think_tokens == "shape"
    test = list(dataset_for_checkpoint(FREE_THINKER)["test"])[:200]
    completions = trained.generate([ex["prompt"] for ex in test], max_new_tokens=48)
    for ex, completion in zip(test, completions):
        assert completion.startswith("<think>") and "</think>" in completion, completion
        think = completion[len("<think>"): completion.index("</think>")]
        assert set(think) <= set("0123456789+= "), think
        assert len(TOKENIZER.tokenize(think)) == think_budget(ex["prompt"], "shape")
    results = evaluate_examples(trained, test, batch_size=200)
    recorded = json.loads((FREE_THINKER / "test_results.json").read_text())["exact_match"]
    assert abs(results["exact_match"] - recorded) < 0.1  # 200 of the same test split vs all 10,000


CHECKPOINTS = SHIPPED_CHECKPOINT.parent


@pytest.mark.parametrize("name, mode, operation, problems, bar", [
    ("sub3_cot", "teacher", "sub", 300, 0.98),       # test_results.json: 99.66 %
    ("mul3_cot", "teacher", "mul", 100, 0.97),       # 99.96 %
    ("looped_add4", "answer-slots", "add", 500, 0.99),  # 99.96 %
])
def test_every_shipped_checkpoint_loads_with_its_record_and_is_accurate_on_its_own_test_split(name, mode, operation,
                                                                                                problems, bar):
    path = CHECKPOINTS / name
    for part in ("model.safetensors", "config.json", "training_config.json", "test_results.json", "logs/metrics.jsonl"):
        assert (path / part).is_file(), f"{name}/{part}"
    trained = load(path, device="cpu")
    assert trained.mode.name == mode
    data = dataset_for_checkpoint(path)  # regenerated from the record: same seed, same problems
    assert data.meta["arguments"].get("operation", "add") == operation
    test = list(data["test"])[:problems]
    results = evaluate_examples(trained, test, batch_size=100)
    recorded = json.loads((path / "test_results.json").read_text())["exact_match"]
    assert results["exact_match"] >= bar, results["failures"][:3]
    assert abs(results["exact_match"] - recorded) < 0.08
