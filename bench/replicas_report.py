#!/usr/bin/python3
"""Numbers for bench/replicas.sh (pgbench parsing and p99 come from bench/report.py).

  replicas_report.py record  --runs RUNS.jsonl --round R --mode M --target T --output PGBENCH.out
                             --log-prefix PREFIX --rc RC --cpu-us US --keep-logs 0|1
                             --reads-before "P R0 R1" --reads-after "P R0 R1"
      Parses one pgbench run, adds how many pgbench_accounts lookups each server (primary,
      replica0, replica1) served during it, appends one JSON line to RUNS.jsonl and prints a
      one-line summary. Deletes pgbench's per-transaction logs unless --keep-logs 1.

  replicas_report.py summary --runs RUNS.jsonl --md OUT.md --json OUT.json [--meta key=value ...]
                             [--proxy-log TARGET=PATH ...]
      Builds the Markdown table (median over rounds; read shares summed over rounds) and prints it.
"""
import argparse
import json
import os
import statistics
import sys

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import fmt, record_run, write_report  # noqa: E402

SERVERS = ("primary", "replica0", "replica1")
ORDER = ("direct", "primary-only", "1-replica", "2-replicas", "2-replicas-mon100")


def label(target, meta):
    return {
        "direct": "direct to primary (no proxy)",
        "primary-only": "proxy, primary only (no replicas)",
        "1-replica": "proxy, 1 replica",
        "2-replicas": "proxy, 2 replicas, monitor at default interval",
        "2-replicas-mon100": f"proxy, 2 replicas, monitor every {meta.get('mon_interval_ms', '100')} ms",
    }.get(target, target)


def counters(text):
    vals = [int(v) for v in text.split()]
    if len(vals) != len(SERVERS):
        raise SystemExit(f"replicas_report.py: expected {len(SERVERS)} counters, got {text!r}")
    return vals


def cmd_record(a):
    r = record_run(a)
    r["reads"] = dict(zip(SERVERS, (y - x for x, y in zip(counters(a.reads_before), counters(a.reads_after)))))
    with open(a.runs, "a") as f:
        f.write(json.dumps(r) + "\n")
    total = sum(r["reads"].values())
    shares = " ".join(f"{s} {100 * n / total:.1f}%" for s, n in r["reads"].items()) if total else "no reads counted"
    if r["ok"]:
        cpu = f"{r['cpu_us_per_query']:.1f} µs/q" if r["cpu_us_per_query"] is not None else "-"
        print(f"bench-replicas:   -> {r['tps']:.0f} tps, avg {r['avg_ms']:.3f} ms, "
              f"p99 {r['p99_ms']:.3f} ms, cpu {cpu}; reads: {shares}", file=sys.stderr)
    else:
        print(f"bench-replicas:   -> FAILED (rc {a.rc}): {' | '.join(r['errors']) or 'see ' + a.output}",
              file=sys.stderr)


def proxy_events(path):
    """Counts of the replica-related events a proxy logged (JSON lines)."""
    counts = {}
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return None
    for l in lines:
        try:
            e = json.loads(l)
        except ValueError:
            continue
        ev = e.get("event")
        if ev not in ("replica_ejected", "replica_admitted", "read_fallback_to_primary", "backend_down"):
            continue
        what = ev
        if e.get("node"):
            what += " " + e["node"]
        if e.get("reason"):
            what += f" ({e['reason']})"
        counts[what] = counts.get(what, 0) + 1
    return counts


def pct(new, old):
    return None if not new or not old else 100.0 * (new - old) / old


