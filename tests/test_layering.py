"""The package's structure, read from its import statements: no cycles, later layers import earlier ones only,
no branching on a training mode's name outside ``mathllm/modes/``, and scripts that use the installed package.

Every ``import`` statement counts, also those inside functions. A module's *level* is the first notebook that
imports it; a module may import (directly or through others) only modules whose level is not higher than its own,
as LLMs-from-scratch's ``ch05.py`` builds on ``ch04``: the notebooks' order is the package's order.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mathllm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(tree: ast.AST) -> set[str]:
    """The mathllm modules an AST imports, anywhere in it (``from mathllm import tokenizer`` is the module
    ``mathllm.tokenizer``; ``from mathllm.data import x`` is ``mathllm.data``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mathllm")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "mathllm":
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
    return {m for m in found if m in MODULES}


GRAPH = {name: imported_modules(ast.parse(path.read_text())) - {name} for name, path in MODULES.items()}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def notebook_levels() -> dict[str, int]:
    """Each mathllm module imported by a notebook's code -> the number of the first such notebook."""
    levels: dict[str, int] = {}
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        number = int(nb.name[:2])
        cells = json.loads(nb.read_text())["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for module in imported_modules(ast.parse(source)):
            levels.setdefault(module, number)
    return levels


def test_the_graph_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from mathllm.data import load_split\n    import mathllm.text\n")
    assert imported_modules(tree) == {"mathllm.data", "mathllm.text"}


def test_no_import_cycle():
    cycles = [name for name in GRAPH if name in reachable(name)]
    path = []
    if cycles:  # name one cycle for the message
        start = cycles[0]
        path, node = [start], start
        while True:
            node = next(n for n in GRAPH[node] if start in reachable(n) or n == start)
            if node == start:
                break
            path.append(node)
    assert not cycles, f"import cycle: {' -> '.join(path + [path[0]] if path else [])}"


def test_later_layers_import_earlier_ones_only():
    levels = notebook_levels()
    assert levels["mathllm.data"] == 1 and levels["mathllm.train"] == 2, levels
    violations = []
    for module, level in levels.items():
        for dep in reachable(module):
            if levels.get(dep, 0) > level:
                violations.append(f"{module} (notebook {level:02d}) imports {dep} (first used in notebook "
                                  f"{levels[dep]:02d})")
    assert not violations, "\n".join(violations)


def test_the_modes_sit_on_top_of_training_and_evaluation():
    modes = {m for m in MODULES if m.startswith("mathllm.modes")}
    for module in ("mathllm.train", "mathllm.evaluate", "mathllm.checkpoints", "mathllm.playground",
                   "mathllm.training_mode", "mathllm.batches", "mathllm.generate"):
        assert not reachable(module) & modes, f"{module} imports {sorted(reachable(module) & modes)}"
    for mode in ("mathllm.modes.teacher", "mathllm.modes.gumbel", "mathllm.modes.pause"):
        assert "mathllm.training_mode" in reachable(mode), f"{mode} does not build on the training-mode interface"


def mode_names() -> set[str]:
    from mathllm.training_mode import available_modes

    return set(available_modes())


def comparisons_with_mode_names(tree: ast.AST, names: set[str]) -> list[int]:
    """Line numbers of ``x == "gumbel"``, ``x in ("teacher", "pause")`` and the like."""
    def strings(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(strings(o) & names for o in operands):
                lines.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and strings(node.value) & names:
            lines.append(node.lineno)
    return lines


def test_the_checker_finds_a_comparison_with_a_mode_name():
    tree = ast.parse("if cfg.mode == 'gumbel': pass\nok = mode in ('teacher', 'x')\nfine = name == 'other'\n")
    assert comparisons_with_mode_names(tree, {"gumbel", "teacher"}) == [1, 2]


def test_no_comparison_with_a_mode_name_outside_the_modes_package():
    names = mode_names()
    assert {"teacher", "gumbel"} <= names
    files = [p for p in PACKAGE.rglob("*.py") if "modes" not in p.relative_to(PACKAGE).parts[:1]]
    files += sorted((ROOT / "scripts").glob("*.py"))
    found = [f"{p.relative_to(ROOT)}:{line}" for p in files
             for line in comparisons_with_mode_names(ast.parse(p.read_text()), names)]
    assert not found, f"comparisons with a mode's name: {found}"


@pytest.mark.parametrize("script", sorted((ROOT / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_scripts_use_the_installed_package(script):
    tree = ast.parse(script.read_text())
    edits = [node.lineno for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
             and node.value.id == "sys"]
    assert not edits, f"{script.name} touches sys.path at lines {edits}"


def test_the_test_command_runs_the_doctests():
    assert re.search(r"--doctest-modules\s+mathllm", (ROOT / "scripts" / "test.sh").read_text())
