#!/usr/bin/env bash
# Starts, stops and inspects a local sharded PostgreSQL 15 cluster for tests and the demo:
# N shards, each one primary plus R streaming replicas, all on 127.0.0.1.
#
#   cluster.sh up     --dir DIR --shards N --replicas R --base-port P [--auth scram|md5|trust]
#   cluster.sh down   --dir DIR [--purge]
#   cluster.sh status --dir DIR
#
# Shard i's primary listens on P + i*(1+R), its replica j on P + i*(1+R) + 1 + j.
# Data lives in DIR/s<i>-primary and DIR/s<i>-replica<j>; DIR/cluster.env lists the ports.
# Every server has role `app` / password `app-secret` and database `app` (owned by app).
# The superuser `postgres` connects without a password over the unix socket (in the data dir)
# and over 127.0.0.1. Servers run as user postgres when this script runs as root.
set -euo pipefail
umask 022 # the postgres user must be able to traverse every directory we create

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
TIMEOUT=${CLUSTER_TIMEOUT:-60} # seconds to wait for a server to accept or a replica to stream
READY=.shardgate-ready         # marker: this data dir was fully initialized and configured

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
usage() { sed -n '4,6p' "$0" | sed 's/^# *//' >&2; exit 2; }

# Runs a command as the postgres user (PostgreSQL refuses to run as root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# psql as superuser over the unix socket in data dir $1 on port $2; rest are psql args.
pg_sql() {
  local d=$1 p=$2; shift 2
  as_pg "$PGBIN/psql" -h "$d" -p "$p" -U postgres -d postgres -AtX -v ON_ERROR_STOP=1 "$@"
}

# True if the postmaster named in data dir $1's postmaster.pid is alive. Unlike `pg_ctl status`
# this treats a zombie as dead: after kill -9 the postmaster's parent (init) may take seconds to
# reap it, and pg_ctl would report it running (and `pg_ctl stop` would wait for it forever).
running() {
  local pid state
  pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# Starts the server in data dir $1 (port from its config) unless it already runs.
start() {
  local d=$1
  # Data directories made before two-phase commit (issue 18) lack this setting: it is added, and a
  # server already running is restarted to take it.
  if [ -f "$d/postgresql.conf" ] && ! grep -q '^max_prepared_transactions' "$d/postgresql.conf"; then
    echo "max_prepared_transactions = 64  # two-phase commit of transactions across shards" |
      as_pg tee -a "$d/postgresql.conf" >/dev/null
    if running "$d"; then
      as_pg "$PGBIN/pg_ctl" restart -D "$d" -l "$d/server.log" -w -t "$TIMEOUT" -m fast >/dev/null ||
        die "server in $d did not restart; last log lines:
$(tail -n 20 "$d/server.log" 2>/dev/null)"
      return 0
    fi
  fi
  running "$d" && return 0
  # Not running, so these are stale (left by kill -9). Postgres would find them stale itself, except
  # while the dead postmaster is an unreaped zombie: then it refuses to start.
  rm -f "$d/postmaster.pid" "$d"/.s.PGSQL.*
  as_pg "$PGBIN/pg_ctl" start -D "$d" -l "$d/server.log" -w -t "$TIMEOUT" >/dev/null ||
    die "server in $d did not start; last log lines:
$(tail -n 20 "$d/server.log" 2>/dev/null)"
}

wait_ready() { # data dir, port
  local i
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    as_pg "$PGBIN/pg_isready" -q -h "$1" -p "$2" && return 0
    sleep 0.1
  done
  die "server in $1 (port $2) did not accept connections within ${TIMEOUT}s"
}

wait_streaming() { # replica data dir, port
  local i s
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    s=$(pg_sql "$1" "$2" -c "select status from pg_stat_wal_receiver" 2>/dev/null || true)
    [ "$s" = streaming ] && return 0
    sleep 0.1
  done
  die "replica in $1 (port $2) is not streaming after ${TIMEOUT}s (wal receiver status: '${s:-none}'); log:
$(tail -n 20 "$1/server.log" 2>/dev/null)"
}

# Unix socket paths are limited to 107 bytes; fail clearly instead of a cryptic postgres error.
check_socket_path() {
  local s="$1/.s.PGSQL.$2"
  [ "${#s}" -le 107 ] || die "socket path $s is longer than 107 bytes; use a shorter --dir"
}

init_primary() { # shard index
  local d="$DIR/s$1-primary" p=$(( BASE + $1 * (1 + REPLICAS) ))
  check_socket_path "$d" "$p"
  if [ ! -f "$d/$READY" ]; then
    rm -rf "$d" # a half-made dir from an interrupted run
    as_pg "$PGBIN/initdb" -N -A trust -U postgres --no-locale -E UTF8 -D "$d" >"$DIR/initdb-s$1.log" 2>&1 ||
      die "initdb for $d failed: $(cat "$DIR/initdb-s$1.log")"
    rm -f "$DIR/initdb-s$1.log"
    local pwenc=scram-sha-256
    [ "$AUTH" = md5 ] && pwenc=md5 # so the role's stored hash is md5 and md5 auth really runs
    as_pg tee -a "$d/postgresql.conf" >/dev/null <<EOF

# --- added by scripts/cluster.sh ---
listen_addresses = '127.0.0.1'
port = $p
unix_socket_directories = '$d'
wal_level = replica
max_wal_senders = 10
# Parallel pg_basebackups each force a checkpoint that could recycle WAL another one still needs;
# keeping some WAL also lets a killed replica catch up without a slot.
wal_keep_size = 256MB
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 500ms  # replicas reconnect fast after a primary restarts in tests
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
max_connections = 200
max_prepared_transactions = 64  # two-phase commit of transactions across shards
password_encryption = $pwenc
EOF
    as_pg tee "$d/pg_hba.conf" >/dev/null <<EOF
local all         all                    trust
host  replication all      127.0.0.1/32  trust
host  all         postgres 127.0.0.1/32  trust
host  all         all      127.0.0.1/32  $HBA_AUTH
EOF
  fi
  start "$d"
  wait_ready "$d" "$p"
  if [ ! -f "$d/$READY" ]; then
    pg_sql "$d" "$p" >/dev/null <<'EOF'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN
    CREATE ROLE app LOGIN PASSWORD 'app-secret';
  END IF;
END $$;
SELECT 'CREATE DATABASE app OWNER app' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'app')
\gexec
EOF
    as_pg touch "$d/$READY"
  fi
}

