#!/usr/bin/env bash
# ShardGate replica read benchmark: pgbench -S (select-only, prepared) through ShardGate with reads
# going to the primary only, to 1 replica, and spread round-robin over 2 replicas; the 2-replica
# proxy once with the default health monitor interval and once with the monitor at 100 ms (the
# monitor must not cost the hot path). Plus one run straight at the primary for reference.
#
#   bench/replicas.sh        (no arguments; everything is set through the environment)
#
# One cluster, 1 shard x (primary + 2 replicas), and four proxies in front of it:
#   primary-only       no replicas listed: reads go to the primary
#   1-replica          replicas = [replica0]
#   2-replicas         replicas = [replica0, replica1], [replicas] health_interval_ms left at default
#   2-replicas-mon100  as 2-replicas, with [replicas] health_interval_ms = 100
#   direct             pgbench straight at the primary (no proxy)
# Every round runs each target once (the order rotates by one each round). For every run the
# script reads, on the primary and both replicas, pg_stat_user_tables.idx_scan of
# pgbench_accounts before and after, so the table shows which servers actually served the reads.
# (Each pgbench -S transaction is exactly one index lookup on pgbench_accounts; unlike
# xact_commit this leaves out the proxies' health probes and our own queries.)
#
# Environment (defaults in brackets):
#   DURATION [15]  seconds per pgbench run     ROUNDS [1]     repetitions of the whole set
#   CLIENTS [16]   THREADS [2]   SCALE [10]    WARMUP [3]     seconds per target before measuring
#   MODE [prepared]   pgbench -M
#   TARGETS ["direct primary-only 1-replica 2-replicas 2-replicas-mon100"]
#   MON_INTERVAL_MS [100]   health_interval_ms of 2-replicas-mon100
#   STATS_SETTLE [11]  seconds to wait before reading the counters. PostgreSQL 15 backends that
#                      go idle keep up to 1 s of statistics unflushed for 10 s, so a read sooner
#                      would misattribute reads between runs.
#   SHARDGATE_BIN [build/shardgate]   copied to build/bench-replicas/bin first
#   SHARDGATE_EXTRA_TOML   appended to every proxy config right after [proxy] (bare keys land in
#                          [proxy]; do not open a [replicas] section: the configs may have one)
#   BENCH_BASE_PORT [58532]   first port tried; busy ports are skipped
#   KEEP_LOGS [0]  1 keeps pgbench's per-transaction logs in build/bench-replicas/runs
#
# Results: build/bench-replicas/results.md and results.json; logs in build/bench-replicas/logs;
# the cluster lives in build/bench-replicas/cluster. Everything it starts is torn down on exit,
# and a new run first cleans up after a killed one.
set -euo pipefail
umask 022 # the postgres user must read what we create

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/build/bench-replicas
CL=$OUT/cluster
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PYTHON=/usr/bin/python3
DURATION=${DURATION:-15} ROUNDS=${ROUNDS:-1} CLIENTS=${CLIENTS:-16} THREADS=${THREADS:-2}
SCALE=${SCALE:-10} WARMUP=${WARMUP:-3} KEEP_LOGS=${KEEP_LOGS:-0} MODE=${MODE:-prepared}
STATS_SETTLE=${STATS_SETTLE:-11} MON_INTERVAL_MS=${MON_INTERVAL_MS:-100}
ALL_TARGETS="direct primary-only 1-replica 2-replicas 2-replicas-mon100"
TARGETS=${TARGETS:-$ALL_TARGETS}
SRC_BIN=${SHARDGATE_BIN:-build/shardgate}
PROXIES="primary-only 1-replica 2-replicas 2-replicas-mon100"
export PGPASSWORD=app-secret PGCONNECT_TIMEOUT=10

die() { echo "bench-replicas: error: $*" >&2; exit 1; }
log() { echo "bench-replicas: $*" >&2; }
want() { [[ " $TARGETS " == *" $1 "* ]]; }

for t in $TARGETS; do
  [[ " $ALL_TARGETS " == *" $t "* ]] || die "unknown target '$t' (known: $ALL_TARGETS)"
done
case $MODE in simple | prepared | extended) ;; *) die "unknown mode '$MODE'" ;; esac
for v in DURATION ROUNDS CLIENTS THREADS SCALE WARMUP STATS_SETTLE MON_INTERVAL_MS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((ROUNDS >= 1 && DURATION >= 1)) || die "ROUNDS and DURATION must be at least 1"

# --- processes we start: pid files under $OUT/pids, checked by name so a recycled pid is safe ---



teardown() {
  local t
  for t in $PROXIES; do stop_pidfile "$OUT/pids/$t" shardgate; done
  [ -d "$CL" ] && scripts/cluster.sh down --dir "$CL" --purge >/dev/null
  return 0
}