def cmd_summary(a):
    runs = [json.loads(l) for l in open(a.runs) if l.strip()]
    meta = dict(kv.split("=", 1) for kv in a.meta)
    targets = [t for t in ORDER if any(r["target"] == t for r in runs)]
    targets += [t for t in dict.fromkeys(r["target"] for r in runs) if t not in targets]

    def med(rs, k):
        vals = [r[k] for r in rs if r.get(k) is not None]
        return statistics.median(vals) if vals else None

    rows, notes = {}, []
    for t in targets:
        rs = [r for r in runs if r["target"] == t]
        good = [r for r in rs if r["ok"]]
        row = {"target": t, "label": label(t, meta), "rounds": len(rs), "ok_rounds": len(good)}
        if good:
            for k in ("tps", "avg_ms", "p99_ms", "cpu_us_per_query"):
                row[k] = med(good, k)
            row["tps_min"] = min(r["tps"] for r in good)
            row["tps_max"] = max(r["tps"] for r in good)
            reads = {s: sum(r["reads"][s] for r in good) for s in SERVERS}
            row["reads"] = reads
            row["transactions"] = sum(r["transactions"] or 0 for r in good)
            total = sum(reads.values())
            row["shares"] = {s: reads[s] / total for s in SERVERS} if total else None
            row["counted_ratio"] = total / row["transactions"] if row["transactions"] else None
        for r in rs:
            if not r["ok"]:
                notes.append(f"{t} round {r['round']}: failed (pgbench exit {r['rc']}): "
                             + (" | ".join(f"`{e}`" for e in r["errors"]) or "no error text"))
        rows[t] = row

    multi = any(r["rounds"] > 1 for r in rows.values())
    lines = ["| Target | tps | avg ms | p99 ms | proxy CPU µs/query | share of reads per server |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for t in targets:
        row = rows[t]
        if "tps" not in row:
            lines.append(f"| {row['label']} | failed | — | — | — | — |")
            continue
        tps = f"{row['tps']:,.0f}"
        if multi and row["ok_rounds"] > 1:
            tps += f" ({row['tps_min']:,.0f}–{row['tps_max']:,.0f})"
        cpu = "—" if t == "direct" else fmt(row.get("cpu_us_per_query"), ".1f")
        sh = row["shares"]
        share = " · ".join(f"{s} {100 * sh[s]:.1f}%" for s in SERVERS) if sh else "no reads counted"
        lines.append(f"| {row['label']} | {tps} | {fmt(row['avg_ms'], '.3f')} | {fmt(row['p99_ms'], '.3f')} "
                     f"| {cpu} | {share} |")

    # The comparisons the issue asks for.
    cmp = []
    g = lambda t, k: rows.get(t, {}).get(k)
    base = g("primary-only", "tps")
    for t in ("1-replica", "2-replicas"):
        if g(t, "tps") and base:
            cmp.append(f"{label(t, meta)}: {g(t, 'tps') / base:.2f}× the tps of the primary-only proxy")
    if g("2-replicas", "tps") and g("1-replica", "tps"):
        cmp.append(f"2 replicas vs 1 replica: {g('2-replicas', 'tps') / g('1-replica', 'tps'):.2f}× tps")
    if g("2-replicas", "tps") and g("2-replicas-mon100", "tps"):
        d_tps = pct(g("2-replicas-mon100", "tps"), g("2-replicas", "tps"))
        d_cpu = pct(g("2-replicas-mon100", "cpu_us_per_query"), g("2-replicas", "cpu_us_per_query"))
        d_p99 = pct(g("2-replicas-mon100", "p99_ms"), g("2-replicas", "p99_ms"))
        cmp.append(f"monitor every {meta.get('mon_interval_ms', '100')} ms vs default interval (both 2 replicas): "
                   f"tps {fmt(d_tps, '+.1f', '%')}, proxy CPU per query {fmt(d_cpu, '+.1f', '%')}, "
                   f"p99 {fmt(d_p99, '+.1f', '%')}")
    rounds = max((r["rounds"] for r in rows.values()), default=0)

    md = ["# ShardGate replica read benchmark", "",
          f"- Command: `{meta.get('command', '')}`",
          f"- Each run: `{meta.get('pgbench', '')}`",
          f"- Machine: {meta.get('nproc', '?')} cores ({meta.get('cpu', '?')}), kernel {meta.get('kernel', '?')}, "
          f"load average at start {meta.get('loadavg_at_start', '?')}, at end {meta.get('loadavg_at_end', '?')}, "
          f"{meta.get('date', '')}",
          f"- Software: {meta.get('postgres', '')}; {meta.get('shardgate', '')}"]
    load = meta.get("loadavg_at_start", "")
    if load and float(load.split()[0]) > 1.0:
        md.append(f"- **Warning:** load average was {load} when the run started: other work "
                  "shared the CPUs, so the figures are noisy.")
    if meta.get("shardgate_extra_toml"):
        md.append(f"- SHARDGATE_EXTRA_TOML: `{meta['shardgate_extra_toml']!r}`")
    md += [f"- One cluster: 1 shard x (primary + 2 streaming replicas), pgbench scale {meta.get('scale', '?')} "
           f"loaded on the primary ({meta.get('ports', '')}). Four proxies in front of it differ only in "
           "`replicas = [...]` and `[replicas] health_interval_ms`.",
           f"- Figures are medians over {rounds} round(s)"
           + (" (tps range over rounds in brackets)" if multi else "")
           + "; p99 from pgbench's per-transaction log; proxy CPU = (utime+stime of the proxy process, "
           "monitor threads included) / transactions.",
           "- Share of reads: growth of `pg_stat_user_tables.idx_scan` of `pgbench_accounts` on each server "
           "over the run (each pgbench -S transaction is one lookup; the proxies' health probes and these "
           "reads of the counters are not counted), summed over rounds.",
           "- All servers, the proxy and pgbench share the same cores, so spreading reads over replicas "
           "cannot add CPU: any gain from more replicas is not expected here and would need separate machines.",
           "", *lines, ""]
    if cmp:
        md += ["Comparisons (medians):", ""] + [f"- {c}" for c in cmp] + [""]
    checks = [f"{t} {fmt(100 * rows[t]['counted_ratio'] if rows[t].get('counted_ratio') is not None else None, '.1f', '%')}"
              for t in targets if "tps" in rows[t]]
    md += ["Checks:", "",
           "- Lookups counted on the servers / transactions pgbench reported (should be ~100%): "
           + ", ".join(checks)]
    events = {}
    for kv in a.proxy_log:
        t, path = kv.split("=", 1)
        ev = proxy_events(path)
        events[t] = ev
        if ev is not None:
            desc = ", ".join(f"{k} ×{n}" for k, n in sorted(ev.items())) or "none"
            md.append(f"- Replica events in the {t} proxy's log (its whole life, not only its own runs): {desc}")
    md.append("")
    if notes:
        md += ["Failures:", ""] + [f"- {n}" for n in notes] + [""]
    write_report(a, "\n".join(md), {"meta": meta, "summary": [rows[t] for t in targets],
                                     "comparisons": cmp, "proxy_events": events, "runs": runs})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    for k in ("runs", "mode", "target", "output", "log_prefix", "cpu_us", "keep_logs",
              "reads_before", "reads_after"):
        r.add_argument("--" + k.replace("_", "-"), required=True)
    r.add_argument("--round", type=int, required=True)
    r.add_argument("--rc", type=int, required=True)
    s = sub.add_parser("summary")
    s.add_argument("--runs", required=True)
    s.add_argument("--md", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--meta", action="append", default=[])
    s.add_argument("--proxy-log", action="append", default=[])
    a = p.parse_args()
    cmd_record(a) if a.cmd == "record" else cmd_summary(a)


if __name__ == "__main__":
    main()
