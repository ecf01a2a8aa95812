#!/usr/bin/env bash
# Install what the browser tests (tests/browser, `pytest -m browser`) need:
#   * Debian's Chromium at /usr/bin/chromium (apt-get; needs root or passwordless sudo), and
#   * the `playwright` Python package in the project's Python (the one scripts/setup.sh prints).
# Playwright's own browser download (`playwright install`) is NOT used: the tests drive /usr/bin/chromium.
#
#   bash scripts/install_browser.sh        # idempotent; a no-op when both are already there
#
# Exits non-zero with a message saying what is missing when it cannot install something.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[install_browser] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

CHROMIUM=/usr/bin/chromium

# --- Chromium -------------------------------------------------------------------------------------
if [ -x "$CHROMIUM" ]; then
    log "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "$CHROMIUM is missing and this user cannot run apt-get (not root, no passwordless sudo).
Install it yourself: sudo apt-get update && sudo apt-get install -y chromium"
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "$CHROMIUM is missing and there is no apt-get here (not Debian/Ubuntu): install Chromium so that $CHROMIUM exists"
    log "installing Debian's chromium with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq >&2 || die "apt-get update failed"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation >&2 \
        || die "apt-get install chromium failed"
    [ -x "$CHROMIUM" ] || die "apt-get installed chromium but $CHROMIUM does not exist"
    log "installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
fi

# --- playwright (Python package) ------------------------------------------------------------------
PY="$(bash scripts/setup.sh)" || die "scripts/setup.sh failed: cannot find the project's Python"
if "$PY" -c "import playwright.sync_api" 2>/dev/null; then
    log "playwright already installed in $PY"
else
    log "installing the playwright Python package into $PY"
    "$PY" -m pip install --quiet --disable-pip-version-check "playwright>=1.40" >&2 \
        || die "pip install playwright failed (into $PY)"
    "$PY" -c "import playwright.sync_api" || die "playwright installed but cannot be imported by $PY"
fi

# --- smoke check: playwright can launch this chromium ---------------------------------------------
"$PY" - <<'EOF' || die "playwright could not launch /usr/bin/chromium (see the error above)"
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                          args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
    b.close()
EOF
log "ready: run the browser tests with  $PY -m pytest -m browser tests/browser"
