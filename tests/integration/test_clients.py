"""Real PostgreSQL clients through ShardGate: psql, pgbench, psycopg2, psycopg 3, asyncpg.

One cluster (2 shards x 1 replica) and one proxy in transaction pooling mode for the whole class.
Every client runs the user scenarios (SCRAM login; insert/select/update/delete by key with literals
and with parameters; commit and rollback; a server error followed by more work on the same
connection) and the rows are checked directly on the shards' primaries: each row lives on exactly
the shard `shardgate --locate` names, and nowhere else.

Plain reads outside a transaction go to replicas, which may lag a write; tests read their own
writes inside a transaction (routed to the primary), with FOR SHARE, or retry briefly.

Each test uses its own range of keys (see the bases below), so tests do not see each other's rows.

Run with Debian's python (psycopg2, psycopg 3.1 and asyncpg installed):
    /usr/bin/python3 -m unittest tests/integration/test_clients.py -v
"""

import asyncio
import contextlib
import faulthandler
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from wire import Raw, frame, parse_error  # noqa: E402

try:
    import asyncpg
    import psycopg
    import psycopg2
    import psycopg2.errors
    DRIVERS = True
except ImportError:  # another python: the class is skipped, not failed
    DRIVERS = False

PSQL = shutil.which("psql") or str(harness.PGBIN / "psql")
PGBENCH = shutil.which("pgbench") or str(harness.PGBIN / "pgbench")
TEST_TIMEOUT = 60  # seconds; a hung test dumps every thread's stack and ends the run

# Key bases: each test owns [base, base + 100_000).
K_PSQL = 1_000_000
K_PGBENCH = {"simple": 2_000_000, "extended": 2_100_000, "prepared": 2_200_000}
K_PSYCOPG2 = 3_000_000
K_PSYCOPG3 = 4_000_000
K_PSYCOPG3_PREPARED = 4_100_000
K_PSYCOPG3_BINARY = (20_000, 4_200_000, 5_000_000_000)  # int2, int4 and int8 sized keys
K_ASYNCPG = 6_000_000
K_KEYLESS = 7_000_000
K_CROSS = 7_100_000
K_POOL_ASYNCPG = 8_000_000
K_POOL_PSYCOPG3 = 8_100_000
K_CANCEL = 9_100_000
K_PIPELINE = 9_200_000
K_RETRY = 9_300_000
K_PIECES = 9_400_000

_PARAM = re.compile(r"\$(\d+)")


def to_pyformat(sql, params, placeholder="%s"):
    """'... $2 ... $1' -> '... %s ... %s' with the parameters reordered to match."""
    order = [int(n) for n in _PARAM.findall(sql)]
    return _PARAM.sub(placeholder, sql), [params[n - 1] for n in order]


class _Rollback(Exception):
    """Raised inside a transaction block to make the driver roll it back."""


# ------------------------------------------------------------------------------------ drivers
# One small adapter per driver, so the same scenario runs on each: q(sql, params) runs a statement
# written with $n placeholders and returns its rows as tuples; transaction() is the driver's own
# transaction API (commit on success, rollback on an exception).

class Psycopg2Driver:
    name = "psycopg2"

    def __init__(self, dsn, **kw):
        self.Error = psycopg2.Error
        self.conn = psycopg2.connect(dsn, connect_timeout=10, **kw)
        self.conn.autocommit = True

    def q(self, sql, params=None):
        with self.conn.cursor() as cur:
            if params is None:
                cur.execute(sql)
            else:
                cur.execute(*to_pyformat(sql, params))
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    @contextlib.contextmanager
    def transaction(self):
        self.conn.autocommit = False  # psycopg2 sends BEGIN before the first statement
        try:
            with self.conn:  # COMMIT, or ROLLBACK on an exception
                yield
        finally:
            self.conn.autocommit = True

    @staticmethod
    def sqlstate(e):
        return getattr(e, "pgcode", None)

    @staticmethod
    def hint(e):
        return e.diag.message_hint

    def close(self):
        self.conn.close()


class Psycopg3Driver:
    def __init__(self, dsn, prepare_threshold=5, binary=False, name="psycopg3"):
        self.name = name
        self.Error = psycopg.Error
        self.binary = binary
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10,
                                    prepare_threshold=prepare_threshold)

    def q(self, sql, params=None):
        with self.conn.cursor() as cur:
            if params is None:
                cur.execute(sql, binary=self.binary)
            else:
                cur.execute(*to_pyformat(sql, params, "%b" if self.binary else "%s"),
                            binary=self.binary)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    @contextlib.contextmanager
    def transaction(self):
        with self.conn.transaction():
            yield

    @staticmethod
    def sqlstate(e):
        return getattr(e, "sqlstate", None)

    @staticmethod
    def hint(e):
        return e.diag.message_hint

    def close(self):
        self.conn.close()


class AsyncpgDriver:
    """asyncpg: extended protocol only, named prepared statements, binary formats."""
    name = "asyncpg"

    def __init__(self, dsn, **kw):
        self.Error = asyncpg.PostgresError
        self.loop = asyncio.new_event_loop()
        try:
            self.conn = self.run(asyncpg.connect(dsn, timeout=10, command_timeout=30, **kw))
        except BaseException:
            self.loop.close()
            raise

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def q(self, sql, params=None):
        return [tuple(r) for r in self.run(self.conn.fetch(sql, *(params or ())))]

    @contextlib.contextmanager
    def transaction(self):
        tr = self.conn.transaction()
        self.run(tr.start())
        try:
            yield
        except BaseException:
            self.run(tr.rollback())
            raise
        else:
            self.run(tr.commit())

    @staticmethod
    def sqlstate(e):
        return getattr(e, "sqlstate", None)

    @staticmethod
    def hint(e):
        return getattr(e, "hint", None)

    def close(self):
        try:
            self.run(self.conn.close(timeout=5))
        finally:
            self.loop.close()


# ------------------------------------------------------------------------------------ the tests

def prepared_names(conn):
    """Names of the statements a psycopg 3 connection has prepared (its private cache)."""
    return getattr(getattr(conn, "_prepared", None), "_names", None)


