"""Command-line plumbing shared by ``scripts/*.py``: flags from a config dataclass, clean errors.

    >>> from mathllm.train import TrainConfig
    >>> build_parser_from_dataclass(TrainConfig).parse_args(["--no-wandb", "--batch-size", "8"]).batch_size
    8
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
import typing
from typing import Any, Callable


def _field_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` lines of a dataclass body -> {name: comment}."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return comments


def build_parser_from_dataclass(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """One ``--field-name`` flag per field. Booleans default False become ``--flag``; True become ``--no-flag``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = comments.get(f.name, "")
        hint = hints[f.name]
        if hint is bool:
            if f.default:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help=f"disable: {help_text}")
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            parser.set_defaults(**{f.name: f.default})
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if args else hint
        parser.add_argument(flag, dest=f.name, type=base, default=f.default,
                            help=f"{help_text} (default: {f.default})")
    return parser


def run_cli(main: Callable[[], int]) -> int:
    """Run a script's main; turn expected errors into one clear line instead of a traceback.

    Set ``MATHLLM_DEBUG=1`` to see the full traceback instead.
    """
    if os.environ.get("MATHLLM_DEBUG"):
        return main()  # full tracebacks
    try:
        return main()
    except (FileNotFoundError, ValueError, RuntimeError, NotImplementedError) as err:
        name = type(err).__name__
        print(f"error: {err}" if name in ("ValueError", "RuntimeError") else f"error ({name}): {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__: list[Any] = ["build_parser_from_dataclass", "run_cli"]
