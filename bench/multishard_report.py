#!/usr/bin/python3
"""Data and numbers for bench/multishard.sh (pgbench output parsing comes from bench/report.py).

  multishard_report.py plan --rows N --pairs P --layouts 2,3 --dir DIR [--seed S] [--samples K]
      Places ids 1..N on the ring of each layout (shards s0..s<L-1>, 150 vnodes: README's "The
      ring contract", the same code as tests/integration/workload.py's Ring) and writes, per
      layout L:
        DIR/accounts-L-s<k>.csv   the rows shard s<k> owns: id, owner, balance (CSV for \\copy)
        DIR/pairs-L-same.csv      P pairs (i, a, b) of two ids on the same shard, a < b
        DIR/pairs-L-cross.csv     P pairs of two ids on different shards, a < b
        DIR/sample-L.txt          K "id shard" lines (pair ids among them) to check against the
                                  proxy's --locate and through the proxy
      Every id is in at most one pair. `owner` tags the role of an id: same-a / same-b /
      cross-a / cross-b (a transfer debits a and credits b), "acct" for the others; balances are
      pseudo-random (same seed, same balance of an id in every layout).

  multishard_report.py record --runs RUNS.jsonl --target T --case C --output PGBENCH.out
                              --log-prefix PREFIX --rc RC --cpu-ticks TICKS --clk-tck HZ
                              --keep-logs 0|1 [--state-before S --state-after S]
                              [--prepared-seen "SAMPLES WITH_SOME MAX"]
      One pgbench run: tps, mean, p50 and p99 latency (from the per-transaction logs), the proxy's
      CPU per 1000 transactions. For the tx cases, S is "rows sum same_a same_b cross_a cross_b
      prepared" read straight from the primaries; the run's data checks: the sum of balances
      did not move, the debits of the case's a-ids (and credits of its b-ids) equal the
      transactions pgbench counted, and no prepared transaction is left; with --prepared-seen
      (sampled through a proxy's run), that tx-two-shards was seen prepared (two-phase commit)
      and tx-one-shard never was. Appends one JSON line, prints a one-line summary.

  multishard_report.py sample --ports P1,P2 --db DB --out FILE [--interval 0.2]
      Until SIGTERM: counts the proxy's prepared transactions (gid sg_...) on those primaries
      every interval; at exit writes "samples samples_with_some max_at_once" to FILE.

  multishard_report.py check --runs RUNS.jsonl --target T --what TEXT --ok 0|1
      Appends a data check done by the shell (rows through the proxy, placement, ...).

  multishard_report.py summary --runs RUNS.jsonl --md OUT.md --json OUT.json [--meta k=v ...]
                               [--proxy-log TARGET=PATH ...]
      Prints the Markdown table and writes OUT.md and OUT.json. Exits 3 when a data check failed,
      else 4 when a pgbench run failed.
"""
import argparse
import bisect
import ctypes
import glob
import json
import os
import random
import signal
import struct
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import fmt, parse_output, write_report  # noqa: E402

CASES = ("key-read", "scatter-count", "scatter-top10", "tx-one-shard", "tx-two-shards")
TX_TAG = {"tx-one-shard": "same", "tx-two-shards": "cross"}
STATE_KEYS = ("rows", "sum", "same_a", "same_b", "cross_a", "cross_b", "prepared")
TARGET_LABEL = {"2-shards": "2 shards (proxy)", "3-shards": "3 shards (proxy)",
                "direct": "direct (one server, all rows)"}

# ------------------------------------------------------------------------------------ the ring


def _xxh3():
    for name in ("libxxhash.so.0", "libxxhash.so"):
        try:
            fn = ctypes.CDLL(name).XXH3_64bits
        except OSError:
            continue
        fn.restype, fn.argtypes = ctypes.c_uint64, [ctypes.c_char_p, ctypes.c_size_t]
        return fn
    raise SystemExit("multishard_report.py: libxxhash (XXH3_64bits) not found: apt-get install libxxhash0")


class Ring:
    """README's ring contract: point i of shard n is XXH3("n#i"), a bigint key hashes as its 8
    bytes little-endian, its owner is the shard of the first point >= the hash (wrapping),
    equal points go to the lower name."""

    def __init__(self, names, vnodes=150):
        self.h = _xxh3()
        pts = sorted((self.h(f"{n}#{i}".encode(), len(f"{n}#{i}")), n)
                     for n in names for i in range(vnodes))
        self.hashes = [p for p, _ in pts]
        self.owners = [n for _, n in pts]

    def owner(self, key):
        data = struct.pack("<q", key)
        i = bisect.bisect_left(self.hashes, self.h(data, len(data)))
        return self.owners[i % len(self.owners)]


