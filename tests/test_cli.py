"""Command-line plumbing (mathllm.cli): flags made from the config dataclasses and the modes' settings, experiment
files that flags override, the seed's --use-gumbel alias, and one clear line (exit 2) for every expected error."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from mathllm.cli import (non_negative_float, positive_int, run_cli, training_config, training_parser)
from mathllm.train import TrainConfig
from mathllm.training_mode import available_modes

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> tuple[TrainConfig, bool]:
    return training_config(vars(training_parser().parse_args(list(argv))))


def test_every_config_field_and_every_mode_setting_is_a_flag_once():
    parser = training_parser()
    dests = [a.dest for a in parser._actions]
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "mode_settings"]
    settings = {s for cls in available_modes().values() for s in cls.setting_names()}
    assert set(fields) | settings | {"config", "overwrite", "use_gumbel", "answer_slots", "help"} == set(dests)
    assert len(dests) == len(set(dests))  # think_tokens (pause and gumbel) is one flag
    help_text = parser.format_help()
    assert "--no-wandb" in help_text and "--fp16" in help_text and "--think-tokens" in help_text
    assert "settings of --mode gumbel" in help_text


def test_flags_not_given_leave_the_defaults():
    cfg, overwrite = parse()
    assert cfg == TrainConfig() and not overwrite
    cfg, overwrite = parse("--batch-size", "8", "--no-wandb", "--fp16", "--overwrite")
    assert (cfg.batch_size, cfg.wandb, cfg.fp16, overwrite) == (8, False, True, True)


def test_mode_settings_go_into_mode_settings_and_must_belong_to_the_mode():
    cfg, _ = parse("--mode", "pause", "--think-tokens", "4")
    assert cfg.mode == "pause" and cfg.mode_settings == {"think_tokens": "4"}
    with pytest.raises(ValueError, match=r"unknown training config fields: \['think_tokens'\].*--mode teacher"):
        parse("--think-tokens", "4")
    with pytest.raises(ValueError, match="gumbel_temperature"):
        parse("--mode", "pause", "--gumbel-temperature", "2")


def test_use_gumbel_is_the_seeds_name_for_the_gumbel_mode():
    cfg, _ = parse("--use-gumbel", "--think-tokens", "3")
    assert cfg == TrainConfig(mode="gumbel", mode_settings={"think_tokens": "3"})
    assert parse("--use-gumbel", "--mode", "gumbel")[0].mode == "gumbel"
    with pytest.raises(ValueError, match="--use-gumbel contradicts --mode pause"):
        parse("--use-gumbel", "--mode", "pause")


def test_flags_override_an_experiment_file(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"//": "why", "data": {"num_examples": 10}, "mode": "gumbel", "think_tokens": "6",
                                "batch_size": 4, "learning_rate": 0.01}))
    cfg, _ = parse("--config", str(path), "--batch-size", "16", "--think-tokens", "8")
    assert (cfg.batch_size, cfg.learning_rate, cfg.mode, cfg.mode_settings) == (16, 0.01, "gumbel",
                                                                                 {"think_tokens": "8"})
    cfg, _ = parse("--config", str(path))
    assert cfg.batch_size == 4 and cfg.mode_settings == {"think_tokens": "6"}
    with pytest.raises(FileNotFoundError, match="no config file"):
        parse("--config", str(tmp_path / "nowhere.json"))


def test_argument_types():
    assert positive_int("3") == 3 and non_negative_float("0") == 0.0
    for bad in ("0", "-2"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
            positive_int(bad)
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError, match="finite number"):
            non_negative_float(bad)


# --- run_cli: one line, exit 2 --------------------------------------------------------------------------------

def _raise(err: BaseException):
    def main() -> int:
        raise err
    return main


@pytest.mark.parametrize("err, expected", [
    (ValueError("--batch-size must be positive"), "error: --batch-size must be positive"),
    (RuntimeError("no training modes are registered"), "error: no training modes are registered"),
    (FileNotFoundError(2, "No such file or directory", "data/train.jsonl"),
     "error (FileNotFoundError): data/train.jsonl No such file or directory"),
    (PermissionError("denied"), "error (PermissionError): denied"),
    (KeyError("operands"), "error (KeyError): 'operands'"),
    (json.JSONDecodeError("Expecting value", "{", 1), "error: "),
])
def test_expected_errors_are_one_line_and_exit_2(err, expected, capsys, monkeypatch):
    monkeypatch.delenv("MATHLLM_DEBUG", raising=False)
    assert run_cli(_raise(err)) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(expected) and stderr.count("\n") == 1 and "Traceback" not in stderr


def test_run_cli_passes_the_exit_code_and_ctrl_c_is_130(capsys, monkeypatch):
    monkeypatch.delenv("MATHLLM_DEBUG", raising=False)
    assert run_cli(lambda: 0) == 0 and run_cli(lambda: 3) == 3
    assert run_cli(_raise(KeyboardInterrupt())) == 130 and capsys.readouterr().err == "interrupted\n"
    with pytest.raises(ZeroDivisionError):  # an unexpected error is a bug: its traceback is shown
        run_cli(_raise(ZeroDivisionError()))
    monkeypatch.setenv("MATHLLM_DEBUG", "1")
    with pytest.raises(ValueError):  # MATHLLM_DEBUG=1: the traceback of any error
        run_cli(_raise(ValueError("x")))


# --- scripts/train.py --config ----------------------------------------------------------------------------------

def run_script(name: str, *argv: str) -> int:
    """Run ``scripts/<name>.py``'s main in this process, as its command line would (errors -> exit code 2)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return run_cli(lambda: module.main(list(argv)))


def test_train_script_reads_an_experiment_file_and_flags_override_it(tiny_dataset, tmp_path, capsys):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"data": {"num_examples": 3000}, "data_dir": str(tiny_dataset),
                                "output_dir": str(tmp_path / "from_file"), "model_size": "tiny", "mode": "pause",
                                "think_tokens": "2", "batch_size": 8, "max_steps": 50, "wandb": False,
                                "progress": False, "evaluate_test": False, "eval_steps": 100, "logging_steps": 1}))
    out = tmp_path / "run"
    assert run_script("train", "--config", str(path), "--output-dir", str(out), "--max-steps", "2") == 0
    config = json.loads((out / "training_config.json").read_text())["config"]
    assert (config["max_steps"], config["batch_size"], config["mode"], config["mode_settings"]) == (
        2, 8, "pause", {"think_tokens": "2"})
    assert not (tmp_path / "from_file").exists()
    capsys.readouterr()
    assert run_script("train", "--config", str(tmp_path / "nowhere.json")) == 2
    assert "no config file" in capsys.readouterr().err
