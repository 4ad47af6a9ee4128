#!/usr/bin/env bash
# ShardGate migration benchmark, in one run:
#   1. Backfill rate against raw COPY. ROWS rows loaded straight into s0's primary (2 primaries,
#      no replicas); the proxy starts with s0 only; POST /api/v1/shards adds s1 and the
#      migration is polled every 100 ms until DONE. Backfill rate = the journal's rows_copied
#      over the time in phase BACKFILL (first poll showing it to the first showing a later
#      phase); also the migration's own rows_per_second and the time to DONE. Then the baseline
#      on the same two servers: psql "\copy (SELECT * FROM accounts) TO STDOUT" from s0's primary
#      (the rows that stayed there, about as many as moved) piped into psql "\copy accounts_copy
#      FROM STDIN" on s1's primary (a scratch table LIKE accounts INCLUDING ALL), COPY_RUNS
#      times; the ratio backfill/COPY (target: >= 50%).
#   2. Client-visible write pause at cutover, under load. The tables and the control plane are
#      reset, PAUSE_ROWS rows go on s0, and CLIENTS psycopg2 clients (autocommit, through the
#      proxy) run UPDATE accounts SET balance = balance + 1 WHERE id = <random> over the whole
#      key range while CYCLES migrations run one after the other (add s1, remove s1, add s1,
#      ...). Per cutover: the runner's journaled cutover_pause_ms, and p50/p99/max latency of the
#      statements started within +-WINDOW s of the flip (journal flipped_at_ms), against the
#      statements outside those windows; client errors by SQLSTATE.
#
#   bench/migration.sh        (no arguments; everything is set through the environment)
#
# Environment (defaults in brackets):
#   ROWS [1000000]      rows for part 1        PAUSE_ROWS [100000]   rows for part 2
#   CLIENTS [8]         client threads         CYCLES [3]            migrations in part 2
#   RATE [100]          statements/s per client (0: each as fast as it can; on a 2-core box
#                       that saturates the machine, proxy and servers included)
#   SETTLE [3]          seconds of load before, between and after the part-2 migrations
#   WINDOW [1]          seconds either side of a flip that make its window
#   COPY_RUNS [3]       baseline COPY runs (the median is used)
#   BATCH_ROWS []       [migrations] batch_rows (empty: the proxy's default, 10000)
#   PARTS ["1 2"]       which parts to run (part 2 alone still reports; part 1's table empty)
#   SHARDGATE_BIN [build/shardgate]   copied to build/bench/migration/bin first, so a rebuild
#                       does not disturb a run (not build/bench/bin: bench/run.sh empties that)
#   BENCH_BASE_PORT [59000]   first port tried; busy ports are skipped
#
# Results: build/bench/migration.md (also printed) and build/bench/migration.json; logs, proxy
# configs, the per-statement samples (samples.csv) and the migrations' poll traces in
# build/bench/migration/; the cluster lives in build/bench/mig. Everything it starts is torn
# down on exit, and a new run first cleans up after a killed one.
set -euo pipefail
umask 022 # the postgres user must read what we create

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/build/bench/migration
CL=$ROOT/build/bench/mig
MD=$ROOT/build/bench/migration.md
JSON=$ROOT/build/bench/migration.json
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PYTHON=/usr/bin/python3
ROWS=${ROWS:-1000000} PAUSE_ROWS=${PAUSE_ROWS:-100000} CLIENTS=${CLIENTS:-8} CYCLES=${CYCLES:-3}
RATE=${RATE:-100} SETTLE=${SETTLE:-3} WINDOW=${WINDOW:-1} COPY_RUNS=${COPY_RUNS:-3}
BATCH_ROWS=${BATCH_ROWS:-} PARTS=${PARTS:-1 2}
SRC_BIN=${SHARDGATE_BIN:-build/shardgate}
export PGPASSWORD=app-secret PGCONNECT_TIMEOUT=10

die() { echo "bench-migration: error: $*" >&2; exit 1; }
log() { echo "bench-migration: $*" >&2; }
part() { [[ " $PARTS " == *" $1 "* ]]; }

for v in ROWS PAUSE_ROWS CLIENTS CYCLES COPY_RUNS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a whole number >= 1 (got '${!v}')"
done
for v in RATE SETTLE WINDOW; do
  [[ "${!v}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$v must be a number (got '${!v}')"
done
[ -z "$BATCH_ROWS" ] || [[ "$BATCH_ROWS" =~ ^[1-9][0-9]*$ ]] || die "BATCH_ROWS must be a whole number"
for p in $PARTS; do case $p in 1 | 2) ;; *) die "PARTS takes 1 and 2 (got '$p')" ;; esac; done

# --- processes we start: pid files under $OUT/pids, checked by name so a recycled pid is safe ---

