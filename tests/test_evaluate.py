"""Evaluation: exact match / think exact / token accuracy, breakdowns, the mode a model is used in, the CLI's
errors. (Answer parsing, once here, is mathllm.text.parse_answer: tests/test_text.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mathllm.checkpoints import TrainedModel, save_model
from mathllm.data import make_example, write_dataset, generate_dataset
from mathllm.evaluate import (evaluate_examples, evaluate_split, exact_match_texts, format_report,
                              generate_completions, model_and_mode, token_accuracy)
from mathllm.model import MathTransformer
from mathllm.tokenizer import TOKENIZER
from mathllm.training_mode import TrainingMode, get_mode

ROOT = Path(__file__).resolve().parent.parent


EXAMPLES = [make_example(ops) for ops in [(658, 189), (12, 34), (99, 21), (3, 5), (5, 7, 9)]]


class TableMode(TrainingMode):
    """Teacher forcing whose generation is a table, prompt -> completion (the model is never run)."""

    def __init__(self, answers):
        super().__init__()
        self.answers = answers

    def generate(self, model, prompts, **kwargs):
        return [self.answers[p] for p in prompts]


def test_a_perfect_model_scores_one_and_a_wrong_answer_is_counted():
    truth = {ex["prompt"]: ex["text"][len(ex["prompt"]):] for ex in EXAMPLES}
    model = MathTransformer.from_preset("tiny")
    perfect = evaluate_examples(model, EXAMPLES, mode=TableMode(truth))
    assert perfect["exact_match"] == 1.0 and perfect["think_exact"] == 1.0 and perfect["num_with_think"] == 4
    assert exact_match_texts(model, [ex["text"] for ex in EXAMPLES], mode=TableMode(truth)) == 1.0

    wrong = dict(truth)
    wrong["12+34="] = "<think>2+4=6 1+3=4</think>47<end>"  # right trace, wrong answer
    wrong["99+21="] = "<think>9+1=10 9+2=11</think>120<end>"  # dropped carry in the trace, right answer
    res = evaluate_examples(model, EXAMPLES, mode=TableMode(wrong))
    assert res["exact_match"] == pytest.approx(4 / 5) and res["think_exact"] == pytest.approx(3 / 4)
    assert res["by_num_carries"]["0"] == {"exact_match": 0.5, "count": 2}  # 12+34 and 3+5 have no carry
    assert res["by_num_operands"]["3"] == {"exact_match": 1.0, "count": 1}
    assert [f["prompt"] for f in res["failures"]] == ["12+34="]
    assert exact_match_texts(model, [ex["text"] for ex in EXAMPLES], mode=TableMode(wrong)) == pytest.approx(4 / 5)
    report = format_report(res)
    assert "exact match     0.8000" in report and "think exact     0.7500" in report
    assert report.splitlines()[0] == "mode            teacher"  # the mode line is always there


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
    save_model(MathTransformer.from_preset("tiny"), tmp_path / "ckpt")
    out = tmp_path / "results.json"
    proc = _evaluate_cli("--checkpoint", str(tmp_path / "ckpt"), "--data-dir", str(tiny_dataset), "--limit", "50",
                         "--output-file", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "exact match" in proc.stdout and json.loads(out.read_text())["num_examples"] == 50


def test_cli_errors_name_the_problem(tiny_dataset, tmp_path):
    save_model(MathTransformer.from_preset("tiny"), tmp_path / "ckpt")
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


def test_answer_only_token_accuracy_scores_the_answer_and_never_a_pause():
    text = "12+34=<think>2+4=6 1+3=4</think>46<end>"  # targets 18, 19, 20 are 4, 6, <end>
    assert token_accuracy(_Oracle(text, wrong_positions=[5, 6, 17]), [text], answer_only=True) == 1.0
    assert token_accuracy(_Oracle(text, wrong_positions=[18]), [text], answer_only=True) == pytest.approx(2 / 3)
    paused = "12+34=<pause><pause>46<end>"  # targets 5, 6 are the pauses
    assert token_accuracy(_Oracle(paused, wrong_positions=[5, 6]), [paused], answer_only=True) == 1.0
    assert token_accuracy(_Oracle(paused, wrong_positions=[5, 6]), [paused]) == pytest.approx(3 / 5)
    assert token_accuracy(_Oracle(paused, wrong_positions=[7]), [paused], answer_only=True) == pytest.approx(2 / 3)


def test_a_model_is_used_in_its_own_mode():
    model = MathTransformer.from_preset("tiny").eval()
    pause = get_mode("pause", think_tokens="2")
    assert model_and_mode(model)[0] is model and model_and_mode(model)[1].name == "teacher"
    assert model_and_mode(model, pause) == (model, pause)
    trained = TrainedModel(model, pause, None)
    assert model_and_mode(trained) == (model, pause)
    assert model_and_mode(trained, get_mode("pause", think_tokens="2"))[1] is pause  # the same settings: fine
    with pytest.raises(ValueError, match="trained in mode"):
        model_and_mode(trained, get_mode("pause", think_tokens="3"))
    (completion,) = generate_completions(trained, ["12+34="], max_new_tokens=3)
    assert completion.startswith("<pause><pause>") and not completion.startswith("<pause>" * 3)
    assert generate_completions(model, ["12+34="], 3, mode=pause) == [completion]


@pytest.mark.parametrize("mode, think_exact", [
    (get_mode("answer-only"), None), (get_mode("pause", think_tokens="3"), None),
    (get_mode("gumbel", think_tokens="2"), None), (get_mode("internalize"), 0.0), (get_mode("teacher"), 0.0),
])
def test_results_say_which_mode_and_format_they_measure(mode, think_exact):
    torch.manual_seed(0)
    model = MathTransformer.from_preset("tiny")
    res = evaluate_examples(TrainedModel(model, mode, None), EXAMPLES)
    assert res["mode"] == mode.name and res["token_accuracy_format"] == mode.description
    assert res["think_exact"] == think_exact and 0 <= res["token_accuracy"] <= 1
    report = format_report(res)
    assert report.splitlines()[0] == f"mode            {mode.name}" and mode.description in report
    assert ("think exact" in report) == (think_exact is not None)


def test_drafts_do_not_change_what_is_generated():
    torch.manual_seed(1)
    model = MathTransformer.from_preset("tiny").eval()
    prompts = [ex["prompt"] for ex in EXAMPLES]
    truths = [ex["text"][len(ex["prompt"]):] for ex in EXAMPLES]
    plain = generate_completions(model, prompts, 20)
    assert generate_completions(model, prompts, 20, references=truths) == plain


def test_evaluate_split_reads_the_file_and_records_it(tmp_path):
    paths = write_dataset(generate_dataset(num_examples=100, max_digits=2, seed=1), tmp_path / "data")
    model = MathTransformer.from_preset("tiny")
    res = evaluate_split(model, paths["test"], limit=7, device="cpu")
    assert res["num_examples"] == 7 and res["data_path"] == str(paths["test"]) and res["mode"] == "teacher"
    pause = evaluate_split(TrainedModel(model, get_mode("pause", think_tokens="1"), None), paths["test"], limit=3)
    assert pause["mode"] == "pause" and pause["num_examples"] == 3


MIXED = [make_example(ops, "cot", op) for ops, op in [((658, 189), "sub"), ((7, 3), "sub"), ((12, 34), "mul"),
                                                       ((7, 1), "mul"), ((99, 21), "add")]]


def test_results_are_broken_down_by_operation_and_borrows():
    truth = {ex["prompt"]: ex["text"][len(ex["prompt"]):] for ex in MIXED}
    wrong = dict(truth, **{"12*34=": "<think>2*4=8 1*4=4 48 2*3+4=10 1*3+0+1=4</think>418<end>"})
    res = evaluate_examples(MathTransformer.from_preset("tiny"), MIXED, mode=TableMode(wrong))
    assert res["by_operation"] == {"add": {"exact_match": 1.0, "count": 1}, "sub": {"exact_match": 1.0, "count": 2},
                                   "mul": {"exact_match": 0.5, "count": 2}}
    assert res["by_num_borrows"] == {"0": {"exact_match": 1.0, "count": 1}, "2": {"exact_match": 1.0, "count": 1}}
    # addition and multiplication both count carries: in one file their cells are told apart by the operator
    assert res["by_num_carries"] == {"+2": {"exact_match": 1.0, "count": 1}, "*0": {"exact_match": 1.0, "count": 1},
                                     "*1": {"exact_match": 0.0, "count": 1}}
    assert res["by_stratum"]["2*2"] == {"exact_match": 0.0, "count": 1} and "3-3" in res["by_stratum"]
    report = format_report(res)
    assert "by_operation    add: 1.000 (n=1)  sub: 1.000 (n=2)  mul: 0.500 (n=2)" in report
    only_mul = evaluate_examples(MathTransformer.from_preset("tiny"), MIXED[2:4], mode=TableMode(truth))
    assert set(only_mul["by_num_carries"]) == {"0", "1"}  # one operation: plain counts, as for addition
    additions = evaluate_examples(MathTransformer.from_preset("tiny"), EXAMPLES, mode=TableMode(
        {ex["prompt"]: ex["text"][len(ex["prompt"]):] for ex in EXAMPLES}))
    assert "by_operation" not in format_report(additions)  # nothing to break down


def _run_with_record(path, fmt):
    save_model(MathTransformer.from_preset("tiny"), path)
    record = {"config": {"mode": "teacher"},
              "data_meta": {"arguments": {"max_digits": 3, "operation": "sub,mul", "fmt": fmt}}}
    (path / "training_config.json").write_text(json.dumps(record))
    return path


def test_cli_evaluates_a_list_of_prompts_and_answers_in_the_checkpoints_format(tmp_path):
    run = _run_with_record(tmp_path / "run", "plain")
    problems = tmp_path / "mine.jsonl"
    problems.write_text('{"prompt": "658-189=", "answer": 469, "why": "homework"}\n{"prompt": "12*34=", "answer": 408}\n'
                        '{"prompt": "7*8", "answer": 56}\n')
    out, predictions = tmp_path / "results.json", tmp_path / "predictions.jsonl"
    proc = _evaluate_cli("--checkpoint", str(run), "--data-path", str(problems), "--output-file", str(out),
                         "--predictions-file", str(predictions), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["num_examples"] == 3 and results["rendered_format"] == "plain"
    assert results["num_with_think"] == 0  # rendered as the checkpoint's plain data, without a trace
    assert {k: v["count"] for k, v in results["by_operation"].items()} == {"sub": 1, "mul": 2}
    assert set(results["by_stratum"]) == {"3-3", "2*2", "1*1"}
    assert [json.loads(line)["operation"] for line in predictions.read_text().splitlines()] == ["sub", "mul", "mul"]
    cot = _evaluate_cli("--checkpoint", str(run), "--data-path", str(problems), "--format", "cot", "--limit", "1",
                        "--output-file", str(out))
    assert cot.returncode == 0 and json.loads(out.read_text())["num_with_think"] == 1


def test_cli_names_the_line_of_a_wrong_answer_or_a_prompt_that_does_not_parse(tmp_path):
    run = _run_with_record(tmp_path / "run", "cot")
    problems = tmp_path / "mine.jsonl"
    for content, message in [('{"prompt": "12*34=", "answer": 418}', "answer 418 is wrong for 12*34="),
                             ('{"prompt": "12:34=", "answer": 1}', "prompt '12:34=' does not parse")]:
        problems.write_text('{"prompt": "1-1=", "answer": 0}\n' + content + "\n")
        proc = _evaluate_cli("--checkpoint", str(run), "--data-path", str(problems))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{problems}:2: {message}" in proc.stderr
