#!/usr/bin/env bash
# Installs the pinned harness CLIs — Claude Code (@anthropic-ai/claude-code)
# and OpenCode (opencode-ai) — into harnesses/node_modules of this project,
# never globally. `karta serve` and the tests find them there
# (harnesses/node_modules/.bin/{claude,opencode}).
#
# Cached between runs: when the pinned versions are already installed this
# does nothing, and npm's own cache (~/.npm) spares the download on a fresh
# clone on the same machine. The versions are exact in harnesses/package.json;
# each package pins its own platform binary exactly.
#
# Needs Node.js and npm (Node 20 works: both packages ship native binaries;
# Claude Code declares Node >= 22 but does not run on Node at all).
set -euo pipefail
cd "$(dirname "$0")/../harnesses"

if ! command -v npm >/dev/null 2>&1; then
    echo "install-harnesses: npm is not installed; install Node.js and npm first" >&2
    exit 1
fi

bin=node_modules/.bin
if [ -x "$bin/claude" ] && [ -x "$bin/opencode" ] \
    && "$bin/claude" --version 2>/dev/null | grep -q '^2\.1\.332 ' \
    && [ "$("$bin/opencode" --version 2>/dev/null)" = "1.18.33" ]; then
    echo "install-harnesses: claude 2.1.332 and opencode 1.18.33 already installed"
    exit 0
fi

echo "install-harnesses: installing claude 2.1.332 and opencode 1.18.33 into harnesses/ (a few hundred MB, once)"
# Claude Code asks for Node >= 22 in its manifest but ships a native binary;
# that engine warning is expected and silenced with the rest of npm's chatter.
npm install --no-package-lock --no-audit --no-fund --loglevel=error
"$bin/claude" --version
"$bin/opencode" --version
