#!/usr/bin/env bash
# The main job on the embedded default: local Ray, local files, an archive generated here.
# Extra arguments go to `maskray demo` (see `.venv/bin/maskray demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/maskray demo "$@"
