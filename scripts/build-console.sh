#!/usr/bin/env bash
# Builds the web console into console/dist/ (committed, embedded into the
# control plane, so `cargo build` never needs Node): installs the exact
# packages of console/package-lock.json, generates the coffer.v1 client from
# proto/ with protoc-gen-es, type-checks, and bundles with esbuild.
#
#   scripts/build-console.sh          # rebuild console/dist/
#   scripts/build-console.sh --check  # rebuild and fail if it differs from the commit
#
# Needs Node 20+ with npm, and buf (`pip install buf-bin`).
set -euo pipefail
cd "$(dirname "$0")/../console"

npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
rm -rf src/gen
buf generate
node_modules/.bin/tsc -p .
mkdir -p dist
node_modules/.bin/esbuild src/main.ts --bundle --format=esm --target=es2022 --minify \
  --legal-comments=none --charset=utf8 --log-level=warning --outfile=dist/app.js
node_modules/.bin/esbuild src/style.css --minify --log-level=warning --outfile=dist/app.css
cp src/index.html dist/index.html

if [ "${1:-}" = "--check" ]; then
  if ! git diff --exit-code --stat -- dist; then
    echo "console/dist/ differs from what scripts/build-console.sh builds: rebuild it and commit the result" >&2
    exit 1
  fi
  untracked=$(git ls-files --others --exclude-standard -- dist)
  if [ -n "$untracked" ]; then
    echo "console/dist/ has files that are not committed: $untracked" >&2
    exit 1
  fi
fi
