"""Drive JupyterLab in headless Chromium: start a private JupyterLab server, open notebooks, run them.

Used by ``tests/browser`` (``pytest -m browser``); it can also be used by hand, from the repo root::

    import sys; sys.path.insert(0, "tests/browser")
    from jupyter_harness import JupyterLab, chromium, open_notebook
    with JupyterLab(root_dir=".") as lab, chromium() as browser:
        page = browser.new_page()
        open_notebook(page, lab, "notebooks/04_playground.ipynb")

Nothing here imports playwright at module level: without it the tests skip instead of failing to collect.

Isolation: the server gets its own temporary JUPYTER_CONFIG_DIR / JUPYTER_DATA_DIR / JUPYTER_RUNTIME_DIR /
JupyterLab settings and workspaces / IPYTHONDIR, so the user's settings, extensions config and kernelspecs
do not leak in, and it writes a few settings of its own there: autosave off (running the playground in the
browser must not write outputs into the repo's notebook), every cell rendered (no windowing, so every
output is in the DOM), and no news / update checks (no network, no toast).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]
# What the tests' JupyterLab serves: the repo, or (for developing the harness against a scratch notebook
# with a fake playground) the directory named by MATHLLM_BROWSER_ROOT, laid out like the repo (notebooks/...).
ROOT = Path(os.environ.get("MATHLLM_BROWSER_ROOT") or REPO).resolve()

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root in a container; Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = "install it with: bash scripts/install_browser.sh"

# JupyterLab user settings written into the private settings dir (see module docstring).
LAB_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


# --------------------------------------------------------------------------------------------------
# What is missing (for a clear skip reason)
# --------------------------------------------------------------------------------------------------


def missing_browser_requirements() -> list[str]:
    """What the browser tests need and this machine lacks, as readable strings (empty: all there)."""
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"Chromium ({CHROMIUM} not found)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append(f"the playwright Python package (not importable by {sys.executable})")
    return missing


# --------------------------------------------------------------------------------------------------
# The JupyterLab server
# --------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the server's child process: get SIGTERM when the test process dies, even by SIGKILL (Linux), so
    a killed pytest leaves no JupyterLab behind (on SIGTERM the server stops its kernels and exits)."""
    with contextlib.suppress(Exception):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """A private JupyterLab server for one test session; a context manager that always cleans up.

    ``root_dir`` is what the server serves (the repo for the tests). The server runs
    ``python -m jupyter lab`` with ``python`` (default: this interpreter), so its kernels use the same
    environment as the tests. ``env`` entries are added to the server's (and so the kernels') environment;
    a value of ``None`` removes the variable.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike,
        python: str = sys.executable,
        env: dict[str, str | None] | None = None,
        startup_timeout: float = 90.0,
    ):
        self.root_dir = Path(root_dir).resolve()
        self.python = python
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.token = secrets.token_hex(24)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.tmp: Path | None = None
        self.log_path: Path | None = None
        self._log_file = None

    # -- URLs and REST ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, rel_path: str) -> str:
        """The URL that opens ``rel_path`` (relative to root_dir) in a fresh JupyterLab workspace."""
        return f"{self.base_url}/lab/tree/{urllib.request.pathname2url(rel_path)}?reset&token={self.token}"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def log_tail(self, n_chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace")
        return text[-n_chars:]

    def kernel_for(self, rel_path: str) -> dict | None:
        """The kernel model ({id, execution_state, ...}) of the session whose notebook is ``rel_path``."""
        for session in self.api("GET", "/api/sessions"):
            if session.get("path") == rel_path and session.get("kernel"):
                return session["kernel"]
        return None

    def shutdown_all_sessions(self) -> None:
        """Stop every kernel (between tests, so that one notebook's kernel does not outlive its test)."""
        with contextlib.suppress(Exception):
            for session in self.api("GET", "/api/sessions"):
                with contextlib.suppress(Exception):
                    self.api("DELETE", f"/api/sessions/{session['id']}")
        with contextlib.suppress(Exception):
            for kernel in self.api("GET", "/api/kernels"):
                with contextlib.suppress(Exception):
                    self.api("DELETE", f"/api/kernels/{kernel['id']}")

    # -- start / stop ----------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        assert self.tmp is not None
        env = dict(os.environ)
        for var in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTERLAB_DIR", "JUPYTER_TOKEN", "PYTHONSTARTUP"):
            env.pop(var, None)
        dirs = {
            "JUPYTER_CONFIG_DIR": "config",
            "JUPYTER_DATA_DIR": "data",
            "JUPYTER_RUNTIME_DIR": "runtime",
            "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
            "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
            "IPYTHONDIR": "ipython",
        }
        for var, name in dirs.items():
            path = self.tmp / name
            path.mkdir(parents=True, exist_ok=True)
            env[var] = str(path)
        for var, value in self.extra_env.items():
            if value is None:
                env.pop(var, None)
            else:
                env[var] = value
        return env

    def _write_lab_settings(self) -> None:
        assert self.tmp is not None
        for plugin, settings in LAB_SETTINGS.items():
            path = self.tmp / "lab-settings" / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))

    def start(self) -> "JupyterLab":
        self.tmp = Path(tempfile.mkdtemp(prefix="mathllm-jupyterlab-"))
        env = self._environment()
        self._write_lab_settings()
        self.port = free_port()
        self.log_path = self.tmp / "server.log"
        self._log_file = open(self.log_path, "wb")
        cmd = [
            self.python, "-m", "jupyter", "lab",
            "--no-browser",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--allow-root",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() can signal the whole group
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with code {self.proc.returncode} while starting; its log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                last_error = exc
            time.sleep(0.25)
        raise TimeoutError(
            f"JupyterLab not ready after {self.startup_timeout:.0f} s ({last_error}); its log:\n{self.log_tail()}"
        )

    def _our_kernel_pids(self) -> list[int]:
        """Kernels this server started: their command line names a connection file in our private runtime
        dir (jupyter_client starts kernels in their own session, so they are not in the server's group)."""
        if self.tmp is None:
            return []
        marker = str(self.tmp / "runtime").encode()
        pids = []
        for proc_dir in Path("/proc").glob("[0-9]*"):
            try:
                if marker in (proc_dir / "cmdline").read_bytes():
                    pids.append(int(proc_dir.name))
            except (OSError, ValueError):
                continue
        return [p for p in pids if p != os.getpid()]

    def stop(self) -> None:
        """Stop the kernels, then the server's process group; never raises. Safe to call twice."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.shutdown_all_sessions()
            with contextlib.suppress(Exception):  # graceful: the server stops what is left and exits
                self.api("POST", "/api/shutdown", timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        if proc is not None:  # the group may still hold children of an already-exited server
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in self._our_kernel_pids():  # leftover kernels, by pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.proc = None
        if self._log_file is not None:
            with contextlib.suppress(Exception):
                self._log_file.close()
            self._log_file = None
        if self.tmp is not None:
            kept = os.environ.get("MATHLLM_KEEP_BROWSER_TMP")
            if not kept:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "JupyterLab":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def chromium(headless: bool = True) -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (playwright's own browser download is not used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=headless, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            with contextlib.suppress(Exception):
                browser.close()


# Console messages that are known to be harmless, each with why. Anything else of type "error" fails a test.
HARMLESS_CONSOLE_ERRORS: list[tuple[str, str]] = [
    (r"favicon", "the browser asks for /favicon.ico, which the server may not have"),
    (r"news|jupyter\.org/assets/feed", "JupyterLab's news feed (disabled in our settings; offline anyway)"),
]


@dataclass
class ConsoleLog:
    """Collects the page's console errors and uncaught exceptions; ``errors`` leaves out known noise."""

    messages: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> "ConsoleLog":
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.page_errors.append(f"pageerror: {exc}"))
        return self

    def _on_console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        location = msg.location or {}
        text = f"console.error: {msg.text} ({location.get('url', '')}:{location.get('lineNumber', '')})"
        if any(re.search(pattern, text, re.I) for pattern, _why in HARMLESS_CONSOLE_ERRORS):
            self.ignored.append(text)
        else:
            self.messages.append(text)

    @property
    def errors(self) -> list[str]:
        return self.page_errors + self.messages