# --- ports ---

NEXT_PORT=${BENCH_BASE_PORT:-58532}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"


# --- 1. packages and binary ---

scripts/setup.sh
need_binary "$SRC_BIN"

begin_run
rm -rf "${OUT:?}"/{runs,logs,pids,bin} "$OUT"/*.toml
rm -f "$OUT/results.md" "$OUT/results.json" "$OUT/runs.jsonl"
mkdir -p "$OUT/runs" "$OUT/logs" "$OUT/pids" "$OUT/bin"
BIN=$OUT/bin/shardgate
cp "$SRC_BIN" "$BIN"
# The binary may be older or newer than the checkout: say where it came from and when it was built.
BIN_FROM="$SRC_BIN, modified $(date -r "$SRC_BIN" -Is), md5 $(md5sum <"$BIN" | cut -c1-12)"
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src 2>/dev/null || GIT_REV="$GIT_REV+dirty"

# --- 2. cluster and data ---

take_ports 3
PRIMARY=$REPLY R0=$((REPLY + 1)) R1=$((REPLY + 2))
log "starting cluster: 1 shard x (primary + 2 replicas) on ports $PRIMARY..$R1"
scripts/cluster.sh up --dir "$CL" --shards 1 --replicas 2 --base-port "$PRIMARY" >"$OUT/logs/cluster.log" 2>&1 ||
  die "cluster start failed; $OUT/logs/cluster.log says:
$(tail -n 30 "$OUT/logs/cluster.log")"

log "loading pgbench -i -s $SCALE into the primary"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PRIMARY" -U app app >"$OUT/logs/load.log" 2>&1 ||
  die "pgbench -i failed; see $OUT/logs/load.log"
psql -h 127.0.0.1 -p "$PRIMARY" -U postgres -d app -qAtX -c checkpoint # none inside a measured run

wait_replica() { # replica-port: until it has replayed the primary's current WAL
  local lsn i
  lsn=$(psql -h 127.0.0.1 -p "$PRIMARY" -U postgres -d app -AtX -c "select pg_current_wal_lsn()")
  for ((i = 0; i < 600; i++)); do
    [ "$(psql -h 127.0.0.1 -p "$1" -U postgres -d app -AtX -c "select pg_last_wal_replay_lsn() >= '$lsn'")" = t ] && return 0
    sleep 0.1
  done
  die "replica on port $1 did not catch up with the primary (LSN $lsn) in 60s"
}
log "waiting for the replicas to catch up"
wait_replica "$R0"
wait_replica "$R1"

# --- 3. ShardGate proxies ---

declare -A PORT PIDF
PORT[direct]=$PRIMARY

proxy_config() { # port, replicas-section ("" for none), replica ports...
  local port=$1 section=$2 list="" p; shift 2
  for p in "$@"; do list+="${list:+, }\"postgresql://app:app-secret@127.0.0.1:$p/app\""; done
  cat <<EOF
[proxy]
listen = "127.0.0.1:$port"
database = "app"
pool_mode = "transaction"
EOF
  [ -n "${SHARDGATE_EXTRA_TOML:-}" ] && printf '%s\n' "$SHARDGATE_EXTRA_TOML"
  cat <<EOF

[[users]]
name = "app"
password = "app-secret"
EOF
  [ -n "$section" ] && printf '\n[replicas]\n%s\n' "$section"
  cat <<EOF

[[shards]]
name = "s0"
primary = "postgresql://app:app-secret@127.0.0.1:$PRIMARY/app"
EOF
  [ -n "$list" ] && echo "replicas = [$list]"
  cat <<EOF

[[tables]]
name = "pgbench_accounts"
key = "aid"
key_type = "int"
EOF
}

start_proxy() { # target, replicas-section, replica ports...
  local t=$1; shift
  take_ports 1; PORT[$t]=$REPLY
  proxy_config "${PORT[$t]}" "$@" >"$OUT/$t.toml"
  launch_proxy "$t"
}
log "starting proxies"
want primary-only && start_proxy primary-only ""
want 1-replica && start_proxy 1-replica "" "$R0"
want 2-replicas && start_proxy 2-replicas "" "$R0" "$R1"
want 2-replicas-mon100 && start_proxy 2-replicas-mon100 "health_interval_ms = $MON_INTERVAL_MS" "$R0" "$R1"

# --- 4. the runs ---

CLK_TCK=$(getconf CLK_TCK)

# Index lookups on pgbench_accounts served so far by each server, as "primary replica0 replica1".
reads_counters() {
  local p out=()
  for p in "$PRIMARY" "$R0" "$R1"; do
    out+=("$(psql -h 127.0.0.1 -p "$p" -U postgres -d app -AtX -c \
      "select coalesce(sum(idx_scan), 0) from pg_stat_user_tables where relname = 'pgbench_accounts'")")
  done
  echo "${out[*]}"
}

pgb() { # target, then extra pgbench args
  local t=$1; shift
  pgbench -n -S -M "$MODE" -c "$CLIENTS" -j "$THREADS" "$@" -h 127.0.0.1 -p "${PORT[$t]}" -U app app
}

# The proxies' monitors need a probe or two before they admit the replicas; the warm-up covers it.
sleep 1
if ((WARMUP > 0)); then
  for t in $TARGETS; do
    log "warm-up: $t, ${WARMUP}s"
    pgb "$t" -T "$WARMUP" >"$OUT/logs/warmup-$t.log" 2>&1 || log "warm-up of $t failed; see $OUT/logs/warmup-$t.log"
  done
fi

RUNS=$OUT/runs.jsonl
: >"$RUNS"
read -r -a TLIST <<<"$TARGETS"
N=${#TLIST[@]}
log "each run is preceded by ${STATS_SETTLE}s for PostgreSQL's statistics to settle"
for ((r = 1; r <= ROUNDS; r++)); do
  for ((k = 0; k < N; k++)); do
    t=${TLIST[$(((k + r - 1) % N))]}
    name=r$r-$t
    args=(-T "$DURATION" -l "--log-prefix=$OUT/runs/$name.tx")
    sleep "$STATS_SETTLE"
    reads_before=$(reads_counters)
    echo "bench-replicas: [round $r/$ROUNDS] $(printf '%q ' pgbench -n -S -M "$MODE" -c "$CLIENTS" -j "$THREADS" "${args[@]}" -h 127.0.0.1 -p "${PORT[$t]}" -U app app)  # $t" >&2
    before=""
    [ -n "${PIDF[$t]:-}" ] && before=$(cpu_ticks "${PIDF[$t]}")
    rc=0
    pgb "$t" "${args[@]}" >"$OUT/runs/$name.out" 2>&1 || rc=$?
    cpu_us=""
    [ -n "$before" ] && cpu_us=$((($(cpu_ticks "${PIDF[$t]}") - before) * 1000000 / CLK_TCK))
    sleep "$STATS_SETTLE"
    reads_after=$(reads_counters)
    "$PYTHON" bench/replicas_report.py record --runs "$RUNS" --round "$r" --mode "$MODE" --target "$t" \
      --output "$OUT/runs/$name.out" --log-prefix "$OUT/runs/$name.tx" --rc "$rc" \
      --cpu-us "$cpu_us" --keep-logs "$KEEP_LOGS" \
      --reads-before "$reads_before" --reads-after "$reads_after"
  done
done

# --- 5. report ---

PROXY_LOGS=()
for t in $PROXIES; do
  [ -f "$OUT/logs/$t.log" ] && PROXY_LOGS+=(--proxy-log "$t=$OUT/logs/$t.log")
done

"$PYTHON" bench/replicas_report.py summary --runs "$RUNS" --md "$OUT/results.md" --json "$OUT/results.json" \
  --meta "command=$(printf '%q ' env DURATION="$DURATION" ROUNDS="$ROUNDS" CLIENTS="$CLIENTS" THREADS="$THREADS" SCALE="$SCALE" WARMUP="$WARMUP" MODE="$MODE" STATS_SETTLE="$STATS_SETTLE" MON_INTERVAL_MS="$MON_INTERVAL_MS" TARGETS="$TARGETS" bench/replicas.sh | sed 's/ $//')" \
  --meta "pgbench=pgbench -n -S -M $MODE -c $CLIENTS -j $THREADS -T $DURATION -l --log-prefix=PREFIX -h 127.0.0.1 -p PORT -U app app" \
  --meta "date=$START_DATE" \
  --meta "nproc=$(nproc)" \
  --meta "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
  --meta "kernel=$(uname -r)" \
  --meta "loadavg_at_start=$LOAD_AT_START" \
  --meta "loadavg_at_end=$(cut -d' ' -f1-3 /proc/loadavg)" \
  --meta "postgres=$("$PGBIN/postgres" --version)" \
  --meta "shardgate=$("$BIN" --version 2>&1 | head -n 1) (checkout at start: git $GIT_REV; binary: $BIN_FROM)" \
  --meta "shardgate_extra_toml=${SHARDGATE_EXTRA_TOML:-}" \
  --meta "scale=$SCALE" \
  --meta "mon_interval_ms=$MON_INTERVAL_MS" \
  --meta "ports=primary $PRIMARY, replica0 $R0, replica1 $R1" \
  "${PROXY_LOGS[@]}"
