#!/usr/bin/env bash
# The test suite: set up (if needed) and run every test, slow end-to-end ones included, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_evalscope.sh  # EvalScope's own environment: the evalscope bridge is tested too
bash scripts/setup_browser.sh  # Debian's chromium: the web UI is tested in a real browser
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
