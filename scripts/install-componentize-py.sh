#!/usr/bin/env bash
# Installs the pinned componentize-py (tools/componentize-py/requirements.txt)
# into tools/componentize-py/venv of this project, never globally. The host
# finds it there (KARTA_COMPONENTIZE_PY overrides) to compile an app's
# stdlib-only Python MCP servers into wasm components.
#
# Cached between runs: does nothing when the pinned version is already in
# the venv; pip's own cache spares the download on a fresh clone.
#
# Needs python3 (3.10+) with the venv module.
set -euo pipefail
cd "$(dirname "$0")/../tools/componentize-py"

version=$(sed -n 's/^componentize-py==//p' requirements.txt)
bin=venv/bin/componentize-py
if [ -x "$bin" ] && venv/bin/python -m pip show componentize-py 2>/dev/null | grep -qx "Version: $version"; then
    echo "install-componentize-py: componentize-py $version already installed"
    exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "install-componentize-py: python3 is not installed" >&2
    exit 1
fi

echo "install-componentize-py: installing componentize-py $version into tools/componentize-py/venv"
rm -rf venv
python3 -m venv venv
venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
"$bin" --version
