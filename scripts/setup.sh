#!/usr/bin/env bash
# Create .venv (if absent) and install tailorkit with pinned dependencies; a no-op when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3.11
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.tailorkit-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade "pip>=24"
    # torch==2.14.1 and torchvision==0.29.1 are pinned in constraints.txt (CUDA builds; they run on CPU too).
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,serve]"
    echo "$want" > "$stamp"
fi