# --------------------------------------------------------------------------------------------------
# Notebooks in the page
# --------------------------------------------------------------------------------------------------

# The notebook panel of the (one) open notebook; JupyterLab 4 DOM.
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"
CODE_CELL = f"{NOTEBOOK} .jp-Notebook .jp-CodeCell"
WIDGET_ERROR_TEXT = re.compile(r"Error displaying widget|model not found|widget model not found", re.I)


def notebook_cells(nb_path: Path) -> list[dict]:
    return json.loads(Path(nb_path).read_text())["cells"]


def open_notebook(page: Any, lab: JupyterLab, rel_path: str, timeout_ms: float = 60_000) -> None:
    """Open ``rel_path`` and wait until its cells (all of them: windowing is off) are in the DOM."""
    page.goto(lab.lab_url(rel_path), wait_until="domcontentloaded", timeout=timeout_ms)
    page.wait_for_selector(f"{NOTEBOOK} .jp-Notebook .jp-Cell", state="attached", timeout=timeout_ms)
    n_cells = len(notebook_cells(lab.root_dir / rel_path))
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length >= n",
        arg=[f"{NOTEBOOK} .jp-Notebook .jp-Cell", n_cells],
        timeout=timeout_ms,
    )


def wait_kernel_idle(page: Any, lab: JupyterLab, rel_path: str, timeout_s: float = 120.0) -> None:
    """Wait until the notebook's kernel is started and idle, both on the server and in the page.

    Running cells before that does nothing (seen here: Shift+Enter before the kernel is ready is lost).
    """
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        kernel = lab.kernel_for(rel_path)
        state = kernel and kernel.get("execution_state")
        if state == "idle":
            break
        time.sleep(0.25)
    else:
        raise TimeoutError(f"kernel of {rel_path} not idle after {timeout_s:.0f} s (last state: {state})")
    # The toolbar's kernel status indicator; data-status is "idle" once the page's kernel connection is up.
    page.wait_for_selector(
        f"{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status='idle']",
        timeout=max(1.0, deadline - time.monotonic()) * 1000,
    )


