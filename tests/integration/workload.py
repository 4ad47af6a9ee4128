"""A money-transfer workload and the invariant checker for the migration tests (issue 17).

Ring     -- the ring contract of the README in Python (XXH3 from libxxhash via ctypes), so a test
            can name the owner of thousands of keys under any shard set without a process each;
            `locate_mismatches` checks it against `shardgate --locate`.
Ledger   -- every acknowledged write: what each id must look like now. A write whose outcome the
            client cannot know (the connection died at COMMIT) is kept as "in doubt": both
            outcomes are allowed for its rows, and a transfer in doubt still keeps the sum.
Workload -- threads of psycopg2 and psycopg 3 clients over one or more proxies: transfers
            between two keys that share a shard under every ring given (in transactions, retried
            on 40001/40P01), inserts, updates and deletes of ids each thread owns, and reads.
Prober   -- one thread of autocommit inserts and updates of its own fresh ids through one proxy,
            every attempt logged with its times and outcome (for a proxy that must refuse them).
check_invariants -- reads every primary directly and lists what is wrong: an id on two shards,
            on a shard that does not own it, lost, back after its delete, with a balance no
            acknowledged history allows, unknown; the sum; prepared transactions left behind.
check_via_proxy  -- the same ids read through a proxy, grouped by owner.
"""

import bisect
import ctypes
import random
import struct
import subprocess
import tempfile
import threading
import time
from collections import defaultdict, namedtuple

import harness

try:
    import psycopg2
except ImportError:  # pragma: no cover - the tests skip
    psycopg2 = None
try:
    import psycopg
except ImportError:  # pragma: no cover
    psycopg = None

# ------------------------------------------------------------------------------------ the ring


