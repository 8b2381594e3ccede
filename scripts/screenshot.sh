#!/usr/bin/env bash
# Screenshot an HTML report with headless Chromium: scripts/screenshot.sh REPORT_DIR/index.html OUT.png [WIDTH]
# Installs puppeteer-core and @sparticuz/chromium (a Chromium build packed inside the npm
# package) into a cache folder on first use; nothing is installed into the repository.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MASKRAY_CACHE:-$HOME/.cache/maskray}/screenshot
if [ ! -d "$cache/node_modules/puppeteer-core" ]; then
  mkdir -p "$cache"
  (cd "$cache" && npm install --silent --no-audit --no-fund @sparticuz/chromium@153.0.0 puppeteer-core@24 >&2)
fi
html=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
NODE_PATH="$cache/node_modules" node "$here/screenshot.js" "file://$html" "$2" "${3:-1200}"
