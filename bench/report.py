#!/usr/bin/python3
"""Numbers for bench/run.sh.

  report.py record  --runs RUNS.jsonl --round R --mode M --target T --output PGBENCH.out
                    --log-prefix PREFIX --rc RC --cpu-us US --keep-logs 0|1 [--switches "V I"]
      Parses one pgbench run (its output and its per-transaction logs PREFIX.*), appends one JSON
      line to RUNS.jsonl and prints a one-line summary. Deletes the logs unless --keep-logs 1.

  report.py summary --runs RUNS.jsonl --md OUT.md --json OUT.json [--meta key=value ...]
      Builds the Markdown table (median over rounds of each figure) and prints it.
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys


def parse_output(text):
    """tps, average latency and transaction count from pgbench's summary."""
    def num(pattern):
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else None
    # Distinct server errors (pgbench's two threads may interleave their stderr lines), else
    # pgbench's own complaints with client numbers taken out.
    errors = []
    for l in text.splitlines():
        m = re.search(r"ERROR:.*", l)
        if m:
            l = m.group(0)
        elif re.search(r"error|fatal|aborted", l, re.I) and "failed transactions" not in l:
            l = re.sub(r"\bclient \d+", "client N", l.strip())
        else:
            continue
        if l not in errors:
            errors.append(l)
    return {
        "tps": num(r"^tps = ([0-9.]+)"),
        "avg_ms": num(r"^latency average = ([0-9.]+) ms"),
        "transactions": num(r"^number of transactions actually processed: (\d+)"),
        "failed": num(r"^number of failed transactions: (\d+)") or 0,
        "errors": errors[:3],
    }


