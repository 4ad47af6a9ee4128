#!/usr/bin/env bash
# ShardGate multi-shard benchmark: reads across shards and transactions across shards, in one run.
#
# Three PostgreSQL 15 primaries (no replicas, max_prepared_transactions = 64, via
# scripts/cluster.sh) and two proxies in transaction pooling, each with a database of its own on
# those servers and a metadata database where two-phase commit records its decisions:
#   2-shards   proxy on s0, s1      (database app2 on s0's and s1's server, metadata meta2)
#   3-shards   proxy on s0, s1, s2  (database app3 on all three, metadata meta3)
#   direct     pgbench straight at s0's server, database app1 holding every row (reference)
# accounts(id bigint primary key, owner text, balance bigint) is sharded on id. ROWS rows are
# placed by the ring contract (bench/multishard_report.py plan, checked against the proxy's
# --locate and by reads through each proxy) and loaded straight into their owners' primaries.
# The unsharded pairs_same / pairs_cross(i int primary key, a bigint, b bigint) live on the
# default shard s0: PAIRS pairs of ids on one shard / on two shards, a < b, no id in two pairs.
#
# pgbench -n -M simple -c CLIENTS -j THREADS -T DURATION, per-transaction logs, these scripts:
#   key-read       \set id random(1, ROWS)  SELECT id, balance FROM accounts WHERE id = :id;
#   scatter-count  SELECT count(*) FROM accounts;                       (every shard, merged)
#   scatter-top10  SELECT id, balance FROM accounts ORDER BY balance DESC LIMIT 10;
#   tx-one-shard   \set i random(1, PAIRS)  SELECT a, b FROM pairs_same WHERE i = :i \gset
#                  BEGIN; UPDATE ... balance - 1 WHERE id = :a; UPDATE ... balance + 1 WHERE
#                  id = :b; COMMIT;   (ids in increasing order: no deadlock between clients)
#   tx-two-shards  the same on pairs_cross: the proxy commits it with two-phase commit
# and reports tps, mean, p50 and p99 latency (ms) and the proxy's CPU seconds per 1000
# transactions (utime+stime from /proc, as bench/run.sh), plus scatter-top10 p99 / key-read p99
# (target for 3 shards: <= 2x). Each tx run is checked straight on the primaries: the sum of
# balances does not move, the a-ids lose and the b-ids gain exactly one per transaction pgbench
# counted, the other pairs' ids do not move, and no prepared transaction is left; through a
# proxy, pg_prepared_xacts is sampled every 0.2 s during the run: tx-two-shards must be seen
# prepared (two-phase commit) and tx-one-shard never. The rows and the sum read through each
# proxy must match the primaries. A failed check fails the run (exit 3, after the report; a
# failed pgbench run: exit 4).
#
#   bench/multishard.sh        (no arguments; everything is set through the environment)
#
# Environment (defaults in brackets):
#   DURATION [15]  seconds per pgbench run     WARMUP [2]   seconds of key-read per target first
#   CLIENTS [8]    THREADS [2]                 ROWS [100000]   PAIRS [10000] (of each kind)
#   TARGETS ["2-shards 3-shards direct"]
#   CASES ["key-read scatter-count scatter-top10 tx-one-shard tx-two-shards"]
#   DIRECT_CASES [same as CASES]   the cases that also run on "direct"
#   BALANCE_INDEX [0]   1 adds an index on accounts(balance): scatter-top10 then reads 10 rows
#                  per shard instead of scanning and sorting every row
#   SEED [1]       balances and pairs
#   SHARDGATE_BIN [build/shardgate]   copied to build/bench-multishard/bin first, so a rebuild
#                  does not disturb a run
#   SHARDGATE_EXTRA_TOML   appended to both proxy configs, right after [proxy] (bare keys land
#                  in [proxy]; start a [section] for anything else)
#   BENCH_BASE_PORT [59100]   first port tried; busy ports are skipped
#   KEEP_LOGS [0]  1 keeps pgbench's per-transaction logs in build/bench-multishard/runs
#
# Results: build/bench-multishard/results.md (also printed) and results.json; logs, configs and
# pgbench scripts in build/bench-multishard/; the cluster lives in build/bench-multishard/cluster.
# Runs go case by case, each case on every target back to back. With the defaults it takes about
# four minutes. Everything it starts is torn down on exit, and a new run first cleans up after a
# killed one.
set -euo pipefail
umask 022 # the postgres user must read what we create

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/build/bench-multishard
CL=$OUT/cluster
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PYTHON=/usr/bin/python3
DURATION=${DURATION:-15} WARMUP=${WARMUP:-2} CLIENTS=${CLIENTS:-8} THREADS=${THREADS:-2}
ROWS=${ROWS:-100000} PAIRS=${PAIRS:-10000} SEED=${SEED:-1} KEEP_LOGS=${KEEP_LOGS:-0}
TARGETS=${TARGETS:-2-shards 3-shards direct}
CASES=${CASES:-key-read scatter-count scatter-top10 tx-one-shard tx-two-shards}
DIRECT_CASES=${DIRECT_CASES:-$CASES}
BALANCE_INDEX=${BALANCE_INDEX:-0}
SRC_BIN=${SHARDGATE_BIN:-build/shardgate}
export PGPASSWORD=app-secret PGCONNECT_TIMEOUT=10

