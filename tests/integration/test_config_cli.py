"""shardgate's command line: config diagnostics (exit 2, every problem as file:line:col + hint,
never listening), --check, and --locate agreeing with where a running proxy puts a row."""

import os
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

import psycopg2

from harness import REPO, SHARDGATE_BIN, ClusterTestCase, Proxy, _port_free, free_port_block

DEMO = REPO / "deploy" / "examples" / "demo.toml"
# file:line:col: error: message, then "  hint: ..." on the next line.
DIAG = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.+)$")


def run(*args, timeout=20):
    return subprocess.run([str(SHARDGATE_BIN), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def good_toml(port, shards=("s0", "s1")):
    out = ["[proxy]", f'listen = "127.0.0.1:{port}"', 'database = "app"', "",
           "[[users]]", 'name = "app"', 'password = "app-secret"', ""]
    for i, s in enumerate(shards):
        out += ["[[shards]]", f'name = "{s}"',
                f'primary = "postgresql://app:app-secret@127.0.0.1:{40000 + i}/app"', ""]
    out += ["[[tables]]", 'name = "accounts"', 'key = "id"', 'key_type = "bigint"', ""]
    return "\n".join(out)


def line_of(text, needle, start=1):
    """1-based number of the first line at or after `start` that contains needle."""
    for n, line in enumerate(text.split("\n"), 1):
        if n >= start and needle in line:
            return n
    raise AssertionError(f"{needle!r} not in config text")


@unittest.skipUnless(os.access(SHARDGATE_BIN, os.X_OK), f"{SHARDGATE_BIN} not built")
class BadConfigTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="sg-cfg-")
        self.addCleanup(self.tmp.cleanup)

    def write(self, name, text):
        p = Path(self.tmp.name) / name
        p.write_text(text)
        return p

    def diagnostics(self, path, text, port):
        """Runs shardgate on a bad config; checks exit 2, no listener, and returns the parsed
        diagnostics [(line, col, msg, hint)] after checking each one's shape."""
        p = subprocess.Popen([str(SHARDGATE_BIN), "--config", str(path)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            self.fail(f"shardgate kept running on a bad config:\n{text}\nstderr:\n{err}")
        self.assertEqual(p.returncode, 2, f"config:\n{text}\nstdout:\n{out}\nstderr:\n{err}")
        self.assertTrue(_port_free(port), "shardgate left something listening on its port")
        lines = err.rstrip("\n").split("\n")
        diags = []
        i = 0
        while i < len(lines):
            m = DIAG.match(lines[i])
            if m:
                self.assertEqual(m["file"], str(path), lines[i])
                self.assertGreaterEqual(int(m["line"]), 1, f"no line number: {lines[i]}")
                self.assertGreaterEqual(int(m["col"]), 1, f"no column: {lines[i]}")
                hint = lines[i + 1] if i + 1 < len(lines) else ""
                self.assertRegex(hint, r"^  hint: \S", f"diagnostic without a hint:\n{err}")
                diags.append((int(m["line"]), int(m["col"]), m["msg"], hint[len("  hint: "):]))
                i += 2
            else:
                i += 1
        self.assertTrue(diags, f"no file:line:col diagnostics on stderr:\n{err}")
        self.assertRegex(err, rf"\b{len(diags)} problem\(s\)", err)
        return diags, err

    def find(self, diags, err, pattern):
        hits = [d for d in diags if re.search(pattern, d[2])]
        self.assertEqual(len(hits), 1, f"expected one diagnostic matching {pattern!r}:\n{err}")
        return hits[0]

    def test_every_problem_reported_at_once(self):
        port = free_port_block(1)
        text = good_toml(port, shards=("s0", "s1", "s0"))
        # Unknown key in [proxy].
        text = text.replace('database = "app"', 'database = "app"\nmax_conections = 10', 1)
        # A bad URL (not a URL, not a conninfo) for s1's primary.
        text = text.replace("postgresql://app:app-secret@127.0.0.1:40001/app", "this is not a url", 1)
        # A table without a key.
        text += "\n[[tables]]\nname = \"orders\"\nkey_type = \"bigint\"\n"
        path = self.write("bad.toml", text)
        diags, err = self.diagnostics(path, text, port)
        self.assertEqual(len(diags), 4, err)

        line, col, msg, hint = self.find(diags, err, r"unknown key .*max_conections")
        self.assertEqual((line, col), (line_of(text, "max_conections"), 1), err)
        self.assertIn("connect_timeout_ms", hint)  # it lists the known keys

        line, col, msg, _ = self.find(diags, err, r"duplicate shard name .*s0")
        second_s0 = line_of(text, 'name = "s0"', line_of(text, 'name = "s0"') + 1)
        self.assertEqual(line, second_s0, err)
        self.assertEqual(col, len('name = ') + 1, err)

        line, col, msg, _ = self.find(diags, err, r"bad primary URL")
        self.assertEqual(line, line_of(text, "this is not a url"), err)
        self.assertEqual(col, len("primary = ") + 1, err)

        line, col, msg, _ = self.find(diags, err, r"orders.*has no .key")
        block = line_of(text, 'name = "orders"') - 1  # its [[tables]] header
        self.assertIn(line, range(block, block + 3), err)

    def test_unknown_key(self):
        port = free_port_block(1)
        text = good_toml(port) + "\n[ring]\nvnodes = 150\nreplication_factor = 2\n"
        path = self.write("unknown.toml", text)
        diags, err = self.diagnostics(path, text, port)
        self.assertEqual(len(diags), 1, err)
        line, col, msg, hint = diags[0]
        self.assertIn("replication_factor", msg)
        self.assertEqual((line, col), (line_of(text, "replication_factor"), 1))
        self.assertIn("vnodes", hint)

    def test_duplicate_shard_name(self):
        port = free_port_block(1)
        text = good_toml(port, shards=("s0", "s0"))
        path = self.write("dup.toml", text)
        diags, err = self.diagnostics(path, text, port)
        self.assertEqual(len(diags), 1, err)
        line, col, msg, _ = diags[0]
        self.assertRegex(msg, r"duplicate shard name .*s0")
        self.assertEqual(line, line_of(text, 'name = "s0"', line_of(text, 'name = "s0"') + 1))

    def test_table_without_key(self):
        port = free_port_block(1)
        text = good_toml(port).replace('key = "id"\n', "")
        path = self.write("nokey.toml", text)
        diags, err = self.diagnostics(path, text, port)
        self.assertEqual(len(diags), 1, err)
        line, _, msg, hint = diags[0]
        self.assertRegex(msg, r"accounts.*has no .key")
        self.assertIn(line, range(line_of(text, "[[tables]]"), line_of(text, 'name = "accounts"') + 1))
        self.assertIn("key", hint)

    def test_bad_urls(self):
        port = free_port_block(1)
        text = good_toml(port).replace("127.0.0.1:40000/app", "127.0.0.1:99999/app", 1)
        text = text.replace("postgresql://app:app-secret@127.0.0.1:40001/app", "host=x port", 1)
        path = self.write("url.toml", text)
        diags, err = self.diagnostics(path, text, port)
        self.assertEqual(len(diags), 2, err)
        self.assertEqual(sorted(d[0] for d in diags),
                         [line_of(text, "99999"), line_of(text, '"host=x port"')], err)
        for d in diags:
            self.assertRegex(d[2], r"bad primary URL", err)

    def test_toml_syntax_error(self):
        port = free_port_block(1)
        text = good_toml(port).replace("[[users]]", "[[users]]\nname_typo = = 3", 1)
        path = self.write("syntax.toml", text)
        diags, err = self.diagnostics(path, text, port)
        self.assertEqual(len(diags), 1, err)
        self.assertEqual(diags[0][0], line_of(text, "name_typo"), err)

    def test_missing_file(self):
        p = run("--config", Path(self.tmp.name) / "nope.toml")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("nope.toml", p.stderr)

    def test_check_demo_config(self):
        p = run("--config", DEMO, "--check")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("2 shards", p.stdout)
        self.assertEqual(p.stderr, "")

    def test_check_bad_config(self):
        port = free_port_block(1)
        text = good_toml(port, shards=("s0", "s0"))
        p = run("--config", self.write("dup.toml", text), "--check")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertRegex(p.stderr, r"dup\.toml:\d+:\d+: error: duplicate shard name")

    def test_locate_demo(self):
        p = run("--config", DEMO, "--locate", "accounts", "42")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"^s[01]\n$")
        # Bad inputs: an error, not a guess.
        p = run("--config", DEMO, "--locate", "accounts", "forty-two")
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(p.stdout, "")
        p = run("--config", DEMO, "--locate", "no_such_table", "42")
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(p.stdout, "")


@unittest.skipUnless(os.access(SHARDGATE_BIN, os.X_OK), f"{SHARDGATE_BIN} not built")
class LocateMatchesProxyTest(ClusterTestCase):
    SHARDS, REPLICAS = 2, 0

    def test_locate_matches_row_placement(self):
        proxy = Proxy(self.cluster)
        self.addCleanup(proxy.stop)
        keys = [42, 0, -1, 7, 1000, 9223372036854775807, -9223372036854775808]
        conn = psycopg2.connect(proxy.dsn(), connect_timeout=10)
        conn.autocommit = True  # each INSERT its own transaction: the keys live on both shards
        with conn.cursor() as cur:  # not `with conn`: psycopg2 2.9 would open a transaction
            for k in keys:
                cur.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'cli')", (k,))
        conn.close()
        demo = run("--config", DEMO, "--locate", "accounts", "42")
        self.assertEqual(demo.returncode, 0, demo.stderr)
        for k in keys:
            where = [i for i in range(self.cluster.shards)
                     if self.cluster.sql(self.cluster.primary_port(i),
                                         f"SELECT 1 FROM accounts WHERE id = {k}")]
            self.assertEqual(len(where), 1, f"key {k} is on shards {where}")
            self.assertEqual(proxy.locate("accounts", str(k)), f"s{where[0]}", f"key {k}")
        # Placement depends on shard names and vnodes only: the demo config (same names) agrees.
        self.assertEqual(demo.stdout.strip(), proxy.locate("accounts", "42"))


if __name__ == "__main__":
    unittest.main()
