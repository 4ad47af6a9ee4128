"""Differential wire-protocol test: the proxy must answer exactly as PostgreSQL does.

Seeded, generated sequences of extended-protocol messages (Parse/Bind/Describe/Execute/Close,
Flush, Sync) and simple Queries go over raw sockets to a plain PostgreSQL 15 (the reference:
a one-shard cluster, connected to directly) and to ShardGate in front of a two-shard cluster
(transaction pooling, no replicas). Every statement uses keys owned by s1, the shard that is
NOT the default one. The replies are compared message by message: types, RowDescription
(names, type OIDs, typmods, formats; nonzero table OIDs count as equal), DataRow values,
CommandComplete tags, ErrorResponse/NoticeResponse severity and SQLSTATE (not the text),
ParameterDescription, ParameterStatus, PortalSuspended and the ReadyForQuery status. After each
sequence the rows are compared too (reference vs s1's primary; s0 must hold none), and every
backend the proxy used must be idle again: not in a transaction, not inside a batch. When the
proxy diverges, the client hangs up there, and the proxy must then release its backends too.

How replies are read: every frontend message has a known reply unit (Parse -> ParseComplete or
an error, Execute -> DataRows and CommandComplete/PortalSuspended/error, ...), and after an
error PostgreSQL skips to Sync. So both sides are read by counting units, never by waiting for
silence; a side that does not answer within DIFF_TIMEOUT seconds fails the sequence. If the
proxy then answers nobody (a new client's SELECT 1 times out), that is reported with the state
of its backends, and a new proxy takes over (at most MAX_RESTARTS times).

Each sequence starts from the same table contents and a session without prepared statements;
a mismatch is replayed alone on fresh connections to confirm it (and to check that PostgreSQL
answers it the same way twice), and the shortest one of each kind is shrunk to a minimal
reproduction. The test fails at the end with a summary grouped by kind.

Env: DIFF_SEQUENCES (default 5000), DIFF_SEED (default 1), DIFF_VERBOSE=1 (each mismatch as
found, progress), DIFF_TIMEOUT (seconds the proxy may take per chunk, default 3),
DIFF_FLUSH_TIMEOUT (per chunk ended by a Flush, default 1), DIFF_SHRINK_SECONDS (budget for
minimising, default 60; 0 = off), DIFF_ONLY=i,j (run only these sequence indexes),
DIFF_SELFCHECK=1 (compare PostgreSQL with itself instead of the proxy: must give 0 mismatches).

Run: /usr/bin/python3 tests/integration/test_differential.py
Long: DIFF_SEQUENCES=50000 DIFF_SEED=7 /usr/bin/python3 tests/integration/test_differential.py
"""

import collections
import os
import random
import select
import socket
import struct
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from diffgen import (Model, Msg, SequenceGen, chunk_notation, frame_sig,  # noqa: E402
                     initial_rows, normalise, reply_notation, unit_notation)
from wire import Raw  # noqa: E402

N_SEQ = int(os.environ.get("DIFF_SEQUENCES", "5000"))
SEED = int(os.environ.get("DIFF_SEED", "1"))
VERBOSE = bool(os.environ.get("DIFF_VERBOSE"))
TIMEOUT = float(os.environ.get("DIFF_TIMEOUT", "3"))
FLUSH_TIMEOUT = float(os.environ.get("DIFF_FLUSH_TIMEOUT", "1"))
SHRINK_SECONDS = float(os.environ.get("DIFF_SHRINK_SECONDS", "60"))
ONLY = [int(x) for x in os.environ.get("DIFF_ONLY", "").split(",") if x.strip()]
SELFCHECK = bool(os.environ.get("DIFF_SELFCHECK"))
REF_TIMEOUT = 20       # PostgreSQL itself never takes this long; a hang there is a harness bug
N_KEYS = 16
CONFIRM_PER_KIND = 3   # replays of each kind's first mismatches, alone on fresh connections
SHOW_MISMATCHES = 10   # mismatches printed in full
MAX_RESTARTS = 3       # the proxy is restarted when it stops answering; the run ends at this many


def seq_rng(seed, index):
    """The generator's random source for sequence `index`: any one sequence can be rerun alone."""
    return random.Random(seed * 1_000_003 + index)


# ---------------------------------------------------------------- connections

S_MSG = Msg("S")


