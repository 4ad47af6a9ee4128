"""Replica reads end to end: round-robin, the lag gate with hysteresis, fallback to the primary,
read-your-writes, and failures (kill -9 of a replica, of the primary). See DESIGN.md "Replicas,
lag, read-your-writes".

Real PostgreSQL 15 clusters of 1 shard x 2 replicas (harness.Cluster), so every statement goes to
shard s0. The server that answered a read is identified by `SELECT inet_server_port()`. Lag is
made on demand with `SELECT pg_wal_replay_pause()` on a replica and WAL written directly on the
primary (table `filler`, never seen by the proxy).

Classes:
  ReplicaRoutingTest -- one cluster shared by the non-destructive tests (replay pause/resume only;
                        every test resumes replay in its cleanup); each test has its own proxy, so
                        "logged once" counts and round-robin state start fresh.
  KillReplicaTest    -- its own cluster: kill -9 of a replica under concurrent reads (and with
                        only idle pooled connections to it), restart; both restart it.
  PrimaryDownTest    -- its own cluster: kill -9 of the primary; writes fail fast, reads go on.

Run with Debian's python (psycopg2):
    SHARDGATE_BIN=/path/to/shardgate /usr/bin/python3 -m unittest tests/integration/test_replicas.py -v
"""

import faulthandler
import json
import os
import sys
import threading
import time
import unittest
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SHARDGATE_BIN, ClusterTestCase, Proxy  # noqa: E402

try:
    import psycopg2
except ImportError:  # pragma: no cover - reported as skips
    psycopg2 = None

TEST_TIMEOUT = 90  # seconds; a hung test dumps every thread's stack and ends the run

INTERVAL_MS = 200      # health_interval_ms in every proxy here
MAX_LAG_BYTES = 65536  # small, so a few hundred KB of WAL is "lagging"
READMIT_PROBES = 3
# Scheduling slack on a loaded 2-core machine on top of "within N health intervals".
SLACK_S = 0.3

FILLER_DDL = "CREATE TABLE IF NOT EXISTS filler(id bigint, pad text)"


def replicas_toml(**overrides):
    keys = dict(health_interval_ms=INTERVAL_MS, max_lag_bytes=MAX_LAG_BYTES, max_lag_ms=5000,
                read_your_writes=True, readmit_probes=READMIT_PROBES, probe_timeout_ms=1000,
                failures_to_ban=3, ban_base_ms=1000, ban_max_ms=30000)
    keys.update(overrides)
    return "[replicas]\n" + "".join(
        f"{k} = {'true' if v is True else 'false' if v is False else v}\n" for k, v in keys.items())


def connect(dsn, **kw):
    c = psycopg2.connect(dsn, connect_timeout=10, **kw)
    c.autocommit = True
    return c


def direct(port, user="postgres"):
    """A direct autocommit connection to one server (postgres is trusted on 127.0.0.1)."""
    return connect(f"postgresql://{user}@127.0.0.1:{port}/app")


def read_port(cur):
    cur.execute("SELECT inet_server_port()")
    return cur.fetchone()[0]


def log_events(proxy, event=None):
    out = []
    for line in proxy.log().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and (event is None or rec.get("event") == event):
            out.append(rec)
    return out


def short_log(proxy, keep=3):
    """proxy.log() with runs of the same event shortened to `keep` lines and a count."""
    out, run_event, run = [], None, 0
    for line in proxy.log().splitlines():
        try:
            event = json.loads(line).get("event")
        except (ValueError, AttributeError):
            event = None
        run = run + 1 if event is not None and event == run_event else 1
        run_event = event
        if run <= keep:
            out.append(line)
        elif run == keep + 1:
            out.append(f"... more {event} lines")
    return "\n".join(out)


