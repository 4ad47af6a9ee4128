"""JDBC through ShardGate: pgjdbc (Debian's libpostgresql-jdbc-java) on a transaction-pooled proxy.

pgjdbc speaks only the extended protocol and puts several statements before one Sync: with
setAutoCommit(false) it sends BEGIN and the first statement as two unnamed statements in one
batch, and reWriteBatchedInserts=true sends a batch of 5 rows as a 4-row and a 1-row INSERT
before one Sync (issue 20). The scenarios live in jdbc/JdbcChecks.java; this test compiles it
(javac, no build tool), runs every scenario in one JVM per prepareThreshold (the default 5, and 1)
against the proxy and, for comparison, against the owning shard's primary directly, and asserts:

- each scenario gives exactly the expected steps (update counts, rows, SQLSTATEs) directly, and
  the same through the proxy, with no error;
- afterwards each row the proxy wrote is on its owner's primary (`shardgate --locate`), with the
  right values, and not on the other shard; rolled-back rows are nowhere.

Also CRUD by key on a text-keyed and a uuid-keyed table (keys on both shards; the steps equal
PostgreSQL's, each row on its owner only), and SELECT shardgate.next_id() (proxy only).

Scenarios, each on keys of s0 and on keys of s1: a transaction of INSERT/UPDATE/SELECT that
commits, the same rolled back, one PreparedStatement run 10 times in each of two transactions
(past the prepare threshold), a reWriteBatchedInserts batch of 5 rows in autocommit and in a
transaction, and a unique violation in a transaction, rollback, then a transaction that commits,
on one connection.

Skipped (with the reason) only when javac/java or /usr/share/java/postgresql.jar is missing:
scripts/setup.sh installs default-jdk-headless and libpostgresql-jdbc-java.

Run with Debian's python: /usr/bin/python3 -m unittest tests/integration/test_jdbc.py -v
"""

import faulthandler
import json
import os
import shutil
import subprocess
import sys
import unittest
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

JAR = Path(os.environ.get("PGJDBC_JAR", "/usr/share/java/postgresql.jar"))
JAVAC, JAVA = shutil.which("javac"), shutil.which("java")
SOURCE = Path(__file__).resolve().parent / "jdbc" / "JdbcChecks.java"
CLASSES = harness.BUILD_DIR / "jdbc-classes"
TEST_TIMEOUT = 90  # seconds per test; a hang dumps every thread's stack and ends the run
# Bounds on every JDBC connection, so that a proxy that never answers fails a job, not the run.
URL_LIMITS = "connectTimeout=10&loginTimeout=10&socketTimeout=20"

# Key bases per prepareThreshold (each test owns [base, base + 100_000)); the direct runs use
# keys from base + 50_000 so that they never meet the proxy's.
K_BASE = {None: 10_000_000, 1: 11_000_000}
DIRECT_OFFSET = 50_000

# What each scenario must report (the same on any key, directly or through the proxy). See the
# scenario functions in JdbcChecks.java. An executeBatch with reWriteBatchedInserts reports
# SUCCESS_NO_INFO (-2) for each row of the 4-row statement and 1 for the 1-row statement.
EXPECTED_STEPS = {
    "tx_commit": [["insert", 1], ["update", 1], ["select", [["jdbc-commit", 11]]],
                  ["commit", "ok"]],
    "tx_rollback": [["insert", 1], ["update", 1], ["select", [["jdbc-rollback", 11]]],
                    ["rollback", "ok"], ["select_after_rollback", []],
                    ["commit_after_rollback", "ok"]],
    "tx_repeat": [["insert", 1],
                  ["repeat_tx1", list(range(1, 11))], ["server_prepared_tx1", True],
                  ["select_tx1", [["jdbc-repeat", 10]]], ["commit_tx1", "ok"],
                  ["repeat_tx2", list(range(11, 21))], ["server_prepared_tx2", True],
                  ["select_tx2", [["jdbc-repeat", 20]]], ["commit_tx2", "ok"]],
    "batch_autocommit": [["execute_batch", [-2, -2, -2, -2, 1]]],
    "batch_tx": [["execute_batch", [-2, -2, -2, -2, 1]], ["count_in_tx", [[5, 25]]],
                 ["commit", "ok"]],
    "error_recovery": [["insert_autocommit", 1], ["insert_tx1", 1], ["duplicate", "23505"],
                       ["after_error", "25P02"], ["rollback", "ok"], ["insert_tx2", 1],
                       ["update_tx2", 1],
                       ["select_tx2", [[["jdbc-first", 2]], [["jdbc-second", 2]]]],
                       ["commit", "ok"]],
    "set_local_first": [["set_local", "ok"], ["insert", 1], ["show_in_tx", "7s"],
                        ["commit", "ok"]],
}
# How many keys each scenario takes (all on one shard).
NKEYS = {"tx_commit": 1, "tx_rollback": 1, "tx_repeat": 1, "batch_autocommit": 5,
         "batch_tx": 5, "error_recovery": 2, "set_local_first": 1}