class Diverged(Exception):
    """The side's replies do not fit the messages sent (or stopped coming)."""

    def __init__(self, units, got, reason):
        super().__init__(reason)
        self.units, self.got, self.reason = units, got, reason


class Conn:
    """A raw frontend connection that reads frames against a deadline."""

    def __init__(self, port, user="app", password="app-secret", trust=False, **params):
        raw = Raw(port, timeout=10)
        try:
            if trust:
                raw.start(user=user, database="app", **params)
                frames = raw.read_until("ZE")
                if frames[-1][0] != "Z":
                    raise RuntimeError(f"login as {user} on {port} failed: {frames}")
            else:
                raw.login(user, password)
        except BaseException:
            raw.close()
            raise
        self.port, self.sock = port, raw.sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf, self.pos = bytearray(raw.buf), 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def frame(self, deadline):
        """(type, body) of the next frame; raises socket.timeout or EOFError."""
        while True:
            avail = len(self.buf) - self.pos
            if avail >= 5:
                n = struct.unpack_from("!I", self.buf, self.pos + 1)[0]
                if avail >= n + 1:
                    t = chr(self.buf[self.pos])
                    body = bytes(self.buf[self.pos + 5:self.pos + 1 + n])
                    self.pos += n + 1
                    if self.pos > 65536:
                        del self.buf[:self.pos]
                        self.pos = 0
                    return t, body
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except ConnectionResetError:
                d = b""
            if not d:
                raise EOFError()
            self.buf += d

    def pending(self, wait=0.0):
        """Frames that arrive within `wait` seconds, without blocking longer."""
        out = []
        deadline = time.monotonic() + wait
        while True:
            if len(self.buf) - self.pos < 5:
                r, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
                if not r:
                    return out
            try:
                out.append(normalise(*self.frame(time.monotonic() + max(wait, 0.05))))
            except (socket.timeout, EOFError, OSError):
                return out
            if len(out) > 50:
                return out

    def send_query(self, sql):
        data = sql.encode()
        self.send(b"Q" + struct.pack("!I", len(data) + 5) + data + b"\0")

    def results(self, timeout=30):
        """The answer to a simple query: ([rows of each result], [SQLSTATE of each error])."""
        deadline = time.monotonic() + timeout
        results, rows, errors = [], [], []
        while True:
            t, body = self.frame(deadline)
            if t == "D":
                rows.append(tuple(None if v is None else v.decode() for v in normalise(t, body)[1]))
            elif t == "C":
                results.append(rows)
                rows = []
            elif t == "E":
                errors.append(normalise(t, body)[2])
            elif t == "Z":
                return results, errors

    def query(self, sql):
        self.send_query(sql)
        return self.results()


# Per frontend message: the frames that end its reply unit, and those allowed before that.
# NoticeResponse, ParameterStatus and NotificationResponse may come anywhere.
TERMINAL = {"P": "1E", "B": "2E", "D": "TnE", "E": "CsIE", "C": "3E", "S": "Z", "Q": "Z"}
BEFORE = {"D": "t", "E": "D"}
ASYNC = "NSA"


def read_units(conn, chunk, failed, timeout):
    """Reads the replies to `chunk`: one unit (list of normalised frames) per message, None
    for a message PostgreSQL skips after an error. Returns (units, failed-after)."""
    units = []
    deadline = time.monotonic() + timeout
    for m in chunk:
        k = m.kind
        if k == "H":
            units.append([])
            continue
        if failed and k not in "SQ":
            units.append(None)
            continue
        unit = []
        while True:
            try:
                t, body = conn.frame(deadline)
            except socket.timeout:
                raise Diverged(units, unit, "timeout") from None
            except (EOFError, OSError):
                raise Diverged(units, unit, "connection closed") from None
            n = normalise(t, body)
            unit.append(n)
            if t in TERMINAL[k]:
                break
            if k == "Q" or t in ASYNC or t in BEFORE.get(k, ""):
                continue
            raise Diverged(units, unit, "unexpected frame")
        if k == "S":
            failed = False
        elif k != "Q" and unit[-1][0] == "E":
            failed = True
        units.append(unit)
    return units, failed


def chunk_timeout(chunk):
    return FLUSH_TIMEOUT if chunk[-1].kind == "H" else TIMEOUT


# ---------------------------------------------------------------- the two sides

