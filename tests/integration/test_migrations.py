"""Online add and remove of shards with migration (issue 17), against real PostgreSQL under load.

One cluster of four primaries (no replicas). The proxies copy in pages of BATCH_ROWS (100) rows,
so that a backfill spans many pages in both of its ranges (worker threads) while the drain runs.
Every test (and every phase of the per-phase tests)
starts from scratch: a metadata database of its own (meta_<n> on s0's server), `accounts` only
on the shards of the starting ring, rows loaded through a proxy, and two proxies (a, b) with the
admin API sharing that metadata database. A workload (workload.py) runs psycopg2 and psycopg 3
clients over both proxies: transfers between two keys that share a shard under the old and the
new ring (so a transfer is a single-shard transaction throughout), inserts, updates and deletes
of ids each thread owns, and reads that must find every acknowledged row. Each acknowledged write
goes to a ledger; afterwards workload.check_invariants reads every primary directly.

Proved here (each against the ledger, on all four primaries):
- adding s3 to s0..s2 (the copy rate-limited to last about 5 s) and removing s1 from s0..s3
  (unlimited), under load, with writes to moving keys meanwhile: DONE, the sum held, no
  acknowledged row lost or duplicated, every row on exactly its owner under the new ring, nothing
  left on the old owners, no prepared transaction, every definite row readable by key through
  both proxies, writes acknowledged throughout (also in REVERSE_DUAL_WRITE, ended by POST
  .../cleanup); a second migration meanwhile gets 409;
- abort in DUAL_WRITE, BACKFILL, VERIFY, READY (manual cutover) and REVERSE_DUAL_WRITE: ABORTED,
  every row on its old owner only, the target empty, the sum held;
- kill -9 of the proxy that runs the migration (found by its advisory lock in the metadata
  database; both proxies when it cannot be told) in PREPARE, DUAL_WRITE, BACKFILL, VERIFY,
  READY (manual cutover, asked after the restart), CUTOVER, REVERSE_DUAL_WRITE and CLEANUP (in
  BACKFILL, inside a rate-limited copy), restarted with the
  same config: the migration ends DONE (or ABORTED before CLEANUP), never stuck, and the
  invariants of its end state hold;
- manual cutover: READY waits for POST .../cutover with the old ring in force (s3 joining; a
  write to a moving key lands on its old owner, is copied to s3 and is read back through both
  proxies; DDL and statements across shards get 55000 naming the migration), the POST flips it (and a write lands on s3 and is copied back), DONE with the
  invariants; a cutover asked in BACKFILL, in REVERSE_DUAL_WRITE or after DONE gets 409;
- kill -9 of the runner inside the cutover pause (the epoch with `pause` stored; the test holds
  the runner's lock until the restart, so that no other proxy lifts it meanwhile): the next
  runner stores "cutover abandoned: writes resume" first, cuts over again, DONE; meanwhile
  writes to keys that stay are acknowledged through the surviving proxy and lone writes to
  moving keys are held (then acknowledged, or 40001 after cutover_pause_ms + 500 ms), never
  refused at once;
- a proxy cut from the metadata database (through a Relay in this process: a silent partition
  by default, MIGRATION_PARTITION=close for closed connections) during a migration: past
  fence_timeout_ms it acknowledges no write, the runner on the other proxy cuts over without it
  and ends DONE, and after the thaw its writes land on the new owners only;
- a text-keyed table beside accounts whose keys and values hold what COPY text escapes (tab,
  newline, carriage return, backslash, \\N) and other awkward characters: after adding s3 every
  row is on the owner the ring gives its key's UTF-8 bytes, once, its value unchanged;
- the harness itself, without any migration: the Python ring agrees with `shardgate --locate`,
  the ledger's rules for writes in doubt, the checker reports deliberate damage (a row copied to
  a wrong primary, a row deleted, a balance changed, an unknown row, a row on the target, a
  prepared transaction), and the workload keeps the invariants on plain proxies, also across a
  kill -9 and restart of one of them.

Phases are reached with SHARDGATE_TEST_PHASE_DELAY_MS in the proxies' environment (the runner
sleeps that long after journaling each phase): the test polls GET /api/v1/migrations/{id} every
50 ms and acts while the phase lasts.

Knobs: MIGRATION_LONG=1 (more rows, threads and time), MIGRATION_PHASE_DELAY_MS (default 1000),
MIGRATION_SEED (default 1), MIGRATION_PARTITION (freeze or close; default freeze). Run one test with `-k`, e.g.
`/usr/bin/python3 tests/integration/test_migrations.py -k abort`.
"""

import contextlib
from collections import Counter
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import ClusterTestCase, Proxy  # noqa: E402
from test_admin import TOKEN, Api  # noqa: E402
from workload import (Ledger, Prober, Ring, Workload, check_invariants,  # noqa: E402
                      check_via_proxy, format_problems, load_accounts, locate_mismatches,
                      read_rows, xxh3)

try:
    import psycopg2
except ImportError:  # pragma: no cover - reported as skips
    psycopg2 = None
try:
    import psycopg
except ImportError:  # pragma: no cover - the pause probes of psycopg 3 are left out
    psycopg = None

LONG = bool(os.environ.get("MIGRATION_LONG"))
ROWS = 20_000 if LONG else 3_000           # under-load tests
SMALL_ROWS = 5_000 if LONG else 1_000      # per-phase tests
THREADS = 8 if LONG else 4
LIGHT_THREADS = 4 if LONG else 2
LOAD_AFTER_S = 5 if LONG else 1            # workload kept on after the end state, before checks
PHASE_DELAY_MS = int(os.environ.get("MIGRATION_PHASE_DELAY_MS", "1000"))
SEED = int(os.environ.get("MIGRATION_SEED", "1"))
DONE_TIMEOUT = 600 if LONG else 120
HEARTBEAT_MS, FENCE_MS = 200, 2000
STUCK_S = 30  # no progress, the same error, this long: the migration is stuck
CUTOVER_PAUSE_MS = 500  # [migrations] cutover_pause_ms (the default): a held write waits +500 ms
# [migrations] batch_rows: small, so that a backfill has many pages in two ranges (worker
# threads), and the drain runs while only part of the rows are copied
BATCH_ROWS = 100
# How the relay cuts proxy b from the metadata database in the partition test: "freeze" (a
# silent partition: sockets stay open, no byte moves) or "close" (every connection closed, new
# ones refused).
PARTITION = os.environ.get("MIGRATION_PARTITION", "freeze")

ORDER = ["PREPARE", "DUAL_WRITE", "BACKFILL", "VERIFY", "READY", "CUTOVER",
         "REVERSE_DUAL_WRITE", "CLEANUP", "DONE"]
RANK = {p: i for i, p in enumerate(ORDER)}
TERMINAL = {"DONE", "ABORTED", "FAILED"}
ABORT_PHASES = ["DUAL_WRITE", "BACKFILL", "VERIFY", "READY", "REVERSE_DUAL_WRITE"]
KILL_PHASES = ["PREPARE", "DUAL_WRITE", "BACKFILL", "VERIFY", "READY", "CUTOVER",
               "REVERSE_DUAL_WRITE", "CLEANUP"]
MIGRATION_FIELDS = {"id", "kind", "shard", "phase", "moves", "rows_copied", "rows_estimated",
                    "rows_per_second", "eta_seconds", "verify", "target_write_failures",
                    "started_at", "updated_at", "error"}
MIGRATION_TMPL = "/api/v1/migrations/{id}"
RUNNER_LOCK = 0x5347_4d49_4752  # the runner election's advisory lock (src/migrations/runner.h)


class _ShardPrefix:
    """The cluster as harness.proxy_toml sees it, with only its first n shards in [[shards]]."""

    def __init__(self, cluster, n):
        self._cluster, self.shards = cluster, n

    def __getattr__(self, name):
        return getattr(self._cluster, name)


@contextlib.contextmanager
def _environ(**kv):
    """os.environ with kv set (None: removed) for the block; harness.Proxy inherits it."""
    saved = {k: os.environ.get(k) for k in kv}
    try:
        for k, v in kv.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _local_socket_inodes(port):
    """Inodes of the TCP sockets whose local port is port (this network namespace)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def _has_socket(pid, inodes):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


class Relay:
    """A TCP relay from 127.0.0.1:port to 127.0.0.1:target, one thread (select), that can cut the
    path. freeze(): no byte moves either way any more, every socket stays open and new
    connections are accepted but not forwarded (a silent partition: no FIN, no RST; the kernel
    still acknowledges what is sent, so TCP keepalives and tcp_user_timeout see nothing).
    close(): every connection is closed and new ones are refused. thaw(): forwarding resumes
    (after freeze, what was held moves on in order; after close, it listens again)."""

    MAX_BUFFER = 1 << 20  # per direction: stop reading a side whose peer does not keep up

    def __init__(self, target_port):
        self.target = target_port
        self.port = harness.free_port_block(1)
        self.mode = "open"
        self.accepted = 0
        self._gen = self._seen = 0
        self._cond = threading.Condition()
        self._conns = []     # [client, upstream, bytes for client, bytes for upstream]
        self._pending = []   # clients accepted while frozen: no upstream yet
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener = self._listen()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def url(self, db):
        return f"postgresql://app:app-secret@127.0.0.1:{self.port}/{db}"

    def _listen(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        s.setblocking(False)
        return s

    def _set(self, mode):
        """Switches mode; returns (monotonic time) once the relay thread runs in it."""
        with self._cond:
            self.mode = mode
            self._gen += 1
            gen = self._gen
        self._wake_w.send(b"x")
        with self._cond:
            if not self._cond.wait_for(lambda: self._seen >= gen, timeout=10):
                raise RuntimeError(f"relay did not switch to {mode}")
        return time.monotonic()

    def freeze(self):
        return self._set("frozen")

    def close(self):
        return self._set("closed")

    def thaw(self):
        return self._set("open")

    def cut(self, how):
        return self.freeze() if how == "freeze" else self.close()

    def stop(self):
        """Closes everything (the proxies see their metadata connections end)."""
        if self._thread.is_alive():
            self._stopping = True
            self._set("closed")
            self._thread.join(5)

    @staticmethod
    def _close(*socks):
        for s in socks:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    def _connect_upstream(self, client):
        try:
            up = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            up.setblocking(False)
            self._conns.append([client, up, b"", b""])
        except OSError:
            self._close(client)

    def _run(self):
        while True:
            with self._cond:
                mode, self._seen = self.mode, self._gen
                self._cond.notify_all()
                stopping = self._stopping
            if mode == "closed":
                for c in self._conns:
                    self._close(c[0], c[1])
                self._close(*self._pending)
                self._conns, self._pending = [], []
                if self._listener is not None:
                    self._close(self._listener)
                    self._listener = None
                if stopping:
                    self._close(self._wake_r, self._wake_w)
                    return
            elif self._listener is None:
                self._listener = self._listen()
            if mode == "open" and self._pending:
                pending, self._pending = self._pending, []
                for client in pending:
                    self._connect_upstream(client)
            rl, wl = [self._wake_r], []
            if self._listener is not None:
                rl.append(self._listener)
            if mode == "open":
                for c in self._conns:
                    for i in (0, 1):
                        if len(c[3 - i]) < self.MAX_BUFFER:
                            rl.append(c[i])  # what side i sends goes to the other side
                        if c[2 + i]:
                            wl.append(c[i])
            r, w, _ = select.select(rl, wl, [], 0.5)
            if self._wake_r in r:
                self._wake_r.recv(4096)
            with self._cond:
                if self.mode != mode:
                    continue  # switched meanwhile: move nothing more in the old mode
            if self._listener is not None and self._listener in r:
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    client = None
                if client is not None:
                    self.accepted += 1
                    client.setblocking(False)
                    if mode == "open":
                        self._connect_upstream(client)
                    else:
                        self._pending.append(client)
            if mode != "open":
                continue
            dead = []
            for c in self._conns:
                for i in (0, 1):
                    s = c[i]
                    if s in r:
                        try:
                            data = s.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            data = None
                        except OSError:
                            data = b""
                        if data == b"":
                            dead.append(c)
                            break
                        if data:
                            c[3 - i] += data
                    if s in w and c[2 + i]:
                        try:
                            n = s.send(c[2 + i])
                            c[2 + i] = c[2 + i][n:]
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError:
                            dead.append(c)
                            break
            for c in dead:
                if c in self._conns:
                    self._conns.remove(c)
                    self._close(c[0], c[1])


class LockWaiter:
    """A session of the test's own that queues for an advisory lock (pg_advisory_lock, on a
    thread) and holds it until release(). Queued behind a holder that dies, it is granted the
    lock at once, before any pg_try_advisory_lock polling for it: no other runner takes over."""

    def __init__(self, dsn, key):
        self.conn = psycopg2.connect(dsn, connect_timeout=10)
        self.conn.autocommit = True
        cur = self.conn.cursor()
        cur.execute("SELECT pg_backend_pid()")
        self.pid = cur.fetchone()[0]
        self.key, self.granted, self.error = key, threading.Event(), None
        self._thread = threading.Thread(target=self._wait, name="lock-waiter", daemon=True)
        self._thread.start()

    def _wait(self):
        try:
            self.conn.cursor().execute("SELECT pg_advisory_lock(%s)", (self.key,))
            self.granted.set()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def release(self):
        if self.conn.closed:
            return
        self._thread.join(10)
        if self.granted.is_set():
            self.conn.cursor().execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        self.conn.close()


class PauseProbe:
    """One lone (autocommit) UPDATE of one key through one proxy, on a thread, in one protocol
    shape: "simple" (psycopg2: a Query message), "extended" (psycopg 3 never preparing: Parse,
    Bind, Describe, Execute, Sync in one batch) or "prepared" (psycopg 3 with the statement
    prepared beforehand: the batch starts with Bind). The connection is made (and the prepared
    statement warmed on warm_key) at construction; go() sends the UPDATE; took and outcome (ok,
    or the SQLSTATE) tell whether the proxy held it or refused it at once."""

    SQL = "UPDATE accounts SET balance = %s WHERE id = %s"

    def __init__(self, shape, dsn, key, value, warm_key):
        self.shape, self.key, self.value = shape, key, value
        self.took = self.outcome = self.message = None
        if shape == "simple":
            self.conn = psycopg2.connect(dsn, connect_timeout=10)
            self.conn.autocommit = True
        else:
            self.conn = psycopg.connect(dsn, connect_timeout=10, autocommit=True,
                                        prepare_threshold=None if shape == "extended" else 0)
        if shape == "prepared":
            with self.conn.cursor() as cur:  # prepares SQL, then runs it as Bind-first batches
                cur.execute(self.SQL, (100, warm_key))
                cur.execute(self.SQL, (100, warm_key))
        self._thread = threading.Thread(target=self._run, name=f"pause-{shape}", daemon=True)

    def go(self):
        self._thread.start()
        return self

    def _run(self):
        t0 = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                cur.execute(self.SQL, (self.value, self.key))
                self.outcome = "ok" if cur.rowcount == 1 else f"rowcount {cur.rowcount}"
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.outcome = getattr(e, "pgcode", None) or getattr(e, "sqlstate", None) or repr(e)
            self.message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        self.took = time.monotonic() - t0

    def wait(self, timeout=10):
        self._thread.join(timeout)
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
        return self

    def __repr__(self):
        return (f"{self.shape}: {self.outcome} after {self.took * 1000:.0f} ms"
                if self.took is not None else f"{self.shape}: no answer")


def counter(proxy, family, labels):
    """The value of one series of `family` on the proxy's /metrics (0 if absent)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(family + "{") and labels in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def check_phase_order(trace, manual):
    """Problems with a sequence of observed phases (consecutive duplicates removed): phases only
    move forward (a CUTOVER may fall back to an earlier phase before the point of no return, when
    it is abandoned), READY only with manual cutover, no abort once CLEANUP started, nothing after
    a terminal phase."""
    out = []
    for p, q in zip(trace, trace[1:]):
        if p in TERMINAL:
            out.append(f"{q} after the terminal {p}")
        elif q in ("ABORTING", "ABORTED"):
            if p in ("CLEANUP", "DONE"):
                out.append(f"{q} after {p} (abort once CLEANUP started)")
        elif p in ("ABORTING",):
            if q not in ("ABORTED", "FAILED"):
                out.append(f"{q} after ABORTING")
        elif q == "FAILED":
            pass
        elif p in RANK and q in RANK:
            if RANK[q] < RANK[p] and not (p == "CUTOVER" and RANK[q] < RANK["CUTOVER"]):
                out.append(f"{q} after {p}")
        else:
            out.append(f"unknown phase in {p} -> {q}")
    if "READY" in trace and not manual:
        out.append("READY with cutover auto")
    return out


