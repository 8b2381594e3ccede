#!/usr/bin/env bash
# The test suite: installs what it needs, then runs pytest (slow and gpu cases are opt-in:
# `scripts/test.sh -m slow`). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