def cmd_plan(a):
    layouts = [int(x) for x in a.layouts.split(",")]
    balance = random.Random(a.seed)
    balances = [0] + [balance.randrange(0, 1_000_000) for _ in range(a.rows)]
    os.makedirs(a.dir, exist_ok=True)
    for L in layouts:
        names = [f"s{k}" for k in range(L)]
        ring = Ring(names)
        owned = {n: [] for n in names}
        for i in range(1, a.rows + 1):
            owned[ring.owner(i)].append(i)
        rnd = random.Random(a.seed * 1000 + L)
        free = {n: rnd.sample(ids, len(ids)) for n, ids in owned.items()}  # shuffled, popped

        def take(n):
            if not free[n]:
                raise SystemExit(f"multishard_report.py: shard {n} of {L} ran out of ids for "
                                 f"{a.pairs} pairs: raise ROWS or lower PAIRS")
            return free[n].pop()

        role = {}
        same, cross = [], []
        combos = [(x, y) for x in names for y in names if x != y]
        for i in range(a.pairs):
            n = names[i % L]
            p, q = sorted((take(n), take(n)))
            same.append((i + 1, p, q))
            role[p], role[q] = "same-a", "same-b"
            if L > 1:
                x, y = combos[i % len(combos)]
                p, q = sorted((take(x), take(y)))
                cross.append((i + 1, p, q))
                role[p], role[q] = "cross-a", "cross-b"
        for n in names:
            with open(os.path.join(a.dir, f"accounts-{L}-{n}.csv"), "w") as f:
                for i in owned[n]:
                    f.write(f"{i},{role.get(i, 'acct')},{balances[i]}\n")
        for kind, rows in (("same", same), ("cross", cross)):
            with open(os.path.join(a.dir, f"pairs-{L}-{kind}.csv"), "w") as f:
                f.writelines(f"{i},{p},{q}\n" for i, p, q in rows)
        # Samples: the first few pairs' ids and random others.
        sample = [x for _, p, q in (same[:4] + cross[:4]) for x in (p, q)]
        sample += rnd.sample(range(1, a.rows + 1), max(0, a.samples - len(sample)))
        with open(os.path.join(a.dir, f"sample-{L}.txt"), "w") as f:
            f.writelines(f"{i} {ring.owner(i)}\n" for i in sample)
        print(f"layout {L}: " + ", ".join(f"{n} {len(owned[n])} rows" for n in names)
              + f"; {len(same)} same-shard and {len(cross)} cross-shard pairs", file=sys.stderr)


# -------------------------------------------------------------------------------- one run


def latencies(prefix):
    """Latencies (µs) of the completed transactions in every thread's log (column 3; a word
    such as "failed" for the others)."""
    lat = []
    for path in glob.glob(glob.escape(prefix) + ".*"):
        with open(path) as f:
            for line in f:
                cols = line.split()
                if len(cols) >= 3 and cols[2].isdigit():
                    lat.append(int(cols[2]))
    lat.sort()
    return lat


