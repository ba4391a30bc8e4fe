#!/usr/bin/env bash
# GPU checklist (about 5-8 minutes on one H200): prints PASS/FAIL/SKIP per check and
# exits non-zero on any FAIL. The logic is bench/gpu_check.py (its docstring lists the
# checks and bench/gpu_check.py:Spec their bounds). Run from anywhere on a CUDA machine:
#     bash bench/gpu_check.sh
# A dry run of the checklist itself on a CPU (tiny models, loose bounds, a few minutes):
#     bash bench/gpu_check.sh --device cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export WANDB_MODE=${WANDB_MODE:-disabled}
export CHARRNN_CACHE=${CHARRNN_CACHE:-$PWD/.cache/charrnn}
exec "$PY" -m bench.gpu_check "$@"
