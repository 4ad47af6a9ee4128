"""deploy/grafana and deploy/prometheus: the dashboard, alert rules and example Prometheus config
are valid and use only the metrics the proxy exports (the contract below).

- promtool check rules / test rules / check config (skipped with a message without promtool:
  `apt-get install prometheus`).
- The dashboard JSON: datasource variable, every panel query non-empty and valid PromQL (parsed
  by promtool), metric names and label names from the contract (CONTRACT and
  CONTROL_PLANE_CONTRACT: the dashboard has a row for migrations).
- The rules: metric names and label names from the same contracts, annotations present.
- With the `prometheus` binary: a real Prometheus scrapes a synthetic exporter shaped like the
  contract, evaluates the rules (no rule may error) and every dashboard query (each must return
  data).

`dashboard_metric_names(path)` is meant for reuse: a live-scrape test can check that a running
proxy exports every metric the dashboard needs.
"""

import ctypes
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "shardgate.json"
RULES = REPO / "deploy" / "prometheus" / "shardgate.rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "shardgate.rules.test.yml"
PROM_EXAMPLE = REPO / "deploy" / "prometheus" / "prometheus.example.yml"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NO_PROMTOOL = "promtool not found: install the Debian package `prometheus` (scripts/setup.sh)"
NO_PROMETHEUS = "prometheus not found: install the Debian package `prometheus` (scripts/setup.sh)"

# The metrics contract: family -> (type, label names). The proxy exports exactly these on
# GET /metrics of its [metrics] listen address (with [metadata] off, as in the plain metrics
# tests; with it on, CONTROL_PLANE_CONTRACT's too).
CONTRACT = {
    "shardgate_client_connections": ("gauge", {"state"}),
    "shardgate_queries_total": ("counter", {"shard", "role", "kind"}),
    "shardgate_query_duration_seconds": ("histogram", {"shard", "role"}),
    "shardgate_routes_total": ("counter", {"route"}),
    "shardgate_backend_connections": ("gauge", {"shard", "node", "role", "state"}),
    "shardgate_pool_wait_seconds": ("histogram", {"shard", "role"}),
    "shardgate_replica_lag_bytes": ("gauge", {"shard", "node"}),
    "shardgate_replica_lag_seconds": ("gauge", {"shard", "node"}),
    "shardgate_backend_up": ("gauge", {"shard", "node", "role"}),
    "shardgate_read_fallbacks_total": ("counter", {"shard", "reason"}),
    "shardgate_rate_limited_total": ("counter", {"outcome"}),
    "shardgate_errors_total": ("counter", {"source", "sqlstate_class"}),
    "shardgate_ring_epoch": ("gauge", set()),
    "shardgate_build_info": ("gauge", {"version"}),
    "shardgate_pool_size": ("gauge", {"shard", "node", "role"}),
    "shardgate_replica_max_lag_bytes": ("gauge", set()),
    "shardgate_replica_max_lag_seconds": ("gauge", set()),
    "shardgate_worker_clients": ("gauge", {"worker"}),
    "shardgate_workers_taking_clients": ("gauge", set()),
    "shardgate_session_moves_total": ("counter", set()),
    "shardgate_twophase_commits_total": ("counter", {"outcome"}),
    "shardgate_pipelined_reads_total": ("counter", set()),
}
# Families exported only with the [metadata] control plane on (src/metrics/exporter.cpp). The
# migration gauges have series only while a migration runs (the phase family is a state set:
# one series per phase, 1 for the current one); the cutover pause histogram always has its one
# series.
CONTROL_PLANE_CONTRACT = {
    "shardgate_metadata_up": ("gauge", set()),
    "shardgate_twophase_recovered_total": ("counter", {"outcome"}),
    "shardgate_writes_fenced": ("gauge", set()),
    "shardgate_metadata_reconnects_total": ("counter", set()),
    "shardgate_topology_epoch": ("gauge", {"kind"}),
    "shardgate_migration_phase": ("gauge", {"migration", "kind", "shard", "phase"}),
    "shardgate_migration_rows_copied": ("gauge", {"migration", "kind", "shard"}),
    "shardgate_migration_rows_estimated": ("gauge", {"migration", "kind", "shard"}),
    "shardgate_migration_rows_per_second": ("gauge", {"migration", "kind", "shard"}),
    "shardgate_migration_verify_mismatches": ("gauge", {"migration", "kind", "shard"}),
    "shardgate_migration_target_write_failures": ("gauge", {"migration", "kind", "shard"}),
    "shardgate_migration_cutover_pause_seconds": ("histogram", set()),
    "shardgate_dual_write_commits_total": ("counter", {"outcome"}),
}
# What the dashboard and the rules may use: everything a proxy with [metadata] on exports.
FULL_CONTRACT = {**CONTRACT, **CONTROL_PLANE_CONTRACT}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Series that Prometheus itself writes per scrape target; rules may use them, the dashboard may
# not (a live scrape of the proxy would not have them).
PROMETHEUS_SERIES = {"up": set()}


