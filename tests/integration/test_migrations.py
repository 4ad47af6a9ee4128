"""Online add and remove of shards with migration (issue 17), against real PostgreSQL under load.

One cluster of four primaries (no replicas). Every test (and every phase of the per-phase tests)
starts from scratch: a metadata database of its own (meta_<n> on s0's server), `accounts` only
on the shards of the starting ring, rows loaded through a proxy, and two proxies (a, b) with the
admin API sharing that metadata database. A workload (workload.py) runs psycopg2 and psycopg 3
clients over both proxies: transfers between two keys that share a shard under the old and the
new ring (so a transfer is a single-shard transaction throughout), inserts, updates and deletes
of ids each thread owns, and reads that must find every acknowledged row. Each acknowledged write
goes to a ledger; afterwards workload.check_invariants reads every primary directly.

Proved here (each against the ledger, on all four primaries):
- adding s3 to s0..s2 (the copy rate-limited to last about 5 s) and removing s1 from s0..s3
  (unlimited), under load, with writes to moving keys meanwhile: DONE, the sum held, no
  acknowledged row lost or duplicated, every row on exactly its owner under the new ring, nothing
  left on the old owners, no prepared transaction, every definite row readable by key through
  both proxies, writes acknowledged throughout (also in REVERSE_DUAL_WRITE, ended by POST
  .../cleanup); a second migration meanwhile gets 409;
- abort in DUAL_WRITE, BACKFILL, VERIFY, READY (manual cutover) and REVERSE_DUAL_WRITE: ABORTED,
  every row on its old owner only, the target empty, the sum held;
- kill -9 of the proxy that runs the migration (found by its advisory lock in the metadata
  database; both proxies when it cannot be told) in BACKFILL, VERIFY, CUTOVER,
  REVERSE_DUAL_WRITE and CLEANUP (in BACKFILL, inside a rate-limited copy), restarted with the
  same config: the migration ends DONE (or ABORTED before CLEANUP), never stuck, and the
  invariants of its end state hold;
- the harness itself, without any migration: the Python ring agrees with `shardgate --locate`,
  the ledger's rules for writes in doubt, the checker reports deliberate damage (a row copied to
  a wrong primary, a row deleted, a balance changed, an unknown row, a row on the target, a
  prepared transaction), and the workload keeps the invariants on plain proxies, also across a
  kill -9 and restart of one of them.

Phases are reached with SHARDGATE_TEST_PHASE_DELAY_MS in the proxies' environment (the runner
sleeps that long after journaling each phase): the test polls GET /api/v1/migrations/{id} every
50 ms and acts while the phase lasts.

Knobs: MIGRATION_LONG=1 (more rows, threads and time), MIGRATION_PHASE_DELAY_MS (default 1000),
MIGRATION_SEED (default 1). Run one test with `-k`, e.g.
`/usr/bin/python3 tests/integration/test_migrations.py -k abort`.
"""

import contextlib
import os
import random
import subprocess
import sys
import time
import unittest
import urllib.error
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import ClusterTestCase, Proxy  # noqa: E402
from test_admin import TOKEN, Api  # noqa: E402
from workload import (Ledger, Ring, Workload, check_invariants, check_via_proxy,  # noqa: E402
                      format_problems, load_accounts, locate_mismatches, read_rows, xxh3)

try:
    import psycopg2
except ImportError:  # pragma: no cover - reported as skips
    psycopg2 = None

LONG = bool(os.environ.get("MIGRATION_LONG"))
ROWS = 20_000 if LONG else 3_000           # under-load tests
SMALL_ROWS = 5_000 if LONG else 1_000      # per-phase tests
THREADS = 8 if LONG else 4
LIGHT_THREADS = 4 if LONG else 2
LOAD_AFTER_S = 5 if LONG else 1            # workload kept on after the end state, before checks
PHASE_DELAY_MS = int(os.environ.get("MIGRATION_PHASE_DELAY_MS", "1000"))
SEED = int(os.environ.get("MIGRATION_SEED", "1"))
DONE_TIMEOUT = 600 if LONG else 120
HEARTBEAT_MS, FENCE_MS = 200, 2000
STUCK_S = 30  # no progress, the same error, this long: the migration is stuck

ORDER = ["PREPARE", "DUAL_WRITE", "BACKFILL", "VERIFY", "READY", "CUTOVER",
         "REVERSE_DUAL_WRITE", "CLEANUP", "DONE"]
RANK = {p: i for i, p in enumerate(ORDER)}
TERMINAL = {"DONE", "ABORTED", "FAILED"}
ABORT_PHASES = ["DUAL_WRITE", "BACKFILL", "VERIFY", "READY", "REVERSE_DUAL_WRITE"]
KILL_PHASES = ["BACKFILL", "VERIFY", "CUTOVER", "REVERSE_DUAL_WRITE", "CLEANUP"]
MIGRATION_FIELDS = {"id", "kind", "shard", "phase", "moves", "rows_copied", "rows_estimated",
                    "rows_per_second", "eta_seconds", "verify", "target_write_failures",
                    "started_at", "updated_at", "error"}
