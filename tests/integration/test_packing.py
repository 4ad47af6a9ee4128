"""Worker packing: sessions gather on as few worker threads as the load needs and spread when it
grows, moving between transactions. What a client must not notice: its named prepared
statements, its SET values, its open transaction and its rows all stay as they were.

The thresholds are set so low that a Python client's load spreads the sessions and an idle
proxy packs them; the balancer looks every 50 ms."""
import time
import unittest
import urllib.request

import harness
from test_observability import parse, total

try:
    import psycopg
except ImportError:  # pragma: no cover - Debian's python3-psycopg has it
    psycopg = None

CLIENTS = 6


@unittest.skipIf(psycopg is None, "needs Debian's python3-psycopg")
class PackingTest(harness.ClusterTestCase):
    SHARDS, REPLICAS = 2, 0

    def start(self, **options):
        self.mport = harness.free_port_block(1)
        opts = {"workers": 2, "pack_interval_ms": 50}
        opts.update(options)
        proxy = harness.Proxy(self.cluster, proxy_options=opts,
                              extra_toml=f'[metrics]\nlisten = "127.0.0.1:{self.mport}"\n')
        self.addCleanup(proxy.stop)
        return proxy

    def metrics(self):
        url = f"http://127.0.0.1:{self.mport}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return parse(r.read().decode())

    def per_worker(self, m):
        return [total(m, "shardgate_worker_clients", worker=str(i)) for i in range(2)]

    def wait_for(self, what, cond, timeout=10, work=lambda: None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            work()
            m = self.metrics()
            if cond(m):
                return m
            time.sleep(0.02)
        self.fail(f"{what}: metrics were {self.per_worker(m)} clients per worker, "
                  f"{total(m, 'shardgate_workers_taking_clients')} taking clients")

    def connect_clients(self, proxy, base=5000):
        self.base = base
        conns = []
        for i in range(CLIENTS):
            # prepare_threshold=0: every statement is a named server-side prepared statement.
            c = psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=0)
            self.addCleanup(c.close)
            c.execute(f"SET application_name = 'pack{i}'")
            c.execute("INSERT INTO accounts (id, owner) VALUES (%s, %s)",
                      (base + i, f"owner{i}"))
            conns.append(c)
        self.check(conns)  # each worker names the statements it sees first, in its own order
        return conns

    def check(self, conns, first=0):
        """Each client still has its prepared statement, its setting and its row."""
        for i, c in enumerate(conns, first):
            # One statement text per client: the backend-side names the proxy gives them are
            # its own, per worker, and must follow a session that moves.
            row = c.execute(f"SELECT owner, {i} AS client FROM accounts WHERE id = %s",
                            (self.base + i,)).fetchone()
            self.assertEqual(row, (f"owner{i}", i))
            self.assertEqual(c.execute("SHOW application_name").fetchone(), (f"pack{i}",))

    def test_sessions_spread_under_load_and_pack_when_idle(self):
        proxy = self.start(spread_above_percent=2, pack_below_percent=1)
        time.sleep(0.2)
        self.assertEqual(total(self.metrics(), "shardgate_workers_taking_clients"), 1,
                         "an idle proxy is packed")
        conns = self.connect_clients(proxy)  # logins alone may spread it already

        def pack():
            """Idle: the proxy packs again; each session moves back when it next speaks."""
            self.wait_for("the proxy packs to one worker when idle",
                          lambda m: total(m, "shardgate_workers_taking_clients") == 1)
            self.check(conns)
            return self.wait_for("every session on worker 0",
                                 lambda m: self.per_worker(m) == [CLIENTS, 0],
                                 work=lambda: [c.execute("SELECT 1") for c in conns])

        moves = total(pack(), "shardgate_session_moves_total")

        # A transaction opened now stays on its worker until it ends, however the load moves.
        tx = conns[0]
        tx.execute("BEGIN")
        tx.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'in-tx')", (5100,))
        m = self.wait_for("sessions spread over both workers under load",
                          lambda m: total(m, "shardgate_workers_taking_clients") == 2
                          and self.per_worker(m)[1] >= 2,
                          work=lambda: self.check(conns[1:], 1))
        self.assertGreaterEqual(total(m, "shardgate_session_moves_total"), moves + 2)
        self.assertEqual(sum(self.per_worker(m)), CLIENTS, "no client lost or counted twice")
        self.check(conns[1:], 1)
        tx.execute("INSERT INTO accounts (id, owner) VALUES (%s, 'in-tx')", (5101,))
        tx.execute("COMMIT")
        self.check(conns)

        moves = total(self.metrics(), "shardgate_session_moves_total")
        m = pack()
        self.assertGreater(total(m, "shardgate_session_moves_total"), moves)
        self.check(conns)

        # Nothing was lost: every row is on exactly its owner's primary.
        for key in [5000 + i for i in range(CLIENTS)] + [5100, 5101]:
            shard = int(proxy.locate("accounts", str(key))[1:])
            for s in range(self.SHARDS):
                rows = self.cluster.sql(self.cluster.primary_port(s),
                                        f"SELECT count(*) FROM accounts WHERE id = {key}")
                self.assertEqual(rows, [["1" if s == shard else "0"]], f"key {key} on s{s}")

        # A proxy whose sessions moved shuts down cleanly with them still connected.
        proxy.stop(timeout=10)
        self.assertEqual(proxy.proc.returncode, 0, proxy.log())

    def test_no_packing_spreads_clients_from_the_start(self):
        proxy = self.start(pack_interval_ms=0)
        self.connect_clients(proxy, base=6000)
        m = self.metrics()
        self.assertEqual(total(m, "shardgate_workers_taking_clients"), 2)
        self.assertEqual(self.per_worker(m), [CLIENTS // 2, CLIENTS // 2])
        self.assertEqual(total(m, "shardgate_session_moves_total"), 0)


if __name__ == "__main__":
    unittest.main()