@unittest.skipUnless(os.access(harness.SHARDGATE_BIN, os.X_OK),
                     f"{harness.SHARDGATE_BIN} not built")
class MigrationTest(ClusterTestCase):
    SHARDS, REPLICAS = 4, 0
    runs = 0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.cluster
        cls.ports = {f"s{i}": c.primary_port(i) for i in range(cls.SHARDS)}
        cls.meta_port = c.primary_port(0)
        cls.token_file = c.dir / "admin.token"
        cls.token_file.write_text(TOKEN + "\n")
        # A second, empty database on s3's server: a valid primary for a shard "s4", so that a
        # second add is refused only because a migration runs.
        c.sql(cls.ports["s3"], "CREATE DATABASE app2 OWNER app", db="postgres")
        cls.ring3 = Ring(["s0", "s1", "s2"])
        cls.ring4 = Ring(["s0", "s1", "s2", "s3"])
        cls.ring_without_s1 = Ring(["s0", "s2", "s3"])

    def setUp(self):
        if psycopg2 is None:
            self.skipTest("psycopg2 not installed")
        self.proxies, self.workload, self.mid, self.last = [], None, None, None
        self.prober = None
        self.trace, self.trace_t = [], []
        self.addCleanup(self.stop_run)

    # ------------------------------------------------------------------ setup of one run

    def url(self, shard, db="app"):
        return f"postgresql://app:app-secret@127.0.0.1:{self.ports[shard]}/{db}"

    def fresh(self, shards, rows, delay_ms=0, names=("a", "b"), **proxy_kw):
        """A clean start: a new metadata database, accounts (empty) on s0..s<shards-1> only and
        nowhere else, proxies `names` (a and b) on that ring, `rows` rows of balance 100 loaded
        through a. proxy_kw goes to start_proxy. Returns the ledger."""
        self.stop_run()
        MigrationTest.runs += 1
        self.meta_db = f"meta_{MigrationTest.runs}"
        c = self.cluster
        c.sql(self.meta_port, f"CREATE DATABASE {self.meta_db} OWNER app", db="postgres")
        for i in range(self.SHARDS):
            port = c.primary_port(i)
            c.sql(port, "DROP TABLE IF EXISTS accounts, notes CASCADE")
            for (schema,) in c.sql(port, "SELECT nspname FROM pg_namespace "
                                         "WHERE nspname LIKE 'shardgate%'"):
                c.sql(port, f'DROP SCHEMA "{schema}" CASCADE')
            if i < shards:
                c.sql(port, harness.ACCOUNTS_DDL, user="app")
        self.delay_ms = delay_ms
        for name in names:
            setattr(self, name, self.start_proxy(name, shards, **proxy_kw))
        self.mid, self.trace, self.trace_t, self.last = None, [], [], None
        ledger = Ledger()
        load_accounts(self.a.dsn(), Ring([f"s{i}" for i in range(shards)]),
                      list(range(1, rows + 1)), 100, ledger)
        return ledger

    def start_proxy(self, name, shards, meta_url=None, heartbeat_ms=HEARTBEAT_MS,
                    fence_ms=FENCE_MS, tables=(("accounts", "id", "bigint"),),
                    proxy_options=None):
        """A proxy with the admin API on this run's metadata database (at meta_url: through a
        relay, say; default s0's server directly)."""
        admin, mport = harness.free_port_block(1), harness.free_port_block(1)
        meta_url = meta_url or (f"postgresql://app:app-secret@127.0.0.1:{self.meta_port}/"
                                f"{self.meta_db}")
        extra = (f'[admin]\nlisten = "127.0.0.1:{admin}"\ntoken_file = "{self.token_file}"\n'
                 f'[metadata]\nurl = "{meta_url}"\nheartbeat_ms = {heartbeat_ms}\n'
                 f'fence_timeout_ms = {fence_ms}\ninstance = "{self.meta_db}-{name}"\n'
                 f'[migrations]\nbatch_rows = {BATCH_ROWS}\n'
                 f'[metrics]\nlisten = "127.0.0.1:{mport}"\n')
        delay = self.delay_ms or None
        with _environ(SHARDGATE_TEST_PHASE_DELAY_MS=delay):
            p = Proxy(_ShardPrefix(self.cluster, shards), tables=tables, extra_toml=extra,
                      proxy_options=proxy_options)
            p.env = dict(os.environ)
        p.name, p.admin_port, p.metrics_port, p.api = name, admin, mport, Api(admin)
        self.proxies.append(p)
        if not harness.wait_port(admin, 10, p.alive):
            self.fail(f"proxy {name}'s admin API did not listen on {admin}:\n{p.log()[-3000:]}")
        return p

    def stop_run(self):
        if self.prober is not None:
            self.prober.stop(timeout=10)
            self.prober = None
        if self.workload is not None:
            self.workload.stop(timeout=10)
            self.workload = None
        for p in self.proxies:
            p.stop()
        self.proxies = []

    def kill9(self, p):
        p.proc.kill()
        p.proc.wait()

    def restart(self, p):
        """Starts a killed proxy again with the same config (ports, instance id) and environment."""
        with open(p.log_path, "ab") as log:
            p.proc = subprocess.Popen([str(harness.SHARDGATE_BIN), "--config", str(p.config)],
                                      stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=p.env,
                                      preexec_fn=harness._die_with_parent)
        if p not in harness._live:
            harness._live.append(p)
        if not (harness.wait_port(p.port, 15, p.alive) and
                harness.wait_port(p.admin_port, 10, p.alive)):
            self.fail(f"proxy {p.name} did not come back after a restart:\n{p.log()[-3000:]}")

    def start_workload(self, ledger, rings, transfer_rows, threads):
        self.workload = Workload([p.dsn() for p in self.proxies], ledger, rings,
                                 range(1, transfer_rows + 1), threads=threads,
                                 seed=SEED + MigrationTest.runs).start()
        return self.workload

    # ------------------------------------------------------------------ the admin API

    def api(self, method, path, body=None, template=None):
        """(status, body) from the first live proxy that answers."""
        last = None
        for p in self.proxies:
            if not p.alive():
                continue
            try:
                return p.api.call(method, path, body, template=template)
            except (urllib.error.URLError, OSError, ValueError) as e:
                last = e
        raise ConnectionError(f"no proxy answered {method} {path}: {last!r}")

    def start_migration(self, method, path, body=None, template=None):
        st, r = self.api(method, path, body, template=template)
        self.assertEqual(st, 202, f"{method} {path} {body}: {r}")
        m = r["migration"]
        self.mid, self.trace, self.trace_t, self.last = m["id"], [], [], m
        self.note_phase(m["phase"])
        return m

    def get_migration(self):
        st, m = self.api("GET", f"/api/v1/migrations/{self.mid}", template=MIGRATION_TMPL)
        self.assertEqual(st, 200, m)
        self.last = m
        self.note_phase(m["phase"])
        return m

    def note_phase(self, phase):
        if not self.trace or self.trace[-1] != phase:
            self.trace.append(phase)
            self.trace_t.append((time.monotonic(), phase))

    def phase_at(self, t):
        """The phase last seen at or before monotonic time t ("before" the migration)."""
        seen = [p for when, p in self.trace_t if when <= t]
        return seen[-1] if seen else "before the migration"

    def wait_phase(self, want, timeout):
        """Polls the migration every 50 ms until its phase is in want. Fails when it ends in
        another terminal phase, passes every phase of want (the window was too short), or
        stays STUCK_S seconds with an error and no progress."""
        want = set(want)
        deadline = time.monotonic() + timeout
        same, since = None, time.monotonic()
        while time.monotonic() < deadline:
            try:
                m = self.get_migration()
            except ConnectionError:  # both proxies down for a moment (restart)
                time.sleep(0.1)
                continue
            phase = m["phase"]
            if phase in want:
                return m
            if phase in TERMINAL:
                self.fail(f"the migration ended {phase} while waiting for {sorted(want)}: {m}")
            now = (phase, m.get("error"), m.get("rows_copied"), m.get("verify"))
            if now != same:
                same, since = now, time.monotonic()
            elif m.get("error") and time.monotonic() - since > STUCK_S:
                self.fail(f"the migration is stuck in {phase} on an error for {STUCK_S}s "
                          f"(phases seen {self.trace}): {m}")
            ranks = [RANK[w] for w in want if w in RANK]
            if phase in RANK and ranks and RANK[phase] > max(ranks):
                self.fail(f"the migration passed {sorted(want)} before the test could act (now "
                          f"{phase}); raise MIGRATION_PHASE_DELAY_MS (now {PHASE_DELAY_MS})")
            time.sleep(0.05)
        self.fail(f"timed out after {timeout}s waiting for phase {sorted(want)}; "
                  f"phases seen {self.trace}; last {self.last}")

    def find_runner(self, db=None, samples=3):
        """The proxy that holds the runner's advisory lock (any advisory lock, if nobody holds
        that key) in database db (default: this run's metadata database) in every one of
        `samples` looks; None when that is not exactly one proxy. The lock's backend names its
        client port, and the proxy is the process with a socket on that port."""
        db = db or self.meta_db
        held = None
        for i in range(samples):
            rows = self.cluster.sql(self.meta_port, (
                "SELECT DISTINCT a.client_port, (l.classid::bigint << 32) | l.objid::bigint "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                f"AND a.datname = '{db}' AND a.client_port > 0"), db="postgres")
            ports = {int(port) for port, key in rows if int(key) == RUNNER_LOCK}
            ports = ports or {int(port) for port, _ in rows}
            now = set()
            for port in ports:
                inodes = _local_socket_inodes(port)
                now |= {p for p in self.proxies if p.alive() and _has_socket(p.proc.pid, inodes)}
            held = now if held is None else held & now
            if i + 1 < samples:
                time.sleep(0.05)
        return next(iter(held)) if held and len(held) == 1 else None

    # ------------------------------------------------------------------ assertions

    def migration_problems(self, m, kind, shard, phase):
        """What is wrong with a finished migration's JSON (the API's documented shape)."""
        out = []
        if MIGRATION_FIELDS - set(m):
            out.append(f"fields missing: {sorted(MIGRATION_FIELDS - set(m))}")
        got = tuple(m.get(k) for k in ("id", "kind", "shard", "phase"))
        if got != (self.mid, kind, shard, phase):
            out.append(f"id, kind, shard, phase {got}, want {(self.mid, kind, shard, phase)}")
        if phase == "DONE" and m.get("error") is not None:
            out.append(f"error {m['error']!r} in a migration DONE")
        if not m.get("moves"):
            out.append("no moves")
        for mv in m.get("moves") or []:
            if {"from", "to", "ranges"} - set(mv):
                out.append(f"a move without from/to/ranges: {mv}")
            elif (mv["to"] if kind == "add_shard" else mv["from"]) != shard:
                out.append(f"a move that does not involve {shard}: {mv}")
        if {"rows_checked", "mismatches", "repaired"} - set(m.get("verify") or {}):
            out.append(f"verify lacks rows_checked/mismatches/repaired: {m.get('verify')}")
        return [f"migration JSON: {x}" for x in out]

    def order_problems(self, manual=False):
        return [f"phase order: {x} (phases seen {self.trace})"
                for x in check_phase_order(self.trace, manual)]

    def topology_problems(self, names, timeout=10):
        """[] once every live proxy serves a topology whose active shards are exactly names,
        with none joining or leaving (a shard "removed" may still be listed), within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {}
            for p in self.proxies:
                if p.alive():
                    st, t = p.api.call("GET", "/api/v1/topology")
                    seen[p.name] = (sorted(f"{s['name']}:{s.get('state', 'active')}"
                                           for s in t["shards"]
                                           if s.get("state", "active") != "removed")
                                    if st == 200 else st)
            if all(v == sorted(f"{n}:active" for n in names) for v in seen.values()):
                return []
            if time.monotonic() > deadline:
                return [f"topology: want {sorted(names)} active, proxies serve {seen}"]
            time.sleep(0.1)

    def served(self, p):
        """({shard: state}, migration JSON or None, epoch) of the topology proxy p runs on."""
        st, t = p.api.call("GET", "/api/v1/topology")
        self.assertEqual(st, 200, f"GET /api/v1/topology on {p.name}: {t}")
        return ({x["name"]: x.get("state", "active") for x in t["shards"]}, t.get("migration"),
                t.get("epoch"))

    def wait_served(self, want_states, want_migration, proxies=None, timeout=10):
        """Waits until every proxy of `proxies` (default: all live ones) serves exactly these
        shard states and this migration JSON; fails with what they serve."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {p.name: self.served(p)[:2] for p in (proxies or self.proxies) if p.alive()}
            if all(v == (want_states, want_migration) for v in seen.values()):
                return
            if time.monotonic() > deadline:
                self.fail(f"topology: want {want_states}, migration {want_migration}; "
                          f"proxies serve {seen}")
            time.sleep(0.05)

    def epochs(self):
        """[(epoch, pause: True/False/None without a migration, reason, created_at as
        time.time())] of this run's metadata database, oldest first."""
        rows = self.cluster.sql(self.meta_port, (
            "SELECT epoch, coalesce(topology->'migration'->>'pause', ''), reason, "
            "extract(epoch FROM created_at) FROM shardgate.epochs ORDER BY epoch"), db=self.meta_db)
        pause = {"true": True, "false": False, "": None}
        return [(int(e), pause[p], r, float(t)) for e, p, r, t in rows]

    def action(self, what):
        """POST /api/v1/migrations/{id}/<what> (through the first live proxy)."""
        return self.api("POST", f"/api/v1/migrations/{self.mid}/{what}",
                        template=f"{MIGRATION_TMPL}/{what}")

    def balance_on(self, shard, key):
        """The balance of key on shard's primary, read directly (None: no row)."""
        rows = self.cluster.sql(self.ports[shard], f"SELECT balance FROM accounts WHERE id = {key}")
        return int(rows[0][0]) if rows else None

    def wait_balance(self, shard, key, want, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            got = self.balance_on(shard, key)
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def assert_topology(self, names):
        self.assertEqual(self.topology_problems(names), [])

    def invariant_problems(self, ring, ledger):
        """check_invariants on every primary, and check_via_proxy through each live proxy."""
        problems = check_invariants(self.cluster, self.ports, ring.owner, ledger)
        for p in self.proxies:
            if p.alive():
                problems += check_via_proxy(p.dsn(), ring.owner, ledger)
        return problems

    def workload_problems(self, wl, stuck):
        """What the workload saw that the contract does not allow, each with the phase then."""
        s = wl.stats
        print(f"\n[{self._testMethodName}] workload: {s.summary()}", file=sys.stderr)
        out = [f"hangs: {x}" for x in stuck]
        out += [f"impossible answer in {self.phase_at(t)}: {op}: {msg}"
                for t, op, msg in s.anomalies[:20]]
        out += [f"error outside the contract in {self.phase_at(t)}: {op}: {code} {msg}"
                for t, op, code, msg in s.unexpected[:20]]
        for op in ("transfer", "insert", "read"):
            if not s.counts[f"{op}:ok"]:
                out.append(f"no {op} succeeded: {s.summary()}")
        return out

    def assert_all(self, ring, ledger, wl, stuck, what, extra=()):
        """Fails once with everything wrong: the workload's findings, extra, the invariants."""
        out = self.workload_problems(wl, stuck) + list(extra)
        problems = self.invariant_problems(ring, ledger)
        if problems:
            out.append(f"{what}: {format_problems(problems)}")
        if out:
            self.fail(f"{what}; phases seen {self.trace}:\n" + "\n".join(out))

    @contextlib.contextmanager
    def diagnose(self, label):
        """On a failure inside the block: the migration, its phases and the proxies' logs."""
        try:
            yield
        except BaseException:
            out = [f"\n===== {self.id()} [{label}] failed",
                   f"migration {self.mid}: phases seen {self.trace}", f"last: {self.last}"]
            if self.workload is not None:
                out.append(f"workload: {self.workload.stats.summary()}")
            for p in self.proxies:
                lines = p.log().splitlines()
                out.append(f"--- proxy {p.name} (port {p.port}), last 40 of {len(lines)} lines")
                out += lines[-40:]
            print("\n".join(out), file=sys.stderr)
            raise

    # ================================================================== the harness itself

    def test_ring_matches_shardgate_locate(self):
        self.assertEqual(xxh3(b"s0#0"), 0x3ca18f170a220936)  # README's ring contract
        self.assertEqual(xxh3((42).to_bytes(8, "little", signed=True)), 0xd5a6f8c838df27c8)
        demo = Ring(["s0", "s1"])
        self.assertEqual([demo.owner(k) for k in range(1, 7)], ["s0", "s1", "s1", "s0", "s1", "s1"])
        rnd = random.Random(SEED)
        keys = [1, 2, 42, -1, 2**63 - 1, -2**63] + [rnd.randrange(-2**63, 2**63) for _ in range(8)]
        keys += [rnd.randrange(1, 20_000_000) for _ in range(10)]
        for ring in (self.ring3, self.ring4, self.ring_without_s1):
            with self.subTest(ring=ring.names):
                ports = {n: self.ports[n] for n in ring.names}
                self.assertEqual(locate_mismatches(ring, ports, keys), [])

    def test_ledger_in_doubt_rules(self):
        led = Ledger()
        led.set(1, 100)
        led.set(2, 100)
        led.add(1, -5)
        led.add(2, 5)
        led.doubt_delta(1, -7)      # a transfer whose COMMIT got no answer
        led.doubt_delta(2, 7)
        self.assertTrue(led.allows(1, 95) and led.allows(1, 88) and led.allows(2, 112))
        self.assertFalse(led.allows(1, 93) or led.allows(1, None))
        led.known(10)
        led.doubt_state(10, 50)     # an insert in doubt
        led.set(11, 30)
        led.doubt_state(11, None)   # a delete in doubt
        self.assertTrue(led.allows(10, None) and led.allows(10, 50) and led.allows(11, None))
        self.assertFalse(led.allows(10, 51) or led.allows(11, 31))
        self.assertEqual(led.expected_total(), 230)
        for total in (230, 280, 200, 250):
            self.assertTrue(led.allows_total(total), total)
        self.assertFalse(led.allows_total(223), "half a transfer must break the sum")
        self.assertEqual(led.definite(), {})
        led.set(12, 5)
        self.assertEqual(led.definite(), {12: 5})

    def test_phase_order_rules(self):
        ok = [["PREPARE", "DUAL_WRITE", "BACKFILL", "VERIFY", "CUTOVER", "REVERSE_DUAL_WRITE",
               "CLEANUP", "DONE"],
              ["PREPARE", "BACKFILL", "ABORTING", "ABORTED"],
              ["VERIFY", "CUTOVER", "VERIFY", "CUTOVER", "REVERSE_DUAL_WRITE", "ABORTING",
               "ABORTED"],
              ["DUAL_WRITE", "FAILED"]]
        for trace in ok:
            self.assertEqual(check_phase_order(trace, manual=False), [], trace)
        self.assertEqual(check_phase_order(["VERIFY", "READY", "CUTOVER"], manual=True), [])
        bad = [(["BACKFILL", "DUAL_WRITE"], False), (["CLEANUP", "ABORTED"], False),
               (["REVERSE_DUAL_WRITE", "VERIFY"], False), (["DONE", "CLEANUP"], False),
               (["VERIFY", "READY", "CUTOVER"], False), (["ABORTING", "CUTOVER"], False),
               (["BACKFILL", "COPYING"], False)]
        for trace, manual in bad:
            self.assertNotEqual(check_phase_order(trace, manual), [], trace)

    def test_checker_detects_damage(self):
        ledger = self.fresh(3, 300)
        ring, c = self.ring3, self.cluster
        self.assertEqual(check_invariants(c, self.ports, ring.owner, ledger), [])
        self.assertEqual(check_via_proxy(self.a.dsn(), ring.owner, ledger), [])
        on = lambda shard: next(k for k in range(1, 301) if ring.owner(k) == shard)  # noqa: E731
        x, y = on("s0"), on("s2")
        c.sql(self.ports["s1"], f"INSERT INTO accounts (id, owner, balance) VALUES ({x}, 'x', 100)")
        c.sql(self.ports["s2"], f"DELETE FROM accounts WHERE id = {y}")
        problems = check_invariants(c, self.ports, ring.owner, ledger)
        # (the sum happens to hold: the copy adds what the delete took away)
        self.assertEqual(sorted((p.kind, p.key) for p in problems),
                         [("duplicated", x), ("lost", y), ("misplaced", x)],
                         format_problems(problems))
        self.assertEqual([(p.kind, p.key) for p in check_via_proxy(self.a.dsn(), ring.owner,
                                                                    ledger)],
                         [("proxy_missing", y)])
        # More damage: a balance changed on the owner, a row nobody wrote, a row on the target
        # (s3, not in the ring), a prepared transaction left on it.
        z, unknown, t = on("s1"), 424_242, 7
        c.sql(self.ports[ring.owner(z)], f"UPDATE accounts SET balance = 99 WHERE id = {z}")
        c.sql(self.ports[ring.owner(unknown)],
              f"INSERT INTO accounts (id, owner, balance) VALUES ({unknown}, 'u', 1)")
        s3 = self.ports["s3"]
        c.sql(s3, "ALTER SYSTEM SET max_prepared_transactions = 4", db="postgres")
        c.sql(s3, "CHECKPOINT", db="postgres")  # restart stops it -m immediate: keep what came
        c.restart(s3)                            # before (synchronous_commit is off)
        c.sql(s3, harness.ACCOUNTS_DDL, user="app")
        c.sql(s3, f"INSERT INTO accounts (id, owner, balance) VALUES ({t}, 't', 100)")
        c.sql(s3, "BEGIN; INSERT INTO accounts (id, owner, balance) VALUES (-5, 'p', 1); "
                  "PREPARE TRANSACTION 'sg-checker-selfcheck'")
        try:
            kinds = {(p.kind, p.key) for p in check_invariants(c, self.ports, ring.owner, ledger)}
        finally:
            c.sql(s3, "ROLLBACK PREPARED 'sg-checker-selfcheck'")
        for want in (("balance", z), ("unknown", unknown), ("misplaced", t), ("duplicated", t),
                     ("prepared_xact", None), ("sum", None), ("lost", y), ("misplaced", x)):
            self.assertIn(want, kinds)

    def test_workload_keeps_invariants_without_migration(self):
        """The workload and the checker agree on plain proxies (two, sharing the metadata)."""
        ledger = self.fresh(3, SMALL_ROWS)
        wl = self.start_workload(ledger, [self.ring3, self.ring4], SMALL_ROWS, THREADS)
        time.sleep(5 if not LONG else 30)
        stuck = wl.stop()
        extra = [f"no {op} succeeded" for op in ("update", "delete")
                 if not wl.stats.counts[f"{op}:ok"]]
        extra += [f"{k} in doubt" for k in ledger.ids() if ledger.in_doubt(k)]
        extra += self.topology_problems(self.ring3.names)
        self.assert_all(self.ring3, ledger, wl, stuck, "after the workload", extra)
        print(f"[workload] {len(wl.stats.acks)} acknowledged writes, longest gap "
              f"{wl.max_ack_gap(wl.stats.acks[0][0], wl.stats.acks[-1][0]) * 1000:.0f} ms",
              file=sys.stderr)

    def test_workload_survives_proxy_kill9_without_migration(self):
        """Kill -9 and restart of one proxy under the workload: clients move to the other one,
        writes in doubt are allowed either way, and the invariants hold. Also proves find_runner
        on an advisory lock held through proxy a."""
        ledger = self.fresh(3, SMALL_ROWS)
        holder = psycopg2.connect(self.a.dsn(), connect_timeout=10)
        holder.autocommit = True
        cur = holder.cursor()
        cur.execute("BEGIN")
        cur.execute("SELECT pg_advisory_xact_lock(4242)")  # binds to s0's primary, db app
        self.assertIs(self.find_runner(db="app"), self.a)
        cur.execute("ROLLBACK")
        holder.close()
        wl = self.start_workload(ledger, [self.ring3], SMALL_ROWS, THREADS)
        time.sleep(2)
        self.kill9(self.a)
        st, topo = self.api("GET", "/api/v1/topology")  # answered by b meanwhile
        self.assertEqual(st, 200, topo)
        time.sleep(1)
        self.restart(self.a)
        self.assert_topology(self.ring3.names)
        time.sleep(2)
        stuck = wl.stop()
        c = wl.stats.counts
        self.assertGreater(sum(c.get(k, 0) for k in c if k.endswith((":failed", ":in_doubt"))),
                           0, f"the kill was not noticed: {wl.stats.summary()}")
        self.assert_all(self.ring3, ledger, wl, stuck, "after kill -9 of a proxy")

    # ================================================================== migrations

    def add_body(self, cutover="auto", cleanup_after_s=0, rate=0):
        return {"name": "s3", "primary": self.url("s3"), "replicas": [], "weight": 1,
                "cutover": cutover, "cleanup_after_s": cleanup_after_s,
                "max_rows_per_second": rate}

    def run_under_load(self, start, kind, shard, old, new, ledger):
        """Starts the workload, then the migration (start()); in REVERSE_DUAL_WRITE (if it lasts)
        POSTs .../cleanup; waits for DONE and checks it all."""
        moving = {k for k in range(1, ROWS + 1) if old.owner(k) != new.owner(k)}
        wl = self.start_workload(ledger, [old, new], ROWS, THREADS)
        time.sleep(1)
        t0 = time.monotonic()
        start()
        m = self.wait_phase({"REVERSE_DUAL_WRITE", "CLEANUP", "DONE"}, DONE_TIMEOUT)
        if m["phase"] == "REVERSE_DUAL_WRITE":
            # Writes go to the new owners and back to the old ones: let them run there a while,
            # then start CLEANUP now instead of after cleanup_after_s.
            time.sleep(LOAD_AFTER_S)
            st, r = self.api("POST", f"/api/v1/migrations/{self.mid}/cleanup",
                             template=MIGRATION_TMPL + "/cleanup")
            self.assertIn(st, (200, 202), r)
        m = self.wait_phase({"DONE"}, DONE_TIMEOUT)
        t1 = time.monotonic()
        time.sleep(LOAD_AFTER_S)
        stuck = wl.stop()
        during = wl.acks_between(t0, t1, moving)
        gap = wl.max_ack_gap(t0, t1)
        print(f"[{kind}] DONE in {t1 - t0:.1f}s, phases {self.trace}, rows_copied "
              f"{m['rows_copied']}, verify {m['verify']}, target_write_failures "
              f"{m['target_write_failures']}; {during} acknowledged writes to moving keys "
              f"meanwhile; longest time without any acknowledged write {gap * 1000:.0f} ms",
              file=sys.stderr)
        extra = self.migration_problems(m, kind, shard, "DONE") + self.order_problems()
        if not m["rows_copied"]:
            extra.append("rows_copied is 0")
        if not during:
            extra.append("no acknowledged write to a moving key during the migration")
        if gap >= 10:
            extra.append(f"no write acknowledged for {gap:.1f}s during the migration")
        extra += self.topology_problems(new.names)
        # Nothing was killed here: a step that failed and was retried from the journal would
        # hide a bug behind the resume. Except a PostgreSQL deadlock between the runner and
        # client transactions (40P01: PostgreSQL cancels one side, the runner retries the
        # step); seen once in about fifteen runs, in CLEANUP, and reported here when it happens.
        for p in self.proxies:
            failed = [l for l in p.log().splitlines() if "migration_step_failed" in l]
            deadlocks = [l for l in failed if "deadlock detected" in l]
            if deadlocks:
                print(f"[{kind}] proxy {p.name}: {len(deadlocks)} step(s) retried after a "
                      f"deadlock: {deadlocks[0][:600]}", file=sys.stderr)
            failed = [l for l in failed if "deadlock detected" not in l]
            if failed:
                extra.append(f"proxy {p.name}: {len(failed)} migration step(s) failed and were "
                             f"retried, first: {failed[0][:300]}")
        self.assert_all(new, ledger, wl, stuck, f"after {kind} {shard}", extra)
        return m

    def test_add_shard_under_load(self):
        with self.diagnose("add s3"):
            ledger = self.fresh(3, ROWS)

            # The copy rate-limited to last about 5 s, so that more of the load meets it.
            moving = sum(1 for k in range(1, ROWS + 1)
                         if self.ring3.owner(k) != self.ring4.owner(k))

            def start():
                self.start_migration("POST", "/api/v1/shards",
                                     self.add_body(cleanup_after_s=3600, rate=moving // 5))
                st, r = self.api("POST", "/api/v1/shards",
                                 {"name": "s4", "primary": self.url("s3", db="app2"),
                                  "replicas": [], "weight": 1, "cutover": "auto",
                                  "cleanup_after_s": 0, "max_rows_per_second": 0})
                self.assertEqual(st, 409, f"a second migration while one runs: {r}")
            self.run_under_load(start, "add_shard", "s3", self.ring3, self.ring4, ledger)
            self.assertGreater(len(read_rows(self.cluster, self.ports["s3"])), 0)

    def test_remove_shard_under_load(self):
        with self.diagnose("remove s1"):
            ledger = self.fresh(4, ROWS)

            def start():
                self.start_migration("DELETE", "/api/v1/shards/s1",
                                     template="/api/v1/shards/{name}")
                st, r = self.api("DELETE", "/api/v1/shards/s2", template="/api/v1/shards/{name}")
                self.assertEqual(st, 409, f"a second migration while one runs: {r}")
            self.run_under_load(start, "remove_shard", "s1", self.ring4, self.ring_without_s1,
                                ledger)
            self.assertEqual(read_rows(self.cluster, self.ports["s1"]), {})

    def test_write_that_waited_across_an_epoch_change_is_retried(self):
        """A write routed on one epoch that waits for a pooled connection while a migration
        stores the next must not reach the owner it was routed to (it may be stale by then):
        it gets 40001 with nothing applied, and its retry runs."""
        with self.diagnose("routed before an epoch change"):
            self.fresh(3, SMALL_ROWS, names=("a",),
                       proxy_options={"pool_size": 1, "workers": 1})
            s0 = [k for k in range(1, SMALL_ROWS + 1) if self.ring3.owner(k) == "s0"]
            k_hold, k_write = s0[0], s0[1]
            holder = psycopg2.connect(self.a.dsn(), connect_timeout=10)
            self.addCleanup(holder.close)
            hc = holder.cursor()
            hc.execute("SELECT balance FROM accounts WHERE id = %s", (k_hold,))  # s0's only
            result = {}

            def write():
                c = psycopg2.connect(self.a.dsn(), connect_timeout=10)
                c.autocommit = True
                try:
                    c.cursor().execute("UPDATE accounts SET balance = 7 WHERE id = %s",
                                       (k_write,))
                    result["ok"] = True
                except psycopg2.Error as e:
                    result["error"] = (e.pgcode, str(e))
                finally:
                    c.close()
            t = threading.Thread(target=write)
            t.start()
            time.sleep(0.5)  # routed, waiting for the pool
            st, before = self.a.api.call("GET", "/api/v1/topology")
            self.start_migration("POST", "/api/v1/shards", self.add_body("manual"))
            deadline = time.monotonic() + 10
            while self.a.api.call("GET", "/api/v1/topology")[1]["epoch"] == before["epoch"]:
                self.assertLess(time.monotonic(), deadline, "the epoch did not change")
                time.sleep(0.05)
            time.sleep(0.3)  # applied by the proxy too
            holder.commit()  # the pool's connection comes free
            t.join(10)
            self.assertEqual(result.get("error", (None,))[0], "40001", result)
            self.assertIn("retry", result["error"][1])
            self.assertEqual(self.balance_on("s0", k_write), 100, "the refused write ran")
            c = psycopg2.connect(self.a.dsn(), connect_timeout=10)
            c.autocommit = True
            c.cursor().execute("UPDATE accounts SET balance = 7 WHERE id = %s", (k_write,))
            c.close()
            self.assertEqual(self.balance_on("s0", k_write), 7)
            st, r = self.action("abort")
            self.assertEqual(st, 202, r)
            self.wait_phase({"ABORTED"}, 60)

    def test_write_routed_before_the_cutover_that_arrives_after_it_is_refused(self):
        """The flip's residual race, made to happen: a write routed (and sent) on the old
        placement whose statement reaches the old owner's table only after the cutover (here the
        second statement of one query string, behind a pg_sleep) must not land there, where the
        key no longer lives: the server refuses it (40001, the fence the runner set before its
        locks), and nothing of it stays. Writes routed after the flip go through on both sides;
        a direct write to the old owner's sharded table, which no proxy routed, is refused too,
        until CLEANUP."""
        with self.diagnose("write routed before the cutover"):
            self.fresh(3, SMALL_ROWS, names=("a",))
            old, new = self.ring3, self.ring4
            k = next(k for k in range(1, SMALL_ROWS + 1) if new.owner(k) == "s3")
            stay = next(j for j in range(1, SMALL_ROWS + 1)
                        if old.owner(j) == old.owner(k) and new.owner(j) == old.owner(k))
            src = old.owner(k)
            self.start_migration("POST", "/api/v1/shards",
                                 self.add_body("manual", cleanup_after_s=3600))
            self.wait_phase({"READY"}, 60)
            self.assertEqual(self.wait_balance("s3", k, 100), 100, "not copied to s3")
            result = {}

            def late_write():
                c = psycopg2.connect(self.a.dsn(), connect_timeout=10)
                c.autocommit = True
                try:
                    c.cursor().execute("SELECT pg_sleep(4); "
                                       f"UPDATE accounts SET balance = 7 WHERE id = {k}")
                    result["ok"] = True
                except psycopg2.Error as e:
                    result["error"] = (e.pgcode, str(e))
                finally:
                    result["at"] = time.monotonic()
                    c.close()
            t = threading.Thread(target=late_write)
            t.start()
            time.sleep(0.5)  # routed to src, sent, sleeping there
            st, r = self.action("cutover")
            self.assertEqual(st, 202, r)
            self.wait_phase({"REVERSE_DUAL_WRITE"}, 10)
            flipped_at = time.monotonic()
            t.join(15)
            self.assertFalse(t.is_alive(), "the late write never ended")
            self.assertLess(flipped_at, result["at"],
                            "the flip came after the late write ended: nothing was tested")
            self.assertEqual(result.get("error", (None,))[0], "40001",
                             f"the write routed to {src} before the cutover, for a key that "
                             f"moved to s3: {result}")
            self.assertIn("routed on topology epoch", result["error"][1])
            self.assertEqual((self.balance_on(src, k), self.balance_on("s3", k)), (100, 100),
                             "the refused write left something")
            # Routed after the flip: the moved key on s3 (copied back), the key that stays on src.
            c = psycopg2.connect(self.a.dsn(), connect_timeout=10)
            self.addCleanup(c.close)
            c.autocommit = True
            c.cursor().execute(f"UPDATE accounts SET balance = 8 WHERE id = {k}")
            c.cursor().execute(f"UPDATE accounts SET balance = 9 WHERE id = {stay}")
            self.assertEqual(self.balance_on("s3", k), 8)
            self.assertEqual(self.wait_balance(src, k, 8), 8, "not copied back")
            self.assertEqual(self.balance_on(src, stay), 9)
            # A write no proxy routed cannot know which keys moved: refused on the old owner.
            with self.assertRaises(psycopg2.Error) as direct:
                d = psycopg2.connect(self.url(src), connect_timeout=10)
                self.addCleanup(d.close)
                d.autocommit = True
                d.cursor().execute(f"UPDATE accounts SET balance = 10 WHERE id = {stay}")
            self.assertEqual(direct.exception.pgcode, "40001", str(direct.exception))
            self.assertEqual(self.balance_on(src, stay), 9)
            st, r = self.action("cleanup")
            self.assertEqual(st, 202, r)
            self.wait_phase({"DONE"}, 60)
            self.assertEqual((self.balance_on(src, k), self.balance_on("s3", k)), (None, 8))
            # The fence went with the migration's capture.
            d2 = psycopg2.connect(self.url(src), connect_timeout=10)
            self.addCleanup(d2.close)
            d2.autocommit = True
            d2.cursor().execute(f"UPDATE accounts SET balance = 10 WHERE id = {stay}")
            self.assertEqual(self.balance_on(src, stay), 10)

    def test_remove_the_default_shard(self):
        """The default shard (s0: statements on no sharded table run there) can be removed once
        nothing but sharded tables lives there and the metadata database is on another server:
        before that the API says why (422). Then it drains onto s1 and s2 under the transfer
        workload like any shard, statements on no sharded table run on s1 from the migration's
        first epoch, and a proxy started afterwards with the same TOML does the same."""
        with self.diagnose("remove the default shard"):
            path, tmpl = "/api/v1/shards/s0", "/api/v1/shards/{name}"
            self.fresh(3, SMALL_ROWS)  # the metadata database on s0's server
            st, r = self.api("DELETE", path, template=tmpl)
            self.assertEqual(st, 422, r)
            self.assertIn("metadata database", r["error"]["message"])
            self.meta_port = self.ports["s3"]  # (this test only) metadata on s3's server
            ledger = self.fresh(3, ROWS)
            self.cluster.sql(self.ports["s0"], "CREATE TABLE plain_s0(x int)", user="app")
            st, r = self.api("DELETE", path, template=tmpl)
            self.assertEqual(st, 422, r)
            self.assertIn("plain_s0", r["error"]["message"])
            self.cluster.sql(self.ports["s0"], "DROP TABLE plain_s0", user="app")

            without_s0 = Ring(["s1", "s2"])
            self.run_under_load(lambda: self.start_migration("DELETE", path, template=tmpl),
                                "remove_shard", "s0", self.ring3, without_s0, ledger)
            self.assertEqual(read_rows(self.cluster, self.ports["s0"]), {})
            st, topo = self.api("GET", "/api/v1/topology")
            self.assertEqual(topo.get("default_shard"), "s1", topo)
            # A table that is not sharded, made through the proxy: it lives on s1 now.
            conn = psycopg2.connect(self.a.dsn(), connect_timeout=10)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("DROP TABLE IF EXISTS plain_after")
                cur.execute("CREATE TABLE plain_after(x int)")
                cur.execute("INSERT INTO plain_after VALUES (1)")
            conn.close()
            where = [s for s in ("s0", "s1", "s2") if self.cluster.sql(
                self.ports[s], "SELECT to_regclass('plain_after') IS NOT NULL") == [["t"]]]
            self.assertEqual(where, ["s1"])
            c = self.start_proxy("c", 3)  # the same TOML: s0 first, no default_shard
            conn = psycopg2.connect(c.dsn(), connect_timeout=10)
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM plain_after")
                self.assertEqual(cur.fetchone()[0], 1)
            conn.close()
            self.cluster.sql(self.ports["s1"], "DROP TABLE plain_after", user="app")

    def test_abort_in_each_phase_before_cleanup(self):
        for phase in ABORT_PHASES:
            with self.subTest(phase=phase), self.diagnose(f"abort in {phase}"):
                self.abort_in(phase)

    def abort_in(self, phase):
        ledger = self.fresh(3, SMALL_ROWS, delay_ms=PHASE_DELAY_MS)
        wl = self.start_workload(ledger, [self.ring3, self.ring4], SMALL_ROWS, LIGHT_THREADS)
        manual = phase == "READY"
        # cleanup_after_s: REVERSE_DUAL_WRITE lasts until the abort.
        self.start_migration("POST", "/api/v1/shards",
                             self.add_body("manual" if manual else "auto", cleanup_after_s=3600))
        self.wait_phase({phase}, 60)
        st, r = self.api("POST", f"/api/v1/migrations/{self.mid}/abort",
                         template=MIGRATION_TMPL + "/abort")
        self.assertIn(st, (200, 202), f"abort in {phase}: {r}")
        m = self.wait_phase({"ABORTED"}, 60)
        time.sleep(0.5)
        stuck = wl.stop()
        # The abort takes effect in the phase asked, or at the runner's next step (before
        # CLEANUP: order_problems checks that).
        before = [p for p in self.trace if p not in ("ABORTING", "ABORTED")]
        extra = self.order_problems(manual)
        if RANK[before[-1]] < RANK[phase]:
            extra.append(f"aborted in {before[-1]}, before {phase}")
        if (m["kind"], m["shard"]) != ("add_shard", "s3"):
            extra.append(f"migration JSON: kind, shard {m['kind'], m['shard']}")
        extra += self.topology_problems(self.ring3.names)
        left = read_rows(self.cluster, self.ports["s3"])
        if left:
            extra.append(f"{len(left)} rows left on the target (s3), e.g. {sorted(left)[:5]}")
        print(f"[abort {phase}] phases {self.trace}", file=sys.stderr)
        self.assert_all(self.ring3, ledger, wl, stuck, f"after an abort in {phase}", extra)

    def test_kill9_runner_in_each_phase(self):
        for phase in KILL_PHASES:
            with self.subTest(phase=phase), self.diagnose(f"kill -9 in {phase}"):
                self.kill_runner_in(phase)

    def kill_runner_in(self, phase):
        ledger = self.fresh(3, SMALL_ROWS, delay_ms=PHASE_DELAY_MS)
        wl = self.start_workload(ledger, [self.ring3, self.ring4], SMALL_ROWS, LIGHT_THREADS)
        moving = sum(1 for k in range(1, SMALL_ROWS + 1)
                     if self.ring3.owner(k) != self.ring4.owner(k))
        # In BACKFILL the kill lands in the copy itself: rate-limited to last about 5 s.
        rate = max(20, moving // 5) if phase == "BACKFILL" else 0
        manual = phase == "READY"  # (READY is the manual cutover's wait)
        self.start_migration("POST", "/api/v1/shards",
                             self.add_body("manual" if manual else "auto", rate=rate))
        self.wait_phase({phase}, 60)
        if phase == "BACKFILL":
            time.sleep(PHASE_DELAY_MS / 1000 + 0.3)  # past the injected delay, into the copy
        runner = self.find_runner()
        victims = [runner] if runner else list(self.proxies)
        at_kill = self.get_migration()
        self.assertEqual(at_kill["phase"], phase, "the phase ended before the kill; raise "
                         f"MIGRATION_PHASE_DELAY_MS (now {PHASE_DELAY_MS})")
        for p in victims:
            self.kill9(p)
        killed = time.monotonic()
        time.sleep(0.5)
        for p in victims:
            self.restart(p)
        if manual:
            m = self.wait_phase({"READY", "ABORTED"}, DONE_TIMEOUT)
            if m["phase"] == "READY":
                st, r = self.action("cutover")
                self.assertEqual(st, 202, f"cutover after the restart: {r}")
        m = self.wait_phase({"DONE", "ABORTED"}, DONE_TIMEOUT)
        took = time.monotonic() - killed
        time.sleep(0.5)
        stuck = wl.stop()
        extra = self.order_problems(manual)
        if phase == "CLEANUP" and m["phase"] != "DONE":
            extra.append(f"a migration killed in CLEANUP ended {m['phase']}, not DONE")
        ring = self.ring4 if m["phase"] == "DONE" else self.ring3
        extra += self.topology_problems(ring.names)
        if m["phase"] == "ABORTED":
            left = read_rows(self.cluster, self.ports["s3"])
            if left:
                extra.append(f"{len(left)} rows left on the target (s3) after ABORTED")
        else:
            extra += self.migration_problems(m, "add_shard", "s3", "DONE")
        who = f"runner {runner.name}" if runner else "both proxies (runner not identified)"
        print(f"[kill -9 {phase}] killed {who} at rows_copied {at_kill['rows_copied']}; ended "
              f"{m['phase']} {took:.1f}s later; phases {self.trace}", file=sys.stderr)
        self.assert_all(ring, ledger, wl, stuck, f"after kill -9 in {phase}, ended {m['phase']}",
                        extra)

    # ================================================================== manual cutover

    def test_text_keys_with_escapes_move_to_their_owner(self):
        """A text-keyed table whose keys and values hold what COPY text escapes (tab, newline,
        carriage return, backslash, \\N) and other awkward characters (quotes, non-ASCII,
        spaces, the empty string) beside accounts: after adding s3, every row is on the owner
        the ring gives its key's UTF-8 bytes, once, with its value unchanged."""
        with self.diagnose("text keys"):
            tables = (("accounts", "id", "bigint"), ("notes", "k", "text"))
            self.fresh(3, 50, tables=tables)
            odd = ["", "\t", "\n", "\r", "\\", "\\N", "a\tb\\c\nd", "'quote\"",
                   "ünïcödé ☃", "  spaced  ", "\\x41\\101", "\x7f\x08\x0c\x0b"]
            want = {}
            for i in range(1500):
                k = f"{odd[i % len(odd)]}{i}" if i % 3 else odd[i % len(odd)] * 2 + str(i)
                want[k] = f"{k}|{odd[(i + 5) % len(odd)]}"
            for i in range(3):
                self.cluster.sql(self.ports[f"s{i}"],
                                 "CREATE TABLE notes(k text PRIMARY KEY, body text)", user="app")
            conn = psycopg2.connect(self.a.dsn(), connect_timeout=10)
            self.addCleanup(conn.close)
            conn.autocommit = True
            with conn.cursor() as cur:
                for k, body in want.items():
                    cur.execute("INSERT INTO notes(k, body) VALUES (%s, %s)", (k, body))
            old, new = Ring(["s0", "s1", "s2"]), self.ring4
            moving = [k for k in want if old.owner(k) != new.owner(k)]
            self.assertGreater(sum(1 for k in moving if any(c in k for c in "\t\n\\")), 20,
                               "too few moving keys with escapes to test anything")
            before = self.notes_by_shard()
            placed = [(k, s) for s, rows in before.items() for k in rows if old.owner(k) != s]
            self.assertEqual(placed, [], "rows off their owner before the migration")
            self.start_migration("POST", "/api/v1/shards", self.add_body())
            self.wait_phase({"DONE"}, DONE_TIMEOUT)
            after = self.notes_by_shard()
            seen = {}
            for s, rows in after.items():
                for k, body in rows.items():
                    self.assertFalse(k in seen, f"key {k!r} on {seen.get(k)} and {s}")
                    seen[k] = s
                    self.assertEqual(new.owner(k), s, f"key {k!r} on {s}, owner {new.owner(k)}")
                    self.assertEqual(body, want[k], f"value of key {k!r} changed")
            self.assertEqual(set(seen), set(want), "keys lost or gained")
            self.assertEqual(sum(1 for k in moving if seen[k] == "s3"), len(moving))

    def notes_by_shard(self):
        out = {}
        for s, port in self.ports.items():
            c = psycopg2.connect(host="127.0.0.1", port=port, user="app",
                                 password="app-secret", dbname="app", connect_timeout=10)
            try:
                with c.cursor() as cur:
                    cur.execute("SELECT to_regclass('notes') IS NOT NULL")
                    if cur.fetchone()[0]:
                        cur.execute("SELECT k, body FROM notes")
                        out[s] = dict(cur.fetchall())
            finally:
                c.close()
        return out

    def test_add_refused_when_the_new_shard_is_not_clean(self):
        """POST /api/v1/shards answers 422, and starts nothing, when the new shard's primary has
        a sharded table with rows, or with other columns; and 409 for a name in use."""
        with self.diagnose("add refusals"):
            self.fresh(3, 50)
            c, s3 = self.cluster, self.ports["s3"]
            c.sql(s3, "CREATE TABLE accounts(id bigint primary key, owner text, balance bigint)",
                  user="app")
            c.sql(s3, "INSERT INTO accounts VALUES (1, 'stray', 1)", user="app")
            st, r = self.api("POST", "/api/v1/shards", self.add_body())
            self.assertEqual((st, r["error"]["code"]), (422, "unprocessable"), r)
            self.assertIn("already has rows", r["error"]["message"])
            c.sql(s3, "DROP TABLE accounts", user="app")
            c.sql(s3, "CREATE TABLE accounts(id bigint primary key, balance numeric)", user="app")
            st, r = self.api("POST", "/api/v1/shards", self.add_body())
            self.assertEqual((st, r["error"]["code"]), (422, "unprocessable"), r)
            self.assertIn("other columns", r["error"]["message"])
            c.sql(s3, "DROP TABLE accounts", user="app")
            st, r = self.api("POST", "/api/v1/shards", dict(self.add_body(), name="s1"))
            self.assertEqual((st, r["error"]["code"]), (409, "conflict"), r)
            st, r = self.api("GET", "/api/v1/migrations")
            self.assertEqual(r["migrations"], [], "a refused add started a migration")

    def test_manual_cutover_success(self):
        """cutover "manual" under the workload: READY holds the old ring (s3 joining; a write to
        a moving key lands on its old owner and is copied to s3; reads through both proxies see
        it); POST .../cutover (202) flips it (REVERSE_DUAL_WRITE: a write lands on s3 and is
        copied back); POST .../cleanup; DONE with the add test's invariants. A cutover asked in
        BACKFILL, in REVERSE_DUAL_WRITE or after DONE gets 409."""
        with self.diagnose("manual cutover"):
            ledger = self.fresh(3, ROWS)
            old, new = self.ring3, self.ring4
            moves = lambda k: old.owner(k) != new.owner(k)  # noqa: E731
            moving = {k for k in range(1, ROWS + 1) if moves(k)}
            # Ids of this test's own (none of the workload's) that move to s3.
            probes = [k for k in range(90_000_000, 90_001_000) if moves(k)][:4]
            load_accounts(self.a.dsn(), old, probes, 100, ledger)
            wl = self.start_workload(ledger, [old, new], ROWS, THREADS)
            time.sleep(0.5)
            t0 = time.monotonic()
            # The copy rate-limited to last about 3 s: a cutover asked meanwhile is refused.
            self.start_migration("POST", "/api/v1/shards",
                                 self.add_body("manual", cleanup_after_s=3600,
                                               rate=max(50, len(moving) // 3)))
            self.wait_phase({"BACKFILL"}, 30)
            st, r = self.action("cutover")
            phase = self.get_migration()["phase"]
            self.assertIn(phase, ("BACKFILL", "VERIFY"), "READY came before the early cutover "
                          "could be refused; the rate limit is too high")
            self.assertEqual((st, (r or {}).get("error", {}).get("code")), (409, "conflict"),
                             f"cutover in BACKFILL: {r}")

            self.wait_phase({"READY"}, 60)
            ready_at = time.monotonic()
            joining = {"s0": "active", "s1": "active", "s2": "active", "s3": "joining"}
            # (mirror: dual-write copies writes to moving keys to the after ring's owners)
            self.wait_served(joining, {"id": self.mid, "pause": False, "mirror": new.names})
            rnd = random.Random(SEED)
            conns = {p.name: psycopg2.connect(p.dsn(), connect_timeout=10) for p in self.proxies}
            self.addCleanup(lambda: [c.close() for c in conns.values()])
            for c in conns.values():
                c.autocommit = True

            def write_and_read(via, k):
                v = rnd.randint(1, 10**6)
                cur = conns[via].cursor()
                cur.execute("UPDATE accounts SET balance = %s WHERE id = %s", (v, k))
                self.assertEqual(cur.rowcount, 1, f"UPDATE of {k} through {via}")
                ledger.set(k, v)
                for name, conn in conns.items():
                    cur = conn.cursor()
                    cur.execute("SELECT balance FROM accounts WHERE id = %s", (k,))
                    self.assertEqual(cur.fetchall(), [(v,)],
                                     f"key {k} written through {via} ({v}), read through {name} "
                                     f"in {self.last['phase']}")
                return v

            # DDL on a sharded table waits for the migration: 55000, naming it; nothing changes.
            with self.assertRaises(psycopg2.Error) as ddl:
                conns[self.proxies[0].name].cursor().execute(
                    "ALTER TABLE accounts ADD COLUMN note text")
            self.assertEqual(ddl.exception.pgcode, "55000", str(ddl.exception))
            self.assertIn(self.mid, str(ddl.exception))
            # So do statements across shards: the moving rows are on two shards now, and a
            # count or an UPDATE on every shard would see them twice.
            for sql in ("SELECT count(*) FROM accounts",
                        "UPDATE accounts SET balance = balance WHERE balance < 0",
                        f"SELECT id FROM accounts WHERE id IN ({probes[0]}, 1, 2, 3, 4, 5)"):
                with self.assertRaises(psycopg2.Error) as across:
                    conns[self.proxies[0].name].cursor().execute(sql)
                self.assertEqual(across.exception.pgcode, "55000", f"{sql}: {across.exception}")
                self.assertIn(self.mid, str(across.exception))

            problems = []
            for k in probes:  # READY: the old owner has the key, s3 a copy (the drain's)
                v = write_and_read("a", k)
                if self.balance_on(old.owner(k), k) != v:
                    problems.append(f"READY: key {k} written ({v}) but its old owner "
                                    f"{old.owner(k)} has {self.balance_on(old.owner(k), k)}")
                got = self.wait_balance("s3", k, v)
                if got != v:
                    problems.append(f"READY: key {k} ({v} on {old.owner(k)}) not copied to s3 "
                                    f"within 5 s: s3 has {got}")
            time.sleep(0.5)
            self.assertEqual(self.get_migration()["phase"], "READY",
                             "manual cutover left READY without a POST")
            st, r = self.action("cutover")
            self.assertEqual(st, 202, f"cutover in READY: {r}")
            self.wait_phase({"REVERSE_DUAL_WRITE"}, 60)
            active = dict(joining, s3="active")
            self.wait_served(active, {"id": self.mid, "pause": False, "mirror": old.names})
            for k in probes:  # REVERSE_DUAL_WRITE: s3 has the key, the old owner a copy
                v = write_and_read("b", k)
                if self.balance_on("s3", k) != v:
                    problems.append(f"REVERSE_DUAL_WRITE: key {k} written ({v}) but s3 has "
                                    f"{self.balance_on('s3', k)}")
                got = self.wait_balance(old.owner(k), k, v)
                if got != v:
                    problems.append(f"REVERSE_DUAL_WRITE: key {k} ({v} on s3) not copied back to "
                                    f"{old.owner(k)} within 5 s: it has {got}")
            st, r = self.action("cutover")
            self.assertEqual(st, 409, f"cutover in REVERSE_DUAL_WRITE: {r}")
            st, r = self.action("cleanup")
            self.assertEqual(st, 202, f"cleanup in REVERSE_DUAL_WRITE: {r}")
            m = self.wait_phase({"DONE"}, DONE_TIMEOUT)
            t1 = time.monotonic()
            st, r = self.action("cutover")
            self.assertEqual((st, (r or {}).get("error", {}).get("code")), (409, "conflict"),
                             f"cutover after DONE: {r}")
            for k in probes:
                write_and_read("a", k)
            time.sleep(LOAD_AFTER_S)
            stuck = wl.stop()
            during = wl.acks_between(t0, t1, moving)
            print(f"[manual cutover] READY after {ready_at - t0:.1f}s, DONE after {t1 - t0:.1f}s; "
                  f"phases {self.trace}; cutover_pause_ms {m.get('cutover_pause_ms')}; "
                  f"{during} acknowledged writes to moving keys meanwhile, longest time without "
                  f"any {wl.max_ack_gap(t0, t1) * 1000:.0f} ms", file=sys.stderr)
            extra = problems + self.migration_problems(m, "add_shard", "s3", "DONE")
            extra += self.order_problems(manual=True)
            if "READY" not in self.trace:
                extra.append(f"READY never seen (phases {self.trace})")
            if not during:
                extra.append("no acknowledged write to a moving key during the migration")
            extra += self.topology_problems(new.names)
            self.assert_all(new, ledger, wl, stuck, "after a manual cutover", extra)

    # ================================================================== dual-write at commit

    def test_dual_write_copies_each_write_at_its_commit(self):
        """Proxy-side dual-write, with the migration's change-log drain switched off
        (SHARDGATE_TEST_NO_DRAIN), so that only the proxies can bring a write to the target: in
        READY (manual cutover) every acknowledged write to a moving key is on s3 by the time the
        client has its answer, through the simple and the extended protocol, in autocommit and
        in a transaction (UPDATE, INSERT, DELETE, RETURNING); the client gets exactly what
        PostgreSQL answers; a rolled-back transaction and a failed statement copy nothing; a
        target row locked by someone else makes the copy give up after its lock timeout while
        the client's write still succeeds (never a hang). An abort then leaves s3 empty."""
        with self.diagnose("dual-write at commit"):
            with _environ(SHARDGATE_TEST_NO_DRAIN="1"):
                self.fresh(3, SMALL_ROWS)
            old, new = self.ring3, self.ring4
            moving = [k for k in range(1, SMALL_ROWS + 1) if old.owner(k) != new.owner(k)]
            staying = [k for k in range(1, SMALL_ROWS + 1) if old.owner(k) == new.owner(k)]
            fresh_ids = [k for k in range(80_000_000, 80_002_000)
                         if old.owner(k) != new.owner(k)][:6]
            self.start_migration("POST", "/api/v1/shards", self.add_body("manual"))
            self.wait_phase({"READY"}, 60)
            on_s3 = lambda k: self.balance_on("s3", k)  # noqa: E731
            conn = psycopg2.connect(self.a.dsn(), connect_timeout=10)
            self.addCleanup(conn.close)
            conn.autocommit = True
            cur = conn.cursor()
            k = iter(moving)

            # Simple protocol, autocommit: UPDATE ... RETURNING, INSERT, DELETE.
            k1 = next(k)
            cur.execute("UPDATE accounts SET balance = 4242 WHERE id = %s RETURNING balance", (k1,))
            self.assertEqual((cur.fetchall(), cur.rowcount, cur.statusmessage),
                             ([(4242,)], 1, "UPDATE 1"))
            self.assertEqual(on_s3(k1), 4242, "autocommit UPDATE not on s3 at its answer")
            cur.execute("INSERT INTO accounts (id, balance) VALUES (%s, 7)", (fresh_ids[0],))
            self.assertEqual(cur.statusmessage, "INSERT 0 1")
            self.assertEqual(on_s3(fresh_ids[0]), 7, "autocommit INSERT not on s3")
            k2 = next(k)
            cur.execute("DELETE FROM accounts WHERE id = %s", (k2,))
            self.assertEqual(cur.rowcount, 1)
            self.assertIsNone(on_s3(k2), "autocommit DELETE left the row on s3")
            # An UPDATE that matches nothing, and one that fails: nothing copied, same answers.
            cur.execute("UPDATE accounts SET balance = 1 WHERE id = %s", (k2,))
            self.assertEqual(cur.statusmessage, "UPDATE 0")
            with self.assertRaises(psycopg2.Error) as bad:
                cur.execute("INSERT INTO accounts (id, balance) VALUES (%s, 1)", (k1,))
            self.assertEqual(bad.exception.pgcode, "23505", str(bad.exception))
            self.assertEqual(on_s3(k1), 4242)
            cur.execute("SELECT balance FROM accounts WHERE id = %s", (k1,))
            self.assertEqual(cur.fetchall(), [(4242,)], "the session works after the error")

            # Simple protocol, a transaction: two moving keys, one that stays, and an INSERT.
            conn.autocommit = False
            k3, k4 = next(k), next(k)
            cur.execute("UPDATE accounts SET balance = balance + 11 WHERE id = %s", (k3,))
            cur.execute("UPDATE accounts SET balance = 12 WHERE id = %s", (k4,))
            cur.execute("UPDATE accounts SET balance = 13 WHERE id = %s", (staying[0],))
            cur.execute("INSERT INTO accounts (id, balance) VALUES (%s, 14)", (fresh_ids[1],))
            self.assertIsNone(on_s3(fresh_ids[1]), "a write reached s3 before its commit")
            conn.commit()
            self.assertEqual((on_s3(k3), on_s3(k4), on_s3(fresh_ids[1])), (111, 12, 14),
                             "a transaction's writes not on s3 at its COMMIT's answer")
            self.assertIsNone(on_s3(staying[0]), "a key that stays was copied to s3")
            # Rolled back: nothing copied.
            k5 = next(k)
            cur.execute("UPDATE accounts SET balance = 15 WHERE id = %s", (k5,))
            conn.rollback()
            self.assertEqual(on_s3(k5), 100)
            conn.autocommit = True

            # Extended protocol (psycopg 3, server-side prepared), autocommit and a transaction.
            if psycopg is not None:
                with psycopg.connect(self.b.dsn(), autocommit=True, prepare_threshold=0) as c3:
                    k6, k7 = next(k), next(k)
                    for v in (16, 17):  # prepared once, executed twice
                        r = c3.execute("UPDATE accounts SET balance = %s WHERE id = %s "
                                       "RETURNING id", (v, k6))
                        self.assertEqual(r.fetchall(), [(k6,)])
                        self.assertEqual(on_s3(k6), v, "extended autocommit UPDATE not on s3")
                    with self.assertRaises(psycopg.Error) as bad3:
                        c3.execute("INSERT INTO accounts (id, balance) VALUES (%s, 1)", (k6,))
                    self.assertEqual(bad3.exception.sqlstate, "23505")
                    with c3.transaction():
                        c3.execute("UPDATE accounts SET balance = 18 WHERE id = %s", (k7,))
                        c3.execute("INSERT INTO accounts (id, balance) VALUES (%s, 19)",
                                   (fresh_ids[2],))
                    self.assertEqual((on_s3(k7), on_s3(fresh_ids[2])), (18, 19),
                                     "extended transaction not on s3 at its COMMIT's answer")
                    self.assertEqual(c3.execute("SELECT balance FROM accounts WHERE id = %s",
                                                (k7,)).fetchall(), [(18,)])

            # Someone holds the row on s3: the copy gives up after its lock timeout, the
            # client's write succeeds anyway (its key is in the change log for the migration).
            k8 = next(k)
            holder = psycopg2.connect(
                f"host=127.0.0.1 port={self.ports['s3']} dbname=app user=app "
                "password=app-secret")
            self.addCleanup(holder.close)
            hc = holder.cursor()
            hc.execute("SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (k8,))
            t = time.monotonic()
            cur.execute("UPDATE accounts SET balance = 20 WHERE id = %s", (k8,))
            took = time.monotonic() - t
            self.assertEqual(cur.rowcount, 1)
            self.assertLess(took, 5, "a write waited on a lock held on the target")
            holder.rollback()
            self.assertEqual(self.balance_on(old.owner(k8), k8), 20)
            self.assertEqual(on_s3(k8), 100, "the copy should have given up (drain is off)")
            self.assertIn("dual_write_failed", self.a.log())
            self.assertGreaterEqual(counter(self.a, "shardgate_dual_write_commits_total",
                                            'outcome="failed"'), 1)
            # Copied at commit: on a, three autocommit writes and a transaction; on b (psycopg
            # 3), two autocommit UPDATEs and a transaction.
            for p, n in ((self.a, 4), (self.b, 3)):
                self.assertGreaterEqual(counter(p, "shardgate_dual_write_commits_total",
                                                'outcome="copied"'), n, p.name)

            st, r = self.action("abort")
            self.assertEqual(st, 202, f"abort in READY: {r}")
            self.wait_phase({"ABORTED"}, 60)
            left = self.cluster.sql(self.ports["s3"], "SELECT count(*) FROM accounts")[0][0]
            self.assertEqual(int(left), 0, "rows left on s3 after the abort")
            for kk, v in ((k1, 4242), (k3, 111), (fresh_ids[1], 14)):
                self.assertEqual(self.balance_on(old.owner(kk), kk), v)

    # ================================================================== kill -9 in the pause

    def test_kill9_runner_during_cutover_pause(self):
        """kill -9 of the runner while the epoch that pauses writes to the moving keys is stored
        (SHARDGATE_TEST_PHASE_DELAY_MS keeps it at least that long), restarted: the next runner
        stores "cutover abandoned: writes resume" (pause false) first, cuts over again, DONE with
        the invariants. While the runner was dead, writes to keys that stay were acknowledged
        through the surviving proxy, and lone writes to moving keys waited (held up to
        cutover_pause_ms + 500 ms, then 40001: counted, allowed) instead of being refused at
        once."""
        with self.diagnose("kill -9 in the cutover pause"):
            ledger = self.fresh(3, SMALL_ROWS, delay_ms=PHASE_DELAY_MS)
            old, new = self.ring3, self.ring4
            moves = lambda k: old.owner(k) != new.owner(k)  # noqa: E731
            shapes = ["simple"] + (["extended", "prepared"] if psycopg is not None else [])
            probe_keys = [k for k in range(90_100_000, 90_101_000) if moves(k)][:len(shapes)]
            warm_key = next(k for k in range(90_100_000, 90_101_000) if not moves(k))
            load_accounts(self.a.dsn(), old, probe_keys + [warm_key], 100, ledger)
            wl = self.start_workload(ledger, [old, new], SMALL_ROWS, THREADS)
            clock = time.time() - time.monotonic()  # wall = monotonic + clock
            self.start_migration("POST", "/api/v1/shards", self.add_body())
            self.wait_phase({"CUTOVER"}, 60)
            runner = self.find_runner()
            self.assertIsNotNone(runner, "the runner could not be told (its advisory lock)")
            survivor = next(p for p in self.proxies if p is not runner)
            # The survivor would take the migration over within 0.5 s of the kill and lift the
            # pause: queue for the runner's lock, so that nobody runs the migration from the
            # kill until the restart.
            waiter = LockWaiter(f"postgresql://app:app-secret@127.0.0.1:{self.meta_port}/"
                                f"{self.meta_db}", RUNNER_LOCK)
            self.addCleanup(waiter.release)
            # Writes to keys that stay, through the survivor only, each attempt logged.
            stayers = [k for k in range(80_000_000, 80_010_000) if not moves(k)]
            self.prober = prober = Prober(survivor.dsn(), ledger, [stayers], seed=SEED).start()
            deadline = time.monotonic() + 10
            while self.cluster.sql(self.meta_port, (
                    f"SELECT count(*) FROM pg_locks WHERE pid = {waiter.pid} "
                    "AND locktype = 'advisory' AND NOT granted"), db="postgres") != [["1"]]:
                self.assertLess(time.monotonic(), deadline, "the lock waiter did not queue")
                time.sleep(0.02)
            # Lone writes of moving keys through the survivor, sent right after the kill (the
            # pause then lasts until the restart): each must be held, never refused at once.
            pause_probes = [PauseProbe(shape, survivor.dsn(), k, 7_000 + i, warm_key)
                            for i, (shape, k) in enumerate(zip(shapes, probe_keys))]
            deadline = time.monotonic() + 30
            while True:
                _, mig, epoch = self.served(survivor)
                if mig and mig.get("pause"):
                    break
                self.assertLess(time.monotonic(), deadline, "no pause seen within 30 s")
                time.sleep(0.02)
            paused = time.monotonic()
            self.kill9(runner)
            killed = time.monotonic()
            for pp in pause_probes:
                pp.go()
            at_kill = [e for e in self.epochs() if e[3] <= killed + clock]
            self.assertTrue(waiter.granted.wait(5), f"the runner's lock was not handed to the "
                            f"test's waiter after the kill: {waiter.error!r}")
            time.sleep(1.5)
            for pp in pause_probes:
                pp.wait()
                if pp.outcome == "ok":
                    ledger.set(pp.key, pp.value)
                elif pp.outcome != "40001":
                    ledger.doubt_state(pp.key, pp.value)
            self.restart(runner)
            restarted = time.monotonic()
            waiter.release()  # now a runner (either proxy) takes the migration over
            m = self.wait_phase({"REVERSE_DUAL_WRITE", "CLEANUP", "DONE"}, DONE_TIMEOUT)
            if m["phase"] == "REVERSE_DUAL_WRITE":
                st, r = self.action("cleanup")
                self.assertIn(st, (202, 409), r)  # 409: it went on by itself (cleanup_after_s 0)
            m = self.wait_phase({"DONE"}, DONE_TIMEOUT)
            done = time.monotonic()
            time.sleep(0.5)
            stuck = wl.stop() + [x for x in [prober.stop()] if x]
            self.prober = None

            extra = self.migration_problems(m, "add_shard", "s3", "DONE") + self.order_problems()
            dead = prober.log(killed, restarted)
            not_ok = [a for a in dead if a.outcome != "ok"]
            if len(dead) < 5 or not_ok:
                extra.append(f"writes to keys that stay through {survivor.name} while the runner "
                             f"was dead: {len(dead)} attempts, {len(not_ok)} not acknowledged, "
                             f"e.g. {not_ok[:3]}")
            epochs = self.epochs()
            if not at_kill or at_kill[-1][1] is not True:
                extra.append(f"the kill did not land in the pause: the newest epoch then was "
                             f"{at_kill[-1:]} (paused seen {killed - paused:.3f}s before)")
            after = [e for e in epochs if e[0] > (at_kill[-1][0] if at_kill else 0)]
            if not after or after[0][1] is not False or "writes resume" not in after[0][2]:
                extra.append(f"the first epoch after the kill is not 'cutover abandoned: writes "
                             f"resume' with pause false: {after[:1]}")
            resumed = (after[0][3] - clock) if after else done
            flips = [e for e in after if "flipped to their new owners" in e[2]]
            if len(flips) != 1:
                extra.append(f"{len(flips)} forward flips after the kill: {flips}")
            takers = [p.name for p in self.proxies
                      if "cutover abandoned: writes resume" in p.log()]

            # While the runner was dead (kill .. restart): keys that stay, through the survivor.
            via = self.proxies.index(survivor)
            stay_acks = wl.acks_in(killed, restarted, lambda k: not moves(k), via=via)
            # Lone writes to moving keys from the pause to DONE (the pause the kill left, and
            # the new runner's own): held, then acknowledged or 40001 (allowed), never refused
            # at once.
            hold_s = (CUTOVER_PAUSE_MS + 500) / 1000
            lone = [r for r in wl.retries_in(paused, done, "40001")
                    if r.autocommit and any(moves(k) for k in r.ids)]
            held_40001 = [r for r in lone if r.took >= hold_s - 0.05]
            # (A write that waited for a new pooled connection while another epoch was stored
            # gets the README's other retriable 40001, "... while the statement waited for a
            # connection": not the pause refusing it. Counted, not failed.)
            waited = [r for r in lone if "while the statement waited for a connection" in r.message]
            refused_at_once = [r for r in lone if r.took < hold_s - 0.05 and r not in waited]
            if waited:
                print(f"[kill -9 in the pause] {len(waited)} lone writes to moving keys got 40001 "
                      f"after waiting for a connection across an epoch change", file=sys.stderr)
            held_acked = [a for a in wl.acks_in(paused, done, moves) if a.took > 0.1]
            in_tx = [r for r in wl.retries_in(paused, done, "40001") if not r.autocommit]
            dead_held = [r for r in held_40001 if r.t - r.took < resumed]
            for pp in pause_probes:
                if pp.took is None or (pp.outcome != "ok" and pp.took < hold_s - 0.05):
                    extra.append(f"a lone UPDATE of moving key {pp.key} through {survivor.name} "
                                 f"in the pause, as {pp!r} (not held up to {hold_s * 1000:.0f} "
                                 f"ms): {pp.message}")
            if refused_at_once:
                r = refused_at_once[0]
                by = Counter(f"{x.op} of {x.ids}" for x in refused_at_once)
                extra.append(f"the workload: {len(refused_at_once)} lone writes to moving keys "
                             f"got 40001 without being held up to {hold_s * 1000:.0f} ms "
                             f"({dict(by.most_common(3))}), e.g. after {r.took * 1000:.0f} ms: "
                             f"{r.message}")
            print(f"[kill -9 in the pause] killed runner {runner.name} {killed - paused:.3f}s "
                  f"into the pause (epoch {at_kill[-1][0] if at_kill else '?'}), restarted "
                  f"{restarted - killed:.1f}s later; writes resumed "
                  f"{resumed - killed:.1f}s after the kill (by {takers or '?'}); DONE "
                  f"{done - killed:.1f}s after it; phases {self.trace}", file=sys.stderr)
            print(f"[kill -9 in the pause] lone UPDATEs of moving keys through {survivor.name} "
                  f"sent right after the kill: {pause_probes}", file=sys.stderr)
            print(f"[kill -9 in the pause] runner dead {restarted - killed:.1f}s: through "
                  f"{survivor.name}, {len(dead) - len(not_ok)} of {len(dead)} writes of the "
                  f"survivor's prober (keys that stay) and {len(stay_acks)} of the workload's "
                  f"to keys that stay acknowledged; the kill's pause lasted {resumed - paused:.1f}s; from it "
                  f"to DONE: {len(held_acked)} writes to moving keys acknowledged after being "
                  f"held (longest {max([a.took for a in held_acked], default=0) * 1000:.0f} ms), "
                  f"{len(held_40001)} lone writes held {hold_s * 1000:.0f} ms then 40001 "
                  f"(allowed; {len(dead_held)} of them held in the kill's pause), "
                  f"{len(refused_at_once)} refused at once; {len(in_tx)} 40001s inside "
                  f"transactions ({sum(r.took < 0.1 for r in in_tx)} at once, by statement: "
                  f"{sorted(Counter(r.message[:60] for r in in_tx).items())[:3]})",
                  file=sys.stderr)
            print("[kill -9 in the pause] epochs since the migration began:\n" + "\n".join(
                f"  {e}: pause {pz}, {'before' if t <= killed + clock else 'after'} the kill: "
                f"{why}" for e, pz, why, t in epochs[1:]), file=sys.stderr)
            extra += self.topology_problems(new.names)
            self.assert_all(new, ledger, wl, stuck, "after kill -9 in the cutover pause", extra)

    # ================================================================== partition

    def test_proxy_cut_from_metadata_cannot_write_to_stale_owner(self):
        """A proxy cut from the metadata during DUAL_WRITE cannot write to a stale owner.

        Proxy a (the runner: started alone, it takes the migration) reaches the metadata
        database directly, proxy b through a Relay in this process. With s3 being added (cutover
        manual) and READY, the relay cuts b off (MIGRATION_PARTITION: "freeze", a silent
        partition, or "close"). b keeps taking writes to keys that move and keys that stay; past
        fence_timeout_ms (+1 s) every one of them gets 40001. Then the cutover (a excludes b from
        the barrier once b's heartbeat is older than fence_timeout_ms + heartbeat_ms + 1 s: the
        POST comes 4 s after the cut) and the cleanup run to DONE while b is still cut off, and b
        still acknowledges nothing. After the thaw b writes
        again within a few seconds, and what it writes lands on the new owners only. The
        invariants hold, b's writes included."""
        mode = PARTITION
        fence_ms, heartbeat_ms, margin = 2000, 500, 1.0
        with self.diagnose(f"proxy b cut from the metadata ({mode})"):
            ledger = self.fresh(3, SMALL_ROWS, names=("a",), heartbeat_ms=heartbeat_ms,
                                fence_ms=fence_ms)
            old, new = self.ring3, self.ring4
            moves = lambda k: old.owner(k) != new.owner(k)  # noqa: E731
            relay = Relay(self.meta_port)
            self.addCleanup(relay.stop)  # (cleanups run last first: before stop_run)
            self.start_migration("POST", "/api/v1/shards",
                                 self.add_body("manual", cleanup_after_s=3600))
            deadline = time.monotonic() + 15
            while self.find_runner() is not self.a:
                self.assertLess(time.monotonic(), deadline, "proxy a did not take the migration")
                time.sleep(0.1)
            self.b = self.start_proxy("b", 3, meta_url=relay.url(self.meta_db),
                                      heartbeat_ms=heartbeat_ms, fence_ms=fence_ms)
            self.wait_phase({"READY"}, 60)
            self.wait_served({"s0": "active", "s1": "active", "s2": "active", "s3": "joining"},
                             {"id": self.mid, "pause": False,
                              "mirror": ["s0", "s1", "s2", "s3"]})
            self.workload = wl = Workload([self.a.dsn()], ledger, [old, new],
                                          range(1, SMALL_ROWS + 1), threads=LIGHT_THREADS,
                                          seed=SEED + MigrationTest.runs).start()
            movers = [k for k in range(70_000_000, 70_020_000) if moves(k)]
            stayers = [k for k in range(70_000_000, 70_020_000) if not moves(k)]
            self.prober = prober = Prober(self.b.dsn(), ledger, [movers, stayers],
                                          seed=SEED).start()
            time.sleep(1.0)
            self.assertIs(self.find_runner(), self.a, "the runner moved off proxy a")
            b_log_at = len(self.b.log())
            cut = relay.cut(mode)
            fenced_by = cut + fence_ms / 1000 + margin
            time.sleep(fenced_by + 1.0 - time.monotonic())

            def b_log():
                return "\n".join(self.b.log()[b_log_at:].splitlines()[-30:])

            late = prober.log(fenced_by)
            acked = [a for a in late if a.outcome != "refused" or a.code != "40001"]
            if len(late) < 3 or acked:
                self.fail(f"proxy b was not fenced {fence_ms} ms + {margin:.0f} s after its "
                          f"metadata path was cut ({mode}): of {len(late)} write attempts "
                          f"through it since, {len(acked)} were not refused with 40001, e.g. "
                          f"{acked[:5]}\nproxy b's log since the cut:\n{b_log()}")
            st, status = self.a.api.call("GET", "/api/v1/status")
            b_seen = [p for p in (status.get("proxies") or []) if p.get("id", "").endswith("-b")]
            st, r = self.action("cutover")
            self.assertEqual(st, 202, f"cutover in READY: {r}")
            self.wait_phase({"REVERSE_DUAL_WRITE"}, 30)
            flipped = time.monotonic()
            st, r = self.action("cleanup")
            self.assertEqual(st, 202, f"cleanup in REVERSE_DUAL_WRITE: {r}")
            m = self.wait_phase({"DONE"}, DONE_TIMEOUT)
            done = time.monotonic()
            time.sleep(0.5)
            _, _, b_epoch = self.served(self.b)  # what b runs on, still cut off
            thawed = relay.thaw()
            deadline = thawed + 10
            while not [a for a in prober.log(thawed) if a.outcome == "ok"]:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            back = [a for a in prober.log(thawed) if a.outcome == "ok"]
            caught_up = (back[0].t1 - thawed) if back else None
            time.sleep(1.5)
            prober_stuck = prober.stop()
            self.prober = None
            stuck = wl.stop() + ([prober_stuck] if prober_stuck else [])

            extra = self.migration_problems(m, "add_shard", "s3", "DONE")
            extra += self.order_problems(manual=True)
            cut_off = prober.log(fenced_by, thawed)
            leaked = [a for a in cut_off if a.t1 < thawed
                      and (a.outcome != "refused" or a.code != "40001")]
            for a in leaked[:10]:
                extra.append(f"proxy b, cut off for {a.t0 - cut:.1f}s, answered a write "
                             f"{a.op} of key {a.key} ({'moving' if moves(a.key) else 'staying'}) "
                             f"with {a.outcome} {a.code or ''} {a.message or ''}")
            if caught_up is None or caught_up > 5:
                extra.append(f"proxy b did not write again within 5 s of the thaw "
                             f"(first success after {caught_up})")
            # What b wrote after the thaw lives on its new owner only (read on the primaries).
            back = [a for a in prober.log(thawed) if a.outcome == "ok"]
            written = {a.key for a in back if a.op == "insert"}
            rows = {name: read_rows(self.cluster, port) for name, port in self.ports.items()}
            for k in sorted(written):
                on = sorted(n for n, r in rows.items() if k in r)
                if on != [new.owner(k)]:
                    extra.append(f"key {k} ({'moving' if moves(k) else 'staying'}) inserted "
                                 f"through b after the thaw is on {on}, its owner is "
                                 f"{new.owner(k)} (was {old.owner(k)})")
            moved_after = [k for k in written if moves(k)]
            if not moved_after:
                extra.append("no insert of a moving key through b after the thaw")
            fenced = [a for a in prober.log(cut) if a.outcome == "refused"]
            last_ok = [a for a in prober.log(cut, thawed) if a.outcome == "ok"]
            fence_s = f"{fenced[0].t0 - cut:.2f}s" if fenced else "never"
            last_ok_s = f"{last_ok[-1].t1 - cut:.2f}s" if last_ok else "none"
            outcomes = {}
            for a in prober.log():
                phase = ("before the cut" if a.t0 < cut else
                         "cut, before the fence" if a.t0 < fenced_by else
                         "cut, fenced" if a.t0 < thawed else "after the thaw")
                key = f"{phase}: {a.outcome}{' ' + a.code if a.code else ''}"
                outcomes[key] = outcomes.get(key, 0) + 1
            print(f"[partition {mode}] cut b off; cutover flipped {flipped - cut:.1f}s (attempts "
                  f"{m.get('cutover_attempts')}, pause ms {m.get('cutover_pause_ms')}) and DONE "
                  f"{done - cut:.1f}s after the cut, b meanwhile on epoch {b_epoch}; a saw b's "
                  f"heartbeat then as {[(p.get('applied_epoch'), p.get('heartbeat_age_ms')) for p in b_seen]} "
                  f"(applied epoch, age ms); b's first refusal {fence_s} after the cut, its last "
                  f"acknowledged write while cut off {last_ok_s} after it; thawed after {thawed - cut:.1f}s; b wrote again "
                  f"{caught_up if caught_up is None else round(caught_up, 2)}s after the thaw; "
                  f"{len(written)} inserts through b after it ({len(moved_after)} of moving keys) "
                  f"checked on the primaries; b's attempts: {outcomes}", file=sys.stderr)
            b_lines = [ln for ln in self.b.log()[b_log_at:].splitlines()
                       if "admin_request" not in ln]
            print(f"[partition {mode}] proxy b's log since the cut ({len(b_lines)} lines but "
                  f"admin requests, last 12):\n  " + "\n  ".join(b_lines[-12:]), file=sys.stderr)
            extra += self.topology_problems(new.names)
            self.assert_all(new, ledger, wl, stuck, f"after b was cut off ({mode})", extra)

if __name__ == "__main__":
    unittest.main(verbosity=2)