MIGRATION_TMPL = "/api/v1/migrations/{id}"
RUNNER_LOCK = 0x5347_4d49_4752  # the runner election's advisory lock (src/migrations/runner.h)


class _ShardPrefix:
    """The cluster as harness.proxy_toml sees it, with only its first n shards in [[shards]]."""

    def __init__(self, cluster, n):
        self._cluster, self.shards = cluster, n

    def __getattr__(self, name):
        return getattr(self._cluster, name)


@contextlib.contextmanager
def _environ(**kv):
    """os.environ with kv set (None: removed) for the block; harness.Proxy inherits it."""
    saved = {k: os.environ.get(k) for k in kv}
    try:
        for k, v in kv.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _local_socket_inodes(port):
    """Inodes of the TCP sockets whose local port is port (this network namespace)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def _has_socket(pid, inodes):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def check_phase_order(trace, manual):
    """Problems with a sequence of observed phases (consecutive duplicates removed): phases only
    move forward (a CUTOVER may fall back to an earlier phase before the point of no return, when
    it is abandoned), READY only with manual cutover, no abort once CLEANUP started, nothing after
    a terminal phase."""
    out = []
    for p, q in zip(trace, trace[1:]):
        if p in TERMINAL:
            out.append(f"{q} after the terminal {p}")
        elif q in ("ABORTING", "ABORTED"):
            if p in ("CLEANUP", "DONE"):
                out.append(f"{q} after {p} (abort once CLEANUP started)")
        elif p in ("ABORTING",):
            if q not in ("ABORTED", "FAILED"):
                out.append(f"{q} after ABORTING")
        elif q == "FAILED":
            pass
        elif p in RANK and q in RANK:
            if RANK[q] < RANK[p] and not (p == "CUTOVER" and RANK[q] < RANK["CUTOVER"]):
                out.append(f"{q} after {p}")
        else:
            out.append(f"unknown phase in {p} -> {q}")
    if "READY" in trace and not manual:
        out.append("READY with cutover auto")
    return out


@unittest.skipUnless(os.access(harness.SHARDGATE_BIN, os.X_OK),
                     f"{harness.SHARDGATE_BIN} not built")
class MigrationTest(ClusterTestCase):
    SHARDS, REPLICAS = 4, 0
    runs = 0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        c = cls.cluster
        cls.ports = {f"s{i}": c.primary_port(i) for i in range(cls.SHARDS)}
        cls.meta_port = c.primary_port(0)
        cls.token_file = c.dir / "admin.token"
        cls.token_file.write_text(TOKEN + "\n")
        # A second, empty database on s3's server: a valid primary for a shard "s4", so that a
        # second add is refused only because a migration runs.
        c.sql(cls.ports["s3"], "CREATE DATABASE app2 OWNER app", db="postgres")
        cls.ring3 = Ring(["s0", "s1", "s2"])
        cls.ring4 = Ring(["s0", "s1", "s2", "s3"])
        cls.ring_without_s1 = Ring(["s0", "s2", "s3"])

    def setUp(self):
        if psycopg2 is None:
            self.skipTest("psycopg2 not installed")
        self.proxies, self.workload, self.mid, self.last = [], None, None, None
        self.trace, self.trace_t = [], []
        self.addCleanup(self.stop_run)

    # ------------------------------------------------------------------ setup of one run

    def url(self, shard, db="app"):
        return f"postgresql://app:app-secret@127.0.0.1:{self.ports[shard]}/{db}"

    def fresh(self, shards, rows, delay_ms=0):
        """A clean start: a new metadata database, accounts (empty) on s0..s<shards-1> only and
        nowhere else, proxies a and b on that ring, `rows` rows of balance 100 loaded through a.
        Returns the ledger."""
        self.stop_run()
        MigrationTest.runs += 1
        self.meta_db = f"meta_{MigrationTest.runs}"
        c = self.cluster
        c.sql(self.meta_port, f"CREATE DATABASE {self.meta_db} OWNER app", db="postgres")
        for i in range(self.SHARDS):
            port = c.primary_port(i)
            c.sql(port, "DROP TABLE IF EXISTS accounts CASCADE")
            for (schema,) in c.sql(port, "SELECT nspname FROM pg_namespace "
                                         "WHERE nspname LIKE 'shardgate%'"):
                c.sql(port, f'DROP SCHEMA "{schema}" CASCADE')
            if i < shards:
                c.sql(port, harness.ACCOUNTS_DDL, user="app")
        self.delay_ms = delay_ms
        self.a = self.start_proxy("a", shards)
        self.b = self.start_proxy("b", shards)
        self.mid, self.trace, self.trace_t, self.last = None, [], [], None
        ledger = Ledger()
        load_accounts(self.a.dsn(), Ring([f"s{i}" for i in range(shards)]),
                      list(range(1, rows + 1)), 100, ledger)
        return ledger

    def start_proxy(self, name, shards):
        admin = harness.free_port_block(1)
        extra = (f'[admin]\nlisten = "127.0.0.1:{admin}"\ntoken_file = "{self.token_file}"\n'
                 f'[metadata]\nurl = "postgresql://app:app-secret@127.0.0.1:{self.meta_port}/'
                 f'{self.meta_db}"\nheartbeat_ms = {HEARTBEAT_MS}\nfence_timeout_ms = {FENCE_MS}\n'
                 f'instance = "{self.meta_db}-{name}"\n')
        delay = self.delay_ms or None
        with _environ(SHARDGATE_TEST_PHASE_DELAY_MS=delay):
            p = Proxy(_ShardPrefix(self.cluster, shards), extra_toml=extra)
            p.env = dict(os.environ)
        p.name, p.admin_port, p.api = name, admin, Api(admin)
        self.proxies.append(p)
        if not harness.wait_port(admin, 10, p.alive):
            self.fail(f"proxy {name}'s admin API did not listen on {admin}:\n{p.log()[-3000:]}")
        return p

    def stop_run(self):
        if self.workload is not None:
            self.workload.stop(timeout=10)
            self.workload = None
        for p in self.proxies:
            p.stop()
        self.proxies = []

    def kill9(self, p):
        p.proc.kill()
        p.proc.wait()

    def restart(self, p):
        """Starts a killed proxy again with the same config (ports, instance id) and environment."""
        with open(p.log_path, "ab") as log:
            p.proc = subprocess.Popen([str(harness.SHARDGATE_BIN), "--config", str(p.config)],
                                      stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=p.env,
                                      preexec_fn=harness._die_with_parent)
        if p not in harness._live:
            harness._live.append(p)
        if not (harness.wait_port(p.port, 15, p.alive) and
                harness.wait_port(p.admin_port, 10, p.alive)):
            self.fail(f"proxy {p.name} did not come back after a restart:\n{p.log()[-3000:]}")

    def start_workload(self, ledger, rings, transfer_rows, threads):
        self.workload = Workload([p.dsn() for p in self.proxies], ledger, rings,
                                 range(1, transfer_rows + 1), threads=threads,
                                 seed=SEED + MigrationTest.runs).start()
        return self.workload

    # ------------------------------------------------------------------ the admin API

    def api(self, method, path, body=None, template=None):
        """(status, body) from the first live proxy that answers."""
        last = None
        for p in self.proxies:
            if not p.alive():
                continue
            try:
                return p.api.call(method, path, body, template=template)
            except (urllib.error.URLError, OSError, ValueError) as e:
                last = e
        raise ConnectionError(f"no proxy answered {method} {path}: {last!r}")

    def start_migration(self, method, path, body=None, template=None):
        st, r = self.api(method, path, body, template=template)
        self.assertEqual(st, 202, f"{method} {path} {body}: {r}")
        m = r["migration"]
        self.mid, self.trace, self.trace_t, self.last = m["id"], [], [], m
        self.note_phase(m["phase"])
        return m

    def get_migration(self):
        st, m = self.api("GET", f"/api/v1/migrations/{self.mid}", template=MIGRATION_TMPL)
        self.assertEqual(st, 200, m)
        self.last = m
        self.note_phase(m["phase"])
        return m

    def note_phase(self, phase):
        if not self.trace or self.trace[-1] != phase:
            self.trace.append(phase)
            self.trace_t.append((time.monotonic(), phase))

    def phase_at(self, t):
        """The phase last seen at or before monotonic time t ("before" the migration)."""
        seen = [p for when, p in self.trace_t if when <= t]
        return seen[-1] if seen else "before the migration"

    def wait_phase(self, want, timeout):
        """Polls the migration every 50 ms until its phase is in want. Fails when it ends in
        another terminal phase, passes every phase of want (the window was too short), or
        stays STUCK_S seconds with an error and no progress."""
        want = set(want)
        deadline = time.monotonic() + timeout
        same, since = None, time.monotonic()
        while time.monotonic() < deadline:
            try:
                m = self.get_migration()
            except ConnectionError:  # both proxies down for a moment (restart)
                time.sleep(0.1)
                continue
            phase = m["phase"]
            if phase in want:
                return m
            if phase in TERMINAL:
                self.fail(f"the migration ended {phase} while waiting for {sorted(want)}: {m}")
            now = (phase, m.get("error"), m.get("rows_copied"), m.get("verify"))
            if now != same:
                same, since = now, time.monotonic()
            elif m.get("error") and time.monotonic() - since > STUCK_S:
                self.fail(f"the migration is stuck in {phase} on an error for {STUCK_S}s "
                          f"(phases seen {self.trace}): {m}")
            ranks = [RANK[w] for w in want if w in RANK]
            if phase in RANK and ranks and RANK[phase] > max(ranks):
                self.fail(f"the migration passed {sorted(want)} before the test could act (now "
                          f"{phase}); raise MIGRATION_PHASE_DELAY_MS (now {PHASE_DELAY_MS})")
            time.sleep(0.05)
        self.fail(f"timed out after {timeout}s waiting for phase {sorted(want)}; "
                  f"phases seen {self.trace}; last {self.last}")

    def find_runner(self, db=None, samples=3):
        """The proxy that holds the runner's advisory lock (any advisory lock, if nobody holds
        that key) in database db (default: this run's metadata database) in every one of
        `samples` looks; None when that is not exactly one proxy. The lock's backend names its
        client port, and the proxy is the process with a socket on that port."""
        db = db or self.meta_db
        held = None
        for i in range(samples):
            rows = self.cluster.sql(self.meta_port, (
                "SELECT DISTINCT a.client_port, (l.classid::bigint << 32) | l.objid::bigint "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                f"AND a.datname = '{db}' AND a.client_port > 0"), db="postgres")
            ports = {int(port) for port, key in rows if int(key) == RUNNER_LOCK}
            ports = ports or {int(port) for port, _ in rows}
            now = set()
            for port in ports:
                inodes = _local_socket_inodes(port)
                now |= {p for p in self.proxies if p.alive() and _has_socket(p.proc.pid, inodes)}
            held = now if held is None else held & now
            if i + 1 < samples:
                time.sleep(0.05)
        return next(iter(held)) if held and len(held) == 1 else None

    # ------------------------------------------------------------------ assertions

    def migration_problems(self, m, kind, shard, phase):
        """What is wrong with a finished migration's JSON (the API's documented shape)."""
        out = []
        if MIGRATION_FIELDS - set(m):
            out.append(f"fields missing: {sorted(MIGRATION_FIELDS - set(m))}")
        got = tuple(m.get(k) for k in ("id", "kind", "shard", "phase"))
        if got != (self.mid, kind, shard, phase):
            out.append(f"id, kind, shard, phase {got}, want {(self.mid, kind, shard, phase)}")
        if phase == "DONE" and m.get("error") is not None:
            out.append(f"error {m['error']!r} in a migration DONE")
        if not m.get("moves"):
            out.append("no moves")
        for mv in m.get("moves") or []:
            if {"from", "to", "ranges"} - set(mv):
                out.append(f"a move without from/to/ranges: {mv}")
            elif (mv["to"] if kind == "add_shard" else mv["from"]) != shard:
                out.append(f"a move that does not involve {shard}: {mv}")
        if {"rows_checked", "mismatches", "repaired"} - set(m.get("verify") or {}):
            out.append(f"verify lacks rows_checked/mismatches/repaired: {m.get('verify')}")
        return [f"migration JSON: {x}" for x in out]

    def order_problems(self, manual=False):
        return [f"phase order: {x} (phases seen {self.trace})"
                for x in check_phase_order(self.trace, manual)]

    def topology_problems(self, names, timeout=10):
        """[] once every live proxy serves a topology whose active shards are exactly names,
        with none joining or leaving (a shard "removed" may still be listed), within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {}
            for p in self.proxies:
                if p.alive():
                    st, t = p.api.call("GET", "/api/v1/topology")
                    seen[p.name] = (sorted(f"{s['name']}:{s.get('state', 'active')}"
                                           for s in t["shards"]
                                           if s.get("state", "active") != "removed")
                                    if st == 200 else st)
            if all(v == sorted(f"{n}:active" for n in names) for v in seen.values()):
                return []
            if time.monotonic() > deadline:
                return [f"topology: want {sorted(names)} active, proxies serve {seen}"]
            time.sleep(0.1)

    def assert_topology(self, names):
        self.assertEqual(self.topology_problems(names), [])

    def invariant_problems(self, ring, ledger):
        """check_invariants on every primary, and check_via_proxy through each live proxy."""
        problems = check_invariants(self.cluster, self.ports, ring.owner, ledger)
        for p in self.proxies:
            if p.alive():
                problems += check_via_proxy(p.dsn(), ring.owner, ledger)
        return problems

    def workload_problems(self, wl, stuck):
        """What the workload saw that the contract does not allow, each with the phase then."""
        s = wl.stats
        print(f"\n[{self._testMethodName}] workload: {s.summary()}", file=sys.stderr)
        out = [f"hangs: {x}" for x in stuck]
        out += [f"impossible answer in {self.phase_at(t)}: {op}: {msg}"
                for t, op, msg in s.anomalies[:20]]
        out += [f"error outside the contract in {self.phase_at(t)}: {op}: {code} {msg}"
                for t, op, code, msg in s.unexpected[:20]]
        for op in ("transfer", "insert", "read"):
            if not s.counts[f"{op}:ok"]:
                out.append(f"no {op} succeeded: {s.summary()}")
        return out

    def assert_all(self, ring, ledger, wl, stuck, what, extra=()):
        """Fails once with everything wrong: the workload's findings, extra, the invariants."""
        out = self.workload_problems(wl, stuck) + list(extra)
        problems = self.invariant_problems(ring, ledger)
        if problems:
            out.append(f"{what}: {format_problems(problems)}")
        if out:
            self.fail(f"{what}; phases seen {self.trace}:\n" + "\n".join(out))

    @contextlib.contextmanager
    def diagnose(self, label):
        """On a failure inside the block: the migration, its phases and the proxies' logs."""
        try:
            yield
        except BaseException:
            out = [f"\n===== {self.id()} [{label}] failed",
                   f"migration {self.mid}: phases seen {self.trace}", f"last: {self.last}"]
            if self.workload is not None:
                out.append(f"workload: {self.workload.stats.summary()}")
            for p in self.proxies:
                lines = p.log().splitlines()
                out.append(f"--- proxy {p.name} (port {p.port}), last 40 of {len(lines)} lines")
                out += lines[-40:]
            print("\n".join(out), file=sys.stderr)
            raise

    # ================================================================== the harness itself

    def test_ring_matches_shardgate_locate(self):
        self.assertEqual(xxh3(b"s0#0"), 0x3ca18f170a220936)  # README's ring contract
        self.assertEqual(xxh3((42).to_bytes(8, "little", signed=True)), 0xd5a6f8c838df27c8)
        demo = Ring(["s0", "s1"])
        self.assertEqual([demo.owner(k) for k in range(1, 7)], ["s0", "s1", "s1", "s0", "s1", "s1"])
        rnd = random.Random(SEED)
        keys = [1, 2, 42, -1, 2**63 - 1, -2**63] + [rnd.randrange(-2**63, 2**63) for _ in range(8)]
        keys += [rnd.randrange(1, 20_000_000) for _ in range(10)]
        for ring in (self.ring3, self.ring4, self.ring_without_s1):
            with self.subTest(ring=ring.names):
                ports = {n: self.ports[n] for n in ring.names}
                self.assertEqual(locate_mismatches(ring, ports, keys), [])

    def test_ledger_in_doubt_rules(self):
        led = Ledger()
        led.set(1, 100)
        led.set(2, 100)
        led.add(1, -5)
        led.add(2, 5)
        led.doubt_delta(1, -7)      # a transfer whose COMMIT got no answer
        led.doubt_delta(2, 7)
        self.assertTrue(led.allows(1, 95) and led.allows(1, 88) and led.allows(2, 112))
        self.assertFalse(led.allows(1, 93) or led.allows(1, None))
        led.known(10)
        led.doubt_state(10, 50)     # an insert in doubt
        led.set(11, 30)
        led.doubt_state(11, None)   # a delete in doubt
        self.assertTrue(led.allows(10, None) and led.allows(10, 50) and led.allows(11, None))
        self.assertFalse(led.allows(10, 51) or led.allows(11, 31))
        self.assertEqual(led.expected_total(), 230)
        for total in (230, 280, 200, 250):
            self.assertTrue(led.allows_total(total), total)
        self.assertFalse(led.allows_total(223), "half a transfer must break the sum")
        self.assertEqual(led.definite(), {})
        led.set(12, 5)
        self.assertEqual(led.definite(), {12: 5})

    def test_phase_order_rules(self):
        ok = [["PREPARE", "DUAL_WRITE", "BACKFILL", "VERIFY", "CUTOVER", "REVERSE_DUAL_WRITE",
               "CLEANUP", "DONE"],
              ["PREPARE", "BACKFILL", "ABORTING", "ABORTED"],
              ["VERIFY", "CUTOVER", "VERIFY", "CUTOVER", "REVERSE_DUAL_WRITE", "ABORTING",
               "ABORTED"],
              ["DUAL_WRITE", "FAILED"]]
        for trace in ok:
            self.assertEqual(check_phase_order(trace, manual=False), [], trace)
        self.assertEqual(check_phase_order(["VERIFY", "READY", "CUTOVER"], manual=True), [])
        bad = [(["BACKFILL", "DUAL_WRITE"], False), (["CLEANUP", "ABORTED"], False),
               (["REVERSE_DUAL_WRITE", "VERIFY"], False), (["DONE", "CLEANUP"], False),
               (["VERIFY", "READY", "CUTOVER"], False), (["ABORTING", "CUTOVER"], False),
               (["BACKFILL", "COPYING"], False)]
        for trace, manual in bad:
            self.assertNotEqual(check_phase_order(trace, manual), [], trace)

    def test_checker_detects_damage(self):
        ledger = self.fresh(3, 300)
        ring, c = self.ring3, self.cluster
        self.assertEqual(check_invariants(c, self.ports, ring.owner, ledger), [])
        self.assertEqual(check_via_proxy(self.a.dsn(), ring.owner, ledger), [])
        on = lambda shard: next(k for k in range(1, 301) if ring.owner(k) == shard)  # noqa: E731
        x, y = on("s0"), on("s2")
        c.sql(self.ports["s1"], f"INSERT INTO accounts (id, owner, balance) VALUES ({x}, 'x', 100)")
        c.sql(self.ports["s2"], f"DELETE FROM accounts WHERE id = {y}")
        problems = check_invariants(c, self.ports, ring.owner, ledger)
        # (the sum happens to hold: the copy adds what the delete took away)
        self.assertEqual(sorted((p.kind, p.key) for p in problems),
                         [("duplicated", x), ("lost", y), ("misplaced", x)],
                         format_problems(problems))
        self.assertEqual([(p.kind, p.key) for p in check_via_proxy(self.a.dsn(), ring.owner,
                                                                    ledger)],
                         [("proxy_missing", y)])
        # More damage: a balance changed on the owner, a row nobody wrote, a row on the target
        # (s3, not in the ring), a prepared transaction left on it.
        z, unknown, t = on("s1"), 424_242, 7
        c.sql(self.ports[ring.owner(z)], f"UPDATE accounts SET balance = 99 WHERE id = {z}")
        c.sql(self.ports[ring.owner(unknown)],
              f"INSERT INTO accounts (id, owner, balance) VALUES ({unknown}, 'u', 1)")
        s3 = self.ports["s3"]
        c.sql(s3, "ALTER SYSTEM SET max_prepared_transactions = 4", db="postgres")
        c.sql(s3, "CHECKPOINT", db="postgres")  # restart stops it -m immediate: keep what came
        c.restart(s3)                            # before (synchronous_commit is off)
        c.sql(s3, harness.ACCOUNTS_DDL, user="app")
        c.sql(s3, f"INSERT INTO accounts (id, owner, balance) VALUES ({t}, 't', 100)")
        c.sql(s3, "BEGIN; INSERT INTO accounts (id, owner, balance) VALUES (-5, 'p', 1); "
                  "PREPARE TRANSACTION 'sg-checker-selfcheck'")
        try:
            kinds = {(p.kind, p.key) for p in check_invariants(c, self.ports, ring.owner, ledger)}
        finally:
            c.sql(s3, "ROLLBACK PREPARED 'sg-checker-selfcheck'")
        for want in (("balance", z), ("unknown", unknown), ("misplaced", t), ("duplicated", t),
                     ("prepared_xact", None), ("sum", None), ("lost", y), ("misplaced", x)):
            self.assertIn(want, kinds)

    def test_workload_keeps_invariants_without_migration(self):
        """The workload and the checker agree on plain proxies (two, sharing the metadata)."""
        ledger = self.fresh(3, SMALL_ROWS)
        wl = self.start_workload(ledger, [self.ring3, self.ring4], SMALL_ROWS, THREADS)
        time.sleep(5 if not LONG else 30)
        stuck = wl.stop()
        extra = [f"no {op} succeeded" for op in ("update", "delete")
                 if not wl.stats.counts[f"{op}:ok"]]
        extra += [f"{k} in doubt" for k in ledger.ids() if ledger.in_doubt(k)]
        extra += self.topology_problems(self.ring3.names)
        self.assert_all(self.ring3, ledger, wl, stuck, "after the workload", extra)
        print(f"[workload] {len(wl.stats.acks)} acknowledged writes, longest gap "
              f"{wl.max_ack_gap(wl.stats.acks[0][0], wl.stats.acks[-1][0]) * 1000:.0f} ms",
              file=sys.stderr)

    def test_workload_survives_proxy_kill9_without_migration(self):
        """Kill -9 and restart of one proxy under the workload: clients move to the other one,
        writes in doubt are allowed either way, and the invariants hold. Also proves find_runner
        on an advisory lock held through proxy a."""
        ledger = self.fresh(3, SMALL_ROWS)
        holder = psycopg2.connect(self.a.dsn(), connect_timeout=10)
        holder.autocommit = True
        cur = holder.cursor()
        cur.execute("BEGIN")
        cur.execute("SELECT pg_advisory_xact_lock(4242)")  # binds to s0's primary, db app
        self.assertIs(self.find_runner(db="app"), self.a)
        cur.execute("ROLLBACK")
        holder.close()
        wl = self.start_workload(ledger, [self.ring3], SMALL_ROWS, THREADS)
        time.sleep(2)
        self.kill9(self.a)
        st, topo = self.api("GET", "/api/v1/topology")  # answered by b meanwhile
        self.assertEqual(st, 200, topo)
        time.sleep(1)
        self.restart(self.a)
        self.assert_topology(self.ring3.names)
        time.sleep(2)
        stuck = wl.stop()
        c = wl.stats.counts
        self.assertGreater(sum(c.get(k, 0) for k in c if k.endswith((":failed", ":in_doubt"))),
                           0, f"the kill was not noticed: {wl.stats.summary()}")
        self.assert_all(self.ring3, ledger, wl, stuck, "after kill -9 of a proxy")

    # ================================================================== migrations

    def add_body(self, cutover="auto", cleanup_after_s=0, rate=0):
        return {"name": "s3", "primary": self.url("s3"), "replicas": [], "weight": 1,
                "cutover": cutover, "cleanup_after_s": cleanup_after_s,
                "max_rows_per_second": rate}

    def run_under_load(self, start, kind, shard, old, new, ledger):
        """Starts the workload, then the migration (start()); in REVERSE_DUAL_WRITE (if it lasts)
        POSTs .../cleanup; waits for DONE and checks it all."""
        moving = {k for k in range(1, ROWS + 1) if old.owner(k) != new.owner(k)}
        wl = self.start_workload(ledger, [old, new], ROWS, THREADS)
        time.sleep(1)
        t0 = time.monotonic()
        start()
        m = self.wait_phase({"REVERSE_DUAL_WRITE", "CLEANUP", "DONE"}, DONE_TIMEOUT)
        if m["phase"] == "REVERSE_DUAL_WRITE":
            # Writes go to the new owners and back to the old ones: let them run there a while,
            # then start CLEANUP now instead of after cleanup_after_s.
            time.sleep(LOAD_AFTER_S)
            st, r = self.api("POST", f"/api/v1/migrations/{self.mid}/cleanup",
                             template=MIGRATION_TMPL + "/cleanup")
            self.assertIn(st, (200, 202), r)
        m = self.wait_phase({"DONE"}, DONE_TIMEOUT)
        t1 = time.monotonic()
        time.sleep(LOAD_AFTER_S)
        stuck = wl.stop()
        during = wl.acks_between(t0, t1, moving)
        gap = wl.max_ack_gap(t0, t1)
        print(f"[{kind}] DONE in {t1 - t0:.1f}s, phases {self.trace}, rows_copied "
              f"{m['rows_copied']}, verify {m['verify']}, target_write_failures "
              f"{m['target_write_failures']}; {during} acknowledged writes to moving keys "
              f"meanwhile; longest time without any acknowledged write {gap * 1000:.0f} ms",
              file=sys.stderr)
        extra = self.migration_problems(m, kind, shard, "DONE") + self.order_problems()
        if not m["rows_copied"]:
            extra.append("rows_copied is 0")
        if not during:
            extra.append("no acknowledged write to a moving key during the migration")
        if gap >= 10:
            extra.append(f"no write acknowledged for {gap:.1f}s during the migration")
        extra += self.topology_problems(new.names)
        self.assert_all(new, ledger, wl, stuck, f"after {kind} {shard}", extra)
        return m

    def test_add_shard_under_load(self):
        with self.diagnose("add s3"):
            ledger = self.fresh(3, ROWS)

            # The copy rate-limited to last about 5 s, so that more of the load meets it.
            moving = sum(1 for k in range(1, ROWS + 1)
                         if self.ring3.owner(k) != self.ring4.owner(k))

            def start():
                self.start_migration("POST", "/api/v1/shards",
                                     self.add_body(cleanup_after_s=3600, rate=moving // 5))
                st, r = self.api("POST", "/api/v1/shards",
                                 {"name": "s4", "primary": self.url("s3", db="app2"),
                                  "replicas": [], "weight": 1, "cutover": "auto",
                                  "cleanup_after_s": 0, "max_rows_per_second": 0})
                self.assertEqual(st, 409, f"a second migration while one runs: {r}")
            self.run_under_load(start, "add_shard", "s3", self.ring3, self.ring4, ledger)
            self.assertGreater(len(read_rows(self.cluster, self.ports["s3"])), 0)

    def test_remove_shard_under_load(self):
        with self.diagnose("remove s1"):
            ledger = self.fresh(4, ROWS)

            def start():
                self.start_migration("DELETE", "/api/v1/shards/s1",
                                     template="/api/v1/shards/{name}")
                st, r = self.api("DELETE", "/api/v1/shards/s2", template="/api/v1/shards/{name}")
                self.assertEqual(st, 409, f"a second migration while one runs: {r}")
            self.run_under_load(start, "remove_shard", "s1", self.ring4, self.ring_without_s1,
                                ledger)
            self.assertEqual(read_rows(self.cluster, self.ports["s1"]), {})

    def test_abort_in_each_phase_before_cleanup(self):
        for phase in ABORT_PHASES:
            with self.subTest(phase=phase), self.diagnose(f"abort in {phase}"):
                self.abort_in(phase)

    def abort_in(self, phase):
        ledger = self.fresh(3, SMALL_ROWS, delay_ms=PHASE_DELAY_MS)
        wl = self.start_workload(ledger, [self.ring3, self.ring4], SMALL_ROWS, LIGHT_THREADS)
        manual = phase == "READY"
        # cleanup_after_s: REVERSE_DUAL_WRITE lasts until the abort.
        self.start_migration("POST", "/api/v1/shards",
                             self.add_body("manual" if manual else "auto", cleanup_after_s=3600))
        self.wait_phase({phase}, 60)
        st, r = self.api("POST", f"/api/v1/migrations/{self.mid}/abort",
                         template=MIGRATION_TMPL + "/abort")
        self.assertIn(st, (200, 202), f"abort in {phase}: {r}")
        m = self.wait_phase({"ABORTED"}, 60)
        time.sleep(0.5)
        stuck = wl.stop()
        # The abort takes effect in the phase asked, or at the runner's next step (before
        # CLEANUP: order_problems checks that).
        before = [p for p in self.trace if p not in ("ABORTING", "ABORTED")]
        extra = self.order_problems(manual)
        if RANK[before[-1]] < RANK[phase]:
            extra.append(f"aborted in {before[-1]}, before {phase}")
        if (m["kind"], m["shard"]) != ("add_shard", "s3"):
            extra.append(f"migration JSON: kind, shard {m['kind'], m['shard']}")
        extra += self.topology_problems(self.ring3.names)
        left = read_rows(self.cluster, self.ports["s3"])
        if left:
            extra.append(f"{len(left)} rows left on the target (s3), e.g. {sorted(left)[:5]}")
        print(f"[abort {phase}] phases {self.trace}", file=sys.stderr)
        self.assert_all(self.ring3, ledger, wl, stuck, f"after an abort in {phase}", extra)

    def test_kill9_runner_in_each_phase(self):
        for phase in KILL_PHASES:
            with self.subTest(phase=phase), self.diagnose(f"kill -9 in {phase}"):
                self.kill_runner_in(phase)

    def kill_runner_in(self, phase):
        ledger = self.fresh(3, SMALL_ROWS, delay_ms=PHASE_DELAY_MS)
        wl = self.start_workload(ledger, [self.ring3, self.ring4], SMALL_ROWS, LIGHT_THREADS)
        moving = sum(1 for k in range(1, SMALL_ROWS + 1)
                     if self.ring3.owner(k) != self.ring4.owner(k))
        # In BACKFILL the kill lands in the copy itself: rate-limited to last about 5 s.
        rate = max(20, moving // 5) if phase == "BACKFILL" else 0
        self.start_migration("POST", "/api/v1/shards", self.add_body(rate=rate))
        self.wait_phase({phase}, 60)
        if phase == "BACKFILL":
            time.sleep(PHASE_DELAY_MS / 1000 + 0.3)  # past the injected delay, into the copy
        runner = self.find_runner()
        victims = [runner] if runner else list(self.proxies)
        at_kill = self.get_migration()
        self.assertEqual(at_kill["phase"], phase, "the phase ended before the kill; raise "
                         f"MIGRATION_PHASE_DELAY_MS (now {PHASE_DELAY_MS})")
        for p in victims:
            self.kill9(p)
        killed = time.monotonic()
        time.sleep(0.5)
        for p in victims:
            self.restart(p)
        m = self.wait_phase({"DONE", "ABORTED"}, DONE_TIMEOUT)
        took = time.monotonic() - killed
        time.sleep(0.5)
        stuck = wl.stop()
        extra = self.order_problems()
        if phase == "CLEANUP" and m["phase"] != "DONE":
            extra.append(f"a migration killed in CLEANUP ended {m['phase']}, not DONE")
        ring = self.ring4 if m["phase"] == "DONE" else self.ring3
        extra += self.topology_problems(ring.names)
        if m["phase"] == "ABORTED":
            left = read_rows(self.cluster, self.ports["s3"])
            if left:
                extra.append(f"{len(left)} rows left on the target (s3) after ABORTED")
        else:
            extra += self.migration_problems(m, "add_shard", "s3", "DONE")
        who = f"runner {runner.name}" if runner else "both proxies (runner not identified)"
        print(f"[kill -9 {phase}] killed {who} at rows_copied {at_kill['rows_copied']}; ended "
              f"{m['phase']} {took:.1f}s later; phases {self.trace}", file=sys.stderr)
        self.assert_all(ring, ledger, wl, stuck, f"after kill -9 in {phase}, ended {m['phase']}",
                        extra)


if __name__ == "__main__":
    unittest.main(verbosity=2)