die() { echo "bench-multishard: error: $*" >&2; exit 1; }
log() { echo "bench-multishard: $*" >&2; }
has() { [[ " $1 " == *" $2 "* ]]; } # list word

for v in DURATION CLIENTS THREADS ROWS PAIRS SEED; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a whole number >= 1 (got '${!v}')"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number (got '$WARMUP')"
[[ "$BALANCE_INDEX" =~ ^[01]$ ]] || die "BALANCE_INDEX must be 0 or 1 (got '$BALANCE_INDEX')"
((PAIRS * 4 <= ROWS)) || die "PAIRS * 4 must not exceed ROWS (no id is in two pairs)"
for t in $TARGETS; do case $t in 2-shards | 3-shards | direct) ;; *) die "unknown target '$t'" ;; esac; done
for c in $CASES $DIRECT_CASES; do
  case $c in key-read | scatter-count | scatter-top10 | tx-one-shard | tx-two-shards) ;;
  *) die "unknown case '$c'" ;;
  esac
done

# --- processes we start: pid files under $OUT/pids, checked by name so a recycled pid is safe ---

NEXT_PORT=${BENCH_BASE_PORT:-59100}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

teardown() {
  stop_pidfile "$OUT/pids/pgbench" pgbench
  stop_pidfile "$OUT/pids/sampler" python3
  stop_pidfile "$OUT/pids/2-shards" shardgate
  stop_pidfile "$OUT/pids/3-shards" shardgate
  [ -d "$CL" ] && scripts/cluster.sh down --dir "$CL" --purge >/dev/null
  return 0
}

# --- 1. packages, binary, cluster ---

scripts/setup.sh
need_binary "$SRC_BIN"
[ -x "$PGBIN/pgbench" ] || die "$PGBIN/pgbench not found (postgresql-15)"
"$PYTHON" -c 'import psycopg2' || die "python3-psycopg2 is missing (scripts/setup.sh installs it)"

begin_run
rm -rf "$OUT"
mkdir -p "$OUT/logs" "$OUT/pids" "$OUT/bin" "$OUT/runs" "$OUT/data" "$OUT/scripts"
BIN=$OUT/bin/shardgate
# The source may be mid-link (someone else builds in build/): retry until the copy runs.
for ((i = 0; ; i++)); do
  cp "$SRC_BIN" "$BIN" 2>/dev/null && "$BIN" --version >/dev/null 2>&1 && break
  ((i < 30)) || die "could not copy a working $SRC_BIN to $BIN"
  sleep 2