RESET_LOCK_TIMEOUT = "200ms"
# The app's backends that are not idle: in a transaction, or inside a batch (state active,
# waiting for the rest of it). After a client saw ReadyForQuery I, none may be left.
BUSY_WHERE = ("usename = 'app' AND application_name <> 'shardgate-monitor' AND state <> 'idle'")
BUSY = f"SELECT state, count(*) FROM pg_stat_activity WHERE {BUSY_WHERE} GROUP BY 1 ORDER BY 1"


def _lit(v):
    return "NULL" if v is None else ("'" + str(v).replace("'", "''") + "'" if isinstance(v, str) else str(v))


class Side:
    """One side of the comparison: where its client connects, the server where the rows must
    be (home) and those where they must not. Admin connections (postgres, trust) read and
    reset the rows and watch the app's backends."""

    def __init__(self, name, client_port, home_port, other_ports, keys):
        self.name, self.client_port = name, client_port
        self.home_port, self.other_ports = home_port, list(other_ports)
        self.insert = ("INSERT INTO accounts (id, owner, balance) VALUES "
                       + ", ".join(f"({k}, {_lit(o)}, {b})" for k, o, b in initial_rows(keys)))
        self.client = None
        self.admins = {}

    def admin(self, port):
        if port not in self.admins:
            self.admins[port] = Conn(port, user="postgres", trust=True,
                                     lock_timeout=RESET_LOCK_TIMEOUT)
        return self.admins[port]

    def connect(self):
        self.disconnect()
        self.client = Conn(self.client_port)

    def disconnect(self):
        if self.client is not None:
            self.client.close()
            self.client = None

    def close(self):
        self.disconnect()
        for a in self.admins.values():
            a.close()
        self.admins = {}

    def check_and_reset(self, check_busy=True):
        """Reads this side's rows, then restores the start. Returns ({id: (owner, balance)} at
        home, [(port, id)] found elsewhere, {port: [(state, n)]} of app backends not idle)."""
        busy_sql = f"; {BUSY}" if check_busy else ""
        home_sql = f"SELECT id, owner, balance FROM accounts ORDER BY id{busy_sql}; DELETE FROM accounts; {self.insert}"
        other_sql = f"SELECT id FROM accounts ORDER BY id{busy_sql}; DELETE FROM accounts"
        ports = [self.home_port] + self.other_ports
        first = None
        for attempt in range(3):
            for p in ports:  # in parallel: send all, then read all
                self.admin(p).send_query(home_sql if p == self.home_port else other_sql)
            answers = {p: self.admin(p).results() for p in ports}
            errors = [e for _, e in answers.values() if e]
            home, elsewhere, busy = {}, [], {}
            for p, (results, _) in answers.items():
                if p == self.home_port and results:
                    home = {int(r[0]): (r[1], r[2]) for r in results[0]}
                elif results:
                    elsewhere += [(p, int(r[0])) for r in results[0]]
                if check_busy and len(results) > 1 and results[1]:
                    busy[p] = [(st, int(n)) for st, n in results[1]]
            first = first or (home, elsewhere, busy)  # the DELETE comes after the reads
            if not errors:
                return first
            # A lock held by a transaction someone left open: end those and reset again.
            self.end_busy(wait=0.0)
        raise RuntimeError(f"{self.name}: resetting the table failed: {errors}")

    def busy(self):
        out = {}
        for p in [self.home_port] + self.other_ports:
            (rows, *_), _ = self.admin(p).query(BUSY)
            if rows:
                out[p] = [(st, int(n)) for st, n in rows]
        return out

    def end_busy(self, wait=1.0):
        """Waits up to `wait` s until every app backend is idle (after a client disconnects
        the proxy may still be cleaning up). Those still busy then are terminated and
        returned, as {port: [(state, n)]}."""
        deadline = time.monotonic() + wait
        while True:
            busy = self.busy()
            if not busy:
                return {}
            if time.monotonic() >= deadline:
                for p in busy:
                    self.admin(p).query("SELECT pg_terminate_backend(pid, 2000) FROM pg_stat_activity "
                                        "WHERE " + BUSY_WHERE)
                return busy
            time.sleep(0.02)

    def backend_summary(self):
        """The app's backends on each server of this side, by state (for a hang's report)."""
        out = []
        for p in [self.home_port] + self.other_ports:
            (rows, *_), _ = self.admin(p).query(
                "SELECT state, coalesce(wait_event_type || ':' || wait_event, ''), count(*) "
                "FROM pg_stat_activity WHERE usename = 'app' AND application_name <> "
                "'shardgate-monitor' GROUP BY 1, 2 ORDER BY 1, 2")
            out.append(f"  backends on port {p}: "
                       + (", ".join(f"{n} {st}" + (f" (waiting {w})" if w else "") for st, w, n in rows)
                          or "none"))
        return out

    def answers(self, keys, timeout=3.0):
        """True if a new client gets answers to a tableless and a keyed simple query."""
        try:
            conn = Conn(self.client_port)
        except Exception:  # noqa: BLE001 - any failure to log in counts as no answer
            return False
        try:
            for sql in ("SELECT 1", f"SELECT id FROM accounts WHERE id = {keys[0]}"):
                conn.send_query(sql)
                conn.results(timeout)
            return True
        except (socket.timeout, EOFError, OSError):
            return False
        finally:
            conn.close()


