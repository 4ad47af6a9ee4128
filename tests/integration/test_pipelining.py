"""Pipelined reads: plain autocommit reads from many clients share one backend connection.

The proxy sends such a read (a SELECT that calls no function) behind other clients' reads on
the node's shared connection and relays the answers in order. What a user must never see:
another client's answer, another client's error or settings, a hang behind someone's slow
query, or a lost read when the shared connection dies. Each test checks one of these with
real clients (psycopg2 for the simple protocol, psycopg 3 with prepare_threshold=0 for
prepared statements) while the proxy's counter shows that sharing really happened.

Run with Debian's python: /usr/bin/python3 -m unittest tests/integration/test_pipelining.py -v
"""
import contextlib
import sys
import threading
import time
import unittest
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

try:
    import psycopg
    import psycopg2
    import psycopg2.errors
except ImportError:  # pragma: no cover - Debian's python3 has them
    psycopg = psycopg2 = None

ROWS = 300  # accounts 1..ROWS: owner "o<id>", balance id * 7


def pipelined(metrics_url):
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("shardgate_pipelined_reads_total "):
                return float(line.split()[1])
    raise AssertionError("shardgate_pipelined_reads_total is not exported")


def run_threads(targets, timeout=120):
    """Runs each callable in its own thread; re-raises the first failure; fails on a hang."""
    errors = []

    def wrap(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    if hung:
        raise AssertionError(f"{hung} client threads still running after {timeout}s (a hang)")
    if errors:
        raise errors[0]


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2 and python3-psycopg")
class PipeliningTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.mport = harness.free_port_block(1)
        # One worker, so that every client's reads meet on the same shared connections.
        cls.proxy = harness.Proxy(cls.cluster, proxy_options={"workers": 1, "pool_size": 8},
                                  extra_toml=f'[metrics]\nlisten = "127.0.0.1:{cls.mport}"\n')
        cls.addClassCleanup(cls.proxy.stop)
        cls.url = f"http://127.0.0.1:{cls.mport}"
        with contextlib.closing(cls.connect()) as c, c.cursor() as cur:
            for k in range(1, ROWS + 1):
                cur.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s) "
                            "ON CONFLICT (id) DO NOTHING", (k, f"o{k}", k * 7))

    @classmethod
    def connect(cls):
        c = psycopg2.connect(cls.proxy.dsn(), connect_timeout=10)
        c.autocommit = True
        return c

    def test_each_client_gets_its_own_answers_errors_and_settings(self):
        before = pipelined(self.url)
        wrong = []

        def plain_reader(seed):
            def run():
                with contextlib.closing(self.connect()) as c, c.cursor() as cur:
                    for i in range(400):
                        k = (seed * 37 + i * 11) % ROWS + 1
                        cur.execute("SELECT id, owner, balance FROM accounts WHERE id = %s", (k,))
                        got = cur.fetchall()
                        if got != [(k, f"o{k}", k * 7)]:
                            wrong.append(("plain", k, got))
            return run

        def prepared_reader(seed):  # named prepared statements: Bind/Describe/Execute/Sync
            def run():
                with psycopg.connect(self.proxy.dsn(), autocommit=True, prepare_threshold=0,
                                     connect_timeout=10) as c:
                    for i in range(400):
                        k = (seed * 53 + i * 13) % ROWS + 1
                        got = c.execute("SELECT id, owner, balance FROM accounts WHERE id = %s",
                                        (k,), binary=bool(i % 2)).fetchall()
                        if got != [(k, f"o{k}", k * 7)]:
                            wrong.append(("prepared", k, got))
            return run

        def failing_reader(seed):
            # Division by zero: an error inside a read that shares the connection. Only this
            # client hears it, and its session goes on.
            def run():
                with contextlib.closing(self.connect()) as c, c.cursor() as cur:
                    for i in range(150):
                        k = (seed + i * 7) % ROWS + 1
                        with self.assertRaises(psycopg2.errors.DivisionByZero):
                            cur.execute("SELECT balance / (balance - balance) FROM accounts "
                                        "WHERE id = %s", (k,))
                        cur.execute("SELECT owner FROM accounts WHERE id = %s", (k,))
                        if cur.fetchall() != [(f"o{k}",)]:
                            wrong.append(("after error", k))
            return run

        def date_reader(seed, datestyle, want):
            # A session setting changes what a function-free read returns (the date format).
            # A session's reads must see its own DateStyle, and nobody else's.
            def run():
                with contextlib.closing(self.connect()) as c, c.cursor() as cur:
                    if datestyle:
                        cur.execute(f"SET datestyle = '{datestyle}'")
                    for i in range(200):
                        k = (seed + i * 3) % ROWS + 1
                        cur.execute("SELECT owner, DATE '2020-01-31'::text FROM accounts "
                                    "WHERE id = %s", (k,))
                        got = cur.fetchall()
                        if got != [(f"o{k}", want)]:
                            wrong.append((datestyle or "default", k, got))
            return run

        run_threads([plain_reader(s) for s in range(4)] + [prepared_reader(s) for s in range(3)] +
                    [failing_reader(s) for s in range(2)] +
                    [date_reader(0, "German", "31.01.2020"), date_reader(1, None, "2020-01-31"),
                     date_reader(2, None, "2020-01-31")])
        self.assertEqual(wrong[:10], [], f"{len(wrong)} answers went to the wrong client")
        shared = pipelined(self.url) - before
        self.assertGreater(shared, 100, "reads were never queued behind each other: the test "
                                        "did not exercise sharing")

    def test_a_slow_read_holds_up_nobody_and_can_be_cancelled(self):
        # An unsharded table (on the default shard s0) and a read with no function call that
        # runs until cancelled: a three-way cross join.
        self.cluster.sql(self.cluster.primary_port(0),
                         "CREATE TABLE IF NOT EXISTS big AS SELECT g AS n FROM "
                         "generate_series(1, 3000) g", user="app")
        slow = self.connect()
        self.addCleanup(slow.close)
        outcome = {}

        def run_slow():
            started = time.monotonic()
            try:
                with slow.cursor() as cur:
                    cur.execute("SELECT x.n FROM big x, big y, big z WHERE x.n + y.n + z.n = -1")
                outcome["result"] = "finished"
            except psycopg2.errors.QueryCanceled:
                outcome["result"] = "cancelled"
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                outcome["result"] = repr(e)
            outcome["seconds"] = time.monotonic() - started

        t = threading.Thread(target=run_slow, daemon=True)
        t.start()
        time.sleep(0.5)
        # Reads for the same node, from another client on the same worker: they must not wait
        # behind the slow one.
        s0_keys = [k for k in range(1, 60) if self.proxy.locate("accounts", str(k)) == "s0"][:10]
        self.assertTrue(s0_keys)
        with contextlib.closing(self.connect()) as c, c.cursor() as cur:
            started = time.monotonic()
            for k in s0_keys * 5:
                cur.execute("SELECT owner FROM accounts WHERE id = %s", (k,))
                self.assertEqual(cur.fetchall(), [(f"o{k}",)])
            took = time.monotonic() - started
        self.assertTrue(t.is_alive(), "the slow read ended early; the test proves nothing")
        self.assertLess(took, 10, "reads waited behind another client's slow read")
        slow.cancel()
        t.join(20)
        self.assertFalse(t.is_alive(), "the cancelled read did not end")
        self.assertEqual(outcome.get("result"), "cancelled")
        with slow.cursor() as cur:  # the session goes on
            cur.execute("SELECT owner FROM accounts WHERE id = 1")
            self.assertEqual(cur.fetchall(), [("o1",)])

    def test_reads_survive_killed_backends(self):
        before = pipelined(self.url)
        stop = threading.Event()
        wrong, failed, done = [], [], []

        def reader(seed):
            def run():
                c = self.connect()
                i = 0
                while not stop.is_set() or i < 200:
                    k = (seed * 29 + i * 17) % ROWS + 1
                    i += 1
                    try:
                        with c.cursor() as cur:
                            cur.execute("SELECT owner FROM accounts WHERE id = %s", (k,))
                            got = cur.fetchall()
                    except psycopg2.OperationalError as e:
                        failed.append(str(e))
                        if c.closed:  # the proxy ended the session (FATAL): a new one
                            c = self.connect()
                        continue
                    if got != [(f"o{k}",)]:
                        wrong.append((k, got))
                c.close()
                done.append(i)
            return run

        def killer():
            try:
                for _ in range(6):
                    time.sleep(0.3)
                    for i in range(self.SHARDS):
                        self.cluster.sql(self.cluster.primary_port(i),
                                         "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         "WHERE usename = 'app' AND pid <> pg_backend_pid()")
            finally:
                stop.set()

        run_threads([reader(s) for s in range(6)] + [killer])
        self.assertEqual(wrong, [], "a read got another read's answer after a backend died")
        self.assertGreater(pipelined(self.url) - before, 0, "no read shared a connection")
        # Reads whose shared connection died are sent again. The few that still fail (their
        # retries met other connections killed at the same moment, as without pipelining) get a
        # clean error, and the session goes on.
        total = sum(done)
        self.assertEqual(len(done), 6)
        self.assertLess(len(failed) * 20, total, f"{len(failed)} of {total} reads failed: "
                                                 f"{failed[:3]}")
        # A backend killed after it began its answer ends the session with a FATAL, as
        # PostgreSQL itself does (libpq then also says the server closed the connection).
        self.assertTrue(all("lost the connection" in f or "closed the connection" in f
                            for f in failed), failed)


if __name__ == "__main__":
    unittest.main()
