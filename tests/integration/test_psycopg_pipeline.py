"""psycopg 3 pipeline mode through ShardGate (issue 20), compared with PostgreSQL directly.

In pipeline mode psycopg sends each statement as Parse/Bind/Describe/Execute (an unnamed
statement and portal unless it prepares it) and one Sync only when the pipeline syncs: at the end
of the `with conn.pipeline()` block, at `pipeline.sync()`, or at commit. So one batch before a Sync
holds several unnamed statements, and PostgreSQL runs a batch in autocommit as one implicit
transaction. Each scenario runs the same code through the proxy and directly on the owning shard's
primary (on other keys) and must give the same results; the rows the proxy wrote must be on their
owner's primary (`shardgate --locate`) and nowhere else.

- Autocommit: the issue's example 1, more statements per pipeline (several parameter counts, a
  statement repeated, a sync in the middle) with prepare=False, the default and prepare=True, text
  and binary; keyed INSERT/UPDATE/SELECT pipelines on each shard's keys; one pipeline with a
  `pipeline.sync()` between the two shards' statements.
- The documented limit without a metadata database (no two-phase commit): statements on two
  shards before one Sync get 0A000 and write nothing (test_transactions.py runs them with one).
- A transaction (autocommit off) on one shard: the issue's example 2 (upsert RETURNING, then
  SELECT of the same key), committed after the pipeline, inside it, and with conn.transaction();
  a rolled-back pipelined transaction leaves nothing; a fetch inside the pipeline (a Flush).

Run with Debian's python: /usr/bin/python3 -m unittest tests/integration/test_psycopg_pipeline.py -v
"""

import faulthandler
import itertools
import os
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

try:
    import psycopg
except ImportError:  # another python: the class is skipped, not failed
    psycopg = None

TEST_TIMEOUT = 60  # seconds per test; a hang dumps every thread's stack and ends the run
K_START = 20_000_000  # fresh keys are drawn from here up (see fresh_keys)

# The issue's example 2, with {p} the placeholder (%s, or %b for binary parameters).
UPSERT = ("INSERT INTO accounts (id, owner, balance) VALUES ({p}, 'p', 1) "
          "ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1 RETURNING balance")
SELECT = "SELECT balance, owner FROM accounts WHERE id = {p}"

PREPARE = {"prepare=False": False, "prepare default": None, "prepare=True": True}


class _Rollback(Exception):
    """Raised inside conn.transaction() to make psycopg roll it back."""


