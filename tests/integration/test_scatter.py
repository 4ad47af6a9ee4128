"""Reads of a sharded table without its shard key (issue 18, first step), against PostgreSQL.

The same rows live in a 3-shard cluster (loaded through the proxy, so each row is on its owner)
and in one plain PostgreSQL. Seeded generated queries of the shapes the proxy merges (plain
columns with WHERE filters, ORDER BY on integers, numerics, floats, dates, timestamptz, uuid and
text COLLATE "C", ASC/DESC, NULLS FIRST/LAST, LIMIT and OFFSET; and count/sum/min/max alone)
run on both through psycopg2 (the simple protocol) and must return the same columns and rows
(in the same order when the query orders them totally). The shapes it does not merge yet must
get 0A000, never a different answer: HAVING, DISTINCT ON, sum and avg of floats, ORDER BY text
without COLLATE "C", ORDER BY a column not selected. Inside a transaction block a read runs in
the transaction on every shard (it sees the transaction's own writes and keeps its snapshot).
An error on one shard reaches the client once, with PostgreSQL's SQLSTATE and the shard named
in its detail, and the session goes on.

Knobs: SCATTER_QUERIES (default 300), SCATTER_SEED (default 1).
"""
import asyncio
import os
import random
import sys
import threading
import time
import unittest
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

try:
    import psycopg2
    import psycopg2.extras
    psycopg2.extras.register_uuid()
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

N_QUERIES = int(os.environ.get("SCATTER_QUERIES", "300"))
SEED = int(os.environ.get("SCATTER_SEED", "1"))
ROWS = 1500

DDL = ("CREATE TABLE items(id bigint PRIMARY KEY, grp int, amount numeric(12,2), score float8, "
       "name text, at timestamptz, day date, tag uuid)")
COLS = ["id", "grp", "amount", "score", "name", "at", "day", "tag"]
# Sharded by the same key as items: a join on it is co-located.
NOTES_DDL = "CREATE TABLE notes(id bigint, seq int, body text, PRIMARY KEY (id, seq))"
# Columns the proxy can merge an ORDER BY on, and how to write the ORDER BY item.
SORTABLE = {"id": "id", "grp": "grp", "amount": "amount", "score": "score",
            "name": 'name COLLATE "C"', "at": "at", "day": "day", "tag": "tag"}


def make_rows(rng):
    rows = []
    base = datetime(2024, 3, 9, tzinfo=timezone.utc)
    for i in range(1, ROWS + 1):
        def maybe(v):
            return None if rng.random() < 0.08 else v
        rows.append((
            i * 7 + rng.randrange(7),                                  # id: unique
            maybe(rng.randrange(-5, 20)),
            maybe(Decimal(rng.randrange(-100000, 100000)) / 100),
            maybe(rng.choice([rng.uniform(-1e6, 1e6), 0.0, -0.0, 1e-300, float("inf")])),
            maybe(rng.choice(["", "a", "B", "b", "ä", "Zeta", "zeta", "n1", "n10", "n2"]) +
                  str(rng.randrange(50))),
            maybe(base + timedelta(minutes=rng.randrange(-100000, 100000))),
            maybe(date(rng.choice([1999, 2024, 2025]), rng.randrange(1, 13), rng.randrange(1, 29))),
            maybe(uuid.UUID(int=rng.getrandbits(128))),
        ))
    return rows


@unittest.skipUnless(os.access(harness.SHARDGATE_BIN, os.X_OK),
                     f"{harness.SHARDGATE_BIN} not built")
class ScatterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if psycopg2 is None:
            raise unittest.SkipTest("psycopg2 not installed")
        cls.cluster = harness.Cluster("scatter", shards=3, replicas=0)
        cls.addClassCleanup(cls.cluster.stop)
        cls.ref_cluster = harness.Cluster("scatterref", shards=1, replicas=0)
        cls.addClassCleanup(cls.ref_cluster.stop)
        for c in (cls.cluster, cls.ref_cluster):
            for i in range(c.shards):
                c.sql(c.primary_port(i), DDL, user="app")
                c.sql(c.primary_port(i), NOTES_DDL, user="app")
        cls.proxy = harness.Proxy(cls.cluster, tables=(("items", "id", "bigint"),
                                                       ("notes", "id", "bigint")))
        cls.addClassCleanup(cls.proxy.stop)
        cls.rows = make_rows(random.Random(SEED))
        cls.px = psycopg2.connect(cls.proxy.dsn(), connect_timeout=10)
        cls.px.autocommit = True
        cls.ref = psycopg2.connect(host="127.0.0.1", port=cls.ref_cluster.primary_port(0),
                                   user="app", password="app-secret", dbname="app",
                                   connect_timeout=10)
        cls.ref.autocommit = True
        cls.addClassCleanup(cls.px.close)
        cls.addClassCleanup(cls.ref.close)
        if psycopg is not None:
            cls.px3 = psycopg.connect(cls.proxy.dsn(), autocommit=True, connect_timeout=10)
            cls.ref3 = psycopg.connect(host="127.0.0.1", port=cls.ref_cluster.primary_port(0),
                                       user="app", password="app-secret", dbname="app",
                                       autocommit=True, connect_timeout=10)
            cls.addClassCleanup(cls.px3.close)
            cls.addClassCleanup(cls.ref3.close)
        insert = f"INSERT INTO items ({', '.join(COLS)}) VALUES ({', '.join(['%s'] * len(COLS))})"
        for conn in (cls.px, cls.ref):
            with conn.cursor() as cur:
                for r in cls.rows:
                    cur.execute(insert, r)
        notes = [(r[0], s, f"note {r[0]}.{s}") for r in cls.rows[::3]
                 for s in range(1 + r[0] % 3)]
        for conn in (cls.px, cls.ref):
            with conn.cursor() as cur:
                for nrow in notes:
                    cur.execute("INSERT INTO notes (id, seq, body) VALUES (%s, %s, %s)", nrow)
        # Every shard holds some of them.
        for i in range(cls.cluster.shards):
            n = int(cls.cluster.sql(cls.cluster.primary_port(i), "SELECT count(*) FROM items")[0][0])
            assert 0 < n < ROWS, f"shard {i} holds {n} rows"

    # How the proxy side runs queries: psycopg2 (the simple protocol), or psycopg 3 with
    # prepare=True (the extended protocol: Parse/Bind/Describe/Execute/Sync), text or binary.
    mode = "simple"
    refused = 0  # binary mode: queries the proxy refused (0A000) instead of answering

    def run_both(self, sql):
        out = []
        if self.mode == "simple":
            conns, err = (self.ref, self.px), psycopg2.Error
        else:
            conns, err = (self.ref3, self.px3), psycopg.Error
        for conn in conns:
            try:
                with conn.cursor(**({} if self.mode == "simple" else
                                    {"binary": self.mode == "binary"})) as cur:
                    if self.mode == "simple":
                        cur.execute(sql)
                    else:
                        cur.execute(sql, prepare=True)
                    out.append(("ok", [(d.name, d.type_code) for d in cur.description],
                                cur.fetchall(), cur.statusmessage))
            except err as e:
                code = e.pgcode if self.mode == "simple" else e.sqlstate
                detail = e.diag.message_detail
                out.append(("error", code, str(e), detail))
        return out

    def assert_same(self, sql, ordered):
        ref, got = self.run_both(sql)
        if self.mode == "binary" and got[0] == "error" and got[1] == "0A000" and ref[0] == "ok":
            type(self).refused += 1  # (values the merge cannot order or combine in binary)
            return
        if ref[0] == "error":  # (min(uuid) does not exist, say): the same error
            self.assertEqual(got[:2], ref[:2], f"{sql}\nreference: {ref}\nproxy: {got}")
            return
        self.assertEqual(got[0], "ok", f"{sql}\nproxy: {got}")
        self.assertEqual(got[1], ref[1], f"columns differ: {sql}")
        if ordered:
            self.assertEqual(got[2], ref[2], f"rows differ: {sql}")
        else:  # -0.0 and 0.0 are one value (a DISTINCT or GROUP BY keeps either)
            norm = lambda rows: sorted(repr(tuple(0.0 if isinstance(v, float) and v == 0 else v  # noqa: E731
                                                  for v in r)) for r in rows)
            self.assertEqual(norm(got[2]), norm(ref[2]), f"rows differ: {sql}")
        self.assertEqual(got[3], ref[3], f"command tag differs: {sql}")

    def assert_groups(self, rng, sql, groups, lead=lambda order: None):
        """A grouped (or DISTINCT) query: unordered, or ordered on every group column (a total
        order, after what lead() puts first), with LIMIT and OFFSET sometimes."""
        if rng.random() >= 0.6:
            self.assert_same(sql, False)
            return
        order = [SORTABLE[g] + rng.choice(["", " DESC", " NULLS FIRST"]) for g in groups]
        lead(order)
        sql += f" ORDER BY {', '.join(order)}"
        if rng.random() < 0.5:
            sql += f" LIMIT {rng.randrange(0, 30)}"
        if rng.random() < 0.3:
            sql += f" OFFSET {rng.randrange(0, 20)}"
        self.assert_same(sql, True)

    def assert_refused(self, sql):
        with self.px.cursor() as cur:
            with self.assertRaises(psycopg2.Error, msg=sql) as cm:
                cur.execute(sql)
        self.assertEqual(cm.exception.pgcode, "0A000", f"{sql}: {cm.exception}")
        self.assertTrue(cm.exception.diag.message_hint, f"{sql}: no hint")
        # The session goes on.
        with self.px.cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
            self.assertEqual(cur.fetchone()[0], ROWS)

    def test_generated_queries_match_postgresql(self):
        self.generated(N_QUERIES, SEED * 1000 + 7)

    @unittest.skipIf(psycopg is None, "psycopg 3 not installed")
    def test_generated_queries_through_the_extended_protocol(self):
        """The same shapes through psycopg 3 with prepare=True (Parse, Bind, Describe, Execute,
        Sync): text results must match; binary results must match or get 0A000 (the merge
        orders and combines binary integers only)."""
        try:
            type(self).mode = "text"
            self.generated(N_QUERIES // 3, SEED * 1000 + 8)
            type(self).mode = "binary"
            type(self).refused = 0
            self.generated(N_QUERIES // 3, SEED * 1000 + 9)
            print(f"\nbinary results: {self.refused} of {N_QUERIES // 3} refused (0A000)", file=sys.stderr)
            self.assertLess(self.refused, N_QUERIES // 3, "binary mode refused everything")
        finally:
            type(self).mode = "simple"

    @unittest.skipIf(asyncpg is None, "asyncpg not installed")
    def test_asyncpg_reads_across_shards(self):
        """asyncpg (prepared statements, binary results) gets what PostgreSQL answers."""
        queries = ["SELECT count(*), sum(grp), min(at), max(day) FROM items",
                   "SELECT id, grp, at FROM items WHERE grp = $1 ORDER BY at DESC, id LIMIT 7",
                   "SELECT grp, count(*), max(score) FROM items GROUP BY grp ORDER BY grp",
                   "SELECT DISTINCT grp FROM items ORDER BY 1 DESC",
                   "SELECT id, tag FROM items ORDER BY tag NULLS FIRST, id LIMIT 20 OFFSET 5"]

        async def run(port_dsn):
            conn = await asyncpg.connect(port_dsn)
            try:
                out = []
                for q in queries:
                    args = (3,) if "$1" in q else ()
                    out.append([tuple(r) for r in await conn.fetch(q, *args)])
                return out
            finally:
                await conn.close()

        ref_dsn = (f"postgresql://app:app-secret@127.0.0.1:{self.ref_cluster.primary_port(0)}/app")
        want = asyncio.run(run(ref_dsn))
        got = asyncio.run(run(self.proxy.dsn()))
        for q, w, g in zip(queries, want, got):
            self.assertEqual(g, w, q)

    def generated(self, count, seed):
        rng = random.Random(seed)
        wheres = ["", "WHERE amount > 0", "WHERE grp = 3", "WHERE name LIKE 'n1%'",
                  "WHERE score IS NULL", "WHERE id % 5 = 2", "WHERE at < '2024-03-10 02:00+01'",
                  "WHERE tag > '80000000-0000-0000-0000-000000000000'", "WHERE false"]
        ids = [r[0] for r in self.rows]
        for _ in range(4):  # keys on several shards: only those shards run it
            pick = ", ".join(str(k) for k in rng.sample(ids, rng.randrange(2, 30)) + [1, 3])
            wheres.append(f"WHERE id IN ({pick})")
            wheres.append(f"WHERE amount > 0 AND id IN ({pick})")
        shapes = {"plain": 0, "ordered": 0, "aggregate": 0, "grouped": 0, "distinct": 0}
        for n in range(count):
            where = rng.choice(wheres)
            kind = rng.choice(["plain", "ordered", "ordered", "aggregate", "grouped", "distinct"])
            shapes[kind] += 1
            with self.subTest(n=n, kind=kind):
                if kind == "aggregate":
                    items = rng.sample(["count(*)", "count(score)", "sum(amount)", "sum(grp)",
                                        "sum(id)", "min(amount)", "max(amount)", "min(score)",
                                        "max(score)", "min(at)", "max(day)", "min(tag)",
                                        "max(name)", "min(id)", "avg(amount)", "avg(grp)",
                                        "avg(id)", "avg(amount * 3) AS a3",
                                        "avg(length(name || ')('))"], rng.randrange(1, 5))
                    having = ""
                    if rng.random() < 0.3:  # one row or none
                        having = rng.choice([" HAVING count(*) > 100", " HAVING count(*) < 100",
                                             " HAVING sum(grp) IS NULL OR min(amount) < 0",
                                             " HAVING avg(grp) >= 7.5"])
                    self.assert_same(f"SELECT {', '.join(items)} FROM items {where}{having}",
                                     True)
                    continue
                if kind == "distinct":
                    cols = rng.sample(["grp", "name", "day", "amount", "tag", "score"],
                                      rng.randrange(1, 3))
                    self.assert_groups(rng, f"SELECT DISTINCT {', '.join(cols)} FROM items {where}",
                                       cols)
                    continue
                if kind == "grouped":
                    groups = rng.sample(["grp", "name", "day", "amount", "tag"], rng.randrange(1, 3))
                    items = rng.sample(["count(*)", "count(score)", "sum(amount)", "sum(grp)",
                                        "min(amount)", "max(score)", "min(at)", "max(day)",
                                        "max(name)", "min(id)", "avg(amount)", "avg(id)"],
                                       rng.randrange(1, 4))
                    listed = groups + items
                    rng.shuffle(listed)
                    numeric = [i for i in items if i != "max(name)"]  # text needs COLLATE

                    def lead(order):
                        if numeric and rng.random() < 0.5:  # an aggregate first, by position
                            order.insert(0, f"{listed.index(rng.choice(numeric)) + 1} DESC")
                    having = ""
                    if rng.random() < 0.5:
                        conds = ["count(*) > 1", "count(score) <= 2", "sum(amount) > 0",
                                 "min(amount) IS NULL", "avg(amount) < 10.5", "max(grp) >= 3",
                                 "NOT (count(*) = 1)", "sum(grp) <> 4", "2 < count(*)"]
                        conds += [f"{g} IS NOT NULL" for g in groups]
                        if "name" in groups:
                            conds.append("name = 'n15'")
                        if "grp" in groups:
                            conds.append("grp > 5")
                        picked = rng.sample(conds, rng.randrange(1, 3))
                        having = " HAVING " + rng.choice([" AND ", " OR "]).join(picked)
                    self.assert_groups(rng, f"SELECT {', '.join(listed)} FROM items {where} "
                                       f"GROUP BY {', '.join(groups)}{having}", groups, lead)
                    continue
                cols = rng.sample(COLS, rng.randrange(1, len(COLS) + 1))
                if kind == "plain":
                    limit = " LIMIT 10000" if rng.random() < 0.2 else ""
                    self.assert_same(f"SELECT {', '.join(cols)} FROM items {where}{limit}", False)
                    continue
                keys = rng.sample(cols, rng.randrange(1, min(3, len(cols)) + 1))
                if "id" not in cols:
                    cols.append("id")
                order = []
                for k in keys:
                    item = SORTABLE[k] if rng.random() < 0.8 else str(cols.index(k) + 1)
                    if item.isdigit() and k == "name":
                        item = SORTABLE[k]  # by position, text has no COLLATE "C"
                    item += rng.choice(["", " ASC", " DESC"])
                    item += rng.choice(["", "", " NULLS FIRST", " NULLS LAST"])
                    order.append(item)
                order.append("id")  # a total order: ties would be ordered either way
                tail = ""
                if rng.random() < 0.6:
                    tail += f" LIMIT {rng.randrange(0, 60)}"
                if rng.random() < 0.4:
                    tail += f" OFFSET {rng.randrange(0, 200)}"
                self.assert_same(f"SELECT {', '.join(cols)} FROM items {where} "
                                 f"ORDER BY {', '.join(order)}{tail}", True)
        self.assertTrue(all(shapes.values()), shapes)

    def test_unsupported_shapes_get_0A000(self):
        for sql in ["SELECT grp, count(*) FROM items GROUP BY grp HAVING count(*) > grp",
                    "SELECT grp, count(*) FROM items GROUP BY grp HAVING max(name) > 'a'",
                    "SELECT grp, count(*) FROM items GROUP BY grp HAVING count(DISTINCT id) > 1",
                    "SELECT count(*) FROM items GROUP BY grp",
                    "SELECT grp % 2, count(*) FROM items GROUP BY grp % 2",
                    "SELECT grp, count(*) FROM items GROUP BY ROLLUP (grp)",
                    "SELECT DISTINCT ON (grp) grp, id FROM items",
                    "SELECT DISTINCT * FROM items",
                    "SELECT avg(score) FROM items",
                    "SELECT sum(score) FROM items",
                    "SELECT count(DISTINCT grp) FROM items",
                    "SELECT id, name FROM items ORDER BY name LIMIT 5",
                    "SELECT id FROM items ORDER BY amount LIMIT 5",
                    "SELECT id FROM items ORDER BY amount + 1",
                    "SELECT count(*) + 1 FROM items",
                    "SELECT id, count(*) OVER () FROM items",
                    "SELECT id, max(grp) FROM items",
                    "SELECT * FROM items WHERE grp > (SELECT avg(grp) FROM items)"]:
            with self.subTest(sql=sql):
                self.assert_refused(sql)

    def test_user_defined_aggregate_is_refused_not_concatenated(self):
        """A user-defined aggregate looks like any function to the parser: the proxy asks a
        shard's catalog and refuses it (one row per shard would be a wrong answer), while
        ordinary functions in the list still run on every shard."""
        for i in range(self.cluster.shards):
            self.cluster.sql(self.cluster.primary_port(i),
                             "CREATE OR REPLACE AGGREGATE total_of(bigint) "
                             "(sfunc = int8pl, stype = bigint)")
        self.assert_refused("SELECT total_of(id) FROM items")
        self.assert_refused("SELECT total_of(id) FROM items WHERE grp = 3")
        self.assert_same("SELECT id, lower(name), abs(grp) FROM items ORDER BY id LIMIT 20", True)

    def test_inside_a_transaction_block_it_runs_in_the_transaction(self):
        """A read across shards in a transaction block runs in that transaction on every
        shard: it sees the transaction's own uncommitted writes, others do not; under
        REPEATABLE READ it keeps its snapshot on every shard; an error on one shard fails the
        transaction (25P02 until ROLLBACK); after a savepoint it is 0A000."""
        conn = psycopg2.connect(self.proxy.dsn(), connect_timeout=10)
        self.addCleanup(conn.close)
        new_id = 7_000_003
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # psycopg2 opened a transaction block
            cur.execute("SELECT count(*) FROM items")
            self.assertEqual(cur.fetchone()[0], ROWS)
            cur.execute("INSERT INTO items (id, grp) VALUES (%s, 99)", (new_id,))
            cur.execute("SELECT count(*), max(id) FROM items")
            self.assertEqual(cur.fetchone(), (ROWS + 1, new_id), "its own write unseen")
            with self.px.cursor() as other:  # autocommit, another session
                other.execute("SELECT count(*) FROM items")
                self.assertEqual(other.fetchone()[0], ROWS, "an uncommitted write seen")
        conn.rollback()
        self.assert_same("SELECT count(*), max(id) FROM items", True)

        conn.set_session(isolation_level="REPEATABLE READ")
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
            self.assertEqual(cur.fetchone()[0], ROWS)
            with self.px.cursor() as other:
                other.execute("INSERT INTO items (id, grp) VALUES (%s, 99)", (new_id,))
            try:
                cur.execute("SELECT count(*) FROM items")
                self.assertEqual(cur.fetchone()[0], ROWS, "the snapshot moved")
                conn.commit()
                cur.execute("SELECT count(*) FROM items")
                self.assertEqual(cur.fetchone()[0], ROWS + 1)
                conn.commit()
            finally:
                with self.px.cursor() as other:
                    other.execute("DELETE FROM items WHERE id = %s", (new_id,))
        conn.set_session(isolation_level="READ COMMITTED")

        victim = self.rows[len(self.rows) // 2][0]
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            with self.assertRaises(psycopg2.Error) as cm:
                cur.execute(f"SELECT id, 1 / (id - {victim}) FROM items ORDER BY id")
            self.assertEqual(cm.exception.pgcode, "22012")
            with self.assertRaises(psycopg2.Error) as cm:
                cur.execute("SELECT 1")
            self.assertEqual(cm.exception.pgcode, "25P02")
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute(f"SELECT id FROM items WHERE id = {victim}")  # one shard only
            cur.execute("SAVEPOINT a")
            with self.assertRaises(psycopg2.Error) as cm:
                cur.execute("SELECT count(*) FROM items")
            self.assertEqual(cm.exception.pgcode, "0A000")
        conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
            self.assertEqual(cur.fetchone()[0], ROWS)

    @unittest.skipIf(psycopg is None, "psycopg 3 not installed")
    def test_extended_protocol_inside_a_transaction_block(self):
        """psycopg 3 (prepared statements) in a transaction: a read across shards runs in the
        transaction on every shard, its own uncommitted row included."""
        new_id = 7_000_011
        with psycopg.connect(self.proxy.dsn(), connect_timeout=10) as c3:  # not autocommit
            cur = c3.cursor()
            cur.execute("SELECT count(*) FROM items", prepare=True)
            self.assertEqual(cur.fetchone()[0], ROWS)
            cur.execute("INSERT INTO items (id, grp) VALUES (%s, 99)", (new_id,), prepare=True)
            for _ in range(2):  # prepared once, run twice
                cur.execute("SELECT count(*), max(id) FROM items WHERE grp >= %s", (99,),
                            prepare=True)
                self.assertEqual(cur.fetchone(), (1, new_id))
            c3.rollback()
            cur.execute("SELECT count(*) FROM items WHERE grp >= %s", (99,), prepare=True)
            self.assertEqual(cur.fetchone()[0], 0)
            c3.rollback()

    @unittest.skipIf(psycopg is None, "psycopg 3 not installed")
    def test_limit_and_offset_as_parameters(self):
        """LIMIT $1 OFFSET $2 (what ORMs and JDBC's setMaxResults send) across shards: the values
        come from each Bind, text or binary, NULL meaning none; the rows are PostgreSQL's, a
        negative value gets PostgreSQL's own error, and a value the proxy cannot read as an
        integer (a numeric 2.5, which PostgreSQL rounds) gets 0A000, never a wrong count."""
        queries = [
            ("SELECT id, name FROM items ORDER BY id LIMIT {} OFFSET {}", True),
            ("SELECT id FROM items WHERE grp >= 0 LIMIT {} OFFSET {}", None),  # counted only
            ("SELECT grp, count(*) FROM items GROUP BY grp ORDER BY grp DESC LIMIT {} OFFSET {}",
             True),
            ("SELECT id, at FROM items ORDER BY at DESC, id LIMIT {}", True),
        ]
        values = [(7, 5), (0, 0), (None, 3), (3, None), (100_000, 2), (1, 0)]

        def run(conn, sql, args):
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, args, prepare=True)
                    return ("ok", cur.fetchall(), cur.statusmessage)
            except psycopg.Error as e:
                return ("error", e.sqlstate)

        for text, ordered in queries:
            for mark in ("%t", "%b"):  # parameters sent as text, then binary (int2/int4/int8)
                sql = text.format(*([mark] * text.count("{}")))
                for v in values:
                    args = v[:text.count("{}")]
                    with self.subTest(sql=sql, args=args):
                        want, got = run(self.ref3, sql, args), run(self.px3, sql, args)
                        self.assertEqual(got[0], "ok", got)
                        if ordered is None:  # no ORDER BY: which rows is PostgreSQL's choice
                            self.assertEqual(len(got[1]), len(want[1]))
                            self.assertEqual(len(set(got[1])), len(got[1]))
                        else:
                            self.assertEqual(got, want)
        for args, code in [((-1, 0), "2201W"), ((1, -1), "2201X")]:
            sql = "SELECT id FROM items ORDER BY id LIMIT %s OFFSET %s"
            self.assertEqual(run(self.ref3, sql, args), ("error", code))
            self.assertEqual(run(self.px3, sql, args), ("error", code))
        got = run(self.px3, "SELECT id FROM items ORDER BY id LIMIT %s", (Decimal("2.5"),))
        self.assertEqual(got, ("error", "0A000"))
        self.assertEqual(run(self.ref3, "SELECT id FROM items ORDER BY id LIMIT %s",
                             (Decimal("2.5"),))[1], [(r,) for r in sorted(x[0] for x in self.rows)[:3]])
        # The connection goes on, and a prepared statement runs again with other values.
        for n in (2, 4):
            self.assertEqual(run(self.px3, "SELECT id FROM items ORDER BY id LIMIT %s", (n,)),
                             run(self.ref3, "SELECT id FROM items ORDER BY id LIMIT %s", (n,)))

    def test_in_list_each_shard_gets_only_its_keys(self):
        """A read whose IN list has keys on several shards: each shard is sent the list with
        its own keys only (current_query() shows what each ran), and the rows are PostgreSQL's."""
        by_shard = {}
        for r in self.rows:
            by_shard.setdefault(self.proxy.locate("items", r[0]), []).append(r[0])
        self.assertGreaterEqual(len(by_shard), 2)
        picked = {s: ids[:2] for s, ids in by_shard.items()}
        keys = sorted(k for ids in picked.values() for k in ids)
        sql = f"SELECT id, current_query() FROM items WHERE id IN ({', '.join(map(str, keys))})"
        with self.px.cursor() as cur:
            cur.execute(sql + " ORDER BY id")
            got = cur.fetchall()
        self.assertEqual([r[0] for r in got], keys)
        for k, text in got:
            shard = self.proxy.locate("items", k)
            sent = text.split("IN (", 1)[1].split(")", 1)[0]
            self.assertEqual(sorted(int(x) for x in sent.split(",")), sorted(picked[shard]),
                             f"{shard} ran: {text}")
        self.assert_same(f"SELECT id, grp FROM items WHERE id IN ({', '.join(map(str, keys))}) "
                         "AND grp IS NOT NULL ORDER BY id", True)

    @unittest.skipIf(psycopg is None, "psycopg 3 not installed")
    def test_in_list_of_parameters_each_shard_gets_only_its_own(self):
        """The same with parameters (IN ($1, $2, ...), extended protocol, text and binary, and
        asyncpg): each shard's statement names only its own parameters, and the rows are
        PostgreSQL's."""
        by_shard = {}
        for r in self.rows:
            by_shard.setdefault(self.proxy.locate("items", r[0]), []).append(r[0])
        picked = {s: ids[:2] for s, ids in by_shard.items()}
        keys = sorted(k for ids in picked.values() for k in ids)
        marks = ", ".join(["%s"] * len(keys))
        for binary in (False, True):
            with self.px3.cursor(binary=binary) as cur:
                cur.execute(f"SELECT id, current_query() FROM items WHERE id IN ({marks}) ORDER BY id",
                            keys, prepare=True)
                got = cur.fetchall()
            self.assertEqual([r[0] for r in got], keys)
            for k, text in got:
                shard = self.proxy.locate("items", k)
                sent = text.split("IN (", 1)[1].split(")", 1)[0]
                self.assertEqual(len(sent.split(",")), len(picked[shard]), f"{shard} ran: {text}")
        want = self.run_both(f"SELECT id, grp, name FROM items WHERE id IN ({', '.join(map(str, keys))}) "
                             "ORDER BY id")[0]
        with self.px3.cursor(binary=True) as cur:
            cur.execute(f"SELECT id, grp, name FROM items WHERE id IN ({marks}) ORDER BY id", keys,
                        prepare=True)
            self.assertEqual(cur.fetchall(), want[2])
        if asyncpg is not None:
            async def run():
                conn = await asyncpg.connect(self.proxy.dsn())
                try:
                    q = ("SELECT id, grp, name FROM items WHERE id IN (" +
                         ", ".join(f"${i + 1}" for i in range(len(keys))) + ") ORDER BY id")
                    return [tuple(r) for r in await conn.fetch(q, *keys)]
                finally:
                    await conn.close()
            self.assertEqual(asyncio.run(run()), want[2])

    def test_distinct_on(self):
        """SELECT DISTINCT ON with an ORDER BY that starts with its columns: each shard sends
        its first row per group, the merge keeps the first of each group across shards."""
        for sql in ["SELECT DISTINCT ON (grp) grp, id, amount FROM items ORDER BY grp, id",
                    "SELECT DISTINCT ON (grp) grp, amount, id FROM items "
                    "ORDER BY grp, amount DESC NULLS LAST, id LIMIT 5 OFFSET 2",
                    "SELECT DISTINCT ON (day) day, id FROM items WHERE grp > 3 "
                    "ORDER BY day DESC, id",
                    "SELECT DISTINCT ON (1) grp, id FROM items ORDER BY 1, 2",
                    "SELECT DISTINCT ON (grp, day) grp, day, at, id FROM items "
                    "ORDER BY grp NULLS FIRST, day, at, id LIMIT 40"]:
            with self.subTest(sql=sql):
                self.assert_same(sql, True)
        self.assert_refused("SELECT DISTINCT ON (grp) grp, id FROM items ORDER BY id, grp")

    def test_co_located_joins(self):
        """Sharded tables joined on their shard keys (same key type): each shard runs the join
        on its own rows, merged as a one-table read; other joins get 0A000."""
        for sql, ordered in [
                ("SELECT i.id, n.seq, n.body FROM items i JOIN notes n ON n.id = i.id "
                 "ORDER BY i.id, n.seq", True),
                ("SELECT i.id, n.seq FROM items i LEFT JOIN notes n ON i.id = n.id "
                 "WHERE i.grp = 3 ORDER BY i.id, n.seq NULLS FIRST", True),
                ("SELECT count(*), sum(i.amount), max(n.seq) FROM items i JOIN notes n USING (id)",
                 True),
                ("SELECT i.grp, count(*), avg(n.seq) FROM items i, notes n WHERE i.id = n.id "
                 "AND n.seq > 0 GROUP BY i.grp HAVING count(*) > 2 ORDER BY i.grp", True),
                ("SELECT n.body FROM notes n JOIN items i ON i.id = n.id WHERE i.name LIKE 'n1%'",
                 False),
                ("SELECT a.id, b.id FROM items a JOIN items b ON a.id = b.id AND b.grp = a.grp "
                 "ORDER BY 1 LIMIT 20", True)]:
            with self.subTest(sql=sql):
                self.assert_same(sql, ordered)
        for sql in ["SELECT count(*) FROM items i JOIN notes n ON n.seq = i.grp",
                    "SELECT count(*) FROM items i JOIN notes n ON n.id = i.id + 1",
                    "SELECT count(*) FROM items i JOIN notes n ON n.id = i.id OR n.seq = 1",
                    "SELECT count(*) FROM items i JOIN pg_class c ON c.oid = i.id"]:
            with self.subTest(sql=sql):
                self.assert_refused(sql)

    def test_session_settings_that_change_how_values_print(self):
        """Dates are merged as DateStyle ISO prints them and floats with every digit: a session
        that changed either gets 0A000 for ORDER BY on them, and exact answers otherwise."""
        conn = psycopg2.connect(self.proxy.dsn(), connect_timeout=10)
        self.addCleanup(conn.close)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET DateStyle = 'SQL, DMY'")
            with self.assertRaises(psycopg2.Error) as cm:
                cur.execute("SELECT id, day FROM items ORDER BY day, id LIMIT 5")
            self.assertEqual(cm.exception.pgcode, "0A000")
            cur.execute("SELECT id, score FROM items ORDER BY score, id LIMIT 5")  # not a date
            cur.execute("RESET DateStyle")
            cur.execute("SET extra_float_digits = 0")
            with self.assertRaises(psycopg2.Error) as cm:
                cur.execute("SELECT id, score FROM items ORDER BY score, id LIMIT 5")
            self.assertEqual(cm.exception.pgcode, "0A000")
            cur.execute("SET extra_float_digits = 3")
            cur.execute("SELECT id, score FROM items ORDER BY score DESC, id LIMIT 50")
            got = cur.fetchall()
        with self.ref.cursor() as cur:
            cur.execute("SELECT id, score FROM items ORDER BY score DESC, id LIMIT 50")
            self.assertEqual(got, cur.fetchall())

    def test_cancel_reaches_every_shard(self):
        conn = psycopg2.connect(self.proxy.dsn(), connect_timeout=10)
        self.addCleanup(conn.close)
        conn.autocommit = True
        cur = conn.cursor()
        # About ten matching rows per shard, a second each: ten seconds without the cancel, and
        # as long if it stopped one shard only.
        timer = threading.Timer(0.5, conn.cancel)
        t0 = time.monotonic()
        timer.start()
        with self.assertRaises(psycopg2.Error) as cm:
            cur.execute("SELECT id, pg_sleep(1) FROM items WHERE id % 50 = 0")
        elapsed = time.monotonic() - t0
        timer.join()
        self.assertEqual(cm.exception.pgcode, "57014", str(cm.exception))
        self.assertLess(elapsed, 5, "the cancel should stop every shard's part, not one")
        cur.execute("SELECT count(*) FROM items")
        self.assertEqual(cur.fetchone()[0], ROWS)

    def test_an_error_on_one_shard_is_one_error_naming_it(self):
        victim = self.rows[len(self.rows) // 2][0]
        sql = f"SELECT id, 1 / (id - {victim}) FROM items ORDER BY id"
        ref, got = self.run_both(sql)
        self.assertEqual((ref[0], ref[1]), ("error", "22012"), ref)
        self.assertEqual((got[0], got[1]), ("error", "22012"), got)
        owner = self.proxy.locate("items", victim)
        self.assertIn(f'shard "{owner}"', got[3] or "", f"the detail should name {owner}: {got}")
        # The session goes on, with every shard's backend back in a usable state.
        self.assert_same("SELECT count(*), sum(amount) FROM items", True)
        self.assert_same("SELECT id, amount FROM items ORDER BY amount DESC NULLS LAST, id LIMIT 7",
                         True)


@unittest.skipUnless(os.access(harness.SHARDGATE_BIN, os.X_OK),
                     f"{harness.SHARDGATE_BIN} not built")
class ScatterDeadShardTest(unittest.TestCase):
    """A shard that dies: a read across shards gets one error naming it (08xxx, or 57P01 from the
    dying backend), the session
    and the other shard's keys keep working, and once the shard is back the read works again."""

    @classmethod
    def setUpClass(cls):
        if psycopg2 is None:
            raise unittest.SkipTest("psycopg2 not installed")
        cls.cluster = harness.Cluster("scatterdead", shards=2, replicas=0)
        cls.addClassCleanup(cls.cluster.stop)
        for i in range(2):
            cls.cluster.sql(cls.cluster.primary_port(i), harness.ACCOUNTS_DDL, user="app")
        cls.proxy = harness.Proxy(cls.cluster)
        cls.addClassCleanup(cls.proxy.stop)

    def test_dead_shard(self):
        conn = psycopg2.connect(self.proxy.dsn(), connect_timeout=10)
        self.addCleanup(conn.close)
        conn.autocommit = True
        cur = conn.cursor()
        for k in range(1, 101):
            cur.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'd', %s)", (k, k))
        cur.execute("SELECT count(*), sum(balance) FROM accounts")  # backends pooled on both
        self.assertEqual(cur.fetchone(), (100, 5050))
        on_s0 = next(k for k in range(1, 101) if self.proxy.locate("accounts", k) == "s0")
        # The test servers commit asynchronously: flush the WAL, or the crash loses rows.
        self.cluster.sql(self.cluster.primary_port(1), "CHECKPOINT")
        self.cluster.kill9(self.cluster.primary_port(1))
        self.addCleanup(self.cluster.restart, self.cluster.primary_port(1))
        with self.assertRaises(psycopg2.Error) as cm:
            cur.execute("SELECT id FROM accounts ORDER BY balance DESC LIMIT 5")
        e = cm.exception
        # 08006 from the proxy (connection lost), or the dying backend's own 57P01.
        self.assertTrue((e.pgcode or "").startswith(("08", "57P")), f"{e.pgcode}: {e}")
        self.assertIn("s1", f"{e} {e.diag.message_detail}", "the error should name the shard")
        cur.execute("SELECT balance FROM accounts WHERE id = %s", (on_s0,))
        self.assertEqual(cur.fetchone(), (on_s0,), "the session and s0 go on")
        self.cluster.restart(self.cluster.primary_port(1))
        deadline, last = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            try:
                cur.execute("SELECT count(*), sum(balance) FROM accounts")
                self.assertEqual(cur.fetchone(), (100, 5050))
                return
            except psycopg2.Error as err:  # banned for a while, then retried
                last = err
                time.sleep(0.5)
        self.fail(f"the read across shards did not work again after the restart: {last}")


if __name__ == "__main__":
    unittest.main()
