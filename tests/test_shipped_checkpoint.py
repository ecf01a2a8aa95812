"""The model shipped in checkpoints/ loads, is what its config says, and is accurate on held-out problems."""

import json

import pytest

from mathllm.evaluate import dataset_for_checkpoint, evaluate_examples, load_model
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
    model = load_model(SHIPPED_CHECKPOINT, device="cpu")
    test = list(dataset_for_checkpoint(SHIPPED_CHECKPOINT)["test"])[:1000]  # regenerated: same seed, same data
    results = evaluate_examples(model, test, batch_size=250)
    assert results["num_examples"] == 1000
    assert results["exact_match"] >= 0.99, results["failures"][:3]
