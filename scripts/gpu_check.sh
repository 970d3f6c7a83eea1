#!/usr/bin/env bash
# The GPU half in one command, for a lent GPU machine without network: install the carried wheels (.whl/, made
# here by scripts/prepare_gpu_wheels.sh) over the image's torch, run every gpu-marked test and
# bench/gpu_bench.py, print one table. About 8 minutes on one H200. Without a CUDA GPU it says so, exits 0.
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]      # default gpu_check_results/ (ignored): versions, tests, bench
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_results}
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible: nothing to run here (the CPU half is scripts/test.sh; see bench/README.md)"
    exit 0
fi
mkdir -p "$OUT"
START=$(date +%s)

# The carried wheels go into an overlay folder put first on PYTHONPATH, over the image's environment (a venv would
# not do: the image's python3 is itself a venv, whose packages a venv made from it does not see).
SITE=$(mktemp -d)/site
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || exit 1
else
    echo "gpu_check: no .whl/ folder (run scripts/prepare_gpu_wheels.sh and carry .whl): the image's packages only"
fi
export PYTHONPATH="$SITE:$PWD/src" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg PYTHONUNBUFFERED=1
export DS_ACCELERATOR=cuda  # DeepSpeed's own switch: the wheel was built on a machine without a GPU
"$PY" scripts/gpu_report.py --versions "$OUT/versions.json" || exit 1

mapfile -t FILES < <(grep -rl "pytest.mark.gpu" tests --include='test_*.py' | sort)
timeout 300 "$PY" -m pytest -p no:cacheprovider -q -m gpu -rA --continue-on-collection-errors \
    --junitxml "$OUT/tests.xml" "${FILES[@]}" 2>&1 | tee "$OUT/tests.log"
TESTS_RC=${PIPESTATUS[0]}
timeout 170 "$PY" bench/gpu_bench.py --json "$OUT/bench.json" --timeout 90 2>&1 | tee "$OUT/bench.log"
BENCH_RC=${PIPESTATUS[0]}

"$PY" scripts/gpu_report.py --results "$OUT" --seconds $(($(date +%s) - START)) | tee "$OUT/report.txt"
echo "gpu_check: tests exit $TESTS_RC, bench exit $BENCH_RC (124: stopped by its time limit); results in $OUT/"
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
