#!/usr/bin/env bash
# Start a Prefect worker on a GPU box, for the local process pool or the Kubernetes pool.
#   infra/prefect/worker.sh process      # runs flows (and torchrun) on this machine
#   infra/prefect/worker.sh kubernetes   # each flow run becomes a Job (needs: pip install prefect-kubernetes)
# PREFECT_API_URL must point at the server (e.g. http://prefect.internal:4200/api).
# It also installs (idempotently) the automation that marks charrnn flow runs without
# heartbeats Crashed (flows/zombies.py; window: $CHARRNN_ZOMBIE_AFTER_S, default 120 s);
# run from the project checkout, where `python -m flows` imports.
set -euo pipefail
kind="${1:-process}"
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server API, e.g. http://HOST:4200/api}"
case "$kind" in
  process)
    pool=charrnn-local
    prefect work-pool create "$pool" --type process --overwrite \
      --base-job-template "$(dirname "$0")/base-job-template-process.json"
    prefect work-queue create training --pool "$pool" --limit 1 || prefect work-queue set-concurrency-limit training 1 --pool "$pool"
    ;;
  kubernetes)
    pool=charrnn-k8s
    prefect work-pool create "$pool" --type kubernetes --overwrite \
      --base-job-template "$(dirname "$0")/base-job-template-kubernetes.json"
    ;;
  *) echo "usage: $0 process|kubernetes" >&2; exit 2 ;;
esac
python -m flows zombie-guard
# Flow runs started here send heartbeats (the deployments' job env sets it too).
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}"
exec prefect worker start --pool "$pool" --type "$kind"
