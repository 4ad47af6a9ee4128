"""Generator and wire helpers for the differential protocol test (test_differential.py).

Stdlib only. Nothing here talks to a server: this module builds frontend messages (with a
readable one-line notation), decodes and normalises backend replies, keeps a model of the
session (prepared statements, portals, transaction status) learned from PostgreSQL's own
replies, and generates sequences of message chunks from a seeded random.Random.

A sequence is a list of chunks. A chunk is what is sent before reading: extended-protocol
messages ending with Sync 'S' or Flush 'H', or one simple Query 'Q'. The generator is
interactive: it yields one chunk at a time and looks at the model (updated from the reference
server's replies to the chunks before) to decide the next, e.g. to continue a portal only
while it answered PortalSuspended. Only the reference's replies feed the model, so a sequence
depends on its seed and on PostgreSQL alone, never on the proxy under test.
"""

import struct

# ---------------------------------------------------------------- frontend messages

OID_NAMES = {0: "?", 16: "bool", 20: "int8", 21: "int2", 23: "int4", 25: "text", 705: "unknown"}
INT8, INT4, TEXT = 20, 23, 25


def _frame(t, body=b""):
    return t + struct.pack("!I", len(body) + 4) + body


def _cstr(s):
    return s.encode() + b"\0"


def _q(s):
    return '"' + s + '"'


def _val(v):
    if v is None:
        return "NULL"
    if isinstance(v, str):
        return repr(v)
    return str(v)


class Msg:
    """One frontend message. kind: P B D E C H S Q."""

    __slots__ = ("kind", "a")

    def __init__(self, kind, **a):
        self.kind, self.a = kind, a

    def __getattr__(self, k):
        try:
            return self.a[k]
        except KeyError:
            raise AttributeError(k) from None

    def __repr__(self):
        return self.notation()

    def encode(self):
        k, a = self.kind, self.a
        if k == "P":
            body = _cstr(a["name"]) + _cstr(a["sql"]) + struct.pack("!h", len(a["types"]))
            body += b"".join(struct.pack("!I", t) for t in a["types"])
            return _frame(b"P", body)
        if k == "B":
            body = _cstr(a["portal"]) + _cstr(a["stmt"])
            body += struct.pack("!h", len(a["pf"])) + b"".join(struct.pack("!h", f) for f in a["pf"])
            body += struct.pack("!h", len(a["params"]))
            for i, (typ, v) in enumerate(a["params"]):
                if v is None:
                    body += struct.pack("!i", -1)
                    continue
                binary = _fmt_of(a["pf"], i) == 1
                data = encode_param(typ, v, binary)
                body += struct.pack("!i", len(data)) + data
            body += struct.pack("!h", len(a["rf"])) + b"".join(struct.pack("!h", f) for f in a["rf"])
            return _frame(b"B", body)
        if k == "D":
            return _frame(b"D", a["what"].encode() + _cstr(a["name"]))
        if k == "E":
            return _frame(b"E", _cstr(a["portal"]) + struct.pack("!i", a["limit"]))
        if k == "C":
            return _frame(b"C", a["what"].encode() + _cstr(a["name"]))
        if k in "HS":
            return _frame(k.encode())
        if k == "Q":
            return _frame(b"Q", _cstr(a["sql"]))
        raise ValueError(k)

    def notation(self):
        k, a = self.kind, self.a
        if k == "P":
            types = ""
            if a["types"]:
                types = " [" + ",".join(OID_NAMES.get(t, str(t)) for t in a["types"]) + "]"
            return f'P{_q(a["name"])} {a["sql"]}{types}'
        if k == "B":
            vals = []
            for i, (typ, v) in enumerate(a["params"]):
                s = _val(v)
                if v is not None and _fmt_of(a["pf"], i) == 1:
                    s = f"b:{s}" if typ != INT4 else f"b4:{s}"
                vals.append(s)
            out = f'B{_q(a["portal"])} {_q(a["stmt"])} [{", ".join(vals)}]'
            if a["pf"]:
                out += " pf=" + "".join(map(str, a["pf"]))
            if a["rf"]:
                out += " rf=" + "".join(map(str, a["rf"]))
            return out
        if k in "DC":
            return f'{k} {a["what"]}{_q(a["name"])}'
        if k == "E":
            return f'E{_q(a["portal"])} {a["limit"]}'
        if k in "HS":
            return k
        if k == "Q":
            return f'Q {_q(a["sql"])}'
        return k


