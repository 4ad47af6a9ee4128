"""A driver matrix through ShardGate: node-postgres, ruby-pg and pgx, each run unchanged.

One cluster (2 shards, no replicas: every read sees the writes before it, so a driver program can
check its own writes without waiting for replay) and one proxy in transaction pooling mode, with
three sharded tables keyed by bigint, text and uuid (drv_int, drv_text, drv_uuid, all
`(k, v text, n bigint)`) and one bigint-keyed table per driver for reads across shards
(drv_scan_<driver>, `(id, v, n)`).

Each driver's program (drivers/node/checks.js, drivers/ruby/checks.rb, drivers/go/checks.go)
reads jobs as JSON on stdin, runs each on a new connection and prints one JSON line per job: the
steps it saw (rows as strings, row counts, expected errors as ["error", SQLSTATE]). This file
picks the keys (`shardgate --locate`), says what every step must give, and checks:

- login with SCRAM-SHA-256 (the proxy offers only that mechanism; node-postgres and pgx report
  the SASL exchange they saw, ruby-pg that a password was used), and a wrong password is 28P01;
- CRUD by key on each key type, keys alternating s0/s1: INSERT ... RETURNING, SELECT, UPDATE,
  DELETE, with parameters (pgx sends int8 and uuid keys in binary);
- a server-side prepared statement run 20 times, across both shards, in and out of transactions
  (node-postgres: a named query config; ruby-pg: prepare + exec_prepared; pgx: its statement
  cache, which prepares on first use);
- transactions that commit and that roll back, on each shard, with the driver's own API;
- a unique violation, then more work on the same connection, and in a transaction 23505, 25P02
  for the next statement (on the other shard's key), ROLLBACK, more work;
- batches on one shard's keys (ruby-pg pipeline mode, pgx.Batch), also a transaction inside a
  batch; node-postgres has no batch API;
- reads without a key over a whole table: count(*) and sum, ORDER BY id LIMIT 10 and DESC LIMIT 3,
  as simple queries and through the extended protocol (a parameter in WHERE, and LIMIT $2),
  against the rows the job inserted;
- SELECT shardgate.next_id() (the proxy answers it): 10 rising positive IDs, as simple queries
  and through the extended protocol (a named statement in node-postgres and pgx, binary in pgx);
- afterwards, on each shard's primary directly: every row is on the shard --locate names, with
  the right values, and nowhere else; rolled-back and deleted rows are nowhere.

Every single-shard scenario also runs against s1's primary directly (keys s1 owns) and must give
exactly the expected steps there, so an expectation PostgreSQL itself disagrees with is a test
bug, not a proxy bug. A batch with keys on two shards before one Sync (ruby-pg pipeline mode,
pgx.Batch) runs as one transaction across both (the proxy has a metadata database for its
two-phase commit): both rows written, each on its owner.

A driver is skipped, with the reason, only when its toolchain is missing: node and npm (the
package-lock.json pins pg; `npm ci` runs here when drivers/node/node_modules is missing), ruby
with ruby-pg, go with golang-github-jackc-pgx-v4-dev (built offline in GOPATH mode; the Go
module proxy is not used). scripts/setup.sh installs them. About 10 s.

Run with Debian's python: /usr/bin/python3 -m unittest tests/integration/test_drivers.py -v
"""

import faulthandler
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import unittest
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

HERE = Path(__file__).resolve().parent / "drivers"
NODE_DIR, RUBY_DIR, GO_DIR = HERE / "node", HERE / "ruby", HERE / "go"
OUT_DIR = harness.BUILD_DIR / "driver-checks"
GOCODE = Path("/usr/share/gocode")
TEST_TIMEOUT = 150  # seconds per test; a hang dumps every thread's stack and ends the run
PROGRAM_TIMEOUT = 120

DRIVERS = ("node", "ruby", "go")
KEY_TABLES = (("drv_int", "bigint", "int"), ("drv_text", "text", "text"),
              ("drv_uuid", "uuid", "uuid"))
