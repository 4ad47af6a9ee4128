"""Per-user limits through ShardGate (issue 19): `[[users]] max_client_connections`.

One shard (no replica) and a proxy with two users: app (max_client_connections = 3) and other
(no cap). Proved here, with real clients:
- app's first three clients log in and work; a fourth is refused at startup, after a good
  password (AuthenticationOk, then the error, as PostgreSQL does for a role's connection
  limit), with FATAL 53300 "too many connections for user" and a hint, and no session;
- meanwhile the three keep working, and user other connects five times (others are not
  limited by app's cap);
- when one of app's clients leaves, a new one gets in (the count follows disconnects, also
  of clients refused or killed);
- a cap that is not a number is a config diagnostic with file:line (shardgate --check).

Run with Debian's python: /usr/bin/python3 -m unittest tests/integration/test_limits.py -v
"""

import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import wire  # noqa: E402

try:
    import psycopg2
except ImportError:  # pragma: no cover
    psycopg2 = None


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2")
class LimitsTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 1, 0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = harness.Proxy(cls.cluster, users=(
            ("app", "app-secret", "max_client_connections = 3"),
            ("other", "other-secret")))
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
