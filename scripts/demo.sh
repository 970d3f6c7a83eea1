#!/usr/bin/env bash
# The main job: set up (if needed) and run the demo on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # 2 threads made CPU steps 10-50x noisier here
exec .venv/bin/tailorkit demo "$@"
