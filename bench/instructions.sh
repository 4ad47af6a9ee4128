#!/usr/bin/env bash
# User-space instructions per query: ShardGate vs PgBouncer, counted by valgrind (callgrind).
#
#   bench/instructions.sh        (no arguments; everything is set through the environment)
#
# CPU time per query on a shared 2-core box moves by ±10% from run to run; an instruction count
# does not. This runs each proxy under callgrind twice in front of the same 1-shard cluster, once
# with a short pgbench -S run and once with QUERIES more, and divides the difference by QUERIES,
# so start-up and the clients' SCRAM logins cancel out. It counts only the proxy's own user-space
# instructions: system calls, context switches and cache misses are not in it (bench/run.sh
# measures those, as CPU time). ShardGate runs with workers = 1, like PgBouncer.
#
# Environment (defaults in brackets):
#   QUERIES [10000]  extra queries in the long run    CLIENTS [4]
#   MODES ["simple prepared"]  (PgBouncer 1.18 runs simple only: it cannot pool prepared)
#   SHARDGATE_BIN [build/shardgate]    BENCH_BASE_PORT [58632]
#
# Results: build/bench-instr/results.md; logs in build/bench-instr/logs.
set -euo pipefail
umask 022 # the postgres user must read what we create

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/build/bench-instr
QUERIES=${QUERIES:-10000} CLIENTS=${CLIENTS:-4}
MODES=${MODES:-simple prepared}
SRC_BIN=${SHARDGATE_BIN:-build/shardgate}
export PGPASSWORD=app-secret PGCONNECT_TIMEOUT=30

die() { echo "bench-instr: error: $*" >&2; exit 1; }
log() { echo "bench-instr: $*" >&2; }
NEXT_PORT=${BENCH_BASE_PORT:-58632}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

scripts/setup.sh
need_binary "$SRC_BIN"
command -v valgrind >/dev/null || die "valgrind is missing (scripts/setup.sh installs it)"

teardown() {
  pkill -INT -f "$OUT/bin/shardgate" 2>/dev/null || true
  pkill -INT -f "$OUT/pgbouncer/pgbouncer.ini" 2>/dev/null || true
  sleep 1
  [ -d "$OUT/A" ] && scripts/cluster.sh down --dir "$OUT/A" --purge >/dev/null
  return 0
}
teardown
trap teardown EXIT
trap 'exit 130' INT TERM
rm -rf "$OUT/logs" "$OUT/bin" "$OUT/pgbouncer" "$OUT/cg"
mkdir -p "$OUT/logs" "$OUT/bin" "$OUT/pgbouncer" "$OUT/cg"
cp "$SRC_BIN" "$OUT/bin/shardgate"
chown postgres: "$OUT/cg" "$OUT/pgbouncer"

take_ports 1; DB=$REPLY
log "starting a 1-shard cluster on port $DB"
scripts/cluster.sh up --dir "$OUT/A" --shards 1 --replicas 0 --base-port "$DB" >"$OUT/logs/cluster.log" 2>&1 ||
  die "cluster start failed; see $OUT/logs/cluster.log"
pgbench -i -q -s 1 -h 127.0.0.1 -p "$DB" -U app app >"$OUT/logs/load.log" 2>&1 || die "pgbench -i failed"

take_ports 1; PB_PORT=$REPLY
pgbouncer_config "$OUT/pgbouncer" "$DB" "$PB_PORT"

take_ports 1; SG_PORT=$REPLY
cat >"$OUT/shardgate.toml" <<EOF
[[users]]
name = "app"
password = "app-secret"

[[shards]]
name = "s0"
primary = "postgresql://app:app-secret@127.0.0.1:$DB/app"

[[tables]]
name = "pgbench_accounts"
key = "aid"
key_type = "int"

# The health monitor's probes would be counted too; one every 10 minutes keeps them out.
[replicas]
health_interval_ms = 600000

[proxy]
listen = "127.0.0.1:$SG_PORT"
database = "app"
workers = 1
EOF

# Runs one proxy under callgrind for `per_client` transactions per client; prints the total count.
measure() { # target mode per_client
  local t=$1 mode=$2 n=$3 out=$OUT/cg/$1-$2-$3.out port pid i
  rm -f "$out"
  if [ "$t" = pgbouncer ]; then
    port=$PB_PORT
    rm -f "$OUT/pgbouncer/pgbouncer.pid"
    runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$out" \
      /usr/sbin/pgbouncer -q "$OUT/pgbouncer/pgbouncer.ini" >"$OUT/logs/$t-$mode-$n.log" 2>&1 &
  else
    port=$SG_PORT
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$OUT/bin/shardgate" --config "$OUT/shardgate.toml" >"$OUT/logs/$t-$mode-$n.log" 2>&1 &
  fi
  pid=$!
  for ((i = 0; i < 300; i++)); do port_open "$port" && break; sleep 0.1; done
  port_open "$port" || die "$t did not listen under valgrind; see $OUT/logs/$t-$mode-$n.log"
  pgbench -n -S -M "$mode" -c "$CLIENTS" -j 1 -t "$n" -h 127.0.0.1 -p "$port" -U app app \
    >"$OUT/logs/pgbench-$t-$mode-$n.log" 2>&1 || die "pgbench through $t failed; see $OUT/logs"
  pkill -INT -f "callgrind-out-file=$out" || true
  for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
  # (awk reads to the end: an early exit would fail the pipe under pipefail)
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'
}

short=100
long=$((short + QUERIES / CLIENTS))
{
  echo "| Target | Mode | instructions per query |"
  echo "| --- | --- | ---: |"
  for mode in $MODES; do
    for t in pgbouncer shardgate; do
      [ "$t" = pgbouncer ] && [ "$mode" != simple ] && continue
      log "$t, $mode: $short and $long transactions per client under callgrind"
      a=$(measure "$t" "$mode" "$short")
      b=$(measure "$t" "$mode" "$long")
      [ -n "$a" ] && [ -n "$b" ] || die "no callgrind totals for $t/$mode"
      echo "| $t | $mode | $(((b - a) / ((long - short) * CLIENTS))) |"
    done
  done
} | tee "$OUT/results.md"
