"""Backend login methods (md5, trust) and session pooling mode, through the proxy with psycopg2.

Backend auth: the proxy logs in to whatever the backend asks for. Session mode: a client keeps
its backends, so session state (temporary tables, SQL-level PREPARE) survives between
transactions, which transaction pooling does not promise."""
import unittest

import harness

try:
    import psycopg2
except ImportError:  # pragma: no cover - Debian's python3 has it
    psycopg2 = None


def connect(proxy):
    c = psycopg2.connect(proxy.dsn())
    c.autocommit = True
    return c


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2")
class Md5BackendTest(harness.ClusterTestCase):
    SHARDS, REPLICAS, AUTH = 1, 0, "md5"

    def test_proxy_logs_in_with_md5(self):
        stored = self.cluster.sql(self.cluster.primary_port(0),
                                  "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'app'")
        self.assertEqual(stored, [["md5"]], "the backend really stores an md5 password")
        proxy = harness.Proxy(self.cluster)
        self.addCleanup(proxy.stop)
        with connect(proxy) as c, c.cursor() as cur:
            cur.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'md5') RETURNING id", (7,))
            self.assertEqual(cur.fetchone(), (7,))
            cur.execute("SELECT owner FROM accounts WHERE id = 7")
            self.assertEqual(cur.fetchone(), ("md5",))


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2")
class TrustBackendTest(harness.ClusterTestCase):
    SHARDS, REPLICAS, AUTH = 1, 0, "trust"

    def test_proxy_logs_in_with_trust_and_still_checks_clients(self):
        proxy = harness.Proxy(self.cluster)
        self.addCleanup(proxy.stop)
        with connect(proxy) as c, c.cursor() as cur:
            cur.execute("SELECT current_user")
            self.assertEqual(cur.fetchone(), ("app",))
        # A trusting backend does not make the proxy trusting.
        with self.assertRaises(psycopg2.OperationalError) as cm:
            psycopg2.connect(proxy.dsn(password="wrong"))
        self.assertIn("password authentication failed", str(cm.exception))


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2")
class SessionModeTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 1

    def test_session_state_survives_between_transactions(self):
        proxy = harness.Proxy(self.cluster, pool_mode="session", proxy_options={"workers": 1,
                                                                                "pool_size": 2})
        self.addCleanup(proxy.stop)
        key = 1001
        shard = int(proxy.locate("accounts", str(key))[1:])
        with connect(proxy) as a, a.cursor() as cur:
            cur.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'sess')", (key,))
            # Session mode keeps the backend: a temp table and a SQL PREPARE survive.
            cur.execute("CREATE TEMP TABLE scratch (v int)")
            cur.execute("INSERT INTO scratch VALUES (1)")
            cur.execute("PREPARE q AS SELECT count(*) FROM scratch")
            cur.execute("EXECUTE q")
            self.assertEqual(cur.fetchone(), (1,))
            # Reads go to the primary in session mode (read-your-writes without waiting).
            cur.execute("SELECT owner, inet_server_port() FROM accounts WHERE id = %s", (key,))
            owner, port = cur.fetchone()
            self.assertEqual(owner, "sess")
            self.assertEqual(port, self.cluster.primary_port(shard))
            # A second client gets a different backend: it cannot see the first one's temp table.
            with connect(proxy) as b, b.cursor() as cur2:
                with self.assertRaises(psycopg2.errors.UndefinedTable):
                    cur2.execute("SELECT * FROM scratch")
            cur.execute("EXECUTE q")
            self.assertEqual(cur.fetchone(), (1,))


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2")
class WorkerBalanceTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 1, 0

    def test_clients_are_spread_over_workers(self):
        # Each worker has its share of the pool: one backend connection here. Two clients that
        # each hold a transaction must land on different workers; the kernel's SO_REUSEPORT
        # hash alone puts them on the same one about half the time, and the second would then
        # wait for the pool (53300 after pool_timeout_ms).
        proxy = harness.Proxy(self.cluster, proxy_options={
            "workers": 2, "pool_size": 2, "pool_timeout_ms": 1000})
        self.addCleanup(proxy.stop)
        for attempt in range(8):
            with self.subTest(attempt=attempt):
                a = psycopg2.connect(proxy.dsn(), connect_timeout=10)
                b = psycopg2.connect(proxy.dsn(), connect_timeout=10)
                try:
                    ca, cb = a.cursor(), b.cursor()
                    ca.execute("SELECT count(*) FROM accounts WHERE id = 1")  # opens a transaction
                    cb.execute("SELECT count(*) FROM accounts WHERE id = 2")
                    self.assertEqual(cb.fetchone(), (0,))
                    a.rollback()
                    b.rollback()
                finally:
                    a.close()
                    b.close()


if __name__ == "__main__":
    unittest.main()
