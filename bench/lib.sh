#!/usr/bin/env bash
# Helpers shared by bench/run.sh and bench/replicas.sh (sourced after they define die, log
# and NEXT_PORT).

alive() { # pid: running and not a zombie
  local s
  s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]
}

stop_pidfile() { # pidfile expected-comm
  local pid i
  pid=$(cat "$1" 2>/dev/null) || return 0
  if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && [ "$(cat "/proc/$pid/comm")" = "$2" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$1"
}

need_binary() { # path: dies with how to build it when it is missing
  [ -x "$1" ] && return 0
  die "$1 not found. Build it first:
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build
(or point SHARDGATE_BIN at a built binary)"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

take_ports() { # n: sets REPLY to the first of n consecutive free ports at or after NEXT_PORT
  local p i
  for ((p = NEXT_PORT; p + $1 <= 65535; p++)); do
    for ((i = 0; i < $1; i++)); do port_open $((p + i)) && continue 2; done
    NEXT_PORT=$((p + $1))
    REPLY=$p
    return 0
  done
  die "no $1 consecutive free ports from $NEXT_PORT"
}

wait_port() { # port pid name log
  local i
  for ((i = 0; i < 100; i++)); do
    port_open "$1" && return 0
    alive "$2" || die "$3 exited at startup; $4 says:
$(tail -n 30 "$4")"
    sleep 0.1
  done
  die "$3 does not listen on $1 after 10s; $4 says:
$(tail -n 30 "$4")"
}

switches() { # pidfile: "voluntary involuntary" context switches summed over the process's threads
  cat /proc/"$(cat "$1")"/task/*/status 2>/dev/null |
    awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v + 0, n + 0}'
}

cpu_ticks() { # pidfile: utime + stime of the whole process (fields 14, 15; comm may hold spaces)
  sed 's/.*) //' "/proc/$(cat "$1")/stat" | awk '{print $12 + $13}'
}

user_ticks() { # pidfile: utime of the whole process
  sed 's/.*) //' "/proc/$(cat "$1")/stat" | awk '{print $12}'
}

# Writes DIR/pgbouncer.ini and DIR/userlist.txt: PgBouncer on 127.0.0.1:LISTEN in front of
# database app on 127.0.0.1:DB, as "app" in transaction pooling and as "app_session" in session
# pooling, logging and keeping its pid file in DIR.
pgbouncer_config() { # dir db-port listen-port
  local d=$1
  # A plain-text password in the userlist lets PgBouncer do SCRAM both towards the client and
  # towards PostgreSQL (whose role has a SCRAM verifier).
  echo '"app" "app-secret"' >"$d/userlist.txt"
  cat >"$d/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$2 dbname=app
app_session = host=127.0.0.1 port=$2 dbname=app pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $3
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $d/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 200
logfile = $d/pgbouncer.log
pidfile = $d/pgbouncer.pid
EOF
  chown -R postgres: "$d"
  chmod 600 "$d/userlist.txt"
}

launch_proxy() { # target: starts $BIN on $OUT/<target>.toml, port ${PORT[target]}; sets PIDF[target]
  local t=$1 pid
  # In its own session, as PgBouncer (-d) and PostgreSQL (pg_ctl) are, and as a service would
  # be: with the kernel's autogroup scheduling, a proxy left in the bench's session would share
  # one CPU group with pgbench and be preempted by it about twice as often.
  setsid "$BIN" --config "$OUT/$t.toml" </dev/null >"$OUT/logs/$t.log" 2>&1 &
  pid=$!
  echo "$pid" >"$OUT/pids/$t"
  wait_port "${PORT[$t]}" "$pid" "shardgate ($t)" "$OUT/logs/$t.log"
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = shardgate ] || die "pid $pid is not the proxy ($t)"
  PIDF[$t]=$OUT/pids/$t
}

# The start of a run (call it after defining log and teardown): notes when, and under what load
# (another build or test on this small machine skews every figure; the report says so), cleans
# up after a run that was killed before its trap ran, and tears down on exit.
begin_run() {
  START_DATE=$(date -Is)
  LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
  if awk -v l="${LOAD_AT_START%% *}" 'BEGIN { exit !(l > 1.0) }'; then
    log "warning: load average is $LOAD_AT_START before starting; other work will skew the numbers"
  fi
  teardown
  trap teardown EXIT
  trap 'exit 130' INT TERM # so the EXIT trap runs
}
