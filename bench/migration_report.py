#!/usr/bin/python3
"""Drives and reports bench/migration.sh (Python 3 stdlib + psycopg2).

  migration_report.py migrate --admin URL --token-file F --method POST|DELETE --path P
                              [--body JSON] --out OUT.json [--poll-ms 100] [--timeout S]
      Starts one migration through the admin API and polls GET /api/v1/migrations/{id} every
      --poll-ms until it ends. OUT.json holds the poll trace, when each phase was first seen,
      the backfill rate (rows_copied at the first poll past BACKFILL over the time from the first
      poll showing BACKFILL to that one) and the final journal row. Exit 1 unless it ended DONE.

  migration_report.py load --dsn DSN --rows N --clients C --rate R --admin URL --token-file F
                           --s1-primary URL --cycles K --settle S --window W --out OUT.json
                           [--samples OUT.csv] [--poll-ms 100]
      C client threads (psycopg2, autocommit) run UPDATE accounts SET balance = balance + 1
      WHERE id = <random 1..N> through the proxy, each at R statements/s (0: as fast as it
      can), recording start time and latency. Meanwhile K migrations run one after the other
      (add s1, remove s1, add s1, ...) with S seconds of load before, between and after them.
      Each cutover's flip time comes from the journal (flipped_at_ms); the statements started
      within +-W s of it make that cutover's window.

  migration_report.py report --backfill B.json --copy C.json --load L.json --md OUT.md
                             --json OUT.json [--meta key=value ...]
      The Markdown report (also printed).
"""
import argparse
import csv
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True

FINAL = ("DONE", "ABORTED", "FAILED")
PHASES = ("PREPARE", "DUAL_WRITE", "BACKFILL", "VERIFY", "READY", "CUTOVER",
          "REVERSE_DUAL_WRITE", "CLEANUP", "DONE")


