"""Transactions across shards with two-phase commit (issue 18), against real PostgreSQL.

Three primaries (max_prepared_transactions > 0, synchronous_commit on for this suite so that a
kill -9 loses nothing a commit acknowledged), a metadata database of its own (meta on s0's
server) where two-phase commit records its decisions, and proxies that look for in-doubt
transactions every 200 ms and resolve those older than 1 s. Clients are psycopg2 (the simple
protocol); every check reads the primaries directly.

Proved here:
- a transfer between keys on two shards commits on both; ROLLBACK leaves both unchanged; an
  error on one shard fails the transaction (25P02 after it) and its end rolls every shard back;
- a transaction that only read on one shard and wrote on another commits (no 2PC needed);
- a PREPARE that fails on one shard (a deferred unique constraint) fails the COMMIT with that
  shard's SQLSTATE and name, and nothing is applied anywhere;
- savepoints, COMMIT AND CHAIN and PREPARE TRANSACTION in a transaction across shards get
  0A000 and the transaction is rolled back everywhere;
- the extended protocol: psycopg 3 with parameters and asyncpg run a transfer across shards,
  with reads from each key's shard in between; a server-side cursor (DECLARE/FETCH) gets 0A000;
  writes across shards with parameters (multi-row INSERT cut per shard, parameters renumbered;
  UPDATE/DELETE without a key), psycopg 3 (also named) and asyncpg (binary);
- batches with statements on several shards before one Sync (a psycopg 3 pipeline, asyncpg's
  executemany, pgjdbc's executeBatch with and without reWriteBatchedInserts, in autocommit and
  in a transaction): one transaction across shards, every row on its owner, or nothing when a
  statement fails;
- pgjdbc (prepareThreshold 5 and 1): ten transfers across shards in one transaction, committed,
  then the same rolled back;
- concurrent transfers between random keys on all shards from 6 clients keep the sum, and no
  prepared transaction is left behind;
- the proxy killed (as kill -9) after PREPARE and before the decision: the restarted proxy's
  recovery rolls both shards back; killed after the decision: recovery commits both; either
  way the two shards agree and pg_prepared_xacts ends empty;
- kill -9 of a shard's primary during concurrent transfers, then its restart: the sum holds on
  the primaries, and recovery leaves no prepared transaction.
"""
import asyncio
import io
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import unittest
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import workload  # noqa: E402

try:
    import psycopg2
    import psycopg2.errors
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

KEYS = 60          # accounts 1..KEYS, balance 1000 each
START = 1000


class TransactionsTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 3, 0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.cluster
        for i in range(cls.SHARDS):
            p = c.primary_port(i)
            c.sql(p, "ALTER SYSTEM SET synchronous_commit = on", db="postgres")
            c.sql(p, "SELECT pg_reload_conf()", db="postgres")
            c.sql(p, "CREATE TABLE IF NOT EXISTS uniq(id bigint, "
                     "CONSTRAINT uniq_id UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)", user="app")
            # The key is not the first column (INSERT without a column list).
            c.sql(p, "CREATE TABLE IF NOT EXISTS posn(a int, id bigint PRIMARY KEY, b text)",
                  user="app")
        c.sql(c.primary_port(0), "CREATE DATABASE meta OWNER app", db="postgres")
        cls.proxy = cls.start_proxy()

    @classmethod
    def start_proxy(cls, env=None, two_phase=True):
        meta = f"postgresql://app:app-secret@127.0.0.1:{cls.cluster.primary_port(0)}/meta"
        metrics_port = harness.free_port_block(1)
        extra = (f'[metadata]\nurl = "{meta}"\n'
                 "[transactions]\nrecover_after_ms = 1000\nrecovery_interval_ms = 200\n"
                 f"two_phase_commit = {'true' if two_phase else 'false'}\n"
                 f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
        old = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            p = harness.Proxy(cls.cluster, tables=(("accounts", "id", "bigint"),
                                                   ("uniq", "id", "bigint"),
                                                   ("posn", "id", "bigint")),
                              extra_toml=extra)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        cls.addClassCleanup(p.stop)
        p.metrics_port = metrics_port
        return p

    def setUp(self):
        if psycopg2 is None:
            self.skipTest("psycopg2 not installed")
        c = self.cluster
        for i in range(self.SHARDS):
            p = c.primary_port(i)
            for (gid,) in c.sql(p, "SELECT gid FROM pg_prepared_xacts"):
                c.sql(p, f"ROLLBACK PREPARED '{gid}'")
            c.sql(p, "TRUNCATE accounts, uniq, posn")
        # Rows go in one by one through the proxy: each lands on its owner.
        conn = self.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            for k in range(1, KEYS + 1):
                cur.execute("INSERT INTO accounts(id, balance) VALUES (%s, %s)", (k, START))
        conn.close()

    # ------------------------------------------------------------------ helpers

    def connect(self, proxy=None):
        return psycopg2.connect((proxy or self.proxy).dsn(), connect_timeout=10)

    def keys_on(self, shard, n=2):
        return [k for k in range(1, KEYS + 1) if self.owner(str(k)) == shard][:n]

    def balance_on_primary(self, key):
        port = self.cluster.primary_port(self.owner(str(key)))
        rows = self.cluster.sql(port, f"SELECT balance FROM accounts WHERE id = {key}")
        return int(rows[0][0]) if rows else None

    def total(self):
        """Sum and row count over every primary, and whether each row is on its owner."""
        s, n = 0, 0
        ring = workload.Ring([f"s{i}" for i in range(self.SHARDS)])  # agrees with --locate
        for i in range(self.SHARDS):
            for (k, b) in self.cluster.sql(self.cluster.primary_port(i),
                                           "SELECT id, balance FROM accounts"):
                self.assertEqual(ring.owner(int(k)), f"s{i}", f"row {k} on s{i}, not its owner")
                s += int(b)
                n += 1
        return s, n

    def prepared(self):
        out = []
        for i in range(self.SHARDS):
            out += [(f"s{i}", g) for (g,) in self.cluster.sql(self.cluster.primary_port(i),
                                                             "SELECT gid FROM pg_prepared_xacts")]
        return out

    def wait_no_prepared(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            left = self.prepared()
            if not left:
                return
            time.sleep(0.2)
        self.fail(f"prepared transactions left after {timeout}s: {left}")

    def two_keys(self):
        a, = self.keys_on(0, 1)
        b, = self.keys_on(1, 1)
        return a, b

    # ------------------------------------------------------------------ tests

    def metric(self, name, proxy=None):
        """The value of one sample (name with labels, as exported) on the proxy's /metrics."""
        port = (proxy or self.proxy).metrics_port
        deadline = time.time() + 10  # a proxy just started may not listen for metrics yet
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def decisions(self):
        return int(self.cluster.sql(self.cluster.primary_port(0),
                                    "SELECT count(*) FROM shardgate.tx_decisions", db="meta")[0][0])

    def test_transfer_commits_on_both_shards(self):
        a, b = self.two_keys()
        before = self.decisions()
        committed = self.metric('shardgate_twophase_commits_total{outcome="committed"}')
        conn = self.connect()
        with conn.cursor() as cur:  # psycopg2 opens the transaction itself (BEGIN)
            cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
            cur.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (b,))
            cur.execute("SELECT balance FROM accounts WHERE id = %s", (a,))
            self.assertEqual(cur.fetchone()[0], START - 10)  # read back inside, on its shard
        conn.commit()
        conn.close()
        self.assertEqual(self.balance_on_primary(a), START - 10)
        self.assertEqual(self.balance_on_primary(b), START + 10)
        self.assertEqual(self.prepared(), [])
        self.assertEqual(self.metric('shardgate_twophase_commits_total{outcome="committed"}'),
                         committed + 1)
        # The decision is forgotten once both shards committed.
        deadline = time.time() + 5
        while self.decisions() != before:
            self.assertLess(time.time(), deadline, "the decision was not forgotten")
            time.sleep(0.1)

    def test_rollback_and_failure_leave_both_unchanged(self):
        a, b = self.two_keys()
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
            cur.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (b,))
        conn.rollback()
        self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)), (START, START))
        # An error on the second shard: the transaction is failed, COMMIT rolls back both.
        with conn.cursor() as cur:
            cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
            with self.assertRaises(psycopg2.Error) as e:
                cur.execute("UPDATE accounts SET balance = balance / 0 WHERE id = %s", (b,))
            self.assertEqual(e.exception.pgcode, "22012")
        with conn.cursor() as cur:
            with self.assertRaises(psycopg2.Error) as e:
                cur.execute("SELECT 1")
            self.assertEqual(e.exception.pgcode, "25P02")
        conn.rollback()
        conn.close()
        self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)), (START, START))
        self.assertEqual(self.prepared(), [])

    def test_failed_transaction_commit_answers_rollback(self):
        a, b = self.two_keys()
        conn = self.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
            cur.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (b,))
            with self.assertRaises(psycopg2.Error):
                cur.execute("SELECT 1 / 0 FROM accounts WHERE id = %s", (b,))
            cur.execute("COMMIT")
            self.assertEqual(cur.statusmessage, "ROLLBACK")
            cur.execute("SELECT 1")  # the session goes on
        conn.close()
        self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)), (START, START))

    def test_two_phase_commit_off_commits_each_shard_in_turn(self):
        """[transactions] two_phase_commit = false: a transfer across shards commits on both
        without PREPARE (the metric of two-phase commits does not move)."""
        a, b = self.two_keys()
        plain = self.start_proxy(two_phase=False)
        committed = self.metric('shardgate_twophase_commits_total{outcome="committed"}', plain)
        conn = self.connect(plain)
        with conn.cursor() as cur:
            cur.execute("UPDATE accounts SET balance = balance - 3 WHERE id = %s", (a,))
            cur.execute("UPDATE accounts SET balance = balance + 3 WHERE id = %s", (b,))
        conn.commit()
        conn.close()
        self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)),
                         (START - 3, START + 3))
        self.assertEqual(
            self.metric('shardgate_twophase_commits_total{outcome="committed"}', plain), committed)
        plain.stop()

    def test_read_on_one_shard_write_on_another(self):
        a, b = self.two_keys()
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("SELECT balance FROM accounts WHERE id = %s", (a,))
            self.assertEqual(cur.fetchone()[0], START)
            cur.execute("UPDATE accounts SET balance = balance + 5 WHERE id = %s", (b,))
        conn.commit()
        conn.close()
        self.assertEqual(self.balance_on_primary(b), START + 5)

    def test_prepare_failure_rolls_back_every_shard(self):
        a, b = self.two_keys()
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
            cur.execute("INSERT INTO uniq(id) VALUES (%s)", (b,))
            cur.execute("INSERT INTO uniq(id) VALUES (%s)", (b,))  # checked at PREPARE (deferred)
        with self.assertRaises(psycopg2.Error) as e:
            conn.commit()
        self.assertEqual(e.exception.pgcode, "23505")
        self.assertIn('shard "s1"', e.exception.diag.message_detail or "")
        self.assertIn("rolled back on every shard", e.exception.diag.message_detail or "")
        conn.close()
        self.assertEqual(self.balance_on_primary(a), START)
        self.assertEqual(self.cluster.sql(self.cluster.primary_port(1),
                                          "SELECT count(*) FROM uniq")[0][0], "0")
        self.assertEqual(self.prepared(), [])

    def test_unsupported_inside_a_transaction_across_shards(self):
        a, b = self.two_keys()
        cases = [
            ("SAVEPOINT s", "savepoints"),
            ("COMMIT AND CHAIN", "AND CHAIN"),
            ("PREPARE TRANSACTION 'mine'", "PREPARE TRANSACTION"),
        ]
        for stmt, words in cases:
            with self.subTest(stmt=stmt):
                conn = self.connect()
                with conn.cursor() as cur:
                    cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
                    cur.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (b,))
                    with self.assertRaises(psycopg2.Error) as e:
                        cur.execute(stmt)
                    self.assertEqual(e.exception.pgcode, "0A000")
                    self.assertIn(words, e.exception.pgerror)
                conn.rollback()
                conn.close()
                self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)),
                                 (START, START))
        # A savepoint before the second shard: taking that shard on is refused.
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
            cur.execute("SAVEPOINT s")
            with self.assertRaises(psycopg2.Error) as e:
                cur.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (b,))
            self.assertEqual(e.exception.pgcode, "0A000")
        conn.rollback()
        conn.close()
        self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)), (START, START))
        self.assertEqual(self.prepared(), [])

    @unittest.skipIf(psycopg is None, "psycopg 3 not installed")
    def test_extended_protocol_transaction_across_shards(self):
        """psycopg 3 with parameters (Parse/Bind/Execute): a transfer across shards commits on
        both; reads in it come from each key's shard; a server-side cursor (DECLARE) gets
        0A000 and ROLLBACK ends it all."""
        a, b = self.two_keys()
        on_b = self.keys_on(1, 3)
        on_a = self.keys_on(0, 3)
        conn = psycopg.connect(self.proxy.dsn())
        conn.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
        conn.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (b,))
        for keys in (on_b, on_a, on_b):  # each cursor's rows come from its own shard
            with conn.cursor() as cur:
                cur.execute("SELECT id FROM accounts WHERE id IN (%s, %s, %s) ORDER BY id", keys)
                self.assertEqual([r[0] for r in cur.fetchall()], sorted(keys))
        # A server-side cursor (DECLARE/FETCH) lives on one shard's backend: refused here.
        with self.assertRaises(psycopg.Error) as e:
            with conn.cursor(name="c") as cur:
                cur.execute("SELECT id FROM accounts WHERE id = %s", (b,))
                cur.fetchone()
        self.assertEqual(e.exception.sqlstate, "0A000")
        conn.rollback()
        self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)), (START, START))
        conn.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
        conn.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (b,))
        # An error on the second shard fails it all; psycopg's ROLLBACK ends it everywhere.
        with self.assertRaises(psycopg.Error) as e:
            conn.execute("SELECT balance / 0 FROM accounts WHERE id = %s", (b,))
        self.assertEqual(e.exception.sqlstate, "22012")
        conn.rollback()
        self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)), (START, START))
        conn.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
        conn.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (b,))
        conn.commit()
        conn.close()
        self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)),
                         (START - 10, START + 10))
        self.assertEqual(self.prepared(), [])

    @unittest.skipIf(asyncpg is None, "asyncpg not installed")
    def test_asyncpg_transaction_across_shards(self):
        a, b = self.two_keys()

        async def run():
            conn = await asyncpg.connect(self.proxy.dsn())
            async with conn.transaction():
                await conn.execute("UPDATE accounts SET balance = balance - 7 WHERE id = $1", a)
                await conn.execute("UPDATE accounts SET balance = balance + 7 WHERE id = $1", b)
                got = await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", b)
            await conn.close()
            return got

        self.assertEqual(asyncio.run(run()), START + 7)
        self.assertEqual((self.balance_on_primary(a), self.balance_on_primary(b)),
                         (START - 7, START + 7))

    def jdbc_checks(self):
        """(java, classes dir, jar) with jdbc/JdbcChecks.java compiled; skips without a JDK."""
        java, javac = shutil.which("java"), shutil.which("javac")
        jar = Path("/usr/share/java/postgresql.jar")
        if not (java and javac and jar.is_file()):
            self.skipTest("needs java, javac and libpostgresql-jdbc-java (scripts/setup.sh)")
        src = Path(__file__).resolve().parent / "jdbc" / "JdbcChecks.java"
        classes = harness.BUILD_DIR / "jdbc-classes-tx"
        classes.mkdir(parents=True, exist_ok=True)
        subprocess.run([javac, "-cp", str(jar), "-d", str(classes), str(src)], check=True,
                       capture_output=True, timeout=120)
        return java, classes, jar

    def test_jdbc_transaction_across_shards(self):
        """pgjdbc (extended protocol only), with prepareThreshold 5 (default) and 1: ten
        transfers between keys on two shards in one transaction, read back inside it, commit;
        the same rolled back."""
        java, classes, jar = self.jdbc_checks()
        a, b = self.two_keys()
        for n, threshold in enumerate((5, 1), start=1):
            with self.subTest(prepareThreshold=threshold):
                url = (f"jdbc:postgresql://127.0.0.1:{self.proxy.port}/app?user=app"
                       f"&password=app-secret&socketTimeout=20&prepareThreshold={threshold}")
                p = subprocess.run([java, "-cp", f"{classes}:{jar}", "JdbcChecks",
                                    f"t|{url}|transfer|{a},{b}"],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                r = json.loads(p.stdout.splitlines()[-1])
                self.assertIsNone(r["error"], r)
                after = [START - 10 * n, START + 10 * n]
                self.assertEqual(r["steps"], [
                    ["transfer_commit", [1] * 20], ["balances_commit", after], ["commit", "ok"],
                    ["transfer_rollback", [1] * 20],
                    ["balances_rollback", [after[0] - 10, after[1] + 10]], ["rollback", "ok"]])
                self.assertEqual([self.balance_on_primary(a), self.balance_on_primary(b)], after)
        self.assertEqual(self.prepared(), [])

    def test_jdbc_batches_across_shards(self):
        """pgjdbc executeBatch of 5 INSERTs whose keys live on all three shards, plain and with
        reWriteBatchedInserts=true (a 4-row and a 1-row INSERT, each cut by shard), in
        autocommit and in a transaction that reads them back (IN list across shards) and
        commits: every row on its owner, with the driver's own counts."""
        java, classes, jar = self.jdbc_checks()
        base = 20_000
        for rewrite in ("false", "true"):
            for scenario in ("batch_autocommit", "batch_tx"):
                with self.subTest(reWriteBatchedInserts=rewrite, scenario=scenario):
                    keys, seen = [], set()  # every shard's first key, then any
                    while len(keys) < 5:
                        o = self.owner(str(base))
                        if o not in seen or len(seen) == self.SHARDS:
                            seen.add(o)
                            keys.append(base)
                        base += 1
                    self.assertEqual(len({self.owner(str(k)) for k in keys}), self.SHARDS)
                    url = (f"jdbc:postgresql://127.0.0.1:{self.proxy.port}/app?user=app"
                           f"&password=app-secret&socketTimeout=20"
                           f"&reWriteBatchedInserts={rewrite}")
                    p = subprocess.run([java, "-cp", f"{classes}:{jar}", "JdbcChecks",
                                        f"b|{url}|{scenario}|{','.join(map(str, keys))}"],
                                       capture_output=True, text=True, timeout=60)
                    self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                    r = json.loads(p.stdout.splitlines()[-1])
                    self.assertIsNone(r["error"], r)
                    counts = [-2, -2, -2, -2, 1] if rewrite == "true" else [1] * 5
                    want = [["execute_batch", counts]]
                    if scenario == "batch_tx":
                        want += [["count_in_tx", [[5, 25]]], ["commit", "ok"]]
                    self.assertEqual(r["steps"], want)
                    for k in keys:
                        self.assertEqual(self.balance_on_primary(k), 5, f"key {k}")
        self.assertEqual(self.total()[1], KEYS + 20)
        self.assertEqual(self.prepared(), [])

    def test_update_and_delete_across_shards(self):
        """UPDATE/DELETE without a shard key (or with keys on several shards) run on every shard
        concerned, atomically: one summed count, RETURNING rows of all, an error on one shard
        leaves nothing anywhere."""
        conn = self.connect()
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("UPDATE accounts SET balance = balance + 1")
        self.assertEqual(cur.statusmessage, f"UPDATE {KEYS}")
        self.assertEqual(self.total(), ((START + 1) * KEYS, KEYS))
        a, b = self.two_keys()
        cur.execute("UPDATE accounts SET balance = balance - 1 WHERE balance > 0 RETURNING id")
        self.assertEqual(sorted(r[0] for r in cur.fetchall()), list(range(1, KEYS + 1)))
        self.assertEqual(cur.statusmessage, f"UPDATE {KEYS}")
        # A division by zero on one shard only: nothing applied on any.
        with self.assertRaises(psycopg2.Error) as e:
            cur.execute(f"UPDATE accounts SET balance = balance / (id - {b})")
        self.assertEqual(e.exception.pgcode, "22012")
        self.assertIn("rolled back on every shard", e.exception.diag.message_detail or "")
        self.assertEqual(self.total(), (START * KEYS, KEYS))
        # In a transaction block: it joins the transaction, and ROLLBACK takes it back.
        conn.autocommit = False
        cur.execute("DELETE FROM accounts WHERE balance = %s", (START,))
        self.assertEqual(cur.statusmessage, f"DELETE {KEYS}")
        cur.execute("SELECT count(*) FROM accounts WHERE id = %s", (a,))
        self.assertEqual(cur.fetchone()[0], 0)
        conn.rollback()
        self.assertEqual(self.total(), (START * KEYS, KEYS))
        # Keys on two shards (an IN list): those two shards.
        cur.execute("DELETE FROM accounts WHERE id IN (%s, %s) RETURNING id", (a, b))
        self.assertEqual(sorted(r[0] for r in cur.fetchall()), sorted([a, b]))
        conn.commit()
        conn.close()
        self.assertEqual(self.total(), (START * (KEYS - 2), KEYS - 2))
        self.assertEqual(self.prepared(), [])

    def test_multi_row_insert_split_by_shard(self):
        """A multi-row INSERT whose rows live on several shards is cut into one INSERT per
        shard (each with its own rows, the text around them kept), atomically: every row on
        its owner, RETURNING in the order of VALUES, a duplicate on one shard leaves nothing."""
        conn = self.connect()
        conn.autocommit = True
        cur = conn.cursor()
        keys = list(range(1001, 1013))
        owners = {self.owner(str(k)) for k in keys}
        self.assertGreater(len(owners), 1)
        # Values that look like syntax: parentheses, commas, quotes and comments in strings.
        owners_text = ["a(b", "c)d", "e, (f)", "it''s", "-- no", "/* no */", "$$x$$", "\\",
                       "g", "h", "i", "j"]
        rows = ", ".join(f"({k}, '{o}', {k} /* ) */)" for k, o in zip(keys, owners_text))
        cur.execute(f"INSERT INTO accounts (id, owner, balance) VALUES {rows} RETURNING id, owner")
        self.assertEqual(cur.statusmessage, f"INSERT 0 {len(keys)}")
        want = [(k, o.replace("''", "'")) for k, o in zip(keys, owners_text)]
        self.assertEqual(cur.fetchall(), want)  # the order of VALUES
        for k, o in want:
            port = self.cluster.primary_port(self.owner(str(k)))
            got = self.cluster.sql(port, f"SELECT owner, balance FROM accounts WHERE id = {k}")
            self.assertEqual([tuple(r) for r in got], [(o, str(k))])
        self.assertEqual(self.total()[1], KEYS + len(keys))
        # A duplicate key on one shard: the whole INSERT fails, nothing anywhere.
        dup = keys[0]
        more = [2001, 2002, 2003, 2004, 2005, dup]
        with self.assertRaises(psycopg2.Error) as e:
            cur.execute("INSERT INTO accounts (id, balance) VALUES " +
                        ", ".join(f"({k}, 1)" for k in more))
        self.assertEqual(e.exception.pgcode, "23505")
        self.assertEqual(self.total()[1], KEYS + len(keys))
        # ON CONFLICT DO NOTHING: the new rows go in, the duplicate is skipped.
        cur.execute("INSERT INTO accounts (id, balance) VALUES " +
                    ", ".join(f"({k}, 1)" for k in more) + " ON CONFLICT (id) DO NOTHING")
        self.assertEqual(cur.statusmessage, f"INSERT 0 {len(more) - 1}")
        # ON CONFLICT DO UPDATE with RETURNING (an upsert of rows on several shards): one row
        # back per row of VALUES, in their order; every row updated on its owner.
        upsert = keys[:4] + more[:2]
        cur.execute("INSERT INTO accounts (id, owner) VALUES " +
                    ", ".join(f"({k}, 'up-{k}')" for k in upsert) +
                    " ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner RETURNING id, owner")
        self.assertEqual(cur.fetchall(), [(k, f"up-{k}") for k in upsert])
        self.assertEqual(cur.statusmessage, f"INSERT 0 {len(upsert)}")
        for k in upsert:
            got = self.cluster.sql(self.cluster.primary_port(self.owner(str(k))),
                                   f"SELECT owner FROM accounts WHERE id = {k}")
            self.assertEqual(got, [[f"up-{k}"]])
        # With DO NOTHING (rows may be skipped), RETURNING across shards is refused.
        with self.assertRaises(psycopg2.Error) as e:
            cur.execute("INSERT INTO accounts (id, balance) VALUES " +
                        ", ".join(f"({k}, 1)" for k in more) +
                        " ON CONFLICT (id) DO NOTHING RETURNING id")
        self.assertEqual(e.exception.pgcode, "0A000")
        # In a transaction block, rolled back: none of them stays.
        conn.autocommit = False
        cur.execute("INSERT INTO accounts (id, balance) VALUES (3001, 1), (3002, 1), (3003, 1), "
                    "(3004, 1), (3005, 1)")
        conn.rollback()
        conn.close()
        self.assertEqual(self.total()[1], KEYS + len(keys) + len(more) - 1)
        self.assertEqual(self.prepared(), [])

    @unittest.skipIf(psycopg is None or asyncpg is None, "psycopg 3 or asyncpg not installed")
    def test_writes_across_shards_through_the_extended_protocol(self):
        """The writes of the two tests above with parameters (Parse/Bind/Execute): psycopg 3
        (text parameters; the same statement past its prepare threshold, so a named one) and
        asyncpg (binary parameters). A multi-row INSERT is cut per shard, each part sent only
        its own rows' parameters (renumbered) and those of the text around the rows; the
        client gets RETURNING in the order of VALUES and the summed count. UPDATE/DELETE
        without a key run on every shard concerned. A failure on one shard leaves nothing."""
        conn = psycopg.connect(self.proxy.dsn(), autocommit=True)
        self.addCleanup(conn.close)
        keys = list(range(5001, 5011))
        self.assertGreater(len({self.owner(str(k)) for k in keys}), 1)
        rows = ", ".join(["(%s, %s, %s)"] * len(keys))
        args = [x for k in keys for x in (k, f"o{k}", k)]
        cur = conn.execute(f"INSERT INTO accounts (id, owner, balance) VALUES {rows} "
                           "RETURNING id, owner", args)
        self.assertEqual(cur.statusmessage, f"INSERT 0 {len(keys)}")
        self.assertEqual(cur.fetchall(), [(k, f"o{k}") for k in keys])  # the order of VALUES
        for k in keys:
            port = self.cluster.primary_port(self.owner(str(k)))
            got = self.cluster.sql(port, f"SELECT owner, balance FROM accounts WHERE id = {k}")
            self.assertEqual([tuple(r) for r in got], [(f"o{k}", str(k))], f"key {k}")
        self.assertEqual(self.total()[1], KEYS + len(keys))
        # A parameter of the text after the rows goes to every part: ON CONFLICT ... SET.
        cur = conn.execute(f"INSERT INTO accounts (id, owner, balance) VALUES {rows} "
                           "ON CONFLICT (id) DO UPDATE SET balance = %s", args + [7])
        self.assertEqual(cur.statusmessage, f"INSERT 0 {len(keys)}")
        self.assertEqual({self.balance_on_primary(k) for k in keys}, {7})
        # The same statement again and again: psycopg prepares it (a named statement).
        for i in range(7):
            ks = [6001 + 2 * i, 6002 + 2 * i, 7001 + i]
            conn.execute("INSERT INTO accounts (id, balance) VALUES (%s, %s), (%s, %s), (%s, %s)",
                         [x for k in ks for x in (k, 1)], prepare=True)
        self.assertEqual(self.total()[1], KEYS + len(keys) + 21)
        # A duplicate on one shard: 23505, and none of the rows stays.
        with self.assertRaises(psycopg.Error) as e:
            conn.execute("INSERT INTO accounts (id, balance) VALUES (%s, 1), (%s, 1), (%s, 1)",
                         [8001, 8002, keys[0]])
        self.assertEqual(e.exception.sqlstate, "23505")
        self.assertEqual(self.total()[1], KEYS + len(keys) + 21)
        # UPDATE and DELETE without a key: every shard, one summed count, RETURNING of all.
        cur = conn.execute("UPDATE accounts SET balance = balance + %s WHERE id >= %s", (1, 6001))
        self.assertEqual(cur.statusmessage, "UPDATE 21")
        cur = conn.execute("DELETE FROM accounts WHERE id >= %s AND balance = %s RETURNING id",
                           (6001, 2))
        self.assertEqual(sorted(r[0] for r in cur.fetchall()),
                         sorted([6001 + 2 * i for i in range(7)] + [6002 + 2 * i for i in range(7)]
                                + [7001 + i for i in range(7)]))
        # In a transaction block, rolled back: nothing stays.
        with conn.transaction():
            conn.execute("INSERT INTO accounts (id, balance) VALUES (%s, 1), (%s, 1), (%s, 1)",
                         [9001, 9002, 9003])
            raise psycopg.Rollback()
        self.assertEqual(self.total()[1], KEYS + len(keys))

        async def binary():
            c = await asyncpg.connect(self.proxy.dsn())
            try:
                got = await c.fetch("INSERT INTO accounts (id, owner, balance) VALUES "
                                    "($1, $2, $3), ($4, $2, $5), ($6, $2, $7) RETURNING id, "
                                    "balance", 9101, "bin", 1, 9102, 2, 9103, 3)
                n = await c.execute("UPDATE accounts SET balance = balance * $1 WHERE owner = $2",
                                    10, "bin")
                return [tuple(r) for r in got], n
            finally:
                await c.close()
        got, n = asyncio.run(binary())
        self.assertEqual(got, [(9101, 1), (9102, 2), (9103, 3)])
        self.assertEqual(n, "UPDATE 3")
        self.assertGreater(len({self.owner(str(k)) for k in (9101, 9102, 9103)}), 1)
        for k, want in ((9101, 10), (9102, 20), (9103, 30)):
            self.assertEqual(self.balance_on_primary(k), want)
        self.assertEqual(self.prepared(), [])

    @unittest.skipIf(psycopg is None or asyncpg is None, "psycopg 3 or asyncpg not installed")
    def test_batches_across_shards_before_one_sync(self):
        """Several statements before one Sync whose keys live on several shards (a psycopg 3
        pipeline, asyncpg's executemany): PostgreSQL runs them as one implicit transaction, and
        so does the proxy, across shards: every row on its owner, or, when one statement
        fails, none (its error, the statements after it skipped). Inside a transaction block
        the statements join it, and ROLLBACK takes them back."""
        keys = list(range(10_001, 10_013))
        self.assertGreater(len({self.owner(str(k)) for k in keys}), 1)
        conn = psycopg.connect(self.proxy.dsn(), autocommit=True)
        self.addCleanup(conn.close)
        with conn.pipeline():
            curs = [conn.execute("INSERT INTO accounts (id, balance) VALUES (%s, %s) "
                                 "RETURNING id", (k, k)) for k in keys]
        self.assertEqual([c.fetchall() for c in curs], [[(k,)] for k in keys])
        for k in keys:
            self.assertEqual(self.balance_on_primary(k), k, f"key {k}")
        self.assertEqual(self.total()[1], KEYS + len(keys))
        # The fifth statement fails (a duplicate key): nothing of the batch stays anywhere.
        more = [10_101, 10_102, 10_103, 10_104, keys[5], 10_105, 10_106]
        self.assertGreater(len({self.owner(str(k)) for k in more[:4]}), 1)
        with self.assertRaises(psycopg.Error) as e:
            with conn.pipeline():
                for k in more:
                    conn.execute("INSERT INTO accounts (id, balance) VALUES (%s, 1)", (k,))
        self.assertEqual(e.exception.sqlstate, "23505")
        self.assertEqual(self.total()[1], KEYS + len(keys))
        self.assertIsNone(self.balance_on_primary(10_101))
        # Still usable, and in a transaction block: the batch joins it; ROLLBACK undoes it all.
        conn.autocommit = False
        with conn.pipeline():
            for k in more[:4]:
                conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (k,))
            for k in keys[:6]:
                conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (k,))
        conn.rollback()
        self.assertEqual([self.balance_on_primary(k) for k in keys[:6]], keys[:6])
        with conn.pipeline():
            for k in keys[:6]:
                conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (k,))
        conn.commit()
        self.assertEqual([self.balance_on_primary(k) for k in keys[:6]], [k + 1 for k in keys[:6]])

        async def many():
            c = await asyncpg.connect(self.proxy.dsn())
            try:
                await c.executemany("INSERT INTO accounts (id, balance) VALUES ($1, $2)",
                                    [(k, 3) for k in range(10_201, 10_211)])
                try:
                    await c.executemany("INSERT INTO accounts (id, balance) VALUES ($1, $2)",
                                        [(k, 3) for k in (10_301, 10_302, 10_303, 10_205)])
                except asyncpg.UniqueViolationError:
                    return "unique"
                return "no error"
            finally:
                await c.close()
        self.assertGreater(len({self.owner(str(k)) for k in (10_301, 10_302, 10_303, 10_205)}), 1)
        self.assertEqual(asyncio.run(many()), "unique")
        for k in range(10_201, 10_211):
            self.assertEqual(self.balance_on_primary(k), 3, f"key {k}")
        for k in (10_301, 10_302, 10_303):
            self.assertIsNone(self.balance_on_primary(k), f"key {k}")
        self.assertEqual(self.total()[1], KEYS + len(keys) + 10)
        self.assertEqual(self.prepared(), [])

    def test_insert_without_column_list(self):
        """INSERT INTO t VALUES (...) without a column list: the proxy reads the key column's
        position from a shard's catalog and routes by the item there; a statement it sends just
        before the INSERT (in the same transaction) checks the position is still right, so a
        column dropped behind the proxy's back gets a retriable 40001, never a row on the wrong
        shard; after DDL through the proxy it reads the position again."""
        conn = self.connect()
        conn.autocommit = True
        cur = conn.cursor()
        keys = list(range(5001, 5013))
        self.assertGreater(len({self.owner(str(k)) for k in keys}), 1)
        for k in keys[:6]:
            cur.execute("INSERT INTO posn VALUES (%s, %s, %s)", (k % 7, k, f"v{k}"))
            self.assertEqual(cur.statusmessage, "INSERT 0 1")
        cur.execute("INSERT INTO posn VALUES (1, %s, 'r') RETURNING id, b", (keys[6],))
        self.assertEqual(cur.fetchall(), [(keys[6], "r")])
        # Several rows, all on one shard: one statement; on several shards: 0A000.
        same = [k for k in range(6000, 6200) if self.owner(str(k)) == self.owner(str(keys[7]))][:3]
        cur.execute("INSERT INTO posn VALUES " + ", ".join(f"(0, {k}, 'm')" for k in same))
        self.assertEqual(cur.statusmessage, "INSERT 0 3")
        # Rows on several shards: cut by shard, one transaction across them (each part guarded).
        apart = next(k for k in range(9200, 9300) if self.owner(str(k)) != self.owner("9400"))
        cur.execute("INSERT INTO posn VALUES (0, %s, 'x'), (0, 9400, 'y') RETURNING id",
                    (apart,))
        self.assertEqual(cur.fetchall(), [(apart,), (9400,)])
        self.assertEqual(cur.statusmessage, "INSERT 0 2")
        # In a transaction, with the key as a string literal.
        conn.autocommit = False
        cur.execute(f"INSERT INTO posn VALUES (2, '{keys[10]}', 'tx')")
        conn.commit()
        conn.autocommit = True
        want = {k: ((k % 7, f"v{k}"), self.owner(str(k))) for k in keys[:6]}
        want[keys[6]] = ((1, "r"), self.owner(str(keys[6])))
        want.update({k: ((0, "m"), self.owner(str(k))) for k in same})
        want[keys[10]] = ((2, "tx"), self.owner(str(keys[10])))
        want[apart] = ((0, "x"), self.owner(str(apart)))
        want[9400] = ((0, "y"), self.owner("9400"))
        got = {}
        for i in range(self.SHARDS):
            for a, k, b in self.cluster.sql(self.cluster.primary_port(i),
                                            "SELECT a, id, b FROM posn"):
                self.assertNotIn(int(k), got)
                got[int(k)] = ((int(a), b), i)
        self.assertEqual(got, want)

        # A column before the key dropped on the shards behind the proxy's back: the proxy's
        # position (1) is stale. The next INSERT would route by its second item; the guard
        # stops it (40001) before anything is written, and the retry goes where it should.
        for i in range(self.SHARDS):
            self.cluster.sql(self.cluster.primary_port(i), "ALTER TABLE posn DROP COLUMN a",
                             user="app")
        k = next(k for k in range(7000, 7100) if self.owner(str(k)) != self.owner("7777"))
        with self.assertRaises(psycopg2.Error) as e:
            cur.execute(f"INSERT INTO posn VALUES ({k}, '7777')")
        self.assertEqual(e.exception.pgcode, "40001", str(e.exception))
        self.assertIsNotNone(e.exception.diag.message_hint)
        cur.execute(f"INSERT INTO posn VALUES ({k}, '7777')")
        self.assertEqual(cur.statusmessage, "INSERT 0 1")
        placed = [(i, r) for i in range(self.SHARDS) for r in self.cluster.sql(
            self.cluster.primary_port(i), f"SELECT id, b FROM posn WHERE id IN ({k}, 7777)")]
        self.assertEqual([(i, tuple(r)) for i, r in placed], [(self.owner(str(k)), (str(k), "7777"))])
        # DDL through the proxy: the position is read again, no 40001.
        cur.execute("ALTER TABLE posn ADD COLUMN c int")
        cur.execute("ALTER TABLE posn DROP COLUMN c")
        cur.execute("ALTER TABLE posn ADD COLUMN z int")
        cur.execute(f"INSERT INTO posn VALUES ({k + 1000}, 'after', 3)")
        self.assertEqual(cur.statusmessage, "INSERT 0 1")
        # The extended protocol (psycopg 3 binds server-side): the position read before the
        # batch is planned (DDL through the proxy made it forget it), the guard in front of
        # each Bind, a prepared statement run past its threshold, in autocommit and in a
        # transaction; rows of several shards in one statement get 0A000.
        if psycopg is not None:
            cur.execute("ALTER TABLE posn ADD COLUMN y2 int")
            cur.execute("ALTER TABLE posn DROP COLUMN y2")
            ext = [k + 2000 + i for i in range(8)]
            with psycopg.connect(self.proxy.dsn(), autocommit=True) as c3:
                for n in ext[:6]:
                    c3.execute("INSERT INTO posn VALUES (%s, 'p', %s)", (n, n % 5), prepare=True)
                with c3.transaction():
                    for n in ext[6:]:
                        got = c3.execute("INSERT INTO posn VALUES (%s, 'q', 1) RETURNING id",
                                         (n,), prepare=True).fetchall()
                        self.assertEqual(got, [(n,)])
                two = next(x for x in range(9500, 9600) if self.owner(str(x)) != self.owner(str(ext[0])))
                with self.assertRaises(psycopg.Error) as e3:
                    c3.execute("INSERT INTO posn VALUES (%s, 'r', 1), (%s, 'r', 1)", (ext[0] + 50, two),
                               prepare=True)
                self.assertEqual(e3.exception.sqlstate, "0A000")
                for n in ext:
                    rows = [(i, r) for i in range(self.SHARDS) for r in self.cluster.sql(
                        self.cluster.primary_port(i), f"SELECT id FROM posn WHERE id = {n}")]
                    self.assertEqual(rows, [(self.owner(str(n)), [str(n)])], f"row {n}")
                for i in range(self.SHARDS):  # nothing from the refused statement
                    self.assertEqual(self.cluster.sql(
                        self.cluster.primary_port(i),
                        f"SELECT id FROM posn WHERE id IN ({ext[0] + 50}, {two})"), [])
                # The table made again behind the proxy's back with a column before the key:
                # the position the proxy knows (0) is stale. The guard says 40001, nothing is
                # written, and the retry (the position read again: 1) goes to the owner.
                for i in range(self.SHARDS):
                    self.cluster.sql(self.cluster.primary_port(i),
                                     "DROP TABLE posn; CREATE TABLE posn(a int, id bigint PRIMARY "
                                     "KEY, b text)", user="app")
                late = next(x for x in range(9700, 9800) if self.owner(str(x)) != self.owner("5"))
                with self.assertRaises(psycopg.Error) as e4:
                    c3.execute("INSERT INTO posn VALUES (5, %s, 'g')", (late,), prepare=True)
                self.assertEqual(e4.exception.sqlstate, "40001", str(e4.exception))
                for i in range(self.SHARDS):
                    self.assertEqual(self.cluster.sql(self.cluster.primary_port(i),
                                                      "SELECT id FROM posn"), [])
                c3.execute("INSERT INTO posn VALUES (5, %s, 'g')", (late,), prepare=True)
            rows = [(i, r) for i in range(self.SHARDS) for r in self.cluster.sql(
                self.cluster.primary_port(i), "SELECT id FROM posn")]
            self.assertEqual(rows, [(self.owner(str(late)), [str(late)])])
        conn.close()

    def copy_from(self, sql, data):
        conn = self.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.copy_expert(sql, io.StringIO(data))
                return cur.rowcount
        finally:
            conn.close()

    def rows_on_owners(self, ids):
        """{id: (owner, balance)} read from the primaries; fails if a row is off its owner."""
        out = {}
        ring = workload.Ring([f"s{i}" for i in range(self.SHARDS)])  # agrees with --locate
        for i in range(self.SHARDS):
            for (k, o, b) in self.cluster.sql(self.cluster.primary_port(i),
                                              "SELECT id, owner, balance FROM accounts WHERE id "
                                              f"BETWEEN {min(ids)} AND {max(ids)}"):
                self.assertEqual(ring.owner(int(k)), f"s{i}", f"row {k} on s{i}")
                self.assertNotIn(int(k), out, f"row {k} twice")
                out[int(k)] = (o, int(b))
        return out

    def test_copy_from_stdin_splits_rows_by_shard(self):
        """COPY FROM STDIN (text and CSV, with and without a column list) puts every row on its
        owner, exactly once; a bad row or a CopyFail leaves nothing on any shard."""
        n = 100_000
        base = 10_000_000
        data = "".join(f"{base + i}\tcopy\t{i}\n" for i in range(n))
        t0 = time.monotonic()
        count = self.copy_from("COPY accounts (id, owner, balance) FROM STDIN", data)
        took = time.monotonic() - t0
        self.assertEqual(count, n)
        got = self.rows_on_owners([base, base + n - 1])
        self.assertEqual(len(got), n)
        self.assertEqual(sum(b for _, b in got.values()), n * (n - 1) // 2)
        print(f"\nCOPY of {n} rows through the proxy: {took:.2f} s", file=sys.stderr)
        # CSV with a header, quotes, newlines in values; no column list (the catalog's order).
        csv_rows = ['"20000001","a,""b""\nc",5', '20000002,plain,6', '20000003,"",7']
        count = self.copy_from("COPY accounts FROM STDIN WITH (FORMAT csv, HEADER true)",
                               "id,owner,balance\n" + "\n".join(csv_rows) + "\n")
        self.assertEqual(count, 3)
        got = self.rows_on_owners([20000001, 20000003])
        self.assertEqual(got, {20000001: ('a,"b"\nc', 5), 20000002: ("plain", 6),
                               20000003: ("", 7)})
        # A bad row in the middle (its key is not a bigint): nothing anywhere.
        before = self.total()
        bad = "".join(f"{30_000_000 + i}\tx\t1\n" for i in range(500)) + "oops\tx\t1\n" + \
            "".join(f"{30_001_000 + i}\tx\t1\n" for i in range(500))
        with self.assertRaises(psycopg2.Error) as e:
            self.copy_from("COPY accounts (id, owner, balance) FROM STDIN", bad)
        self.assertEqual(e.exception.pgcode, "22P02")
        # A row one shard rejects (a duplicate key): nothing anywhere either.
        dup = "".join(f"{40_000_000 + i}\tx\t1\n" for i in range(500)) + f"{base}\tdup\t1\n"
        with self.assertRaises(psycopg2.Error) as e:
            self.copy_from("COPY accounts (id, owner, balance) FROM STDIN", dup)
        self.assertEqual(e.exception.pgcode, "23505")
        self.assertIn("nothing was copied", e.exception.diag.message_detail or "")
        self.assertEqual(self.total(), before)
        # In a transaction block, rolled back: nothing.
        conn = self.connect()
        with conn.cursor() as cur:
            cur.copy_expert("COPY accounts (id, owner, balance) FROM STDIN",
                            io.StringIO("".join(f"{50_000_000 + i}\tx\t1\n" for i in range(50))))
            self.assertEqual(cur.rowcount, 50)
        conn.rollback()
        conn.close()
        self.assertEqual(self.total(), before)
        self.assertEqual(self.prepared(), [])

    def transfers(self, threads=6, seconds=6.0, proxy=None, errors_ok=False):
        """Concurrent transfers between random keys (locked in key order: PostgreSQL cannot see
        a deadlock across shards). Returns (acknowledged, failed) counts."""
        stop = time.time() + seconds
        counts = {"ok": 0, "failed": 0}
        problems = []
        lock = threading.Lock()

        def run(seed):
            rnd = random.Random(seed)
            conn = None
            while time.time() < stop:
                try:
                    if conn is None or conn.closed:
                        conn = self.connect(proxy)
                    x, y = rnd.sample(range(1, KEYS + 1), 2)
                    amount = rnd.randint(1, 50)
                    with conn.cursor() as cur:
                        for k in sorted((x, y)):
                            delta = -amount if k == x else amount
                            cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s",
                                        (delta, k))
                    conn.commit()
                    with lock:
                        counts["ok"] += 1
                except psycopg2.Error as e:
                    with lock:
                        counts["failed"] += 1
                    if not errors_ok and e.pgcode not in ("40001", "40P01"):
                        problems.append(f"{e.pgcode}: {e}")
                    try:
                        conn.rollback()
                    except psycopg2.Error:
                        conn = None
                    if errors_ok:
                        time.sleep(0.05)
            if conn is not None and not conn.closed:
                conn.close()

        ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(problems[:5], [])
        return counts["ok"], counts["failed"]

    def test_concurrent_transfers_keep_the_sum(self):
        ok, failed = self.transfers()
        self.assertGreater(ok, 100, "too few transfers went through")
        self.assertEqual(self.total(), (START * KEYS, KEYS))
        self.assertEqual(self.prepared(), [])

    def crash_during_commit(self, point):
        """Returns the two balances after a proxy that dies at `point` committed a transfer,
        and a fresh proxy's recovery ran."""
        a, b = self.two_keys()
        dying = self.start_proxy(env={"SHARDGATE_TEST_2PC_CRASH": point})
        conn = self.connect(dying)
        with conn.cursor() as cur:
            cur.execute("UPDATE accounts SET balance = balance - 10 WHERE id = %s", (a,))
            cur.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (b,))
        with self.assertRaises(psycopg2.Error):
            conn.commit()  # the proxy dies: the connection is lost
        deadline = time.time() + 5
        while dying.alive() and time.time() < deadline:
            time.sleep(0.05)
        self.assertFalse(dying.alive())
        dying.stop()
        self.assertEqual(len(self.prepared()), 2, "both shards hold the prepared transaction")
        outcome = "commit" if point == "after_decision" else "rollback"
        sample = f'shardgate_twophase_recovered_total{{outcome="{outcome}"}}'
        recovered = self.metric(sample)
        self.wait_no_prepared()  # the class's proxy recovers it (older than recover_after_ms)
        self.assertEqual(self.metric(sample), recovered + 2)  # one per shard
        return self.balance_on_primary(a), self.balance_on_primary(b)

    def test_proxy_dies_after_prepare_recovery_rolls_back(self):
        self.assertEqual(self.crash_during_commit("after_prepare"), (START, START))

    def test_proxy_dies_after_decision_recovery_commits(self):
        self.assertEqual(self.crash_during_commit("after_decision"), (START - 10, START + 10))

    def test_shard_primary_killed_during_transfers(self):
        c = self.cluster
        port = c.primary_port(1)
        result = {}

        def load():
            result["counts"] = self.transfers(seconds=8.0, errors_ok=True)

        t = threading.Thread(target=load)
        t.start()
        time.sleep(2.0)
        c.kill9(port)
        time.sleep(1.0)
        c.restart(port)
        t.join()
        ok, failed = result["counts"]
        self.assertGreater(ok, 50)
        self.assertGreater(failed, 0, "the kill did not reach any transfer")
        self.wait_no_prepared(timeout=20)
        self.assertEqual(self.total(), (START * KEYS, KEYS))


if __name__ == "__main__":
    unittest.main(verbosity=2)
