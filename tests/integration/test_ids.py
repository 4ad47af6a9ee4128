"""Global unique IDs: `SELECT shardgate.next_id()`, answered by the proxy itself (issue 19).

2 shards (no replicas); the metadata database is a database of its own on s0's primary. Proved
here, with real clients:
- two proxies on one metadata database lease different instance numbers; 16 connections (8
  per proxy, psycopg2) taking 250 IDs each get 4,000 distinct positive IDs; each connection's
  IDs rise; each ID decodes (41 bits of milliseconds since 2025-01-01, 10 of instance, 12 of
  sequence) to its proxy's instance and a time within the test's run;
- the column is int8 named next_id, or the alias; it works inside a transaction (which goes
  on) and through the extended protocol: psycopg 3 prepared (text and binary results, the
  statement run again past its prepare threshold) and asyncpg;
- misuse gets 0A000 and harms nothing: next_id() in a FROM generate_series, in an INSERT, or
  in a string of several statements; in a failed transaction, 25P02;
- a proxy killed with SIGKILL and started again (same instance number: the same holder) gives
  IDs above every ID it gave before, whatever its clock (its lease's high water, plus the
  fence timeout, is its new floor);
- when every other number is held, a new proxy takes a killed proxy's number over only after its
  lease is 3 x fence_timeout_ms stale, and its IDs start above the dead one's;
- [ids] instance = 7 without a metadata database: the IDs carry 7; with neither, 55000 with a
  hint, and the session goes on.

Run with Debian's python: /usr/bin/python3 -m unittest tests/integration/test_ids.py -v
"""

import asyncio
import sys
import threading
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

try:
    import psycopg2
except ImportError:  # pragma: no cover
    psycopg2 = None
try:
    import psycopg
except ImportError:  # pragma: no cover
    psycopg = None
try:
    import asyncpg
except ImportError:  # pragma: no cover
    asyncpg = None

EPOCH_MS = 1735689600000


