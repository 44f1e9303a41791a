#!/usr/bin/env bash
# The README's main-job command: set up, prepare the embedded offline data, and run the quick
# learning-curve experiment on it (transfer vs scratch at 100 / 1,000 / all labels; about 15 minutes
# on 2 CPU cores). Re-running skips finished cells; extra arguments go to `tljax experiment`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh none  # the main job installs only what it runs (no torch, gensim)
.venv/bin/tljax data prepare
.venv/bin/tljax experiment --config configs/experiments/learning_curve.py:quick --workdir runs/lc_quick "$@"