done

take_ports 3; S0=$REPLY S1=$((REPLY + 1)) S2=$((REPLY + 2))
log "starting 3 primaries on ports $S0..$S2 in $CL"
scripts/cluster.sh up --dir "$CL" --shards 3 --replicas 0 --base-port "$S0" >"$OUT/logs/cluster.log" 2>&1 ||
  die "cluster start failed; see $OUT/logs/cluster.log"

sql() { # port db user sql
  PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -h 127.0.0.1 -p "$1" -U "$3" -d "$2" \
    -qAtX -v ON_ERROR_STOP=1 -c "$4"
}

# Per target: the primaries (port:database) that hold its accounts, where pgbench connects.
declare -A PRIMS PORT DB PIDF
PRIMS[2-shards]="$S0:app2 $S1:app2"
PRIMS[3-shards]="$S0:app3 $S1:app3 $S2:app3"
PRIMS[direct]="$S0:app1"
PORT[direct]=$S0 DB[direct]=app1

# --- 2. data: ids placed by the ring, loaded straight into their owners ---

log "planning $ROWS rows and $PAIRS + $PAIRS pairs per layout"
"$PYTHON" bench/multishard_report.py plan --rows "$ROWS" --pairs "$PAIRS" --layouts 2,3 \
  --dir "$OUT/data" --seed "$SEED"

for db in app1 app2 app3 meta2 meta3; do sql "$S0" postgres postgres "CREATE DATABASE $db OWNER app"; done
for db in app2 app3; do sql "$S1" postgres postgres "CREATE DATABASE $db OWNER app"; done
sql "$S2" postgres postgres "CREATE DATABASE app3 OWNER app"

copy_in() { # port db table csv
  "$PGBIN/psql" -h 127.0.0.1 -p "$1" -U app -d "$2" -qAtX -v ON_ERROR_STOP=1 \
    -c "\\copy $3 FROM '$4' WITH (FORMAT csv)"
}
load_db() { # db layout port... (shard k on the k-th port; layout 1: every layout-3 file on one)
  local db=$1 layout=$2 k=0 p f; shift 2
  for p in "$@"; do
    sql "$p" "$db" app "CREATE TABLE accounts(id bigint PRIMARY KEY, owner text, balance bigint NOT NULL DEFAULT 0)"
    ((BALANCE_INDEX)) && sql "$p" "$db" app "CREATE INDEX accounts_balance ON accounts(balance)"
  done
  sql "$1" "$db" app "CREATE TABLE pairs_same(i int PRIMARY KEY, a bigint, b bigint);
    CREATE TABLE pairs_cross(i int PRIMARY KEY, a bigint, b bigint)"
  if [ "$layout" = 1 ]; then
    for f in "$OUT"/data/accounts-3-s*.csv; do copy_in "$1" "$db" accounts "$f"; done
    layout=3
  else
    for p in "$@"; do copy_in "$p" "$db" accounts "$OUT/data/accounts-$layout-s$k.csv"; k=$((k + 1)); done
  fi
  copy_in "$1" "$db" pairs_same "$OUT/data/pairs-$layout-same.csv"
  copy_in "$1" "$db" pairs_cross "$OUT/data/pairs-$layout-cross.csv"
  for p in "$@"; do sql "$p" "$db" postgres "VACUUM ANALYZE"; done
}
log "loading app2 (2 shards), app3 (3 shards) and app1 (all rows on s0's server)"
load_db app2 2 "$S0" "$S1" &
p2=$!
load_db app3 3 "$S0" "$S1" "$S2" &
p3=$!
load_db app1 1 "$S0" &
p1=$!
for p in $p2 $p3 $p1; do wait "$p" || die "loading failed"; done
for p in "$S0" "$S1" "$S2"; do sql "$p" postgres postgres checkpoint; done # none mid-run

# state target: "rows sum same_a same_b cross_a cross_b prepared", straight from its primaries.
state() {
  local pd
  for pd in ${PRIMS[$1]}; do
    sql "${pd%%:*}" "${pd#*:}" postgres "SELECT count(*), coalesce(sum(balance), 0),
      coalesce(sum(balance) FILTER (WHERE owner = 'same-a'), 0),
      coalesce(sum(balance) FILTER (WHERE owner = 'same-b'), 0),
      coalesce(sum(balance) FILTER (WHERE owner = 'cross-a'), 0),
      coalesce(sum(balance) FILTER (WHERE owner = 'cross-b'), 0),
      (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database())
      FROM accounts"
  done | awk -F'|' '{ for (i = 1; i <= NF; i++) s[i] += $i }
    END { for (i = 1; i <= 7; i++) printf "%.0f%s", s[i], (i < 7 ? " " : "\n") }'
}

RUNS=$OUT/runs.jsonl
: >"$RUNS"
check() { # target ok(0|1) text
  "$PYTHON" bench/multishard_report.py check --runs "$RUNS" --target "$1" --ok "$2" --what "$3"
}

# --- 3. proxies ---

# [proxy] comes last so that bare keys in SHARDGATE_EXTRA_TOML land in it.
proxy_config() { # port db metadata-db shard-ports...
  local port=$1 db=$2 meta=$3 k=0 p; shift 3
  printf '[[users]]\nname = "app"\npassword = "app-secret"\n\n[ring]\nvnodes = 150\n'
  for p in "$@"; do
    printf '\n[[shards]]\nname = "s%d"\nprimary = "postgresql://app:app-secret@127.0.0.1:%s/%s"\nreplicas = []\n' \
      "$k" "$p" "$db"
    k=$((k + 1))
  done
  cat <<EOF

[[tables]]
name = "accounts"
key = "id"
key_type = "bigint"

[metadata]
url = "postgresql://app:app-secret@127.0.0.1:$S0/$meta"

[proxy]
listen = "127.0.0.1:$port"
database = "app"
pool_mode = "transaction"
EOF
  [ -n "${SHARDGATE_EXTRA_TOML:-}" ] && printf '%s\n' "$SHARDGATE_EXTRA_TOML"
  return 0
}

start_proxy() { # target layout shard-ports...
  local t=$1 layout=$2 k m n bad rows
  shift 2
  take_ports 1; PORT[$t]=$REPLY DB[$t]=app
  proxy_config "${PORT[$t]}" "app$layout" "meta$layout" "$@" >"$OUT/$t.toml"
  log "starting the $t proxy on port ${PORT[$t]}"
  launch_proxy "$t"
  # Placement: the ring the plan used must be the proxy's (--locate), and every sampled id must
  # be found through the proxy (a misplaced row would be silently missing in key-read).
  bad=0
  while read -r k m; do
    [ "$("$BIN" --config "$OUT/$t.toml" --locate accounts "$k")" = "$m" ] || bad=$((bad + 1))
  done < <(head -n 20 "$OUT/data/sample-$layout.txt")
  check "$t" "$((bad == 0))" "the plan's owner of 20 sampled ids agrees with shardgate --locate ($bad differ)"
  awk '{ print "SELECT count(*) FROM accounts WHERE id = " $1 ";" }' "$OUT/data/sample-$layout.txt" >"$OUT/sample-$t.sql"
  n=$(wc -l <"$OUT/data/sample-$layout.txt")
  rows=$("$PGBIN/psql" -h 127.0.0.1 -p "${PORT[$t]}" -U app -d app -qAtX -v ON_ERROR_STOP=1 \
    -f "$OUT/sample-$t.sql" | grep -c '^1$' || true)
  check "$t" "$((rows == n))" "$rows of $n sampled ids found by key through the proxy"
}
has "$TARGETS" 2-shards && start_proxy 2-shards 2 "$S0" "$S1"
has "$TARGETS" 3-shards && start_proxy 3-shards 3 "$S0" "$S1" "$S2"