def run_all_cells(page: Any) -> None:
    """Run → Run All Cells, through the menu bar as a user would."""
    page.click(f"{NOTEBOOK} .jp-Notebook")  # focus the notebook so the Run menu's commands are enabled
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def wait_all_cells_executed(page: Any, n_code_cells: int, timeout_s: float = 300.0) -> None:
    """Wait until every code cell shows an execution count ``[n]:`` (none ``[ ]:`` or ``[*]:``).

    Fails at once with the traceback when a cell raised (Run All stops there, so the rest would never run).
    """
    js = """sel => [...document.querySelectorAll(sel + ' .jp-InputArea-prompt')].map(p => p.textContent.trim())"""
    deadline = time.monotonic() + timeout_s
    prompts: list[str] = []
    while time.monotonic() < deadline:
        prompts = page.evaluate(js, CODE_CELL)
        if len(prompts) >= n_code_cells and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
            return
        if "[*]:" not in prompts:
            errors = cell_errors(page)
            if errors:
                raise AssertionError("a cell raised while running all cells:\n" + "\n\n".join(errors))
        page.wait_for_timeout(250)
    raise TimeoutError(f"not every code cell ran within {timeout_s:.0f} s; the prompts are {prompts}")


def cell_errors(page: Any) -> list[str]:
    """Text of outputs that are Python tracebacks (an error output renders as stderr with a traceback)."""
    texts = page.eval_on_selector_all(
        f"{NOTEBOOK} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
        "els => els.map(e => e.innerText)",
    )
    return [t for t in texts if re.search(r"Traceback|^Cell In\[\d+\]|^-{20,}", t, re.M)]


