"""Routing end to end: rows written through the proxy land on exactly the shard `--locate` names,
whichever way the key is written (literal, psycopg2 parameter, text or binary wire parameter);
DDL reaches every primary; non-sharded tables live on the default shard; cross-shard multi-row
INSERTs without a metadata database (no two-phase commit) are refused without side effects. Checked with direct queries on each shard's primary."""

import asyncio
import os
import random
import unittest
import uuid
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import psycopg
import psycopg2
import psycopg2.extras

import harness
from harness import SHARDGATE_BIN, ClusterTestCase, Proxy

TABLES = (("accounts", "id", "bigint"), ("users", "name", "text"), ("events", "uid", "uuid"))
EXTRA_DDL = ("CREATE TABLE IF NOT EXISTS users(name text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);"
             "CREATE TABLE IF NOT EXISTS events(uid uuid PRIMARY KEY, payload text,"
             " n bigint NOT NULL DEFAULT 0);"
             "CREATE TABLE IF NOT EXISTS notes(id int PRIMARY KEY, body text)")

psycopg2.extras.register_uuid()


def start_proxy(cluster, proxy_keys="", **kw):
    """harness.Proxy with extra keys (raw TOML lines) in its [proxy] table."""
    return Proxy(cluster, proxy_options=proxy_keys or None, **kw)


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def e_str(s):
    """An E'' literal (tab, newline, backslash and quote escaped)."""
    return "E'" + (s.replace("\\", "\\\\").replace("'", "\\'")
                   .replace("\t", "\\t").replace("\n", "\\n")) + "'"


