"""The admin REST API and the durable, shared topology (issue 16), against real PostgreSQL.

One two-shard cluster (a replica each) and, for the metadata, a PostgreSQL of its own, so that
it can be killed without touching the shards. Two proxies share that metadata database.
Proved here:
- auth: no token, a wrong one, the right one; every error is JSON {"error": {"code", "message"}};
- a batch of bad requests (not JSON, wrong types, unknown fields, unknown shard, a 2 MiB body)
  each gets its 4xx while SQL through the same proxy keeps being answered;
- both proxies register in the metadata database and report their applied epoch;
- a restarted proxy runs on the stored epoch, not on the TOML's [[shards]] (its reads reach
  the servers the stored topology names);
- the metadata database killed: reads go on; writes to sharded tables work until the fence
  timeout and then get 40001; when it is back, writes flow again;
- the OpenAPI document validates with a real validator (npm, pinned) and lists every route
  this test called;
- `tools/shardgatectl` drives the API (tables, --json, exit codes).
"""

import json
import os
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import ClusterTestCase, Proxy  # noqa: E402

try:
    import psycopg2
except ImportError:  # pragma: no cover - reported as skips
    psycopg2 = None

TOKEN = "test-admin-token-0123456789"
FENCE_MS = 2000
HEARTBEAT_MS = 200
CTL = harness.REPO / "tools" / "shardgatectl"
OPENAPI_DIR = harness.REPO / "tests" / "integration" / "openapi"


def connect(dsn):
    c = psycopg2.connect(dsn, connect_timeout=10)
    c.autocommit = True
    return c


class Api:
    """An HTTP client of one proxy's admin API; records the routes it called."""

    called = set()  # (method, path template) over the whole module

    def __init__(self, port, token=TOKEN):
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method, path, body=None, token=None, raw=None, template=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        tok = self.token if token is None else token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        Api.called.add((method, template or path))
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


class TwoProxyCase(ClusterTestCase):
    """Shared by the classes that run two proxies with the admin API on one cluster (a, b)."""

    @classmethod
    def start_admin_proxy(cls, metadata_toml, extra=""):
        """A proxy with the admin API (token file cls.token_file) and this [metadata] body."""
        port = harness.free_port_block(1)
        p = Proxy(cls.cluster, extra_toml=(f'[admin]\nlisten = "127.0.0.1:{port}"\n'
                                           f'token_file = "{cls.token_file}"\n'
                                           f"[metadata]\n{metadata_toml}{extra}"))
        cls.addClassCleanup(p.stop)
        harness.wait_port(port, 10)
        return p, Api(port)

    def setUp(self):
        if psycopg2 is None:
            self.skipTest("psycopg2 not installed")
        self.since_a = self.a.log().__len__()

    def tearDown(self):
        if self.failed_so_far():
            self.print_proxy_log(self.since_a)
            print("--- proxy b ---\n" + self.b.log()[-3000:], file=sys.stderr)

    def wait_for(self, what, fn, timeout=10):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(0.05)
        self.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

    def key_on(self, shard, start=1):
        k = start
        while self.owner(str(k)) != shard:
            k += 1
        return k


