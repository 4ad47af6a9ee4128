"""Per-user limits through ShardGate (issue 19): `[[users]] max_client_connections`,
`max_queries_per_second`, `burst` and `max_delay_ms`.

One shard (no replica) and a proxy with three users: app (max_client_connections = 3), other
(no limit) and slow (20 queries per second, bursts of 5, a wait of at most 200 ms). Proved
here, with real clients:
- app's first three clients log in and work; a fourth is refused at startup, after a good
  password (AuthenticationOk, then the error, as PostgreSQL does for a role's connection
  limit), with FATAL 53300 "too many connections for user" and a hint, and no session;
- meanwhile the three keep working, and user other connects five times (others are not
  limited by app's cap);
- when one of app's clients leaves, a new one gets in (the count follows disconnects, also
  of clients refused or killed);
- a cap that is not a number is a config diagnostic with file:line (shardgate --check);
- slow's first 5 queries run at once (the burst), the next ones at its rate: 40 more queries
  from one client take about 2 s, none refused (simple protocol, and psycopg 3's extended);
- 8 clients of slow at once: queries that would wait over 200 ms get 53400 with a hint (the
  transaction they were in fails, as after an error), the others run; meanwhile 200 queries of
  user other take well under a second: other users are not slowed;
- shardgate_rate_limited_total counts the delayed and the refused.

Run with Debian's python: /usr/bin/python3 -m unittest tests/integration/test_limits.py -v
"""

import subprocess
import sys
import threading
import time
import unittest
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import wire  # noqa: E402

try:
    import psycopg2
except ImportError:  # pragma: no cover
    psycopg2 = None
try:
    import psycopg