def _load_xxh3():
    for name in ("libxxhash.so.0", "libxxhash.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        fn = lib.XXH3_64bits
        fn.restype, fn.argtypes = ctypes.c_uint64, [ctypes.c_char_p, ctypes.c_size_t]
        return fn
    raise RuntimeError("libxxhash (XXH3_64bits) not found: apt-get install libxxhash0")


_XXH3 = None


def xxh3(data):
    global _XXH3
    if _XXH3 is None:
        _XXH3 = _load_xxh3()
    return _XXH3(data, len(data))


class Ring:
    """Owners of keys on the ring of `shards` ({name: weight} or names), as README's "The ring
    contract" says: point i of shard n is XXH3("n#i"), a bigint key hashes as its 8 bytes
    little-endian (a str key: its UTF-8 bytes, as a text key), the owner is the first point >= the hash (wrapping), equal points go to the
    lower name."""

    def __init__(self, shards, vnodes=150):
        weights = shards if isinstance(shards, dict) else {s: 1 for s in shards}
        self.names = sorted(weights)
        points = sorted((xxh3(f"{n}#{i}".encode()), n)
                        for n, w in weights.items() for i in range(vnodes * w))
        self._hashes = [h for h, _ in points]
        self._owners = [n for _, n in points]
        self._cache = {}

    def owner(self, key):
        o = self._cache.get(key)
        if o is None:
            data = key.encode() if isinstance(key, str) else struct.pack("<q", int(key))
            i = bisect.bisect_left(self._hashes, xxh3(data))
            o = self._cache[key] = self._owners[i % len(self._owners)]
        return o

    def __repr__(self):
        return f"Ring({self.names})"


def ring_toml(shard_ports, vnodes=150):
    """A minimal shardgate config with these shards ({name: primary port}), for --locate."""
    out = ['[proxy]', 'listen = "127.0.0.1:1"', 'database = "app"', '',
           '[[users]]', 'name = "app"', 'password = "app-secret"', '',
           '[ring]', f'vnodes = {vnodes}', '']
    for name, port in shard_ports.items():
        out += ['[[shards]]', f'name = "{name}"',
                f'primary = "postgresql://app:app-secret@127.0.0.1:{port}/app"', '']
    out += ['[[tables]]', 'name = "accounts"', 'key = "id"', 'key_type = "bigint"', '',
            '[metadata]', 'enabled = false', '']
    return "\n".join(out)


def locate_mismatches(ring, shard_ports, keys):
    """[(key, ours, shardgate's)] where Ring disagrees with `shardgate --locate` under a config
    that lists exactly shard_ports."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(ring_toml(shard_ports))
        f.flush()
        out = []
        for k in keys:
            p = subprocess.run([str(harness.SHARDGATE_BIN), "--config", f.name, "--locate",
                                "accounts", str(k)], capture_output=True, text=True, timeout=30)
            theirs = p.stdout.strip() if p.returncode == 0 else f"exit {p.returncode}: {p.stderr}"
            if theirs != ring.owner(k):
                out.append((k, ring.owner(k), theirs))
        return out


# ---------------------------------------------------------------------------------- the ledger


class Ledger:
    """What each id must look like, from acknowledged writes only.

    An id's state is its balance, or None for "no row". Two kinds of keys, never mixed:
    transfer keys (never deleted; their balance is the initial one plus every acknowledged
    delta, which commute) and single-writer keys (one thread inserts, updates, deletes them).
    A write in doubt adds an alternative: a delta that may or may not have applied, or the state
    the row may have instead (the thread then leaves that id alone)."""

    EXACT_LIMIT = 12  # beyond this many in-doubt deltas on one id, check a range instead

    def __init__(self):
        self._lock = threading.Lock()
        self.state = {}
        self.maybe_deltas = defaultdict(list)
        self.maybe_state = {}

    # -- recording (thread-safe)

    def known(self, key, state=None):
        """Declares key (expected absent until a write on it is acknowledged)."""
        with self._lock:
            self.state.setdefault(key, state)

    def set(self, key, state):
        with self._lock:
            self.state[key] = state

    def add(self, key, delta):
        with self._lock:
            self.state[key] += delta

    def doubt_delta(self, key, delta):
        with self._lock:
            self.maybe_deltas[key].append(delta)

    def doubt_state(self, key, state):
        with self._lock:
            self.state.setdefault(key, None)
            self.maybe_state[key] = state

    # -- reading (after the workload stopped)

    def ids(self):
        return list(self.state)

    def in_doubt(self, key):
        return key in self.maybe_state or bool(self.maybe_deltas.get(key))

    def allows(self, key, value):
        """True if value (a balance or None) is a state key may have now."""
        base = self.state.get(key)
        if key in self.maybe_state and value == self.maybe_state[key]:
            return True
        deltas = self.maybe_deltas.get(key)
        if not deltas or base is None or value is None:
            return value == base
        if len(deltas) > self.EXACT_LIMIT:
            lo = base + sum(d for d in deltas if d < 0)
            hi = base + sum(d for d in deltas if d > 0)
            return lo <= value <= hi
        return value - base in _subset_sums(deltas)

    def describe(self, key):
        s = f"expected {self.state.get(key)!r}"
        if key in self.maybe_state:
            s += f" or {self.maybe_state[key]!r} (a write in doubt)"
        if self.maybe_deltas.get(key):
            s += f" plus any of the in-doubt deltas {self.maybe_deltas[key]}"
        return s

    def expected_total(self):
        return sum(v for v in self.state.values() if v is not None)

    def allows_total(self, total):
        """In-doubt transfers keep the sum; each in-doubt single-key write may or may not count."""
        base = self.expected_total()
        offsets = [(self.maybe_state[k] or 0) - (self.state[k] or 0) for k in self.maybe_state]
        if len(offsets) > 16:
            lo = base + sum(o for o in offsets if o < 0)
            return lo <= total <= base + sum(o for o in offsets if o > 0)
        return total - base in _subset_sums(offsets)

    def definite(self):
        """{id: state} of the ids with no write in doubt."""
        return {k: v for k, v in self.state.items() if not self.in_doubt(k)}


def _subset_sums(values):
    sums = {0}
    for v in values:
        sums |= {s + v for s in sums}
    return sums


def load_accounts(dsn, ring, ids, balance, ledger, batch=500):
    """Inserts accounts(id, 'load', balance) through the proxy at dsn, one multi-row INSERT per
    owner (a multi-row INSERT must stay on one shard), and records them in ledger."""
    by_owner = defaultdict(list)
    for k in ids:
        by_owner[ring.owner(k)].append(k)
    conn = psycopg2.connect(dsn, connect_timeout=10)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        for keys in by_owner.values():
            for i in range(0, len(keys), batch):
                chunk = keys[i:i + batch]
                values = ",".join(f"({k}, 'load', {balance})" for k in chunk)
                cur.execute(f"INSERT INTO accounts (id, owner, balance) VALUES {values}")
                for k in chunk:
                    ledger.set(k, balance)
    finally:
        conn.close()


# ------------------------------------------------------------------------------- the workload

_DB_ERRORS = tuple(m.Error for m in (psycopg2, psycopg) if m is not None)
RETRY = {"40001", "40P01"}       # the contract: retriable during dual-write and cutover
POOL_TIMEOUT = "53300"           # the proxy waited pool_timeout_ms for a backend: retried, counted


def sqlstate(e):
    return getattr(e, "pgcode", None) or getattr(e, "sqlstate", None)


def _in_doubt_code(code):
    """A failure at COMMIT (or of an autocommit write) that leaves its outcome unknown."""
    return code is None or code[:2] in ("08", "57")


class _Anomaly(Exception):
    """The database answered something no correct history allows (a row the ledger has is not
    there, a read disagrees with an acknowledged write)."""


class Client:
    """One autocommit connection of psycopg2 or psycopg 3 with a common execute()."""

    def __init__(self, driver, dsn):
        self.driver = driver
        if driver == "psycopg2":
            self.conn = psycopg2.connect(dsn, connect_timeout=5)
            self.conn.autocommit = True
        else:
            self.conn = psycopg.connect(dsn, connect_timeout=5, autocommit=True)
        self.cur = self.conn.cursor()

    def execute(self, sql, params=None):
        """(rows or None, rowcount, command tag)."""
        self.cur.execute(sql, params)
        rows = self.cur.fetchall() if self.cur.description else None
        return rows, self.cur.rowcount, self.cur.statusmessage

    def broken(self):
        if self.driver == "psycopg2":
            return self.conn.closed != 0
        return self.conn.closed or self.conn.broken

    def close(self):
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = defaultdict(int)     # "<op>:<outcome>" and "retry:<sqlstate>"
        self.unexpected = []               # (monotonic time, op, sqlstate, message): errors
                                           # outside the contract
        self.anomalies = []                # (monotonic time, op, message): impossible answers
        self.acks = []                     # Ack: acknowledged writes
        self.retries = []                  # Retry: attempts answered 40001/40P01/53300

    def bump(self, what, n=1):
        with self.lock:
            self.counts[what] += n

    def summary(self):
        keys = sorted(self.counts)
        return ", ".join(f"{k}={self.counts[k]}" for k in keys)


# An acknowledged write: when, its ids, through which proxy (index into dsns), how long the
# acknowledged attempt took (a write held by the proxy shows here).
Ack = namedtuple("Ack", "t ids via took")
# An attempt answered with a retriable SQLSTATE: autocommit tells a lone statement (outside a
# transaction) from a statement inside one; took is how long that attempt waited for the answer.
Retry = namedtuple("Retry", "t op code autocommit ids took via message")


class Workload:
    """Threads writing through the proxies at `dsns` (thread i starts on dsns[i % n] and moves to
    the next one when its proxy is down) and recording every acknowledged write in `ledger`.

    transfer_ids: the keys transfers move money between (loaded before, never deleted). A
    transfer's two keys share a shard under every ring in `rings` (old and new), so it stays a
    single-shard transaction before, during and after the migration; a 0A000 is still handled
    (rolled back and counted as skipped). Single-writer ids start at 10,000,000 + 1,000,000 *
    thread and are spread over the whole ring by the hash."""

    MIX = (("transfer", 50), ("insert", 18), ("update", 10), ("delete", 10), ("read", 12))

    def __init__(self, dsns, ledger, rings, transfer_ids, threads=4, pause_s=0.004, seed=1,
                 drivers=("psycopg2", "psycopg"), max_attempts=60):
        self.dsns, self.ledger, self.threads_n = list(dsns), ledger, threads
        self.pause_s, self.seed, self.drivers = pause_s, seed, drivers
        self.max_attempts = max_attempts
        self.stats = Stats()
        groups = defaultdict(list)
        for k in transfer_ids:
            groups[tuple(r.owner(k) for r in rings)].append(k)
        self.groups = [g for g in groups.values() if len(g) >= 2]
        self.group_weights = [len(g) for g in self.groups]
        if not self.groups:
            raise ValueError("no two transfer keys share a shard under every ring")
        self._stop = threading.Event()
        self._threads = []
        self.busy = {}  # thread index -> (op, since) while an operation runs

    # -- life

    def start(self):
        for i in range(self.threads_n):
            t = threading.Thread(target=self._run, args=(i,), name=f"workload-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout=30):
        """Stops the threads; returns the descriptions of those still busy after timeout."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        return [f"thread {i} stuck in {op} for {now - since:.1f}s"
                for i, (op, since) in list(self.busy.items())
                if self._threads[i].is_alive()]

    def acks_between(self, t0, t1, keys=None, via=None):
        """Acknowledged writes in [t0, t1], optionally only those touching one of keys (a
        container, or a predicate on one id) and only those through dsns[via]."""
        return len(self.acks_in(t0, t1, keys, via))

    def acks_in(self, t0, t1, keys=None, via=None):
        """The Acks of acks_between."""
        touches = (keys if callable(keys) else
                   (lambda k: True) if keys is None else keys.__contains__)
        with self.stats.lock:
            acks = list(self.stats.acks)
        return [a for a in acks if t0 <= a.t <= t1 and (via is None or a.via == via)
                and any(touches(k) for k in a.ids)]

    def retries_in(self, t0, t1, code=None):
        with self.stats.lock:
            return [r for r in self.stats.retries
                    if t0 <= r.t <= t1 and (code is None or r.code == code)]

    def max_ack_gap(self, t0, t1):
        """The longest time in [t0, t1] with no acknowledged write at all."""
        times = sorted([t0] + [a.t for a in self.stats.acks if t0 <= a.t <= t1] + [t1])
        return max(b - a for a, b in zip(times, times[1:]))

    # -- one thread

    def _run(self, idx):
        rnd = random.Random(self.seed * 1000 + idx)
        st = _ThreadState(idx, rnd, self.drivers[idx % len(self.drivers)])
        ops = [getattr(self, "_op_" + name) for name, _ in self.MIX]
        weights = [w for _, w in self.MIX]
        while not self._stop.is_set():
            if st.client is None:
                st.client = self._connect(st)
                if st.client is None:
                    break
            op = rnd.choices(ops, weights)[0]
            self.busy[idx] = (op.__name__[4:], time.monotonic())
            try:
                op(st)
            except Exception as e:  # noqa: BLE001 - a bug in the workload itself must show
                self._unexpected(op.__name__[4:], None, f"workload: {e!r}")
                st.reconnect = True
            finally:
                self.busy.pop(idx, None)
            if st.reconnect:
                st.client.close()
                st.client, st.reconnect = None, False
            if self.pause_s:
                time.sleep(self.pause_s)
        if st.client is not None:
            st.client.close()

    def _connect(self, st):
        delay = 0.05
        while not self._stop.is_set():
            dsn = self.dsns[st.proxy % len(self.dsns)]
            try:
                return Client(st.driver, dsn)
            except Exception:  # noqa: BLE001 - the proxy is down (killed): try the next one
                self.stats.bump("connect:failed")
                st.proxy += 1
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        return None

    def _tx(self, st, op, stmts, check=None, write=True, ids=()):
        """Runs stmts [(sql, params)] as one transaction (one statement: in autocommit),
        retrying 40001/40P01. check(results) may raise _Anomaly (then it rolls back). Returns
        "ok" with the results, or "skip" (0A000), "failed" (certainly not applied) or "doubt"
        (a write whose COMMIT got no answer, or an error outside the contract: it may have
        happened). Sets st.reconnect when the connection is gone, and st.took to how long the
        last attempt took. ids: the keys it touches (for the Retry log)."""
        c = st.client
        single = len(stmts) == 1
        for attempt in range(self.max_attempts):
            committing = single
            started = time.monotonic()
            try:
                if not single:
                    c.execute("BEGIN")
                results = [c.execute(sql, params) for sql, params in stmts]
                if check:
                    check(results)
                if not single:
                    committing = True
                    _, _, tag = c.execute("COMMIT")
                    if tag != "COMMIT":
                        self._unexpected(op, None, f"COMMIT answered {tag!r}")
                        return "failed", None
                st.took = time.monotonic() - started
                self.stats.bump(f"{op}:ok")
                return "ok", results
            except _Anomaly as a:
                with self.stats.lock:
                    self.stats.anomalies.append((time.monotonic(), op, str(a)))
                if not single:
                    self._rollback(c)
                return "failed", None
            except _DB_ERRORS as e:
                code = sqlstate(e)
                st.reconnect = c.broken() or code is None
                if not st.reconnect and not single:
                    self._rollback(c)
                if code in RETRY or code == POOL_TIMEOUT:
                    now = time.monotonic()
                    with self.stats.lock:
                        self.stats.retries.append(Retry(
                            now, op, code, single, tuple(ids), now - started,
                            st.proxy % len(self.dsns), str(e).strip().splitlines()[0]))
                if (code in RETRY or code == POOL_TIMEOUT) and not st.reconnect:
                    self.stats.bump(f"retry:{code}")
                    time.sleep(min(0.002 * (attempt + 1), 0.05))
                    continue
                if code == "0A000" and op == "transfer":
                    self.stats.bump(f"{op}:skipped_0A000")
                    return "skip", None
                if not _in_doubt_code(code) and code not in RETRY:
                    self._unexpected(op, code, str(e))
                if committing and write and code not in RETRY:
                    self.stats.bump(f"{op}:in_doubt")
                    return "doubt", None
                self.stats.bump(f"{op}:failed")
                return "failed", None
        self.stats.bump(f"{op}:gave_up")
        return "failed", None

    def _unexpected(self, op, code, msg):
        with self.stats.lock:
            self.stats.unexpected.append((time.monotonic(), op, code,
                                          msg.strip().splitlines()[0] if msg else ""))

    @staticmethod
    def _rollback(c):
        try:
            c.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the connection is gone; the thread reconnects
            pass

    def _ack(self, st, ids):
        with self.stats.lock:
            self.stats.acks.append(Ack(time.monotonic(), ids, st.proxy % len(self.dsns), st.took))

    # -- operations

    def _op_transfer(self, st):
        group = st.rnd.choices(self.groups, self.group_weights)[0]
        a, b = sorted(st.rnd.sample(group, 2))  # in key order: no deadlock between two transfers
        amount = st.rnd.randint(1, 10)
        if st.rnd.random() < 0.5:
            amount = -amount

        def check(results):
            for (rows, _, _), k in zip(results, (a, b)):
                if len(rows or []) != 1:
                    raise _Anomaly(f"transfer key {k} (never deleted) not found: {rows!r}")
        outcome, _ = self._tx(st, "transfer", [
            ("UPDATE accounts SET balance = balance - %s WHERE id = %s RETURNING balance",
             (amount, a)),
            ("UPDATE accounts SET balance = balance + %s WHERE id = %s RETURNING balance",
             (amount, b))], check, ids=(a, b))
        if outcome == "ok":
            self.ledger.add(a, -amount)
            self.ledger.add(b, amount)
            self._ack(st, (a, b))
        elif outcome == "doubt":
            self.ledger.doubt_delta(a, -amount)
            self.ledger.doubt_delta(b, amount)

    def _op_insert(self, st):
        key = 10_000_000 + 1_000_000 * st.idx + st.next_id
        st.next_id += 1
        balance = st.rnd.randint(1, 1000)
        self.ledger.known(key)
        outcome, _ = self._tx(st, "insert", [
            ("INSERT INTO accounts (id, owner, balance) VALUES (%s, %s, %s)",
             (key, f"w{st.idx}", balance))], ids=(key,))
        if outcome == "ok":
            self.ledger.set(key, balance)
            st.live[key] = balance
            self._ack(st, (key,))
        elif outcome == "doubt":
            self.ledger.doubt_state(key, balance)

    def _own_key(self, st):
        return st.rnd.choice(list(st.live)) if st.live else None

    def _op_update(self, st):
        key = self._own_key(st)
        if key is None:
            return self._op_insert(st)
        balance = st.rnd.randint(1, 1000)

        def check(results):
            if results[0][1] != 1:
                raise _Anomaly(f"UPDATE of acknowledged id {key} matched {results[0][1]} rows")
        outcome, _ = self._tx(st, "update", [
            ("UPDATE accounts SET balance = %s WHERE id = %s RETURNING id", (balance, key))], check,
            ids=(key,))
        if outcome == "ok":
            self.ledger.set(key, balance)
            st.live[key] = balance
            self._ack(st, (key,))
        elif outcome == "doubt":
            self.ledger.doubt_state(key, balance)
            del st.live[key]  # its state is unknown now: leave it alone

    def _op_delete(self, st):
        key = self._own_key(st)
        if key is None:
            return self._op_insert(st)

        def check(results):
            if results[0][1] != 1:
                raise _Anomaly(f"DELETE of acknowledged id {key} matched {results[0][1]} rows")
        outcome, _ = self._tx(st, "delete", [
            ("DELETE FROM accounts WHERE id = %s", (key,))], check, ids=(key,))
        if outcome == "ok":
            self.ledger.set(key, None)
            del st.live[key]
            self._ack(st, (key,))
        elif outcome == "doubt":
            self.ledger.doubt_state(key, None)
            del st.live[key]

    def _op_read(self, st):
        own = self._own_key(st) if st.rnd.random() < 0.5 else None
        key = own if own is not None else st.rnd.choice(st.rnd.choices(self.groups,
                                                                       self.group_weights)[0])

        def check(results):
            rows = results[0][0]
            if own is not None and rows != [(st.live[own],)]:
                raise _Anomaly(f"read of own id {own} gave {rows!r}, acknowledged "
                               f"balance {st.live[own]}")
            if own is None and len(rows) != 1:
                raise _Anomaly(f"read of transfer key {key} gave {rows!r}")
        self._tx(st, "read", [("SELECT balance FROM accounts WHERE id = %s", (key,))], check,
                 write=False, ids=(key,))