@unittest.skipIf(psycopg is None, "needs Debian's python3-psycopg: run with /usr/bin/python3")
@unittest.skipUnless(os.access(harness.SHARDGATE_BIN, os.X_OK), f"{harness.SHARDGATE_BIN} not built")
class PsycopgPipelineTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 1
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = harness.Proxy(cls.cluster)
        cls.addClassCleanup(cls.proxy.stop)
        cls._next_key = K_START

    def setUp(self):
        self._log_start = len(self.proxy.log())
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)

    def tearDown(self):
        faulthandler.cancel_dump_traceback_later()
        if self.failed_so_far():
            self.print_proxy_log(self._log_start, 30)
        self.assertTrue(self.proxy.alive(), f"the proxy died:\n{self.proxy.log()[-3000:]}")

    # ------------------------------------------------------------------ helpers



    def fresh_keys(self, shard, n):
        """n keys never handed out before that shard owns."""
        keys, tried = [], 0
        while len(keys) < n:
            k = type(self)._next_key
            type(self)._next_key += 1
            if self.owner(k) == shard:
                keys.append(k)
            tried += 1
            self.assertLess(tried, 10_000, f"ring never gives shard s{shard}")
        return keys

    def direct_dsn(self, shard):
        return f"postgresql://app:app-secret@127.0.0.1:{self.cluster.primary_port(shard)}/app"

    @staticmethod
    def outcome(dsn, fn, autocommit=True):
        """fn(conn) on a new connection, or ("error", SQLSTATE, message) if psycopg raised."""
        try:
            conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10)
        except psycopg.Error as e:
            return ("connect error", e.sqlstate, str(e))
        try:
            return fn(conn)
        except psycopg.Error as e:
            return ("error", e.sqlstate, str(e))
        finally:
            conn.close()  # without commit: anything still open rolls back

    def differential(self, shard, scenario, expected, nkeys=1, autocommit=True):
        """Runs scenario(conn, keys) directly on shard's primary and through the proxy, each on
        fresh keys of that shard; both must return expected. Returns the proxy's keys."""
        dkeys, pkeys = self.fresh_keys(shard, nkeys), self.fresh_keys(shard, nkeys)
        direct = self.outcome(self.direct_dsn(shard), lambda c: scenario(c, dkeys), autocommit)
        self.assertEqual(direct, expected, f"directly on s{shard}'s primary (the test is wrong): "
                         f"got {direct!r}")
        got = self.outcome(self.proxy.dsn(), lambda c: scenario(c, pkeys), autocommit)
        self.assertEqual(got, direct, f"\nthrough the proxy (keys {pkeys} on s{shard}): {got!r}"
                         f"\ndirectly on s{shard}'s primary:  {direct!r}")
        return pkeys

    def primary_rows(self, shard, keys):
        rows = self.cluster.sql(self.cluster.primary_port(shard),
                                "SELECT id, owner, balance FROM accounts WHERE id IN "
                                f"({', '.join(map(str, keys))})")
        return {int(i): (o, int(b)) for i, o, b in rows}

    def assert_rows(self, keys, want):
        """On each shard's primary, the rows of keys are exactly those of want that it owns."""
        for s in range(self.SHARDS):
            mine = {k: v for k, v in want.items() if self.owner(k) == s}
            self.assertEqual(self.primary_rows(s, keys), mine,
                             f"rows of keys {keys} on s{s}'s primary "
                             f"(owners: { {k: f's{self.owner(k)}' for k in keys} })")

    # ------------------------------------------------------------------ autocommit

    def test_issue_example_1_autocommit(self):
        def scenario(conn, _keys):
            with conn.pipeline():
                a = conn.execute("select %s::int + 1", (1,), prepare=False)
                b = conn.execute("select %s::text || %s::text", ("a", "b"), prepare=False)
            return a.fetchall(), b.fetchall()

        self.differential(0, scenario, ([(2,)], [("ab",)]))

    def test_autocommit_more_statements(self):
        statements = [
            ("select {p}::int + 1", (1,), [(2,)]),
            ("select {p}::text || {p}::text", ("a", "b"), [("ab",)]),
            ("select 42", None, [(42,)]),
            ("select g from generate_series(1, {p}::int) g", (3,), [(1,), (2,), (3,)]),
            ("select {p}::int, {p}::text, {p}::bigint", (7, "x", 2**40), [(7, "x", 2**40)]),
            ("select {p}::int + 1", (10,), [(11,)]),  # the first text again, another value
            ("select {p}::text || {p}::text", ("c", "d"), [("cd",)]),
        ]
        expected = [rows for _, _, rows in statements]
        for (pname, prepare), binary in itertools.product(PREPARE.items(), (False, True)):
            for sync_at in (None, 3):
                with self.subTest(pname, binary=binary, sync_in_the_middle=sync_at is not None):
                    def scenario(conn, _keys, prepare=prepare, binary=binary, sync_at=sync_at):
                        p = "%b" if binary else "%s"
                        curs = []
                        with conn.pipeline() as pipe:
                            for i, (sql, params, _) in enumerate(statements):
                                if i == sync_at:
                                    pipe.sync()
                                curs.append(conn.cursor().execute(sql.format(p=p), params,
                                                                  prepare=prepare, binary=binary))
                        return [c.fetchall() for c in curs]

                    self.differential(0, scenario, expected)

    def test_autocommit_keyed_pipeline_on_each_shard(self):
        # Inserts, updates and reads of keys of one shard in one pipeline (one implicit
        # transaction): each statement sees the ones before it, as directly.
        def scenario(conn, keys, prepare, binary):
            p = "%b" if binary else "%s"
            k0, k1 = keys
            with conn.pipeline():
                curs = [conn.execute(UPSERT.format(p=p), (k0,), prepare=prepare, binary=binary),
                        conn.execute(UPSERT.format(p=p), (k1,), prepare=prepare, binary=binary),
                        conn.execute(SELECT.format(p=p), (k0,), prepare=prepare, binary=binary),
                        conn.execute(f"UPDATE accounts SET balance = balance + 10 WHERE id = {p} "
                                     "RETURNING balance", (k1,), prepare=prepare, binary=binary),
                        conn.execute(SELECT.format(p=p), (k1,), prepare=prepare, binary=binary)]
            return [c.fetchall() for c in curs]

        expected = [[(1,)], [(1,)], [(1, "p")], [(11,)], [(11, "p")]]
        for shard in range(self.SHARDS):
            for (pname, prepare), binary in itertools.product(PREPARE.items(), (False, True)):
                with self.subTest(pname, shard=f"s{shard}", binary=binary):
                    keys = self.differential(
                        shard, lambda c, k, prepare=prepare, binary=binary:
                        scenario(c, k, prepare, binary), expected, nkeys=2)
                    self.assert_rows(keys, {keys[0]: ("p", 1), keys[1]: ("p", 11)})

    def test_autocommit_sync_between_shards(self):
        # What a user does for keys on both shards: a pipeline.sync() after each shard's group.
        for pname, prepare in PREPARE.items():
            with self.subTest(pname):
                a, b = self.fresh_keys(0, 1)[0], self.fresh_keys(1, 1)[0]

                def scenario(conn, _keys, prepare=prepare):
                    with conn.pipeline() as pipe:
                        curs = [conn.execute(UPSERT.format(p="%s"), (a,), prepare=prepare),
                                conn.execute(SELECT.format(p="%s"), (a,), prepare=prepare)]
                        pipe.sync()
                        curs += [conn.execute(UPSERT.format(p="%s"), (b,), prepare=prepare),
                                 conn.execute(SELECT.format(p="%s"), (b,), prepare=prepare)]
                        pipe.sync()
                        curs += [conn.execute(UPSERT.format(p="%s"), (a,), prepare=prepare)]
                    return [c.fetchall() for c in curs]

                got = self.outcome(self.proxy.dsn(), lambda c: scenario(c, None))
                self.assertEqual(got, [[(1,)], [(1, "p")], [(1,)], [(1, "p")], [(2,)]],
                                 f"through the proxy (key {a} on s0, {b} on s1)")
                self.assert_rows([a, b], {a: ("p", 2), b: ("p", 1)})

    def test_autocommit_two_shards_before_one_sync_is_0A000(self):
        # The documented limit: a batch before a Sync is one implicit transaction, so its
        # statements must be on one shard. PostgreSQL would run it as one transaction; the
        # proxy refuses it with 0A000 and must write nothing (not half of it). The connection
        # stays usable.
        for pname, prepare in PREPARE.items():
            with self.subTest(pname):
                a, b = self.fresh_keys(0, 1)[0], self.fresh_keys(1, 1)[0]
                conn = psycopg.connect(self.proxy.dsn(), autocommit=True, connect_timeout=10)
                try:
                    with self.assertRaises(psycopg.Error) as cm:
                        with conn.pipeline():
                            conn.execute(UPSERT.format(p="%s"), (a,), prepare=prepare)
                            conn.execute(UPSERT.format(p="%s"), (b,), prepare=prepare)
                    self.assertEqual(cm.exception.sqlstate, "0A000",
                                     f"statements on s0 (key {a}) and s1 (key {b}) before one "
                                     f"Sync: {cm.exception}")
                    self.assert_rows([a, b], {})
                    # Still usable: a pipeline on one shard, with the same statement text (with
                    # prepare=True psycopg reuses the name it prepared in the failed batch: the
                    # Parse came before the error, so PostgreSQL would have kept it).
                    def again(conn):
                        with conn.pipeline():
                            cur = conn.execute(UPSERT.format(p="%s"), (b,), prepare=prepare)
                        return cur.fetchall()
                    try:
                        got = again(conn)
                    except psycopg.Error as e:
                        got = ("error", e.sqlstate, str(e))
                    self.assertEqual(got, [(1,)], "the same connection after the 0A000")
                finally:
                    conn.close()
                self.assert_rows([a, b], {b: ("p", 1)})

    # ------------------------------------------------------------------ transactions

    def test_transaction_issue_example_2(self):
        # The upsert and the SELECT of the same key pipelined in a transaction, committed; then
        # the same again on that key (the ON CONFLICT path), on the same connection.
        def run_once(conn, key, how, prepare, binary):
            p = "%b" if binary else "%s"
            if how == "conn.transaction()":
                with conn.transaction():
                    with conn.pipeline():
                        a = conn.execute(UPSERT.format(p=p), (key,), prepare=prepare, binary=binary)
                        b = conn.execute(SELECT.format(p=p), (key,), prepare=prepare, binary=binary)
            else:
                with conn.pipeline():
                    a = conn.execute(UPSERT.format(p=p), (key,), prepare=prepare, binary=binary)
                    b = conn.execute(SELECT.format(p=p), (key,), prepare=prepare, binary=binary)
                    if how == "commit in the pipeline":
                        conn.commit()
                if how == "commit after the pipeline":
                    conn.commit()
            return a.statusmessage, a.fetchall(), b.statusmessage, b.fetchall()

        expected = [("INSERT 0 1", [(1,)], "SELECT 1", [(1, "p")]),
                    ("INSERT 0 1", [(2,)], "SELECT 1", [(2, "p")])]
        for how in ("commit after the pipeline", "commit in the pipeline", "conn.transaction()"):
            for shard in range(self.SHARDS):
                for (pname, prepare), binary in itertools.product(PREPARE.items(), (False, True)):
                    with self.subTest(how, shard=f"s{shard}", prepare=pname, binary=binary):
                        def scenario(conn, keys, how=how, prepare=prepare, binary=binary):
                            return [run_once(conn, keys[0], how, prepare, binary)
                                    for _ in range(2)]

                        keys = self.differential(shard, scenario, expected,
                                                 autocommit=how == "conn.transaction()")
                        self.assert_rows(keys, {keys[0]: ("p", 2)})

    def test_transaction_rolled_back_leaves_nothing(self):
        def scenario(conn, keys, how, prepare, binary):
            p = "%b" if binary else "%s"
            k0, k1 = keys
            if how == "conn.rollback()":
                with conn.pipeline():
                    curs = [conn.execute(UPSERT.format(p=p), (k0,), prepare=prepare, binary=binary),
                            conn.execute(UPSERT.format(p=p), (k1,), prepare=prepare, binary=binary),
                            conn.execute(SELECT.format(p=p), (k0,), prepare=prepare, binary=binary)]
                got = [c.fetchall() for c in curs]
                conn.rollback()
            else:
                try:
                    with conn.transaction():
                        with conn.pipeline():
                            curs = [conn.execute(UPSERT.format(p=p), (k0,), prepare=prepare,
                                                 binary=binary),
                                    conn.execute(UPSERT.format(p=p), (k1,), prepare=prepare,
                                                 binary=binary),
                                    conn.execute(SELECT.format(p=p), (k0,), prepare=prepare,
                                                 binary=binary)]
                        got = [c.fetchall() for c in curs]
                        raise _Rollback
                except _Rollback:
                    pass
            # The rolled-back rows are gone for this connection too (a transaction: the primary).
            with conn.transaction():
                got.append(conn.execute(f"SELECT count(*) FROM accounts WHERE id IN ({p}, {p})",
                                        (k0, k1), prepare=prepare, binary=binary).fetchall())
            return got

        expected = [[(1,)], [(1,)], [(1, "p")], [(0,)]]
        for how in ("conn.rollback()", "exception in conn.transaction()"):
            for shard in range(self.SHARDS):
                for (pname, prepare), binary in itertools.product(PREPARE.items(), (False, True)):
                    with self.subTest(how, shard=f"s{shard}", prepare=pname, binary=binary):
                        keys = self.differential(
                            shard, lambda c, k, how=how, prepare=prepare, binary=binary:
                            scenario(c, k, how, prepare, binary), expected, nkeys=2,
                            autocommit=how != "conn.rollback()")
                        self.assert_rows(keys, {})

    def test_transaction_fetch_inside_the_pipeline(self):
        # Fetching a result inside the pipeline makes psycopg send a Flush (not a Sync) in the
        # middle of the transaction's batch.
        def scenario(conn, keys, prepare):
            with conn.pipeline():
                a = conn.execute(UPSERT.format(p="%s"), (keys[0],), prepare=prepare)
                ra = a.fetchall()
                b = conn.execute(SELECT.format(p="%s"), (keys[0],), prepare=prepare)
                rb = b.fetchall()
            conn.commit()
            return ra, rb

        for shard in range(self.SHARDS):
            for pname, prepare in PREPARE.items():
                with self.subTest(pname, shard=f"s{shard}"):
                    keys = self.differential(shard, lambda c, k, prepare=prepare:
                                             scenario(c, k, prepare),
                                             ([(1,)], [(1, "p")]), autocommit=False)
                    self.assert_rows(keys, {keys[0]: ("p", 1)})


if __name__ == "__main__":
    unittest.main()