except ImportError:  # pragma: no cover
    psycopg = None


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2")
class LimitsTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 1, 0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.metrics_port = harness.free_port_block(1)
        cls.proxy = harness.Proxy(cls.cluster, users=(
            ("app", "app-secret", "max_client_connections = 3"),
            ("other", "other-secret"),
            ("slow", "slow-secret", "max_queries_per_second = 20\nburst = 5\nmax_delay_ms = 200")),
            extra_toml=f'[metrics]\nlisten = "127.0.0.1:{cls.metrics_port}"\n')
        cls.addClassCleanup(cls.proxy.stop)

    def connect(self, user="app", password="app-secret"):
        c = psycopg2.connect(host="127.0.0.1", port=self.proxy.port, dbname="app", user=user,
                             password=password, connect_timeout=10)
        c.autocommit = True
        self.addCleanup(c.close)
        return c

    def refused(self):
        """A raw login as app: the frames after the password (an ErrorResponse expected)."""
        r = wire.Raw(self.proxy.port)
        self.addCleanup(r.close)
        r.start("app", "app")
        r.scram("app-secret")
        frames = r.read_until("ZE")
        return frames

    def works(self, conns):
        for c in conns:
            cur = c.cursor()
            cur.execute("SELECT 1")
            self.assertEqual(cur.fetchone(), (1,))

    def test_max_client_connections(self):
        three = [self.connect() for _ in range(3)]
        self.works(three)
        frames = self.refused()
        self.assertEqual(frames[-1][0], "E", frames)
        e = wire.parse_error(frames[-1][1])
        self.assertEqual((e.get("S"), e.get("C")), ("FATAL", "53300"), e)
        self.assertIn('too many connections for user "app"', e.get("M", ""))
        self.assertIn("max_client_connections is 3", e.get("H", ""))
        # As PostgreSQL does for a role's connection limit: AuthenticationOk, then the FATAL;
        # no BackendKeyData or ReadyForQuery, so no session.
        self.assertFalse([t for t, _ in frames if t in "KZ"], frames)
        with self.assertRaises(psycopg2.OperationalError) as cm:
            self.connect()
        self.assertIn("too many connections", str(cm.exception))
        # The others are unaffected: app's three work, user other is not capped.
        self.works(three)
        others = [self.connect("other", "other-secret") for _ in range(5)]
        self.works(others)
        # One of app's leaves: a new one gets in (the refused ones were not counted).
        three.pop().close()
        deadline = time.monotonic() + 5
        while True:
            try:
                self.works([self.connect()])
                break
            except psycopg2.OperationalError:
                self.assertLess(time.monotonic(), deadline, "the count did not go down")
                time.sleep(0.05)
        with self.assertRaises(psycopg2.OperationalError):
            self.connect()

    def limited(self):
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=10).read().decode()
        got = {}
        for line in body.splitlines():
            if line.startswith("shardgate_rate_limited_total{"):
                outcome = line.split('outcome="')[1].split('"')[0]
                got[outcome] = float(line.rsplit(" ", 1)[1])
        return got

    def test_query_rate(self):
        before = self.limited()
        c = self.connect("slow", "slow-secret")
        cur = c.cursor()
        time.sleep(0.3)  # (the bucket refills after the login's queries, if any)
        t0 = time.monotonic()
        for _ in range(5):
            cur.execute("SELECT 1")
        burst_s = time.monotonic() - t0
        self.assertLess(burst_s, 0.2, "the burst should run at once")
        t0 = time.monotonic()
        for _ in range(40):
            cur.execute("SELECT 1")
            self.assertEqual(cur.fetchone(), (1,))
        paced = time.monotonic() - t0
        self.assertGreater(paced, 1.5, f"40 queries at 20 per second took {paced:.2f} s")
        self.assertLess(paced, 4.0, f"40 queries at 20 per second took {paced:.2f} s")
        if psycopg is not None:  # the extended protocol is paced too
            with psycopg.connect(f"host=127.0.0.1 port={self.proxy.port} dbname=app user=slow "
                                 "password=slow-secret", autocommit=True) as pc:
                time.sleep(0.3)
                for _ in range(5):
                    pc.execute("SELECT %s::int", (1,))
                t0 = time.monotonic()
                for i in range(20):
                    self.assertEqual(pc.execute("SELECT %s::int", (i,)).fetchone(), (i,))
                self.assertGreater(time.monotonic() - t0, 0.7)
        after = self.limited()
        self.assertGreater(after["delayed"], before.get("delayed", 0))

    def test_over_the_rate_gets_53400_and_others_are_not_slowed(self):
        before = self.limited()
        results = {"ok": 0, "53400": 0, "other": []}
        lock = threading.Lock()

        def hammer(n=15):
            c = psycopg2.connect(host="127.0.0.1", port=self.proxy.port, dbname="app",
                                 user="slow", password="slow-secret", connect_timeout=10)
            c.autocommit = True
            try:
                cur = c.cursor()
                for _ in range(n):
                    try:
                        cur.execute("SELECT 1")
                        with lock:
                            results["ok"] += 1
                    except psycopg2.Error as e:
                        with lock:
                            if e.pgcode == "53400":
                                results["53400"] += 1
                                results["hint"] = e.diag.message_hint
                            else:
                                results["other"].append((e.pgcode, str(e)))
            finally:
                c.close()
        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        fast = self.connect("other", "other-secret").cursor()
        t0 = time.monotonic()
        for _ in range(200):
            fast.execute("SELECT 1")
        other_s = time.monotonic() - t0
        for t in threads:
            t.join(60)
        self.assertEqual(results["other"], [])
        self.assertGreater(results["53400"], 0, results)
        self.assertGreater(results["ok"], 0, results)
        self.assertIn("max_queries_per_second", results["hint"])
        self.assertLess(other_s, 1.0, f"user other's 200 queries took {other_s:.2f} s")
        after = self.limited()
        self.assertGreaterEqual(after["refused"] - before.get("refused", 0), results["53400"])
        # In a transaction, a refused query fails it, as an error does.
        c = self.connect("slow", "slow-secret")
        c.autocommit = False
        cur = c.cursor()
        cur.execute("SELECT 1")  # the transaction is open
        hogs = [threading.Thread(target=hammer, args=(80,)) for _ in range(8)]
        for t in hogs:
            t.start()
        self.addCleanup(lambda: [t.join(60) for t in hogs])
        time.sleep(0.3)  # the user's bucket is empty, and stays so
        got = None
        for _ in range(100):  # until one is refused
            try:
                cur.execute("SELECT 1")
            except psycopg2.Error as e:
                got = e.pgcode
                break
        self.assertEqual(got, "53400")
        for t in hogs:
            t.join(60)
        time.sleep(0.5)  # the bucket refills
        with self.assertRaises(psycopg2.Error) as e:
            cur.execute("SELECT 1")
        self.assertEqual(e.exception.pgcode, "25P02")
        c.rollback()

    def test_bad_cap_is_a_config_diagnostic(self):
        path = self.cluster.dir / "bad-limits.toml"
        text = harness.proxy_toml(self.cluster, harness.free_port_block(1)).replace(
            'name = "app"', 'name = "app"\nmax_client_connections = "many"', 1)
        path.write_text(text)
        line = text.splitlines().index('max_client_connections = "many"') + 1
        p = subprocess.run([str(harness.SHARDGATE_BIN), "--config", str(path), "--check"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn(f"{path}:{line}:", p.stderr + p.stdout)
        self.assertIn("max_client_connections", p.stderr + p.stdout)


if __name__ == "__main__":
    unittest.main()
