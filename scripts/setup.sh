#!/usr/bin/env bash
# Create ./.venv and install tljax into it (editable) with its test dependencies. Idempotent: re-runs
# only when pyproject.toml changed. Usage: bash scripts/setup.sh [extra,...]   (e.g. "test,torch")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.tljax-installed-$(sha1sum pyproject.toml | cut -c1-12)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  echo "setup: installing tljax[$extras] (first time: about a minute)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi
