#!/usr/bin/env bash
# ShardGate benchmark: pgbench -S (select-only), simple and prepared protocol, against
#   direct        PostgreSQL primary of cluster A (1 shard, no replica)
#   pgbouncer     PgBouncer (Debian package), transaction pooling, in front of cluster A
#   pgbouncer-session  the same PgBouncer, session pooling: PgBouncer 1.18's only pooling
#                 mode that runs protocol-level prepared statements, so the prepared-mode baseline
#   proxy-1shard  ShardGate in front of cluster A
#   proxy-1shard-unshared  the same with pipeline_depth = 0: every read on a connection of its
#                 own, as PgBouncer pools (not in the default TARGETS)
#   proxy-2shard  ShardGate in front of cluster B (2 shards x 1 replica, like the demo)
# and prints tps, ratio to direct, average and p99 latency and the proxy's CPU per query.
#
#   bench/run.sh        (no arguments; everything is set through the environment)
#
# Environment (defaults in brackets):
#   DURATION [15]  seconds per pgbench run     ROUNDS [1]    repetitions of the whole matrix
#   CLIENTS [16]   THREADS [2]   SCALE [10]    WARMUP [3]    seconds per target before measuring
#   MODES ["simple prepared"]   TARGETS ["direct pgbouncer pgbouncer-session proxy-1shard proxy-2shard"]
#   SHARDGATE_BIN [build/shardgate]   copied to build/bench/bin first, so rebuilds don't disturb a run
#   SHARDGATE_EXTRA_TOML   appended to both proxy configs, right after [proxy]: bare keys such as
#                          "workers = 1" land in [proxy]; start a [section] for anything else
#   BENCH_BASE_PORT [58432]   first port tried; busy ports are skipped
#   KEEP_LOGS [0]  1 keeps pgbench's per-transaction logs in build/bench/runs
#
# Results: build/bench/results.md and build/bench/results.json; logs in build/bench/logs.
# Everything it starts is torn down on exit, and a new run first cleans up after a killed one.
set -euo pipefail
umask 022 # the postgres user must read what we create

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/build/bench
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PYTHON=/usr/bin/python3
DURATION=${DURATION:-15} ROUNDS=${ROUNDS:-1} CLIENTS=${CLIENTS:-16} THREADS=${THREADS:-2}
SCALE=${SCALE:-10} WARMUP=${WARMUP:-3} KEEP_LOGS=${KEEP_LOGS:-0}
MODES=${MODES:-simple prepared}
TARGETS=${TARGETS:-direct pgbouncer pgbouncer-session proxy-1shard proxy-2shard}
SRC_BIN=${SHARDGATE_BIN:-build/shardgate}
export PGPASSWORD=app-secret PGCONNECT_TIMEOUT=10

die() { echo "bench: error: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }
want() { [[ " $TARGETS " == *" $1 "* ]]; }

for t in $TARGETS; do
  case $t in direct | pgbouncer | pgbouncer-session | proxy-1shard | proxy-1shard-unshared | proxy-2shard) ;;
  *) die "unknown target '$t'" ;;
  esac
done
for m in $MODES; do
  case $m in simple | prepared | extended) ;; *) die "unknown mode '$m'" ;; esac
done

# --- processes we start: pid files under $OUT/pids, checked by name so a recycled pid is safe ---



teardown() {
  stop_pidfile "$OUT/pids/proxy-1shard" shardgate
  stop_pidfile "$OUT/pids/proxy-1shard-unshared" shardgate
  stop_pidfile "$OUT/pids/proxy-2shard" shardgate
  stop_pidfile "$OUT/pgbouncer/pgbouncer.pid" pgbouncer
  local c
  for c in A B; do
    [ -d "$OUT/$c" ] && scripts/cluster.sh down --dir "$OUT/$c" --purge >/dev/null
  done
  return 0
}

# --- ports ---

NEXT_PORT=${BENCH_BASE_PORT:-58432}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"


# --- 1. packages and binary ---

scripts/setup.sh
need_binary "$SRC_BIN"

begin_run
rm -rf "$OUT/runs" "$OUT/logs" "$OUT/pids" "$OUT/pgbouncer" "$OUT/bin"
mkdir -p "$OUT/runs" "$OUT/logs" "$OUT/pids" "$OUT/bin"
BIN=$OUT/bin/shardgate
cp "$SRC_BIN" "$BIN"

# --- 2. clusters and data ---

NEED_A=0 NEED_B=0
{ want direct || want pgbouncer || want pgbouncer-session || want proxy-1shard ||
  want proxy-1shard-unshared; } && NEED_A=1
want proxy-2shard && NEED_B=1
PRIMARIES=() # ports that get pgbench -i
if ((NEED_A)); then
  take_ports 1; A_PORT=$REPLY
  PRIMARIES+=("$A_PORT")
fi
if ((NEED_B)); then
  take_ports 4; B_BASE=$REPLY
  B_S0=$B_BASE B_S0R=$((B_BASE + 1)) B_S1=$((B_BASE + 2)) B_S1R=$((B_BASE + 3))
  PRIMARIES+=("$B_S0" "$B_S1")
fi

log "starting clusters"
pids=()
if ((NEED_A)); then
  scripts/cluster.sh up --dir "$OUT/A" --shards 1 --replicas 0 --base-port "$A_PORT" >"$OUT/logs/cluster-A.log" 2>&1 &
  pids+=($!)
fi
if ((NEED_B)); then
  scripts/cluster.sh up --dir "$OUT/B" --shards 2 --replicas 1 --base-port "$B_BASE" >"$OUT/logs/cluster-B.log" 2>&1 &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p" || die "cluster start failed; see $OUT/logs/cluster-*.log"; done

log "loading pgbench -i -s $SCALE into primaries on ports ${PRIMARIES[*]}"
pids=()
for p in "${PRIMARIES[@]}"; do
  pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$p" -U app app >"$OUT/logs/load-$p.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "pgbench -i failed; see $OUT/logs/load-*.log"; done
for p in "${PRIMARIES[@]}"; do # so no checkpoint of the load lands inside a measured run
  psql -h 127.0.0.1 -p "$p" -U postgres -d app -qAtX -c checkpoint
done

wait_replica() { # primary-port replica-port: until the replica has replayed the primary's WAL
  local lsn i
  lsn=$(psql -h 127.0.0.1 -p "$1" -U postgres -d app -AtX -c "select pg_current_wal_lsn()")
  for ((i = 0; i < 600; i++)); do
    [ "$(psql -h 127.0.0.1 -p "$2" -U postgres -d app -AtX -c "select pg_last_wal_replay_lsn() >= '$lsn'")" = t ] && return 0
    sleep 0.1
  done
  die "replica on port $2 did not catch up with $1 (LSN $lsn) in 60s"
}
if ((NEED_B)); then
  log "waiting for replicas to catch up"
  wait_replica "$B_S0" "$B_S0R"
  wait_replica "$B_S1" "$B_S1R"
fi

# --- 3. PgBouncer (runs as postgres: it refuses root) ---

declare -A PORT PIDF DB # per target: port and database to connect to, pid file of the process whose CPU we count
((NEED_A)) && PORT[direct]=$A_PORT
if want pgbouncer || want pgbouncer-session; then
  take_ports 1; PORT[pgbouncer]=$REPLY PORT[pgbouncer-session]=$REPLY DB[pgbouncer-session]=app_session
  PB=$OUT/pgbouncer
  mkdir -p "$PB"
  pgbouncer_config "$PB" "$A_PORT" "${PORT[pgbouncer]}"
  runuser -u postgres -- /usr/sbin/pgbouncer -d -q "$PB/pgbouncer.ini" ||
    die "pgbouncer did not start: $(tail -n 20 "$PB/pgbouncer.log" 2>/dev/null)"
  for ((i = 0; i < 50; i++)); do [ -s "$PB/pgbouncer.pid" ] && break; sleep 0.1; done
  wait_port "${PORT[pgbouncer]}" "$(cat "$PB/pgbouncer.pid")" pgbouncer "$PB/pgbouncer.log"
  PIDF[pgbouncer]=$PB/pgbouncer.pid PIDF[pgbouncer-session]=$PB/pgbouncer.pid
fi

# --- 4. ShardGate proxies ---

# [proxy] comes last so that bare keys in SHARDGATE_EXTRA_TOML land in it.
proxy_config() { # port, then one "name primary-port [replica-port]" per shard
  local port=$1 s name pp rp; shift
  echo '[[users]]'
  echo 'name = "app"'
  echo 'password = "app-secret"'
  echo
  echo '[ring]'
  echo 'vnodes = 150'
  for s in "$@"; do
    read -r name pp rp <<<"$s"
    echo
    echo '[[shards]]'
    echo "name = \"$name\""
    echo "primary = \"postgresql://app:app-secret@127.0.0.1:$pp/app\""
    [ -n "$rp" ] && echo "replicas = [\"postgresql://app:app-secret@127.0.0.1:$rp/app\"]"
  done
  cat <<EOF

[[tables]]
name = "pgbench_accounts"
key = "aid"
key_type = "int"

[proxy]
listen = "127.0.0.1:$port"
database = "app"
pool_mode = "transaction"
EOF
  [ -n "${SHARDGATE_EXTRA_TOML:-}" ] && printf '%s\n' "$SHARDGATE_EXTRA_TOML"
  return 0
}

start_proxy() { # target, then shard specs for proxy_config
  local t=$1; shift
  take_ports 1; PORT[$t]=$REPLY
  proxy_config "${PORT[$t]}" "$@" >"$OUT/$t.toml"
  launch_proxy "$t"
}
want proxy-1shard && start_proxy proxy-1shard "s0 $A_PORT"
want proxy-1shard-unshared &&
  SHARDGATE_EXTRA_TOML="pipeline_depth = 0${SHARDGATE_EXTRA_TOML:+$'\n'$SHARDGATE_EXTRA_TOML}" \
    start_proxy proxy-1shard-unshared "s0 $A_PORT"
