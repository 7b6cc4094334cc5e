#!/usr/bin/env bash
# Installs the pinned official OpenAI Python SDK
# (tools/openai-python/requirements.txt) into tools/openai-python/venv of
# this project, never globally. The adapter tests (tests/all/openai_adapters.rs)
# run tests/clients/openai_client.py with that venv's python against a host
# (KARTA_OPENAI_PYTHON overrides the interpreter).
#
# Cached between runs: does nothing when the pinned version is already in
# the venv; pip's own cache spares the download on a fresh clone.
#
# Needs python3 (3.9+) with the venv module.
set -euo pipefail
cd "$(dirname "$0")/../tools/openai-python"

version=$(sed -n 's/^openai==//p' requirements.txt)
installed=$( (venv/bin/python -m pip show openai 2>/dev/null || true) | sed -n 's/^Version: //p')
if [ "$installed" = "$version" ]; then
    echo "install-openai-python: openai $version already installed"
    exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "install-openai-python: python3 is not installed" >&2
    exit 1
fi

echo "install-openai-python: installing openai $version into tools/openai-python/venv"
rm -rf venv
python3 -m venv venv
venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
venv/bin/python -c 'import openai; print("openai", openai.__version__)'
