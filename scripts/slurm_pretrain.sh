#!/usr/bin/env bash
# Multi-node GPU pretraining under SLURM: one tljax process per node (seeing all its GPUs) or per GPU.
# Every process runs the same command; process 0 (on the first node of the allocation) is the coordinator.
#
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 scripts/slurm_pretrain.sh \
#       --config configs/bert_base_mlm.py --workdir /shared/runs/bert_base --config.mesh.shape='(1,-1,1)'
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-task=1 scripts/slurm_pretrain.sh ...   # one per GPU
#
# Arguments are those of `tljax pretrain`. TLJAX (default: .venv/bin/tljax of the submit directory) and
# PORT (default 12345) can be set. The workdir must be on a filesystem all nodes share.
#SBATCH --job-name=tljax-pretrain
#SBATCH --output=slurm-%j.out
set -euo pipefail

: "${SLURM_JOB_NODELIST:?run this with sbatch (or inside salloc)}"
# sed reads every line: `head -n 1` would exit early and, under pipefail, fail the job on SIGPIPE.
coordinator_host=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
export TLJAX_COORDINATOR="$coordinator_host:${PORT:-12345}"
export TLJAX_NUM_PROCESSES="$SLURM_NTASKS"
tljax=${TLJAX:-$SLURM_SUBMIT_DIR/.venv/bin/tljax}

# srun starts the tasks; each one's index is its own SLURM_PROCID, so it is read inside the task
# (single quotes on purpose).
# shellcheck disable=SC2016
srun --kill-on-bad-exit=1 bash -c 'export TLJAX_PROCESS_ID=$SLURM_PROCID; exec "$0" pretrain "$@"' "$tljax" "$@"
