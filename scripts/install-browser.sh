#!/usr/bin/env bash
# Installs what the chat page's browser test needs: Debian's chromium
# (/usr/bin/chromium, through apt when missing) and the pinned playwright-core
# from npm into browser/node_modules of this project (not globally). The
# test (tests/all/chat_page.rs) drives Chromium with browser/chat_page.mjs.
#
# Cached between runs: does nothing when both are already there.
set -euo pipefail
cd "$(dirname "$0")/../browser"

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
        echo "install-browser: chromium is missing; install Debian's chromium package (apt-get install chromium)" >&2
        exit 1
    fi
    echo "install-browser: installing Debian's chromium (apt-get, once)"
    as_root=()
    [ "$(id -u)" -ne 0 ] && as_root=(sudo)
    "${as_root[@]}" apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq chromium >/dev/null
fi
chromium --version

if [ -f node_modules/playwright-core/package.json ] \
    && grep -q '"version": "1.65.1"' node_modules/playwright-core/package.json; then
    echo "install-browser: playwright-core 1.65.1 already installed"
    exit 0
fi
echo "install-browser: installing playwright-core 1.65.1 into browser/"
npm install --no-package-lock --no-audit --no-fund --loglevel=error
