"""Evaluation: answer parsing, exact match / think exact / token accuracy, breakdowns, the CLI's errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mathllm.generate
from model_doubles import ScriptedModel
from mathllm.data import make_example
from mathllm.evaluate import answer_from_completion, evaluate_examples, format_report, token_accuracy
from mathllm.model import MathTransformer
from mathllm.tokenizer import TOKENIZER

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("completion, fmt, answer", [
    ("<think>8+9=17 5+8+1=14 6+1+1=8</think>847<end>", "cot", 847),
    ("8<end>", "plain", 8),
    ("64<end>", "reversed", 46),
    ("<think>8+9=17</think>84 7<end>", "cot", None),
    ("<think>8+9=17 5+8", "cot", None),
    ("847", "cot", None),  # no <end>: the model did not finish
])
def test_answer_parsing(completion, fmt, answer):
    assert answer_from_completion(completion, fmt) == answer


EXAMPLES = [make_example(ops) for ops in [(658, 189), (12, 34), (99, 21), (3, 5), (5, 7, 9)]]


def fake_generate(answers):
    """Replace generation by a table: prompt -> completion."""
    def generate(model, prompts, **kwargs):
        return [answers[p] for p in prompts]
    return generate


def test_a_perfect_model_scores_one_and_a_wrong_answer_is_counted(monkeypatch):
    truth = {ex["prompt"]: ex["text"][len(ex["prompt"]):] for ex in EXAMPLES}
    model = MathTransformer.from_preset("tiny")
    monkeypatch.setattr(mathllm.generate, "generate", fake_generate(truth))
    perfect = evaluate_examples(model, EXAMPLES)
    assert perfect["exact_match"] == 1.0 and perfect["think_exact"] == 1.0 and perfect["num_with_think"] == 4

    wrong = dict(truth)
    wrong["12+34="] = "<think>2+4=6 1+3=4</think>47<end>"  # right trace, wrong answer
    wrong["99+21="] = "<think>9+1=10 9+2=11</think>120<end>"  # dropped carry in the trace, right answer
    monkeypatch.setattr(mathllm.generate, "generate", fake_generate(wrong))
    res = evaluate_examples(model, EXAMPLES)
    assert res["exact_match"] == pytest.approx(4 / 5) and res["think_exact"] == pytest.approx(3 / 4)
    assert res["by_num_carries"]["0"] == {"exact_match": 0.5, "count": 2}  # 12+34 and 3+5 have no carry
    assert res["by_num_operands"]["3"] == {"exact_match": 1.0, "count": 1}
    assert [f["prompt"] for f in res["failures"]] == ["12+34="]
    assert "exact match     0.8000" in format_report(res)


class _Oracle(MathTransformer):
    """Teacher-forced oracle for one text: predicts its true next token, except at chosen positions."""

    def __init__(self, text, wrong_positions=()):
        super().__init__(MathTransformer.from_preset("tiny").cfg)
        self.next_ids = torch.tensor(TOKENIZER.encode(text)[1:])
        self.wrong = set(wrong_positions)

    def forward(self, input_ids=None, **kwargs):
        n = input_ids.shape[1]
        target = self.next_ids[:n].clone()
        for pos in self.wrong:
            target[pos] = (target[pos] + 1) % self.cfg.d_vocab
        return torch.nn.functional.one_hot(target, self.cfg.d_vocab).float().expand(input_ids.shape[0], -1, -1)


def test_token_accuracy_counts_completion_tokens_only():
    text = "12+34=<think>2+4=6 1+3=4</think>46<end>"  # 6 prompt tokens, 16 completion tokens
    assert token_accuracy(_Oracle(text), [text]) == 1.0
    assert token_accuracy(_Oracle(text, wrong_positions=[0, 1, 2, 3]), [text]) == 1.0  # prompt predictions
    assert token_accuracy(_Oracle(text, wrong_positions=[5, 6]), [text]) == pytest.approx(14 / 16)


def test_real_generation_on_a_random_model_gives_a_complete_report():
    model = MathTransformer.from_preset("tiny")
    res = evaluate_examples(model, EXAMPLES)
    assert res["num_examples"] == 5 and 0 <= res["exact_match"] <= 1 and 0 <= res["token_accuracy"] <= 1
    assert sum(cell["count"] for cell in res["by_num_digits"].values()) == 5
    json.dumps(res)  # results are JSON-able (test_results.json)


def _evaluate_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_evaluates_a_checkpoint_and_writes_results(tiny_dataset, tmp_path):
    MathTransformer.from_preset("tiny").save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "results.json"
    proc = _evaluate_cli("--checkpoint", str(tmp_path / "ckpt"), "--data-dir", str(tiny_dataset), "--limit", "50",
                         "--output-file", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "exact match" in proc.stdout and json.loads(out.read_text())["num_examples"] == 50


def test_cli_errors_name_the_problem(tiny_dataset, tmp_path):
    MathTransformer.from_preset("tiny").save_pretrained(tmp_path / "ckpt")
    wrong_size = _evaluate_cli("--checkpoint", str(tmp_path / "ckpt"), "--model-size", "small",
                               "--data-dir", str(tiny_dataset))
    assert wrong_size.returncode == 2 and "Traceback" not in wrong_size.stderr
    assert "small" in wrong_size.stderr and "64" in wrong_size.stderr  # expected vs found d_model

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    (truncated / "config.json").write_text((tmp_path / "ckpt" / "config.json").read_text())
    proc = _evaluate_cli("--checkpoint", str(truncated), "--data-dir", str(tiny_dataset))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "model.safetensors" in proc.stderr

    missing = _evaluate_cli("--checkpoint", str(tmp_path / "ckpt"), "--data-dir", str(tmp_path / "no-data"))
    assert missing.returncode == 2 and "generate_data.py" in missing.stderr