# One write attempt of a Prober: monotonic start and end, "insert" or "update", the id, and the
# outcome: "ok", "refused" (an error the proxy or the server answered: certainly not applied),
# "doubt" (no answer: the connection died) or "anomaly" (an answer no correct history allows).
Attempt = namedtuple("Attempt", "t0 t1 op key outcome code message")


class Prober:
    """One thread writing through one proxy (autocommit, psycopg2): inserts of fresh ids taken
    in turn from each list of key_lists (e.g. ids that move and ids that stay), and updates of
    the ids it inserted. Every attempt is logged (attempts) and every acknowledged one goes to
    ledger, like the Workload's single-writer ids; a refused insert leaves its id expected
    absent. pause_s between attempts."""

    def __init__(self, dsn, ledger, key_lists, pause_s=0.02, seed=1, update_share=0.4):
        self.dsn, self.ledger, self.pause_s = dsn, ledger, pause_s
        self.queues = [list(ks) for ks in key_lists]
        self.rnd = random.Random(seed)
        self.update_share = update_share
        self.attempts = []
        self.live = {}   # id -> balance, acknowledged present
        self.busy = None  # (op, key, since) while an attempt runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)
        self._lock = threading.Lock()

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout=15):
        """Stops the thread; a description of the attempt it is stuck in, or None."""
        self._stop.set()
        self._thread.join(timeout)
        busy = self.busy
        if self._thread.is_alive() and busy:
            return (f"prober stuck in {busy[0]} of {busy[1]} for "
                    f"{time.monotonic() - busy[2]:.1f}s")
        return None

    def log(self, t0=float("-inf"), t1=float("inf")):
        """The attempts that started in [t0, t1)."""
        with self._lock:
            return [a for a in self.attempts if t0 <= a.t0 < t1]

    def _run(self):
        conn, turn = None, 0
        while not self._stop.is_set():
            if conn is None:
                try:
                    conn = psycopg2.connect(self.dsn, connect_timeout=5)
                    conn.autocommit = True
                except Exception:  # noqa: BLE001 - the proxy is down: try again
                    conn = None
                    time.sleep(0.1)
                    continue
            if self.live and self.rnd.random() < self.update_share:
                op, key = "update", self.rnd.choice(list(self.live))
            else:
                queue = self.queues[turn % len(self.queues)]
                turn += 1
                if not queue:
                    if not any(self.queues):
                        break
                    continue
                op, key = "insert", queue.pop(0)
                self.ledger.known(key)
            balance = self.rnd.randint(1, 1000)
            t0 = time.monotonic()
            self.busy = (op, key, t0)
            code = msg = None
            try:
                cur = conn.cursor()
                if op == "insert":
                    cur.execute("INSERT INTO accounts (id, owner, balance) VALUES (%s, 'probe', %s)",
                                (key, balance))
                else:
                    cur.execute("UPDATE accounts SET balance = %s WHERE id = %s", (balance, key))
                outcome = "ok" if cur.rowcount == 1 else "anomaly"
                if outcome == "anomaly":
                    msg = f"{op} of {key} matched {cur.rowcount} rows"
            except psycopg2.Error as e:
                code, msg = sqlstate(e), str(e).strip().splitlines()[0] if str(e).strip() else ""
                outcome = "doubt" if _in_doubt_code(code) or conn.closed else "refused"
                if conn.closed:
                    conn = None
            self.busy = None
            if outcome == "ok":
                self.ledger.set(key, balance)
                self.live[key] = balance
            elif outcome == "doubt":
                self.ledger.doubt_state(key, balance)
                self.live.pop(key, None)  # its state is unknown now: leave it alone
            elif outcome == "anomaly":
                self.live.pop(key, None)
            with self._lock:
                self.attempts.append(Attempt(t0, time.monotonic(), op, key, outcome, code, msg))
            time.sleep(self.pause_s)
        if conn is not None:
            conn.close()