@unittest.skipUnless(DRIVERS, "needs psycopg2, psycopg 3 and asyncpg: run with /usr/bin/python3")
@unittest.skipUnless(os.access(harness.SHARDGATE_BIN, os.X_OK), f"{harness.SHARDGATE_BIN} not built")
class ClientsTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 1

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = harness.Proxy(cls.cluster, tables=(("accounts", "id", "bigint"),),
                                  pool_mode="transaction")
        cls.addClassCleanup(cls.proxy.stop)
        cls.pg_env = dict(os.environ, PGPASSWORD="app-secret", PGCONNECT_TIMEOUT="10",
                          PGSSLMODE="disable")

    def setUp(self):
        self._log_start = len(self.proxy.log())
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
        self._drivers = []

    def tearDown(self):
        faulthandler.cancel_dump_traceback_later()
        for d in self._drivers:
            with contextlib.suppress(Exception):
                d.close()
        if self.failed_so_far():
            self.print_proxy_log(self._log_start, 40)
        self.assertTrue(self.proxy.alive(), f"the proxy died:\n{self.proxy.log()[-3000:]}")

    # ------------------------------------------------------------------ helpers


    def driver(self, factory, *a, **kw):
        d = factory(*a, **kw)
        self._drivers.append(d)
        return d


    def pick_keys(self, base, n):
        """n keys from base up, alternating between the shards (s0, s1, s0, ...)."""
        keys, k = [], base
        while len(keys) < n:
            if self.owner(k) == len(keys) % self.SHARDS:
                keys.append(k)
            k += 1
            self.assertLess(k - base, 10_000, "ring never gives the wanted shard")
        return keys

    def keys_on(self, base, shard, n):
        """n keys from base up that shard owns."""
        keys, k = [], base
        while len(keys) < n:
            if self.owner(k) == shard:
                keys.append(k)
            k += 1
            self.assertLess(k - base, 10_000, f"ring never gives shard s{shard}")
        return keys

    def primary_rows(self, shard, lo, hi):
        rows = self.cluster.sql(self.cluster.primary_port(shard),
                                f"SELECT id, owner, balance FROM accounts WHERE id BETWEEN {lo} AND {hi}")
        return {int(i): (o, int(b)) for i, o, b in rows}

    def assert_placement(self, lo, hi, expected, who=""):
        """The rows with id in [lo, hi] on each shard's primary are exactly expected's rows that
        the shard owns: each row on its owner, none on the other shard, deleted rows gone."""
        for s in range(self.SHARDS):
            want = {k: v for k, v in expected.items() if self.owner(k) == s}
            self.assertEqual(self.primary_rows(s, lo, hi), want,
                             f"{who}: rows on shard s{s}'s primary (owners: "
                             f"{ {k: self.owner(k) for k in expected} })")

    def eventually(self, fn, expected, timeout=5.0, msg=""):
        """fn() == expected within timeout (for reads served by a lagging replica)."""
        deadline = time.monotonic() + timeout
        while True:
            got = fn()
            if got == expected or time.monotonic() > deadline:
                self.assertEqual(got, expected, msg)
                return
            time.sleep(0.05)

    def expect_error(self, d, sqlstate, sql, params=None):
        with self.assertRaises(d.Error, msg=f"{d.name}: {sql!r} should fail with {sqlstate}") as cm:
            d.q(sql, params)
        self.assertEqual(d.sqlstate(cm.exception), sqlstate, f"{d.name}: {sql!r}: {cm.exception}")
        return cm.exception

    def run_psql(self, script, timeout=30):
        p = subprocess.run([PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-q", "-At", "-f", "-",
                            self.proxy.dsn()], input=script, capture_output=True, text=True,
                           env=self.pg_env, timeout=timeout)
        return p

    # ------------------------------------------------------------------ the shared scenario

    def crud_scenario(self, d, base):
        """Insert/select/update/delete by key (literals and parameters), commit, rollback, a
        duplicate key on the same connection, then placement on the primaries."""
        k = self.pick_keys(base, 8)
        ins = "INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, $3) RETURNING id"
        sel = "SELECT owner, balance FROM accounts WHERE id = $1"

        # Insert with a literal key and with parameters.
        self.assertEqual(d.q(f"INSERT INTO accounts (id, owner, balance) VALUES ({k[0]}, 'lit', 10) "
                             "RETURNING id"), [(k[0],)])
        self.assertEqual(d.q(ins, [k[1], "param", 20]), [(k[1],)])
        self.assertEqual(d.q(ins, [k[2], "gone-lit", 30]), [(k[2],)])
        self.assertEqual(d.q(ins, [k[3], "gone-param", 40]), [(k[3],)])

        # Read them back: in a transaction (primary), with FOR SHARE, and from the replica.
        with d.transaction():
            self.assertEqual(d.q(f"SELECT owner, balance FROM accounts WHERE id = {k[0]}"),
                             [("lit", 10)])
        with d.transaction():
            self.assertEqual(d.q(sel, [k[1]]), [("param", 20)])
        self.assertEqual(d.q(f"SELECT balance FROM accounts WHERE id = {k[2]} FOR SHARE"), [(30,)])
        self.assertEqual(d.q("SELECT balance FROM accounts WHERE id = $1 FOR SHARE", [k[3]]), [(40,)])
        self.eventually(lambda: d.q(sel, [k[1]]), [("param", 20)], msg=f"{d.name}: replica read")
        self.eventually(lambda: d.q(f"SELECT owner, balance FROM accounts WHERE id = {k[0]}"),
                        [("lit", 10)], msg=f"{d.name}: replica read (literal)")

        # Update by key.
        self.assertEqual(d.q(f"UPDATE accounts SET balance = balance + 5 WHERE id = {k[0]} "
                             "RETURNING balance"), [(15,)])
        self.assertEqual(d.q("UPDATE accounts SET balance = $2, owner = $3 WHERE id = $1 "
                             "RETURNING balance", [k[1], 25, "param2"]), [(25,)])
        self.assertEqual(d.q("UPDATE accounts SET balance = 0 WHERE id = $1 RETURNING id",
                             [base + 49_999]), [])

        # Delete by key.
        self.assertEqual(d.q(f"DELETE FROM accounts WHERE id = {k[2]} RETURNING id"), [(k[2],)])
        self.assertEqual(d.q("DELETE FROM accounts WHERE id = $1 RETURNING id", [k[3]]), [(k[3],)])
        self.assertEqual(d.q("DELETE FROM accounts WHERE id = $1 RETURNING id", [k[3]]), [])

        # A transaction that commits.
        with d.transaction():
            self.assertEqual(d.q(ins, [k[4], "tx", 1]), [(k[4],)])
            d.q("UPDATE accounts SET balance = balance + 1 WHERE id = $1", [k[4]])
            self.assertEqual(d.q(sel, [k[4]]), [("tx", 2)])
        # ... and one that rolls back (its insert and update are gone afterwards).
        with self.assertRaises(_Rollback):
            with d.transaction():
                self.assertEqual(d.q(ins, [k[5], "rolled-back", 5]), [(k[5],)])
                d.q(f"UPDATE accounts SET balance = 555 WHERE id = {k[5]}")
                self.assertEqual(d.q(sel, [k[5]]), [("rolled-back", 555)])
                raise _Rollback
        with d.transaction():
            self.assertEqual(d.q(sel, [k[5]]), [])
        with d.transaction():
            self.assertEqual(d.q(sel, [k[4]]), [("tx", 2)])

        # A server error (duplicate key), then normal work on the same connection.
        self.expect_error(d, "23505", ins, [k[1], "dup", 0])
        self.expect_error(d, "23505", f"INSERT INTO accounts (id, owner, balance) VALUES ({k[0]}, 'dup', 0)")
        self.assertEqual(d.q("SELECT owner FROM accounts WHERE id = $1 FOR SHARE", [k[1]]), [("param2",)])
        self.assertEqual(d.q(ins, [k[6], "after-error", 6]), [(k[6],)])
        # The same inside a transaction: 23505, then 25P02 until the rollback.
        with self.assertRaises(d.Error) as cm:
            with d.transaction():
                self.assertEqual(d.q(ins, [k[7], "inside", 7]), [(k[7],)])
                self.expect_error(d, "23505", ins, [k[7], "dup", 0])
                d.q(sel, [k[7]])  # must fail: the transaction is aborted
        self.assertEqual(d.sqlstate(cm.exception), "25P02", str(cm.exception))
        with d.transaction():
            self.assertEqual(d.q(sel, [k[7]]), [])
        with d.transaction():
            self.assertEqual(d.q(sel, [k[6]]), [("after-error", 6)])

        self.assert_placement(base, base + 49_999, {
            k[0]: ("lit", 15), k[1]: ("param2", 25), k[4]: ("tx", 2), k[6]: ("after-error", 6)},
            who=d.name)

    # ------------------------------------------------------------------ login

    def test_scram_is_offered_and_wrong_password_rejected(self):
        # The proxy's first answer to a StartupMessage is AuthenticationSASL with SCRAM-SHA-256.
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as s:
            params = b"user\0app\0database\0app\0\0"
            s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
            head = s.recv(5, socket.MSG_WAITALL)
            self.assertEqual(head[:1], b"R", head)
            body = s.recv(struct.unpack("!i", head[1:])[0] - 4, socket.MSG_WAITALL)
            self.assertEqual(struct.unpack("!i", body[:4])[0], 10, "AuthenticationSASL expected")
            self.assertIn(b"SCRAM-SHA-256\0", body[4:])
        bad = self.proxy.dsn(password="wrong-secret")
        with self.subTest("psycopg2"):
            with self.assertRaisesRegex(psycopg2.OperationalError, "password authentication failed"):
                psycopg2.connect(bad, connect_timeout=10).close()
        with self.subTest("psycopg3"):
            with self.assertRaisesRegex(psycopg.OperationalError, "password authentication failed"):
                psycopg.connect(bad, connect_timeout=10).close()
        with self.subTest("asyncpg"):
            loop = asyncio.new_event_loop()
            try:
                with self.assertRaises(asyncpg.InvalidPasswordError) as cm:
                    loop.run_until_complete(asyncpg.connect(bad, timeout=10))
                self.assertEqual(cm.exception.sqlstate, "28P01")
            finally:
                loop.close()
        with self.subTest("psql"):
            p = subprocess.run([PSQL, "-X", "-w", "-c", "SELECT 1", bad], capture_output=True,
                               text=True, env=dict(self.pg_env, PGPASSWORD=""), timeout=30)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("password authentication failed", p.stderr)

    # ------------------------------------------------------------------ psql

    def test_psql(self):
        k = self.pick_keys(K_PSQL, 6)
        script = f"""
\\set k1 {k[1]}
\\set who 'psql-var'
\\echo login
SHOW application_name;
INSERT INTO accounts (id, owner, balance) VALUES ({k[0]}, 'psql', 10) RETURNING id;
INSERT INTO accounts (id, owner, balance) VALUES (:k1, :'who', 20) RETURNING id;
INSERT INTO accounts (id, owner, balance) VALUES ({k[2]}, 'gone', 30) ON CONFLICT (id) DO NOTHING RETURNING id;
\\echo read
BEGIN;
SELECT owner, balance FROM accounts WHERE id = {k[0]};
COMMIT;
START TRANSACTION;
SELECT owner, balance FROM accounts WHERE id = :k1;
END;
SELECT owner FROM accounts WHERE id = {k[2]} FOR SHARE;
\\echo update
UPDATE accounts SET balance = balance + 5 WHERE id = {k[0]} RETURNING balance;
UPDATE accounts SET balance = 25, owner = :'who' || '2' WHERE id = :k1 RETURNING owner, balance;
\\echo delete
DELETE FROM accounts WHERE id = {k[2]} RETURNING id;
\\echo commit
BEGIN;
INSERT INTO accounts (id, owner, balance) VALUES ({k[3]}, 'tx', 1);
UPDATE accounts SET balance = balance + 1 WHERE id = {k[3]};
COMMIT;
\\echo rollback
BEGIN;
INSERT INTO accounts (id, owner, balance) VALUES ({k[4]}, 'rolled-back', 5);
SELECT owner FROM accounts WHERE id = {k[4]};
ROLLBACK;
BEGIN;
SELECT count(*) FROM accounts WHERE id = {k[4]};
COMMIT;
BEGIN;
SELECT owner, balance FROM accounts WHERE id = {k[3]};
COMMIT;
\\echo duplicate
\\set ON_ERROR_STOP 0
INSERT INTO accounts (id, owner, balance) VALUES (:k1, 'dup', 0);
\\echo sqlstate :LAST_ERROR_SQLSTATE
\\set ON_ERROR_STOP 1
SELECT owner FROM accounts WHERE id = :k1 FOR SHARE;
INSERT INTO accounts (id, owner, balance) VALUES ({k[5]}, 'after-error', 6) RETURNING id;
\\echo keyless
\\set ON_ERROR_STOP 0
SELECT owner, count(*) FROM accounts GROUP BY owner HAVING count(*) > length(owner);
\\echo sqlstate :LAST_ERROR_SQLSTATE
\\set ON_ERROR_STOP 1
SELECT balance FROM accounts WHERE id = {k[5]} FOR SHARE;
\\echo done
"""
        p = self.run_psql(script)
        self.assertEqual(p.returncode, 0, f"psql failed:\n{p.stdout}\n{p.stderr}")
        self.assertEqual(p.stdout.splitlines(), [
            "login", "psql", str(k[0]), str(k[1]), str(k[2]),
            "read", "psql|10", "psql-var|20", "gone",
            "update", "15", "psql-var2|25",
            "delete", str(k[2]),
            "commit",
            "rollback", "rolled-back", "0", "tx|2",
            "duplicate", "sqlstate 23505", "psql-var2", str(k[5]),
            "keyless", "sqlstate 0A000", "6",
            "done"], p.stderr)
        self.assertIn("duplicate key value violates unique constraint", p.stderr)
        self.assertRegex(p.stderr, r"HINT:.*\bid\b", "0A000 should carry a hint naming the key")
        self.assert_placement(K_PSQL, K_PSQL + 99_999, {
            k[0]: ("psql", 15), k[1]: ("psql-var2", 25), k[3]: ("tx", 2), k[5]: ("after-error", 6)},
            who="psql")

    # ------------------------------------------------------------------ pgbench

    def _pgbench(self, mode):
        base, nkeys, clients, txs = K_PGBENCH[mode], 40, 4, 50
        script = f"""\\set id random({base}, {base + nkeys - 1})
\\set tmp :id + {nkeys}
BEGIN;
INSERT INTO accounts (id, owner, balance) VALUES (:id, 'pgbench', 0) ON CONFLICT (id) DO NOTHING;
UPDATE accounts SET balance = balance + 1 WHERE id = :id;
SELECT owner, balance FROM accounts WHERE id = :id;
END;
SELECT owner, balance FROM accounts WHERE id = :id FOR SHARE;
INSERT INTO accounts (id, owner, balance) VALUES (:tmp, 'tmp', 0) ON CONFLICT (id) DO NOTHING;
SELECT owner FROM accounts WHERE id = :tmp;
DELETE FROM accounts WHERE id = :tmp;
"""
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write(script)
        try:
            p = subprocess.run([PGBENCH, "-n", "-M", mode, "-f", f.name, "-c", str(clients),
                                "-j", "2", "-t", str(txs), "-h", "127.0.0.1", "-p", str(self.proxy.port),
                                "-U", "app", "app"], capture_output=True, text=True,
                               env=self.pg_env, timeout=60)
        finally:
            os.unlink(f.name)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, f"pgbench -M {mode} failed:\n{out}")
        self.assertIn(f"query mode: {mode}", out)
        self.assertIn(f"number of transactions actually processed: {clients * txs}/{clients * txs}", out)
        self.assertRegex(out, r"number of failed transactions: 0 \(", out)
        # Every transaction added 1 to one key's balance; the temporary rows are all gone.
        rows = {}
        for s in range(self.SHARDS):
            for key, (owner, bal) in self.primary_rows(s, base, base + 2 * nkeys).items():
                self.assertEqual(self.owner(key), s, f"row {key} found on the wrong shard s{s}")
                self.assertNotIn(key, rows, f"row {key} on two shards")
                rows[key] = (owner, bal)
        self.assertTrue(all(base <= key < base + nkeys for key in rows), f"leftover rows: {rows}")
        self.assertEqual(sum(b for _, b in rows.values()), clients * txs, rows)
        self.assertTrue(all(o == "pgbench" for o, _ in rows.values()), rows)
        self.assertEqual({self.owner(key) for key in rows}, set(range(self.SHARDS)))

    def test_pgbench_simple(self):
        self._pgbench("simple")

    def test_pgbench_extended(self):
        self._pgbench("extended")

    def test_pgbench_prepared(self):
        self._pgbench("prepared")

    # ------------------------------------------------------------------ drivers

    def test_psycopg2(self):
        self.crud_scenario(self.driver(Psycopg2Driver, self.proxy.dsn()), K_PSYCOPG2)

    def test_psycopg3_default(self):
        self.crud_scenario(self.driver(Psycopg3Driver, self.proxy.dsn()), K_PSYCOPG3)

    def test_psycopg3_prepared(self):
        # prepare_threshold=0: every statement is prepared (named) on the server first.
        d = self.driver(Psycopg3Driver, self.proxy.dsn(), prepare_threshold=0,
                        name="psycopg3-prepared")
        self.crud_scenario(d, K_PSYCOPG3_PREPARED)
        # Run the same statements again: they come from psycopg's prepared cache now.
        self.crud_scenario(d, K_PSYCOPG3_PREPARED + 50_000)
        self.assertNotEqual(prepared_names(d.conn), {}, "psycopg did not prepare anything")

    def test_psycopg3_binary(self):
        # %b parameters and binary results; psycopg sends ints as int2/int4/int8 by size.
        for base in K_PSYCOPG3_BINARY:
            with self.subTest(base=base):
                d = self.driver(Psycopg3Driver, self.proxy.dsn(), binary=True,
                                name=f"psycopg3-binary@{base}")
                self.crud_scenario(d, base)
        d = self.driver(Psycopg3Driver, self.proxy.dsn(), binary=True, prepare_threshold=0,
                        name="psycopg3-binary-prepared")
        self.crud_scenario(d, K_PSYCOPG3_BINARY[2] + 50_000)

    def test_asyncpg(self):
        d = self.driver(AsyncpgDriver, self.proxy.dsn())
        self.crud_scenario(d, K_ASYNCPG)
        # conn.execute without arguments is the simple protocol in asyncpg.
        k = self.keys_on(K_ASYNCPG + 50_000, 1, 1)[0]
        d.run(d.conn.execute(f"INSERT INTO accounts (id, owner, balance) VALUES ({k}, 'simple', 1)"))
        stmt = d.run(d.conn.prepare("SELECT owner, balance FROM accounts WHERE id = $1 FOR SHARE"))
        self.assertEqual(tuple(d.run(stmt.fetchrow(k))), ("simple", 1))

    # ------------------------------------------------------------------ routing errors

    def all_drivers(self):
        dsn = self.proxy.dsn()
        return [self.driver(Psycopg2Driver, dsn), self.driver(Psycopg3Driver, dsn),
                self.driver(Psycopg3Driver, dsn, prepare_threshold=0, name="psycopg3-prepared"),
                self.driver(Psycopg3Driver, dsn, binary=True, name="psycopg3-binary"),
                self.driver(AsyncpgDriver, dsn)]

    def test_statement_without_key_is_0A000_and_connection_survives(self):
        for n, d in enumerate(self.all_drivers()):
            with self.subTest(d.name):
                ka, kb = self.keys_on(K_KEYLESS + n * 1000, 0, 1)[0], self.keys_on(K_KEYLESS + n * 1000, 1, 1)[0]
                d.q("INSERT INTO accounts (id, owner, balance) VALUES ($1, 'keyless', 1)", [ka])
                d.q("INSERT INTO accounts (id, owner, balance) VALUES ($1, 'keyless', 1)", [kb])
                for sql in ("SELECT owner, count(*) FROM accounts GROUP BY owner HAVING count(*) > length(owner)",
                            "UPDATE accounts SET balance = 0 WHERE owner = 'keyless'",
                            "DELETE FROM accounts WHERE owner = 'keyless'",
                            "SELECT id FROM accounts WHERE balance > 0 FOR SHARE"):
                    e = self.expect_error(d, "0A000", sql)
                    # A simple query runs an UPDATE or DELETE on every shard, but this suite's
                    # proxy has no metadata database, so it cannot commit rows changed on two
                    # shards atomically (and applies nothing); the extended protocol refuses it.
                    word = "[metadata]" if "metadata" in str(e) else "id"
                    self.assertIn(word, d.hint(e) or "", f"{d.name}: {sql!r}: hint {d.hint(e)!r}")
                    # The connection stays usable, and nothing changed.
                    self.assertEqual(d.q("SELECT balance FROM accounts WHERE id = $1 FOR SHARE", [ka]), [(1,)])
                    self.assertEqual(d.q("SELECT balance FROM accounts WHERE id = $1 FOR SHARE", [kb]), [(1,)])
                d.q("DELETE FROM accounts WHERE id = $1", [kb])
                d.q("INSERT INTO accounts (id, owner, balance) VALUES ($1, 'keyless', 1)", [kb])
                e = self.expect_error(d, "0A000",
                                      f"UPDATE accounts SET balance = 1 WHERE id IN ({ka}, {kb})")
                d.q("DELETE FROM accounts WHERE id = $1", [kb])
                self.assertTrue(d.hint(e), f"{d.name}: no hint for a two-shard IN list")
                # Inside a transaction the error aborts it; rollback makes the connection usable.
                with self.assertRaises(d.Error) as cm:
                    with d.transaction():
                        d.q("UPDATE accounts SET balance = 2 WHERE id = $1", [ka])
                        self.expect_error(d, "0A000",
                                          "SELECT DISTINCT ON (owner) owner FROM accounts")
                        d.q("SELECT balance FROM accounts WHERE id = $1", [ka])
                self.assertEqual(d.sqlstate(cm.exception), "25P02", str(cm.exception))
                self.assertEqual(d.q("SELECT balance FROM accounts WHERE id = $1 FOR SHARE", [ka]), [(1,)])
                self.assertEqual(d.q("DELETE FROM accounts WHERE id = $1 RETURNING id", [ka]), [(ka,)])

    def test_two_shard_transaction_takes_both_shards(self):
        """Every driver's transaction takes a second shard in (simple queries and the extended
        protocol alike); ROLLBACK leaves nothing on either shard; without a metadata database
        a COMMIT of writes on both is refused (0A000) and leaves nothing either."""
        for n, d in enumerate(self.all_drivers()):
            with self.subTest(d.name):
                base = K_CROSS + n * 1000
                ka, kb = self.keys_on(base, 0, 1)[0], self.keys_on(base, 1, 1)[0]
                ins = "INSERT INTO accounts (id, owner, balance) VALUES ($1, 'cross', 1)"
                with self.assertRaises(_Rollback):
                    with d.transaction():
                        d.q(ins, [ka])
                        d.q(ins, [kb])  # the transaction takes s1 in
                        self.assertEqual(d.q("SELECT owner FROM accounts WHERE id = $1", [kb]),
                                         [("cross",)])
                        raise _Rollback
                self.assert_placement(base, base + 999, {}, who=d.name)
                # The other order (by literal), rolled back: nothing anywhere.
                with self.assertRaises(_Rollback):
                    with d.transaction():
                        d.q(f"INSERT INTO accounts (id, owner, balance) VALUES ({kb}, 'cross', 1)")
                        d.q(f"UPDATE accounts SET balance = 9 WHERE id = {ka}")
                        raise _Rollback
                self.assert_placement(base, base + 999, {}, who=d.name)
                # This suite's proxy has no metadata database, so no two-phase commit: a COMMIT
                # of writes on two shards is refused, and nothing is left anywhere.
                with self.assertRaises(d.Error) as cm:
                    with d.transaction():
                        d.q(ins, [ka])
                        d.q(ins, [kb])
                self.assertEqual(d.sqlstate(cm.exception), "0A000", str(cm.exception))
                self.assert_placement(base, base + 999, {}, who=d.name)
                d.q(ins, [ka])
                d.q(ins, [kb])
                self.assert_placement(base, base + 999, {ka: ("cross", 1), kb: ("cross", 1)}, who=d.name)

    # ------------------------------------------------------------------ pooling

    def test_asyncpg_prepared_statements_survive_pooling(self):
        nconn, nq, base = 8, 200, K_POOL_ASYNCPG
        keys = self.pick_keys(base, 64)
        d = self.driver(AsyncpgDriver, self.proxy.dsn())
        for key in keys:
            d.q("INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, 0)", [key, f"o{key}"])
        self.cluster.wait_replicas_caught_up()
        texts = ["SELECT id, owner, pg_backend_pid() FROM accounts WHERE id = $1",
                 "UPDATE accounts SET balance = balance + 1 WHERE id = $1 RETURNING id, owner",
                 "SELECT $1::bigint * 2, pg_backend_pid()",
                 "SELECT owner, balance >= 0 FROM accounts WHERE id = $1 FOR SHARE"]
        dsn = self.proxy.dsn()

        async def worker(c):
            conn = await asyncpg.connect(dsn, timeout=10, command_timeout=30)
            try:
                # Prepared in a different order on each connection, so asyncpg's statement names
                # (__asyncpg_stmt_N__) stand for different texts on different connections.
                order = texts[c % 4:] + texts[:c % 4]
                stmts = {t: await conn.prepare(t) for t in order}
                mine = keys[c * 8:(c + 1) * 8]  # updated only by this connection
                pids, updates = set(), {}
                for i in range(nq):
                    t = texts[i % 4]
                    key = mine[i % 8] if i % 4 == 1 else keys[(c * 7 + i) % len(keys)]
                    row = await stmts[t].fetchrow(key)
                    if i % 4 == 0:
                        assert tuple(row[:2]) == (key, f"o{key}"), (c, i, t, key, row)
                        pids.add(("s", row[2]))
                    elif i % 4 == 1:
                        assert tuple(row) == (key, f"o{key}"), (c, i, t, key, row)
                        updates[key] = updates.get(key, 0) + 1
                    elif i % 4 == 2:
                        assert row[0] == 2 * key, (c, i, t, key, row)
                        pids.add(("d", row[1]))
                    else:
                        assert tuple(row) == (f"o{key}", True), (c, i, t, key, row)
                return pids, updates
            finally:
                await conn.close()

        async def main():
            return await asyncio.gather(*(worker(c) for c in range(nconn)))

        results = d.run(main())
        expected = {key: (f"o{key}", 0) for key in keys}
        for _, updates in results:
            for key, n in updates.items():
                expected[key] = (f"o{key}", n)
        self.assert_placement(base, base + 99_999, expected, who="asyncpg pooling")
        # Backends really were shared: some backend served more than one client connection.
        seen = {}
        for c, (pids, _) in enumerate(results):
            for p in pids:
                seen.setdefault(p, set()).add(c)
        self.assertTrue(any(len(cs) > 1 for cs in seen.values()),
                        f"no backend served two clients; pids per client: {[r[0] for r in results]}")

    def test_psycopg3_prepared_statements_survive_pooling(self):
        nconn, nq, base = 6, 150, K_POOL_PSYCOPG3
        keys = self.pick_keys(base, 48)
        d = self.driver(Psycopg3Driver, self.proxy.dsn())
        for key in keys:
            d.q("INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, 0)", [key, f"o{key}"])
        self.cluster.wait_replicas_caught_up()
        errors, updates, lock = [], {}, threading.Lock()

        def worker(c):
            try:
                with psycopg.connect(self.proxy.dsn(), autocommit=True, prepare_threshold=0,
                                     connect_timeout=10) as conn:
                    mine = keys[c * 8:(c + 1) * 8]
                    for i in range(nq):
                        key = keys[(c * 5 + i) % len(keys)]
                        if i % 3 == 0:
                            row = conn.execute("SELECT id, owner FROM accounts WHERE id = %s",
                                               [key], binary=bool(c % 2)).fetchone()
                            assert row == (key, f"o{key}"), (c, i, key, row)
                        elif i % 3 == 1:
                            key = mine[i % 8]
                            row = conn.execute("UPDATE accounts SET balance = balance + 1 "
                                               "WHERE id = %b RETURNING id", [key]).fetchone()
                            assert row == (key,), (c, i, key, row)
                            with lock:
                                updates[key] = updates.get(key, 0) + 1
                        else:
                            with conn.transaction():
                                row = conn.execute("SELECT owner FROM accounts WHERE id = %s",
                                                   [key]).fetchone()
                                assert row == (f"o{key}",), (c, i, key, row)
                    assert prepared_names(conn) != {}, "nothing was prepared"
            except BaseException as e:  # reported by the main thread
                errors.append((c, repr(e)))

        threads = [threading.Thread(target=worker, args=(c,)) for c in range(nconn)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        expected = {key: (f"o{key}", updates.get(key, 0)) for key in keys}
        self.assert_placement(base, base + 99_999, expected, who="psycopg3 pooling")

    def test_set_is_tracked_across_pooled_backends(self):
        dsn = self.proxy.dsn()
        a = self.driver(Psycopg2Driver, dsn)
        default_timeout = a.q("SHOW statement_timeout")[0][0]
        initial_app = a.q("SHOW application_name")[0][0]
        stop, errors, polluter_pids = threading.Event(), [], set()

        def polluter(i):
            # Other sessions set their own values on the same pooled backends, and hold backends
            # in transactions so that `a` keeps getting different ones.
            try:
                p = psycopg2.connect(dsn, connect_timeout=10)
                p.autocommit = True
                cur = p.cursor()
                cur.execute(f"SET application_name = 'polluter{i}'")
                cur.execute("SET statement_timeout = '42s'")
                while not stop.is_set():
                    cur.execute("BEGIN")
                    cur.execute("SHOW application_name")
                    assert cur.fetchone() == (f"polluter{i}",)
                    cur.execute("SELECT pg_backend_pid(), pg_sleep(0.005)")
                    polluter_pids.add(cur.fetchone()[0])
                    cur.execute("COMMIT")
                    cur.execute("SHOW application_name")
                    assert cur.fetchone() == (f"polluter{i}",)
                p.close()
            except BaseException as e:
                errors.append((i, repr(e)))

        threads = [threading.Thread(target=polluter, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        a_pids = set()
        try:
            time.sleep(0.2)
            for r in range(8):
                a.q(f"SET application_name = 'x{r}'")
                for _ in range(5):
                    self.assertEqual(a.q("SHOW application_name"), [(f"x{r}",)], f"round {r}")
                    self.assertEqual(a.q("SELECT current_setting('application_name')"), [(f"x{r}",)])
                    self.assertEqual(a.q("SHOW statement_timeout"), [(default_timeout,)],
                                     "another session's SET leaked into ours")
                    with a.transaction():
                        self.assertEqual(a.q("SHOW application_name"), [(f"x{r}",)])
                        a_pids.add(a.q("SELECT pg_backend_pid()")[0][0])
                    time.sleep(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertEqual(errors, [])
        self.assertGreater(len(a_pids), 1, "the session never moved to another backend")
        self.assertTrue(a_pids & polluter_pids, "no backend was shared with another session")
        # A rolled-back SET is undone; a committed one stays.
        with self.assertRaises(_Rollback):
            with a.transaction():
                a.q("SET application_name = 'rolled-back'")
                raise _Rollback
        self.assertEqual(a.q("SHOW application_name"), [("x7",)])
        a.q("RESET application_name")
        for _ in range(5):
            self.assertEqual(a.q("SHOW application_name"), [(initial_app,)], "after RESET")

    def test_libpq_pipeline_error_then_prepare_again(self):
        # libpq pipeline mode (through psycopg's libpq wrapper): when a statement fails, the server
        # skips everything up to the Sync, including a Parse; the application may then prepare
        # that name (or the same text under another name) again and use it.
        pq = psycopg.pq
        upd = b"UPDATE accounts SET balance = balance + 1 WHERE id = $1 RETURNING balance"
        for shard in range(self.SHARDS):
            with self.subTest(shard=shard):
                key = self.keys_on(K_PIPELINE + shard * 1000, shard, 1)[0]
                arg = [str(key).encode()]
                conn = psycopg.connect(self.proxy.dsn(), autocommit=True)
                self._drivers.append(conn)
                conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'pipe', 0)", [key])
                pg = conn.pgconn
                pg.enter_pipeline_mode()
                pg.send_query_params(b"SELECT 1 / 0 FROM accounts WHERE id = $1", arg)
                pg.send_prepare(b"p_upd", upd)
                pg.send_query_prepared(b"p_upd", arg)
                pg.pipeline_sync()
                got = []
                while not got or got[-1][0] != "PIPELINE_SYNC":
                    r = pg.get_result()
                    if r is not None:
                        got.append((pq.ExecStatus(r.status).name,
                                    (r.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode() or None))
                pg.exit_pipeline_mode()
                self.assertEqual(got, [("FATAL_ERROR", "22012"), ("PIPELINE_ABORTED", None),
                                       ("PIPELINE_ABORTED", None), ("PIPELINE_SYNC", None)])
                n = 0
                # First the same text under a new name, then the name whose Parse was skipped.
                for name in (b"p_upd2", b"p_upd"):
                    r = pg.prepare(name, upd)
                    self.assertEqual(pq.ExecStatus(r.status).name, "COMMAND_OK",
                                     f"prepare {name}: {(r.error_message or b'').decode()}")
                    for _ in range(2):
                        n += 1
                        r = pg.exec_prepared(name, arg)
                        self.assertEqual(pq.ExecStatus(r.status).name, "TUPLES_OK",
                                         f"execute {name}: {(r.error_message or b'').decode()}")
                        self.assertEqual(r.get_value(0, 0), str(n).encode())
                self.assert_placement(K_PIPELINE + shard * 1000, K_PIPELINE + shard * 1000 + 999,
                                      {key: ("pipe", n)}, who="libpq pipeline")

    def test_libpq_failed_prepare_can_be_retried(self):
        # PQprepare through psycopg's libpq wrapper: a Parse that fails leaves no statement
        # behind, so the application can prepare the same name again.
        pq = psycopg.pq
        conn = psycopg.connect(self.proxy.dsn(), autocommit=True)
        self._drivers.append(conn)
        pg = conn.pgconn
        key = self.keys_on(K_RETRY, 1, 1)[0]
        conn.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'retry', 3)", [key])

        def check(res, status, sqlstate=None):
            got = (pq.ExecStatus(res.status).name,
                   (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode() or None)
            self.assertEqual(got, (status, sqlstate), (res.error_message or b"").decode())

        check(pg.prepare(b"retry_me", b"SELEC owner FROM accounts WHERE id = $1"),
              "FATAL_ERROR", "42601")
        check(pg.prepare(b"retry_me", b"SELECT owner, balance FROM accounts WHERE id = $1 FOR SHARE"),
              "COMMAND_OK")
        res = pg.exec_prepared(b"retry_me", [str(key).encode()])
        check(res, "TUPLES_OK")
        self.assertEqual((res.get_value(0, 0), res.get_value(0, 1)), (b"retry", b"3"))
        # A Parse refused because the transaction is aborted does not create the statement either.
        check(pg.exec_(b"BEGIN"), "COMMAND_OK")
        check(pg.exec_(b"SELECT DISTINCT ON (owner) owner FROM accounts"), "FATAL_ERROR", "0A000")
        check(pg.prepare(b"in_failed_tx", b"SELECT balance FROM accounts WHERE id = $1 FOR SHARE"),
              "FATAL_ERROR", "25P02")
        check(pg.exec_(b"ROLLBACK"), "COMMAND_OK")
        check(pg.prepare(b"in_failed_tx", b"SELECT balance FROM accounts WHERE id = $1 FOR SHARE"),
              "COMMAND_OK")
        res = pg.exec_prepared(b"in_failed_tx", [str(key).encode()])
        check(res, "TUPLES_OK")
        self.assertEqual(res.get_value(0, 0), b"3")

    def test_prepared_bind_execute_sync_whole_or_in_pieces(self):
        # Bind/[Describe]/Execute/Sync of a statement prepared earlier, as pgbench -M prepared and
        # most drivers send it: in one write (the proxy's per-query path), one write per message,
        # or a few bytes at a time (the general path). Each way, rows land on their owner, text and
        # binary keys route alike, server and proxy errors come back with the session still
        # usable, and a transaction stays on its shard.
        r = Raw(self.proxy.port)
        self._drivers.append(r)
        r.login()

        def frames_of(data):
            out = []
            while data:
                n = struct.unpack("!I", data[1:5])[0] + 1
                out.append(data[:n])
                data = data[n:]
            return out

        def send(data, how):
            if how == "whole":
                r.send(data)
                return
            parts = frames_of(data) if how == "frames" else \
                [data[i:i + 3] for i in range(0, len(data), 3)]
            for part in parts:
                r.send(part)
                time.sleep(0.002)

        def parse(name, sql):
            r.send(frame(b"P", name + b"\0" + sql + b"\0" + struct.pack("!h", 0)) + frame(b"S"))
            self.assertEqual([t for t, _ in r.read_until("Z")], ["1", "Z"])

        def bes(name, params, describe=False, binary=False):
            body = name + b"\0"
            body = b"\0" + body + (struct.pack("!hh", 1, 1) if binary else struct.pack("!h", 0))
            body += struct.pack("!h", len(params))
            for p in params:
                body += struct.pack("!i", len(p)) + p
            msgs = frame(b"B", body + struct.pack("!h", 0))
            if describe:
                msgs += frame(b"D", b"P\0")
            return msgs + frame(b"E", b"\0" + struct.pack("!i", 0)) + frame(b"S")

        def run(data, how="whole"):
            send(data, how)
            got = r.read_until("Z")
            errs = [parse_error(b).get("C") for t, b in got if t == "E"]
            return [t for t, _ in got], errs, got

        parse(b"ins", b"INSERT INTO accounts (id, owner, balance) VALUES ($1, 'pieces', $2)")
        parse(b"sel", b"SELECT owner, balance FROM accounts WHERE id = $1")
        keys = self.pick_keys(K_PIECES, 6)
        expected = {}
        for i, key in enumerate(keys):
            how = ("whole", "frames", "bytes")[i % 3]
            with self.subTest(key=key, how=how):
                types, errs, _ = run(bes(b"ins", [str(key).encode(), str(i).encode()],
                                         describe=i % 2 == 1), how)
                self.assertEqual(types, ["2"] + (["n"] if i % 2 else []) + ["C", "Z"], errs)
                expected[key] = ("pieces", i)
                for binary in (False, True):
                    arg = struct.pack("!q", key) if binary else str(key).encode()
                    types, errs, got = run(bes(b"sel", [arg], describe=True, binary=binary), how)
                    self.assertEqual(types, ["2", "T", "D", "C", "Z"], errs)
                    row = got[2][1]
                    self.assertIn(b"pieces", row)
                    self.assertTrue(row.endswith(str(i).encode()), row)
        # A duplicate key (server error) and an unknown statement (proxy error): each answered,
        # then the session goes on.
        types, errs, _ = run(bes(b"ins", [str(keys[0]).encode(), b"0"]))
        self.assertEqual((types, errs), (["2", "E", "Z"], ["23505"]))
        types, errs, _ = run(bes(b"nope", [b"1"]))
        self.assertEqual((types, errs), (["E", "Z"], ["26000"]))
        # In a transaction: the second shard is taken in, and the rollback undoes both.
        tx_keys = [self.keys_on(K_PIECES + 5000, s, 1)[0] for s in range(self.SHARDS)]
        self.assertEqual(r.query("BEGIN")[-1], ("Z", b"T"))
        types, errs, got = run(bes(b"ins", [str(tx_keys[0]).encode(), b"7"]))
        self.assertEqual((types, got[-1][1]), (["2", "C", "Z"], b"T"), errs)
        types, errs, got = run(bes(b"ins", [str(tx_keys[1]).encode(), b"7"]), "frames")
        self.assertEqual((types, errs, got[-1][1]), (["2", "C", "Z"], [], b"T"))
        self.assertEqual(r.query("ROLLBACK")[-1], ("Z", b"I"))
        types, errs, _ = run(bes(b"sel", [str(keys[1]).encode()]))
        self.assertEqual(types, ["2", "D", "C", "Z"], errs)
        self.assert_placement(K_PIECES, K_PIECES + 9999, expected, who="raw Bind/Execute/Sync")

    # ------------------------------------------------------------------ cancel

    def test_cancel_psycopg2(self):
        d = self.driver(Psycopg2Driver, self.proxy.dsn())
        key = self.keys_on(K_CANCEL, 1, 1)[0]
        d.q("INSERT INTO accounts (id, owner, balance) VALUES ($1, 'cancel', 1)", [key])
        for what, in_tx, sql in (("autocommit", False, "SELECT pg_sleep(10)"),
                                 ("in a transaction", True,
                                  f"SELECT pg_sleep(10) FROM accounts WHERE id = {key}")):
            with self.subTest(what):
                timer = threading.Timer(0.5, d.conn.cancel)
                t0 = time.monotonic()
                timer.start()
                try:
                    with self.assertRaises(psycopg2.errors.QueryCanceled) as cm:
                        if in_tx:
                            with d.transaction():
                                d.q(f"UPDATE accounts SET balance = 2 WHERE id = {key}")
                                d.q(sql)
                        else:
                            d.q(sql)
                finally:
                    timer.join()
                elapsed = time.monotonic() - t0
                self.assertEqual(cm.exception.pgcode, "57014")
                self.assertLess(elapsed, 2.5, "cancel took too long")
                self.assertEqual(d.q("SELECT balance FROM accounts WHERE id = $1 FOR SHARE", [key]), [(1,)])
                self.assertEqual(d.q("SELECT 1"), [(1,)])

    def test_cancel_asyncpg_timeout(self):
        d = self.driver(AsyncpgDriver, self.proxy.dsn())
        t0 = time.monotonic()
        with self.assertRaises(asyncio.TimeoutError):
            d.run(d.conn.fetch("SELECT pg_sleep(10)", timeout=0.5))
        self.assertLess(time.monotonic() - t0, 2.5, "asyncpg's cancel on timeout took too long")
        self.assertEqual(d.q("SELECT $1::int + 1", [41]), [(42,)])


if __name__ == "__main__":
    unittest.main()
