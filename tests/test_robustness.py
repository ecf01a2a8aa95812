"""What a user's mistakes and a machine's accidents do (issue "A checkpoint you can trust"), end to end through the
scripts: SIGKILL at random moments, a truncated checkpoint and a torn log line still resume to bit-identical
weights; every bad setting is one line on stderr and a non-zero exit, never a traceback; nothing is pickled."""

from __future__ import annotations

import ast
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def script(name: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=timeout)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model-size", "tiny", "--data-dir", str(data), "--output-dir", str(out), "--batch-size", "16",
            "--max-steps", "60", "--save-steps", "4", "--save-total-limit", "3", "--logging-steps", "3",
            "--eval-steps", "1000", "--eval-examples", "8", "--learning-rate", "3e-3", "--warmup-steps", "5",
            "--no-wandb", "--no-progress", "--no-evaluate-test", "--seed", "5", "--threads", "1", *extra]


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    message = "\n".join(lines)
    for word in words:
        assert word in message, message


# ----------------------------------------------------------------------------------------------
# Fault injection
# ----------------------------------------------------------------------------------------------

def newest_step(run: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(steps, default=0)


@pytest.mark.slow
def test_killed_runs_with_damaged_files_resume_to_the_uninterrupted_weights(tiny_dataset, tmp_path):
    args = ["--max-steps", "300", "--save-steps", "10"]
    straight = script("train.py", *train_args(tiny_dataset, tmp_path / "straight", *args))
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "killed"
    rng = random.Random(1234)
    for _ in range(3):  # SIGKILL at a random moment after a new checkpoint: no handler runs
        seen = newest_step(run)
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "train.py"), *train_args(tiny_dataset, run, *args)],
                                cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while newest_step(run) <= seen and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere in a step, an append or a checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (run / "trainer_state.json").exists(), "the run finished before the kill; make it longer"
    newest = run / f"checkpoint-{newest_step(run)}"
    largest = max(newest.iterdir(), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])  # a disk that filled up
    with open(run / "logs" / "metrics.jsonl", "a") as f:  # a kill during the append
        f.write('{"step": 9999, "loss": 0.1')

    resumed = script("train.py", *train_args(tiny_dataset, run, *args))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{newest.name} is damaged and is skipped" in resumed.stderr
    assert "dropped a torn last line" in resumed.stderr
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bit-identical
    logged = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "loss" in m] == list(range(3, 301, 3))  # no line lost, none twice


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the problem, a non-zero exit, no traceback
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--logging-steps", "--eval-steps", "--save-steps", "--batch-size"])
def test_a_zero_step_or_batch_setting_is_refused(tiny_dataset, tmp_path, flag):
    proc = script("train.py", *train_args(tiny_dataset, tmp_path / "run", flag, "0"))
    one_line_error(proc, flag, "positive integer")
    assert not (tmp_path / "run").exists()


def test_an_empty_training_split_is_named(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.jsonl").write_text("")
    one_line_error(script("train.py", *train_args(data, tmp_path / "run")), "train.jsonl", "no examples")


def test_an_output_dir_that_is_a_file_is_named(tiny_dataset, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    one_line_error(script("train.py", *train_args(tiny_dataset, target)), str(target), "is a file")
    assert target.read_text() == "keep me"


def test_overwrite_leaves_a_folder_that_is_not_a_run_untouched(tiny_dataset, tmp_path):
    folder = tmp_path / "my_notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    one_line_error(script("train.py", *train_args(tiny_dataset, folder, "--overwrite")), "not a training run",
                   "refusing to delete")
    assert (folder / "thesis.tex").read_text() == "precious"


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = script("train.py", *train_args(tiny_dataset, out, "--max-steps", "4"))
    assert proc.returncode == 0, proc.stderr
    return out


def copy_run(run: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("model.safetensors", "config.json", "training_config.json"):
        (to / name).write_bytes((run / name).read_bytes())
    return to


def test_an_unknown_think_alphabet_in_a_run_record_is_named(finished_run, tiny_dataset, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    record = json.loads((run / "training_config.json").read_text())
    record["config"].update(mode="gumbel", mode_settings={"think_alphabet": "klingon"})
    (run / "training_config.json").write_text(json.dumps(record))
    proc = script("evaluate.py", "--checkpoint", str(run), "--data-dir", str(tiny_dataset))
    one_line_error(proc, "klingon", "--think-alphabet")


def test_a_huge_context_in_a_model_config_is_refused_at_once(finished_run, tiny_dataset, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["n_ctx"] = 100_000_000
    (run / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    proc = script("evaluate.py", "--checkpoint", str(run), "--data-dir", str(tiny_dataset))
    one_line_error(proc, "n_ctx")
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("limit", ["-3", "0"])
def test_a_limit_that_is_not_positive_is_refused(finished_run, tiny_dataset, limit):
    proc = script("evaluate.py", "--checkpoint", str(finished_run), "--data-dir", str(tiny_dataset),
                  "--limit", limit)
    one_line_error(proc, "--limit", "positive integer")


@pytest.mark.parametrize("flag, value", [("--max-new-tokens", "-1"), ("--temperature", "nan")])
def test_interactive_refuses_bad_settings_before_it_starts(finished_run, flag, value):
    proc = subprocess.run([sys.executable, str(SCRIPTS / "interactive.py"), "--checkpoint", str(finished_run), flag,
                           value], input="1+2\n", capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    one_line_error(proc, flag)
    assert "expression>" not in proc.stdout


def test_sweep_with_a_missing_configs_file_says_so(tmp_path):
    one_line_error(script("sweep.py", "--configs", str(tmp_path / "nope.json")), "nope.json")


@pytest.mark.parametrize("name", ["../../x", "/etc", ".hidden", ""])
def test_sweep_refuses_run_names_that_leave_the_runs_folder(tmp_path, name):
    configs = tmp_path / "sweep.json"
    configs.write_text(json.dumps({name: {"max_steps": 1}}))
    proc = script("sweep.py", "--configs", str(configs), "--runs-dir", str(tmp_path / "runs"))
    one_line_error(proc, "plain folder name")
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------
# Nothing pickled
# ----------------------------------------------------------------------------------------------

def test_no_pickle_anywhere_in_the_package_or_the_scripts():
    found = []
    for path in [*(ROOT / "mathllm").rglob("*.py"), *SCRIPTS.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("save", "load") and \
                    isinstance(node.value, ast.Name) and node.value.id == "torch":
                found.append(f"{path.name}:{node.lineno} torch.{node.attr}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.name}:{node.lineno} import {n}" for n in names if n and n.split(".")[0] in
                          ("pickle", "cPickle", "dill", "joblib")]
    assert not found, found