def contract_series(contract=FULL_CONTRACT):
    """Series name -> label names (without job/instance) of the families of `contract`: by
    default everything a proxy with [metadata] on exports; CONTRACT for a plain proxy."""
    out = {}
    for name, (kind, labels) in contract.items():
        if kind == "histogram":
            out[name + "_bucket"] = labels | {"le"}
            out[name + "_sum"] = set(labels)
            out[name + "_count"] = set(labels)
        else:
            out[name] = set(labels)
    return out


# --------------------------------------------------------------------------- PromQL references

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+|\[\[\w+(?::\w+)?\]\])
  | (?P<num>(?:\d|\.\d)[\w.]*(?:[eE][+-]\d+)?)
  | (?P<id>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>(){}\[\],:@])
""", re.X)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan",
             # aggregation operators, which may be followed by `by (...)` instead of `(`
             "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
             "bottomk", "topk", "quantile"}
_MATCH_OPS = {"=", "!=", "=~", "!~"}


def _tokens(expr):
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        if m.lastgroup not in ("ws", "comment"):
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def promql_references(expr):
    """What a PromQL expression refers to, without a full parser.

    Returns (metrics, matcher_labels, grouping_labels): the set of metric names in selectors;
    {metric: label names used in its {...} matchers} (key None for a selector without a name);
    the set of label names in by/without/on/ignoring/group_left/group_right lists. Function
    names, keywords, strings, numbers, durations, [range] parts and Grafana variables are
    not metric names."""
    toks = _tokens(expr)
    metrics, matchers, grouping = set(), {}, set()

    def text(j):
        return toks[j][1] if j < len(toks) else None

    def skip_to_close(j, open_, close):  # j at the opening token; returns index after the close
        depth = 0
        while j < len(toks):
            if toks[j][1] == open_:
                depth += 1
            elif toks[j][1] == close:
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        raise ValueError(f"unbalanced {open_!r} in {expr!r}")

    def read_matchers(j, owner):  # j at '{'
        end = skip_to_close(j, "{", "}")
        labels = matchers.setdefault(owner, set())
        for k in range(j + 1, end - 1):
            if toks[k][0] == "id" and text(k + 1) in _MATCH_OPS:
                labels.add(toks[k][1])
        return end

    i = 0
    while i < len(toks):
        kind, tok = toks[i]
        if tok == "[":
            i = skip_to_close(i, "[", "]")
        elif tok == "{":
            i = read_matchers(i, None)
        elif kind == "id":
            low = tok.lower()
            if low in _GROUPING:
                if text(i + 1) == "(":
                    end = skip_to_close(i + 1, "(", ")")
                    grouping.update(t for k, t in toks[i + 2:end - 1] if k == "id")
                    i = end
                else:
                    i += 1
            elif low in _KEYWORDS or text(i + 1) == "(":  # keyword, function or aggregation
                i += 1
            else:
                metrics.add(tok)
                i = read_matchers(i + 1, tok) if text(i + 1) == "{" else i + 1
        else:
            i += 1
    return metrics, matchers, grouping


# --------------------------------------------------------------------------- dashboard

def _grafana_query_expr(query):
    """The PromQL inside a Grafana Prometheus variable query (label_values(expr, label),
    query_result(expr)); None for queries that name no metric."""
    if isinstance(query, dict):
        query = query.get("query", "")
    query = (query or "").strip()
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_]\w*\s*\)", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"query_result\((.*)\)", query, re.S)
    if m:
        return m.group(1)
    if re.fullmatch(r"(label_values\(\s*\w*\s*\)|label_names\(.*\)|metrics\(.*\))?", query, re.S):
        return None
    return query


def iter_panels(panels):
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []))


def dashboard_exprs(path):
    """(where, PromQL) for every query of a Grafana dashboard: panel targets, Prometheus
    annotations and query template variables."""
    dash = json.loads(Path(path).read_text())
    out = []
    for p in iter_panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('title')!r} target {t.get('refId')}", t.get("expr", "")))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append((f"annotation {a.get('name')!r}", a["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            expr = _grafana_query_expr(v.get("query"))
            if expr:
                out.append((f"variable {v.get('name')!r}", expr))
    return out


def control_plane_series():
    """The series names (histograms as _bucket/_sum/_count) that only a proxy with [metadata]
    on exports: a live-scrape test of a proxy with it off leaves these out."""
    return set(contract_series(CONTROL_PLANE_CONTRACT))


def dashboard_metric_names(path):
    """The set of metric (series) names that the dashboard at `path` queries, histograms as
    their _bucket/_sum/_count series, as a proxy's /metrics would list them."""
    names = set()
    for _, expr in dashboard_exprs(path):
        names |= promql_references(expr)[0]
    return names


