"""The notebooks are tested by nbval (scripts/test.sh), which compares each code cell's output with the committed
one unless the cell says ``# NBVAL_IGNORE_OUTPUT``. These tests keep that comparison meaningful: at most a quarter
of the code cells may be ignored, each with a one-line reason, and every notebook is committed with outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
MARKER = "NBVAL_IGNORE_OUTPUT"


def code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def ignored(source: str) -> bool:
    return MARKER in source


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 9, [p.name for p in NOTEBOOKS]


def test_at_most_a_quarter_of_code_cells_are_ignored_by_nbval():
    cells = [source for path in NOTEBOOKS for source in code_cells(path)]
    skipped = [source for source in cells if ignored(source)]
    assert len(skipped) <= len(cells) / 4, f"{len(skipped)} of {len(cells)} code cells carry {MARKER}"


def marker_problems(source: str) -> list[str]:
    """What is wrong with the cell's ``NBVAL_IGNORE_OUTPUT`` comment: nbval honours the marker only when the comment
    is the marker alone (``# NBVAL_IGNORE_OUTPUT: why`` is silently compared), so the reason goes on the next line."""
    lines = source.splitlines()
    problems = []
    for i, line in enumerate(lines):
        if MARKER not in line:
            continue
        if line.strip().lstrip("#").strip() != MARKER:
            problems.append(f"'{line.strip()}' is not the bare marker, which nbval ignores")
        reason = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if not reason.startswith("#") or len(reason.lstrip("# ")) < 10:
            problems.append(f"'{line.strip()}' has no one-line reason on the next line")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_ignored_cell_is_honoured_by_nbval_and_gives_its_reason(path):
    for source in code_cells(path):
        assert not marker_problems(source), f"{path.name}: {marker_problems(source)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_is_committed_with_the_outputs_of_a_run(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    executed = [c for c in code if c.get("execution_count")]
    assert len(executed) == len(code), f"{path.name}: {len(code) - len(executed)} code cells were never run"
    assert any(c.get("outputs") for c in code), f"{path.name} has no outputs"


def test_the_marker_check_catches_a_marker_nbval_would_not_see_and_one_without_reason():
    assert marker_problems("# NBVAL_IGNORE_OUTPUT\n# the timings differ from run to run\nx = 1") == []
    assert len(marker_problems("# NBVAL_IGNORE_OUTPUT: the timings differ from run to run\nx = 1")) == 2
    assert len(marker_problems("# NBVAL_IGNORE_OUTPUT\nx = 1")) == 1
    assert ignored("# NBVAL_IGNORE_OUTPUT\nx = 1") and not ignored("x = 1")
