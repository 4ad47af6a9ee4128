#!/usr/bin/env bash
# Runs the ShardGate demo: 2 PostgreSQL shards with 1 replica each, and the proxy on 127.0.0.1:6432,
# plus a third shard's servers (s2) that are not in the topology yet: ready to add with the
# admin API (README, "Adding and removing shards").
#
#   scripts/demo.sh up [--no-build]   install packages, build, start everything (idempotent)
#   scripts/demo.sh status            show the servers and the proxy
#   scripts/demo.sh down [--purge]    stop the proxy and the cluster (--purge also deletes the data)
#
# Everything lives in .local/demo: server data dirs, shardgate.toml, shardgate.log, shardgate.pid,
# admin.token. Metrics and /health on 127.0.0.1:9930, the admin API on 127.0.0.1:6480.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DEMO=.local/demo
CONFIG=$DEMO/shardgate.toml
PIDFILE=$DEMO/shardgate.pid
LOG=$DEMO/shardgate.log
BIN=${SHARDGATE_BIN:-build/shardgate}
PORT=6432
ADMIN_PORT=6480
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

die() { echo "demo.sh: error: $*" >&2; exit 1; }
usage() { sed -n '4,6p' "$0" | sed 's/^# *//' >&2; exit 2; }

# True if pid is alive and not a zombie (init may take seconds to reap a dead proxy).
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# Pid of the running proxy, or nothing. Checks the name so a recycled pid is not mistaken for it.
proxy_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 0
  if alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$BIN" | cut -c1-15)" ]; then
    echo "$pid"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start_proxy() {
  if [ -n "$(proxy_pid)" ]; then
    echo "shardgate already running (pid $(proxy_pid))"
    return
  fi
  [ -x "$BIN" ] || die "$BIN not found; build it (drop --no-build) first"
  port_open && die "something else listens on 127.0.0.1:$PORT (pgbouncer's default port?); stop it first"
  nohup "$BIN" --config "$CONFIG" >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local i
  for ((i = 0; i < 100; i++)); do
    port_open && { echo "shardgate started (pid $(cat "$PIDFILE")), log in $LOG"; return; }
    [ -n "$(proxy_pid)" ] || die "shardgate exited at startup; $LOG says:
$(tail -n 30 "$LOG")"
    sleep 0.1
  done
  die "shardgate did not listen on $PORT within 10s; $LOG says:
$(tail -n 30 "$LOG")"
}

stop_proxy() {
  local pid i
  pid=$(proxy_pid)
  if [ -n "$pid" ]; then
    kill -TERM "$pid" # shardgate drains in-flight transactions on SIGTERM
    for ((i = 0; i < 50; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then kill -KILL "$pid"; fi
    echo "shardgate stopped"
  fi
  rm -f "$PIDFILE"
}

cmd_up() {
  local build=1
  [ "${1:-}" = --no-build ] && build=0
  scripts/setup.sh
  if ((build)); then
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
    cmake --build build
  fi
  scripts/cluster.sh up --dir "$DEMO" --shards 3 --replicas 1 --base-port 55432
  cp deploy/examples/demo.toml "$CONFIG"
  # Metrics, /health and the admin API; the admin token is made once and kept.
  local token=$ROOT/$DEMO/admin.token
  if [ ! -s "$token" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 >"$token")
  fi
  cat >>"$CONFIG" <<EOF

[metrics]
listen = "127.0.0.1:9930"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_file = "$token"
EOF
  # The demo table, owned by app, on the two shards' primaries (replicas get it by streaming
  # replication; s2 gets it from the migration that adds it).
  local p
  for p in 0 1; do
    PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -h "$ROOT/$DEMO/s$p-primary" -p $((55432 + 2 * p)) -U app -d app -qAtX -v ON_ERROR_STOP=1 \
      -c "CREATE TABLE IF NOT EXISTS accounts(id bigint PRIMARY KEY, owner text, balance bigint NOT NULL DEFAULT 0)"
  done
  start_proxy
  cat <<EOF

ShardGate is up. Connect with:
  psql "postgresql://app:app-secret@127.0.0.1:$PORT/app"
Which shard owns accounts row 42:
  $BIN --config $CONFIG --locate accounts 42
Metrics and health:
  curl -s http://127.0.0.1:9930/health
The admin API (token in $DEMO/admin.token):
  curl -s -H "Authorization: Bearer \$(cat $DEMO/admin.token)" http://127.0.0.1:$ADMIN_PORT/api/v1/topology
  SHARDGATE_ADMIN_TOKEN=\$(cat $DEMO/admin.token) tools/shardgatectl --url http://127.0.0.1:$ADMIN_PORT status
A third shard's servers (127.0.0.1:55436, replica :55437) are ready to add, online:
  SHARDGATE_ADMIN_TOKEN=\$(cat $DEMO/admin.token) tools/shardgatectl --url http://127.0.0.1:$ADMIN_PORT \\
    shard add s2 --primary postgresql://app:app-secret@127.0.0.1:55436/app \\
    --replica postgresql://app:app-secret@127.0.0.1:55437/app --cleanup-after 0
Stop with: scripts/demo.sh down
EOF
}

cmd_status() {
  scripts/cluster.sh status --dir "$DEMO" || true
  local pid
  pid=$(proxy_pid)
  if [ -n "$pid" ]; then echo "shardgate      port=$PORT   running (pid $pid)"; else echo "shardgate      port=$PORT   stopped"; fi
}

cmd_down() {
  stop_proxy
  scripts/cluster.sh down --dir "$DEMO" "$@"
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case "$cmd" in
  up) cmd_up "$@" ;;
  status) cmd_status ;;
  down) cmd_down "$@" ;;
  *) usage ;;
esac