def log(msg):
    print(f"bench-migration: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the admin API

class Api:
    def __init__(self, url, token_file):
        self.url = url.rstrip("/")
        with open(token_file) as f:
            self.token = f.read().strip()

    def call(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"raw": raw.decode(errors="replace")}


def run_migration(api, method, path, body, poll_s=0.1, timeout=3600, label=""):
    """Starts a migration and polls it until it ends. Returns a dict with the trace."""
    t_post = time.time()
    st, r = api.call(method, path, body)
    if st != 202:
        raise RuntimeError(f"{method} {path} {body}: HTTP {st} {r}")
    m = r["migration"]
    mid = m["id"]
    trace = [(time.time(), m["phase"], m.get("rows_copied", 0))]
    first_seen = {m["phase"]: trace[0][0]}
    last_phase = m["phase"]
    log(f"{label}migration {mid} ({m['kind']} {m['shard']}) started, phase {last_phase}")
    backfill_start = backfill_end = None
    rows_at_backfill_end = None
    if m["phase"] == "BACKFILL":
        backfill_start = trace[0][0]
    while m["phase"] not in FINAL:
        if time.time() - t_post > timeout:
            raise RuntimeError(f"migration {mid} not finished after {timeout}s (phase {m['phase']})")
        time.sleep(poll_s)
        try:
            st, got = api.call("GET", f"/api/v1/migrations/{mid}", timeout=10)
        except (urllib.error.URLError, OSError) as e:
            log(f"GET migration {mid}: {e}; retrying")
            continue
        if st != 200:
            log(f"GET migration {mid}: HTTP {st} {got}; retrying")
            continue
        m = got
        now = time.time()
        trace.append((now, m["phase"], m.get("rows_copied", 0)))
        if m["phase"] not in first_seen:
            first_seen[m["phase"]] = now
        if m["phase"] == "BACKFILL" and backfill_start is None:
            backfill_start = now
        if backfill_start is not None and backfill_end is None and m["phase"] != "BACKFILL":
            backfill_end = now
            rows_at_backfill_end = m.get("rows_copied", 0)
        if m["phase"] != last_phase:
            log(f"{label}migration {mid}: {m['phase']} after {now - t_post:.1f}s, "
                f"rows_copied {m.get('rows_copied', 0):,}")
            last_phase = m["phase"]
    t_done = trace[-1][0]
    out = {
        "id": mid, "kind": m["kind"], "shard": m["shard"], "phase": m["phase"],
        "method": method, "path": path, "body": body,
        "t_post": t_post, "t_end": t_done, "total_s": t_done - t_post,
        "first_seen": first_seen,
        "backfill_start": backfill_start, "backfill_end": backfill_end,
        "backfill_s": (backfill_end - backfill_start) if backfill_start and backfill_end else None,
        "rows_at_backfill_end": rows_at_backfill_end,
        "final": m,
        "trace": trace,
    }
    if out["backfill_s"]:
        out["backfill_rows_per_s"] = rows_at_backfill_end / out["backfill_s"]
    return out


def cmd_migrate(a):
    api = Api(a.admin, a.token_file)
    body = json.loads(a.body) if a.body else None
    res = run_migration(api, a.method, a.path, body, a.poll_ms / 1000, a.timeout)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    if res["phase"] != "DONE":
        log(f"migration {res['id']} ended {res['phase']}: {res['final'].get('error')}")
        return 1
    return 0


# ---------------------------------------------------------------- the client load

class Client(threading.Thread):
    SQL = "UPDATE accounts SET balance = balance + 1 WHERE id = %s"

    def __init__(self, idx, dsn, rows, rate, stop):
        super().__init__(daemon=True, name=f"client-{idx}")
        self.idx, self.dsn, self.rows, self.rate, self.stop = idx, dsn, rows, rate, stop
        self.samples = []   # (start wall s, latency s, key, rowcount)
        self.errors = []    # (start wall s, latency s, key, sqlstate or class, message)
        self.rng = random.Random(1000 + idx)

    def connect(self):
        import psycopg2
        while not self.stop.is_set():
            try:
                c = psycopg2.connect(self.dsn, connect_timeout=10)
                c.autocommit = True
                return c
            except psycopg2.Error as e:
                self.errors.append((time.time(), 0.0, None, "connect", str(e).strip()[:200]))
                time.sleep(0.1)
        return None

    def run(self):
        import psycopg2
        conn = self.connect()
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        nxt = time.perf_counter() + self.rng.random() * interval
        while conn is not None and not self.stop.is_set():
            if interval:
                now = time.perf_counter()
                if nxt > now:
                    time.sleep(nxt - now)
                    nxt += interval
                else:  # late (a held statement): no burst to catch up
                    nxt = now + interval
            key = self.rng.randint(1, self.rows)
            wall = time.time()
            t0 = time.perf_counter()
            try:
                with conn.cursor() as cur:
                    cur.execute(self.SQL, (key,))
                    n = cur.rowcount
                self.samples.append((wall, time.perf_counter() - t0, key, n))
            except psycopg2.Error as e:
                lat = time.perf_counter() - t0
                code = e.pgcode or type(e).__name__
                self.errors.append((wall, lat, key, code, str(e).strip()[:200]))
                if conn.closed:
                    conn = self.connect()
        if conn is not None:
            conn.close()


def pct(sorted_vals, p):
    """Percentile p (0..100) by linear interpolation between closest ranks."""
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def lat_stats(lats):
    s = sorted(lats)
    return {"n": len(s), "p50_ms": ms(pct(s, 50)), "p99_ms": ms(pct(s, 99)),
            "max_ms": ms(s[-1] if s else None)}


def ms(v):
    return None if v is None else v * 1000


def cmd_load(a):
    api = Api(a.admin, a.token_file)
    stop = threading.Event()
    clients = [Client(i, a.dsn, a.rows, a.rate, stop) for i in range(a.clients)]
    t_load_start = time.time()
    for c in clients:
        c.start()
    log(f"{a.clients} clients updating accounts 1..{a.rows:,} through the proxy"
        + (f" at {a.rate:g}/s each" if a.rate > 0 else " as fast as they can"))
    migrations, idle = [], []  # idle: (from, to) spans with no migration running
    failure = None
    try:
        mark = time.time()
        for k in range(a.cycles):
            time.sleep(a.settle)
            idle.append((mark, time.time()))
            if k % 2 == 0:
                args = ("POST", "/api/v1/shards",
                        {"name": "s1", "primary": a.s1_primary, "cleanup_after_s": 0})
            else:
                args = ("DELETE", "/api/v1/shards/s1", {"cleanup_after_s": 0})
            res = run_migration(api, *args, poll_s=a.poll_ms / 1000, timeout=a.timeout,
                                label=f"[cycle {k + 1}/{a.cycles}] ")
            res.pop("trace")
            migrations.append(res)
            mark = time.time()
            if res["phase"] != "DONE":
                failure = f"migration {res['id']} ended {res['phase']}: {res['final'].get('error')}"
                break
        time.sleep(a.settle)
        idle.append((mark, time.time()))
    except Exception as e:  # report what we have, then fail
        failure = f"{type(e).__name__}: {e}"
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=15)
    t_load_end = time.time()

    samples = sorted(s for c in clients for s in c.samples)
    errors = sorted((e for c in clients for e in c.errors), key=lambda e: e[0])
    if a.samples:
        with open(a.samples, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["start_unix_s", "latency_ms", "key", "rowcount_or_sqlstate"])
            for s in samples:
                w.writerow([f"{s[0]:.6f}", f"{s[1] * 1000:.3f}", s[2], s[3]])
            for e in errors:
                w.writerow([f"{e[0]:.6f}", f"{e[1] * 1000:.3f}", e[2], e[3]])

    cutovers = []
    for i, m in enumerate(migrations):
        fin = m["final"]
        flip_ms = fin.get("flipped_at_ms")
        c = {"cycle": i + 1, "id": m["id"], "kind": m["kind"], "phase": m["phase"],
             "total_s": m["total_s"], "pause_ms": fin.get("cutover_pause_ms") or [],
             "attempts": fin.get("cutover_attempts"), "flipped_at_ms": flip_ms,
             "rows_copied": fin.get("rows_copied"), "rows_synced": fin.get("rows_synced"),
             "backfill_s": m["backfill_s"], "stale_writes": fin.get("stale_writes")}
        if flip_ms:
            flip = flip_ms / 1000
            lo, hi = flip - a.window, flip + a.window
            c["window"] = (lo, hi)
            c["stats"] = lat_stats([s[1] for s in samples if lo <= s[0] <= hi])
            c["zero_rows"] = sum(1 for s in samples if lo <= s[0] <= hi and s[3] != 1)
            c["errors"] = sum(1 for e in errors if lo <= e[0] <= hi)
            # The statements in flight at the flip itself (started before it, ended after it).
            c["in_flight_at_flip"] = lat_stats([s[1] for s in samples if s[0] <= flip <= s[0] + s[1]])
        cutovers.append(c)
    windows = [c["window"] for c in cutovers if "window" in c]
    in_window = lambda t: any(lo <= t <= hi for lo, hi in windows)
    outside = [s[1] for s in samples if not in_window(s[0])]
    in_idle = [s[1] for s in samples
               if any(lo <= s[0] <= hi for lo, hi in idle) and not in_window(s[0])]
    err_by_code = {}
    for e in errors:
        err_by_code[e[3]] = err_by_code.get(e[3], 0) + 1
    err_examples = {}
    for e in errors:
        err_examples.setdefault(e[3], e[4])
    dur = t_load_end - t_load_start
    out = {
        "clients": a.clients, "rate_per_client": a.rate, "rows": a.rows, "window_s": a.window,
        "cycles": a.cycles, "duration_s": dur,
        "statements": len(samples), "statements_per_s": len(samples) / dur if dur else None,
        "zero_row_updates": sum(1 for s in samples if s[3] != 1),
        "errors_by_sqlstate": err_by_code, "error_examples": err_examples,
        "cutovers": cutovers,
        "outside_windows": lat_stats(outside),
        "no_migration_running": lat_stats(in_idle),
        "all": lat_stats([s[1] for s in samples]),
        "migrations": migrations,
        "failure": failure,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    if failure:
        log(f"load run failed: {failure}")
        return 1
    return 0


# ---------------------------------------------------------------- the report

def f0(v):
    return "—" if v is None else f"{v:,.0f}"


def f1(v):
    return "—" if v is None else f"{v:,.1f}"


def f2(v):
    return "—" if v is None else f"{v:,.2f}"


def phase_times(m):
    """'PREPARE 0.1 s, BACKFILL 12.3 s, ...' from the first time each phase was seen."""
    seen = sorted(m["first_seen"].items(), key=lambda kv: kv[1])
    parts = []
    for i, (ph, t) in enumerate(seen):
        if ph in FINAL:
            continue
        end = seen[i + 1][1] if i + 1 < len(seen) else m["t_end"]
        parts.append(f"{ph} {end - t:.1f}")
    return ", ".join(parts) + " (s; as polled every 100 ms)"


def copy_runs(path):
    """The baseline runs: one "rows seconds" line each."""
    runs = [tuple(map(float, line.split())) for line in open(path) if line.strip()]
    if not runs:
        return None
    rates = [r / s for r, s in runs]
    srt = sorted(rates)
    return {"runs": len(runs), "rows": runs[0][0], "seconds": [s for _, s in runs],
            "rows_per_s": rates, "rows_per_s_median": pct(srt, 50)}


def cmd_report(a):
    meta = dict(kv.split("=", 1) for kv in a.meta)
    bf = json.load(open(a.backfill)) if os.path.exists(a.backfill) else None
    cp = copy_runs(a.copy) if bf and os.path.exists(a.copy) else None
    ld = json.load(open(a.load)) if a.load and os.path.exists(a.load) else None
    L = []
    L.append("# ShardGate migration benchmark")
    L.append("")
    L.append(f"- command: `{meta.get('command', '?')}`")
    for k in ("date", "elapsed", "nproc", "cpu", "loadavg_at_start", "loadavg_at_end", "postgres", "shardgate",
              "rows", "batch_rows", "cutover_pause_ms"):
        if k in meta:
            L.append(f"- {k}: {meta[k]}")
    L.append("")
    if bf:
        L.append("## 1. Backfill rate against raw COPY")
        L.append("")
        L.append(f"{meta.get('rows', '?')} rows loaded into s0's primary with generate_series; the "
                 "proxy starts with s0 only; `POST /api/v1/shards` adds s1 (`cleanup_after_s` 0), "
                 "no client load. Then on the same two servers, with the proxy idle: `psql -c \"\\copy "
                 "(SELECT * FROM accounts) TO STDOUT\" | psql -c \"\\copy accounts_copy FROM STDIN\"` "
                 "from s0's primary (the rows that stayed there) into a scratch table on s1's primary "
                 "(`LIKE accounts INCLUDING ALL`: with the primary key, as the backfill's target has).")
        L.append("")
        fin = bf["final"]
        rate = bf.get("backfill_rows_per_s")
        copy_rate = cp["rows_per_s_median"] if cp else None
        L.append("| Measure | Value |")
        L.append("| --- | ---: |")
        L.append(f"| rows moved (journal `rows_copied` at the end of BACKFILL; at DONE) | "
                 f"{f0(bf['rows_at_backfill_end'])}; {f0(fin.get('rows_copied'))} |")
        L.append(f"| source rows scanned by the backfill (all of s0's, to pick the moving ones) | "
                 f"{meta.get('rows', '?')} |")
        L.append(f"| time in BACKFILL (first poll showing it to the first past it) | {f2(bf['backfill_s'])} s |")
        L.append(f"| **backfill rate** (rows moved / time in BACKFILL) | **{f0(rate)} rows/s** |")
        L.append(f"| the migration's own `rows_per_second` | {f0(fin.get('rows_per_second'))} rows/s |")
        L.append(f"| total time, POST to DONE | {f1(bf['total_s'])} s |")
        if cp:
            L.append(f"| raw COPY s0 → s1, {f0(cp['rows'])} rows, {cp['runs']} runs | "
                     f"{', '.join(f2(t) for t in cp['seconds'])} s |")
            L.append(f"| **raw COPY rate** (median of the runs; range) | **{f0(copy_rate)} rows/s** "
                     f"({f0(min(cp['rows_per_s']))} to {f0(max(cp['rows_per_s']))}) |")
        if rate and copy_rate:
            ratio = rate / copy_rate
            verdict = "met" if ratio >= 0.5 else "NOT met"
            L.append(f"| **backfill / COPY** (target ≥ 50%) | **{100 * ratio:.0f}%** ({verdict}) |")
        L.append("")
        L.append(f"Phases of that migration: {phase_times(bf)}. Verify: "
                 f"{fin['verify']['rows_checked']:,} rows checked, {fin['verify']['mismatches']:,} "
                 f"mismatches.")
        L.append("")
    if ld:
        L.append("## 2. Client-visible write pause at cutover, under load")
        L.append("")
        rate_txt = (f"{ld['rate_per_client']:g} statements/s each" if ld["rate_per_client"] > 0
                    else "each as fast as it can")
        L.append(f"{meta.get('pause_rows', '?')} rows on s0; {ld['clients']} clients (psycopg2, "
                 f"autocommit, through the proxy, {rate_txt}) run `UPDATE accounts SET balance = "
                 f"balance + 1 WHERE id = <random>` over the whole key range for {ld['duration_s']:.0f} s "
                 f"({ld['statements']:,} statements, {ld['statements_per_s']:,.0f}/s) while "
                 f"{ld['cycles']} migrations run one after the other (add s1, remove s1, ...; "
                 f"`cleanup_after_s` 0). A cutover's window is the statements started within "
                 f"±{ld['window_s']:g} s of its flip (the journal's `flipped_at_ms`). The "
                 f"runner's pause is the journal's `cutover_pause_ms`: from pausing writes to "
                 f"moving keys to storing the flip.")
        L.append("")
        L.append("| Cutover | Migration | Total s | Attempts | Runner pause ms | Window statements | p50 ms | p99 ms | max ms | In flight at the flip: n, max ms | Errors in window |")
        L.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c in ld["cutovers"]:
            st = c.get("stats") or {}
            inf = c.get("in_flight_at_flip") or {}
            L.append(f"| {c['cycle']} | {c['kind']} s1 ({c['id']}), {c['phase']} | {f1(c['total_s'])} | "
                     f"{c.get('attempts') or '—'} | {', '.join(str(p) for p in c['pause_ms']) or '—'} | "
                     f"{f0(st.get('n'))} | {f2(st.get('p50_ms'))} | {f2(st.get('p99_ms'))} | "
                     f"{f1(st.get('max_ms'))} | {f0(inf.get('n'))}, {f1(inf.get('max_ms'))} | "
                     f"{c.get('errors', '—')} |")
        for label, key in (("outside the cutover windows (includes the other migration phases)",
                            "outside_windows"),
                           ("while no migration runs (and outside the windows)", "no_migration_running"),
                           ("all statements", "all")):
            st = ld[key]
            L.append(f"| baseline | {label} | | | | {f0(st['n'])} | {f2(st['p50_ms'])} | "
                     f"{f2(st['p99_ms'])} | {f1(st['max_ms'])} | | |")
        L.append("")
        errs = ld["errors_by_sqlstate"]
        if errs:
            L.append("Client errors by SQLSTATE: " + ", ".join(
                f"`{k}` × {v} (e.g. \"{ld['error_examples'][k]}\")" for k, v in sorted(errs.items())))
        else:
            L.append("Client errors by SQLSTATE: **none**.")
        L.append(f"Updates that matched no row (would mean a statement went to a shard without the "
                 f"key): {ld['zero_row_updates']:,}.")
        if ld.get("failure"):
            L.append("")
            L.append(f"**The load run failed:** {ld['failure']}")
        L.append("")
    text = "\n".join(L)
    with open(a.md, "w") as f:
        f.write(text + "\n")
    with open(a.json, "w") as f:
        json.dump({"meta": meta, "backfill": {k: v for k, v in bf.items() if k != "trace"},
                   "copy": cp, "load": ld}, f, indent=1)
    print(text)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("migrate")
    m.add_argument("--admin", required=True)
    m.add_argument("--token-file", required=True)
    m.add_argument("--method", required=True, choices=("POST", "DELETE"))
    m.add_argument("--path", required=True)
    m.add_argument("--body")
    m.add_argument("--out", required=True)
    m.add_argument("--poll-ms", type=float, default=100)
    m.add_argument("--timeout", type=float, default=3600)
    m.set_defaults(func=cmd_migrate)

    ld = sub.add_parser("load")
    ld.add_argument("--dsn", required=True)
    ld.add_argument("--rows", type=int, required=True)
    ld.add_argument("--clients", type=int, default=8)
    ld.add_argument("--rate", type=float, default=0)
    ld.add_argument("--admin", required=True)
    ld.add_argument("--token-file", required=True)
    ld.add_argument("--s1-primary", required=True)
    ld.add_argument("--cycles", type=int, default=3)
    ld.add_argument("--settle", type=float, default=3)
    ld.add_argument("--window", type=float, default=1)
    ld.add_argument("--out", required=True)
    ld.add_argument("--samples")
    ld.add_argument("--poll-ms", type=float, default=100)
    ld.add_argument("--timeout", type=float, default=1800)
    ld.set_defaults(func=cmd_load)

    r = sub.add_parser("report")
    r.add_argument("--backfill", required=True)
    r.add_argument("--copy", required=True)
    r.add_argument("--load")
    r.add_argument("--md", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--meta", action="append", default=[])
    r.set_defaults(func=cmd_report)

    a = p.parse_args()
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