class _ThreadState:
    def __init__(self, idx, rnd, driver):
        self.idx, self.rnd, self.driver = idx, rnd, driver
        self.proxy = idx
        self.client = None
        self.next_id = 0
        self.live = {}  # own ids acknowledged present: id -> balance
        self.reconnect = False
        self.took = 0.0


# -------------------------------------------------------------------------------- the checker

Problem = namedtuple("Problem", "kind key detail")


def read_rows(cluster, port, table="accounts"):
    """{id: balance} of table on one server, read directly; {} when the table does not exist."""
    if cluster.sql(port, f"SELECT to_regclass('{table}') IS NOT NULL") != [["t"]]:
        return {}
    return {int(k): int(b) for k, b in cluster.sql(port, f"SELECT id, balance FROM {table}")}


def check_invariants(cluster, shard_ports, owner, ledger):
    """Problems (a list of Problem, empty when all is well) of the accounts rows on the primaries
    shard_ports ({shard name: port}; list every server that may hold rows, also a target that
    must be empty) against ledger, with owner(key) -> shard name the ring that must hold now.

    kinds: duplicated (an id on more than one shard), misplaced (on a shard not its owner),
    lost (the ledger has it, its owner has not), resurrected (deleted, yet its owner has it),
    balance (its owner's balance is not one the ledger allows), unknown (a row the ledger never
    heard of), sum (all balances on all the primaries against the acknowledged total),
    prepared_xact (pg_prepared_xacts not empty)."""
    problems = []
    where = defaultdict(list)  # id -> [(shard, balance)]
    for name, port in shard_ports.items():
        for k, balance in read_rows(cluster, port).items():
            where[k].append((name, balance))
    for k, copies in sorted(where.items()):
        if len(copies) > 1:
            problems.append(Problem("duplicated", k, f"on {[s for s, _ in copies]}"))
        for shard, balance in copies:
            if shard != owner(k):
                problems.append(Problem("misplaced", k, f"on {shard} (balance {balance}), "
                                                        f"owner {owner(k)}"))
        if k not in ledger.state:
            problems.append(Problem("unknown", k, f"on {[s for s, _ in copies]}"))
    for k in ledger.ids():
        on_owner = [b for s, b in where.get(k, []) if s == owner(k)]
        got = on_owner[0] if on_owner else None
        if ledger.allows(k, got):
            continue
        if got is None:
            kind = "lost"
        elif ledger.state.get(k) is None and k not in ledger.maybe_state:
            kind = "resurrected"
        else:
            kind = "balance"
        problems.append(Problem(kind, k, f"owner {owner(k)} has {got!r}; {ledger.describe(k)}"))
    total = sum(b for copies in where.values() for _, b in copies)
    if not ledger.allows_total(total):
        problems.append(Problem("sum", None, f"{total} on the primaries, acknowledged "
                                             f"{ledger.expected_total()}"))
    for name, port in shard_ports.items():
        for gid, db in cluster.sql(port, "SELECT gid, database FROM pg_prepared_xacts"):
            problems.append(Problem("prepared_xact", None, f"{gid!r} in {db} on {name}"))
    return problems


