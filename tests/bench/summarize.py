#!/usr/bin/env python3
"""Summarize tests/bench/run.sh results (a TSV it writes) as markdown tables plus PASS/MISS per target.

Rows: `info KEY VALUE`, `rss KEY KIB [open ok established]`, `audit KEY N`, `floor KEY MS [MS]`, `floor_round ROUND P50_MS P99_MS`,
`thr ROUND TARGET requests req/s non2xx socket_errors ticks_self ticks_pg host_busy_pct`,
`lat ROUND TARGET requests p50_ms p99_ms non200 errors ticks_self ticks_pg host_busy_pct`,
`met ROUND thr|lat` then (sum, count) deltas of tollgate's request, policy evaluation, upstream and audit commit
duration histograms and of its audit batch size histogram over that tollgate run.
Medians are over rounds; "added" latency is proxy minus direct within the same round, then the median.
"""

import math
import statistics
import sys
from collections import defaultdict

TARGETS = ["direct", "nginx", "tollgate"]  # throughput runs
LAT_TARGETS = ["direct", "nginx", "floor", "tollgate"]  # fixed-rate runs (older result files lack floor)
LABEL = {
    "direct": "direct (nginx `return 200`)",
    "nginx": "nginx `proxy_pass`",
    "floor": "floor proxy (durable commit, then forward)",
    "tollgate": "tollgate (policy + durable audit)",
}
# DESIGN.md, "Performance budget".
MIN_RATIO = 0.5
MAX_ADDED_P50_MS = 0.5
MAX_ADDED_P99_MS = 2.0
MAX_RSS_MIB = 100.0


