#!/usr/bin/env bash
# Starts a throw-away single-node Garage S3 server on loopback for tests and
# prints shell `export` lines describing it, so that
#
#   eval "$(scripts/start-garage.sh)"
#
# sets COFFER_TEST_S3_ENDPOINT, COFFER_TEST_S3_REGION,
# COFFER_TEST_S3_ACCESS_KEY_ID, COFFER_TEST_S3_SECRET_ACCESS_KEY (a key that may
# create buckets through S3's CreateBucket), GARAGE_PID and GARAGE_CONFIG.
# Stop it with `kill "$GARAGE_PID"`; its files live in the directory of
# GARAGE_CONFIG. Everything but the export lines goes to standard error.
#
# `garage` is taken from PATH or ~/.cargo/bin and installed with
# `cargo install garage --locked` (SQLite engine only) when missing (a long build).
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'start-garage: %s\n' "$*" >&2; exit 1; }

find_garage() {
  if command -v garage >/dev/null 2>&1; then command -v garage; return; fi
  if [ -x "$HOME/.cargo/bin/garage" ]; then echo "$HOME/.cargo/bin/garage"; return; fi
  log "installing garage with cargo install (this takes a while)"
  # Only what these tests use: the SQLite metadata engine (below), without
  # LMDB, K2V or Garage's own metrics, which saves minutes of a cold build.
  cargo install garage --locked --no-default-features --features bundled-libs,sqlite >&2
  [ -x "$HOME/.cargo/bin/garage" ] || die "cargo install garage did not produce ~/.cargo/bin/garage"
  echo "$HOME/.cargo/bin/garage"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

random_hex() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex 32
  else
    python3 -c 'import secrets; print(secrets.token_hex(32))'
  fi
}

garage_bin=$(find_garage)
dir=$(mktemp -d /tmp/coffer-garage.XXXXXX)
conf="$dir/garage.toml"
s3_port=$(free_port)
rpc_port=$(free_port)
admin_port=$(free_port)
region=garage

cat >"$conf" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(random_hex)"

[s3_api]
s3_region = "$region"
api_bind_addr = "127.0.0.1:$s3_port"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF

g() { "$garage_bin" -c "$conf" "$@"; }

log "starting garage in $dir (S3 on 127.0.0.1:$s3_port)"
# Detached from this script's output so that `$(...)` around it returns.
setsid "$garage_bin" -c "$conf" server </dev/null >"$dir/garage.log" 2>&1 &
pid=$!

node_id=""
for _ in $(seq 1 100); do
  if ! kill -0 "$pid" 2>/dev/null; then
    cat "$dir/garage.log" >&2
    die "garage exited during start-up"
  fi
  if node_id=$(g node id -q 2>/dev/null); then break; fi
  sleep 0.2
done
[ -n "$node_id" ] || { kill "$pid"; die "garage did not answer within 20 s (log: $dir/garage.log)"; }
node_id=${node_id%%@*}

g status >&2
g layout assign -z dc1 -c 1G "$node_id" >&2
g layout apply --version 1 >&2

key_info=$(g key create coffer-test)
key_id=$(printf '%s\n' "$key_info" | awk -F': *' '/Key ID/ {print $2; exit}')
secret=$(printf '%s\n' "$key_info" | awk -F': *' '/Secret key/ {print $2; exit}')
[ -n "$key_id" ] && [ -n "$secret" ] || { kill "$pid"; die "could not read the key garage created"; }
g key allow --create-bucket coffer-test >&2

# Wait until the S3 endpoint answers HTTP (any status).
for _ in $(seq 1 100); do
  if python3 - "$s3_port" <<'PY' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1)
except urllib.error.HTTPError:
    pass
PY
  then break; fi
  sleep 0.2
done

log "garage ready (pid $pid)"
cat <<EOF
export COFFER_TEST_S3_ENDPOINT='http://127.0.0.1:$s3_port'
export COFFER_TEST_S3_REGION='$region'
export COFFER_TEST_S3_ACCESS_KEY_ID='$key_id'
export COFFER_TEST_S3_SECRET_ACCESS_KEY='$secret'
export GARAGE_PID='$pid'
export GARAGE_CONFIG='$conf'
EOF
