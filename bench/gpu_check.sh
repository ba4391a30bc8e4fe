#!/usr/bin/env bash
# GPU check (under 5 minutes, one GPU): the tests marked `gpu`, then a 3x1024 model
# trained for 60 s at fp32 and at bf16 through `charrnn launch --nproc-per-node 1`,
# printing chars/s for each. Run from the repository root on a machine with CUDA:
#     bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export WANDB_MODE=${WANDB_MODE:-disabled}
export CHARRNN_CACHE=${CHARRNN_CACHE:-$PWD/.cache/charrnn}

"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: run this on a GPU machine"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| cuDNN", torch.backends.cudnn.version())
PYEOF

echo "== tests marked gpu"
"$PY" -m pytest -q -m gpu tests

echo "== prepare"
TOKENS=$("$PY" -m charrnn prepare | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["tokens"]["dir"])')

for precision in fp32 bf16; do
  out=$(mktemp -d)
  echo "== 3x1024, 60 s, $precision"
  "$PY" -m charrnn launch --nproc-per-node 1 -- --out-dir "$out" --tokens "$TOKENS" \
      num_layers=3 hidden_size=1024 embedding_dim=128 batch_size=128 seq_len=128 lr=2e-3 \
      time_budget_s=60 max_steps=0 log_interval=20 eval_interval=0 checkpoint_interval=100000 \
      precision=$precision device=cuda > "$out/log.txt" 2>&1 || { tail -20 "$out/log.txt"; exit 1; }
  "$PY" - "$out" "$precision" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
out, precision = Path(sys.argv[1]), sys.argv[2]
rates = [json.loads(l)["perf/chars_per_s"] for l in (out / "metrics.jsonl").read_text().splitlines() if "perf/chars_per_s" in l]
summary = json.loads((out / "train_summary.json").read_text())
print(f"{precision}: {statistics.median(rates[1:] or rates):,.0f} chars/s (median over log intervals), "
      f"{summary['step']} steps, val {summary['val']['loss_nats']:.4f} nats/char")
PYEOF
done
