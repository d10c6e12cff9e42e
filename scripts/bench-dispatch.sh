#!/usr/bin/env bash
# Dispatch latency: queued -> leased for idle workers, with the run created through the
# workers' own control-plane replica and through another replica on the same PostgreSQL.
# Drives control-plane/examples/bench_dispatch.rs (see its header for what is measured).
#
#   DATABASE_URL=postgres://... scripts/bench-dispatch.sh
#   BENCH_RUNS=200 BENCH_WORKERS=32 scripts/bench-dispatch.sh
#
# Environment:
#   DATABASE_URL        a PostgreSQL server the benchmark may create a database on (required;
#                       scripts/test.sh shows how to start a throw-away one)
#   BENCH_RUNS          runs per series (default 500)
#   BENCH_WORKERS       idle workers connected to the first replica, 4 slots each (default 4)
#   BENCH_PROFILE       cargo profile (default release; `dev` reuses a test build)
#   BENCH_RESULTS_FILE  where the table is appended (default BENCHMARKS.md at the repository
#                       root; empty: do not record)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
: "${DATABASE_URL:?set DATABASE_URL to a PostgreSQL server (see scripts/test.sh)}"
BENCH_PROFILE=${BENCH_PROFILE:-release}
BENCH_RESULTS_FILE=${BENCH_RESULTS_FILE-$ROOT/BENCHMARKS.md}
export BENCH_RUNS=${BENCH_RUNS:-500} BENCH_WORKERS=${BENCH_WORKERS:-4}
COMMAND_LINE="BENCH_RUNS=$BENCH_RUNS BENCH_WORKERS=$BENCH_WORKERS BENCH_PROFILE=$BENCH_PROFILE scripts/bench-dispatch.sh"

cargo build --locked --profile "$BENCH_PROFILE" -p coffer-control-plane --example bench_dispatch
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
profile_dir=$BENCH_PROFILE
[ "$profile_dir" = dev ] && profile_dir=debug
# The machine's load says how much the tails owe to other work.
load=$(cut -d' ' -f1-3 /proc/loadavg)
table=$(COFFER_LOG=${COFFER_LOG:-warn} "$target_dir/$profile_dir/examples/bench_dispatch")

report=$(cat <<EOF
## $(date -u '+%Y-%m-%d %H:%M UTC') — \`$COMMAND_LINE\`

Dispatch latency, queued -> leased, $BENCH_WORKERS idle workers on the first of two replicas.
catalog: \`start_time - create_time\` on the database clock; worker after create: \`CreateRun\`
returned -> assignment arrived; worker round trip: \`CreateRun\` called -> assignment arrived.
$(nproc) cores (load average before: $load), \`$BENCH_PROFILE\` profile, coffer $(git rev-parse --short HEAD 2>/dev/null || echo unknown).

$table
EOF
)
echo "$report"
if [ -n "$BENCH_RESULTS_FILE" ]; then
  { echo; echo "$report"; } >>"$BENCH_RESULTS_FILE"
  echo "appended to $BENCH_RESULTS_FILE" >&2
fi
