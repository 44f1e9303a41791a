#!/usr/bin/env bash
# tljax on a Cloud TPU VM slice: create (or reuse) it, install tljax on every worker, run the same
# `tljax pretrain ...` on all workers at once, delete it on request. docs/scaling.md explains the parts.
#
#   export TPU_NAME=tljax-v4 ZONE=us-central2-b ACCELERATOR=v4-32    # RUNTIME, PROJECT optional
#   bash scripts/tpu_pod.sh create                                     # no-op when the slice exists
#   bash scripts/tpu_pod.sh install                                    # this checkout -> ~/tljax on all workers
#   bash scripts/tpu_pod.sh run pretrain --config configs/bert_base_mlm.py \
#       --workdir /mnt/shared/runs/bert_base --config.mesh.shape='(1,-1,1)'
#   bash scripts/tpu_pod.sh delete
#
# `run` adds --distributed=auto: jax.distributed.initialize() then finds the workers itself. The workdir
# must be one folder all workers share (a gcsfuse bucket mount or NFS); data paths must exist on every worker.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
if [ -n "${PROJECT:-}" ]; then where+=(--project="$PROJECT"); fi

on_all_workers() {  # run one shell command line on every worker, in parallel
  "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
}

cmd=${1:-}
shift || true
case "$cmd" in
  create)
    if "${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" >/dev/null 2>&1; then
      echo "tpu_pod: $TPU_NAME exists, reusing it"
    else
      : "${ACCELERATOR:?set ACCELERATOR, e.g. v4-32 or v5litepod-16}"
      "${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
    fi
    ;;
  install)
    # The committed tree, so every worker runs exactly the same code.
    archive=$(mktemp --suffix=.tar.gz)
    trap 'rm -f "$archive"' EXIT
    git archive --format=tar.gz -o "$archive" HEAD
    "${gcloud_tpu[@]}" scp "$archive" "$TPU_NAME":tljax.tar.gz "${where[@]}" --worker=all
    on_all_workers 'set -e; rm -rf ~/tljax && mkdir ~/tljax && tar -xzf ~/tljax.tar.gz -C ~/tljax &&
      python3 -m venv ~/tljax/.venv && ~/tljax/.venv/bin/pip install -q "jax[tpu]" -e ~/tljax'
    ;;
  run)
    [ $# -gt 0 ] || { echo "usage: tpu_pod.sh run pretrain|finetune --config FILE --workdir DIR ..." >&2; exit 2; }
    # Quote each argument once for the remote shell.
    on_all_workers "cd ~/tljax && .venv/bin/tljax $(printf '%q ' "$@") --distributed=auto"
    ;;
  delete)
    "${gcloud_tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
    ;;
  *)
    echo "usage: tpu_pod.sh create|install|run ARGS...|delete  (environment: TPU_NAME, ZONE, ACCELERATOR)" >&2
    exit 2
    ;;
esac