def grafana_to_promql(expr, interval="5m"):
    """A dashboard query with Grafana's variables replaced, so Prometheus can run it: interval
    variables become `interval`, template variables (always inside "..." regex matchers here)
    match anything."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)(_s|_ms)?\}?", interval, expr)
    return re.sub(r"\$\{[^}]*\}|\$\w+|\[\[\w+(?::\w+)?\]\]", ".*", expr)


def rules_exprs(path):
    """(where, PromQL) of every rule in a Prometheus rules file, and the set of recorded names."""
    import yaml  # Debian python3-yaml
    doc = yaml.safe_load(Path(path).read_text())
    out, recorded = [], set()
    for g in doc["groups"]:
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            out.append((f"group {g['name']} rule {name}", str(r["expr"])))
            if "record" in r:
                recorded.add(r["record"])
    return out, recorded


def check_references(testcase, exprs, allowed):
    """Every metric, matcher label and grouping label of `exprs` is in `allowed`
    ({series: label names})."""
    for where, expr in exprs:
        with testcase.subTest(where=where):
            metrics, matchers, grouping = promql_references(expr)
            testcase.assertTrue(metrics, f"{where}: no metric in {expr!r}")
            unknown = metrics - set(allowed)
            testcase.assertFalse(unknown, f"{where}: not in the metrics contract: {sorted(unknown)}")
            for metric, labels in matchers.items():
                testcase.assertIsNotNone(metric, f"{where}: selector without a metric name")
                bad = labels - allowed.get(metric, set()) - TARGET_LABELS
                testcase.assertFalse(bad, f"{where}: {metric} has no label(s) {sorted(bad)}")
            known = set().union(*(allowed.get(m, set()) for m in metrics)) | TARGET_LABELS
            bad = grouping - known
            testcase.assertFalse(bad, f"{where}: grouping by label(s) {sorted(bad)} that none of "
                                      f"{sorted(metrics)} has")


def promtool(*args, timeout=60):
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------- tests

class PromQLReferencesTest(unittest.TestCase):
    """The metric-name extraction itself, on the awkward cases."""

    def test_functions_keywords_strings_and_durations_are_not_metrics(self):
        expr = ('histogram_quantile(0.99, sum by (shard, le) (rate(a_bucket{job=~"$job", '
                'x!="y(z)"}[$__rate_interval] offset 1h30m))) / on (job) group_left (kind) '
                'b > bool 1e-3 and ignoring(q) c[5m:1m] or label_replace(d, "dst", "$1", '
                '"src", "(.*)") unless vector(0) @ end()')
        metrics, matchers, grouping = promql_references(expr)
        self.assertEqual(metrics, {"a_bucket", "b", "c", "d"})
        self.assertEqual(promql_references("sum by (s) (m) + count without (t) (n)")[0], {"m", "n"})
        self.assertEqual(matchers, {"a_bucket": {"job", "x"}})
        self.assertEqual(grouping, {"shard", "le", "job", "kind", "q"})

    def test_aggregation_with_trailing_by_and_colon_names(self):
        metrics, _, grouping = promql_references("sum(job:rate5m{a='1'}) without (b) + on() x")
        self.assertEqual(metrics, {"job:rate5m", "x"})
        self.assertEqual(grouping, {"b"})

    def test_grafana_variable_queries(self):
        self.assertEqual(_grafana_query_expr('label_values(m{job=~"$job"}, shard)'),
                         'm{job=~"$job"}')
        self.assertEqual(_grafana_query_expr({"query": "query_result(up == 0)"}), "up == 0")
        self.assertIsNone(_grafana_query_expr("label_values(shard)"))
        self.assertIsNone(_grafana_query_expr("label_names()"))

    def test_grafana_variables_substituted(self):
        self.assertEqual(grafana_to_promql('rate(m{s=~"$shard", t="${x:regex}"}[$__rate_interval])'),
                         'rate(m{s=~".*", t=".*"}[5m])')


class RulesTest(unittest.TestCase):
    def test_promtool_check_rules(self):
        if not PROMTOOL:
            self.skipTest(NO_PROMTOOL)
        r = promtool("check", "rules", RULES)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_promtool_test_rules(self):
        if not PROMTOOL:
            self.skipTest(NO_PROMTOOL)
        r = promtool("test", "rules", RULES_TEST)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout)

    def test_promtool_check_example_config(self):
        if not PROMTOOL:
            self.skipTest(NO_PROMTOOL)
        r = promtool("check", "config", PROM_EXAMPLE)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("shardgate.rules.yml", Path(PROM_EXAMPLE).read_text())

    def _rules(self):
        try:
            import yaml  # noqa: F401
        except ImportError:
            self.skipTest("python3-yaml not installed (Debian package python3-yaml)")
        return rules_exprs(RULES)

    def test_rules_use_only_contract_metrics(self):
        exprs, recorded = self._rules()
        allowed = {**contract_series(), **PROMETHEUS_SERIES, **{r: set() for r in recorded}}
        check_references(self, exprs, allowed)

    def test_alerts_are_annotated(self):
        import yaml
        self._rules()
        doc = yaml.safe_load(RULES.read_text())
        alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
        names = {a["alert"] for a in alerts}
        for needed in ("ShardGateReplicaLagBytesHigh", "ShardGateReplicaLagSecondsHigh",
                       "ShardGateAllReplicasUnavailable", "ShardGatePrimaryDown",
                       "ShardGateReadFallbacksHigh", "ShardGatePoolSaturated",
                       "ShardGateErrorRateHigh", "ShardGateMigrationStuck",
                       "ShardGateMigrationBackfillStalled"):
            self.assertIn(needed, names)
        for a in alerts:
            with self.subTest(alert=a["alert"]):
                self.assertIn(a.get("labels", {}).get("severity"), ("warning", "critical"))
                ann = a.get("annotations", {})
                self.assertTrue(ann.get("summary", "").strip())
                self.assertIn("{{ $labels.", ann.get("description", ""))

    def test_every_alert_is_unit_tested(self):
        self._rules()
        import yaml
        doc = yaml.safe_load(RULES.read_text())
        alerts = {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
        tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
        fired = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])
                 if t.get("exp_alerts")}
        quiet = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])
                 if not t.get("exp_alerts")}
        self.assertEqual(alerts - fired, set(), "alerts never tested firing")
        self.assertEqual(alerts - quiet, set(), "alerts never tested staying quiet")


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dash = json.loads(DASHBOARD.read_text())
        cls.panels = list(iter_panels(cls.dash["panels"]))
        cls.query_panels = [p for p in cls.panels if p.get("type") not in ("row", "text")]

    def test_importable_shape(self):
        d = self.dash
        self.assertEqual(d["uid"], "shardgate")
        self.assertIsNone(d.get("id"))
        self.assertGreaterEqual(d["schemaVersion"], 36)
        self.assertTrue(d["title"])
        ids = [p["id"] for p in self.panels]
        self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")

    def test_panels_do_not_overlap(self):
        taken = {}
        for p in self.panels:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    self.assertNotIn((x, y), taken, f"{p['title']!r} overlaps {taken.get((x, y))!r}")
                    taken[(x, y)] = p["title"]

    def test_datasource_variable(self):
        variables = {v["name"]: v for v in self.dash["templating"]["list"]}
        ds = variables.get("datasource")
        self.assertIsNotNone(ds, "no datasource variable")
        self.assertEqual(ds["type"], "datasource")
        self.assertEqual(ds["query"], "prometheus")
        shard = variables.get("shard")
        self.assertIsNotNone(shard, "no shard variable")
        self.assertEqual(shard["type"], "query")
        self.assertTrue(shard.get("multi") and shard.get("includeAll"))
        for v in variables.values():
            if v["type"] == "query":
                self.assertEqual(v["datasource"]["uid"], "${datasource}", v["name"])

    def test_every_panel_queries_the_datasource_variable(self):
        self.assertGreaterEqual(len(self.query_panels), 10)
        for p in self.query_panels:
            with self.subTest(panel=p["title"]):
                self.assertEqual(p["datasource"], {"type": "prometheus", "uid": "${datasource}"})
                self.assertTrue(p.get("targets"), "panel without targets")
                for t in p["targets"]:
                    self.assertIsInstance(t.get("expr"), str)
                    self.assertTrue(t["expr"].strip(), f"empty expr in target {t.get('refId')}")
                    self.assertEqual(t.get("datasource", p["datasource"])["uid"], "${datasource}")
                    promql_references(t["expr"])  # tokenizes, brackets balance

    def test_required_panels(self):
        exprs = " ".join(e for _, e in dashboard_exprs(DASHBOARD))
        for needed in ("rate(shardgate_queries_total",
                       "histogram_quantile(0.5, sum by (shard, le) (rate(shardgate_query_duration_seconds_bucket",
                       "histogram_quantile(0.99, sum by (shard, le) (rate(shardgate_query_duration_seconds_bucket",
                       "shardgate_read_fallbacks_total", "shardgate_replica_lag_bytes",
                       "shardgate_replica_lag_seconds", "shardgate_replica_max_lag_bytes",
                       "shardgate_pool_size", "shardgate_pool_wait_seconds_bucket",
                       "shardgate_client_connections", "shardgate_errors_total",
                       "shardgate_ring_epoch", "shardgate_backend_up",
                       "shardgate_migration_phase", "shardgate_migration_rows_copied",
                       "shardgate_migration_rows_estimated", "shardgate_migration_rows_per_second",
                       "shardgate_migration_verify_mismatches",
                       "shardgate_migration_target_write_failures",
                       "rate(shardgate_dual_write_commits_total",
                       "histogram_quantile(0.5, sum by (le) (rate(shardgate_migration_cutover_pause_seconds_bucket",
                       "histogram_quantile(0.99, sum by (le) (rate(shardgate_migration_cutover_pause_seconds_bucket"):
            self.assertIn(needed, exprs)

    def test_migrations_row_after_the_others(self):
        rows = [p for p in self.dash["panels"] if p["type"] == "row"]
        self.assertEqual(rows[-1]["title"], "Migrations")
        top = rows[-1]["gridPos"]["y"]
        others = [p for p in self.dash["panels"] if p["gridPos"]["y"] < top]
        self.assertTrue(all(p["gridPos"]["y"] + p["gridPos"]["h"] <= top for p in others))
        below = [p for p in self.dash["panels"] if p["gridPos"]["y"] > top]
        self.assertTrue(below)
        for p in below:
            with self.subTest(panel=p["title"]):
                names = set()
                for t in p["targets"]:
                    names |= promql_references(t["expr"])[0]
                self.assertTrue(names and names <= control_plane_series(), sorted(names))

    def test_dashboard_uses_only_contract_metrics(self):
        exprs = dashboard_exprs(DASHBOARD)
        check_references(self, exprs, contract_series())
        names = dashboard_metric_names(DASHBOARD)
        self.assertLessEqual(names, set(contract_series()))
        # Beyond the migrations row, a plain proxy (no [metadata]) exports all it needs.
        self.assertLessEqual(names - control_plane_series(), set(contract_series(CONTRACT)))
        self.assertIn("shardgate_query_duration_seconds_bucket", names)

    def test_queries_are_valid_promql(self):
        """promtool parses every dashboard query (as a recording rule)."""
        if not PROMTOOL:
            self.skipTest(NO_PROMTOOL)
        exprs = dashboard_exprs(DASHBOARD)
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)}
            for i, (_, e) in enumerate(exprs)]}]}
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "dashboard.rules.yml"
            f.write_text(json.dumps(rules, indent=1))  # JSON is YAML
            r = promtool("check", "rules", f)
        index = "\n".join(f"dashboard:query_{i}: {w}" for i, (w, _) in enumerate(exprs))
        self.assertEqual(r.returncode, 0, f"{r.stdout}{r.stderr}\n{index}")


# --------------------------------------------------------------------------- real Prometheus

def synthetic_exposition(t):
    """/metrics text shaped like the full contract (a proxy with [metadata] on): 2 shards, a
    primary and a replica each, with counters growing linearly in t (seconds), and a migration
    adding s2 in its BACKFILL phase."""
    nodes = [("s0", "s0-p", "primary"), ("s0", "s0-r0", "replica"),
             ("s1", "s1-p", "primary"), ("s1", "s1-r0", "replica")]
    shards = ["s0", "s1"]
    roles = ["primary", "replica"]
    fam = {}

    def add(name, kind, samples):
        fam[name] = (kind, samples)

    def lbl(**kv):
        return "{" + ",".join(f'{k}="{v}"' for k, v in kv.items()) + "}" if kv else ""

    def histogram(name, series, per_s, shares=(("0.001", 0.2), ("0.01", 0.6), ("0.1", 0.9),
                                                ("1", 1.0), ("+Inf", 1.0))):
        samples = []
        for labels in series:
            count = per_s * t
            for le, share in shares:
                samples.append((name + "_bucket", {**labels, "le": le}, count * share))
            samples.append((name + "_sum", labels, count * 0.02))
            samples.append((name + "_count", labels, count))
        add(name, "histogram", samples)

    add("shardgate_client_connections", "gauge",
        [("shardgate_client_connections", {"state": s}, v)
         for s, v in (("active", 5), ("idle", 3), ("waiting", 1))])
    add("shardgate_queries_total", "counter",
        [("shardgate_queries_total", {"shard": s, "role": r, "kind": k}, 10 * t)
         for s in shards for r in roles for k in ("read", "write", "ddl", "other")
         if r == "primary" or k == "read"])
    histogram("shardgate_query_duration_seconds",
              [{"shard": s, "role": r} for s in shards for r in roles], 20)
    add("shardgate_routes_total", "counter",
        [("shardgate_routes_total", {"route": r}, 5 * t)
         for r in ("single", "multi", "broadcast", "default", "error")])
    add("shardgate_backend_connections", "gauge",
        [("shardgate_backend_connections", {"shard": s, "node": n, "role": r, "state": st}, v)
         for s, n, r in nodes for st, v in (("idle", 2), ("active", 4))])
    histogram("shardgate_pool_wait_seconds",
              [{"shard": s, "role": r} for s in shards for r in roles], 5)
    replicas = [(s, n) for s, n, r in nodes if r == "replica"]
    add("shardgate_replica_lag_bytes", "gauge",
        [("shardgate_replica_lag_bytes", {"shard": s, "node": n}, 4096) for s, n in replicas])
    add("shardgate_replica_lag_seconds", "gauge",
        [("shardgate_replica_lag_seconds", {"shard": s, "node": n}, 0.5) for s, n in replicas])
    add("shardgate_backend_up", "gauge",
        [("shardgate_backend_up", {"shard": s, "node": n, "role": r}, 0 if n == "s1-r0" else 1)
         for s, n, r in nodes])
    add("shardgate_read_fallbacks_total", "counter",
        [("shardgate_read_fallbacks_total", {"shard": s, "reason": why}, t)
         for s in shards for why in ("lag", "down", "read_your_writes", "no_replicas")])
    add("shardgate_errors_total", "counter",
        [("shardgate_errors_total", {"source": src, "sqlstate_class": c}, 0.5 * t)
         for src, c in (("client", "42"), ("backend", "08"), ("proxy", "53"))])
    add("shardgate_ring_epoch", "gauge", [("shardgate_ring_epoch", {}, 3)])
    add("shardgate_build_info", "gauge", [("shardgate_build_info", {"version": "0.0.0-test"}, 1)])
    add("shardgate_pool_size", "gauge",
        [("shardgate_pool_size", {"shard": s, "node": n, "role": r}, 10) for s, n, r in nodes])
    add("shardgate_replica_max_lag_bytes", "gauge", [("shardgate_replica_max_lag_bytes", {}, 1 << 24)])
    add("shardgate_replica_max_lag_seconds", "gauge", [("shardgate_replica_max_lag_seconds", {}, 10)])
    add("shardgate_worker_clients", "gauge",
        [("shardgate_worker_clients", {"worker": w}, v) for w, v in (("0", 7), ("1", 2))])
    add("shardgate_workers_taking_clients", "gauge", [("shardgate_workers_taking_clients", {}, 2)])
    add("shardgate_session_moves_total", "counter", [("shardgate_session_moves_total", {}, 0.2 * t)])
    add("shardgate_pipelined_reads_total", "counter",
        [("shardgate_pipelined_reads_total", {}, 50.0 * t)])
    add("shardgate_twophase_commits_total", "counter",
        [("shardgate_twophase_commits_total", {"outcome": o}, v * t)
         for o, v in (("committed", 5.0), ("aborted", 0.1), ("in_doubt", 0))])

    # The control plane ([metadata] on), with a migration running.
    add("shardgate_metadata_up", "gauge", [("shardgate_metadata_up", {}, 1)])
    add("shardgate_twophase_recovered_total", "counter",
        [("shardgate_twophase_recovered_total", {"outcome": o}, 1) for o in ("commit", "rollback")])
    add("shardgate_writes_fenced", "gauge", [("shardgate_writes_fenced", {}, 0)])
    add("shardgate_rate_limited_total", "counter",
        [("shardgate_rate_limited_total", {"outcome": o}, v * t)
         for o, v in (("delayed", 3.0), ("refused", 0.5))])
    add("shardgate_metadata_reconnects_total", "counter",
        [("shardgate_metadata_reconnects_total", {}, 1)])
    add("shardgate_topology_epoch", "gauge",
        [("shardgate_topology_epoch", {"kind": k}, 3) for k in ("applied", "stored")])
    mig = {"migration": "m-1", "kind": "add_shard", "shard": "s2"}
    add("shardgate_migration_phase", "gauge",
        [("shardgate_migration_phase", {**mig, "phase": p}, 1 if p == "BACKFILL" else 0)
         for p in ("PREPARE", "DUAL_WRITE", "BACKFILL", "VERIFY", "READY", "CUTOVER",
                   "REVERSE_DUAL_WRITE", "CLEANUP", "DONE", "ABORTING", "ABORTED", "FAILED")])
    add("shardgate_migration_rows_copied", "gauge",
        [("shardgate_migration_rows_copied", mig, 1000 * t)])
    add("shardgate_migration_rows_estimated", "gauge",
        [("shardgate_migration_rows_estimated", mig, 1_000_000)])
    add("shardgate_migration_rows_per_second", "gauge",
        [("shardgate_migration_rows_per_second", mig, 1000)])
    add("shardgate_migration_verify_mismatches", "gauge",
        [("shardgate_migration_verify_mismatches", mig, 0)])
    add("shardgate_migration_target_write_failures", "gauge",
        [("shardgate_migration_target_write_failures", mig, 2)])
    add("shardgate_dual_write_commits_total", "counter",
        [("shardgate_dual_write_commits_total", {"outcome": o}, v * t)
         for o, v in (("copied", 20.0), ("failed", 0.1))])
    histogram("shardgate_migration_cutover_pause_seconds", [{}], 0.5,
              shares=(("0.01", 0.1), ("0.025", 0.3), ("0.05", 0.6), ("0.1", 0.9), ("0.25", 1.0),
                      ("0.5", 1.0), ("1", 1.0), ("2.5", 1.0), ("5", 1.0), ("+Inf", 1.0)))

    lines = []
    for name, (kind, samples) in fam.items():
        lines += [f"# HELP {name} synthetic", f"# TYPE {name} {kind}"]
        lines += [f"{series}{lbl(**labels)} {value}" for series, labels, value in samples]
    return "\n".join(lines) + "\n", fam


def _die_with_parent():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipUnless(PROMETHEUS, NO_PROMETHEUS)
class RealPrometheusTest(unittest.TestCase):
    """Prometheus scrapes a synthetic exporter; every rule evaluates and every dashboard query
    returns data."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        tmp = Path(cls.tmp.name)
        start = time.time()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = synthetic_exposition(time.time() - start)[0].encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        cls.exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=cls.exporter.serve_forever, daemon=True).start()
        exporter_port = cls.exporter.server_address[1]

        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "shardgate",
                                "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
        }))
        cls.proc = None
        for attempt in range(3):
            cls.port = _free_port()
            cls.log = open(tmp / f"prometheus-{attempt}.log", "w+")
            cls.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{cls.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=cls.log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
            if cls._wait(lambda: cls._get("/-/ready", quiet=True) is not None, 30):
                break
            cls._stop()
        else:
            cls.log.seek(0)
            log = cls.log.read()
            cls.tearDownClass()
            raise RuntimeError(f"prometheus did not become ready:\n{log}")
        # Enough scrapes for rate() and enough rule evaluations.
        ok = cls._wait(lambda: cls._value("count_over_time(shardgate_ring_epoch[1m])") >= 6, 60)
        if not ok:
            cls.tearDownClass()
            raise RuntimeError("prometheus did not scrape the synthetic exporter")

    @classmethod
    def _stop(cls):
        if cls.proc and cls.proc.poll() is None:
            cls.proc.terminate()
            try:
                cls.proc.wait(10)
            except subprocess.TimeoutExpired:
                cls.proc.kill()
                cls.proc.wait()
        cls.proc = None

    @classmethod
    def tearDownClass(cls):
        cls._stop()
        cls.exporter.shutdown()
        cls.exporter.server_close()
        cls.log.close()
        cls.tmp.cleanup()

    @staticmethod
    def _wait(pred, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if pred():
                    return True
            except (OSError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.5)
        return False

    @classmethod
    def _get(cls, path, quiet=False, **params):
        url = f"http://127.0.0.1:{cls.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = r.read().decode()
        except OSError:
            if quiet:
                return None
            raise
        return json.loads(body) if path.startswith("/api/") else body

    @classmethod
    def _query(cls, expr):
        try:
            return cls._get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as e:
            return json.loads(e.read().decode())

    @classmethod
    def _value(cls, expr):
        return float(cls._query(expr)["data"]["result"][0]["value"][1])

    def test_synthetic_exporter_covers_the_contract(self):
        text, fam = synthetic_exposition(10.0)
        self.assertEqual(set(fam), set(FULL_CONTRACT))
        self.assertFalse(set(CONTRACT) & set(CONTROL_PLANE_CONTRACT))
        for name, (kind, labels) in FULL_CONTRACT.items():
            self.assertEqual(fam[name][0], kind, name)
            for series, sample_labels, _ in fam[name][1]:
                self.assertEqual(set(sample_labels) - {"le"}, labels, series)
        scraped = {r["__name__"] for r in self._get("/api/v1/series", **{"match[]": '{job="shardgate"}'})["data"]}
        self.assertLessEqual(set(contract_series()), scraped)

    def test_every_dashboard_query_returns_data(self):
        for where, expr in dashboard_exprs(DASHBOARD):
            with self.subTest(where=where):
                r = self._query(grafana_to_promql(expr, "1m"))
                self.assertEqual(r.get("status"), "success", f"{expr}: {r}")
                # Annotations mark changes, which a steady exporter does not make.
                if not where.startswith("annotation"):
                    self.assertTrue(r["data"]["result"], f"no data for {expr}")

    def test_rules_evaluate_without_errors(self):
        def evaluated():
            rules = [r for g in self._get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
            return rules and all(not r["lastEvaluation"].startswith("0001") for r in rules)
        self.assertTrue(self._wait(evaluated, 30), "rules were not evaluated")
        rules = [r for g in self._get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        if self._has_yaml():
            self.assertEqual(len(rules), len(rules_exprs(RULES)[0]))
        for r in rules:
            with self.subTest(rule=r["name"]):
                self.assertEqual(r["health"], "ok", r.get("lastError"))
        # Every rule expression, run as a query, succeeds too (the alerts' own thresholds decide
        # whether anything comes back).
        for r in rules:
            with self.subTest(rule=r["name"]):
                self.assertEqual(self._query(r["query"]).get("status"), "success")

    @staticmethod
    def _has_yaml():
        try:
            import yaml  # noqa: F401
            return True
        except ImportError:
            return False


if __name__ == "__main__":
    unittest.main()