# ---------------------------------------------------------------- mismatches

class Mismatch:
    def __init__(self, kind, chunks, where, detail):
        self.kind, self.chunks, self.where, self.detail = kind, chunks, where, detail
        self.seq = None
        self.confirmed = None  # True: same kind alone on fresh connections; False: not
        self.warm = False      # confirmed only on a second run alone
        self.note = ""

    def messages(self):
        return sum(len(c) for c in self.chunks)

    def render(self, indent="    "):
        out = [f"{indent}sequence #{self.seq} ({self.messages()} messages){self.note}:"]
        for i, c in enumerate(self.chunks):
            mark = " <-" if self.where is not None and self.where[0] == i else ""
            out.append(f"{indent}  {chunk_notation(c)}{mark}")
        out += [f"{indent}{line}" for line in self.detail]
        return "\n".join(out)


MSG_NAMES = {"P": "Parse", "B": "Bind", "E": "Execute", "S": "Sync", "Q": "Query", "H": "Flush"}


def msg_label(msg):
    if msg.kind == "D":
        return f"Describe {msg.what}"
    if msg.kind == "C":
        return f"Close {msg.what}"
    return MSG_NAMES[msg.kind]


def unit_kind(msg, ref, got, reason=None):
    """Groups a differing reply unit: the message, and the first differing frame of each side
    (its type, and the SQLSTATE of an error or notice)."""
    def first_diff():
        j = 0
        while j < len(ref) and j < len(got) and ref[j] == got[j]:
            j += 1
        return (ref[j] if j < len(ref) else None), (got[j] if j < len(got) else None)

    if ref is None or got is None:
        a = "(skipped)" if ref is None else frame_sig(ref[0] if ref else None)
        b = "(skipped)" if got is None else frame_sig(got[0] if got else None)
    else:
        fa, fb = first_diff()
        a = frame_sig(fa)
        b = reason if fb is None and reason in ("timeout", "connection closed") else frame_sig(fb)
    kind = f"{msg_label(msg)}: pg {a} / proxy {b}"
    return kind + " (content differs)" if a == b else kind


def describe_unit_mismatch(chunks, ci, mi, ref_unit, got_unit, reason=None):
    msg = chunks[ci][mi]
    kind = unit_kind(msg, ref_unit, got_unit, reason)
    detail = [f"at chunk {ci + 1}, message {mi + 1}: {msg.notation()}",
              f"  pg:    {unit_notation(ref_unit)}",
              f"  proxy: {unit_notation(got_unit)}" + (f"  [{reason}]" if reason else "")]
    return Mismatch(kind, chunks, (ci, mi), detail)


def compare_chunk(chunks, ci, ref_units, got_units):
    for mi, (a, b) in enumerate(zip(ref_units, got_units)):
        if a != b:
            return describe_unit_mismatch(chunks, ci, mi, a, b)
    return None


def busy_kinds(busy):
    return sorted({st for rows in busy.values() for st, _ in rows})


def busy_detail(busy, when):
    return [f"  {n} backend(s) {st} on port {p} {when}" for p, rows in sorted(busy.items())
            for st, n in rows]