SCAN = {d: f"drv_scan_{d}" for d in DRIVERS}
DDL = "".join(f"CREATE TABLE {t}(k {ty} PRIMARY KEY, v text NOT NULL, n bigint NOT NULL);"
              for t, ty, _ in KEY_TABLES) + "".join(
    f"CREATE TABLE {t}(id bigint PRIMARY KEY, v text NOT NULL, n bigint NOT NULL);"
    for t in SCAN.values())
TABLES = tuple((t, "k", ty) for t, ty, _ in KEY_TABLES) + tuple(
    (t, "id", "bigint") for t in SCAN.values())
INT_BASE = {"node": 20_000_000, "ruby": 21_000_000, "go": 22_000_000}
DIRECT_SHARD = 1  # the plain PostgreSQL the single-shard scenarios are compared with


def _run_quiet(cmd, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 1, "", str(e))


def _missing(driver):
    """Why driver's program cannot run here, or None."""
    if driver == "node":
        missing = [t for t in ("node", "npm") if not shutil.which(t)]
        if missing:
            return f"needs {' and '.join(missing)} (scripts/setup.sh installs them)"
        return None
    if driver == "ruby":
        if not shutil.which("ruby"):
            return "needs ruby and ruby-pg (scripts/setup.sh installs them)"
        p = _run_quiet(["ruby", "-e", 'require "pg"'])
        if p.returncode != 0:
            return f"ruby cannot load pg ({p.stderr.strip()}): install ruby-pg"
        return None
    if not shutil.which("go"):
        return "needs go (Debian's golang-go; scripts/setup.sh installs it)"
    if not (GOCODE / "src/github.com/jackc/pgx/v4").is_dir():
        return (f"needs pgx v4 under {GOCODE} (golang-github-jackc-pgx-v4-dev; scripts/setup.sh "
                "installs it)")
    return None


def _dpkg_version(pkg):
    p = _run_quiet(["dpkg-query", "-W", "-f=${Version}", pkg])
    return p.stdout.strip() if p.returncode == 0 else "unknown"


def _program(driver):
    """The command that runs driver's checks, after installing or building what it needs."""
    if driver == "node":
        if not (NODE_DIR / "node_modules").is_dir():
            p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                               capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                raise RuntimeError(f"npm ci in {NODE_DIR} failed:\n{p.stdout}{p.stderr}")
        return ["node", str(NODE_DIR / "checks.js")]
    if driver == "ruby":
        return ["ruby", str(RUBY_DIR / "checks.rb")]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    binary = OUT_DIR / "go-checks"
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOCODE), GOFLAGS="", GOPROXY="off",
               GOCACHE=str(OUT_DIR / "go-cache"))
    version = _dpkg_version("golang-github-jackc-pgx-v4-dev")
    p = subprocess.run(["go", "build", "-ldflags", f"-X main.pgxVersion={version}", "-o",
                        str(binary), str(GO_DIR / "checks.go")],
                       capture_output=True, text=True, timeout=300, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"go build of {GO_DIR / 'checks.go'} failed:\n{p.stdout}{p.stderr}")
    return [str(binary)]


def _dsn(port, password="app-secret"):
    return f"postgresql://app:{password}@127.0.0.1:{port}/app?connect_timeout=10"


# ------------------------------------------------------------------------ expected steps
# What each scenario must give, as a function of its arguments. The programs run the same SQL
# in the same order (see their comments); values are strings, counts ints.

def crud_value(tag, i):
    return f"{tag}-{i}-ü€"


def expect_login(a):
    return [["select_1", [["1"]]], ["wrong_password", ["error", "28P01"]]]