def med(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def rng(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return (min(xs), max(xs)) if xs else (float("nan"), float("nan"))


def verdict(ok):
    return "PASS" if ok else "MISS"


def main(path):
    info, rss, audit, floor = {}, {}, {}, {}
    floor_round = {}  # round -> [p50, p99] of durable commits at the fixed rate (pgbench)
    thr = defaultdict(dict)  # target -> round -> row
    lat = defaultdict(dict)
    met = defaultdict(dict)  # thr|lat -> round -> [sum, count] * 5
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        kind = f[0]
        if kind == "info":
            info[f[1]] = f[2]
        elif kind == "rss":
            rss[f[1]] = f[2:]
        elif kind == "audit":
            audit[f[1]] = int(f[2] or 0)
        elif kind == "floor":
            floor[f[1]] = [float(x) for x in f[2:] if x] or [float("nan")]
        elif kind == "floor_round":
            floor_round[int(f[1])] = [float(x) for x in f[2:4]]
        elif kind == "thr":
            r, t = int(f[1]), f[2]
            reqs, rps, non2xx, errs, ts, tp, busy = f[3:10]
            thr[t][r] = dict(reqs=int(reqs), rps=float(rps), bad=int(non2xx) + int(errs),
                             ts=int(ts), tp=int(tp), busy=float(busy))
        elif kind == "met":
            met[f[2]][int(f[1])] = [float(x) for x in f[3:13]]
        elif kind == "lat":
            r, t = int(f[1]), f[2]
            n, p50, p99, non200, errs, ts, tp, busy = f[3:11]
            lat[t][r] = dict(reqs=int(n), p50=float(p50), p99=float(p99), bad=int(non200) + int(errs),
                             ts=int(ts), tp=int(tp), busy=float(busy))
    us_per_tick = 1e6 / int(info.get("clk_tck", "100"))

    def cpu_us(row, key):
        return row[key] * us_per_tick / row["reqs"] if row["reqs"] else float("nan")

    rounds = sorted({r for t in TARGETS for r in thr[t]})
    out = []
    p = out.append
    p("## tollgate load benchmark")
    p("")
    p(f"{info.get('settings', '')}; load average at start {info.get('load_at_start', '?')}, "
      f"at end {info.get('load_at_end', '?')}")
    p(f"machine: {info.get('cpus')} CPUs ({info.get('cpu_model')}), {info.get('memory')}, "
      f"kernel {info.get('kernel')}, PostgreSQL {info.get('postgres')}, nginx {info.get('nginx')}, "
      f"wrk {info.get('wrk')}, oha {info.get('oha')}")
    p(f"tollgate revision {info.get('revision', '?')}; tollgate's Postgres connections using TLS: "
      f"{info.get('pg_tls', '?')}")
    p("")

    p(f"### Throughput (wrk, closed loop), median of {len(rounds)} rounds")
    p("")
    p("| target | req/s (median) | min – max | CPU µs/req (process) | Postgres backends µs/req | host CPU busy |")
    p("|---|---:|---:|---:|---:|---:|")
    med_rps = {}
    for t in TARGETS:
        rows = list(thr[t].values())
        med_rps[t] = med([x["rps"] for x in rows])
        lo, hi = rng([x["rps"] for x in rows])
        pg = f"{med([cpu_us(x, 'tp') for x in rows]):.1f}" if t == "tollgate" else "–"
        bad = sum(x["bad"] for x in rows)
        flag = f" ⚠ {bad} non-2xx/errors" if bad else ""
        p(f"| {LABEL[t]} | {med_rps[t]:,.0f}{flag} | {lo:,.0f} – {hi:,.0f} | "
          f"{med([cpu_us(x, 'ts') for x in rows]):.1f} | {pg} | {med([x['busy'] for x in rows]):.0f} % |")
    ratio = med_rps["tollgate"] / med_rps["nginx"] if med_rps["nginx"] else float("nan")
    per_round_ratio = [thr["tollgate"][r]["rps"] / thr["nginx"][r]["rps"]
                       for r in rounds if r in thr["tollgate"] and r in thr["nginx"] and thr["nginx"][r]["rps"]]
    lo, hi = rng(per_round_ratio)
    p("")
    p(f"tollgate ÷ nginx proxy_pass throughput: **{ratio:.2f}** (per round {lo:.2f} – {hi:.2f})")
    p("")

    p("### Latency at a fixed rate (oha, open loop, `--latency-correction`), median of rounds")
    p("")
    p("| target | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs/req (process) | Postgres backends µs/req |")
    p("|---|---:|---:|---:|---:|---:|---:|")
    added = defaultdict(lambda: (float("nan"), float("nan")))
    for t in [t for t in LAT_TARGETS if lat[t]]:
        rows = lat[t]
        d50 = [rows[r]["p50"] - lat["direct"][r]["p50"] for r in rows if r in lat["direct"]]
        d99 = [rows[r]["p99"] - lat["direct"][r]["p99"] for r in rows if r in lat["direct"]]
        added[t] = (med(d50), med(d99))
        pg = f"{med([cpu_us(x, 'tp') for x in rows.values()]):.1f}" if t in ("tollgate", "floor") else "–"
        bad = sum(x["bad"] for x in rows.values())
        flag = f" ⚠ {bad} non-200/errors" if bad else ""
        a50 = "–" if t == "direct" else f"{added[t][0]:+.3f}"
        a99 = "–" if t == "direct" else f"{added[t][1]:+.3f}"
        p(f"| {LABEL[t]}{flag} | {med([x['p50'] for x in rows.values()]):.3f} | "
          f"{med([x['p99'] for x in rows.values()]):.3f} | {a50} | {a99} | "
          f"{med([cpu_us(x, 'ts') for x in rows.values()]):.1f} | {pg} |")
    p("")

    p("### Inside tollgate (its own /metrics histograms, mean per run, median of rounds)")
    p("")
    p("| tollgate run | request in tollgate ms | policy evaluation µs | upstream ms | audit commit ms | "
      "records per commit |")
    p("|---|---:|---:|---:|---:|---:|")

    def mean(row, i, scale):
        return row[2 * i] / row[2 * i + 1] * scale if row and row[2 * i + 1] else float("nan")

    for phase, name in (("thr", "max throughput (wrk)"), ("lat", f"fixed rate (oha)")):
        rows = list(met[phase].values())
        cols = [med([mean(x, i, sc) for x in rows]) for i, sc in ((0, 1e3), (1, 1e6), (2, 1e3), (3, 1e3), (4, 1))]
        p(f"| {name} | {cols[0]:.3f} | {cols[1]:.1f} | {cols[2]:.3f} | {cols[3]:.3f} | {cols[4]:.1f} |")
    p("")

    p("### Memory (VmRSS)")
    p("")

    def mib(key):
        v = rss.get(key)
        return int(v[0]) / 1024 if v and v[0] else float("nan")

    idle = rss.get("tollgate_idle_conns", ["0", "0", "0", "0"])
    nidle = rss.get("nginx_idle_conns", ["0", "0", "0", "0"])
    p(f"- tollgate: {mib('tollgate_started'):.1f} MiB after start, {mib('tollgate_after_load'):.1f} MiB after the "
      f"load runs, **{mib('tollgate_idle_conns'):.1f} MiB holding {idle[1]} idle keep-alive agent connections** "
      f"({idle[2]} of them answered 200 first, {idle[3]} established at the server when read); "
      f"peak (VmHWM) {mib('tollgate_peak'):.1f} MiB")
    p(f"- nginx proxy_pass (master + workers, summed): {mib('nginx_idle_conns'):.1f} MiB holding {nidle[1]} "
      f"idle connections")
    p("")
    p(f"Audit: {audit.get('decisions', 0):,} decision rows in the bench database, "
      f"{audit.get('not_allowed', 0)} of them not `allow`; the measured tollgate runs completed "
      f"{sum(x['reqs'] for x in thr['tollgate'].values()) + sum(x['reqs'] for x in lat['tollgate'].values()):,} "
      f"requests (warm-up, checks and the idle connections' requests come on top).")
    p("")

    nan = [float("nan"), float("nan")]
    # The commit floor at the fixed rate: median over rounds of pgbench's p50 and p99 (older result files
    # have one measurement, as floor rate_commit_ms).
    if floor_round:
        rate_floor = [med([v[0] for v in floor_round.values()]), med([v[1] for v in floor_round.values()])]
        floor_p99_range = rng([v[1] for v in floor_round.values()])
    else:
        rate_floor = (floor.get("rate_commit_ms", nan) + nan)[:2]
        floor_p99_range = (rate_floor[1], rate_floor[1])
    if floor or floor_round:
        p("Floor (pgbench on the bench database, prepared): one durable single-row commit of a "
          "decision-shaped row (same indexes, the input of a recorded decision), one client at a time: "
          f"{floor.get('commit_ms', nan)[0]:.3f} ms mean; a bare `SELECT 1` round trip "
          f"{floor.get('select_ms', nan)[0]:.3f} ms. The same commits at the fixed rate from 4 clients, measured "
          f"from each one's scheduled start, in every round after the latency runs (median of "
          f"{max(len(floor_round), 1)}): **p50 {rate_floor[0]:.3f} ms, p99 {rate_floor[1]:.3f} ms** (p99 per round "
          f"{floor_p99_range[0]:.3f} – {floor_p99_range[1]:.3f}). Every allowed request waits for at least one "
          "such commit before it is forwarded.")
        p("")

    p("### Per round")
    p("")
    has_floor = bool(lat["floor"])
    p("| round | direct req/s | nginx req/s | tollgate req/s | ratio | direct p50/p99 ms | nginx p50/p99 ms | "
      + ("floor proxy p50/p99 ms | " if has_floor else "") + "tollgate p50/p99 ms | commit floor p50/p99 ms |")
    p("|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_floor else "") + "---:|---:|")
    for r in rounds:
        g = lambda t, k: thr[t].get(r, {}).get(k, float("nan"))
        h = lambda t: f"{lat[t].get(r, {}).get('p50', float('nan')):.3f} / {lat[t].get(r, {}).get('p99', float('nan')):.3f}"
        ratio_r = g("tollgate", "rps") / g("nginx", "rps") if g("nginx", "rps") else float("nan")
        p(f"| {r} | {g('direct', 'rps'):,.0f} | {g('nginx', 'rps'):,.0f} | {g('tollgate', 'rps'):,.0f} | "
          f"{ratio_r:.2f} | {h('direct')} | {h('nginx')} | {h('floor') + ' | ' if has_floor else ''}{h('tollgate')} | "
          f"{' / '.join(f'{v:.3f}' for v in floor_round.get(r, nan))} |")
    p("")

    p("### Targets (DESIGN.md \"Performance budget\")")
    p("")
    rss_idle = mib("tollgate_idle_conns")
    p(f"- {verdict(ratio >= MIN_RATIO)}  throughput ≥ {MIN_RATIO}× nginx proxy_pass: {ratio:.2f}×")
    commit_floor = rate_floor
    p(f"- {verdict(added['tollgate'][0] <= MAX_ADDED_P50_MS)}  added p50 ≤ {MAX_ADDED_P50_MS} ms over direct at "
      f"the fixed rate: {added['tollgate'][0]:+.3f} ms (nginx proxy_pass: {added['nginx'][0]:+.3f} ms; "
      f"a durable commit alone at this rate: p50 {commit_floor[0]:.3f} ms)")
    p(f"- {verdict(added['tollgate'][1] <= MAX_ADDED_P99_MS)}  added p99 ≤ {MAX_ADDED_P99_MS} ms over direct at "
      f"the fixed rate: {added['tollgate'][1]:+.3f} ms (nginx proxy_pass: {added['nginx'][1]:+.3f} ms; "
      f"a durable commit alone at this rate: p99 {commit_floor[1]:.3f} ms)")
    if lat["floor"]:
        p(f"  - the floor proxy, which only commits a row and forwards: added p50 {added['floor'][0]:+.3f} ms, "
          f"p99 {added['floor'][1]:+.3f} ms; tollgate above it: p50 {added['tollgate'][0] - added['floor'][0]:+.3f} "
          f"ms, p99 {added['tollgate'][1] - added['floor'][1]:+.3f} ms")
    conns_ok = idle[1] == idle[2] and int(idle[1] or 0) > 0
    p(f"- {verdict(rss_idle <= MAX_RSS_MIB and conns_ok)}  RSS ≤ {MAX_RSS_MIB:.0f} MiB with {idle[1]} open agent "
      f"connections: {rss_idle:.1f} MiB")
    bad = sum(x["bad"] for t in LAT_TARGETS for x in list(thr[t].values()) + list(lat[t].values()))
    if bad:
        p(f"- ⚠ {bad} non-2xx responses or socket errors in the measured runs: the numbers above are suspect")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