# Rows each scenario leaves behind: key index -> (owner, balance); missing indexes: no row.
EXPECTED_ROWS = {
    "tx_commit": {0: ("jdbc-commit", 11)},
    "tx_rollback": {},
    "tx_repeat": {0: ("jdbc-repeat", 20)},
    "batch_autocommit": {i: ("jdbc-batch", 5) for i in range(5)},
    "batch_tx": {i: ("jdbc-batch-tx", 5) for i in range(5)},
    "error_recovery": {0: ("jdbc-first", 2), 1: ("jdbc-second", 2)},
    "set_local_first": {0: ("jdbc-set-local", 1)},
}
# Scenarios whose connection needs reWriteBatchedInserts=true.
REWRITE = {"batch_autocommit", "batch_tx"}


def _missing_java():
    """Why the JDBC test cannot run here, or None."""
    missing = [what for what, ok in (("javac", JAVAC), ("java", JAVA), (str(JAR), JAR.is_file()))
               if not ok]
    if missing:
        return (f"needs {', '.join(missing)}: install default-jdk-headless and "
                "libpostgresql-jdbc-java (scripts/setup.sh does)")
    return None


@unittest.skipIf(_missing_java(), _missing_java() or "")
@unittest.skipUnless(os.access(harness.SHARDGATE_BIN, os.X_OK), f"{harness.SHARDGATE_BIN} not built")
class JdbcTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 1
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # (an instance number for shardgate.next_id(): this proxy has no metadata database)
        for i in range(cls.SHARDS):
            for t, kind in (("jdbc_text", "text"), ("jdbc_uuid", "uuid")):
                cls.cluster.sql(cls.cluster.primary_port(i),
                                f"CREATE TABLE {t} (k {kind} PRIMARY KEY, v text, n bigint)",
                                user="app")
        cls.cluster.wait_replicas_caught_up()
        cls.proxy = harness.Proxy(cls.cluster, extra_toml="[ids]\ninstance = 3\n", tables=(
            ("accounts", "id", "bigint"), ("jdbc_text", "k", "text"), ("jdbc_uuid", "k", "uuid")))
        cls.addClassCleanup(cls.proxy.stop)
        CLASSES.mkdir(parents=True, exist_ok=True)
        p = subprocess.run([JAVAC, "-Xlint:all", "-cp", str(JAR), "-d", str(CLASSES),
                            str(SOURCE)], capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"javac {SOURCE} failed:\n{p.stdout}{p.stderr}")

    def setUp(self):
        self._log_start = len(self.proxy.log())
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)

    def tearDown(self):
        faulthandler.cancel_dump_traceback_later()
        self.assertTrue(self.proxy.alive(), f"the proxy died:\n{self.proxy.log()[-3000:]}")

    # ------------------------------------------------------------------ helpers


    def keys_on(self, start, shard, n):
        """n keys from start up that shard owns, and the key after the last one tried."""
        keys, k = [], start
        while len(keys) < n:
            if self.owner(k) == shard:
                keys.append(k)
            k += 1
            self.assertLess(k - start, 10_000, f"ring never gives shard s{shard}")
        return keys, k

    def url(self, port, extra=""):
        return (f"jdbc:postgresql://127.0.0.1:{port}/app?user=app&password=app-secret"
                f"&{URL_LIMITS}{extra}")

    def run_jobs(self, jobs):
        """Runs JdbcChecks with jobs [(label, url, scenario, keys)]; returns {label: result}."""
        args = [f"{label}|{url}|{scenario}|{','.join(map(str, keys))}"
                for label, url, scenario, keys in jobs]
        p = subprocess.run([JAVA, "-cp", f"{CLASSES}{os.pathsep}{JAR}", "JdbcChecks", *args],
                           capture_output=True, text=True, timeout=TEST_TIMEOUT - 10)
        self.assertEqual(p.returncode, 0, f"JdbcChecks exited {p.returncode}:\n{p.stdout}{p.stderr}")
        results = {}
        for line in p.stdout.splitlines():
            r = json.loads(line)
            results[r["label"]] = r
        self.assertEqual(sorted(results), sorted(label for label, *_ in jobs),
                         f"JdbcChecks did not report every job:\n{p.stdout}{p.stderr}")
        return results

    def primary_rows(self, shard, keys):
        rows = self.cluster.sql(self.cluster.primary_port(shard),
                                "SELECT id, owner, balance FROM accounts WHERE id IN "
                                f"({', '.join(map(str, keys))})")
        return {int(i): (o, int(b)) for i, o, b in rows}

    @staticmethod
    def describe(result):
        e = result["error"]
        if e is None:
            return f"steps {result['steps']}"
        return (f"failed at step {e['step']!r} with SQLSTATE {e['sqlstate']}: {e['message']} "
                f"(steps before: {result['steps']})")

    # ------------------------------------------------------------------ the scenarios

    def check_scenarios(self, threshold):
        """Every scenario on both shards, through the proxy and directly, prepareThreshold as
        given (None: pgjdbc's default, 5), in one JVM."""
        extra = "" if threshold is None else f"&prepareThreshold={threshold}"
        base = K_BASE[threshold]
        jobs, proxy_keys = [], {}  # proxy_keys: label -> (scenario, shard, keys)
        for target, start in (("proxy", base), ("direct", base + DIRECT_OFFSET)):
            for shard in range(self.SHARDS):
                next_key = start + shard * 10_000
                port = self.proxy.port if target == "proxy" else self.cluster.primary_port(shard)
                for scenario, n in NKEYS.items():
                    keys, next_key = self.keys_on(next_key, shard, n)
                    url = self.url(port, extra + ("&reWriteBatchedInserts=true"
                                                  if scenario in REWRITE else ""))
                    label = f"{target}/s{shard}/{scenario}"
                    jobs.append((label, url, scenario, keys))
                    if target == "proxy":
                        proxy_keys[label] = (scenario, shard, keys)

        results = self.run_jobs(jobs)
        # The rows of every proxy job, read once per shard's primary.
        all_keys = [k for _, _, keys in proxy_keys.values() for k in keys]
        on_primary = [self.primary_rows(s, all_keys) for s in range(self.SHARDS)]
        failed = False
        for label, (scenario, shard, keys) in proxy_keys.items():
            with self.subTest(scenario=scenario, shard=f"s{shard}"):
                direct = results[label.replace("proxy/", "direct/", 1)]
                # The scenario itself is right: PostgreSQL gives the expected steps.
                if direct["error"] is not None:
                    self.fail(f"directly on s{shard}'s primary (the test is wrong): "
                              f"{self.describe(direct)}")
                self.assertEqual(direct["steps"], EXPECTED_STEPS[scenario], "directly")
                # Through the proxy: the same, with no error.
                got = results[label]
                if got["error"] is not None or got["steps"] != direct["steps"]:
                    failed = True
                if got["error"] is not None:
                    self.fail(f"through the proxy (keys {keys} on s{shard}): {self.describe(got)}"
                              f"; directly: {direct['steps']}")
                self.assertEqual(got["steps"], direct["steps"],
                                 f"through the proxy (keys {keys} on s{shard}) vs directly")
                # The rows: on the owner's primary with the right values, none on the other.
                want = {keys[i]: row for i, row in EXPECTED_ROWS[scenario].items()}
                for s in range(self.SHARDS):
                    mine = {k: v for k, v in on_primary[s].items() if k in keys}
                    self.assertEqual(mine, want if s == shard else {},
                                     f"rows of keys {keys} (owner s{shard}) on s{s}'s primary")
        if failed:
            new = self.proxy.log()[self._log_start:].splitlines()
            if new:
                print(f"\n--- proxy log during {self.id()} (last 30 of {len(new)} lines) ---\n"
                      + "\n".join(new[-30:]), file=sys.stderr)

    def test_prepare_threshold_default(self):
        self.check_scenarios(None)

    def test_prepare_threshold_1(self):
        self.check_scenarios(1)

    def test_text_and_uuid_keys(self):
        """CRUD by key on text and uuid keys through the proxy (prepareThreshold default and 1):
        the steps PostgreSQL gives directly (keys s0 owns, on s0's primary), and every row that
        stays on its owner's primary only, the deleted one nowhere."""
        def key(kind, n):
            return f"t-{n}" if kind == "text" else str(uuid.UUID(int=(0x5347 << 64) | n))

        def owner(table, k):
            return int(harness._run([harness.SHARDGATE_BIN, "--config", self.proxy.config,
                                     "--locate", table, k]).stdout.strip()[1:])

        jobs, proxy_jobs = [], []
        for threshold, base in ((None, 1000), (1, 2000)):
            extra = "" if threshold is None else f"&prepareThreshold={threshold}"
            for kind in ("text", "uuid"):
                table = f"jdbc_{kind}"
                ns = list(range(base, base + 6))
                owners = {owner(table, key(kind, n)) for n in ns}
                self.assertEqual(owners, {0, 1}, "the keys should span both shards")
                label = f"proxy/{kind}/{threshold}"
                jobs.append((label, self.url(self.proxy.port, extra), f"{kind}_keys", ns))
                proxy_jobs.append((label, table, kind, ns))
                direct = [n for n in range(base + 500, base + 600)
                          if owner(table, key(kind, n)) == 0][:6]
                jobs.append((f"direct/{kind}/{threshold}",
                             self.url(self.cluster.primary_port(0), extra), f"{kind}_keys", direct))
        results = self.run_jobs(jobs)
        for label, table, kind, ns in proxy_jobs:
            with self.subTest(job=label):
                direct = results[label.replace("proxy/", "direct/", 1)]
                self.assertIsNone(direct["error"], self.describe(direct))
                got = results[label]
                self.assertIsNone(got["error"], self.describe(got))
                self.assertEqual(got["steps"], direct["steps"])
                for i, n in enumerate(ns):
                    k = key(kind, n)
                    where = owner(table, k)
                    for s in range(self.SHARDS):
                        rows = self.cluster.sql(self.cluster.primary_port(s),
                                                f"SELECT v, n FROM {table} WHERE k = '{k}'")
                        want = [[f"v{i}", str(i + 10)]] if s == where and i > 0 else []
                        self.assertEqual(rows, want, f"{table} key {k} (owner s{where}) on s{s}")

    def test_next_id(self):
        """SELECT shardgate.next_id() through pgjdbc, prepareThreshold default and 1: rising
        positive IDs in autocommit and in a transaction, which goes on (an INSERT commits)."""
        jobs = []
        for threshold in (None, 1):
            extra = "" if threshold is None else f"&prepareThreshold={threshold}"
            keys, _ = self.keys_on(K_BASE[threshold] + 90_000, 0, 1)
            jobs.append((f"next_id/{threshold}", self.url(self.proxy.port, extra), "next_id", keys))
        for label, r in self.run_jobs(jobs).items():
            with self.subTest(label=label):
                self.assertIsNone(r["error"], self.describe(r))
                self.assertEqual(r["steps"], [["autocommit", 8], ["in_tx", 1], ["rising", "ok"]])


if __name__ == "__main__":
    unittest.main()