def expect_crud(a):
    steps = []
    for t in a["tables"]:
        name, keys = t["table"], t["keys"]
        for i, k in enumerate(keys):
            steps.append([f"{name}.insert.{i}", [[k, crud_value(a["tag"], i), str(7 * i + 1)]]])
        for i, k in enumerate(keys):
            steps.append([f"{name}.select.{i}", [[k, crud_value(a["tag"], i), str(7 * i + 1)]]])
        steps += [[f"{name}.update.{i}", 1] for i in range(len(keys))]
        steps += [[f"{name}.delete.{i}", 1] for i in (0, 1)]
        for i, k in enumerate(keys):
            steps.append([f"{name}.after.{i}", [] if i < 2 else
                          [[k, crud_value(a["tag"], i) + "!", str(7 * i + 11)]]])
    return steps


def rows_crud(a):
    return {t["table"]: {k: (crud_value(a["tag"], i) + "!", 7 * i + 11) if i >= 2 else None
                         for i, k in enumerate(t["keys"])} for t in a["tables"]}


def expect_prepared(a):
    return [["insert", [1, 1]], ["upd_loop", [str(i // 2 + 1) for i in range(12)]],
            ["sel_loop", ["6"] * 12], ["tx_upd", ["7", "8", "9", "10", "11"]], ["tx_sel", "11"],
            ["commit", "ok"], ["tx2_upd", ["7", "8", "9"]], ["rollback", "ok"],
            ["sel_after_rollback", "6"]]


def rows_prepared(a):
    return {"drv_int": {a["keys"][0]: (a["tag"], 11), a["keys"][1]: (a["tag"], 6)}}


def expect_tx(a):
    steps, tag = [], a["tag"]
    for j in range(2):
        steps += [[f"commit{j}.insert", 1], [f"commit{j}.update", [["2"]]],
                  [f"commit{j}.select", [[tag, "2"]]], [f"commit{j}.commit", "ok"],
                  [f"commit{j}.after", [[tag, "2"]]]]
    for j in range(2):
        steps += [[f"rollback{j}.insert", 1], [f"rollback{j}.select", [[tag, "1"]]],
                  [f"rollback{j}.rollback", "ok"], [f"rollback{j}.after", []]]
    return steps


def rows_tx(a):
    c0, c1, r0, r1 = a["keys"]
    return {"drv_int": {c0: (a["tag"], 2), c1: (a["tag"], 2), r0: None, r1: None}}


def expect_error(a):
    tag = a["tag"]
    return [["insert_a", 1], ["duplicate_a", ["error", "23505"]], ["select_a", [[tag, "1"]]],
            ["insert_b", 1], ["tx.duplicate_b", ["error", "23505"]],
            ["tx.select_a", ["error", "25P02"]], ["tx.rollback", "ok"],
            ["select_b", [[tag, "1"]]], ["update_a", 1]]


def rows_error(a):
    return {"drv_int": {a["keys"][0]: (a["tag"], 2), a["keys"][1]: (a["tag"], 1)}}


def expect_batch(a):
    tag = a["tag"]
    return [["batch1", [1, 1, 1, 1, [["4", "10"]]]], ["batch2", [[["101"]], [[tag, "2"]], 1]],
            ["batch3", [1, [["4"]]]], ["batch3.commit", "ok"]]


def rows_batch(a):
    k, tag = a["keys"], a["tag"]
    return {"drv_int": {k[0]: (tag, 101), k[1]: (tag, 2), k[2]: (tag, 3), k[3]: None,
                        k[4]: (tag, 5)}}


def rows_batch_cross(a):
    return {"drv_int": {k: (a["tag"], 1) for k in a["keys"]}}


def expect_scatter(a):
    rows = [[i, v, str(n)] for i, v, n in a["rows"]]
    ordered = sorted(rows, key=lambda r: int(r[0]))
    return [["insert", [1] * len(rows)],
            ["count_simple", [[str(len(rows)), str(sum(int(r[2]) for r in rows))]]],
            ["top_simple", ordered[:10]], ["count_param", [[str(len(rows))]]],
            ["top_param", ordered[:10]], ["bottom_param", ordered[::-1][:3]]]


def rows_scatter(a):
    return {a["table"]: {i: (v, n) for i, v, n in a["rows"]}}


EXPECT = {"login": expect_login, "crud": expect_crud, "prepared": expect_prepared,
          "tx": expect_tx, "error": expect_error, "batch": expect_batch,
          "scatter": expect_scatter,
          "next_id": lambda args: [["ids", 10], ["rising", "ok"]]}
ROWS = {"crud": rows_crud, "prepared": rows_prepared, "tx": rows_tx, "error": rows_error,
        "batch": rows_batch, "batch_cross": rows_batch_cross, "scatter": rows_scatter}
BATCHES = {"ruby", "go"}  # node-postgres has no batch or pipeline API


@unittest.skipUnless(os.access(harness.SHARDGATE_BIN, os.X_OK), f"{harness.SHARDGATE_BIN} not built")
class DriversTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 0
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for i in range(cls.SHARDS):
            cls.cluster.sql(cls.cluster.primary_port(i), DDL, user="app")
        # A metadata database: a batch across shards commits with two-phase commit.
        c = cls.cluster
        c.sql(c.primary_port(0), "CREATE DATABASE meta OWNER app", db="postgres")
        meta = f"postgresql://app:app-secret@127.0.0.1:{c.primary_port(0)}/meta"
        cls.proxy = harness.Proxy(cls.cluster, tables=TABLES, pool_mode="transaction",
                                  extra_toml=f'[metadata]\nurl = "{meta}"\n')
        cls.addClassCleanup(cls.proxy.stop)
        cls.located = {}

    def setUp(self):
        self._log_start = len(self.proxy.log())
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)

    def tearDown(self):
        faulthandler.cancel_dump_traceback_later()
        if self.failed_so_far():
            self.print_proxy_log(self._log_start, 40)
        self.assertTrue(self.proxy.alive(), f"the proxy died:\n{self.proxy.log()[-3000:]}")

    # ------------------------------------------------------------------ keys

    def locate(self, table, keys):
        """{key: shard index} from `shardgate --locate`, cached."""
        todo = [k for k in keys if (table, k) not in self.located]
        with ThreadPoolExecutor(8) as ex:
            for k, name in zip(todo, ex.map(lambda k: self.proxy.locate(table, k), todo)):
                self.assertRegex(name, r"^s\d+$", f"--locate {table} {k!r}")
                self.located[(table, k)] = int(name[1:])
        return {k: self.located[(table, k)] for k in keys}

    def key_source(self, table, kind, driver):
        """A function shards -> keys of table, one per shard given, never the same key twice."""
        counter, spare = [0], {s: [] for s in range(self.SHARDS)}

        def candidate(n):
            if kind == "int":
                return str(INT_BASE[driver] + n)
            if kind == "text":
                return f"{driver}-clé-{n}"
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"shardgate-drivers/{driver}/{n}"))

        def take(shards):
            out = []
            for s in shards:
                while not spare[s]:
                    batch = [candidate(counter[0] + i) for i in range(32)]
                    counter[0] += 32
                    for k, owner in self.locate(table, batch).items():
                        spare[owner].append(k)
                out.append(spare[s].pop(0))
            return out
        return take

    def jobs_for(self, driver):
        """[(label, target, scenario, args)]: every scenario through the proxy, the single-shard
        ones also on DIRECT_SHARD's primary with keys it owns."""
        srcs = {t: self.key_source(t, kind, driver) for t, _, kind in KEY_TABLES}
        ints = srcs["drv_int"]
        both, d = [0, 1], DIRECT_SHARD
        jobs = []
        for target in ("proxy", "direct"):
            pick = (lambda n: both * (n // 2)) if target == "proxy" else (lambda n: [d] * n)
            tag = f"{driver}-{target}"
            bad = _dsn(self.proxy.port if target == "proxy" else
                       self.cluster.primary_port(d), "wrong-secret")
            jobs += [(target, scenario, args) for scenario, args in (
                ("login", {"bad_dsn": bad}),
                ("crud", {"tag": f"{tag}-crud", "tables": [
                    {"table": t, "kind": kind, "keys": srcs[t](pick(6))}
                    for t, _, kind in KEY_TABLES]}),
                ("prepared", {"tag": f"{tag}-prep", "keys": ints(pick(2))}),
                ("tx", {"tag": f"{tag}-tx", "keys": ints(pick(4))}),
                ("error", {"tag": f"{tag}-err", "keys": ints(pick(2))}),
            )]
            if driver in BATCHES:
                shards = both if target == "proxy" else [d]
                jobs += [(target, "batch", {"tag": f"{tag}-batch-s{s}", "keys": ints([s] * 5)})
                         for s in shards]
        if driver in BATCHES:
            jobs.append(("proxy", "batch_cross", {"tag": f"{driver}-cross", "keys": ints(both)}))
        jobs.append(("proxy", "scatter", {"table": SCAN[driver], "rows": self.scan_rows(driver)}))
        jobs.append(("proxy", "next_id", {}))  # shardgate.next_id(): the proxy answers it
        return [(f"{target}/{scenario}/{i}", target, scenario, args)
                for i, (target, scenario, args) in enumerate(jobs)]

    def scan_rows(self, driver):
        """24 rows for the read across shards: negative, zero and large ids, on both shards."""
        rnd = random.Random(f"drivers/{driver}")
        ids = sorted({0, -1, 1, 2**62, -(2**62)}
                     | {rnd.randrange(-10**15, 10**15) for _ in range(19)})
        owners = self.locate(SCAN[driver], [str(i) for i in ids])
        self.assertEqual(set(owners.values()), {0, 1}, f"scan ids {ids} all on one shard")
        return [[str(i), f"{driver}-scan-{n}", 3 * n + 1] for n, i in enumerate(ids)]

    # ------------------------------------------------------------------ running

    def run_program(self, driver, jobs):
        """Runs driver's program on jobs; returns ({label: result}, version line)."""
        cmd = _program(driver)
        spec = {"jobs": [{"label": label, "scenario": scenario, "args": args,
                          "dsn": _dsn(self.proxy.port if target == "proxy"
                                      else self.cluster.primary_port(DIRECT_SHARD))}
                         for label, target, scenario, args in jobs]}
        p = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True,
                           timeout=PROGRAM_TIMEOUT)
        self.assertEqual(p.returncode, 0, f"{cmd} exited {p.returncode}:\n{p.stdout}{p.stderr}")
        results = {}
        for line in p.stdout.splitlines():
            r = json.loads(line)
            results[r["label"]] = r
        version = results.pop("_version", None)
        self.assertEqual(sorted(results), sorted(label for label, *_ in jobs),
                         f"{cmd} did not report every job:\n{p.stdout}{p.stderr}")
        return results, version

    @staticmethod
    def describe(result):
        e = result["error"]
        if e is None:
            return f"steps {result['steps']}"
        return (f"failed at step {e['step']!r} with SQLSTATE {e['sqlstate']}: {e['message']} "
                f"(steps before: {result['steps']})")

    def primary_rows(self, shard, table, keys):
        col = "id" if table.startswith("drv_scan_") else "k"
        lits = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
        rows = self.cluster.sql(self.cluster.primary_port(shard),
                                f"SELECT {col}::text, v, n FROM {table} WHERE {col} IN ({lits})")
        return {k: (v, int(n)) for k, v, n in rows}

    def assert_placement(self, label, want):
        """want: {table: {key: (v, n) or None}}: each row only on its owner, None rows nowhere."""
        for table, rows in want.items():
            owners = self.locate(table, list(rows))
            for s in range(self.SHARDS):
                expected = {k: v for k, v in rows.items() if v is not None and owners[k] == s}
                self.assertEqual(self.primary_rows(s, table, list(rows)), expected,
                                 f"{label}: rows of {table} on s{s}'s primary (owners {owners})")

    def check_driver(self, driver):
        why = _missing(driver)
        if why:
            self.skipTest(why)
        jobs = self.jobs_for(driver)
        results, version = self.run_program(driver, jobs)
        print(f"\n{driver}: {version}", file=sys.stderr)
        by_label = {label: (target, scenario, args) for label, target, scenario, args in jobs}
        for label, (target, scenario, args) in by_label.items():
            got = results[label]
            with self.subTest(driver=driver, job=label):
                where = ("through the proxy" if target == "proxy"
                         else f"directly on s{DIRECT_SHARD}'s primary (a wrong expectation)")
                if got["error"] is not None:
                    self.fail(f"{driver} {where}: {self.describe(got)}")
                if scenario == "batch_cross":
                    self.check_cross_shard_batch(driver, got)
                else:
                    self.assertEqual(got["steps"], EXPECT[scenario](args), f"{driver} {where}")
                if scenario == "login":
                    self.check_login_notes(driver, got["notes"])
                if scenario == "prepared":
                    self.check_prepared_notes(driver, got["notes"])
                if target == "proxy" and scenario in ROWS:
                    self.assert_placement(f"{driver} {label}", ROWS[scenario](args))

    def check_login_notes(self, driver, notes):
        """The driver's own view of the login: a SCRAM-SHA-256 exchange to its end."""
        if driver == "node":
            self.assertEqual(notes["auth"], {"mechanisms": ["SCRAM-SHA-256"], "sasl_final": True})
        elif driver == "go":
            # AuthenticationSASL, SASLContinue, SASLFinal, Ok.
            self.assertEqual(notes["auth"], {"mechanisms": ["SCRAM-SHA-256"],
                                             "codes": [10, 11, 12, 0]})
        else:  # libpq 15 cannot say which method it used, only that the password was
            self.assertIs(notes["connection_used_password"], True)

    def check_prepared_notes(self, driver, notes):
        if driver == "ruby":  # Describe of the named statements, answered by the server
            self.assertEqual((notes["describe_upd_nparams"], notes["describe_sel_nfields"]), (1, 1))
        elif driver == "go":  # both statements are in pgx's cache of prepared statements
            self.assertGreaterEqual(notes["statement_cache_len"], 2)

    def check_cross_shard_batch(self, driver, got):
        # A batch whose statements go to two shards before one Sync runs as PostgreSQL runs it,
        # one implicit transaction: here across both shards (two-phase commit). Both INSERTs
        # report one row, both rows are read back, each on its owner (assert_placement).
        print(f"{driver} batch across shards: {got['steps']}", file=sys.stderr)
        cross = got["steps"][0]
        self.assertEqual(cross, ["cross", [1, 1]],
                         f"{driver}: a batch of INSERTs on s0 and s1 before one Sync")
        self.assertEqual([s[0] for s in got["steps"][1:]], ["after_a", "after_b"])
        self.assertTrue(all(len(s[1]) == 1 for s in got["steps"][1:]), got["steps"])

    # ------------------------------------------------------------------ the tests

    def test_proxy_offers_only_scram(self):
        # What every driver below logs in with: the proxy's first answer to a StartupMessage is
        # AuthenticationSASL offering SCRAM-SHA-256 and nothing else.
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as s:
            params = b"user\0app\0database\0app\0\0"
            s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
            head = s.recv(5, socket.MSG_WAITALL)
            self.assertEqual(head[:1], b"R", head)
            body = s.recv(struct.unpack("!i", head[1:])[0] - 4, socket.MSG_WAITALL)
        self.assertEqual(struct.unpack("!i", body[:4])[0], 10, "AuthenticationSASL expected")
        self.assertEqual(body[4:], b"SCRAM-SHA-256\0\0")

    def test_node_postgres(self):
        self.check_driver("node")

    def test_ruby_pg(self):
        self.check_driver("ruby")

    def test_pgx(self):
        self.check_driver("go")


if __name__ == "__main__":
    unittest.main()
