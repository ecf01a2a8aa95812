"""Command-line plumbing shared by ``scripts/*.py``: flags from config dataclasses, experiment files, clean errors.

    >>> parser = training_parser()
    >>> cfg, _ = training_config(vars(parser.parse_args(["--no-wandb", "--batch-size", "8", "--mode", "pause",
    ...                                                    "--think-tokens", "4"])))
    >>> cfg.batch_size, cfg.mode, cfg.mode_settings
    (8, 'pause', {'think_tokens': '4'})
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
import typing
from typing import Any, Callable, Iterable

from mathllm.train import TrainConfig, config_from_file
from mathllm.training_mode import available_modes


def _field_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` lines of a dataclass body -> {name: comment}."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return comments


def _unwrap_optional(hint: Any) -> Any:
    """``int | None`` -> ``int``; anything else as it is."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def add_dataclass_arguments(parser, cls: type, suppress_defaults: bool = False, skip: Iterable[str] = ()) -> list[str]:
    """One ``--field-name`` flag per field of ``cls`` (booleans: ``--flag``, or ``--no-flag`` when they default to
    True). ``suppress_defaults``: a flag that is not given is absent from the parsed namespace, so that it does
    not override a config file. Returns the names added."""
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        base = _unwrap_optional(hints[f.name])
        if typing.get_origin(base) in (dict, list) or base in (dict, list):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs: dict[str, Any] = {"dest": f.name}
        if suppress_defaults:
            kwargs["default"] = argparse.SUPPRESS
        help_text = comments.get(f.name, "")
        if base is bool:
            if default:
                parser.add_argument("--no-" + f.name.replace("_", "-"), action="store_false",
                                    help=f"disable: {help_text}", **kwargs)
            else:
                parser.add_argument("--" + f.name.replace("_", "-"), action="store_true", help=help_text, **kwargs)
        else:
            if not suppress_defaults:
                kwargs["default"] = default
            parser.add_argument("--" + f.name.replace("_", "-"), type=base, help=f"{help_text} (default: {default})",
                                **kwargs)
        if not suppress_defaults:
            parser.set_defaults(**{f.name: default})
        added.append(f.name)
    return added


def build_parser_from_dataclass(cls: type, description: str | None = None,
                                suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with one flag per field of the dataclass ``cls``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, cls, suppress_defaults)
    return parser


def training_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``scripts/train.py``: ``--config FILE``, every ``TrainConfig`` field, and the settings of every
    registered mode (each flag once). Flags that are not given are absent from the result (see ``training_config``)."""
    parser = build_parser_from_dataclass(TrainConfig, description, suppress_defaults=True)
    parser.add_argument("--config", default=None,
                        help="an experiment file (configs/*.json) whose settings the other flags override")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete --output-dir (only if it holds a training run) and train from scratch")
    parser.add_argument("--use-gumbel", dest="use_gumbel", action="store_true",
                        help="the seed's flag: the same as --mode gumbel")
    parser.add_argument("--answer-slots", dest="answer_slots", action="store_true", default=argparse.SUPPRESS,
                        help="the same as --mode answer-slots (every answer digit read at once from <pause> slots)")
    seen: set[str] = set()
    for name, cls in available_modes().items():
        group = parser.add_argument_group(f"settings of --mode {name}")
        seen.update(add_dataclass_arguments(group, cls.Settings, suppress_defaults=True, skip=seen))
    return parser


def training_config(args: dict[str, Any]) -> tuple[TrainConfig, bool]:
    """``(TrainConfig, overwrite)`` from ``vars(training_parser().parse_args(...))``: the config file's settings (if
    any), then the flags given. Mode settings of a mode other than ``--mode`` are an error naming them."""
    args = dict(args)
    config_path, overwrite = args.pop("config", None), args.pop("overwrite", False)
    for flag, alias in (("use_gumbel", "gumbel"), ("answer_slots", "answer-slots")):
        if args.pop(flag, False) and args.setdefault("mode", alias) != alias:
            raise ValueError(f"--{flag.replace('_', '-')} contradicts --mode {args['mode']}")
    if config_path:
        return config_from_file(config_path, **args), overwrite
    return TrainConfig.from_dict(args), overwrite


def run_cli(main: Callable[[], int]) -> int:
    """Run a script's main; turn expected errors into one clear line instead of a traceback.

    Bad settings (ValueError), missing or unreadable files (OSError), malformed files (KeyError, JSON errors)
    all end the script with exit status 2 and one line on stderr. Set ``MATHLLM_DEBUG=1`` for the traceback.
    """
    if os.environ.get("MATHLLM_DEBUG"):
        return main()
    try:
        return main()
    except (ValueError, RuntimeError, NotImplementedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as err:  # a ValueError too, kept for clarity
        print(f"error: not valid JSON: {err}", file=sys.stderr)
        return 2
    except (OSError, KeyError) as err:
        what = err.strerror if isinstance(err, OSError) and err.strerror and err.filename else err
        where = f" {err.filename}" if isinstance(err, OSError) and err.filename else ""
        print(f"error ({type(err).__name__}):{where} {what}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--limit 0`` is an error, not an empty evaluation)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite float >= 0 (``--temperature nan`` is an error at start)."""
    value = float(text)
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


__all__ = ["add_dataclass_arguments", "build_parser_from_dataclass", "non_negative_float", "positive_int",
           "run_cli", "training_config", "training_parser"]
