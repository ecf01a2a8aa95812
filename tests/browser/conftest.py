"""Browser tests (JupyterLab in headless Chromium) run only when asked for with ``-m browser``.

    bash scripts/install_browser.sh                      # once: Debian's chromium + the playwright package
    .venv/bin/python -m pytest -m browser tests/browser  # the browser tests alone

One mechanism decides: the ``-m`` expression. Without ``-m`` naming ``browser`` (for example the plain
``pytest tests`` of scripts/test.sh), every test marked ``browser`` is skipped with a reason saying how to run
it, and nothing here starts JupyterLab or Chromium. With ``-m browser`` they run; if Chromium or playwright
is missing they skip with a reason naming what is missing and the install command.

Fixtures: ``jupyter_lab`` (session: one JupyterLab server serving the repo), ``browser`` (session: one
Chromium), ``nb_page`` (per test: a fresh browser context + page with its console collected; the page is
closed and every kernel stopped afterwards). All of them clean up in ``finally`` blocks, also when a test fails.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jupyter_harness as jh  # noqa: E402

FAILURE_SHOTS = Path(os.environ.get("MATHLLM_BROWSER_FAILURE_DIR", "/tmp/mathllm-browser-failures"))


def browser_tests_requested(config: pytest.Config) -> bool:
    """True when the -m expression names the browser marker (and does not negate it)."""
    markexpr = config.getoption("markexpr", default="") or ""
    return bool(re.search(r"\bbrowser\b", markexpr)) and not re.search(r"\bnot\s+browser\b", markexpr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if browser_tests_requested(config):
        return
    skip = pytest.mark.skip(reason="browser test: run it with `pytest -m browser tests/browser`")
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)  # lets nb_page know whether the test failed


@pytest.fixture(scope="session")
def jupyter_lab():
    missing = jh.missing_browser_requirements()
    if missing:
        pytest.skip(f"browser test needs {' and '.join(missing)}; {jh.INSTALL_HINT}")
    # MATHLLM_SMOKE (set by scripts/test.sh) is removed: the playground must load the real, shipped model,
    # not the smoke-test stand-in, since the test checks its answer.
    lab = jh.JupyterLab(root_dir=jh.ROOT, env={"MATHLLM_SMOKE": None})
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def browser(jupyter_lab):
    with jh.chromium() as b:
        yield b


@pytest.fixture
def nb_page(request, browser, jupyter_lab):
    """A fresh page (own context: no state shared between tests) and the ConsoleLog collecting its errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        log = jh.ConsoleLog().attach(page)
        yield page, log
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            FAILURE_SHOTS.mkdir(parents=True, exist_ok=True)
            shot = FAILURE_SHOTS / (re.sub(r"[^\w.-]+", "_", request.node.name) + ".png")
            try:
                page.screenshot(path=str(shot))
                print(f"\nscreenshot of the failed page: {shot}\nJupyterLab log tail:\n{jupyter_lab.log_tail(2000)}")
            except Exception as exc:  # the page may be gone
                print(f"\n(no screenshot of the failed page: {exc})")
    finally:
        try:
            context.close()
        finally:
            jupyter_lab.shutdown_all_sessions()