# Rows and sum through the proxy (a read merged across shards) against the primaries.
via_proxy_check() { # target label
  local t=$1 st got rows sum
  st=$(state "$t")
  read -r rows sum _ <<<"$st"
  got=$("$PGBIN/psql" -h 127.0.0.1 -p "${PORT[$t]}" -U app -d app -qAtX -F ' ' \
    -c "SELECT count(*), sum(balance) FROM accounts" 2>&1 || true)
  check "$t" "$([ "$got" = "$rows $sum" ] && echo 1 || echo 0)" \
    "$2: count(*), sum(balance) through the proxy '$got', on the primaries '$rows $sum'"
}
for t in 2-shards 3-shards; do has "$TARGETS" "$t" && via_proxy_check "$t" "after loading"; done

# --- 4. pgbench scripts and runs ---

cat >"$OUT/scripts/key-read.sql" <<EOF
\\set id random(1, $ROWS)
SELECT id, balance FROM accounts WHERE id = :id;
EOF
echo 'SELECT count(*) FROM accounts;' >"$OUT/scripts/scatter-count.sql"
echo 'SELECT id, balance FROM accounts ORDER BY balance DESC LIMIT 10;' >"$OUT/scripts/scatter-top10.sql"
for kind in same cross; do
  c=tx-one-shard
  [ $kind = cross ] && c=tx-two-shards
  cat >"$OUT/scripts/$c.sql" <<EOF
\\set i random(1, $PAIRS)
SELECT a, b FROM pairs_$kind WHERE i = :i \\gset
BEGIN;
UPDATE accounts SET balance = balance - 1 WHERE id = :a;
UPDATE accounts SET balance = balance + 1 WHERE id = :b;
COMMIT;
EOF
done

CLK_TCK=$(getconf CLK_TCK)
pgb() { # target script out, then more pgbench args; in the background so a TERM reaches our trap
  local t=$1 script=$2 out=$3 pid rc=0; shift 3
  "$PGBIN/pgbench" -n -M simple -c "$CLIENTS" -j "$THREADS" "$@" -f "$script" \
    -h 127.0.0.1 -p "${PORT[$t]}" -U app "${DB[$t]}" >"$out" 2>&1 &
  pid=$!
  echo "$pid" >"$OUT/pids/pgbench"
  wait "$pid" || rc=$?
  rm -f "$OUT/pids/pgbench"
  return $rc
}

if ((WARMUP > 0)); then
  for t in $TARGETS; do
    log "warm-up: $t, key-read ${WARMUP}s"
    pgb "$t" "$OUT/scripts/key-read.sql" "$OUT/logs/warmup-$t.log" -T "$WARMUP" ||
      log "warm-up of $t failed; see $OUT/logs/warmup-$t.log"
  done
fi