NEXT_PORT=${BENCH_BASE_PORT:-59000}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

teardown() {
  stop_pidfile "$OUT/pids/helper" python3
  stop_pidfile "$OUT/pids/proxy" shardgate
  [ -d "$CL" ] && scripts/cluster.sh down --dir "$CL" --purge >/dev/null
  return 0
}

# --- 1. packages, binary, cluster ---

scripts/setup.sh
need_binary "$SRC_BIN"
"$PYTHON" -c 'import psycopg2' || die "python3-psycopg2 is missing (scripts/setup.sh installs it)"

begin_run
rm -rf "$OUT" "$MD" "$JSON"
mkdir -p "$OUT/logs" "$OUT/pids" "$OUT/bin"
BIN=$OUT/bin/shardgate
cp "$SRC_BIN" "$BIN"

take_ports 2; S0=$REPLY S1=$((REPLY + 1))
take_ports 1; PROXY_PORT=$REPLY
take_ports 1; ADMIN_PORT=$REPLY
url() { echo "postgresql://app:app-secret@127.0.0.1:$1/app"; }

log "starting 2 primaries on ports $S0 and $S1 in $CL"
scripts/cluster.sh up --dir "$CL" --shards 2 --replicas 0 --base-port "$S0" >"$OUT/logs/cluster.log" 2>&1 ||
  die "cluster start failed; see $OUT/logs/cluster.log"

sql() { # port user sql
  PGOPTIONS="-c client_min_messages=warning" psql -h 127.0.0.1 -p "$1" -U "$2" -d app -qAtX -v ON_ERROR_STOP=1 -c "$3"
}

TOKEN=$OUT/admin.token
(umask 077 && head -c 24 /dev/urandom | base64 >"$TOKEN") # 32 characters

# The proxy on s0 only; the control plane's metadata in s0's primary (the default).
write_config() {
  cat >"$OUT/proxy.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PROXY_PORT"
database = "app"
pool_mode = "transaction"

[[users]]
name = "app"
password = "app-secret"

[ring]
vnodes = 150

[[shards]]
name = "s0"
primary = "$(url "$S0")"
replicas = []

[[tables]]
name = "accounts"
key = "id"
key_type = "bigint"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_file = "$TOKEN"
EOF
  if [ -n "$BATCH_ROWS" ]; then
    printf '\n[migrations]\nbatch_rows = %s\n' "$BATCH_ROWS" >>"$OUT/proxy.toml"
  fi
}

start_proxy() {
  local pid
  setsid "$BIN" --config "$OUT/proxy.toml" </dev/null >>"$OUT/logs/proxy.log" 2>&1 &
  pid=$!
  echo "$pid" >"$OUT/pids/proxy"
  wait_port "$PROXY_PORT" "$pid" shardgate "$OUT/logs/proxy.log"
  wait_port "$ADMIN_PORT" "$pid" "shardgate (admin API)" "$OUT/logs/proxy.log"
}

# accounts, owned by app, on both primaries; n rows on s0 only.
fresh_tables() { # rows
  local p
  stop_pidfile "$OUT/pids/proxy" shardgate
  for p in "$S0" "$S1"; do
    # A previous part's tables, change capture and control plane (schema shardgate*).
    sql "$p" postgres "DROP TABLE IF EXISTS accounts, accounts_copy CASCADE;
      DO \$\$ DECLARE s text; BEGIN
        FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'shardgate%' LOOP
          EXECUTE format('DROP SCHEMA %I CASCADE', s);
        END LOOP; END \$\$"
    sql "$p" app "CREATE TABLE accounts(id bigint PRIMARY KEY, owner text, balance bigint NOT NULL DEFAULT 0)"
  done
  log "loading $1 rows into s0's primary"
  sql "$S0" app "INSERT INTO accounts SELECT g, 'owner-' || g, 1000 FROM generate_series(1, $1) g"
  sql "$S0" app "VACUUM ANALYZE accounts"
  for p in "$S0" "$S1"; do sql "$p" postgres checkpoint; done # no checkpoint of the load mid-run
}

# The Python helper runs in the background and is waited for, so a TERM reaches our trap at once
# (which stops it by its pid file).
helper() {
  local pid rc=0
  "$PYTHON" bench/migration_report.py "$@" &
  pid=$!
  echo "$pid" >"$OUT/pids/helper"
  wait "$pid" || rc=$?
  rm -f "$OUT/pids/helper"
  return $rc
}

write_config

# --- 2. part 1: backfill against COPY ---

