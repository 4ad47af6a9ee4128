"""Shared fixture for ShardGate integration tests (stdlib only; run with /usr/bin/python3).

Cluster  -- a real sharded PostgreSQL 15 cluster started by scripts/cluster.sh.
Proxy    -- a running build/shardgate pointed at a Cluster.
ClusterTestCase -- unittest base class: one Cluster per test class, `accounts` on every primary.

Nothing here may outlive the test process: clusters are torn down by a watchdog process that
notices when we die (even by SIGKILL), and proxies get PR_SET_PDEATHSIG.
"""

import atexit
import ctypes
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import unittest
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("SHARDGATE_BUILD_DIR", REPO / "build"))
SHARDGATE_BIN = Path(os.environ.get("SHARDGATE_BIN", BUILD_DIR / "shardgate"))
CLUSTER_SH = REPO / "scripts" / "cluster.sh"
PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
# Set to keep cluster data dirs (server.log, proxy logs) after the tests for debugging.
KEEP = bool(os.environ.get("SHARDGATE_KEEP_CLUSTERS"))

ACCOUNTS_DDL = ("CREATE TABLE IF NOT EXISTS accounts("
                "id bigint PRIMARY KEY, owner text, balance bigint NOT NULL DEFAULT 0)")

# Servers must run as postgres (PostgreSQL refuses root); tools that touch data dirs too.
AS_PG = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

# psql field/record separators that never occur in test data, so '|' or '\n' in values is safe.
FS, RS = "\x1f", "\x1e"


def free_port_block(n):
    """Returns the first of n consecutive loopback ports that are free right now.

    Picks below Linux's ephemeral range (32768+) so that outgoing connections cannot take the
    ports between now and when a server binds them. Random, so parallel test runs rarely collide
    (and Cluster retries on a collision)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        if all(_port_free(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no block of {n} free loopback ports found")


def _port_free(port):
    with socket.socket() as s:
        # Servers set SO_REUSEADDR too, so TIME_WAIT leftovers do not make a port "busy".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_port(port, timeout, alive=lambda: True):
    """Waits until 127.0.0.1:port accepts a TCP connection; False on timeout or if alive() fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _run(cmd, timeout=120, check=True, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}\n{p.stdout}{p.stderr}")
    return p


