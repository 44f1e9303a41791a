#!/usr/bin/env bash
# The README's main-job command: set up, prepare the embedded offline data, and pretrain the tiny BERT
# on it (about 5 minutes on 2 CPU cores). Re-running resumes or, when finished, just reports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/tljax data prepare
.venv/bin/tljax pretrain --config configs/bert_mlm_tiny.py --workdir runs/bert_tiny "$@"
