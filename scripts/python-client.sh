#!/usr/bin/env bash
# Prints the path of a Python interpreter that has the Python client's pinned
# packages (clients/python/requirements.txt): a virtual environment under
# ~/.cache/coffer-python-client, created the first time and again whenever
# the requirements change. Everything but the path goes to standard error.
#
#   PYTHON=$(scripts/python-client.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=clients/python/requirements.txt
digest=$(sha256sum "$requirements" | cut -c1-16)
venv="${COFFER_PYTHON_CLIENT_VENV:-$HOME/.cache/coffer-python-client}/$digest"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.installed" ]; then
  printf '==> installing the Python client packages into %s\n' "$venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2 || { echo "python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install -q -r "$requirements" >&2
  touch "$venv/.installed"
fi
echo "$venv/bin/python"