def _fmt_of(fmts, i):
    if not fmts:
        return 0
    if len(fmts) == 1:
        return fmts[0]
    return fmts[i] if i < len(fmts) else 0


def encode_param(typ, v, binary):
    if not binary:
        return str(v).encode()
    if typ == INT8:
        return struct.pack("!q", v)
    if typ == INT4:
        return struct.pack("!i", v)
    return str(v).encode()


def P(name, sql, types=()):
    return Msg("P", name=name, sql=sql, types=list(types))


def B(portal, stmt, params=(), pf=(), rf=()):
    return Msg("B", portal=portal, stmt=stmt, params=list(params), pf=list(pf), rf=list(rf))


def D(what, name):
    return Msg("D", what=what, name=name)


def E(portal, limit=0):
    return Msg("E", portal=portal, limit=limit)


def C(what, name):
    return Msg("C", what=what, name=name)


def H():
    return Msg("H")


def S():
    return Msg("S")


def Q(sql):
    return Msg("Q", sql=sql)


def chunk_notation(chunk):
    return "; ".join(m.notation() for m in chunk)


# ---------------------------------------------------------------- backend replies

def error_fields(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def normalise(t, body):
    """A hashable form of one backend frame holding what must match between servers.

    Left out on purpose: error/notice message text (the proxy renames statements) and nonzero
    table OIDs (they differ between servers; only zero vs nonzero is kept)."""
    if t == "T":
        n = struct.unpack_from("!h", body)[0]
        off, cols = 2, []
        for _ in range(n):
            end = body.index(b"\0", off)
            name = body[off:end].decode(errors="replace")
            tab, att, typ, tlen, tmod, fmt = struct.unpack_from("!IhIhih", body, end + 1)
            off = end + 1 + 18
            cols.append((name, tab != 0, att, typ, tlen, tmod, fmt))
        return ("T", tuple(cols))
    if t == "D":
        n = struct.unpack_from("!h", body)[0]
        off, vals = 2, []
        for _ in range(n):
            ln = struct.unpack_from("!i", body, off)[0]
            off += 4
            if ln < 0:
                vals.append(None)
            else:
                vals.append(bytes(body[off:off + ln]))
                off += ln
        return ("D", tuple(vals))
    if t == "C":
        return ("C", body.rstrip(b"\0").decode(errors="replace"))
    if t in "EN":
        f = error_fields(body)
        return (t, f.get("V", f.get("S", "")), f.get("C", ""))
    if t == "t":
        n = struct.unpack_from("!h", body)[0]
        return ("t", struct.unpack_from(f"!{n}I", body, 2))
    if t == "S":
        parts = body.split(b"\0")
        return ("S", parts[0].decode(errors="replace"), parts[1].decode(errors="replace"))
    if t == "Z":
        return ("Z", body.decode(errors="replace"))
    if t == "A":  # NotificationResponse: the sender's pid differs between servers
        parts = body[4:].split(b"\0")
        return ("A", parts[0].decode(errors="replace"), parts[1].decode(errors="replace"))
    if t in "123nsI":
        return (t,)
    return (t, bytes(body))


def _show_bytes(v):
    if v is None:
        return "NULL"
    try:
        s = v.decode()
        if s.isprintable():
            return s if s and not s.isspace() else repr(s)
    except UnicodeDecodeError:
        pass
    return "0x" + v.hex()


def reply_notation(n):
    """Readable form of a normalised frame."""
    t = n[0]
    if t == "T":
        cols = []
        for name, tab, att, typ, tlen, tmod, fmt in n[1]:
            s = f"{name}:{OID_NAMES.get(typ, typ)}"
            if tmod != -1:
                s += f"({tmod})"
            if fmt:
                s += "/b"
            cols.append(s)
        return "T(" + ",".join(cols) + ")"
    if t == "D":
        return "D(" + ",".join(_show_bytes(v) for v in n[1]) + ")"
    if t == "C":
        return f'C"{n[1]}"'
    if t in "EN":
        return f"{t} {n[1]} {n[2]}"
    if t == "t":
        return "t(" + ",".join(OID_NAMES.get(o, str(o)) for o in n[1]) + ")"
    if t == "S":
        return f"S {n[1]}={n[2]!r}"
    if t == "Z":
        return f"Z {n[1]}"
    if t == "A":
        return f"A {n[1]} {n[2]!r}"
    return t


def unit_notation(unit):
    if unit is None:
        return "(skipped)"
    if not unit:
        return "(nothing)"
    return " ".join(reply_notation(n) for n in unit)


def frame_sig(n):
    """Short signature of a normalised frame for grouping mismatches into kinds."""
    if n is None:
        return "nothing"
    t = n[0]
    if t in "EN":
        return f"{t} {n[2]}"
    if t == "C":
        return "C " + "".join("#" if c.isdigit() else c for c in n[1]).replace("##", "#")
    if t == "Z":
        return f"Z {n[1]}"
    if t == "S":
        return f"S {n[1]}"
    return t


# ---------------------------------------------------------------- statement templates

class Tmpl:
    """A statement with $n parameters. params: one kind per parameter (key, text, int8, int4,
    divisor); ncols: result columns (0 = no rows); multi: may return several rows; setting: a
    SET (a session SET makes the runner open fresh connections afterwards)."""

    def __init__(self, label, sql, params=(), ncols=0, multi=False, setting=False):
        self.label, self.sql, self.params = label, sql, list(params)
        self.ncols, self.multi, self.setting = ncols, multi, setting

    def __repr__(self):
        return self.label


NATURAL = {"key": INT8, "text": TEXT, "int8": INT8, "int4": INT4, "div": INT4}

T = {t.label: t for t in [
    Tmpl("sel", "SELECT id, owner, balance FROM accounts WHERE id = $1", ["key"], 3),
    Tmpl("selg", "SELECT id, owner, balance, g FROM accounts, generate_series(1, 3) g "
                 "WHERE id = $1 ORDER BY g", ["key"], 4, multi=True),
    Tmpl("sel2", "SELECT id, balance FROM accounts WHERE id IN ($1, $2) ORDER BY id",
         ["key", "key"], 2, multi=True),
    Tmpl("upsert", "INSERT INTO accounts (id, owner, balance) VALUES ($1, $2, $3) ON CONFLICT (id) "
                   "DO UPDATE SET balance = accounts.balance + 1 RETURNING balance",
         ["key", "text", "int8"], 1),
    Tmpl("ins", "INSERT INTO accounts (id, owner, balance) VALUES ($1, 'x', 0)", ["key"]),
    Tmpl("upd", "UPDATE accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance",
         ["key", "int8"], 1),
    Tmpl("del", "DELETE FROM accounts WHERE id = $1", ["key"]),
    Tmpl("forupd", "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE", ["key"], 1),
    Tmpl("add", "SELECT $1::int + 1", ["int4"], 1),
    Tmpl("cat", "SELECT $1::text || $2::text", ["text", "text"], 1),
    # Errors raised at run time, not while planning: a server-side statement through the proxy
    # is shared by clients and may already use a generic plan, where PostgreSQL with a custom
    # plan folds `1/$1` with 0 (or `$1 + 1` at the int4 limit) and fails at Bind instead of
    # Execute (the README's documented difference). A column in the expression keeps it
    # unfoldable.
    Tmpl("div", "SELECT 1/($2::int + balance - balance) FROM accounts WHERE id = $1",
         ["key", "div"], 1),
    Tmpl("syntax", "SELEC 1"),
    Tmpl("begin", "BEGIN"),
    Tmpl("commit", "COMMIT"),
    Tmpl("rollback", "ROLLBACK"),
    Tmpl("setlocal", "SET LOCAL statement_timeout = '5s'", setting=True),
    Tmpl("setapp_a", "SET application_name = 'diff_a'", setting=True),
    Tmpl("setapp_b", "SET application_name = 'diff_b'", setting=True),
    Tmpl("showapp", "SHOW application_name", ncols=1),
    Tmpl("showto", "SHOW statement_timeout", ncols=1),
]}

# Weights of templates for ordinary statements (Parse of a data statement).
DATA_WEIGHTS = [("sel", 14), ("selg", 12), ("sel2", 6), ("upsert", 10), ("ins", 5), ("upd", 8),
                ("del", 3), ("forupd", 4), ("add", 6), ("cat", 6), ("div", 4), ("syntax", 2),
                ("showapp", 2), ("showto", 2)]
CONTROL_WEIGHTS = [("begin", 10), ("commit", 5), ("rollback", 4), ("setlocal", 4),
                   ("setapp_a", 2), ("setapp_b", 1), ("showapp", 2), ("showto", 2)]

# The table's state at the start of every sequence: keys[0..PRESENT-1] exist.
PRESENT = 10


def initial_rows(keys):
    """[(id, owner, balance)] the table holds when a sequence starts (owner None = NULL)."""
    rows = []
    for i, k in enumerate(keys[:PRESENT]):
        rows.append((k, None if i == PRESENT - 1 else f"o{i}", 10 * i))
    return rows


def _wchoice(rng, weighted):
    total = sum(w for _, w in weighted)
    r = rng.random() * total
    for v, w in weighted:
        r -= w
        if r < 0:
            return v
    return weighted[-1][0]


# ---------------------------------------------------------------- the session model

class Model:
    """What the reference server holds for the session, learned from its replies."""

    def __init__(self):
        self.stmts = {}    # name -> (Tmpl, declared types)
        self.portals = {}  # name -> "ready" | "suspended" | "done"
        self.status = "I"  # last ReadyForQuery status
        self.violations = []  # Executes of a portal that had already completed

    def update(self, chunk, units, stmt_of):
        """Applies the replies (one unit per message, None = skipped) to the model.
        stmt_of: Parse message -> (Tmpl, types) as the generator meant it."""
        for m, unit in zip(chunk, units):
            if unit is None:
                continue
            types = [n[0] for n in unit]
            k = m.kind
            if k == "P":
                if "1" in types:
                    self.stmts[m.name] = stmt_of(m)
                elif m.name == "":
                    self.stmts.pop("", None)  # a failed unnamed Parse has dropped the old one
            elif k == "B":
                if "2" in types:
                    self.portals[m.portal] = "ready"
            elif k == "E":
                if self.portals.get(m.portal) == "done":
                    self.violations.append(m)
                if m.portal in self.portals:
                    self.portals[m.portal] = "suspended" if "s" in types else "done"
            elif k == "C":
                (self.stmts if m.what == "S" else self.portals).pop(m.name, None)
            elif k in "SQ":
                if k == "Q":  # a simple Query replaces the unnamed statement and portal
                    self.stmts.pop("", None)
                    self.portals.pop("", None)
                z = [n for n in unit if n[0] == "Z"]
                if z:
                    self.status = z[-1][1]
                if self.status != "T":
                    self.portals.clear()


# ---------------------------------------------------------------- the generator

class SequenceGen:
    """Yields the chunks of one sequence. All keys belong to one shard (the caller's choice).

    Before each chunk after the first, the runner updates `model` from the reference's
    replies. `session_set` tells the runner that the session's settings may have changed
    (it then opens fresh connections for the next sequence)."""

    STMT_NAMES = ["s1", "s2", "s3"]
    PORTALS = [("", 6), ("p1", 3), ("p2", 1)]

    def __init__(self, rng, keys, model):
        self.rng, self.keys, self.model = rng, keys, model
        self.session_set = False
        self.used_names = set()
        self.meant = {}        # id(Parse msg) -> (Tmpl, types)
        self.pending = {}      # statements parsed in the open batch, not yet read back

    # -- values

    def key(self):
        r = self.rng
        # Mostly keys that exist at the start, sometimes absent ones (inserts, empty results).
        return r.choice(self.keys[:PRESENT]) if r.random() < 0.7 else r.choice(self.keys)

    def value(self, kind):
        r = self.rng
        if kind == "key":
            return self.key()
        if kind == "text":
            return r.choice(["a", "b", "é", "", None, "x y"])
        if kind == "int8":
            return r.choice([1, 2, 5, -3, 1000, None]) if r.random() < 0.2 else r.randint(-5, 50)
        if kind == "int4":
            return r.choice([0, 1, 41, -7, 2147483646, None])  # (no overflow: see "div")
        if kind == "div":
            return r.choice([0, 0, 1, 2, -1])
        raise ValueError(kind)

    def types_for(self, tmpl):
        """Parameter type OIDs for a Parse: all given, none, some, or explicit zeros."""
        r = self.rng
        if not tmpl.params:
            return []
        nat = [NATURAL[p] for p in tmpl.params]
        if "key" in tmpl.params and r.random() < 0.15:
            nat = [INT4 if p == "key" else t for p, t in zip(tmpl.params, nat)]
        v = r.random()
        if v < 0.45:
            return nat
        if v < 0.75:
            return []
        if v < 0.9:
            return nat[:r.randint(1, len(nat))] if len(nat) > 1 else [0]
        return [0] * len(nat)

    def bind_params(self, tmpl, types, count_delta=0):
        """(params, pf): values with their encoding type, and parameter format codes."""
        r = self.rng
        eff = []
        for i, kind in enumerate(tmpl.params):
            declared = types[i] if i < len(types) else 0
            eff.append(declared if declared else NATURAL[kind])
        params = [(t, self.value(kind)) for t, kind in zip(eff, tmpl.params)]
        if count_delta > 0:
            params.append((TEXT, "1"))
        elif count_delta < 0 and params:
            params.pop()
        elif count_delta < 0:
            params.append((TEXT, "1"))
        v = r.random()
        if not params or v < 0.5:
            pf = []
        elif v < 0.7:
            pf = [r.choice([0, 1])]
        else:
            pf = [r.choice([0, 1]) for _ in params]
        return params, pf

    def result_formats(self, tmpl):
        r = self.rng
        v = r.random()
        if v < 0.6 or not tmpl.ncols:
            return []
        if v < 0.85:
            return [r.choice([0, 1])]
        return [r.choice([0, 1]) for _ in range(tmpl.ncols)]

    def portal(self):
        return _wchoice(self.rng, self.PORTALS)

    def limit(self, tmpl):
        r = self.rng
        if tmpl.ncols and (tmpl.multi or r.random() < 0.15) and r.random() < 0.6:
            return r.choice([1, 1, 2])
        return 0

    # -- the statement view of the open batch

    def stmt(self, name):
        if name in self.pending:
            return self.pending[name]
        return self.model.stmts.get(name)

    def parse(self, name, tmpl, types=None):
        if types is None:
            types = self.types_for(tmpl)
        m = P(name, tmpl.sql, types)
        self.meant[id(m)] = (tmpl, types)
        if name:
            self.used_names.add(name)
        if tmpl.setting and "LOCAL" not in tmpl.sql:
            self.session_set = True
        # A named statement that exists stays as it was (42P05); an unnamed one is replaced.
        if name == "" or self.stmt(name) is None:
            self.pending[name] = (tmpl, types)
        return m

    def stmt_of(self, m):
        return self.meant.get(id(m), (None, []))

    def bind_exec(self, portal, stmt, info, describe=True, limit=None):
        tmpl, types = info
        r = self.rng
        params, pf = self.bind_params(tmpl, types)
        out = [B(portal, stmt, params, pf, self.result_formats(tmpl))]
        if describe and r.random() < 0.3:
            out.append(D("P", portal) if r.random() < 0.7 else D("S", stmt))
        lim = self.limit(tmpl) if limit is None else limit
        out.append(E(portal, lim))
        self.model.portals.pop(portal, None)  # replaced: never continue the old one
        return out

    # -- operations (each a list of messages inside a batch)

    def op_unnamed(self, tmpl=None):
        """The driver path: P"" / B / [D] / E on the unnamed statement."""
        tmpl = tmpl or T[_wchoice(self.rng, DATA_WEIGHTS)]
        p = self.parse("", tmpl)
        return [p] + self.bind_exec(self.portal(), "", self.pending[""])

    def op_named_parse(self):
        r = self.rng
        name = r.choice(self.STMT_NAMES)
        tmpl = T[_wchoice(r, DATA_WEIGHTS + CONTROL_WEIGHTS[:1])]
        out = [self.parse(name, tmpl)]
        if r.random() < 0.3:
            out.append(D("S", name))
        return out

    def op_named_exec(self):
        r = self.rng
        known = [n for n in self.STMT_NAMES if self.stmt(n) is not None]
        if not known:
            return self.op_named_parse() + (self.op_named_exec_of() if r.random() < 0.7 else [])
        name = r.choice(known)
        return self.bind_exec(self.portal(), name, self.stmt(name))

    def op_named_exec_of(self):
        known = [n for n in self.STMT_NAMES if self.stmt(n) is not None]
        if not known:
            return []
        name = self.rng.choice(known)
        return self.bind_exec(self.portal(), name, self.stmt(name))

    def op_unnamed_parse_only(self):
        tmpl = T[_wchoice(self.rng, DATA_WEIGHTS)]
        out = [self.parse("", tmpl)]
        if self.rng.random() < 0.3:
            out.append(D("S", ""))
        return out

    def op_bind_unnamed(self):
        info = self.stmt("")
        if info is None:
            portal = self.portal()
            return [B(portal, "", [], [], []), E(portal, 0)]  # 26000 (or 08P01 if it exists)
        return self.bind_exec(self.portal(), "", info)

    def op_describe(self):
        r = self.rng
        if r.random() < 0.5:
            return [D("S", r.choice(["", "s1", "s2", "s3", "nosuch"]))]
        return [D("P", r.choice(["", "", "p1", "p2", "nosuch"]))]

    def op_close(self):
        r = self.rng
        if r.random() < 0.6:
            name = r.choice(["", "s1", "s2", "s3", "nosuch"])
            if name.startswith("s"):
                self.used_names.add(name)
            self.pending.pop(name, None)
            return [C("S", name)]
        name = r.choice(["", "p1", "p2", "nosuch"])
        self.model.portals.pop(name, None)
        return [C("P", name)]

    def op_bind_unknown(self):
        portal = self.portal()
        return [B(portal, "nosuch", [(TEXT, "1")], [], []), E(portal, 0)]

    def op_wrong_count(self):
        r = self.rng
        cands = [n for n in ["", "s1", "s2", "s3"] if self.stmt(n) is not None]
        if not cands:
            out = [self.parse("", T["add"])]
            name = ""
        else:
            out, name = [], r.choice(cands)
        tmpl, types = self.stmt(name)
        params, pf = self.bind_params(tmpl, types, count_delta=r.choice([1, -1]))
        portal = self.portal()
        return out + [B(portal, name, params, pf, []), E(portal, 0)]

    def op_control(self, label=None):
        """BEGIN/COMMIT/ROLLBACK/SET/SHOW through the extended protocol, unnamed or named."""
        r = self.rng
        tmpl = T[label or _wchoice(r, CONTROL_WEIGHTS)]
        name = "" if r.random() < 0.8 else r.choice(self.STMT_NAMES)
        if name and self.stmt(name) is not None:
            name = ""
        p = self.parse(name, tmpl, [])
        return [p] + self.bind_exec("", name, (tmpl, []), describe=False, limit=0)

    def op_error(self):
        r = self.rng
        v = r.random()
        if v < 0.35:
            return self.op_unnamed(T["div"])
        if v < 0.6:
            p = self.parse("", T["syntax"], [])
            return [p, B("", "", [], [], []), E("", 0)]
        # unique violation on a key that exists at the start
        tmpl = T["ins"]
        p = self.parse("", tmpl)
        types = self.pending[""][1]
        t = types[0] if types and types[0] else INT8
        return [p, B("", "", [(t, r.choice(self.keys[:PRESENT]))], [], []), E("", 0)]

    def op_continue(self):
        r = self.rng
        sus = sorted(n for n, st in self.model.portals.items() if st == "suspended")
        if not sus:
            return None
        name = r.choice(sus)
        out = []
        if r.random() < 0.15:
            out.append(D("P", name))
        if r.random() < 0.1:
            self.model.portals.pop(name)
            return out + [C("P", name)]
        out.append(E(name, r.choice([0, 1, 1, 2])))
        self.model.portals[name] = "done?"  # never twice without having read the answer
        return out

    OPS = [("op_unnamed", 34), ("op_named_parse", 8), ("op_named_exec", 16),
           ("op_unnamed_parse_only", 4), ("op_bind_unnamed", 6), ("op_describe", 4),
           ("op_close", 4), ("op_bind_unknown", 2), ("op_wrong_count", 2), ("op_control", 10),
           ("op_error", 7)]

    def op(self):
        r = self.rng
        if any(st == "suspended" for st in self.model.portals.values()) and r.random() < 0.5:
            out = self.op_continue()
            if out:
                return out
        return getattr(self, _wchoice(r, self.OPS))()

    # -- simple queries

    def simple_query(self):
        r = self.rng
        k = self.key()
        n = r.randint(-3, 9)
        sql = _wchoice(r, [
            ("BEGIN", 10), ("COMMIT", 5), ("ROLLBACK", 4),
            (f"SELECT id, owner, balance FROM accounts WHERE id = {k}", 8),
            (f"UPDATE accounts SET balance = balance + {n} WHERE id = {k} RETURNING balance", 6),
            (f"INSERT INTO accounts (id, owner, balance) VALUES ({k}, 'q', {n}) ON CONFLICT (id) "
             f"DO UPDATE SET balance = accounts.balance + 1 RETURNING balance", 4),
            (f"DELETE FROM accounts WHERE id = {k}", 2),
            ("SET application_name = 'diff_q'", 2), ("SHOW application_name", 2),
            ("SET LOCAL statement_timeout = '5s'", 2), ("SHOW statement_timeout", 1),
            ("SELECT 1/0", 1), ("SELEC 1", 1)])
        if sql.startswith("SET application_name"):
            self.session_set = True
        return [Q(sql)]

    # -- the sequence

    def _batch_end(self, end):
        self.pending.clear()
        return end

    def chunks(self):
        """The generator proper: yields chunks; the model is updated between yields."""
        r = self.rng
        steps = r.randint(1, 5)
        first = r.random()
        if first < 0.15:
            yield [Q("BEGIN")]
        elif first < 0.3:
            # pgjdbc's transaction start: BEGIN and the first statement in one batch
            msgs = self.op_control("begin") + self.op()
            yield msgs + [self._batch_end(S())]
        for _ in range(steps):
            v = r.random()
            if v < 0.18:
                yield self.simple_query()
                continue
            if v < 0.21:
                yield [S()]  # a bare Sync
                continue
            msgs = []
            for _ in range(r.choice([1, 1, 2, 2, 2, 3, 3, 4])):
                msgs += self.op()
                # Cut the batch with a Flush, read what comes, go on in the same batch. After a
                # limited Execute this is how a continued portal is reached.
                limited = msgs and msgs[-1].kind == "E" and msgs[-1].limit > 0
                if r.random() < (0.5 if limited else 0.12):
                    yield msgs + [H()]
                    msgs = []
                    while r.random() < 0.6:
                        more = self.op_continue()
                        if not more:
                            break
                        if r.random() < 0.6:
                            yield more + [H()]
                        else:
                            msgs += more
                            break
            yield msgs + [self._batch_end(S())]
        # Leave nothing behind: end any transaction, drop the statements used.
        yield [Q("ROLLBACK")]
        yield [C("S", n) for n in [""] + sorted(self.used_names)] + [S()]