init_replica() { # shard index, replica index
  local pp=$(( BASE + $1 * (1 + REPLICAS) ))
  local d="$DIR/s$1-replica$2" p=$(( BASE + $1 * (1 + REPLICAS) + 1 + $2 ))
  check_socket_path "$d" "$p"
  if [ ! -f "$d/$READY" ]; then
    rm -rf "$d"
    as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$pp" -U postgres -D "$d" -c fast -R -X stream \
      >"$DIR/basebackup-s$1-r$2.log" 2>&1 || die "pg_basebackup for $d failed: $(cat "$DIR/basebackup-s$1-r$2.log")"
    rm -f "$DIR/basebackup-s$1-r$2.log"
    # The copy carries the primary's log and ready marker; start the replica's own.
    rm -f "$d/server.log" "$d/$READY"
    # postgresql.auto.conf is read last, so these override the primary's values copied above.
    as_pg tee -a "$d/postgresql.auto.conf" >/dev/null <<EOF
port = $p
unix_socket_directories = '$d'
EOF
    as_pg touch "$d/$READY"
  fi
  start "$d"
  wait_ready "$d" "$p"
  wait_streaming "$d" "$p"
}

init_shard() { # shard index
  local j pids=() rc=0
  init_primary "$1"
  for ((j = 0; j < REPLICAS; j++)); do
    init_replica "$1" "$j" &
    pids+=($!)
  done
  for j in "${pids[@]}"; do wait "$j" || rc=1; done
  return $rc
}

# All postgres data dirs under DIR: the ones with a PG_VERSION file.
data_dirs() {
  local d
  for d in "$DIR"/s*-primary "$DIR"/s*-replica*; do
    [ -f "$d/PG_VERSION" ] && echo "$d"
  done
  return 0
}