def lsn_int(lsn):
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def generate_wal(cluster, nbytes, follow=(), chunk_rows=16):
    """Writes at least nbytes of WAL on shard 0's primary (table filler, ~1 KB rows, chunks of
    chunk_rows rows committed with synchronous_commit on so they are flushed and streamed at once).
    After each chunk, waits until every replica port in `follow` has replayed it, so those
    replicas never fall more than about one chunk behind. Returns the WAL bytes written."""
    conn = direct(cluster.primary_port(0))
    try:
        cur = conn.cursor()
        cur.execute("SET synchronous_commit = on")
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        start = lsn_int(cur.fetchone()[0])
        followers = [direct(p) for p in follow]
        try:
            written = 0
            next_id = 0
            while written < nbytes:
                cur.execute("INSERT INTO filler SELECT g, repeat('x', 1000) "
                            "FROM generate_series(%s, %s) g", (next_id, next_id + chunk_rows - 1))
                next_id += chunk_rows
                cur.execute("SELECT pg_current_wal_flush_lsn()::text, pg_current_wal_insert_lsn()::text")
                flushed, inserted = cur.fetchone()
                written = lsn_int(inserted) - start
                deadline = time.monotonic() + 10
                for f in followers:
                    fc = f.cursor()
                    while True:
                        fc.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (flushed,))
                        if fc.fetchone()[0]:
                            break
                        if time.monotonic() > deadline:
                            raise AssertionError(f"replica {f.info.port} did not replay {flushed}")
                        time.sleep(0.002)
            return written
        finally:
            for f in followers:
                f.close()
    finally:
        conn.close()