class AdminTest(TwoProxyCase):
    SHARDS, REPLICAS = 2, 1

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.meta = harness.Cluster("meta", 1, 0)
        cls.addClassCleanup(cls.meta.stop)
        cls.meta_port = cls.meta.primary_port(0)
        cls.token_file = cls.cluster.dir / "admin.token"
        cls.token_file.write_text(TOKEN + "\n")
        cls.a, cls.api_a = cls.start_proxy("a")
        cls.b, cls.api_b = cls.start_proxy("b")
        cls.proxy = cls.a

    @classmethod
    def start_proxy(cls, name):
        mport = harness.free_port_block(1)
        p, api = cls.start_admin_proxy(
            f'url = "postgresql://app:app-secret@127.0.0.1:{cls.meta_port}/app"\n'
            f'fence_timeout_ms = {FENCE_MS}\nheartbeat_ms = {HEARTBEAT_MS}\n'
            f'instance = "proxy-{name}"\n',
            f'[metrics]\nlisten = "127.0.0.1:{mport}"\n[replicas]\nhealth_interval_ms = 200\n')
        p.metrics_port = mport
        return p, api

    def metrics(self, proxy):
        """{name{labels}: value} of the proxy's /metrics, and its /health body."""
        base = f"http://127.0.0.1:{proxy.metrics_port}"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        try:
            with urllib.request.urlopen(base + "/health", timeout=10) as r:
                health = json.loads(r.read())
        except urllib.error.HTTPError as e:
            health = json.loads(e.read())
        return out, health

    def meta_sql(self, q):
        return self.meta.sql(self.meta_port, q)

    # ---------------------------------------------------------------- auth and errors

    def test_token_none_wrong_right(self):
        for tok, want in (("", 401), ("wrong-token", 401), (TOKEN, 200)):
            st, body = self.api_a.call("GET", "/api/v1/topology", token=tok or "")
            self.assertEqual(st, want, body)
            if want == 401:
                self.assertEqual(body["error"]["code"], "unauthorized")
                self.assertIsInstance(body["error"]["message"], str)
        # no Authorization header at all
        req = urllib.request.Request(self.api_a.base + "/api/v1/status")
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(req, timeout=10)
        self.assertEqual(cm.exception.code, 401)
        self.assertEqual(cm.exception.headers["Content-Type"], "application/json")
        self.assertEqual(json.loads(cm.exception.read())["error"]["code"], "unauthorized")

    def test_bad_requests_get_4xx_while_sql_is_served(self):
        key = self.key_on(1)
        stop, seen, errors = threading.Event(), [0], []

        def sql_loop():
            c = connect(self.a.dsn())
            cur = c.cursor()
            cur.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'sql') "
                        "ON CONFLICT (id) DO NOTHING", (key,))
            while not stop.is_set():
                try:
                    cur.execute("SELECT owner FROM accounts WHERE id = %s", (key,))
                    if cur.fetchone() != ("sql",):
                        errors.append("wrong row")
                    seen[0] += 1
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    errors.append(repr(e))
            c.close()

        t = threading.Thread(target=sql_loop)
        t.start()
        try:
            s, r = "/api/v1/shards/s0/replicas", "/api/v1/shards/{name}/replicas"
            cases = [
                ("POST", s, b"{not json", 400, "bad_request"),
                ("POST", s, b"[1, 2]", 400, "bad_request"),
                ("POST", s, b'{"url": 42}', 400, "bad_request"),
                ("POST", s, b'{"url": "postgresql://h:1/d", "color": "red"}', 400, "bad_request"),
                ("POST", s, b"{}", 400, "bad_request"),
                ("POST", s, b'{"url": "postgresql://[oops"}', 400, "bad_request"),
                ("POST", "/api/v1/shards/nope/replicas", b'{"url": "postgresql://h:1/d"}', 404,
                 "not_found"),
                ("DELETE", "/api/v1/shards/s0/replicas/10.9.9.9:1", None, 404, "not_found"),
                ("PATCH", "/api/v1/shards/s0", b'{"weight": 5}', 409, "conflict"),
                ("PATCH", "/api/v1/shards/nope", b'{"primary": "postgresql://h/d"}', 404,
                 "not_found"),
                ("POST", s, b"x" * (2 << 20), 413, "payload_too_large"),
                ("GET", "/api/v1/no/such/thing", None, 404, "not_found"),
                ("DELETE", "/api/v1/topology", None, 405, "method_not_allowed"),
                ("GET", "/api/v1/migrations/m-unknown", None, 404, "not_found"),
            ]
            templates = {s: r, "/api/v1/shards/nope/replicas": r,
                         "/api/v1/shards/s0/replicas/10.9.9.9:1": r + "/{hostport}",
                         "/api/v1/shards/s0": "/api/v1/shards/{name}",
                         "/api/v1/shards/nope": "/api/v1/shards/{name}",
                         "/api/v1/migrations/m-unknown": "/api/v1/migrations/{id}"}
            for method, path, raw, status, code in cases:
                with self.subTest(method=method, path=path, body=(raw or b"")[:40]):
                    st, body = self.api_a.call(method, path, raw=raw,
                                               template=templates.get(path))
                    self.assertEqual(st, status, body)
                    self.assertEqual(body["error"]["code"], code)
            time.sleep(0.2)
        finally:
            stop.set()
            t.join(10)
        self.assertEqual(errors, [])
        self.assertGreater(seen[0], 20, "the SQL client was starved")

    def test_shard_add_remove_refusals_change_nothing(self):
        # (test_migrations.py runs real migrations, and removes a default shard)
        down = f"postgresql://app:app-secret@127.0.0.1:{harness.free_port_block(1)}/app"
        # A table that is not sharded lives on the default shard s0: it cannot be removed.
        self.cluster.sql(self.cluster.primary_port(0), "CREATE TABLE IF NOT EXISTS only_here(x int)",
                         user="app")
        self.addCleanup(self.cluster.sql, self.cluster.primary_port(0),
                        "DROP TABLE IF EXISTS only_here", user="app")
        for method, path, body, tmpl, status, code in (
                ("POST", "/api/v1/shards", {"name": "s9", "primary": down}, "/api/v1/shards",
                 422, "unprocessable"),
                ("POST", "/api/v1/shards", {"name": "s1", "primary": down}, "/api/v1/shards",
                 409, "conflict"),
                ("POST", "/api/v1/shards", {"name": "s9", "primary": down, "cutover": "soon"},
                 "/api/v1/shards", 400, "bad_request"),
                ("DELETE", "/api/v1/shards/s0", None, "/api/v1/shards/{name}", 422,
                 "unprocessable"),
                ("DELETE", "/api/v1/shards/s7", None, "/api/v1/shards/{name}", 404,
                 "not_found")):
            with self.subTest(method=method, body=body, path=path):
                st, r = self.api_a.call(method, path, body, template=tmpl)
                self.assertEqual(st, status, r)
                self.assertEqual(r["error"]["code"], code)
        st, r = self.api_a.call("DELETE", "/api/v1/shards/s0", None,
                                template="/api/v1/shards/{name}")
        self.assertIn("default shard", r["error"]["message"])
        self.assertIn("only_here", r["error"]["message"])
        # ... and the topology did not change
        st, topo = self.api_a.call("GET", "/api/v1/topology")
        self.assertEqual([s["name"] for s in topo["shards"]], ["s0", "s1"])

    # ---------------------------------------------------------------- topology and status

    def test_topology_is_stored_and_served_masked(self):
        st, topo = self.api_a.call("GET", "/api/v1/topology")
        self.assertEqual(st, 200)
        stored = int(self.meta_sql("SELECT max(epoch) FROM shardgate.epochs")[0][0])
        self.assertEqual(topo["epoch"], stored)
        self.assertEqual(topo["ring"], {"vnodes": 150})
        self.assertEqual(topo["tables"], [{"name": "accounts", "key": "id", "key_type": "bigint"}])
        s0 = topo["shards"][0]
        self.assertEqual(s0["primary"],
                         f"postgresql://app:***@127.0.0.1:{self.cluster.primary_port(0)}/app")
        self.assertNotIn("app-secret", json.dumps(topo))
        st_b, topo_b = self.api_b.call("GET", "/api/v1/topology")
        self.assertEqual(topo_b, topo)

    def test_status_lists_both_proxies_and_every_node(self):
        def both():
            st, s = self.api_a.call("GET", "/api/v1/status")
            ids = {p["id"]: p for p in s["proxies"]}
            fresh = all(ids[i]["heartbeat_age_ms"] < 5 * HEARTBEAT_MS
                        for i in ("proxy-a", "proxy-b") if i in ids)
            connected = s["proxy"]["metadata"] == "connected"
            return s if {"proxy-a", "proxy-b"} <= set(ids) and fresh and connected else None
        s = self.wait_for("both proxies heartbeating", both)
        self.assertEqual(s["proxy"]["id"], "proxy-a")
        self.assertEqual(s["proxy"]["metadata"], "connected")
        self.assertFalse(s["proxy"]["fenced"])
        for p in s["proxies"]:
            if p["id"] in ("proxy-a", "proxy-b"):
                self.assertEqual(p["applied_epoch"], s["proxy"]["applied_epoch"])
                self.assertRegex(p["last_heartbeat"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        roles = sorted((n["shard"], n["role"]) for n in s["nodes"])
        self.assertEqual(roles, [("s0", "primary"), ("s0", "replica"),
                                 ("s1", "primary"), ("s1", "replica")])
        self.assertTrue(all(n["state"] == "up" for n in s["nodes"]), s["nodes"])
        self.assertEqual(s["migrations"], [])

    def test_restart_runs_on_the_stored_epoch_not_the_toml(self):
        key = self.key_on(0, start=2000)
        c = connect(self.a.dsn())
        c.cursor().execute("INSERT INTO accounts (id, owner) VALUES (%s, 'r') "
                           "ON CONFLICT (id) DO NOTHING", (key,))
        c.close()
        self.cluster.wait_replicas_caught_up()
        before = int(self.meta_sql("SELECT max(epoch) FROM shardgate.epochs")[0][0])
        # A new epoch without s0's replica, written as another tool would, then NOTIFY.
        self.meta_sql("INSERT INTO shardgate.epochs(epoch, topology, reason) "
                      "SELECT epoch + 1, jsonb_set(topology, '{shards,0,replicas}', '[]'), "
                      "'test: s0 without its replica' FROM shardgate.epochs "
                      "ORDER BY epoch DESC LIMIT 1; NOTIFY shardgate_topology")

        def restore():
            self.meta_sql("INSERT INTO shardgate.epochs(epoch, topology, reason) "
                          f"SELECT max(epoch) + 1, (SELECT topology FROM shardgate.epochs "
                          f"WHERE epoch = {before}), 'test: restored' FROM shardgate.epochs; "
                          "NOTIFY shardgate_topology")
        # The running proxies apply it live (an epoch stored by hand, with a NOTIFY).
        def applied():
            st, s = self.api_b.call("GET", "/api/v1/status")
            return s["proxy"] if s["proxy"]["applied_epoch"] == before + 1 else None
        self.wait_for("proxy b to run on the new epoch", applied, timeout=2)
        # A proxy started now runs on it: reads of s0's keys reach s0's primary.
        port = harness.free_port_block(1)
        extra = (f'[admin]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{self.token_file}"\n'
                 f'[metadata]\nurl = "postgresql://app:app-secret@127.0.0.1:{self.meta_port}/app"\n'
                 'instance = "proxy-restarted"\n')
        p = Proxy(self.cluster, extra_toml=extra)
        self.addCleanup(p.stop)
        harness.wait_port(port, 10)
        st, topo = Api(port).call("GET", "/api/v1/topology")
        self.assertEqual(topo["epoch"], before + 1)
        self.assertEqual(topo["shards"][0]["replicas"], [])
        self.assertEqual(len(topo["shards"][1]["replicas"]), 1)
        self.assertIn("topology_toml_differs", p.log())
        c = connect(p.dsn())
        cur = c.cursor()
        ports = set()
        for _ in range(6):
            cur.execute("SELECT inet_server_port() FROM accounts WHERE id = %s", (key,))
            ports.add(cur.fetchone()[0])
        c.close()
        self.assertEqual(ports, {self.cluster.primary_port(0)})
        # Restored (a new epoch with the replica back): every proxy reads from it again.
        restore()
        for proxy in (self.a, p):
            def back():
                c = connect(proxy.dsn())
                cur = c.cursor()
                cur.execute("SELECT inet_server_port() FROM accounts WHERE id = %s", (key,))
                port = cur.fetchone()[0]
                c.close()
                return port == self.cluster.replica_port(0, 0)
            self.wait_for(f"{proxy} to read from the restored replica", back, timeout=3)

    def test_default_metadata_is_the_default_shards_primary(self):
        p = Proxy(self.cluster, extra_toml='[metadata]\nheartbeat_ms = 200\ninstance = "dflt"\n')
        self.addCleanup(p.stop)
        primary = self.cluster.primary_port(0)
        rows = self.wait_for("the proxy's heartbeat on s0's primary", lambda: self.cluster.sql(
            primary, "SELECT id, applied_epoch FROM shardgate.proxies WHERE id = 'dflt'"))
        self.assertEqual(rows, [["dflt", "1"]])
        self.assertEqual(self.cluster.sql(primary, "SELECT epoch, reason FROM shardgate.epochs"),
                         [["1", "seeded from the TOML config"]])
        self.assertIn("topology_seeded", p.log())

    def test_migrations_are_read_from_the_journal(self):
        # A finished one (a running one would be taken up by the proxies' runners).
        self.meta_sql("INSERT INTO shardgate.migrations(id, kind, shard, phase, progress) "
                      "VALUES ('m-test', 'add_shard', 's2', 'FAILED', "
                      "'{\"rows_copied\": 10, \"rows_estimated\": 40}')")
        self.addCleanup(lambda: self.meta_sql("DELETE FROM shardgate.migrations"))
        st, r = self.api_a.call("GET", "/api/v1/migrations")
        self.assertEqual(st, 200)
        self.assertEqual([m["id"] for m in r["migrations"]], ["m-test"])
        st, m = self.api_b.call("GET", "/api/v1/migrations/m-test",
                                template="/api/v1/migrations/{id}")
        self.assertEqual(st, 200, m)
        self.assertEqual((m["kind"], m["shard"], m["phase"], m["rows_copied"], m["error"]),
                         ("add_shard", "s2", "FAILED", 10, None))
        st, s = self.api_a.call("GET", "/api/v1/status")
        self.assertEqual(s["migrations"], [])  # only running ones
        st, r = self.api_a.call("POST", "/api/v1/migrations/m-test/abort",
                                template="/api/v1/migrations/{id}/abort")
        self.assertEqual((st, r["error"]["code"]), (409, "conflict"))
        self.assertIn("phase FAILED", r["error"]["message"])

    # ---------------------------------------------------------------- fencing

    def test_metadata_down_reads_go_on_writes_fence_then_resume(self):
        key = self.key_on(1, start=1000)
        ca, cb = connect(self.a.dsn()), connect(self.b.dsn())
        for c in (ca, cb):
            c.cursor().execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'f', 0) "
                               "ON CONFLICT (id) DO NOTHING", (key,))
        self.addCleanup(lambda: self.meta.alive(self.meta_port) or self.meta.restart(self.meta_port))
        self.meta.kill9(self.meta_port)
        killed = time.monotonic()
        # Within the fence timeout writes still work (both proxies).
        for c in (ca, cb):
            c.cursor().execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (key,))
        self.assertLess(time.monotonic() - killed, FENCE_MS / 1000 - 0.5,
                        "the writes before the fence were too slow to prove anything")

        def fenced(c):
            try:
                c.cursor().execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s",
                                   (key,))
                return None
            except psycopg2.Error as e:
                return e
        for c in (ca, cb):
            err = self.wait_for("the write fence", lambda: fenced(c), timeout=FENCE_MS / 1000 + 5)
            self.assertEqual(err.pgcode, "40001", err)
            self.assertIn("metadata", str(err))
        self.assertGreaterEqual(time.monotonic() - killed, FENCE_MS / 1000 - 0.3)
        # Reads go on, and the admin API says why.
        for c in (ca, cb):
            cur = c.cursor()
            cur.execute("SELECT owner FROM accounts WHERE id = %s", (key,))
            self.assertEqual(cur.fetchone(), ("f",))
        st, s = self.api_a.call("GET", "/api/v1/status")
        self.assertEqual((s["proxy"]["metadata"], s["proxy"]["fenced"]), ("disconnected", True))
        self.assertIn("metadata_fenced", self.a.log())
        m, health = self.metrics(self.a)
        self.assertEqual((m["shardgate_metadata_up"], m["shardgate_writes_fenced"]), (0, 1))
        self.assertEqual(health["metadata"]["connected"], False)
        self.assertEqual(health["metadata"]["writes_fenced"], True)
        reconnects = m["shardgate_metadata_reconnects_total"]
        # Back: writes flow again on both.
        self.meta.restart(self.meta_port)
        for c in (ca, cb):
            self.wait_for("writes after the metadata came back", lambda: fenced(c) is None,
                          timeout=15)
        st, s = self.api_a.call("GET", "/api/v1/status")
        self.assertEqual((s["proxy"]["metadata"], s["proxy"]["fenced"]), ("connected", False))
        m, health = self.metrics(self.a)
        self.assertEqual((m["shardgate_metadata_up"], m["shardgate_writes_fenced"]), (1, 0))
        self.assertGreater(m["shardgate_metadata_reconnects_total"], reconnects)
        self.assertEqual(m['shardgate_topology_epoch{kind="applied"}'],
                         s["proxy"]["applied_epoch"])
        self.assertEqual(health["metadata"]["writes_fenced"], False)
        for c in (ca, cb):
            c.close()

    # ---------------------------------------------------------------- SIGHUP

    def test_sighup_reloads_users_and_names_what_needs_a_restart(self):
        import signal
        p = Proxy(self.cluster, extra_toml=f'[metadata]\nurl = "postgresql://app:app-secret@'
                  f'127.0.0.1:{self.meta_port}/app"\ninstance = "hup"\n')
        self.addCleanup(p.stop)
        ops = p.dsn(user="ops", password="ops-secret-1")

        def login(dsn):
            try:
                psycopg2.connect(dsn, connect_timeout=5).close()
                return None
            except psycopg2.Error as e:  # (psycopg2 gives no pgcode for a failed login)
                return str(e)
        self.assertIn("password authentication failed", login(ops))
        text = p.config.read_text()
        p.config.write_text(text.replace("[[users]]", '[[users]]\nname = "ops"\n'
                                         'password = "ops-secret-1"\n\n[[users]]', 1)
                            .replace("[proxy]", "[proxy]\npool_size = 7", 1)
                            + "\n[replicas]\nmax_lag_bytes = 4096\n")
        p.proc.send_signal(signal.SIGHUP)
        self.wait_for("the reload", lambda: "reloaded" in p.log())
        self.assertIsNone(login(ops))
        self.assertIsNone(login(p.dsn()))  # app is still there
        self.assertIn("reload_needs_restart", p.log())
        warning = p.log().split("reload_needs_restart", 1)[1].split("\n", 1)[0]
        self.assertIn("[proxy]", warning)
        self.assertNotIn("[replicas]", warning)  # the lag thresholds reload
        self.assertIn('"max_lag_bytes":"4096"', p.log())
        # A broken file changes nothing.
        p.config.write_text("this is [not toml")
        p.proc.send_signal(signal.SIGHUP)
        self.wait_for("the failed reload", lambda: "reload_failed" in p.log())
        self.assertIsNone(login(ops))
        self.assertTrue(p.alive())

    # ---------------------------------------------------------------- the CLI

    def ctl(self, *args, token=TOKEN):
        env = dict(os.environ, SHARDGATE_ADMIN_TOKEN=token)
        return subprocess.run([sys.executable, str(CTL), "--url", self.api_a.base, *args],
                              capture_output=True, text=True, timeout=30, env=env)

    def test_shardgatectl(self):
        p = self.ctl("topology")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("s0", p.stdout)
        self.assertNotIn("app-secret", p.stdout)
        p = self.ctl("status", "--json")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("proxy-a", {x["id"] for x in json.loads(p.stdout)["proxies"]})
        p = self.ctl("topology", token="wrong-token")
        self.assertEqual(p.returncode, 1)
        self.assertIn("unauthorized", p.stderr)
        p = self.ctl("replica", "add", "s0", "postgresql://app@127.0.0.1:9/app")
        self.assertEqual(p.returncode, 1)
        self.assertIn("unprocessable", p.stderr)  # nothing listens on port 9
        p = self.ctl("shard", "add", "s9", "--primary", "postgresql://app@127.0.0.1:9/app")
        self.assertEqual(p.returncode, 1)
        self.assertIn("unprocessable", p.stderr)
        p = self.ctl("migration", "show", "m-none")
        self.assertEqual(p.returncode, 1)
        self.assertIn("not_found", p.stderr)

    # ---------------------------------------------------------------- the OpenAPI document

    def test_zz_openapi_validates_and_lists_every_route_called(self):
        st, doc = self.api_a.call("GET", "/api/v1/openapi.json")
        self.assertEqual(st, 200)
        for action in ("abort", "cutover", "cleanup"):
            st, r = self.api_a.call("POST", f"/api/v1/migrations/m-none/{action}",
                                    template=f"/api/v1/migrations/{{id}}/{action}")
            self.assertEqual(st, 404, r)
        Api.called.update({("GET", "/api/v1/topology"), ("GET", "/api/v1/status"),
                           ("GET", "/api/v1/migrations")})
        for method, path in sorted(Api.called):
            if path.startswith("/api/v1/no/such") or path == "/api/v1/topology" and method != "GET":
                continue  # deliberately unknown routes and methods
            with self.subTest(method=method, path=path):
                self.assertIn(path, doc["paths"])
                self.assertIn(method.lower(), doc["paths"][path])
        if not (OPENAPI_DIR / "node_modules").exists():
            npm = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=OPENAPI_DIR,
                                 capture_output=True, text=True, timeout=300)
            self.assertEqual(npm.returncode, 0, npm.stdout + npm.stderr)
        served = self.cluster.dir / "openapi.served.json"
        served.write_text(json.dumps(doc))
        v = subprocess.run(["node", "validate.js", str(served)], cwd=OPENAPI_DIR,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        # the validator can fail: a document with a dangling $ref
        broken = dict(doc, paths=dict(doc["paths"]))
        broken["paths"]["/api/v1/broken"] = {"get": {"responses": {"200": {
            "$ref": "#/components/responses/NoSuchThing"}}}}
        bad = self.cluster.dir / "openapi.broken.json"
        bad.write_text(json.dumps(broken))
        v = subprocess.run(["node", "validate.js", str(bad)], cwd=OPENAPI_DIR,
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(v.returncode, 0, v.stdout)


class LiveTopologyTest(TwoProxyCase):
    """Replica add/remove and a primary switch through the API, live on two proxies that share
    the default metadata database (s0's primary): no restart, and the other proxy follows."""

    SHARDS, REPLICAS = 2, 2

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.token_file = cls.cluster.dir / "admin.token"
        cls.token_file.write_text(TOKEN + "\n")
        cls.a, cls.api_a = cls.start_proxy("a")
        cls.b, cls.api_b = cls.start_proxy("b")
        cls.proxy = cls.a

    @classmethod
    def start_proxy(cls, name):
        return cls.start_admin_proxy(f'heartbeat_ms = {HEARTBEAT_MS}\ninstance = "live-{name}"\n',
                                     "[replicas]\nhealth_interval_ms = 100\n")

    def url(self, port):
        return f"postgresql://app:app-secret@127.0.0.1:{port}/app"

    def read_ports(self, proxy, key, n=12):
        c = connect(proxy.dsn())
        cur = c.cursor()
        ports = []
        for _ in range(n):
            cur.execute("SELECT inet_server_port() FROM accounts WHERE id = %s", (key,))
            ports.append(cur.fetchone()[0])
        c.close()
        return set(ports)

    def proxy_conns(self, port):
        """Client connections of the proxies (not their health probes) on one server."""
        return int(self.cluster.sql(port, "SELECT count(*) FROM pg_stat_activity WHERE "
                                          "usename = 'app' AND backend_type = 'client backend' "
                                          "AND application_name <> 'shardgate-monitor'")[0][0])

    def test_remove_and_add_a_replica_live_on_both_proxies(self):
        c = self.cluster
        r0, r1 = c.replica_port(0, 0), c.replica_port(0, 1)
        key = self.key_on(0)
        conn = connect(self.a.dsn())
        conn.cursor().execute("INSERT INTO accounts (id, owner) VALUES (%s, 'live') "
                              "ON CONFLICT (id) DO NOTHING", (key,))
        conn.close()
        c.wait_replicas_caught_up()
        self.wait_for("proxy b's reads on both replicas",
                      lambda: self.read_ports(self.b, key, 20) == {r0, r1})
        # Remove r1 through proxy A.
        t0 = time.monotonic()
        st, r = self.api_a.call("DELETE", f"/api/v1/shards/s0/replicas/127.0.0.1:{r1}",
                                template="/api/v1/shards/{name}/replicas/{hostport}")
        self.assertEqual(st, 200, r)
        self.assertTrue(r["applied"], r)
        self.assertEqual(r["shard"]["replicas"], [f"postgresql://app:***@127.0.0.1:{r0}/app"])
        epoch = r["epoch"]

        def b_applied():
            st, s = self.api_b.call("GET", "/api/v1/status")
            return s["proxy"]["applied_epoch"] >= epoch
        self.wait_for("proxy b to apply the removal", b_applied, timeout=2)
        removal_ms = (time.monotonic() - t0) * 1000
        for p in (self.a, self.b):
            self.assertEqual(self.read_ports(p, key, 20), {r0}, "a read reached the removed replica")
        self.wait_for("the proxies' connections to the removed replica to close",
                      lambda: self.proxy_conns(r1) == 0, timeout=5)
        st, topo = self.api_b.call("GET", "/api/v1/topology")
        self.assertEqual((topo["epoch"], len(topo["shards"][0]["replicas"])), (epoch, 1))
        # Add it back through proxy B; proxy A's reads reach it within 2 s.
        t0 = time.monotonic()
        st, r = self.api_b.call("POST", "/api/v1/shards/s0/replicas", {"url": self.url(r1)},
                                template="/api/v1/shards/{name}/replicas")
        self.assertEqual(st, 201, r)
        self.assertEqual(r["epoch"], epoch + 1)
        self.wait_for("proxy a's reads to reach the added replica",
                      lambda: r1 in self.read_ports(self.a, key, 6), timeout=2)
        add_ms = (time.monotonic() - t0) * 1000
        st, s = self.api_a.call("GET", "/api/v1/status")
        self.assertIn(f"postgresql://app:***@127.0.0.1:{r1}/app",
                      [n["url"] for n in s["nodes"] if n["role"] == "replica"])
        print(f"\n[live topology] removal applied on the second proxy in {removal_ms:.0f} ms; "
              f"an added replica served the other proxy's reads after {add_ms:.0f} ms",
              file=sys.stderr)

    def test_bad_changes_are_refused(self):
        c = self.cluster
        closed = harness.free_port_block(1)
        cases = [
            ({"url": self.url(closed)}, 422),                   # nothing listens there
            ({"url": self.url(c.primary_port(1))}, 422),        # a primary, not a replica
            ({"url": self.url(c.replica_port(0, 0))}, 409),     # already a replica of s0
            ({"url": self.url(c.primary_port(0))}, 409),        # s0's own primary
        ]
        for body, want in cases:
            with self.subTest(body=body):
                st, r = self.api_a.call("POST", "/api/v1/shards/s0/replicas", body,
                                        template="/api/v1/shards/{name}/replicas")
                self.assertEqual(st, want, r)
        st, r = self.api_a.call("PATCH", "/api/v1/shards/s1",
                                {"primary": self.url(c.replica_port(1, 0))},
                                template="/api/v1/shards/{name}")
        self.assertEqual(st, 422, r)
        self.assertIn("promote it first", r["error"]["message"])

    def test_zz_planned_primary_switch(self):
        """The operator promotes s1's second replica, then tells the API: writes follow."""
        c = self.cluster
        new = c.replica_port(1, 1)
        key = self.key_on(1, start=5000)
        harness._run(harness.AS_PG + [harness.PGBIN / "pg_ctl", "promote", "-w", "-D",
                                      c.data_dir(new)])
        st, r = self.api_a.call("PATCH", "/api/v1/shards/s1", {"primary": self.url(new)},
                                template="/api/v1/shards/{name}")
        self.assertEqual(st, 200, r)
        self.assertEqual(r["shard"]["primary"], f"postgresql://app:***@127.0.0.1:{new}/app")
        self.assertNotIn(f"postgresql://app:***@127.0.0.1:{new}/app", r["shard"]["replicas"])

        def b_applied():
            st, s = self.api_b.call("GET", "/api/v1/status")
            return s["proxy"]["applied_epoch"] >= r["epoch"]
        self.wait_for("proxy b to apply the switch", b_applied, timeout=2)
        for p in (self.a, self.b):
            conn = connect(p.dsn())
            cur = conn.cursor()
            cur.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'after-switch') "
                        "ON CONFLICT (id) DO UPDATE SET owner = 'after-switch' "
                        "RETURNING inet_server_port()", (key,))
            self.assertEqual(cur.fetchone()[0], new)
            conn.close()
        self.assertEqual(c.sql(new, f"SELECT owner FROM accounts WHERE id = {key}"),
                         [["after-switch"]])