def rendering_problems(page: Any, nb_path: Path) -> list[str]:
    """What is wrong with how the open notebook renders: widget errors, broken images, missing outputs."""
    problems = []
    body = page.inner_text(NOTEBOOK)
    for m in WIDGET_ERROR_TEXT.finditer(body):
        problems.append(f"widget error in the page: {body[max(0, m.start() - 80): m.end() + 80]!r}")
    # Images: wait until every <img> has finished loading (data: URIs are quick) before judging them.
    with contextlib.suppress(Exception):
        page.wait_for_function(
            "sel => [...document.querySelectorAll(sel + ' img')].every(i => i.complete)", arg=NOTEBOOK, timeout=15_000
        )
    broken = page.eval_on_selector_all(
        f"{NOTEBOOK} img",
        # An <img> with no src at all is a renderer's placeholder (the plotly mime renderer leaves one in every
        # figure), not a picture that failed to load; every image that names a source must load.
        "imgs => imgs.filter(i => i.getAttribute('src'))"
        ".filter(i => !i.complete || i.naturalWidth === 0).map(i => (i.currentSrc || i.src).slice(0, 80))",
    )
    problems += [f"broken image: {src}" for src in broken]
    cells = notebook_cells(nb_path)
    # A saved widget output whose widget is not alive falls back to its text/plain repr, e.g.
    # "IntSlider(value=3)": ipywidgets 8 in JupyterLab 4 does not restore saved widget state by default
    # (and shows no "Error displaying widget" either), so look for that repr among the plain-text outputs.
    plain_shown = {
        t.strip()
        for t in page.eval_on_selector_all(
            f"{NOTEBOOK} .jp-OutputArea-output[data-mime-type='text/plain']", "els => els.map(e => e.innerText)"
        )
    }
    for cell in cells:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                text = data.get("text/plain", "")
                text = ("".join(text) if isinstance(text, list) else text).strip()
                if text and text in plain_shown:
                    problems.append(
                        f"a saved widget output shows as plain text {text[:80]!r} (the widget is not alive when the "
                        "notebook is opened: clear that output before saving, or show a static picture instead)"
                    )
    n_outputs = sum(len(c.get("outputs", [])) for c in cells if c["cell_type"] == "code")
    if n_outputs:
        n_rendered = page.locator(f"{NOTEBOOK} .jp-OutputArea-output").count()
        if n_rendered == 0:
            problems.append(f"the notebook file has {n_outputs} saved outputs but the page shows no output area")
    n_code = sum(c["cell_type"] == "code" for c in cells)
    n_code_rendered = page.locator(CODE_CELL).count()
    if n_code_rendered != n_code:
        problems.append(f"the file has {n_code} code cells, the page shows {n_code_rendered}")
    return problems


# --------------------------------------------------------------------------------------------------
# The playground widget (mathllm/widgets.py); found by the CSS classes it adds with add_class().
# --------------------------------------------------------------------------------------------------

EXPRESSION_INPUT = f"{NOTEBOOK} .mathllm-expression input"
RUN_BUTTON = f"{NOTEBOOK} button.mathllm-run, {NOTEBOOK} .mathllm-run button"
RESULT = f"{NOTEBOOK} .mathllm-result"
ERROR = f"{NOTEBOOK} .mathllm-error"
CHECKPOINT_MENU = f"{NOTEBOOK} .mathllm-checkpoint select"
MODEL_INFO = f"{NOTEBOOK} .mathllm-model-info"


def submit_expression(page: Any, expression: str, how: str = "click") -> None:
    """Type ``expression`` into the playground's text box and submit it (``how``: "click" Run, or "enter")."""
    box = page.locator(EXPRESSION_INPUT).first
    box.wait_for(state="visible", timeout=30_000)
    box.fill(expression)
    if how == "enter":
        box.press("Enter")
    elif how == "click":
        page.locator(RUN_BUTTON).first.click()
    else:
        raise ValueError(f"how must be 'click' or 'enter', not {how!r}")


def submit_and_wait(page: Any, expression: str, selector: str, before: str, how: str = "click") -> str:
    """``submit_expression`` then ``wait_for_new_text``; submitted once more if nothing changed in 30 s. Under a
    loaded CI machine a click has (once in many runs) reached the kernel before the text box's new value, so the
    old expression was run again; a second submit with the value in place shows whether the widget works."""
    submit_expression(page, expression, how=how)
    try:
        return wait_for_new_text(page, selector, before, timeout_s=30.0)
    except AssertionError:
        submit_expression(page, expression, how=how)
        return wait_for_new_text(page, selector, before)


