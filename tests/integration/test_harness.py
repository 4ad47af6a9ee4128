"""Checks the test harness itself: cluster up, replication, kill -9 and restart, proxy start/stop."""

import os
import tomllib
import types
import unittest

from harness import (REPO, SHARDGATE_BIN, Cluster, ClusterTestCase, Proxy, _port_free, free_port_block,
                     proxy_toml)


class FreePortTest(unittest.TestCase):
    def test_block_is_free(self):
        base = free_port_block(4)
        self.assertTrue(all(_port_free(p) for p in range(base, base + 4)))


class ProxyTomlTest(unittest.TestCase):
    def test_matches_demo_config(self):
        # A stand-in cluster with the demo's ports must give exactly the shipped demo config.
        fake = types.SimpleNamespace(shards=2, replicas=1, primary_port=lambda i: 55432 + 2 * i,
                                     replica_port=lambda i, j: 55433 + 2 * i + j)
        ours = tomllib.loads(proxy_toml(fake, 6432))
        # The harness turns the metadata database off unless a suite asks for it (see
        # proxy_toml); the demo keeps the default (on, in s0's primary).
        self.assertEqual(ours.pop("metadata"), {"enabled": False})
        demo = tomllib.loads((REPO / "deploy/examples/demo.toml").read_text())
        self.assertEqual(ours, demo)
        extra = tomllib.loads(proxy_toml(fake, 6432, extra_toml="[admin]\nlisten = \"x\""))
        self.assertEqual(extra["admin"], {"listen": "x"})


class ClusterTest(ClusterTestCase):
    def test_layout_and_replication(self):
        c = self.cluster
        self.assertEqual(c.replica_port(1, 0), c.primary_port(1) + 1)
        for i in range(c.shards):
            c.sql(c.primary_port(i), f"INSERT INTO accounts VALUES ({i}, 'a|b', 7)", user="app")
        c.wait_replicas_caught_up()
        for i in range(c.shards):
            self.assertEqual(c.sql(c.replica_port(i, 0), "SELECT id, owner, balance FROM accounts"),
                             [[str(i), "a|b", "7"]])
            self.assertEqual(c.sql(c.replica_port(i, 0), "SELECT pg_is_in_recovery()"), [["t"]])

    def test_kill9_and_restart(self):
        c = self.cluster
        p = c.primary_port(0)
        c.kill9(p)
        self.assertFalse(c.alive(p))
        c.restart(p)  # crash recovery, then the replica reconnects
        c.wait_streaming(c.replica_port(0, 0))
        self.assertEqual(c.sql(p, "SELECT count(*) >= 0 FROM accounts"), [["t"]])
        r = c.replica_port(1, 0)
        c.kill9(r)
        c.restart(r)
        self.assertTrue(c.alive(r))


class Md5ClusterTest(unittest.TestCase):
    def test_md5_password_hash(self):
        c = Cluster("md5", shards=1, replicas=0, auth="md5")
        try:
            rows = c.sql(c.primary_port(0), "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'app'")
            self.assertEqual(rows, [["md5"]])
        finally:
            c.stop()
        self.assertFalse(c.dir.exists())


@unittest.skipUnless(os.access(SHARDGATE_BIN, os.X_OK), f"{SHARDGATE_BIN} not built")
class ProxyTest(ClusterTestCase):
    def test_start_locate_stop(self):
        proxy = Proxy(self.cluster)
        try:
            self.assertTrue(proxy.alive())
            self.assertRegex(proxy.locate("accounts", 42), r"^s[01]$")
            self.assertIn(f":{proxy.port}/app", proxy.dsn())
        finally:
            proxy.stop()
        self.assertFalse(proxy.alive())


if __name__ == "__main__":
    unittest.main()