def table_mismatch(chunks, ref_rows, home, elsewhere, busy, home_name):
    kinds, detail = [], []
    if home != ref_rows:
        for k in sorted(set(ref_rows) | set(home)):
            a, b = ref_rows.get(k), home.get(k)
            if a == b:
                continue
            if a is None:
                kinds.append("row only behind the proxy")
            elif b is None:
                kinds.append("row missing behind the proxy")
            else:
                kinds.append("row differs")
            detail.append(f"  key {k}: pg {a} / {home_name} {b}")
    if elsewhere:
        kinds.append("row on another shard")
        detail += [f"  key {k} found on port {p}" for p, k in elsewhere]
    if busy:
        kinds += [f"backend left {st}" for st in busy_kinds(busy)]
        detail += busy_detail(busy, "after the client saw its last ReadyForQuery")
    if not kinds:
        return None
    return Mismatch("after the sequence: " + ", ".join(sorted(set(kinds))), chunks, None,
                    ["after the sequence:"] + detail)


# ---------------------------------------------------------------- the runner

class Runner:
    def __init__(self, keys, ref, other):
        self.keys, self.ref, self.other = keys, ref, other
        self.sent = 0
        self.last_ref_units = None

    def run_ref(self, side, rng=None, chunks=None):
        """Runs a sequence on the reference: generated from rng, or the given chunks.
        Returns (chunks, units per chunk, session_set, violations)."""
        model = Model()
        if chunks is None:
            gen = SequenceGen(rng, self.keys, model)
            source, stmt_of = gen.chunks(), gen.stmt_of
        else:
            gen, source = None, iter(chunks)

            def stmt_of(m):  # a replay has no generator to say what a Parse meant
                return None, []
        out, units_all, failed = [], [], False
        for chunk in source:
            side.client.send(b"".join(m.encode() for m in chunk))
            self.sent += len(chunk)
            try:
                units, failed = read_units(side.client, chunk, failed, REF_TIMEOUT)
            except Diverged as d:
                raise RuntimeError(f"PostgreSQL did not answer as the reader expects ({d.reason}) "
                                   f"to: {chunk_notation(chunk)}\ngot {d.units} {d.got}") from None
            model.update(chunk, units, stmt_of)
            out.append(chunk)
            units_all.append(units)
        return out, units_all, (gen.session_set if gen else True), model.violations

    def run_other(self, chunks, ref_units):
        """Replays chunks on the side under test; the first differing unit or None."""
        side, failed = self.other, False
        for ci, chunk in enumerate(chunks):
            try:
                side.client.send(b"".join(m.encode() for m in chunk))
            except OSError:
                return describe_unit_mismatch(chunks, ci, 0, ref_units[ci][0], [], "connection closed")
            self.sent += len(chunk)
            try:
                units, failed = read_units(side.client, chunk, failed, chunk_timeout(chunk))
            except Diverged as d:
                mi = len(d.units)
                extra = side.client.pending(0.2) if d.reason != "connection closed" else []
                mm = describe_unit_mismatch(chunks, ci, mi, ref_units[ci][mi], d.got, d.reason)
                prior = compare_chunk(chunks, ci, ref_units[ci][:mi], d.units)
                mm = prior or mm
                if extra:
                    mm.detail.append("  proxy then sent: " + " ".join(reply_notation(n) for n in extra))
                return mm
            mm = compare_chunk(chunks, ci, ref_units[ci], units)
            if mm:
                return mm
        extra = side.client.pending(0.0)
        if extra:
            return Mismatch("extra frames after the sequence", chunks, None,
                            ["  proxy sent after the last ReadyForQuery: "
                             + " ".join(reply_notation(n) for n in extra)])
        return None

    def run_pair(self, rng=None, chunks=None, fresh=False, ref_units_expected=None):
        """One sequence on both sides. Returns (chunks, [mismatches], reconnect): the first
        mismatch is the sequence's own; a second one says what a disconnect left behind."""
        if fresh or self.ref.client is None:
            self.ref.connect()
        if fresh or self.other.client is None:
            self.other.connect()
        chunks, ref_units, session_set, violations = self.run_ref(self.ref, rng, chunks)
        self.last_ref_units = ref_units
        ref_rows, _, _ = self.ref.check_and_reset(check_busy=False)
        if ref_units_expected is not None and ref_units_expected != ref_units:
            return chunks, [Mismatch("NON-DETERMINISTIC on PostgreSQL (generator bug)", chunks,
                                     None, ["  PostgreSQL answered this sequence differently "
                                            "twice"])], True
        if violations:
            return chunks, [Mismatch("invalid sequence (Execute of a completed portal)", chunks,
                                     None, [])], True
        mm = self.run_other(chunks, ref_units)
        if mm is not None:
            # Stop here: hang up (the proxy must then release what the session held).
            out = [mm]
            self.other.disconnect()
            stayed = self.other.end_busy(wait=1.0)
            if stayed:
                out.append(Mismatch("after a client hung up mid-sequence: backend stayed "
                                    + ", ".join(busy_kinds(stayed)), chunks, mm.where,
                                    mm.detail + busy_detail(stayed, "1 s after the hang-up")))
            self.other.check_and_reset(check_busy=False)
            return chunks, out, True
        home, elsewhere, busy = self.other.check_and_reset()
        if busy:  # maybe still finishing; what stays busy is a leak
            busy = self.other.end_busy(wait=0.2)
        mm = table_mismatch(chunks, ref_rows, home, elsewhere, busy, self.other.name)
        return chunks, [mm] if mm else [], session_set or mm is not None

    # -- confirmation and shrinking

    def replay_alone(self, chunks, ref_units=None):
        """The mismatches of `chunks` run alone on fresh connections ([] if it matches)."""
        _, mms, _ = self.run_pair(chunks=chunks, fresh=True, ref_units_expected=ref_units)
        self.ref.disconnect()
        self.other.disconnect()
        self.other.end_busy(wait=1.0)  # a shortened sequence may hang up inside a transaction
        return mms

    def shrink(self, mm, budget):
        """A shorter sequence with the same kind of mismatch, within `budget` seconds: cut
        what follows the diverging chunk, drop whole chunks, then runs of messages, then
        simplify Binds (text formats) and Executes (no row limit)."""
        deadline = time.monotonic() + budget
        chunks = mm.chunks
        if mm.where is not None:  # nothing after the first divergence was sent to the proxy
            chunks = chunks[:mm.where[0] + 1]
            if chunks[-1][-1].kind == "H":
                chunks = chunks[:-1] + [chunks[-1] + [S_MSG]]
        best, best_mm = [m for c in chunks for m in c], mm

        def attempt(cand):
            chunks = split_chunks(cand)
            if chunks is None or time.monotonic() >= deadline:
                return None
            for _ in range(2 if mm.warm else 1):
                got = next((m for m in self.replay_alone(chunks) if m.kind == mm.kind), None)
                if got is not None:
                    return got
            return None

        got = attempt(best) if best != [m for c in mm.chunks for m in c] else mm
        if got is None:  # the cut changed it: start from the whole sequence
            best = [m for c in mm.chunks for m in c]
        else:
            best_mm = got
        progress = True
        while progress and time.monotonic() < deadline:
            progress = False
            # Whole chunks, last first.
            ci = len(split_chunks(best) or []) - 1
            while ci >= 0 and time.monotonic() < deadline:
                cs = split_chunks(best)
                if cs is None or ci >= len(cs):
                    break
                cand = [m for j, c in enumerate(cs) if j != ci for m in c]
                got = attempt(cand)
                if got is not None:
                    best, best_mm, progress = cand, got, True
                ci -= 1
            # Runs of messages, longest first.
            for size in (4, 2, 1):
                i = 0
                while i < len(best) and time.monotonic() < deadline:
                    cand = best[:i] + best[i + size:]
                    got = attempt(cand)
                    if got is not None:
                        best, best_mm, progress = cand, got, True
                    else:
                        i += 1
            for i, m in enumerate(best):
                if time.monotonic() >= deadline:
                    break
                simpler = simplify(m)
                if simpler is None:
                    continue
                got = attempt(best[:i] + [simpler] + best[i + 1:])
                if got is not None:
                    best = best[:i] + [simpler] + best[i + 1:]
                    best_mm, progress = got, True
        return best_mm