def choose_checkpoint(page: Any, name: str, timeout_s: float = 120.0) -> str:
    """Choose ``name`` in the playground's checkpoint menu and wait until the kernel has switched to it: the
    model's line (``.mathllm-model-info``) then starts with ``name:``; return that line.

    The widget writes that line last, after clearing the old result and error (mathllm/widgets.py), so once it
    names the new checkpoint the next run uses the new model. If the page shows the choice but the kernel has not
    answered after a while (a change event lost under load), the menu's change event is sent once more.
    """
    menu = page.locator(CHECKPOINT_MENU).first
    menu.wait_for(state="visible", timeout=30_000)
    labels = [o.strip() for o in menu.locator("option").all_inner_texts()]
    assert name in labels, f"no {name!r} in the checkpoint menu; it has {labels}"
    menu.select_option(label=name)
    pattern = re.compile(rf"^{re.escape(name)}:")
    deadline = time.monotonic() + timeout_s
    resent = False
    text = ""
    start = time.monotonic()
    while time.monotonic() < deadline:
        text = widget_text(page, MODEL_INFO)
        if pattern.match(text):
            return text
        if not resent and time.monotonic() - start > min(30.0, timeout_s / 2):
            menu.dispatch_event("change")
            resent = True
        page.wait_for_timeout(100)
    raise AssertionError(f"the playground did not switch to {name!r} within {timeout_s:.0f} s; its model line: {text!r}")


def widget_text(page: Any, selector: str) -> str:
    """The visible text of the first element matching ``selector`` ('' when there is none)."""
    loc = page.locator(selector)
    return loc.first.inner_text().strip() if loc.count() else ""


def wait_for_new_text(page: Any, selector: str, before: str, timeout_s: float = 60.0, settle_s: float = 1.0) -> str:
    """Wait until the text of ``selector`` is non-empty, differs from ``before`` and then stays the same for
    ``settle_s`` (an answer written piece by piece is read whole); return it."""
    deadline = time.monotonic() + timeout_s
    text, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = widget_text(page, selector)
        if now != text:
            text, since = now, time.monotonic()
        elif text and text != before and time.monotonic() - since >= settle_s:
            return text
        page.wait_for_timeout(100)
    raise AssertionError(
        f"{selector!r} showed no new text within {timeout_s:.0f} s (before: {before!r}, now: {text!r})"
    )


def playground_plots(page: Any) -> int:
    """How many visible plots (img, svg, canvas, plotly) are in the output area that holds the playground."""
    return page.evaluate(
        """(sel) => {
            const box = document.querySelector(sel);
            const area = box && box.closest('.jp-OutputArea');
            if (!area) return 0;
            const plots = [...area.querySelectorAll('img, svg, canvas, .js-plotly-plot')]
                .filter(e => !e.closest('.mathllm-run, .mathllm-expression'));
            const drawn = e => e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 0);
            return plots.filter(e => { const r = e.getBoundingClientRect(); return r.width > 20 && r.height > 20 && drawn(e); }).length;
        }""",
        f"{NOTEBOOK} .mathllm-expression",
    )


def wait_for_playground_plot(page: Any, timeout_s: float = 30.0) -> None:
    """Wait until the playground shows a (per-token probability) plot."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if playground_plots(page):
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"no plot (img/svg/canvas/plotly) appeared in the playground's output within {timeout_s:.0f} s")


def screenshot_playground(page: Any, path: str | os.PathLike) -> None:
    """A screenshot of the page with the playground in the middle (file browser collapsed, for room)."""
    with contextlib.suppress(Exception):  # cosmetic: clicking the current left side-bar tab collapses it
        tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
        if tab.count():
            tab.first.click()
    page.wait_for_timeout(500)  # the notebook re-lays out (and may re-scroll) after the side bar collapses
    page.locator(f"{NOTEBOOK} .mathllm-expression").first.evaluate(
        "e => (e.closest('.jp-OutputArea') || e).scrollIntoView({block: 'center'})"
    )
    # Let images decode and paint (a screenshot right after they load can catch them half drawn).
    page.evaluate(
        """async () => {
            await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
            await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        }"""
    )
    page.wait_for_timeout(500)
    page.screenshot(path=str(path))