cmd_up() {
  if [ -z "$SHARDS" ] || [ -z "$REPLICAS" ] || [ -z "$BASE" ]; then usage; fi
  [[ "$SHARDS" =~ ^[1-9][0-9]*$ && "$REPLICAS" =~ ^[0-9]+$ && "$BASE" =~ ^[1-9][0-9]*$ ]] ||
    die "--shards must be >= 1, --replicas >= 0 and --base-port a port number"
  (( BASE + SHARDS * (1 + REPLICAS) <= 65536 )) || die "ports past 65535; lower --base-port"
  case "$AUTH" in
    scram) HBA_AUTH=scram-sha-256 ;;
    md5 | trust) HBA_AUTH=$AUTH ;;
    *) die "--auth must be scram, md5 or trust (got '$AUTH')" ;;
  esac
  local want="SHARDS=$SHARDS REPLICAS=$REPLICAS BASE_PORT=$BASE AUTH=$AUTH"
  if [ -f "$DIR/cluster.env" ]; then
    local have
    # shellcheck disable=SC1091
    have=$(. "$DIR/cluster.env"; echo "SHARDS=$SHARDS REPLICAS=$REPLICAS BASE_PORT=$BASE_PORT AUTH=$AUTH")
    [ "$have" = "$want" ] || die "$DIR already holds a cluster with $have (asked for $want); run: $0 down --dir $DIR --purge"
  fi
  mkdir -p "$DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$DIR"
  as_pg test -w "$DIR" -a -x "$DIR" || die "user postgres cannot write $DIR (check permissions of its parents)"
  cd "$DIR" # psql and initdb complain when the cwd is unreadable for postgres

  # Shards are independent: bring them up in parallel, each with its own log.
  local i pids=() failed=0
  for ((i = 0; i < SHARDS; i++)); do
    (init_shard "$i") >"$DIR/up-s$i.log" 2>&1 &
    pids+=($!)
  done
  for ((i = 0; i < SHARDS; i++)); do
    if ! wait "${pids[$i]}"; then
      failed=1
      echo "shard s$i failed:" >&2
      cat "$DIR/up-s$i.log" >&2
    fi
    rm -f "$DIR/up-s$i.log"
  done
  ((failed == 0)) || exit 1

  {
    echo "# written by scripts/cluster.sh"
    echo "SHARDS=$SHARDS"
    echo "REPLICAS=$REPLICAS"
    echo "BASE_PORT=$BASE"
    echo "AUTH=$AUTH"
    for ((i = 0; i < SHARDS; i++)); do
      echo "S${i}_PRIMARY_PORT=$(( BASE + i * (1 + REPLICAS) ))"
      echo "S${i}_PRIMARY_DIR=$DIR/s$i-primary"
      for ((j = 0; j < REPLICAS; j++)); do
        echo "S${i}_REPLICA${j}_PORT=$(( BASE + i * (1 + REPLICAS) + 1 + j ))"
        echo "S${i}_REPLICA${j}_DIR=$DIR/s$i-replica$j"
      done
    done
  } >"$DIR/cluster.env"
  echo "cluster up in $DIR: $SHARDS shard(s) x (1 primary + $REPLICAS replica(s)), ports $BASE..$(( BASE + SHARDS * (1 + REPLICAS) - 1 ))"
}

cmd_down() {
  [ -d "$DIR" ] || { echo "cluster.sh: nothing at $DIR"; return 0; }
  local d pids=()
  for d in $(data_dirs); do
    running "$d" || continue
    # Immediate stop is fast; tests never need a clean shutdown.
    as_pg "$PGBIN/pg_ctl" stop -D "$d" -m immediate -w -t "$TIMEOUT" >/dev/null 2>&1 &
    pids+=($!)
  done
  for d in "${pids[@]}"; do wait "$d" || true; done
  if [ "$PURGE" = 1 ]; then
    rm -rf "$DIR"
    echo "cluster at $DIR stopped and removed"
  else
    echo "cluster at $DIR stopped (data kept; add --purge to remove it)"
  fi
}

cmd_status() {
  [ -d "$DIR" ] || die "no cluster at $DIR"
  local d all=0 port state extra
  for d in $(data_dirs); do
    port=$(sed -n "s/^port = \([0-9]*\)$/\1/p" "$d/postgresql.conf" "$d/postgresql.auto.conf" | tail -n 1)
    extra=""
    if running "$d"; then
      state=running
      if [ -f "$d/standby.signal" ]; then
        extra=" wal_receiver=$(pg_sql "$d" "$port" -c "select status from pg_stat_wal_receiver" 2>/dev/null || echo '?')"
      fi
    else
      state=stopped
      all=3
    fi
    printf '%-14s port=%-6s %s%s\n' "$(basename "$d")" "$port" "$state" "$extra"
  done
  return $all # like pg_ctl status: 3 when something is not running
}

[ $# -ge 1 ] || usage
CMD=$1; shift
DIR="" SHARDS="" REPLICAS="" BASE="" AUTH=scram PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --shards) SHARDS=$2; shift 2 ;;
    --replicas) REPLICAS=$2; shift 2 ;;
    --base-port) BASE=$2; shift 2 ;;
    --auth) AUTH=$2; shift 2 ;;
    --purge) PURGE=1; shift ;;
    -h | --help) usage ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[ -n "$DIR" ] || usage
DIR=$(realpath -m "$DIR")

case "$CMD" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