class AdminConfigTest(unittest.TestCase):
    """Config diagnostics for [admin] and [metadata] (no cluster needed)."""

    def check(self, extra, env=None):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "c.toml"
            path.write_text('[[users]]\nname = "app"\npassword = "x"\n[[shards]]\nname = "s0"\n'
                            'primary = "postgresql://app:x@127.0.0.1:5432/app"\n' + extra)
            e = dict(os.environ)
            e.pop("SHARDGATE_ADMIN_TOKEN", None)
            e.update(env or {})
            return subprocess.run([str(harness.SHARDGATE_BIN), "--config", str(path), "--check"],
                                  capture_output=True, text=True, timeout=30, env=e), path

    def test_admin_without_token_refuses_to_start(self):
        p, path = self.check('[admin]\nlisten = "0.0.0.0:6480"\n')
        self.assertEqual(p.returncode, 2)
        self.assertIn(f"{path}:8:", p.stderr)  # the listen line
        self.assertIn("the admin API has no token", p.stderr)
        p, _ = self.check('[admin]\nlisten = "0.0.0.0:6480"\nallow_no_token = true\n')
        self.assertEqual(p.returncode, 2, "allow_no_token is for loopback only")
        p, _ = self.check('[admin]\nlisten = "127.0.0.1:6480"\nallow_no_token = true\n')
        self.assertEqual(p.returncode, 0, p.stderr)
        p, _ = self.check('[admin]\nlisten = "0.0.0.0:6480"\n',
                          env={"SHARDGATE_ADMIN_TOKEN": "from-the-environment-123"})
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_bad_token_file_and_metadata_settings(self):
        p, path = self.check('[admin]\nlisten = "127.0.0.1:6480"\ntoken_file = "/nonexistent"\n')
        self.assertEqual(p.returncode, 2)
        self.assertIn("cannot read the admin token file", p.stderr)
        p, path = self.check('[metadata]\nurl = "postgresql://[bad"\nfence_timeout_ms = 1000\n'
                             'heartbeat_ms = 900\n')
        self.assertEqual(p.returncode, 2)
        self.assertIn(f"{path}:8:", p.stderr)  # the url line
        self.assertIn("bad metadata URL", p.stderr)
        self.assertIn("at most half of fence_timeout_ms", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
