#!/usr/bin/env bash
# Create ./.venv and install tljax into it (editable), with the given extras. Idempotent: re-runs
# only when pyproject.toml changed. Usage: bash scripts/setup.sh [extra,...|none]   (e.g. "test,torch";
# "none": the library alone, what the main job runs)
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
  target="."
  [ "$extras" = "none" ] || target=".[$extras]"
  echo "setup: installing tljax${extras:+ ($extras)} (first time: about a minute)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
  touch "$stamp"
fi