for c in $CASES; do
  for t in $TARGETS; do
    [ "$t" = direct ] && ! has "$DIRECT_CASES" "$c" && continue
    name=$t-$c
    echo "bench-multishard: pgbench -n -M simple -c $CLIENTS -j $THREADS -T $DURATION -l -f $c.sql -h 127.0.0.1 -p ${PORT[$t]} -U app ${DB[$t]}  # $t" >&2
    before="" after="" c0="" c1="" seen=""
    [[ $c == tx-* ]] && before=$(state "$t")
    if [[ $c == tx-* && $t != direct ]]; then # is it committed with two-phase commit?
      ports=$(for pd in ${PRIMS[$t]}; do echo "${pd%%:*}"; done | paste -sd,)
      "$PYTHON" bench/multishard_report.py sample --ports "$ports" --db "app${t%%-*}" \
        --out "$OUT/runs/$name.prepared" &
      echo $! >"$OUT/pids/sampler"
    fi
    [ -n "${PIDF[$t]:-}" ] && c0=$(cpu_ticks "${PIDF[$t]}")
    rc=0
    pgb "$t" "$OUT/scripts/$c.sql" "$OUT/runs/$name.out" -T "$DURATION" -l --log-prefix="$OUT/runs/$name.tx" || rc=$?
    [ -n "$c0" ] && c1=$(cpu_ticks "${PIDF[$t]}")
    if [ -f "$OUT/pids/sampler" ]; then
      spid=$(cat "$OUT/pids/sampler")
      kill -TERM "$spid" 2>/dev/null || true
      wait "$spid" || log "the pg_prepared_xacts sampler failed"
      rm -f "$OUT/pids/sampler"
      seen=$(cat "$OUT/runs/$name.prepared" 2>/dev/null || echo "0 0 0")
    fi
    [[ $c == tx-* ]] && after=$(state "$t")
    "$PYTHON" bench/multishard_report.py record --runs "$RUNS" --target "$t" --case "$c" \
      --output "$OUT/runs/$name.out" --log-prefix "$OUT/runs/$name.tx" --rc "$rc" \
      --cpu-ticks "$([ -n "$c0" ] && echo $((c1 - c0)))" --clk-tck "$CLK_TCK" --keep-logs "$KEEP_LOGS" \
      --state-before "$before" --state-after "$after" --prepared-seen "$seen"
  done
done
for t in 2-shards 3-shards; do has "$TARGETS" "$t" && via_proxy_check "$t" "at the end"; done

# --- 5. report ---

GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src 2>/dev/null || GIT_REV="$GIT_REV+dirty"
cmd=(env DURATION="$DURATION" CLIENTS="$CLIENTS" THREADS="$THREADS" ROWS="$ROWS" PAIRS="$PAIRS")
[ "$TARGETS" != "2-shards 3-shards direct" ] && cmd+=(TARGETS="$TARGETS")
[ "$CASES" != "key-read scatter-count scatter-top10 tx-one-shard tx-two-shards" ] && cmd+=(CASES="$CASES")
[ "$DIRECT_CASES" != "$CASES" ] && cmd+=(DIRECT_CASES="$DIRECT_CASES")
((BALANCE_INDEX)) && cmd+=(BALANCE_INDEX=1)
cmd+=(bench/multishard.sh)
logs=()
for t in 2-shards 3-shards; do has "$TARGETS" "$t" && logs+=(--proxy-log "$t=$OUT/logs/$t.log"); done
rc=0
"$PYTHON" bench/multishard_report.py summary --runs "$RUNS" --md "$OUT/results.md" --json "$OUT/results.json" \
  "${logs[@]}" \
  --meta "command=$(printf '%q ' "${cmd[@]}" | sed 's/ $//')" \
  --meta "pgbench=pgbench -n -M simple -c $CLIENTS -j $THREADS -T $DURATION -l -f CASE.sql (scripts in $OUT/scripts)" \
  --meta "date=$START_DATE" \
  --meta "elapsed=${SECONDS}s" \
  --meta "nproc=$(nproc)" \
  --meta "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
  --meta "loadavg_at_start=$LOAD_AT_START" \
  --meta "loadavg_at_end=$(cut -d' ' -f1-3 /proc/loadavg)" \
  --meta "postgres=$("$PGBIN/postgres" --version)" \
  --meta "shardgate=$("$BIN" --version 2>&1 | head -n 1) (git $GIT_REV)" \
  --meta "shardgate_extra_toml=${SHARDGATE_EXTRA_TOML:-}" \
  --meta "rows=$ROWS" --meta "pairs=$PAIRS" --meta "balance_index=$BALANCE_INDEX" || rc=$?
case $rc in
  0) ;;
  3) log "DATA CHECKS FAILED (see above and $OUT/results.md)" ;;
  4) log "some pgbench runs failed (see $OUT/results.md and $OUT/runs/*.out)" ;;
  *) log "the report failed (exit $rc)" ;;
esac
exit "$rc"
