#!/usr/bin/env bash
# The README's test command: set up, prepare the offline data, run the whole test suite (slow
# end-to-end tests included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/tljax data prepare
# Exit code 5 (no tests collected) must not pass as success.
set +e
.venv/bin/python -m pytest -m "slow or not slow" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
