#!/usr/bin/env bash
# Submit one incremental inference run to a running Ray cluster and wait for it: the plain-cron
# way to schedule maskray (infra/README.md has the crontab line). Re-running it is the whole of
# incremental inference: only scenes added or replaced since the last run are processed.
#
# Environment (all optional except the three URIs):
#   MASKRAY_MODEL, MASKRAY_INPUT, MASKRAY_OUTPUT   bundle, scene prefix and output root URIs
#   MASKRAY_CONFIG   config file, relative to the checkout (default infra/configs/infer.yaml)
#   MASKRAY_REPO     the checkout uploaded as the job's working dir (default: this script's repo)
#   RAY_ADDRESS      the cluster's job API (default http://127.0.0.1:8265, e.g. the SSH tunnel
#                    of `ray dashboard infra/aws/cluster.yaml` or a kubectl port-forward)
#   RAY_AUTH_TOKEN_PATH  file holding the cluster token (default ~/.ray/auth_token); or
#                    RAY_AUTH_TOKEN. The token is never printed or put on a command line.
#   RAY_CLI          the `ray` executable (default: ray on PATH; cron's PATH is short)
#   MASKRAY_LOCK     lock file that keeps two submissions from this machine apart
#
# The submission id names the schedule slot (UTC minute): Ray refuses a second submission
# with the same id, so a slot fired twice runs once. A run that finds another one still
# writing the same output exits 0 without doing anything.
set -euo pipefail
umask 077

: "${MASKRAY_MODEL:?set MASKRAY_MODEL to the model bundle URI}"
: "${MASKRAY_INPUT:?set MASKRAY_INPUT to the scene directory / prefix URI}"
: "${MASKRAY_OUTPUT:?set MASKRAY_OUTPUT to the output root URI}"
repo=${MASKRAY_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
config=${MASKRAY_CONFIG:-infra/configs/infer.yaml}
ray_cli=${RAY_CLI:-ray}
lock=${MASKRAY_LOCK:-${XDG_RUNTIME_DIR:-/tmp}/maskray-submit-infer.lock}

# Token authentication stays on: the client sends the cluster token with every request.
export RAY_AUTH_MODE=token
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
    echo "submit-infer: no cluster token: set RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN)" >&2
    exit 2
  fi
fi

slot=$(date -u +%Y%m%dT%H%MZ)
exec 9>"$lock"
if ! flock --nonblock 9; then
  echo "submit-infer: the previous submission from this machine is still running; skipping $slot" >&2
  exit 0
fi

cd "$repo"
# Blocks until the job ends and exits with its status (the lock is held until then).
exec "$ray_cli" job submit \
  --address "$RAY_ADDRESS" \
  --submission-id "maskray-infer-$slot" \
  --working-dir . \
  -- python -m jobs.infer --config "$config" \
     --model "$MASKRAY_MODEL" --input "$MASKRAY_INPUT" --output "$MASKRAY_OUTPUT"
