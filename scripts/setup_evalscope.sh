#!/usr/bin/env bash
# EvalScope in an environment of its own (.venv-evalscope), for `tailorkit eval --eval_backend evalscope`, which
# finds it next to .venv. It cannot share .venv: every evalscope from 0.17 pins datasets<=4.8.4, tailorkit needs
# datasets 5.2. No torch is installed there: EvalScope only talks to tailorkit's server. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3.11
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv-evalscope/bin/python ]; then
    "$PY" -m venv .venv-evalscope
fi
stamp=.venv-evalscope/.tailorkit-installed
want=$(sha256sum constraints-evalscope.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv-evalscope/bin/python -m pip install -q --upgrade "pip>=24"
    .venv-evalscope/bin/python -m pip install -q -c constraints-evalscope.txt evalscope
    echo "$want" > "$stamp"
fi