class _Base(ClusterTestCase):
    SHARDS, REPLICAS = 1, 2

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.cluster
        c.sql(c.primary_port(0), FILLER_DDL, user="app")
        c.wait_replicas_caught_up()
        cls.primary = c.primary_port(0)
        cls.replica_ports = [c.replica_port(0, j) for j in range(c.replicas)]

    def setUp(self):
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
        self.addCleanup(faulthandler.cancel_dump_traceback_later)

    def start_proxy(self, **replica_keys):
        p = Proxy(self.cluster, extra_toml=replicas_toml(**replica_keys))
        self.addCleanup(p.stop)
        return p

    def session(self, proxy):
        c = connect(proxy.dsn())
        self.addCleanup(c.close)
        return c.cursor()

    def wait_serving(self, cur, ports, timeout=10):
        """Polls reads until a window of reads is served by exactly `ports`."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            seen = [read_port(cur) for _ in range(4 * len(ports))]
            if set(seen) == set(ports):
                return
            time.sleep(0.05)
        self.fail(f"reads not served by exactly {sorted(ports)} within {timeout}s; last window {seen}")

    def resume_all(self):
        for port in self.replica_ports:
            if self.cluster.alive(port):
                self.cluster.sql(port, "SELECT pg_wal_replay_resume()")
        self.cluster.wait_replicas_caught_up()

    def pause(self, port):
        self.cluster.sql(port, "SELECT pg_wal_replay_pause()")

    def resume(self, port):
        self.cluster.sql(port, "SELECT pg_wal_replay_resume()")

    def assert_alive(self, proxy):
        self.assertTrue(proxy.alive(), f"proxy died:\n{short_log(proxy)}")


@unittest.skipUnless(psycopg2, "psycopg2 not installed")
@unittest.skipUnless(os.access(SHARDGATE_BIN, os.X_OK), f"{SHARDGATE_BIN} not built")
class ReplicaRoutingTest(_Base):
    """Non-destructive: replay pause/resume on a shared cluster; each test resumes in cleanup."""

    def setUp(self):
        super().setUp()
        self.addCleanup(self.resume_all)

    def test_all_replicas_serve_from_start(self):
        """The first probe round happens before the proxy listens: the very first reads already
        alternate over both replicas (none waits for a re-admission, none goes to the primary)."""
        proxy = self.start_proxy()
        cur = self.session(proxy)
        ports = [read_port(cur) for _ in range(20)]
        self.assertEqual(Counter(ports), Counter({p: 10 for p in self.replica_ports}),
                         f"first 20 reads after start: {ports}\nlog:\n{short_log(proxy)}")

    def test_round_robin(self):
        proxy = self.start_proxy()
        cur = self.session(proxy)
        self.wait_serving(cur, self.replica_ports)
        counts = Counter(read_port(cur) for _ in range(400))
        msg = f"served by {dict(counts)} (primary {self.primary}, replicas {self.replica_ports})"
        for p in self.replica_ports:
            self.assertGreaterEqual(counts[p], 160, msg)
            self.assertLessEqual(counts[p], 240, msg)
        self.assertLessEqual(counts[self.primary], 2, msg)
        self.assertEqual(sum(counts.values()), 400, msg)
        self.assert_alive(proxy)

    def test_lagging_replica_skipped_then_readmitted(self):
        proxy = self.start_proxy()
        cur = self.session(proxy)
        a, b = self.replica_ports
        self.wait_serving(cur, [a, b])

        self.pause(a)
        # B follows chunk by chunk, so only A is ever over the threshold.
        written = generate_wal(self.cluster, 4 * MAX_LAG_BYTES, follow=[b])
        t_end = time.monotonic()
        self.assertGreater(written, MAX_LAG_BYTES)

        # Within 3 health intervals A stops serving; from then on only B serves.
        reads = []
        settle = 3 * INTERVAL_MS / 1000 + SLACK_S
        while time.monotonic() - t_end < settle + 1.0:
            reads.append((time.monotonic() - t_end, read_port(cur)))
        late = [(round(t, 3), p) for t, p in reads if t > settle and p != b]
        self.assertEqual(late, [], f"reads later than {settle:.2f}s after the WAL not served by B ({b})"
                                   f"\nlog:\n{short_log(proxy)}")
        more = Counter(read_port(cur) for _ in range(100))
        self.assertEqual(more, Counter({b: 100}), f"A={a} paused\nlog:\n{short_log(proxy)}")
        ejected = [e for e in log_events(proxy, "replica_ejected") if e.get("node") == f"127.0.0.1:{a}"]
        self.assertTrue(ejected, f"no replica_ejected for A\n{short_log(proxy)}")
        self.assertEqual(ejected[0].get("reason"), "lag", ejected)
        self.assertFalse([e for e in log_events(proxy, "replica_ejected")
                          if e.get("node") == f"127.0.0.1:{b}"], f"B was ejected\n{short_log(proxy)}")

        # Resume: A serves again, but only after `readmit_probes` good probes (hysteresis).
        t_resume = time.monotonic()
        self.resume(a)
        deadline = t_resume + 10
        back = None
        while time.monotonic() < deadline:
            if read_port(cur) == a:
                back = time.monotonic() - t_resume
                break
            time.sleep(0.01)
        self.assertIsNotNone(back, f"A ({a}) not serving 10s after resume\nlog:\n{short_log(proxy)}")
        min_back = (READMIT_PROBES - 1) * INTERVAL_MS / 1000
        self.assertGreaterEqual(back, min_back * 0.95,
                                f"A re-admitted {back:.3f}s after resume: fewer than {READMIT_PROBES} probes")
        admitted = [e for e in log_events(proxy, "replica_admitted") if e.get("node") == f"127.0.0.1:{a}"]
        self.assertGreaterEqual(len(admitted), 2, f"initial + re-admission expected\n{short_log(proxy)}")
        self.wait_serving(cur, [a, b])
        self.assert_alive(proxy)

    def test_all_lagging_falls_back_to_primary(self):
        proxy = self.start_proxy()
        cur = self.session(proxy)
        self.wait_serving(cur, self.replica_ports)
        for p in self.replica_ports:
            self.pause(p)
        self.assertGreater(generate_wal(self.cluster, 4 * MAX_LAG_BYTES, chunk_rows=400), MAX_LAG_BYTES)

        self.wait_serving(cur, [self.primary], timeout=3 * INTERVAL_MS / 1000 + SLACK_S + 2)
        counts = Counter(read_port(cur) for _ in range(100))
        self.assertEqual(counts, Counter({self.primary: 100}), short_log(proxy))

        fallbacks = log_events(proxy, "read_fallback_to_primary")
        self.assertEqual(len(fallbacks), 1, f"expected one fallback line:\n{short_log(proxy)}")
        self.assertEqual((fallbacks[0].get("level"), fallbacks[0].get("reason"), fallbacks[0].get("shard")),
                         ("warn", "lag", "s0"), fallbacks)

        for p in self.replica_ports:
            self.resume(p)
        self.wait_serving(cur, self.replica_ports)
        counts = Counter(read_port(cur) for _ in range(100))
        self.assertEqual(counts[self.primary], 0, counts)
        self.assertEqual(len(log_events(proxy, "read_fallback_to_primary")), 1, short_log(proxy))
        self.assert_alive(proxy)

    def test_terminated_pooled_replica_connection_is_retried(self):
        """A's server ends the proxy's idle pooled connections (pg_terminate_backend: a FATAL
        57P01 then EOF sit in the proxy's sockets). Reads that pick such a connection failed before
        any byte of *their* result reached the client, so they run again on B: no client error."""
        c = self.cluster
        proxy = self.start_proxy()
        a, b = self.replica_ports
        sessions = [self.session(proxy) for _ in range(4)]
        for cur in sessions:
            self.wait_serving(cur, [a, b])
        time.sleep(0.2)
        killed = c.sql(a, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE usename = 'app' AND application_name <> 'shardgate-monitor'")[0][0]
        self.assertGreater(int(killed), 0, "no pooled proxy connection on A to terminate")
        time.sleep(0.2)
        errors, ports = [], Counter()
        for _ in range(10):
            for k, cur in enumerate(sessions):
                try:
                    ports[read_port(cur)] += 1
                except Exception as e:  # noqa: BLE001 - counted
                    errors.append(f"{type(e).__name__} {getattr(e, 'pgcode', None)}: {' '.join(str(e).split())}")
                    if cur.connection.closed:
                        sessions[k] = self.session(proxy)
        self.assertEqual(errors, [], f"{len(errors)} client-visible errors after A's pooled connections "
                                     f"were terminated ({killed}); served {dict(ports)}\nlog:\n{short_log(proxy)}")
        self.wait_serving(sessions[0], [a, b])
        self.assert_alive(proxy)

    def test_terminated_pooled_primary_connection(self):
        """The primary ends the proxy's idle pooled connections. The next write on a session may
        fail (writes are never retried blindly), but only with a clear SQLSTATE (class 08/57P),
        and the client's session survives: the write after it succeeds."""
        c = self.cluster
        proxy = self.start_proxy()
        cur = self.session(proxy)
        cur.execute("INSERT INTO accounts(id, owner, balance) VALUES (424242, 'tp', 0) "
                    "ON CONFLICT (id) DO UPDATE SET balance = 0")
        time.sleep(0.2)
        killed = c.sql(self.primary, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                     "WHERE usename = 'app' AND application_name <> 'shardgate-monitor'")[0][0]
        self.assertGreater(int(killed), 0, "no pooled proxy connection on the primary to terminate")
        time.sleep(0.2)
        update = "UPDATE accounts SET balance = balance + 1 WHERE id = 424242"
        try:
            cur.execute(update)
        except psycopg2.Error as e:
            code = e.pgcode or ""
            self.assertTrue(code.startswith(("08", "57P")),
                            f"write failed without a class 08/57P SQLSTATE ({type(e).__name__} {e.pgcode}: "
                            f"{' '.join(str(e).split())})\nlog:\n{short_log(proxy)}")
        self.assertFalse(cur.connection.closed, f"the proxy closed the client's session\n{short_log(proxy)}")
        cur.execute(update)
        self.assertEqual(cur.rowcount, 1)
        self.assert_alive(proxy)

    def test_read_your_writes(self):
        # Thresholds out of reach: paused replicas stay serving, so only read-your-writes keeps
        # the writer off them.
        proxy = self.start_proxy(max_lag_bytes=1 << 40, max_lag_ms=86400000)
        writer = self.session(proxy)
        other = self.session(proxy)
        self.wait_serving(other, self.replica_ports)
        for p in self.replica_ports:
            self.pause(p)

        base = int(time.time() * 1000) % 1_000_000 * 1000  # fresh keys: no replica has them
        mismatches, writer_ports, other_ports = [], Counter(), Counter()
        for i in range(100):
            key, value = base + i, 7_000_000 + i
            writer.execute("INSERT INTO accounts(id, owner, balance) VALUES (%s, 'ryw', %s) "
                           "ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance", (key, value))
            writer.execute("SELECT balance, inet_server_port() FROM accounts WHERE id = %s", (key,))
            row = writer.fetchone()
            if row is None or row[0] != value:
                mismatches.append((i, key, value, row))
            if row is not None:
                writer_ports[row[1]] += 1
            other_ports[read_port(other)] += 1
        self.assertEqual(mismatches, [], f"writer did not read its own writes ({len(mismatches)}/100); "
                                         f"served by {dict(writer_ports)}\nlog:\n{short_log(proxy)}")
        self.assertEqual(set(other_ports), set(self.replica_ports),
                         f"the session that never wrote must keep reading replicas: {dict(other_ports)}")
        ryw = [e for e in log_events(proxy, "read_fallback_to_primary") if e.get("reason") == "read_your_writes"]
        self.assertEqual(len(ryw), 1, short_log(proxy))

        for p in self.replica_ports:
            self.resume(p)
        deadline = time.monotonic() + 10
        seen = Counter()
        while time.monotonic() < deadline and not set(seen) & set(self.replica_ports):
            seen[read_port(writer)] += 1
            time.sleep(0.01)
        self.assertTrue(set(seen) & set(self.replica_ports),
                        f"writer's reads did not return to replicas after resume: {dict(seen)}\n{short_log(proxy)}")
        self.wait_serving(writer, self.replica_ports)
        self.assert_alive(proxy)


def run_with_timeout(fn, timeout):
    """Runs fn in a daemon thread: (result, exception, seconds); raises AssertionError if it hangs."""
    box = {}

    def target():
        t = time.monotonic()
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            box["error"] = e
        box["seconds"] = time.monotonic() - t

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise AssertionError(f"call hung for more than {timeout}s")
    return box.get("result"), box.get("error"), box["seconds"]


@unittest.skipUnless(psycopg2, "psycopg2 not installed")
@unittest.skipUnless(os.access(SHARDGATE_BIN, os.X_OK), f"{SHARDGATE_BIN} not built")
class KillReplicaTest(_Base):
    """kill -9 of a replica while 4 sessions read: no client sees an error; restart re-admits it."""

    def test_kill9_replica_under_reads(self):
        c = self.cluster
        proxy = self.start_proxy()
        a, b = self.replica_ports
        self.addCleanup(lambda: c.alive(a) or c.restart(a))
        self.wait_serving(self.session(proxy), [a, b])

        conns = [connect(proxy.dsn()) for _ in range(4)]
        for conn in conns:
            self.addCleanup(conn.close)
        errors, ports = [], Counter()
        lock = threading.Lock()
        stop_at = time.monotonic() + 3.0
        killed_at = []

        def reader(conn):
            cur = conn.cursor()
            while time.monotonic() < stop_at:
                try:
                    p = read_port(cur)
                    with lock:
                        ports[p] += 1
                except Exception as e:  # noqa: BLE001 - counted
                    with lock:
                        errors.append(f"{type(e).__name__} {getattr(e, 'pgcode', None)}: {e}".strip())
                    if conn.closed:
                        return

        threads = [threading.Thread(target=reader, args=(conn,), daemon=True) for conn in conns]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed_at.append(time.monotonic())
        c.kill9(a)
        for t in threads:
            t.join(15)
        self.assertFalse(any(t.is_alive() for t in threads), "a reader hung")
        self.assertEqual(errors, [], f"{len(errors)} client-visible errors; served {dict(ports)}"
                                     f"\nlog:\n{short_log(proxy)}")
        self.assertGreater(ports[b], 0, ports)

        c.restart(a)
        cur = self.session(proxy)
        deadline = time.monotonic() + 15
        back = False
        while time.monotonic() < deadline and not back:
            back = read_port(cur) == a
            time.sleep(0.02)
        self.assertTrue(back, f"restarted replica {a} not serving within 15s\nlog:\n{short_log(proxy)}")
        self.wait_serving(cur, [a, b])
        self.assert_alive(proxy)

    def test_kill9_replica_with_idle_pooled_connections(self):
        """The pool holds idle connections to A when it dies (its backends may even have sent
        'terminating connection due to unexpected postmaster exit' before they were killed).
        Reads right after the kill, before any probe noticed, must not fail: a dead pooled
        connection is a failure before any byte reached the client, so the read is retried."""
        c = self.cluster
        proxy = self.start_proxy(health_interval_ms=2000)  # the monitor notices late on purpose
        a, b = self.replica_ports
        self.addCleanup(lambda: c.alive(a) or c.restart(a))
        sessions = [self.session(proxy) for _ in range(4)]
        for cur in sessions:
            self.wait_serving(cur, [a, b])
        time.sleep(0.3)  # every pooled connection idle
        c.kill9(a)
        time.sleep(0.1)
        errors, ports = [], Counter()
        for _ in range(10):
            for k, cur in enumerate(sessions):
                try:
                    ports[read_port(cur)] += 1
                except Exception as e:  # noqa: BLE001 - counted
                    errors.append(f"{type(e).__name__} {getattr(e, 'pgcode', None)}: {' '.join(str(e).split())}")
                    if cur.connection.closed:
                        sessions[k] = self.session(proxy)
        self.assertEqual(errors, [], f"{len(errors)} client-visible errors; served {dict(ports)}"
                                     f"\nlog:\n{short_log(proxy)}")
        self.assertNotIn(a, ports)
        self.assert_alive(proxy)


@unittest.skipUnless(psycopg2, "psycopg2 not installed")
@unittest.skipUnless(os.access(SHARDGATE_BIN, os.X_OK), f"{SHARDGATE_BIN} not built")
class PrimaryDownTest(_Base):
    """kill -9 of the primary: writes fail fast with a connection-class SQLSTATE, reads go on."""

    def test_primary_down(self):
        c = self.cluster
        proxy = self.start_proxy()
        self.addCleanup(lambda: c.alive(self.primary) or c.restart(self.primary))
        writer = self.session(proxy)
        reader = self.session(proxy)
        self.wait_serving(reader, self.replica_ports)
        # Warm the primary's pool, so a pooled connection to the dead server is tried too.
        for i in range(5):
            writer.execute("INSERT INTO accounts(id, owner, balance) VALUES (%s, 'pd', 1) "
                           "ON CONFLICT (id) DO NOTHING", (900_000 + i,))

        c.kill9(self.primary)
        write_results, read_errors, read_ports = [], [], Counter()
        end = time.monotonic() + 4.0
        i = 0
        while time.monotonic() < end:
            i += 1
            if writer.connection.closed:
                writer = self.session(proxy)  # the proxy may end a session whose backend died

            # A write on the long-lived session, and one on a fresh session every few rounds.
            def write(cur=writer, k=i):
                cur.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (900_000 + k % 5,))

            def fresh_write(k=i):
                conn = connect(proxy.dsn())
                try:
                    conn.cursor().execute("INSERT INTO accounts(id, owner) VALUES (%s, 'pd')", (910_000 + k,))
                finally:
                    conn.close()

            for fn in ([write, fresh_write] if i % 3 == 0 else [write]):
                _, err, secs = run_with_timeout(fn, 10)
                write_results.append((fn.__name__, err, secs))
            for _ in range(5):
                try:
                    read_ports[read_port(reader)] += 1
                except Exception as e:  # noqa: BLE001 - counted
                    read_errors.append(f"{type(e).__name__} {getattr(e, 'pgcode', None)}: {str(e).strip()}")
                    if reader.connection.closed:
                        reader = self.session(proxy)
            time.sleep(0.05)

        summary = "\n".join(f"{n}: {type(e).__name__ if e else 'OK'} {getattr(e, 'pgcode', None)} "
                            f"{secs:.3f}s {' '.join(str(e).split())[:160] if e else ''}"
                            for n, e, secs in write_results)
        with self.subTest("writes fail fast with SQLSTATE class 08 or 57P"):
            bad = [(n, e, s) for n, e, s in write_results
                   if e is None or not str(getattr(e, "pgcode", None) or "").startswith(("08", "57P"))
                   or s >= 3.0]
            self.assertEqual(bad, [], f"{len(bad)} of {len(write_results)} writes did not fail fast with "
                                      f"a class 08/57P SQLSTATE:\n{summary}\nlog:\n{short_log(proxy)}")
        with self.subTest("reads go on on the replicas"):
            self.assertEqual(read_errors[:5], [], f"{len(read_errors)} read errors with the primary down; "
                                                  f"served {dict(read_ports)}\nlog:\n{short_log(proxy)}")
            self.assertTrue(set(read_ports) <= set(self.replica_ports), f"reads served by {dict(read_ports)}")
            self.assertGreater(sum(read_ports.values()), 0)
        self.assertTrue(log_events(proxy, "backend_down"), short_log(proxy))

        # The primary comes back: writes work again (the breaker's half-open trial closes it).
        c.restart(self.primary)
        deadline = time.monotonic() + 15
        err = "never tried"
        while time.monotonic() < deadline:
            _, err, _ = run_with_timeout(lambda: writer.execute(
                "UPDATE accounts SET balance = balance + 1 WHERE id = 900000"), 10)
            if err is None:
                break
            if writer.connection.closed:
                writer = self.session(proxy)
            time.sleep(0.2)
        self.assertIsNone(err, f"writes still failing 15s after the primary restarted: {err}\n{short_log(proxy)}")
        self.assert_alive(proxy)


if __name__ == "__main__":
    unittest.main()
