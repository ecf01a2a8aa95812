"""scripts/looped_experiment.py (issue 16): the plan's runs train with the package's trainer, are measured on the fixed
chain sets, and land in one summary whose table aggregates the seeds; a finished run is read back, not retrained;
mathllm.depth.format_experiment prints that table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mathllm.depth import format_experiment

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


def _script():
    spec = importlib.util.spec_from_file_location("looped_experiment", ROOT / "scripts" / "looped_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_controls_share_the_block_and_differ_only_where_the_plan_says():
    script = _script()
    configs = {name: script.run_config(name, "add8", 0, 4, Path("d"), Path("o")) for name in script.DEFAULT_RUNS}
    looped, once = configs["looped-uniform"], configs["one-pass-uniform"]
    assert (looped.loops, once.loops) == (4, 1) and looped.d_model == once.d_model == 128
    assert configs["one-pass-uniform-flops"].max_steps == 4 * once.max_steps
    assert configs["untied-uniform"].n_layers == 4 * 2 and configs["untied-uniform"].loops == 1
    assert configs["trace-uniform"].mode == "teacher" and configs["gumbel-uniform"].mode == "gumbel"
    for name, cfg in configs.items():  # every run but the trace reference is answer-only: no labels, no warm start
        assert cfg.init_from is None and cfg.seed == 0 and cfg.data_dir == "d", name
        assert not cfg.mixes_teacher, name
    with pytest.raises(ValueError, match="unknown run"):
        script.run_config("looped-magic", "add8", 0, 4, Path("d"), Path("o"))


def test_two_seeds_of_two_runs_make_one_summary_and_a_rerun_reads_them_back(tmp_path, capsys):
    script = _script()
    summary = tmp_path / "looped_smoke.json"
    argv = ["--task", "smoke", "--runs", "looped-chains", "one-pass-chains", "--seeds", "0", "1",
            "--data-root", str(tmp_path / "data"), "--output-root", str(tmp_path / "runs"),
            "--summary", str(summary), "--per-k", "4", "--n-uniform", "12"]
    assert script.main(argv) == 0
    first = json.loads(summary.read_text())
    assert [(r["name"], r["seed"]) for r in first["runs"]] == [
        ("looped-chains", 0), ("looped-chains", 1), ("one-pass-chains", 0), ("one-pass-chains", 1)]
    looped = first["table"]["looped-chains"]
    assert looped["seeds"] == [0, 1] and looped["loops"] == 4 and looped["train_steps"] == 12
    values = [r["results"]["at_trained_loops"]["uniform"]["exact_match"] for r in first["runs"][:2]]
    assert looped["uniform"] == {"mean": sum(values) / 2, "min": min(values), "max": max(values)}
    assert "same_weights_L1_uniform" in looped and "same_weights_L1_uniform" not in first["table"]["one-pass-chains"]
    for run in first["runs"]:  # each run's results are measured on the fixed sets: uniform and every k of 0..3
        assert sorted(run["results"]["at_trained_loops"]["by_carry_chain"]) == ["0", "1", "2", "3"]
        assert (Path(run["output_dir"]) / "chain_results.json").is_file()
    assert first["table"]["looped-chains"]["parameters"] == first["table"]["one-pass-chains"]["parameters"]
    assert len(first["runs"][0]["results"]["per_iteration"]["uniform"]) == 8  # iterations 1..2L
    text = format_experiment(first)
    assert text.splitlines()[1].split()[:4] == ["looped-chains", "0,1", f"{looped['parameters']:,}", "4"]

    weights = (tmp_path / "runs" / "smoke" / "looped-chains-seed0" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert script.main(argv[:5] + ["--seeds", "1", "1"] + argv[8:]) == 0  # seed 1 again (twice): read back, seed 0 kept
    again = json.loads(summary.read_text())
    assert (tmp_path / "runs" / "smoke" / "looped-chains-seed0" / "model.safetensors").stat().st_mtime_ns == weights
    assert again["table"]["looped-chains"] == first["table"]["looped-chains"]
    assert again["earlier_commands"] == [first["command"]]


def test_multiplication_runs_are_measured_by_stratum(tmp_path):
    script = _script()
    cfg = script.run_config("looped-uniform", "mul3", 0, 4, Path("d"), Path("o"))
    assert cfg.curriculum_start == 1 and cfg.mode_settings == {"pad_operands": 3} and cfg.max_steps == 5000
    assert script.run_config("trace-uniform", "mul3", 0, 4, Path("d"), Path("o")).max_length == 192
    summary = tmp_path / "looped_mul.json"
    argv = ["--task", "smoke-mul", "--runs", "looped-uniform", "one-pass-uniform", "--seeds", "0", "--loops", "2",
            "--data-root", str(tmp_path / "data"), "--output-root", str(tmp_path / "runs"),
            "--summary", str(summary), "--per-k", "20", "--n-uniform", "30"]
    assert script.main(argv) == 0
    meta = json.loads((tmp_path / "data" / "looped_smoke-mul_uniform" / "meta.json").read_text())
    assert "mul" in json.dumps(meta)
    result = json.loads(summary.read_text())
    looped = result["runs"][0]["results"]
    assert looped["sets"]["per_stratum"] == 20 and looped["at_trained_loops"]["uniform"]["count"] == 30
    assert sorted(looped["at_trained_loops"]["by_stratum"]) == ["1*1", "1*2", "2*1", "2*2"]
    assert len(looped["per_iteration"]["2*2"]) == 4 and "at_one_loop" in looped  # iterations 1..2L; L = 1
    assert (tmp_path / "runs" / "smoke-mul" / "looped-uniform-seed0" / "strata_results.json").is_file()
    row = result["table"]["looped-uniform"]
    assert "worst_stratum" in row and "2*2" in row and "min_k" not in row
    assert "worst stratum" in format_experiment(result).splitlines()[0]