if part 1; then
  fresh_tables "$ROWS"
  start_proxy
  log "part 1: adding s1 (cleanup_after_s 0), no client load"
  helper migrate --admin "http://127.0.0.1:$ADMIN_PORT" --token-file "$TOKEN" --method POST \
    --path /api/v1/shards --out "$OUT/backfill.json" \
    --body "{\"name\": \"s1\", \"primary\": \"$(url "$S1")\", \"cleanup_after_s\": 0}" ||
    die "the part-1 migration did not end DONE; see $OUT/backfill.json and $OUT/logs/proxy.log"
  moved=$(sql "$S1" app "SELECT count(*) FROM accounts")
  stayed=$(sql "$S0" app "SELECT count(*) FROM accounts")
  log "after DONE: $moved rows on s1, $stayed on s0 (of $ROWS)"
  [ "$((moved + stayed))" -eq "$ROWS" ] || die "rows lost or duplicated: $moved + $stayed != $ROWS"

  log "baseline: psql \\copy s0 -> s1 scratch table, $COPY_RUNS runs of $stayed rows"
  sql "$S1" app "DROP TABLE IF EXISTS accounts_copy; CREATE TABLE accounts_copy (LIKE accounts INCLUDING ALL)"
  : >"$OUT/copy.txt"
  for ((r = 1; r <= COPY_RUNS; r++)); do
    sql "$S1" app "TRUNCATE accounts_copy"
    for p in "$S0" "$S1"; do sql "$p" postgres checkpoint; done
    t0=$(date +%s.%N)
    psql -h 127.0.0.1 -p "$S0" -U app -d app -qAtX -v ON_ERROR_STOP=1 \
      -c '\copy (SELECT * FROM accounts) TO STDOUT' |
      psql -h 127.0.0.1 -p "$S1" -U app -d app -qAtX -v ON_ERROR_STOP=1 \
        -c '\copy accounts_copy FROM STDIN' >/dev/null
    t1=$(date +%s.%N)
    n=$(sql "$S1" app "SELECT count(*) FROM accounts_copy")
    [ "$n" -eq "$stayed" ] || die "COPY moved $n rows, expected $stayed"
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    log "  COPY run $r: $n rows in ${secs}s"
    echo "$n $secs" >>"$OUT/copy.txt"
  done
fi

# --- 3. part 2: write pause at cutover under load ---

if part 2; then
  fresh_tables "$PAUSE_ROWS"
  start_proxy
  log "part 2: $CLIENTS clients, $CYCLES migrations"
  part2_rc=0
  helper load --dsn "$(url "$PROXY_PORT")" --rows "$PAUSE_ROWS" --clients "$CLIENTS" --rate "$RATE" \
    --admin "http://127.0.0.1:$ADMIN_PORT" --token-file "$TOKEN" --s1-primary "$(url "$S1")" \
    --cycles "$CYCLES" --settle "$SETTLE" --window "$WINDOW" \
    --out "$OUT/load.json" --samples "$OUT/samples.csv" ||
    { part2_rc=1; log "the part-2 run failed; reporting what it has (see $OUT/load.json, $OUT/logs/proxy.log)"; }
fi

# --- 4. report ---

GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src 2>/dev/null || GIT_REV="$GIT_REV+dirty"
cmd=(env ROWS="$ROWS" PAUSE_ROWS="$PAUSE_ROWS" CLIENTS="$CLIENTS" CYCLES="$CYCLES" RATE="$RATE"
  SETTLE="$SETTLE" WINDOW="$WINDOW" COPY_RUNS="$COPY_RUNS")
[ -n "$BATCH_ROWS" ] && cmd+=(BATCH_ROWS="$BATCH_ROWS")
[ "$PARTS" != "1 2" ] && cmd+=(PARTS="$PARTS")
cmd+=(bench/migration.sh)
report=(--md "$MD" --json "$JSON" --copy "$OUT/copy.txt" --backfill "$OUT/backfill.json")
part 2 && report+=(--load "$OUT/load.json")
[ -f "$OUT/copy.txt" ] || : >"$OUT/copy.txt"
"$PYTHON" bench/migration_report.py report "${report[@]}" \
  --meta "command=$(printf '%q ' "${cmd[@]}" | sed 's/ $//')" \
  --meta "date=$START_DATE" \
  --meta "elapsed=${SECONDS}s" \
  --meta "nproc=$(nproc)" \
  --meta "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
  --meta "loadavg_at_start=$LOAD_AT_START" \
  --meta "loadavg_at_end=$(cut -d' ' -f1-3 /proc/loadavg)" \
  --meta "postgres=$("$PGBIN/postgres" --version)" \
  --meta "shardgate=$("$BIN" --version 2>&1 | head -n 1) (git $GIT_REV)" \
  --meta "rows=$ROWS" --meta "pause_rows=$PAUSE_ROWS" \
  --meta "batch_rows=${BATCH_ROWS:-default (10000)}" \
  --meta "cutover_pause_ms=default (500)"
exit "${part2_rc:-0}"