def split_chunks(flat):
    """Cuts a flat message list into chunks (after each H, S, Q); None if not a valid
    sequence: a Query inside an open batch, or not ending with Sync/Query."""
    chunks, cur, open_batch = [], [], False
    for m in flat:
        if m.kind == "Q":
            if open_batch or cur:
                return None
            chunks.append([m])
            continue
        cur.append(m)
        if m.kind in "HS":
            chunks.append(cur)
            cur = []
        open_batch = m.kind not in "S"
    if cur or not chunks or chunks[-1][-1].kind not in "SQ":
        return None
    return chunks


def simplify(m):
    if m.kind == "B" and (m.pf or m.rf):
        return Msg("B", **dict(m.a, pf=[], rf=[]))
    if m.kind == "E" and m.limit:
        return Msg("E", portal=m.portal, limit=0)
    return None


# ---------------------------------------------------------------- the test

def find_keys(proxy, shard, n):
    keys, k = [], 1
    while len(keys) < n:
        if proxy.locate("accounts", str(k)) == shard:
            keys.append(k)
        k += 1
        if k > 2000:
            raise RuntimeError(f"no {n} keys on {shard} below 2000")
    return keys


class DifferentialTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster("diff", shards=2, replicas=0)
        cls.addClassCleanup(cls.cluster.stop)
        cls.ref_cluster = harness.Cluster("diffref", shards=1, replicas=0)
        cls.addClassCleanup(cls.ref_cluster.stop)
        for c in (cls.cluster, cls.ref_cluster):
            for i in range(c.shards):
                c.sql(c.primary_port(i), harness.ACCOUNTS_DDL, user="app")
        cls.proxy = harness.Proxy(cls.cluster)
        cls.addClassCleanup(cls.proxy.stop)
        cls.keys = find_keys(cls.proxy, "s1", N_KEYS)

    @classmethod
    def restart_proxy(cls):
        """A new proxy on a new port, after ending every app backend the old one left."""
        cls.proxy.stop()
        for i in range(cls.cluster.shards):
            cls.cluster.sql(cls.cluster.primary_port(i), "SELECT pg_terminate_backend(pid, 5000) "
                            "FROM pg_stat_activity WHERE usename = 'app'")
        cls.proxy = harness.Proxy(cls.cluster)
        cls.addClassCleanup(cls.proxy.stop)
        return cls.proxy.port

    def test_proxy_answers_like_postgresql(self):
        c, rc = self.cluster, self.ref_cluster
        ref = Side("pg", rc.primary_port(0), rc.primary_port(0), [], self.keys)
        if SELFCHECK:
            other = Side("pg-again", rc.primary_port(0), rc.primary_port(0), [], self.keys)
        else:
            other = Side("s1", self.proxy.port, c.primary_port(1), [c.primary_port(0)], self.keys)
        self.addCleanup(ref.close)
        self.addCleanup(other.close)
        ref.check_and_reset(check_busy=False)
        other.end_busy(wait=0.0)
        other.check_and_reset(check_busy=False)
        runner = Runner(self.keys, ref, other)

        started = time.monotonic()
        stopped_early = ""
        indexes = ONLY or range(N_SEQ)
        mismatches, by_kind = [], collections.OrderedDict()
        confirmations = collections.Counter()
        main_sent, diverged = 0, 0
        for n, i in enumerate(indexes):
            before = runner.sent
            try:
                chunks, mms, reconnect = runner.run_pair(rng=seq_rng(SEED, i), fresh=bool(ONLY))
            except (OSError, EOFError, AssertionError, RuntimeError) as e:  # e.g. refused logins
                stopped_early = f"stopped at sequence #{i}: {type(e).__name__}: {e}"
                break
            main_sent += runner.sent - before
            if reconnect:
                ref.disconnect()
                other.disconnect()
            if VERBOSE and n and n % 500 == 0:
                print(f"  {n} sequences, {diverged} diverged, {time.monotonic() - started:.1f} s",
                      flush=True)
            if not mms:
                continue
            diverged += 1
            ref_units = runner.last_ref_units
            for mm in mms:
                mm.seq = i
            mm = mms[0]
            if confirmations[mm.kind] < CONFIRM_PER_KIND:
                # Alone, on fresh connections, PostgreSQL must answer as before and the proxy
                # must diverge the same way; else the report says so.
                confirmations[mm.kind] += 1
                again = runner.replay_alone(mm.chunks, ref_units)
                nondet = [m for m in again if m.kind.startswith("NON-DETERMINISTIC")]
                if nondet:
                    mms = nondet
                    nondet[0].seq = i
                else:
                    mm.confirmed = any(m.kind == mm.kind for m in again)
                    if not mm.confirmed and any(m.kind == mm.kind for m in runner.replay_alone(mm.chunks)):
                        # The first replay left the proxy's pooled backends as the run had
                        # them (statements prepared, plans cached): the second diverges.
                        mm.confirmed = mm.warm = True
                        mm.note = (" [alone on fresh connections it diverges from its second run "
                                   "on: it depends on what the proxy's pooled backends hold]")
                    elif not mm.confirmed:
                        mm.note = (" [not reproduced alone on fresh connections ("
                                   + (", ".join(m.kind for m in again) or "no mismatch")
                                   + "): it depends on state left by earlier sequences]")
            for mm in mms:
                mismatches.append(mm)
                by_kind.setdefault(mm.kind, []).append(mm)
                if VERBOSE:
                    print(f"MISMATCH {mm.kind}\n{mm.render()}", flush=True)
            if any("timeout" in m.kind for m in mms) and not SELFCHECK and not other.answers(self.keys):
                # Not this sequence alone: the proxy answers nobody now. Say what its backends
                # do, start a new proxy, and go on (a few times at most).
                wedge = Mismatch("proxy stopped answering: a new client's SELECT 1 times out",
                                 mms[0].chunks, None,
                                 [f"  after sequence #{i}, {diverged} diverged sequences into the "
                                  "run; state before the restart:"] + other.backend_summary()
                                 + ["  proxy log tail:"]
                                 + ["    " + ln[:300] for ln in self.proxy.log().splitlines()[-8:]])
                wedge.seq = i
                mismatches.append(wedge)
                by_kind.setdefault(wedge.kind, []).append(wedge)
                if VERBOSE:
                    print(f"WEDGED\n{wedge.render()}", flush=True)
                if len(by_kind[wedge.kind]) >= MAX_RESTARTS:
                    stopped_early = f"stopped after sequence #{i}: the proxy hung {MAX_RESTARTS} times"
                    break
                other.disconnect()
                other.client_port = self.restart_proxy()
        elapsed = time.monotonic() - started
        ran = n + 1 if indexes else 0

        shrunk = {}
        if mismatches and SHRINK_SECONDS > 0:
            kinds = sorted(by_kind, key=lambda k: -len(by_kind[k]))
            shrink_end = time.monotonic() + SHRINK_SECONDS
            for n_left, k in zip(range(len(kinds), 0, -1), kinds):
                per_kind = (shrink_end - time.monotonic()) / n_left  # unused time carries over
                cands = [m for m in by_kind[k] if m.confirmed] or by_kind[k]
                smallest = min(cands, key=lambda m: m.messages())
                if smallest.confirmed is False or k.startswith(("NON-DET", "invalid")):
                    continue
                try:
                    s = runner.shrink(smallest, per_kind)
                except (OSError, EOFError, AssertionError) as e:
                    print(f"shrinking stopped: {type(e).__name__}: {e}", flush=True)
                    break
                s.seq = smallest.seq
                s.note = f" [shrunk from {smallest.messages()} messages]" + (
                    "; diverges from its second run alone on" if smallest.warm else "")
                shrunk[k] = s

        summary = [f"differential: seed {SEED}: {ran} sequences run, {main_sent} messages sent, "
                   f"{diverged} sequences diverged ({len(mismatches)} mismatches, {len(by_kind)} "
                   f"kinds), {elapsed:.1f} s "
                   f"({'PostgreSQL vs itself' if SELFCHECK else 'PostgreSQL vs proxy'})"
                   + (f"; {stopped_early}" if stopped_early else "")]
        if not mismatches and not stopped_early:
            print(summary[0], flush=True)
            return
        lines = summary + ["", "mismatch kinds (count, then a minimal reproduction):"]
        for k in sorted(by_kind, key=lambda k: -len(by_kind[k])):
            lst = by_kind[k]
            lines.append(f"  {len(lst):6d}  {k}   (first: sequence #{lst[0].seq})")
            example = shrunk.get(k) or min(lst, key=lambda m: m.messages())
            lines.append(example.render(indent="          "))
        lines += ["", f"first {min(SHOW_MISMATCHES, len(mismatches))} mismatches in full:"]
        for mm in mismatches[:SHOW_MISMATCHES]:
            lines.append(f"  [{mm.kind}]")
            lines.append(mm.render())
        lines.append(f"\nrerun one: DIFF_SEED={SEED} DIFF_ONLY=<index> /usr/bin/python3 "
                     "tests/integration/test_differential.py")
        report = "\n".join(lines)
        print(report, flush=True)
        self.fail(f"{diverged} of {ran} sequences diverged from PostgreSQL "
                  f"({len(by_kind)} kinds){'; ' + stopped_early if stopped_early else ''}; "
                  "see the report above")


if __name__ == "__main__":
    unittest.main()
