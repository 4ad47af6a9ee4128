"""Metrics and health through a running proxy: the contract families, counters that move with
traffic, lag in the gauge, a real Prometheus server scraping it, the dashboard's metric names
against a live scrape, and /health going 503 when a primary is down."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import harness
from test_deploy_files import control_plane_series, dashboard_metric_names

try:
    import psycopg2
except ImportError:  # pragma: no cover
    psycopg2 = None

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(REPO, "deploy", "grafana", "shardgate.json")
CONTRACT = ["shardgate_client_connections", "shardgate_queries_total",
            "shardgate_query_duration_seconds", "shardgate_routes_total",
            "shardgate_backend_connections", "shardgate_pool_wait_seconds",
            "shardgate_replica_lag_bytes", "shardgate_replica_lag_seconds",
            "shardgate_backend_up", "shardgate_read_fallbacks_total", "shardgate_errors_total",
            "shardgate_ring_epoch", "shardgate_build_info"]
INTERVAL_MS = 200


def http_get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def parse(text):
    """{(name, frozenset(labels)): value} from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def total(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, l), v in samples.items() if n == name and want <= set(l))


def start_metrics_proxy(cluster, port, **kw):
    extra = (f'[metrics]\nlisten = "127.0.0.1:{port}"\n\n[replicas]\n'
             f'health_interval_ms = {INTERVAL_MS}\nmax_lag_bytes = 65536\n')
    return harness.Proxy(cluster, extra_toml=extra, **kw)


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2")
class MetricsTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 1

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.mport = harness.free_port_block(1)
        cls.proxy = start_metrics_proxy(cls.cluster, cls.mport)
        cls.addClassCleanup(cls.proxy.stop)
        cls.url = f"http://127.0.0.1:{cls.mport}"

    def scrape(self):
        status, body = http_get(self.url + "/metrics")
        self.assertEqual(status, 200)
        return body

    def traffic(self, n, base):
        c = psycopg2.connect(self.proxy.dsn())
        c.autocommit = True
        cur = c.cursor()
        for i in range(n):
            key = base + i
            if i % 5 == 0:
                cur.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'm')", (key,))
            else:
                cur.execute("SELECT owner FROM accounts WHERE id = %s", (key,))
        c.close()

    def test_families_and_counters_move_with_traffic(self):
        before = parse(self.scrape())
        self.traffic(250, 10_000)
        text = self.scrape()
        for fam in CONTRACT:
            self.assertIn(f"# TYPE {fam} ", text, f"{fam} is not exported")
        after = parse(text)
        grown = total(after, "shardgate_queries_total") - total(before, "shardgate_queries_total")
        self.assertGreaterEqual(grown, 250)
        self.assertGreaterEqual(total(after, "shardgate_queries_total", kind="write") -
                                total(before, "shardgate_queries_total", kind="write"), 50)
        self.assertGreaterEqual(total(after, "shardgate_routes_total", route="single") -
                                total(before, "shardgate_routes_total", route="single"), 250)
        self.assertGreaterEqual(total(after, "shardgate_query_duration_seconds_count") -
                                total(before, "shardgate_query_duration_seconds_count"), 250)
        self.assertEqual(total(after, "shardgate_build_info"), 1)
        self.assertEqual(total(after, "shardgate_ring_epoch"), 1)
        # A read across shards: one scatter route, one query per shard.
        before = parse(self.scrape())
        c = psycopg2.connect(self.proxy.dsn())
        c.autocommit = True
        c.cursor().execute("SELECT count(*) FROM accounts")
        c.close()
        after = parse(self.scrape())
        self.assertEqual(total(after, "shardgate_routes_total", route="scatter") -
                         total(before, "shardgate_routes_total", route="scatter"), 1)
        self.assertGreaterEqual(total(after, "shardgate_queries_total", kind="read") -
                                total(before, "shardgate_queries_total", kind="read"),
                                self.cluster.shards)
        # An unroutable statement is a client error of class 0A.
        c = psycopg2.connect(self.proxy.dsn())
        c.autocommit = True
        with self.assertRaises(psycopg2.errors.FeatureNotSupported):
            c.cursor().execute("SELECT owner, count(*) FROM accounts GROUP BY owner HAVING count(*) > length(owner)")
        c.close()
        errs = parse(self.scrape())
        self.assertGreaterEqual(total(errs, "shardgate_errors_total", source="client",
                                      sqlstate_class="0A"), 1)

    def test_paused_replica_shows_lag_within_three_intervals(self):
        replica = self.cluster.replica_port(0, 0)
        primary = self.cluster.primary_port(0)
        self.cluster.sql(replica, "SELECT pg_wal_replay_pause()")
        self.addCleanup(self.cluster.wait_replicas_caught_up)
        self.addCleanup(self.cluster.sql, replica, "SELECT pg_wal_replay_resume()")
        self.cluster.sql(primary, "CREATE TABLE IF NOT EXISTS filler (id int, pad text)")
        self.cluster.sql(primary, "INSERT INTO filler SELECT g, repeat('x', 1000) "
                                  "FROM generate_series(1, 2000) g")
        written = time.monotonic()
        lag = 0
        while time.monotonic() - written < 3 * INTERVAL_MS / 1000 + 1.0:
            lag = total(parse(self.scrape()), "shardgate_replica_lag_bytes", shard="s0")
            if lag > 1_000_000:
                break
            time.sleep(0.05)
        self.assertGreater(lag, 1_000_000, "the paused replica's byte lag did not show")
        up = total(parse(self.scrape()), "shardgate_backend_up", shard="s0", role="replica")
        self.assertEqual(up, 0, "a replica over max_lag_bytes is not serving")

    def test_dashboard_metric_names_are_exported(self):
        self.traffic(20, 20_000)
        live = {name for name, _ in parse(self.scrape())}
        # This proxy runs with [metadata] off: the dashboard's migrations row (control-plane
        # families) has nothing to show here.
        missing = sorted(dashboard_metric_names(DASHBOARD) - control_plane_series() - live)
        self.assertEqual(missing, [], "the dashboard queries metrics the proxy does not export")

    @unittest.skipIf(shutil.which("prometheus") is None, "needs Debian's prometheus package")
    def test_real_prometheus_scrapes_it(self):
        self.traffic(30, 30_000)
        web = harness.free_port_block(1)
        d = tempfile.mkdtemp(prefix="sg-prom-")
        self.addCleanup(shutil.rmtree, d, True)
        cfg = os.path.join(d, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                    f"  - job_name: shardgate\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.mport}']\n")
        proc = subprocess.Popen(["prometheus", f"--config.file={cfg}",
                                 f"--storage.tsdb.path={d}/data",
                                 f"--web.listen-address=127.0.0.1:{web}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.terminate)
        deadline = time.monotonic() + 30
        value = None
        while time.monotonic() < deadline and value is None:
            time.sleep(0.5)
            try:
                status, body = http_get(f"http://127.0.0.1:{web}/api/v1/query?query="
                                        "sum(shardgate_queries_total)")
            except OSError:
                continue
            result = json.loads(body).get("data", {}).get("result", []) if status == 200 else []
            if result:
                value = float(result[0]["value"][1])
        self.assertIsNotNone(value, "Prometheus never returned sum(shardgate_queries_total)")
        self.assertGreater(value, 0)


@unittest.skipIf(psycopg2 is None, "needs Debian's python3-psycopg2")
class HealthTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 1, 0

    def test_health_goes_503_when_a_primary_is_down(self):
        mport = harness.free_port_block(1)
        proxy = start_metrics_proxy(self.cluster, mport)
        self.addCleanup(proxy.stop)
        url = f"http://127.0.0.1:{mport}/health"
        status, body = http_get(url)
        self.assertEqual(status, 200, body)
        self.assertTrue(json.loads(body)["shards"][0]["primary"]["up"])
        primary = self.cluster.primary_port(0)
        self.cluster.kill9(primary)
        self.addCleanup(self.cluster.restart, primary)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, body = http_get(url)
            if status == 503:
                break
            time.sleep(0.1)
        self.assertEqual(status, 503, body)
        doc = json.loads(body)
        self.assertEqual(doc["status"], "unavailable")
        self.assertFalse(doc["shards"][0]["primary"]["serving"])
        self.assertTrue(proxy.alive())


if __name__ == "__main__":
    unittest.main()