def pct(sorted_vals, p):  # nearest rank
    if not sorted_vals:
        return None
    return sorted_vals[max(0, -(-p * len(sorted_vals) // 100) - 1)]


def state(text):
    if not text:
        return None
    vals = [int(v) for v in text.split()]
    if len(vals) != len(STATE_KEYS):
        raise SystemExit(f"multishard_report.py: bad state {text!r}")
    return dict(zip(STATE_KEYS, vals))


def append(path, obj):
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def cmd_record(a):
    with open(a.output, errors="replace") as f:
        r = parse_output(f.read())
    lat = latencies(a.log_prefix)
    if a.keep_logs != "1":
        for path in glob.glob(glob.escape(a.log_prefix) + ".*"):
            os.remove(path)
    r.update(kind="run", target=a.target, case=a.case, rc=a.rc, logged=len(lat))
    r["mean_ms"] = sum(lat) / len(lat) / 1000 if lat else None
    r["p50_ms"] = pct(lat, 50) / 1000 if lat else None
    r["p99_ms"] = pct(lat, 99) / 1000 if lat else None
    r["cpu_s"] = int(a.cpu_ticks) / a.clk_tck if a.cpu_ticks != "" else None
    n = r["transactions"]
    r["cpu_s_per_1000"] = r["cpu_s"] / n * 1000 if r["cpu_s"] is not None and n else None
    # pgbench exits 2 when clients aborted; its figures then cover only part of the run.
    r["ok"] = a.rc == 0 and bool(r["tps"]) and r["failed"] == 0 and bool(lat)
    if a.rc == 0 and r["tps"] and not lat:
        r["errors"].append("no per-transaction log lines")
    checks = []
    before, after = state(a.state_before), state(a.state_after)
    if before and after:
        r["state_before"], r["state_after"] = before, after
        checks.append((f"{a.case}: sum of balances {before['sum']:,} before, {after['sum']:,} after",
                       before["sum"] == after["sum"]))
        checks.append((f"{a.case}: rows {before['rows']:,} before, {after['rows']:,} after",
                       before["rows"] == after["rows"]))
        tag = TX_TAG.get(a.case)
        if tag:
            debit = before[f"{tag}_a"] - after[f"{tag}_a"]
            credit = after[f"{tag}_b"] - before[f"{tag}_b"]
            other = "cross" if tag == "same" else "same"
            moved = (before[f"{other}_a"] != after[f"{other}_a"]
                     or before[f"{other}_b"] != after[f"{other}_b"])
            checks.append((f"{a.case}: {debit:,} debited from a-ids and {credit:,} credited to "
                           f"b-ids for {int(n or 0):,} transactions pgbench counted",
                           debit == credit == int(n or 0)))
            checks.append((f"{a.case}: the {other}-shard pairs' ids untouched", not moved))
            checks.append((f"{a.case}: prepared transactions left on the primaries: {after['prepared']}",
                       after["prepared"] == 0))
    if a.prepared_seen:
        n_samples, some, most = (int(v) for v in a.prepared_seen.split())
        r["prepared_seen"] = {"samples": n_samples, "with_some": some, "max": most}
        if a.case == "tx-two-shards":
            checks.append((f"{a.case}: two-phase commit in use: the proxy's prepared transactions "
                           f"seen in {some} of {n_samples} samples of pg_prepared_xacts "
                           f"(at most {most} at once)", n_samples > 0 and some > 0))
        elif a.case == "tx-one-shard":
            checks.append((f"{a.case}: no two-phase commit for one shard: prepared transactions "
                           f"seen in {some} of {n_samples} samples", n_samples > 0 and some == 0))
    r["checks"] = [{"what": w, "ok": ok} for w, ok in checks]
    append(a.runs, r)
    if r["ok"]:
        cpu = (f", proxy cpu {r['cpu_s_per_1000']:.3f} s/1000 tx"
               if r["cpu_s_per_1000"] is not None else "")
        print(f"bench-multishard:   -> {r['tps']:.0f} tps, mean {r['mean_ms']:.3f} ms, "
              f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms{cpu}", file=sys.stderr)
    else:
        print(f"bench-multishard:   -> FAILED (rc {a.rc}): "
              f"{' | '.join(r['errors']) or 'see ' + a.output}", file=sys.stderr)
    for w, ok in checks:
        print(f"bench-multishard:   {'ok' if ok else 'DATA CHECK FAILED'}: {w}", file=sys.stderr)


def cmd_sample(a):
    import psycopg2
    conns = []
    for p in a.ports.split(","):
        c = psycopg2.connect(host="127.0.0.1", port=int(p), user="postgres", dbname=a.db,
                             connect_timeout=10)
        c.autocommit = True
        conns.append(c)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    samples = some = most = 0
    while not stop:
        n = 0
        for c in conns:
            with c.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_prepared_xacts "
                            "WHERE database = current_database() AND gid LIKE 'sg\\_%'")
                n += cur.fetchone()[0]
        samples += 1
        some += n > 0
        most = max(most, n)
        time.sleep(a.interval)
    with open(a.out, "w") as f:
        f.write(f"{samples} {some} {most}\n")


def cmd_check(a):
    append(a.runs, {"kind": "check", "target": a.target, "what": a.what, "ok": a.ok == "1"})
    print(f"bench-multishard: {'ok' if a.ok == '1' else 'DATA CHECK FAILED'}: {a.target}: {a.what}",
          file=sys.stderr)


# -------------------------------------------------------------------------------- summary


def proxy_log_findings(path, limit=8):
    """Distinct warn/error lines of a proxy's JSON log (their fields but the timestamp), counted."""
    seen = {}
    try:
        f = open(path, errors="replace")
    except OSError:
        return []
    with f:
        for line in f:
            try:
                o = json.loads(line)
            except ValueError:
                low = line.lower()
                if "error" in low or "warn" in low:
                    seen[line.strip()[:200]] = seen.get(line.strip()[:200], 0) + 1
                continue
            level = str(o.pop("level", ""))
            if level.lower() not in ("warn", "warning", "error", "fatal", "critical"):
                continue
            o.pop("ts", None)
            head = str(o.pop("event", o.pop("msg", o.pop("message", ""))))
            key = f"{level} {head} " + " ".join(f"{k}={v}" for k, v in o.items())
            seen[key[:240]] = seen.get(key[:240], 0) + 1
    return sorted(seen.items(), key=lambda kv: -kv[1])[:limit]


def cmd_summary(a):
    recs = [json.loads(l) for l in open(a.runs) if l.strip()]
    runs = [r for r in recs if r["kind"] == "run"]
    meta = dict(kv.split("=", 1) for kv in a.meta)
    targets = [t for t in ("2-shards", "3-shards", "direct") if any(r["target"] == t for r in runs)]
    rows = []
    lines = ["| Shards | Case | tps | mean ms | p50 ms | p99 ms | proxy CPU s / 1000 tx |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for t in targets:
        for c in CASES:
            for r in (x for x in runs if x["target"] == t and x["case"] == c):
                rows.append(r)
                name = TARGET_LABEL.get(t, t)
                if not r["ok"]:
                    err = " · ".join(r["errors"]) or f"pgbench exit {r['rc']}"
                    lines.append(f"| {name} | {c} | FAILED: {err.replace('|', '/')[:160]} | — | — | — | — |")
                    continue
                cpu = fmt(r["cpu_s_per_1000"], ".3f") if t != "direct" else "—"
                lines.append(f"| {name} | {c} | {r['tps']:,.0f} | {fmt(r['mean_ms'], '.3f')} "
                             f"| {fmt(r['p50_ms'], '.3f')} | {fmt(r['p99_ms'], '.3f')} | {cpu} |")

    def p99(t, c):
        r = next((x for x in runs if x["target"] == t and x["case"] == c and x["ok"]), None)
        return r["p99_ms"] if r else None

    ratios, ratio_json = [], {}
    for t in targets:
        top, key = p99(t, "scatter-top10"), p99(t, "key-read")
        if top and key:
            ratio_json[t] = top / key
            mark = ""
            if t == "3-shards":
                mark = " — target ≤ 2×: " + ("**met**" if top / key <= 2 else "**not met**")
            ratios.append(f"- scatter-top10 p99 / key-read p99, {TARGET_LABEL.get(t, t)}: "
                          f"{top:.3f} / {key:.3f} ms = **{top / key:.2f}×**{mark}")
    direct_top = p99("direct", "scatter-top10")
    for t in ("2-shards", "3-shards"):
        top = p99(t, "scatter-top10")
        if top and direct_top:
            ratio_json[f"{t}_top10_over_direct_top10"] = top / direct_top
            ratios.append(f"- scatter-top10 p99, {TARGET_LABEL[t]} / the same query on one server "
                          f"(direct): {top:.3f} / {direct_top:.3f} ms = {top / direct_top:.2f}×")
    if ratios:
        index = meta.get("balance_index") == "1"
        ratios.append("- accounts has " + ("an index on balance (BALANCE_INDEX=1): each shard "
                                           "reads its top 10 from the index" if index else
                                           "no index on balance (BALANCE_INDEX=0): each shard "
                                           "scans and sorts all its rows for scatter-top10"))
    checks = []
    for r in recs:
        if r["kind"] == "check":
            checks.append((r["target"], r["what"], r["ok"]))
        elif r["kind"] == "run":
            checks += [(r["target"], c["what"], c["ok"]) for c in r.get("checks", [])]
    bad = [c for c in checks if not c[2]]

    md = ["# ShardGate multi-shard benchmark", "",
          f"- Command: `{meta.get('command', '')}`",
          f"- Each run: `{meta.get('pgbench', '')}`",
          f"- Machine: {meta.get('nproc', '?')} cores ({meta.get('cpu', '?')}), load average "
          f"{meta.get('loadavg_at_start', '?')} at start, {meta.get('loadavg_at_end', '?')} at end; "
          f"{meta.get('date', '')}; elapsed {meta.get('elapsed', '?')}",
          f"- Software: {meta.get('postgres', '')}; {meta.get('shardgate', '')}",
          f"- Data: {meta.get('rows', '?')} accounts rows (each on its ring owner), "
          f"{meta.get('pairs', '?')} same-shard and {meta.get('pairs', '?')} cross-shard pairs; "
          "3 primaries, no replicas; each proxy has a database of its own on them (app2, app3) "
          "and a metadata database (meta2, meta3) on s0's server; direct = database app1 on "
          "s0's server holding all rows.",
          "- Latencies from pgbench's per-transaction logs (nearest rank). A tx case's transaction "
          "is the pgbench script: the autocommit pair lookup on `pairs_*` (default shard) plus "
          "BEGIN, two UPDATEs, COMMIT. Proxy CPU = utime+stime of the proxy process over the run.",
          ]
    load = meta.get("loadavg_at_start", "")
    if load and float(load.split()[0]) > 1.0:
        md.append(f"- **Warning:** load average was {load} when the run started: other work "
                  "shared the 2 cores, so the figures are noisy.")
    md += ["", *lines, ""]
    if ratios:
        md += [*ratios, ""]
    # The headline checks and every failure here; all of them in the JSON (and on stderr as
    # they ran).
    headline = ("sum of balances", "debited", "two-phase commit", "at the end")
    md += [f"Data checks: {len(checks) - len(bad)} passed, {len(bad)} failed "
           "(all of them in results.json):", ""]
    md += [f"- {'ok' if ok else '**FAILED**'}: {TARGET_LABEL.get(t, t)}: {w}" for t, w, ok in checks
           if not ok or any(h in w for h in headline)]
    md.append("")
    logs = {}
    for kv in a.proxy_log:
        t, path = kv.split("=", 1)
        found = proxy_log_findings(path)
        logs[t] = found
        if found:
            md += [f"Warnings and errors in the {t} proxy's log ({path}; read_fallback_to_primary "
                   "no_replicas is expected: these shards have no replicas):", ""]
            md += [f"- {n}× `{m}`" for m, n in found]
            md.append("")
    if bad:
        md += [f"**{len(bad)} DATA CHECK(S) FAILED** — the figures above are not to be trusted.", ""]
    write_report(a, "\n".join(md), {"meta": meta, "summary": rows, "ratios_top10_over_key_read_p99": ratio_json,
                                    "checks": [{"target": t, "what": w, "ok": ok} for t, w, ok in checks],
                                    "proxy_log": logs, "runs": recs})
    if bad:
        sys.exit(3)
    if any(not r["ok"] for r in runs):
        sys.exit(4)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pl = sub.add_parser("plan")
    pl.add_argument("--rows", type=int, required=True)
    pl.add_argument("--pairs", type=int, required=True)
    pl.add_argument("--layouts", default="2,3")
    pl.add_argument("--dir", required=True)
    pl.add_argument("--seed", type=int, default=1)
    pl.add_argument("--samples", type=int, default=200)
    r = sub.add_parser("record")
    for k in ("runs", "target", "case", "output", "log_prefix", "cpu_ticks", "keep_logs"):
        r.add_argument("--" + k.replace("_", "-"), required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--clk-tck", type=int, required=True)
    r.add_argument("--state-before", default="")
    r.add_argument("--state-after", default="")
    r.add_argument("--prepared-seen", default="")
    sa = sub.add_parser("sample")
    sa.add_argument("--ports", required=True)
    sa.add_argument("--db", required=True)
    sa.add_argument("--out", required=True)
    sa.add_argument("--interval", type=float, default=0.2)
    c = sub.add_parser("check")
    for k in ("runs", "target", "what", "ok"):
        c.add_argument("--" + k, required=True)
    s = sub.add_parser("summary")
    s.add_argument("--runs", required=True)
    s.add_argument("--md", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--meta", action="append", default=[])
    s.add_argument("--proxy-log", action="append", default=[])
    a = p.parse_args()
    {"plan": cmd_plan, "record": cmd_record, "sample": cmd_sample, "check": cmd_check,
     "summary": cmd_summary}[a.cmd](a)


if __name__ == "__main__":
    main()
