#!/usr/bin/env bash
# Starts a throw-away moto S3 server on loopback for the Object Lock tests
# (Garage does not implement Object Lock; moto's server enforces it: a
# locked object version cannot be deleted) and prints shell `export` lines,
# so that
#
#   eval "$(scripts/start-moto.sh)"
#
# sets COFFER_TEST_LOCK_S3_ENDPOINT, COFFER_TEST_LOCK_S3_REGION,
# COFFER_TEST_LOCK_S3_ACCESS_KEY_ID, COFFER_TEST_LOCK_S3_SECRET_ACCESS_KEY,
# MOTO_PID and MOTO_LOG. Stop it with `kill "$MOTO_PID"`; its log is the
# file MOTO_LOG. Everything but the export lines goes to standard error.
#
# moto is installed with pip into a virtual environment under
# ~/.cache/coffer-moto the first time.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'start-moto: %s\n' "$*" >&2; exit 1; }

venv="${COFFER_MOTO_VENV:-$HOME/.cache/coffer-moto}"
if [ ! -x "$venv/bin/moto_server" ]; then
  log "installing moto[server] into $venv"
  python3 -m venv "$venv" >&2 || die "python3 -m venv failed (apt-get install python3-venv)"
  "$venv/bin/pip" install -q 'moto[server]' >&2
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
logfile=$(mktemp /tmp/coffer-moto.XXXXXX.log)
log "starting moto on 127.0.0.1:$port (log: $logfile)"
# Detached from this script's output so that `$(...)` around it returns.
setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >"$logfile" 2>&1 &
pid=$!

for _ in $(seq 1 150); do
  kill -0 "$pid" 2>/dev/null || { cat "$logfile" >&2; die "moto exited during start-up"; }
  if python3 - "$port" <<'PY' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1)
except urllib.error.HTTPError:
    pass
PY
  then
    log "moto ready (pid $pid)"
    cat <<EXPORTS
export COFFER_TEST_LOCK_S3_ENDPOINT='http://127.0.0.1:$port'
export COFFER_TEST_LOCK_S3_REGION='us-east-1'
export COFFER_TEST_LOCK_S3_ACCESS_KEY_ID='coffer-test'
export COFFER_TEST_LOCK_S3_SECRET_ACCESS_KEY='coffer-test-secret'
export MOTO_PID='$pid'
export MOTO_LOG='$logfile'
EXPORTS
    exit 0
  fi
  sleep 0.2
done
kill "$pid"
die "moto did not answer within 30 s (log: $logfile)"