@unittest.skipUnless(os.access(SHARDGATE_BIN, os.X_OK), f"{SHARDGATE_BIN} not built")
class RoutingTest(ClusterTestCase):
    SHARDS, REPLICAS = 2, 1

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.cluster
        for i in range(c.shards):
            c.sql(c.primary_port(i), EXTRA_DDL, user="app")
        cls.proxy = Proxy(c, tables=TABLES)
        cls.addClassCleanup(cls.proxy.stop)
        cls.located = {}

    def setUp(self):
        self.assertTrue(self.proxy.alive(), f"proxy died:\n{self.proxy.log()}")
        self.pg2 = psycopg2.connect(self.proxy.dsn(), connect_timeout=10)
        self.pg2.autocommit = True
        self.addCleanup(self.pg2.close)
        self.pg3 = psycopg.connect(self.proxy.dsn(), autocommit=True, connect_timeout=10)
        self.addCleanup(self.pg3.close)

    # ------------------------------------------------------------------ helpers

    def locate(self, table, keys):
        """{key: shard index} from `shardgate --locate`, cached; keys as the text --locate reads."""
        todo = [k for k in keys if (table, k) not in self.located]
        with ThreadPoolExecutor(4) as ex:
            for k, name in zip(todo, ex.map(lambda k: self.proxy.locate(table, k), todo)):
                self.assertRegex(name, r"^s\d+$", f"--locate {table} {k!r}")
                self.located[(table, k)] = int(name[1:])
        return {k: self.located[(table, k)] for k in keys}

    def count_on_primaries(self, query):
        """query's single count on each shard's primary, as ints: [s0, s1, ...]."""
        c = self.cluster
        return [int(c.sql(c.primary_port(i), query)[0][0]) for i in range(c.shards)]

    def index_count(self, name):
        return self.count_on_primaries(f"SELECT count(*) FROM pg_indexes WHERE indexname = '{name}'")

    def column_count(self, column):
        return self.count_on_primaries("SELECT count(*) FROM information_schema.columns WHERE "
                                       f"table_name = 'accounts' AND column_name = '{column}'")

    def primary_rows(self, query):
        """query's rows on each shard's primary: [set of first-column values per shard]."""
        c = self.cluster
        return [{r[0] for r in c.sql(c.primary_port(i), query)} for i in range(c.shards)]

    def assert_placement(self, table, expected, query):
        """Every key of `expected` (text keys as --locate reads them) is on exactly its located
        shard, and the shards hold no other key matching `query`'s filter."""
        where = self.locate(table, sorted(expected))
        per_shard = self.primary_rows(query)
        problems = []
        for k in expected:
            on = [i for i, keys in enumerate(per_shard) if k in keys]
            if on != [where[k]]:
                problems.append(f"{table} key {k!r}: on shards {on}, --locate says s{where[k]}")
        extra = set().union(*per_shard) - set(expected)
        if extra:
            problems.append(f"{table}: unexpected keys {sorted(extra)[:10]}")
        self.assertFalse(problems, "\n".join(problems[:20]))
        self.assertEqual(sum(map(len, per_shard)), len(expected))  # nothing lost or duplicated

    def shard_keys(self, table, candidates, shard, n):
        where = self.locate(table, candidates)
        got = [k for k in candidates if where[k] == shard][:n]
        self.assertEqual(len(got), n, f"not enough {table} keys on s{shard}")
        return got

    # ------------------------------------------------------------------ placement

    def test_bigint_rows_land_on_located_shard(self):
        rnd = random.Random(1)
        keys = {0, 1, -1, 2, 42, 32767, 32768, -32769, 2147483647, 2147483648, -2147483649,
                9223372036854775807, -9223372036854775808}
        while len(keys) < 300:
            keys.add(rnd.choice([rnd.randrange(-1000, 1000), rnd.randrange(-2**31, 2**31),
                                 rnd.randrange(-2**63, 2**63)]))
        keys = sorted(keys)
        rnd.shuffle(keys)
        cur2, bin3 = self.pg2.cursor(), self.pg3.cursor(binary=True)
        for i, k in enumerate(keys):
            m = i % 6
            if m == 0:
                cur2.execute(f"INSERT INTO accounts (id, owner, balance) VALUES ({k}, 'lit', 1)")
            elif m == 1:
                cur2.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)",
                             (k, "pg2", 1))
            elif m == 2:
                self.pg3.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, 1)",
                                 (k, "pg3-text"))
            elif m == 3:
                bin3.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, 1)",
                             (k, "pg3-binary"))
            elif m == 4:  # key as a quoted literal with a cast, not the first column
                cur2.execute(f"INSERT INTO accounts (owner, balance, id) "
                             f"VALUES ('quoted', 1, '{k}'::bigint)")
            else:  # psycopg 3 with a named prepared statement (Parse once, Bind many)
                self.pg3.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'prep', 1)",
                                 (k,), prepare=True)

        # Multi-row INSERTs whose rows share a shard are fine.
        rest = [k for k in range(10**12, 10**12 + 200)]
        multi = []
        for shard in range(self.cluster.shards):
            a = self.shard_keys("accounts", [str(k) for k in rest], shard, 6)
            cur2.execute("INSERT INTO accounts (id, owner) VALUES " +
                         ", ".join(f"({k}, 'multi')" for k in a[:3]))
            self.assertEqual(cur2.rowcount, 3)
            c3 = self.pg3.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'm'), (%s, 'm'), "
                                  "(%s, 'm')", [int(k) for k in a[3:]])
            self.assertEqual(c3.rowcount, 3)
            multi += a

        # Keyed UPDATE / DELETE reach the row (rowcount 1) and change nothing elsewhere.
        for k in keys[:20]:
            cur2.execute("UPDATE accounts SET balance = balance + 10 WHERE id = %s", (k,))
            self.assertEqual(cur2.rowcount, 1, f"UPDATE of key {k} missed its row")
        deleted = keys[20:30]
        for k in deleted:
            cur2.execute(f"DELETE FROM accounts WHERE id = {k}")
            self.assertEqual(cur2.rowcount, 1, f"DELETE of key {k} missed its row")
        cur2.execute(f"DELETE FROM accounts WHERE id IN ({keys[30]}, {keys[30]})")
        self.assertEqual(cur2.rowcount, 1)
        deleted.append(keys[30])

        expected = {str(k) for k in keys if k not in deleted} | set(multi)
        self.assert_placement("accounts", expected,
                              "SELECT id FROM accounts WHERE owner IN "
                              "('lit','pg2','pg3-text','pg3-binary','quoted','prep','multi','m')")
        c = self.cluster
        total = sum(int(c.sql(c.primary_port(i), "SELECT coalesce(sum(balance), 0) FROM accounts "
                                                  "WHERE owner IN ('lit','pg2','pg3-text','pg3-binary',"
                                                  "'quoted','prep')")[0][0])
                    for i in range(c.shards))
        self.assertEqual(total, 289 + 10 * 20)  # 300 rows of 1, minus 11 deleted, plus updates

    def test_text_rows_land_on_located_shard(self):
        rnd = random.Random(2)
        specials = ["", " ", "O'Brien", "ünïcødé", "Ωmega", "日本語", "a b", "back\\slash",
                    "tab\tkey", "new\nline", "semi;colon", "$$dollar", "🙂", "x" * 300, "NULL", "0"]
        keys = list(dict.fromkeys(specials + [
            "".join(rnd.choice("abcdefghijklmnopqrstuvwxyzÄé0123456789 -_'") for _ in range(rnd.randrange(1, 20)))
            for _ in range(120)]))
        cur2, bin3 = self.pg2.cursor(), self.pg3.cursor(binary=True)
        for i, k in enumerate(keys):
            m = i % 5
            if m == 0:
                lit = e_str(k) if ("\\" in k or "\t" in k or "\n" in k) else sql_str(k)
                cur2.execute(f"INSERT INTO users (name, n) VALUES ({lit}, 1)")
            elif m == 1:
                cur2.execute("INSERT INTO users (name, n) VALUES (%s, 1)", (k,))
            elif m == 2:
                self.pg3.execute("INSERT INTO users (name, n) VALUES (%s, 1)", (k,))
            elif m == 3:
                bin3.execute("INSERT INTO users (name, n) VALUES (%s, 1)", (k,))
            elif "$q$" not in k:
                cur2.execute(f"INSERT INTO users (n, name) VALUES (1, $q${k}$q$)")
            else:
                cur2.execute("INSERT INTO users (name, n) VALUES (%s, 1)", (k,))
        # Compared as hex so that tabs, newlines and separators survive psql's output.
        where = self.locate("users", keys)
        per_shard = self.primary_rows("SELECT encode(convert_to(name, 'UTF8'), 'hex') FROM users "
                                      "WHERE n = 1")  # n = 1: this test's rows
        problems = []
        for k in keys:
            on = [i for i, hexes in enumerate(per_shard) if k.encode().hex() in hexes]
            if on != [where[k]]:
                problems.append(f"users key {k!r}: on shards {on}, --locate says s{where[k]}")
        extra = set().union(*per_shard) - {k.encode().hex() for k in keys}
        self.assertFalse(problems, "\n".join(problems[:20]))
        self.assertFalse(extra, f"unexpected users rows: {[bytes.fromhex(h) for h in extra]}")
        self.assertEqual(sum(map(len, per_shard)), len(keys))

    def test_uuid_rows_land_on_located_shard(self):
        rnd = random.Random(3)
        keys = [uuid.UUID(int=rnd.getrandbits(128), version=4) for _ in range(120)]
        keys += [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
        cur2, bin3 = self.pg2.cursor(), self.pg3.cursor(binary=True)
        for i, u in enumerate(keys):
            m = i % 7
            if m == 0:
                cur2.execute(f"INSERT INTO events (uid, payload) VALUES ('{u}', 'lit')")
            elif m == 1:  # upper case, braces, no hyphens: uuid_in accepts all of these
                cur2.execute(f"INSERT INTO events (uid, payload) VALUES ('{str(u).upper()}'::uuid, 'up')")
            elif m == 2:
                cur2.execute(f"INSERT INTO events (payload, uid) VALUES ('brace', '{{{u}}}')")
            elif m == 3:
                cur2.execute(f"INSERT INTO events (uid, payload) VALUES ('{u.hex}', 'hex')")
            elif m == 4:
                cur2.execute("INSERT INTO events (uid, payload) VALUES (%s, 'pg2')", (u,))
            elif m == 5:
                self.pg3.execute("INSERT INTO events (uid, payload) VALUES (%s, 'pg3-text')", (u,))
            else:
                bin3.execute("INSERT INTO events (uid, payload) VALUES (%s, 'pg3-bin')", (u,))
        self.assert_placement("events", {str(u) for u in keys},
                              "SELECT uid::text FROM events WHERE payload IS NOT NULL")

    def test_key_spellings(self):
        """The same statement spelled differently routes the same; every key here lives on s1 (not
        the default shard), so a statement that fell back to the default shard would show."""
        forms = [
            "INSERT INTO ACCOUNTS (ID, OWNER) VALUES ({k}, 'spell')",
            "INSERT INTO public.accounts (id, owner) VALUES ({k}, 'spell')",
            "INSERT INTO accounts AS a (id, owner) VALUES ({k}, 'spell')",
            "INSERT INTO accounts (id, owner) VALUES (({k}), 'spell')",
            "INSERT INTO accounts (id, owner) VALUES (CAST('{k}' AS bigint), 'spell')",
            "INSERT INTO accounts (id, owner) VALUES ({k}::int8, 'spell') ON CONFLICT (id) DO NOTHING",
            "INSERT INTO accounts (id, owner) VALUES ('  {k}  ', 'spell') RETURNING id",
            "/* leading comment */ INSERT INTO accounts (\"id\", owner) VALUES ({k}, 'spell');",
            "  insert into accounts (owner, id)\n values ('spell', {k})",
            "EXPLAIN ANALYZE INSERT INTO accounts (id, owner) VALUES ({k}, 'spell')",
            "INSERT INTO accounts (id, owner) VALUES (- {n}, 'spell')",
            "INSERT INTO accounts (id, owner) VALUES (-{n}, 'spell')",
        ]
        cands = [str(k) for k in range(3 * 10**12, 3 * 10**12 + 200)]
        keys = self.shard_keys("accounts", cands, 1, len(forms))
        negs = self.shard_keys("accounts", [f"-{k}" for k in cands], 1, 2)
        cur = self.pg2.cursor()
        expected = set()
        for i, form in enumerate(forms):
            if "{n}" in form:
                k = negs.pop()
                cur.execute(form.format(n=k[1:]))
            else:
                k = keys[i]
                cur.execute(form.format(k=k))
            expected.add(k)
        # Keyed reads and writes spelled differently find those rows.
        k = keys[0]
        for q in (f"SELECT id FROM accounts WHERE id = {k} FOR UPDATE",
                  f"SELECT id FROM accounts WHERE {k} = id AND owner = 'spell' FOR SHARE",
                  f"SELECT a.id FROM accounts a WHERE a.id IN ({k}, {keys[1]}) FOR UPDATE",
                  f"UPDATE accounts SET balance = 5 WHERE accounts.id = '{k}' RETURNING id",
                  f"DELETE FROM accounts WHERE id = {keys[1]} RETURNING id"):
            cur.execute(q)
            self.assertGreaterEqual(cur.rowcount, 1, q)
        expected.discard(keys[1])
        self.assert_placement("accounts", expected, "SELECT id FROM accounts WHERE owner = 'spell'")

    # ------------------------------------------------------------------ one key, every encoding

    SAME_KEY_INTS = [5, -5, 300, 70000, -70000, 2**40 + 3, -(2**40), 2**63 - 2, -(2**63) + 1]

    def same_key_cases(self, tag):
        """(table, key column, counter column, key, key as text) for ints of every width, text
        and uuid keys, unique to this `tag`; each row inserted with a literal (counter 100)."""
        rnd = random.Random(tag)
        off = 1000 * rnd.randrange(1, 10**6)
        ints = [k + off if abs(k) < 2**62 else k - (off if k > 0 else -off) for k in self.SAME_KEY_INTS]
        ints[:3] = [k % 30000 for k in ints[:3]]  # small enough for an int2 parameter
        texts = [f"{tag}-same-key", f"{tag}-ß-umlaut-ä", f"{tag}-quote'd", f"{tag}Zz"]
        uuids = [uuid.UUID(int=rnd.getrandbits(128), version=4) for _ in range(4)]
        cases = ([("accounts", "id", "balance", k, str(k)) for k in ints] +
                 [("users", "name", "n", k, k) for k in texts] +
                 [("events", "uid", "n", k, str(k)) for k in uuids])
        cur = self.pg2.cursor()
        for table, col, n, k, text in cases:
            lit = k if isinstance(k, int) else sql_str(text)
            # Counters start at 100, apart from the other tests' rows (which have n = 1).
            cur.execute(f"INSERT INTO {table} ({col}, {n}) VALUES ({lit}, 100)")
        return cases

    def assert_counters(self, cases, want):
        """Each case's row is on its located shard only, with counter == want."""
        c = self.cluster
        for table, col, n, k, text in cases:
            shard = self.locate(table, [text])[text]
            for i in range(c.shards):
                rows = c.sql(c.primary_port(i), f"SELECT {n} FROM {table} WHERE {col} = {sql_str(text)}")
                self.assertEqual(rows, [[str(100 + want)]] if i == shard else [],
                                 f"{table} key {k!r} on s{i} (located on s{shard})")

    def test_same_key_literal_text_and_binary_parameters(self):
        """Each key is inserted with a literal, then updated with a psycopg2 parameter, a psycopg 3
        text parameter and a psycopg 3 binary parameter: each UPDATE must find the row (rowcount
        1), so all encodings route to the shard --locate names."""
        cases = self.same_key_cases("pg")
        cur2, bin3 = self.pg2.cursor(), self.pg3.cursor(binary=True)
        for table, col, n, k, _ in cases:
            q = f"UPDATE {table} SET {n} = {n} + 1 WHERE {col} = %s"
            cur2.execute(q, (k,))
            self.assertEqual(cur2.rowcount, 1, f"psycopg2 parameter for {table} key {k!r}")
            self.assertEqual(self.pg3.execute(q, (k,)).rowcount, 1,
                             f"psycopg 3 text parameter for {table} key {k!r}")
            self.assertEqual(bin3.execute(q, (k,)).rowcount, 1,
                             f"psycopg 3 binary parameter for {table} key {k!r}")
        self.assert_counters(cases, 3)

    def test_same_key_asyncpg_binary_parameters(self):
        """asyncpg prepares each statement with Parse/Describe/Flush (no Sync) and then sends
        Bind/Execute/Sync with binary parameters; the keys must route as their literals did."""
        cases = self.same_key_cases("apg")

        async def run():
            conn = await asyncpg.connect(self.proxy.dsn(), timeout=10)
            problems = []
            try:
                for i, (table, col, n, k, _) in enumerate(cases):
                    # A text of its own per key, so that every key's first use is a fresh prepare.
                    q = f"UPDATE {table} SET {n} = {n} + 1 WHERE {col} = $1 /* case {i} */"
                    for attempt in (1, 2):  # first use prepares the statement; second reuses it
                        try:
                            tag = await conn.execute(q, k)
                        except asyncpg.PostgresError as e:
                            tag = f"{e.sqlstate}: {str(e).splitlines()[0]}"
                        if tag != "UPDATE 1":
                            problems.append(f"{table} key {k!r} (use {attempt}): {tag}")
            finally:
                await conn.close()
            return problems

        problems = asyncio.run(run())
        self.assertFalse(problems, "\n".join(problems))
        self.assert_counters(cases, 2)

    # ------------------------------------------------------------------ DDL

    def test_ddl_reaches_every_primary(self):
        cur = self.pg2.cursor()
        cur.execute("CREATE INDEX ON accounts(owner)")
        cur.execute("ALTER TABLE accounts ADD COLUMN x int")
        c = self.cluster
        for i in range(c.shards):
            p = c.primary_port(i)
            self.assertEqual(c.sql(p, "SELECT count(*) FROM pg_indexes WHERE tablename = 'accounts' "
                                      "AND indexdef LIKE '%(owner)'"), [["1"]], f"index on s{i}")
            self.assertEqual(c.sql(p, "SELECT data_type FROM information_schema.columns WHERE "
                                      "table_name = 'accounts' AND column_name = 'x'"),
                             [["integer"]], f"column x on s{i}")
        # The new column is usable through the proxy right away.
        cur.execute("INSERT INTO accounts (id, owner, x) VALUES (777000777, 'ddl', 7)")
        cur.execute("UPDATE accounts SET x = x + 1 WHERE id = 777000777")
        self.assertEqual(cur.rowcount, 1)

    def test_ddl_failing_on_one_shard_names_it(self):
        c = self.cluster
        c.sql(c.primary_port(1), "CREATE INDEX accounts_balance_idx ON accounts(balance)", user="app")
        cur = self.pg2.cursor()
        with self.assertRaises(psycopg2.Error) as cm:
            cur.execute("CREATE INDEX accounts_balance_idx ON accounts(balance)")
        e = cm.exception
        msg = e.diag.message_primary or ""
        self.assertEqual(e.pgcode, "42P07", msg)  # duplicate_table, as s1 reported it
        self.assertIn("s1", msg)
        self.assertIn("already exists", msg)
        self.assertNotRegex(msg, r"\bs0\b", "only s1 failed")
        self.assertIn("s0", e.diag.message_hint or "", "the hint says where it was applied")
        # Applied on s0 (the shards now agree), and the session is still usable.
        self.assertEqual(self.index_count("accounts_balance_idx"), [1] * c.shards)
        cur.execute("SELECT 1")
        self.assertEqual(cur.fetchall(), [(1,)])

    def test_ddl_through_extended_protocol_reaches_every_primary(self):
        # JDBC and migration tools send DDL as Parse/Bind/Describe/Execute/Sync. libpq's
        # PQexecParams does the same; psycopg's prepare=True adds a named Parse.
        pq = psycopg.pq
        pg = self.pg3.pgconn
        r = pg.exec_params(b"CREATE INDEX accounts_ext_owner_idx ON accounts(owner, id)", None)
        self.assertEqual(pq.ExecStatus(r.status).name, "COMMAND_OK", (r.error_message or b"").decode())
        self.assertEqual(r.command_status, b"CREATE INDEX")
        self.pg3.execute("ALTER TABLE accounts ADD COLUMN ext_col text", prepare=True)
        shards = self.cluster.shards
        self.assertEqual(self.index_count("accounts_ext_owner_idx"), [1] * shards)
        self.assertEqual(self.column_count("ext_col"), [1] * shards)
        # The same connection goes on with routed statements.
        self.pg3.execute("INSERT INTO accounts (id, owner, ext_col) VALUES (%s, 'ext', 'x')", [777000778])
        self.assertEqual(self.pg3.execute("SELECT ext_col FROM accounts WHERE id = %s",
                                          [777000778]).fetchall(), [("x",)])

    def test_ddl_through_extended_protocol_failing_on_one_shard_names_it(self):
        c = self.cluster
        c.sql(c.primary_port(0), "CREATE INDEX accounts_ext_dup_idx ON accounts(balance, id)", user="app")
        pq = psycopg.pq
        pg = self.pg3.pgconn
        r = pg.exec_params(b"CREATE INDEX accounts_ext_dup_idx ON accounts(balance, id)", None)
        self.assertEqual(pq.ExecStatus(r.status).name, "FATAL_ERROR")
        self.assertEqual(r.error_field(pq.DiagnosticField.SQLSTATE), b"42P07")
        msg = (r.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
        self.assertIn("s0", msg)
        self.assertNotRegex(msg, r"\bs1\b", "only s0 failed")
        self.assertIn("s1", (r.error_field(pq.DiagnosticField.MESSAGE_HINT) or b"").decode())
        self.assertEqual(self.index_count("accounts_ext_dup_idx"), [1] * c.shards)
        self.assertEqual(self.pg3.execute("SELECT 1").fetchall(), [(1,)])

    def test_ddl_through_extended_protocol_in_a_transaction_is_refused(self):
        conn = psycopg.connect(self.proxy.dsn(), connect_timeout=10)  # not autocommit
        self.addCleanup(conn.close)
        with self.assertRaises(psycopg.Error) as cm:
            conn.execute("CREATE INDEX accounts_ext_tx_idx ON accounts(owner)", prepare=True)
        self.assertEqual(cm.exception.sqlstate, "0A000", str(cm.exception))
        conn.rollback()
        self.assertEqual(self.index_count("accounts_ext_tx_idx"), [0] * self.cluster.shards)
        self.assertEqual(conn.execute("SELECT 1").fetchall(), [(1,)])

    # ------------------------------------------------------------------ non-sharded tables

    def test_non_sharded_table_goes_to_default_shard(self):
        cur = self.pg2.cursor()
        for i in range(20):
            cur.execute("INSERT INTO notes (id, body) VALUES (%s, %s)", (i, f"note {i}"))
        for i in range(20, 30):
            self.pg3.execute("INSERT INTO notes (id, body) VALUES (%s, %s)", (i, f"note {i}"))
        cur.execute("UPDATE notes SET body = body || '!' WHERE id < 5")
        self.assertEqual(cur.rowcount, 5)
        c = self.cluster
        self.assertEqual(self.primary_rows("SELECT count(*) FROM notes"), [{"30"}, {"0"}])
        # A statement on no table at all also runs on s0 (its primary or its replica).
        cur.execute("SELECT inet_server_port()")
        self.assertIn(cur.fetchone()[0], (c.primary_port(0), c.replica_port(0, 0)))

        # default_shard moves them.
        other = start_proxy(c, 'default_shard = "s1"', tables=TABLES)
        self.addCleanup(other.stop)
        with psycopg2.connect(other.dsn(), connect_timeout=10) as conn2:
            with conn2.cursor() as cur2:
                cur2.execute("INSERT INTO notes (id, body) VALUES (1000, 'on s1')")
        conn2.close()
        self.assertEqual(self.primary_rows("SELECT id FROM notes WHERE id >= 1000"), [set(), {"1000"}])

    # ------------------------------------------------------------------ cross-shard INSERT

    def test_cross_shard_multi_row_insert_is_atomic(self):
        """This suite's proxy has no metadata database, so no two-phase commit: a multi-row
        INSERT whose rows land on two shards is refused in autocommit (the simple protocol cuts
        it per shard, then cannot commit it atomically; the extended protocol refuses it), and
        leaves nothing. (test_transactions.py shows it committed with a metadata database.)"""
        cands = [str(k) for k in range(5 * 10**12, 5 * 10**12 + 100)]
        a = self.shard_keys("accounts", cands, 0, 2)
        b = self.shard_keys("accounts", cands, 1, 2)
        cur = self.pg2.cursor()
        with self.assertRaises(psycopg2.Error) as cm:
            cur.execute(f"INSERT INTO accounts (id, owner) VALUES ({a[0]}, 'x'), ({b[0]}, 'y')")
        self.assertEqual(cm.exception.pgcode, "0A000", str(cm.exception))
        with self.assertRaises(psycopg.Error) as cm3:
            self.pg3.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'x'), (%s, 'y')",
                             (int(a[1]), int(b[1])))
        self.assertEqual(cm3.exception.sqlstate, "0A000", str(cm3.exception))
        # Nothing anywhere, and both sessions still work.
        ids = ", ".join(a + b)
        self.assertEqual(self.primary_rows(f"SELECT count(*) FROM accounts WHERE id IN ({ids})"),
                         [{"0"}, {"0"}])
        cur.execute("SELECT 1")
        self.assertEqual(self.pg3.execute("SELECT 2").fetchone(), (2,))
        # Inside an explicit transaction the rows go in on both shards (the transaction takes
        # s1 in), and rolling back leaves nothing.
        self.pg2.autocommit = False
        cur.execute(f"INSERT INTO accounts (id, owner) VALUES ({a[0]}, 'tx')")
        cur.execute(f"INSERT INTO accounts (id, owner) VALUES ({a[1]}, 'x'), ({b[1]}, 'y')")
        self.assertEqual(cur.statusmessage, "INSERT 0 2")
        self.pg2.rollback()
        self.pg2.autocommit = True
        self.assertEqual(self.primary_rows(f"SELECT count(*) FROM accounts WHERE id IN ({ids})"),
                         [{"0"}, {"0"}])


if __name__ == "__main__":
    unittest.main()