def check_via_proxy(dsn, owner, ledger, batch=500):
    """Problems of the ids with a definite state, read through the proxy at dsn by key (an IN
    list per owner): proxy_missing, proxy_resurrected, proxy_balance."""
    problems = []
    by_owner = defaultdict(list)
    definite = ledger.definite()
    for k in definite:
        by_owner[owner(k)].append(k)
    conn = psycopg2.connect(dsn, connect_timeout=10)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        for keys in by_owner.values():
            for i in range(0, len(keys), batch):
                chunk = keys[i:i + batch]
                cur.execute("SELECT id, balance FROM accounts WHERE id IN %s", (tuple(chunk),))
                got = dict(cur.fetchall())
                for k in chunk:
                    want, have = definite[k], got.get(k)
                    if want == have:
                        continue
                    kind = ("proxy_missing" if have is None else
                            "proxy_resurrected" if want is None else "proxy_balance")
                    problems.append(Problem(kind, k, f"proxy read {have!r}, expected {want!r}"))
    finally:
        conn.close()
    return problems


def format_problems(problems, limit=25):
    kinds = defaultdict(int)
    for p in problems:
        kinds[p.kind] += 1
    head = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
    lines = [f"  {p.kind} {p.key}: {p.detail}" for p in problems[:limit]]
    more = [f"  ... and {len(problems) - limit} more"] if len(problems) > limit else []
    return f"{len(problems)} problem(s) ({head})\n" + "\n".join(lines + more)

