"""The set-up files agree with each other and with the README, so a fresh clone installs what it imports."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _environment_yml_pip_dependencies() -> list[str]:
    """The ``pip:`` list of environment.yml (a tiny reader: no PyYAML needed)."""
    deps, in_pip = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("- pip:"):
            in_pip = True
            continue
        if in_pip:
            if stripped.startswith("- "):
                deps.append(stripped[2:].strip())
            elif stripped and not stripped.startswith("#"):
                in_pip = False
    return deps


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    assert _environment_yml_pip_dependencies() == _pyproject_dependencies()


def test_environment_yml_pins_python_311():
    assert re.search(r"^\s*-\s*python=3\.11\s*$", (ROOT / "environment.yml").read_text(), re.M)


def test_torch_requirement_accepts_the_local_cpu_build_and_an_existing_cuda_build():
    torch_req = next(d for d in _pyproject_dependencies() if re.match(r"torch\b", d))
    assert "==" not in torch_req, "an exact torch pin would replace a user's CUDA torch"
    assert re.fullmatch(r"torch>=2\.\d+", torch_req)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert blocks, "README has no command block"
    first_commands = [l.split(" #")[0].strip() for l in blocks[0].splitlines()
                      if l.strip() and not l.strip().startswith("#")]
    assert len(first_commands) == 2, f"README must open with exactly two commands, found {first_commands}"
    test_command = first_commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci, f".ci/run must call the README's test command {test_command!r}"


def test_every_imported_third_party_package_is_a_declared_dependency():
    declared = {re.split(r"[<>=!~\[ ]", d)[0].lower().replace("-", "_") for d in _pyproject_dependencies()}
    import_names = {"transformer_lens": "transformer_lens", "ipywidgets": "ipywidgets"}
    stdlib_and_own = {"mathllm", "__future__"}
    optional = {"wandb", "circuitsvis", "playwright", "IPython", "ipykernel"}  # guarded imports / come with jupyterlab
    import ast
    import sys

    found = set()
    for path in (ROOT / "mathllm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])

    third_party = {n for n in found if n not in sys.stdlib_module_names and n not in stdlib_and_own | optional}
    missing = {n for n in third_party if import_names.get(n, n).lower() not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