def _postmaster_pid(data_dir):
    """Pid of the live postmaster of data_dir, or None. A zombie counts as dead: after kill -9 our
    init may take seconds to reap it, and pg_ctl would still call it running."""
    try:
        pid = int((Path(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0])
        if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
            return None
        return None if _dead(pid) else pid
    except (OSError, ValueError):
        return None


def _dead(pid):
    """True once pid has exited (a zombie has: it holds no ports, sockets or shared memory)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return kids


class SqlError(RuntimeError):
    pass


_live = []  # Clusters and Proxies not yet stopped, newest last; atexit stops them.


@atexit.register
def _stop_all():
    for obj in reversed(list(_live)):
        try:
            obj.stop()
        except Exception as e:  # keep going: every other object must still be stopped
            print(f"harness: stopping {obj!r} failed: {e}")


# A plain SIGTERM would skip atexit; turn it into SystemExit so cleanup runs.
if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Cluster:
    """N shards of 1 primary + R streaming replicas, under BUILD_DIR/test-clusters/<name>-<pid>."""

    def __init__(self, name, shards=2, replicas=1, auth="scram"):
        self.shards, self.replicas, self.auth = shards, replicas, auth
        # Short names: the unix socket path inside the dir must stay under 108 bytes.
        base = BUILD_DIR / "test-clusters" / f"{re.sub(r'[^A-Za-z0-9_]', '_', name)[:24]}-{os.getpid()}"
        self.dir, n = base, 1
        while self.dir.exists() or any(getattr(o, "dir", None) == self.dir for o in _live):
            n += 1
            self.dir = Path(f"{base}-{n}")
        self._watchdog = None
        _live.append(self)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def __repr__(self):
        return f"Cluster({self.dir})"

    def _start(self):
        # The watchdog runs `cluster.sh down` once its stdin closes: when stop() closes it, or when
        # this process dies in any way (the kernel closes our end).
        r, self._watch_w = os.pipe()
        down = [CLUSTER_SH, "down", "--dir", self.dir] + ([] if KEEP else ["--purge"])
        self._watchdog = subprocess.Popen(
            ["bash", "-c", 'cat >/dev/null; exec "$@"', "watchdog"] + [str(a) for a in down],
            stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(r)
        for attempt in range(3):
            self.base_port = free_port_block(self.shards * (1 + self.replicas))
            p = _run([CLUSTER_SH, "up", "--dir", self.dir, "--shards", self.shards,
                      "--replicas", self.replicas, "--base-port", self.base_port,
                      "--auth", self.auth], check=False)
            if p.returncode == 0:
                break
            # Someone took a port between free_port_block and the bind: wipe and try other ports.
            if attempt < 2 and "already in use" in p.stdout + p.stderr:
                _run([CLUSTER_SH, "down", "--dir", self.dir, "--purge"])
                continue
            raise RuntimeError(f"cluster.sh up failed for {self.dir}:\n{p.stdout}{p.stderr}")

    def primary_port(self, i):
        return self.base_port + i * (1 + self.replicas)

    def replica_port(self, i, j):
        return self.base_port + i * (1 + self.replicas) + 1 + j

    def ports(self):
        """Every server's port: primaries and replicas."""
        return list(range(self.base_port, self.base_port + self.shards * (1 + self.replicas)))

    def data_dir(self, port):
        shard, k = divmod(port - self.base_port, 1 + self.replicas)
        if not 0 <= shard < self.shards:
            raise ValueError(f"port {port} is not in {self!r}")
        return self.dir / (f"s{shard}-primary" if k == 0 else f"s{shard}-replica{k - 1}")

    def sql(self, port, query, db="app", user="postgres"):
        """Runs query (one or more statements) with psql and returns its rows as lists of strings.

        Connects over the unix socket in the server's data dir (local trust, any user); falls back
        to 127.0.0.1 when we cannot reach that dir (not root/postgres). Raises SqlError."""
        d = self.data_dir(port)
        host = d if os.access(d, os.X_OK) else "127.0.0.1"
        env = dict(os.environ, PGPASSWORD="app-secret", PGCONNECT_TIMEOUT="10")
        p = subprocess.run(
            [PGBIN / "psql", "-h", host, "-p", str(port), "-U", user, "-d", db, "-AtX",
             "-v", "ON_ERROR_STOP=1", "-F", FS, "-R", RS, "-c", query],
            capture_output=True, text=True, env=env, timeout=60)
        if p.returncode != 0:
            raise SqlError(f"port {port}: {query!r}: {p.stderr.strip()}")
        out = p.stdout.rstrip("\n")
        return [row.split(FS) for row in out.split(RS)] if out else []

    def alive(self, port):
        return _postmaster_pid(self.data_dir(port)) is not None

    def kill9(self, port):
        """SIGKILLs the server's postmaster and all its children, like a machine crash."""
        pid = _postmaster_pid(self.data_dir(port))
        if pid is None:
            return
        os.kill(pid, signal.SIGSTOP)  # a stopped postmaster cannot fork while we list its children
        victims = [pid] + _children(pid)
        for p in victims:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while not all(_dead(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self, port, timeout=60):
        """(Re)starts one server: stops it first if it runs. For a replica whose primary is up,
        also waits until it streams again."""
        d = self.data_dir(port)
        if _postmaster_pid(d) is not None:
            _run(AS_PG + [PGBIN / "pg_ctl", "stop", "-D", d, "-m", "immediate", "-w"])
        # Stale after a kill -9; postgres refuses to start while the old pid is an unreaped zombie.
        for f in [d / "postmaster.pid"] + list(d.glob(".s.PGSQL.*")):
            f.unlink(missing_ok=True)
        p = _run(AS_PG + [PGBIN / "pg_ctl", "start", "-D", d, "-l", d / "server.log", "-w",
                          "-t", timeout], check=False)
        if p.returncode != 0:
            raise RuntimeError(f"restart of {d} failed: {p.stdout}{p.stderr}\n{self.server_log(port)}")
        if (d / "standby.signal").exists():
            primary = self.primary_port((port - self.base_port) // (1 + self.replicas))
            if self.alive(primary):
                self.wait_streaming(port, timeout)

    def server_log(self, port, lines=30):
        try:
            return "\n".join((self.data_dir(port) / "server.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def wait_streaming(self, port, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.sql(port, "SELECT status FROM pg_stat_wal_receiver", db="postgres") == [["streaming"]]:
                    return
            except SqlError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"replica on port {port} not streaming after {timeout}s\n{self.server_log(port)}")

    def wait_replicas_caught_up(self, timeout=30):
        """Waits until every replica has replayed everything its primary has written so far."""
        deadline = time.monotonic() + timeout
        for i in range(self.shards):
            # Not pg_current_wal_lsn(): with synchronous_commit=off recent commits may sit past it.
            # A fresh WAL record returns its exact end LSN, which replay reaches once all before it.
            lsn = self.sql(self.primary_port(i), "SELECT pg_logical_emit_message(false, 'harness', '')",
                           db="postgres")[0][0]
            for j in range(self.replicas):
                port = self.replica_port(i, j)
                while self.sql(port, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'", db="postgres") != [["t"]]:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"replica on port {port} did not replay up to {lsn} in {timeout}s")
                    time.sleep(0.05)

    def stop(self):
        """Stops every server and (unless SHARDGATE_KEEP_CLUSTERS) removes the data."""
        if self in _live:
            _live.remove(self)
        for obj in [o for o in _live if isinstance(o, Proxy) and o.cluster is self]:
            obj.stop()
        if self._watchdog is not None:
            os.close(self._watch_w)  # the watchdog now runs cluster.sh down
            self._watchdog.wait(timeout=120)
            self._watchdog = None


def _die_with_parent():
    """preexec_fn: the kernel SIGKILLs the child when the test process dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _toml_str(s):
    return json.dumps(s)  # a JSON string is a valid TOML basic string for our inputs


def proxy_toml(cluster, port, tables=(("accounts", "id", "bigint"),), pool_mode="transaction",
               extra_toml="", users=(("app", "app-secret"),), proxy_options=None):
    """shardgate's config (same shape as deploy/examples/demo.toml) for cluster, listening on port.
    proxy_options: extra [proxy] keys, as a dict ({"workers": 1, "auth": "md5"}) or raw TOML
    lines ('workers = 1\nauth = "md5"'). extra_toml is appended
    verbatim, so it may add whole tables (e.g. "[replicas]") but not keys of tables written here.
    Unless extra_toml has a [metadata] table, the metadata database is off: suites start proxies
    with different [[shards]] on one cluster, and a shared metadata database would make the
    first one's topology win for all (test_admin.py tests the metadata database)."""
    c = cluster
    dsn = lambda p: _toml_str(f"postgresql://app:app-secret@127.0.0.1:{p}/app")
    out = ["[proxy]", f'listen = "127.0.0.1:{port}"', 'database = "app"',
           f"pool_mode = {_toml_str(pool_mode)}"]
    if isinstance(proxy_options, str):  # raw TOML lines for [proxy]
        out.append(proxy_options.strip())
    else:
        for k, v in (proxy_options or {}).items():
            out.append(f"{k} = {_toml_str(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}")
    out.append("")
    for name, password, *more in users:  # more: raw TOML lines for the user ("key = value")
        out += ["[[users]]", f"name = {_toml_str(name)}", f"password = {_toml_str(password)}",
                *more, ""]
    out += ["[ring]", "vnodes = 150", ""]
    for i in range(c.shards):
        replicas = ", ".join(dsn(c.replica_port(i, j)) for j in range(c.replicas))
        out += ["[[shards]]", f'name = "s{i}"', f"primary = {dsn(c.primary_port(i))}",
                f"replicas = [{replicas}]", ""]
    for name, key, key_type in tables:
        out += ["[[tables]]", f"name = {_toml_str(name)}", f"key = {_toml_str(key)}",
                f"key_type = {_toml_str(key_type)}", ""]
    if "[metadata]" not in extra_toml:
        extra_toml += "\n[metadata]\nenabled = false\n"
    return "\n".join(out) + "\n" + extra_toml + ("\n" if extra_toml else "")


class Proxy:
    """build/shardgate (or $SHARDGATE_BIN) configured for `cluster`, listening on a free port."""

    def __init__(self, cluster, tables=(("accounts", "id", "bigint"),), pool_mode="transaction",
                 extra_toml="", users=(("app", "app-secret"),), start_timeout=10,
                 proxy_options=None):
        self.cluster = cluster
        self.port = free_port_block(1)
        # A port can come round again for a later proxy of the same cluster: keep both logs.
        self.dir = cluster.dir / f"proxy-{self.port}"
        n = 1
        while self.dir.exists():
            n += 1
            self.dir = cluster.dir / f"proxy-{self.port}-{n}"
        self.dir.mkdir(parents=True)
        self.config = self.dir / "shardgate.toml"
        self.log_path = self.dir / "shardgate.log"
        self.config.write_text(proxy_toml(cluster, self.port, tables, pool_mode, extra_toml, users,
                                          proxy_options))
        self.proc = None
        _live.append(self)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(SHARDGATE_BIN), "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        if not wait_port(self.port, start_timeout, self.alive):
            state = (f"exited with status {self.proc.returncode}" if not self.alive()
                     else f"did not listen on port {self.port} within {start_timeout}s")
            self.stop()
            raise RuntimeError(f"shardgate {state}; config {self.config}:\n"
                               f"{self.config.read_text()}\nlog:\n{self.log()}")

    def __repr__(self):
        return f"Proxy(port={self.port})"

    def dsn(self, user="app", password="app-secret", db="app"):
        q = lambda s: urllib.parse.quote(s, safe="")
        return f"postgresql://{q(user)}:{q(password)}@127.0.0.1:{self.port}/{q(db)}"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def locate(self, table, key):
        """The shard name (e.g. "s1") that `shardgate --locate` says owns table's row with key."""
        p = _run([SHARDGATE_BIN, "--config", self.config, "--locate", table, key], timeout=30)
        return p.stdout.strip()

    def stop(self, timeout=5):
        """SIGTERM (the proxy drains), then SIGKILL after timeout seconds."""
        if self in _live:
            _live.remove(self)
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ClusterTestCase(unittest.TestCase):
    """Base class: one cluster per test class, with `accounts` (owned by app) on every primary.

    Subclasses may override SHARDS, REPLICAS and AUTH, and extend setUpClass (call super)."""

    SHARDS, REPLICAS, AUTH = 2, 1, "scram"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cluster = Cluster(cls.__name__, cls.SHARDS, cls.REPLICAS, cls.AUTH)
        cls.addClassCleanup(cls.cluster.stop)
        for i in range(cls.SHARDS):
            cls.cluster.sql(cls.cluster.primary_port(i), ACCOUNTS_DDL, user="app")
        cls.cluster.wait_replicas_caught_up()

    # ---- shared by the suites that drive the proxy of their class (self.proxy)

    def owner(self, key):
        """Index of the shard owning accounts key (from `shardgate --locate`), cached per class."""
        cache = vars(type(self)).get("_owner_cache")
        if cache is None:
            cache = type(self)._owner_cache = {}
        if key not in cache:
            name = self.proxy.locate("accounts", key)
            self.assertRegex(name, r"^s\d+$")
            cache[key] = int(name[1:])
        return cache[key]

    def failed_so_far(self):
        """True if this test (or one of its subtests) has failed so far."""
        result = getattr(getattr(self, "_outcome", None), "result", None)
        return any(t is self or getattr(t, "test_case", None) is self
                   for t, _ in getattr(result, "failures", []) + getattr(result, "errors", []))

    def print_proxy_log(self, since, lines=40):
        """On failure, the proxy's log lines written since offset `since`, to stderr."""
        new = self.proxy.log()[since:].splitlines()
        if new:
            print(f"\n--- proxy log during {self.id()} (last {lines} of {len(new)} lines) ---\n"
                  + "\n".join(new[-lines:]), file=sys.stderr)
