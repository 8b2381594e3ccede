#!/usr/bin/env bash
# Create .venv inside the clone and install maskray with its pinned dependencies (idempotent:
# a second call only checks that the install is complete). Needs python3.10-3.12 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "maskray: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.maskray-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "maskray: installing dependencies (torch is a few GB; about 2 minutes)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=23" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" >&2
  echo "$want" > "$stamp"
fi