want proxy-2shard && start_proxy proxy-2shard "s0 $B_S0 $B_S0R" "s1 $B_S1 $B_S1R"

# --- 5./6. the runs ---

CLK_TCK=$(getconf CLK_TCK)
RUNS=$OUT/runs.jsonl
: >"$RUNS"

pgb() { # target, then extra pgbench args
  local t=$1; shift
  pgbench -n -S -c "$CLIENTS" -j "$THREADS" "$@" -h 127.0.0.1 -p "${PORT[$t]}" -U app "${DB[$t]:-app}"
}

if ((WARMUP > 0)); then
  for t in $TARGETS; do
    log "warm-up: $t, ${WARMUP}s"
    pgb "$t" -T "$WARMUP" >"$OUT/logs/warmup-$t.log" 2>&1 || log "warm-up of $t failed; see $OUT/logs/warmup-$t.log"
  done
fi

CMD_TEMPLATE="pgbench -n -S -c $CLIENTS -j $THREADS -T $DURATION -M MODE -l --log-prefix=PREFIX -h 127.0.0.1 -p PORT -U app DB (DB: app_session for pgbouncer-session, app otherwise)"
for ((r = 1; r <= ROUNDS; r++)); do
  # Even rounds run the targets in reverse order, so that no target always runs first after a
  # mode change or last in a round (a cluster that is still settling would favour one).
  order=$TARGETS
  ((r % 2 == 0)) && order=$(printf '%s\n' $TARGETS | tac | tr '\n' ' ')
  for m in $MODES; do
    for t in $order; do
      name=r$r-$m-$t
      args=(-T "$DURATION" -M "$m" -l "--log-prefix=$OUT/runs/$name.tx")
      echo "bench: [round $r/$ROUNDS] $(printf '%q ' pgbench -n -S -c "$CLIENTS" -j "$THREADS" "${args[@]}" -h 127.0.0.1 -p "${PORT[$t]}" -U app "${DB[$t]:-app}")  # $t" >&2
      before="" sw_before=""
      if [ -n "${PIDF[$t]:-}" ]; then
        before="$(cpu_ticks "${PIDF[$t]}") $(user_ticks "${PIDF[$t]}")"
        sw_before=$(switches "${PIDF[$t]}")
      fi
      rc=0
      pgb "$t" "${args[@]}" >"$OUT/runs/$name.out" 2>&1 || rc=$?
      cpu_us="" user_us="" sw=""
      if [ -n "$before" ]; then
        read -r c1 u1 <<<"$(cpu_ticks "${PIDF[$t]}") $(user_ticks "${PIDF[$t]}")"
        read -r c0 u0 <<<"$before"
        cpu_us=$(( (c1 - c0) * 1000000 / CLK_TCK ))
        user_us=$(( (u1 - u0) * 1000000 / CLK_TCK ))
        read -r v1 n1 <<<"$(switches "${PIDF[$t]}")"
        read -r v0 n0 <<<"$sw_before"
        sw="$((v1 - v0)) $((n1 - n0))"
      fi
      "$PYTHON" bench/report.py record --runs "$RUNS" --round "$r" --mode "$m" --target "$t" \
        --output "$OUT/runs/$name.out" --log-prefix "$OUT/runs/$name.tx" --rc "$rc" \
        --cpu-us "$cpu_us" --user-us "$user_us" --switches "$sw" --keep-logs "$KEEP_LOGS"
    done
  done
done

# --- 7. report ---

GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src 2>/dev/null || GIT_REV="$GIT_REV+dirty"
"$PYTHON" bench/report.py summary --runs "$RUNS" --md "$OUT/results.md" --json "$OUT/results.json" \
  --meta "command=$(printf '%q ' env DURATION="$DURATION" ROUNDS="$ROUNDS" CLIENTS="$CLIENTS" THREADS="$THREADS" SCALE="$SCALE" WARMUP="$WARMUP" MODES="$MODES" TARGETS="$TARGETS" bench/run.sh | sed 's/ $//')" \
  --meta "pgbench=$CMD_TEMPLATE" \
  --meta "date=$START_DATE" \
  --meta "nproc=$(nproc)" \
  --meta "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
  --meta "kernel=$(uname -r)" \
  --meta "loadavg_at_start=$LOAD_AT_START" \
  --meta "postgres=$("$PGBIN/postgres" --version)" \
  --meta "pgbouncer=$(/usr/sbin/pgbouncer --version | head -n 1)" \
  --meta "shardgate=$("$BIN" --version 2>&1 | head -n 1) (git $GIT_REV)" \
  --meta "shardgate_extra_toml=${SHARDGATE_EXTRA_TOML:-}" \
  --meta "scale=$SCALE" \
  --meta "note=Both shards of the 2-shard cluster hold the full pgbench data set (pgbench -i on each primary); the proxy still routes every query to its ring owner by aid."