def decode(i):
    return {"ms": (i >> 22) + EPOCH_MS, "instance": (i >> 12) & 1023, "seq": i & 4095}


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2")
class IdsTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.cluster
        c.sql(c.primary_port(0), "CREATE DATABASE meta OWNER app", db="postgres")
        cls.meta = f"postgresql://app:app-secret@127.0.0.1:{c.primary_port(0)}/meta"
        cls.proxy = cls.start_proxy()
        cls.proxy2 = cls.start_proxy()

    @classmethod
    def start_proxy(cls, port=None, extra=None):
        if extra is None:
            extra = f'[metadata]\nurl = "{cls.meta}"\n'
        p = harness.Proxy(cls.cluster, extra_toml=extra)
        cls.addClassCleanup(p.stop)
        return p

    def connect(self, proxy):
        c = psycopg2.connect(proxy.dsn(), connect_timeout=10)
        c.autocommit = True
        self.addCleanup(c.close)
        return c

    def next_id(self, conn, sql="SELECT shardgate.next_id()"):
        with conn.cursor() as cur:
            deadline = time.time() + 15
            while True:  # the lease is taken a moment after the proxy starts
                try:
                    cur.execute(sql)
                    return cur.fetchone()[0]
                except psycopg2.Error as e:
                    if e.pgcode != "55000" or time.time() > deadline:
                        raise

    def test_unique_across_two_proxies_and_many_connections(self):
        start_ms = int(time.time() * 1000)
        first = {p: decode(self.next_id(self.connect(p)))["instance"]
                 for p in (self.proxy, self.proxy2)}
        self.assertNotEqual(first[self.proxy], first[self.proxy2])
        got, errors = [], []

        def worker(proxy):
            try:
                c = psycopg2.connect(proxy.dsn(), connect_timeout=10)
                c.autocommit = True
                mine = [self.next_id(c) for _ in range(250)]
                c.close()
                got.append((proxy, mine))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(repr(e))
        threads = [threading.Thread(target=worker, args=(p,))
                   for p in (self.proxy, self.proxy2) for _ in range(8)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
        self.assertEqual(errors, [])
        self.assertEqual(len(got), 16)
        every = [i for _, mine in got for i in mine]
        self.assertEqual(len(set(every)), 4000)
        end_ms = int(time.time() * 1000)
        for proxy, mine in got:
            self.assertEqual(mine, sorted(mine))
            for i in mine:
                d = decode(i)
                self.assertGreater(i, 0)
                self.assertEqual(d["instance"], first[proxy])
                self.assertTrue(start_ms - 5 <= d["ms"] <= end_ms + 2000, d)

    def test_column_alias_transaction_and_misuse(self):
        c = self.connect(self.proxy)
        self.next_id(c)
        with c.cursor() as cur:
            cur.execute("SELECT shardgate.next_id()")
            self.assertEqual([(d.name, d.type_code) for d in cur.description], [("next_id", 20)])
            cur.execute("select SHARDGATE.NEXT_ID() AS order_id")
            self.assertEqual(cur.description[0].name, "order_id")
            for sql in ["SELECT shardgate.next_id() FROM generate_series(1, 3)",
                        "INSERT INTO accounts (id, balance) VALUES (shardgate.next_id(), 1)",
                        "SELECT 1; SELECT shardgate.next_id()",
                        "SELECT shardgate.next_id() + 1",
                        "EXPLAIN SELECT shardgate.next_id()"]:
                with self.subTest(sql=sql):
                    with self.assertRaises(psycopg2.Error) as cm:
                        cur.execute(sql)
                    self.assertEqual(cm.exception.pgcode, "0A000", sql)
                    self.assertTrue(cm.exception.diag.message_hint)
            cur.execute("SELECT count(*) FROM accounts")  # the session goes on
        # In a transaction: no shard is touched, and the transaction goes on.
        t = psycopg2.connect(self.proxy.dsn(), connect_timeout=10)
        self.addCleanup(t.close)
        with t.cursor() as cur:
            a = self.next_id(t)
            cur.execute("INSERT INTO accounts (id, balance) VALUES (%s, 5)", (a,))
            b = self.next_id(t)
            self.assertGreater(b, a)
            cur.execute("SELECT balance FROM accounts WHERE id = %s", (a,))
            self.assertEqual(cur.fetchone()[0], 5)
            t.commit()
            with self.assertRaises(psycopg2.Error):
                cur.execute("SELECT 1/0")
            with self.assertRaises(psycopg2.Error) as cm:
                cur.execute("SELECT shardgate.next_id()")
            self.assertEqual(cm.exception.pgcode, "25P02")
            t.rollback()
            self.assertGreater(self.next_id(t), b)
            t.rollback()

    @unittest.skipIf(psycopg is None, "psycopg 3 not installed")
    def test_extended_protocol(self):
        self.next_id(self.connect(self.proxy))  # the lease is there
        seen = []
        with psycopg.connect(self.proxy.dsn(), autocommit=True, connect_timeout=10) as c3:
            for binary in (False, True):
                with c3.cursor(binary=binary) as cur:
                    for _ in range(8):  # past psycopg's prepare threshold, as a prepared statement
                        cur.execute("SELECT shardgate.next_id() AS id", prepare=True)
                        self.assertEqual(cur.description[0].name, "id")
                        seen.append(cur.fetchone()[0])
            with c3.transaction():
                seen.append(c3.execute("SELECT shardgate.next_id()", prepare=True).fetchone()[0])
                c3.execute("SELECT count(*) FROM accounts")
        self.assertEqual(seen, sorted(set(seen)))
        self.assertTrue(all(isinstance(i, int) and i > 0 for i in seen))
        if asyncpg is not None:
            async def run():
                conn = await asyncpg.connect(self.proxy.dsn())
                try:
                    stmt = await conn.prepare("SELECT shardgate.next_id()")
                    return [await conn.fetchval("SELECT shardgate.next_id()")] + \
                        [await stmt.fetchval() for _ in range(5)]
                finally:
                    await conn.close()
            more = asyncio.run(run())
            self.assertEqual(more, sorted(set(more)))
            self.assertGreater(more[0], seen[-1])

    def test_cut_off_from_the_metadata_database_it_stops(self):
        """A proxy whose lease cannot be renewed for fence_timeout_ms gives no IDs (55000):
        another proxy may take its number over later. Once the metadata database is back, it
        renews and goes on, above what it gave before."""
        p = self.start_proxy(extra=f'[metadata]\nurl = "{self.meta}"\nfence_timeout_ms = 1000\n'
                                   'heartbeat_ms = 200\n')
        c = self.connect(p)
        before = self.next_id(c)
        port = self.cluster.primary_port(0)
        allow = lambda on: self.cluster.sql(  # noqa: E731
            port, f"ALTER DATABASE meta ALLOW_CONNECTIONS {'true' if on else 'false'}", db="postgres")
        allow(False)
        self.addCleanup(allow, True)
        self.cluster.sql(port, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = 'meta'", db="postgres")
        refused, deadline = None, time.time() + 10
        with c.cursor() as cur:
            while refused is None and time.time() < deadline:
                try:
                    cur.execute("SELECT shardgate.next_id()")
                    time.sleep(0.1)
                except psycopg2.Error as e:
                    refused = e
        self.assertIsNotNone(refused, "IDs went on without the lease")
        self.assertEqual(refused.pgcode, "55000")
        self.assertIn("lease", refused.diag.message_primary)
        allow(True)
        self.assertGreater(self.next_id(c), before)

    def test_restart_never_repeats(self):
        p = self.start_proxy()
        c = psycopg2.connect(p.dsn(), connect_timeout=10)
        c.autocommit = True
        before = [self.next_id(c) for _ in range(50)]
        c.close()
        time.sleep(1.5)  # a heartbeat records the high water
        config = p.config
        p.proc.kill()
        p.proc.wait()
        q = harness.Proxy.__new__(harness.Proxy)  # the same config, port and holder id again
        q.__dict__.update(p.__dict__)
        import subprocess
        with open(p.log_path, "ab") as log:
            q.proc = subprocess.Popen([str(harness.SHARDGATE_BIN), "--config", str(config)],
                                      stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT)
        self.addCleanup(q.stop)
        self.assertTrue(harness.wait_port(q.port, 15, q.alive), q.log())
        c = psycopg2.connect(q.dsn(), connect_timeout=10)
        c.autocommit = True
        self.addCleanup(c.close)
        after = self.next_id(c)
        self.assertEqual(decode(after)["instance"], decode(before[-1])["instance"])
        self.assertGreater(after, max(before))
        # The floor: past the old high water by the fence timeout (10 s by default).
        self.assertGreaterEqual(decode(after)["ms"] - decode(max(before))["ms"], 10_000)

    def test_a_dead_proxys_number_is_taken_over_without_repeats(self):
        """When every other number is held, a new proxy waits until a dead proxy's lease is
        3 x fence_timeout_ms stale, takes its number over, and starts its IDs past the dead
        one's high water plus the fence timeout: no ID repeats."""
        quick = (f'[metadata]\nurl = "{self.meta}"\nfence_timeout_ms = 1000\n'
                 'heartbeat_ms = 200\n')
        a = self.start_proxy(extra=quick)
        c = psycopg2.connect(a.dsn(), connect_timeout=10)
        c.autocommit = True
        old = [self.next_id(c) for _ in range(100)]
        c.close()
        number = decode(old[-1])["instance"]
        time.sleep(0.5)  # a renewal records the high water
        port = self.cluster.primary_port(0)
        self.cluster.sql(port, "INSERT INTO shardgate.id_instances (instance, holder, renewed_at) "
                               "SELECT g, 'placeholder-' || g, now() + interval '1 hour' FROM "
                               f"generate_series(0, 1023) g WHERE g <> {number} ON CONFLICT "
                               "DO NOTHING", db="meta")  # (the other proxies keep theirs)
        self.addCleanup(self.cluster.sql, port, "DELETE FROM shardgate.id_instances WHERE holder "
                                                "LIKE 'placeholder-%'", db="meta")
        a.proc.kill()
        a.proc.wait()
        died = time.time()
        b = self.start_proxy(extra=quick)
        first = self.next_id(self.connect(b))  # 55000 until the lease is stale, then one
        self.assertGreaterEqual(time.time() - died, 2.5, "taken over before 3 x fence_timeout")
        self.assertEqual(decode(first)["instance"], number)
        self.assertGreater(first, max(old))
        self.assertGreaterEqual(decode(first)["ms"] - decode(max(old))["ms"], 1000)

    def test_configured_instance_and_none(self):
        p = self.start_proxy(extra="[ids]\ninstance = 7\n")
        c = self.connect(p)
        ids = [self.next_id(c) for _ in range(5)]
        self.assertEqual({decode(i)["instance"] for i in ids}, {7})
        self.assertEqual(ids, sorted(set(ids)))
        none = self.start_proxy(extra="")
        c = self.connect(none)
        with c.cursor() as cur:
            with self.assertRaises(psycopg2.Error) as cm:
                cur.execute("SELECT shardgate.next_id()")
            self.assertEqual(cm.exception.pgcode, "55000")
            self.assertIn("[ids] instance", cm.exception.diag.message_hint)
            cur.execute("SELECT 1")
            self.assertEqual(cur.fetchone()[0], 1)


if __name__ == "__main__":
    unittest.main()