def p99_from_logs(prefix):
    """p99 latency (ms) over every thread's log. Column 3 is the latency in µs; it is a word
    ("failed", "skipped") for transactions that did not complete, and those are left out."""
    lat = []
    for path in glob.glob(glob.escape(prefix) + ".*"):
        with open(path) as f:
            for line in f:
                cols = line.split()
                if len(cols) >= 3 and cols[2].isdigit():
                    lat.append(int(cols[2]))
    if not lat:
        return None, 0
    lat.sort()
    # Nearest-rank percentile.
    idx = max(0, -(-99 * len(lat) // 100) - 1)
    return lat[idx] / 1000.0, len(lat)


def record_run(a):
    """One run's figures from pgbench's output and per-transaction logs (shared with
    replicas_report.py)."""
    with open(a.output, errors="replace") as f:
        r = parse_output(f.read())
    r["p99_ms"], r["logged"] = p99_from_logs(a.log_prefix)
    if a.keep_logs != "1":
        for path in glob.glob(glob.escape(a.log_prefix) + ".*"):
            os.remove(path)
    r.update(round=a.round, mode=a.mode, target=a.target, rc=a.rc)
    r["cpu_us"] = int(a.cpu_us) if a.cpu_us else None
    r["cpu_us_per_query"] = (r["cpu_us"] / r["transactions"]
                             if r["cpu_us"] is not None and r["transactions"] else None)
    user = getattr(a, "user_us", "") or ""
    r["user_us_per_query"] = (int(user) / r["transactions"]
                              if user and r["transactions"] else None)
    # Context switches of the proxy's threads over the run: sleeps (voluntary: it blocked with
    # nothing to do) and preemptions (involuntary), each per query.
    sw = (getattr(a, "switches", "") or "").split()
    for k, v in zip(("sleeps_per_query", "preempts_per_query"), sw):
        r[k] = int(v) / r["transactions"] if r["transactions"] else None
    # pgbench exits 2 when clients aborted; its figures then cover only part of the run.
    r["ok"] = a.rc == 0 and bool(r["tps"]) and r["failed"] == 0
    return r


def cmd_record(a):
    r = record_run(a)
    with open(a.runs, "a") as f:
        f.write(json.dumps(r) + "\n")
    if r["ok"]:
        cpu = f"{r['cpu_us_per_query']:.1f} µs/q" if r["cpu_us_per_query"] is not None else "-"
        if r.get("user_us_per_query") is not None:
            cpu += f" (user {r['user_us_per_query']:.1f})"
        sw = (f", sleeps {r['sleeps_per_query']:.2f}/q, preemptions {r['preempts_per_query']:.2f}/q"
              if r.get("sleeps_per_query") is not None else "")
        print(f"bench:   -> {r['tps']:.0f} tps, avg {r['avg_ms']:.3f} ms, "
              f"p99 {r['p99_ms']:.3f} ms, cpu {cpu}{sw}", file=sys.stderr)
    else:
        print(f"bench:   -> FAILED (rc {a.rc}): {' | '.join(r['errors']) or 'see ' + a.output}",
              file=sys.stderr)


def fmt(v, spec, suffix=""):
    return "—" if v is None else format(v, spec) + suffix


def cmd_summary(a):
    runs = [json.loads(l) for l in open(a.runs) if l.strip()]
    meta = dict(kv.split("=", 1) for kv in a.meta)
    keys = []  # (mode, target) in the order they ran
    for r in runs:
        if (r["mode"], r["target"]) not in keys:
            keys.append((r["mode"], r["target"]))

    def med(rs, k):
        vals = [r[k] for r in rs if r.get(k) is not None]
        return statistics.median(vals) if vals else None

    rows, notes = [], []
    for mode, target in keys:
        rs = [r for r in runs if r["mode"] == mode and r["target"] == target]
        good = [r for r in rs if r["ok"]]
        row = {"mode": mode, "target": target, "rounds": len(rs), "ok_rounds": len(good)}
        if good:
            for k in ("tps", "avg_ms", "p99_ms", "cpu_us_per_query", "user_us_per_query",
                      "sleeps_per_query", "preempts_per_query"):
                row[k] = med(good, k)
        for r in rs:
            if not r["ok"]:
                note = (f"{mode}/{target} round {r['round']}: failed (pgbench exit {r['rc']}): "
                        + (" | ".join(f"`{e}`" for e in r["errors"]) or "no error text"))
                if target == "pgbouncer" and mode != "simple":
                    note += (" — PgBouncer before 1.21 cannot keep protocol-level prepared statements"
                             " in transaction pooling (1.21 added max_prepared_statements);"
                             " pgbouncer-session is the baseline there")
                notes.append(note)
        rows.append(row)
    direct = {r["mode"]: r.get("tps") for r in rows if r["target"] == "direct"}
    for row in rows:
        d = direct.get(row["mode"])
        row["ratio"] = row["tps"] / d if row.get("tps") and d else None

    lines = ["| Mode | Target | tps | ratio to direct | avg latency ms | p99 latency ms | proxy CPU µs/query (user) "
             "| proxy sleeps · preemptions /query |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if "tps" not in row:
            lines.append(f"| {row['mode']} | {row['target']} | failed | — | — | — | — | — |")
            continue
        proxy = row["target"] != "direct"
        cpu = fmt(row.get("cpu_us_per_query"), ".1f") if proxy else "—"
        if proxy and row.get("user_us_per_query") is not None:
            cpu += f" ({row['user_us_per_query']:.1f})"
        sw = (f"{fmt(row.get('sleeps_per_query'), '.2f')} · {fmt(row.get('preempts_per_query'), '.2f')}"
              if proxy and row.get("sleeps_per_query") is not None else "—")
        lines.append(f"| {row['mode']} | {row['target']} | {row['tps']:,.0f} | {fmt(row['ratio'], '.2f', '×')} "
                     f"| {fmt(row['avg_ms'], '.3f')} | {fmt(row['p99_ms'], '.3f')} | {cpu} | {sw} |")
    # Paired: each ShardGate target over each PgBouncer pooling mode in the same round and mode
    # (they ran back to back), which cancels much of the host's drift between rounds.
    paired = ["| Mode | Target | over | rounds | tps ratio: median (range) "
              "| CPU per query ratio: median (range) |", "| --- | --- | --- | ---: | ---: | ---: |"]
    baselines = ("pgbouncer", "pgbouncer-session", "proxy-1shard-unshared")
    for mode, target in keys:
        if not target.startswith("proxy-"):
            continue
        for base in baselines:
            if base == target or (base.startswith("proxy-") and target != "proxy-1shard"):
                continue  # pipelined reads on or off: the same 1-shard config
            tps_r, cpu_r = [], []
            for r in runs:
                if r["mode"] != mode or r["target"] != target or not r["ok"]:
                    continue
                b = [x for x in runs if x["mode"] == mode and x["target"] == base
                     and x["round"] == r["round"] and x["ok"]]
                if not b:
                    continue
                tps_r.append(r["tps"] / b[0]["tps"])
                if r.get("cpu_us_per_query") and b[0].get("cpu_us_per_query"):
                    cpu_r.append(r["cpu_us_per_query"] / b[0]["cpu_us_per_query"])
            if not tps_r:
                continue
            span = lambda v: (f"{statistics.median(v):.2f}× ({min(v):.2f}× to {max(v):.2f}×)"
                              if v else "—")
            paired.append(f"| {mode} | {target} | {base} | {len(tps_r)} | {span(tps_r)} "
                          f"| {span(cpu_r)} |")
    rounds = max((r["rounds"] for r in rows), default=0)
    md = ["# ShardGate benchmark", "",
          f"- Command: `{meta.get('command', '')}`",
          f"- Each run: `{meta.get('pgbench', '')}`",
          f"- Machine: {meta.get('nproc', '?')} cores ({meta.get('cpu', '?')}), kernel {meta.get('kernel', '?')}, "
          f"load average at start {meta.get('loadavg_at_start', '?')}, {meta.get('date', '')}",
          f"- Software: {meta.get('postgres', '')}; {meta.get('pgbouncer', '')}; {meta.get('shardgate', '')}",
          ]
    load = meta.get("loadavg_at_start", "")
    if load and float(load.split()[0]) > 1.0:
        md.append(f"- **Warning:** load average was {load} when the run started: other work "
                  "shared the CPUs, so the figures are noisy.")
    if meta.get("shardgate_extra_toml"):
        md.append(f"- SHARDGATE_EXTRA_TOML: `{meta['shardgate_extra_toml']!r}`")
    md += [f"- Targets: direct, pgbouncer (transaction pooling), pgbouncer-session (the same PgBouncer, "
           f"session pooling), proxy-1shard and proxy-1shard-unshared (pipeline_depth = 0) use a "
           f"1-shard cluster; proxy-2shard uses "
           f"2 shards x 1 replica. pgbench scale {meta.get('scale', '?')}.",
           f"- Note: {meta.get('note', '')}",
           f"- Figures are medians over {rounds} round(s); p99 from pgbench's per-transaction log; "
           "proxy CPU = (utime+stime of the proxy process) / transactions; sleeps and preemptions = "
           "voluntary and involuntary context switches of the proxy's threads / transactions.",
           "", *lines, ""]
    if len(paired) > 2:
        md += ["Paired with PgBouncer (transaction pooling, and session pooling), round by round:",
               "", *paired, ""]
    if notes:
        md += ["Failures:", ""] + [f"- {n}" for n in notes] + [""]
    write_report(a, "\n".join(md), {"meta": meta, "summary": rows, "runs": runs})


def write_report(a, text, payload):
    """The summary as Markdown (a.md) and JSON (a.json), and on stdout (shared with
    replicas_report.py)."""
    with open(a.md, "w") as f:
        f.write(text)
    with open(a.json, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    for k in ("runs", "mode", "target", "output", "log_prefix", "cpu_us", "keep_logs"):
        r.add_argument("--" + k.replace("_", "-"), required=True)
    r.add_argument("--switches", default="", help="voluntary and involuntary switches, 'V I'")
    r.add_argument("--user-us", default="", help="the proxy's user-mode CPU time over the run")
    r.add_argument("--round", type=int, required=True)
    r.add_argument("--rc", type=int, required=True)
    s = sub.add_parser("summary")
    s.add_argument("--runs", required=True)
    s.add_argument("--md", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--meta", action="append", default=[])
    a = p.parse_args()
    cmd_record(a) if a.cmd == "record" else cmd_summary(a)


if __name__ == "__main__":
    main()
