#!/usr/bin/env python3
"""How Tidewatch's memory grows with services, operations and edges.

For each shape (services x operations per service) a fresh Tidewatch gets spans over OTLP/HTTP JSON: every
operation of service i is called by service i-1 (so each service but the first has an incoming edge per
operation name), each call being a client span and a server span, repeated a few times so every series
sees several observations. Before the load, a warm-up (one service calling itself often enough to be
scored by the health monitor, a window close and a scrape) runs every code path once, so what a process
pages in or allocates once (its code, a scrape's buffers, the allocator's first pages per thread) is in the
warm baseline. After the load it waits for a
window close, reads `/metrics` as a scraper would, and reports the resident memory (VmRSS) per added RED
series and edge against the warm baseline, against the idle process before the warm-up, and, from one
row to the next, the marginal bytes per added series. The anonymous columns (RssAnon: heap and stacks)
leave out the binary's own pages. The allocator's columns (`tidewatch_allocator_bytes` from the same
scrapes) split the growth of the heap: allocated is live bytes, cached the freed blocks the threads' caches
keep, active the pages holding both, resident all the allocator's resident pages (freed pages not yet given
back, its metadata).

    bench/cardinality.py [--shapes 10x10,100x10,100x100,1000x10] [--windows 1]
    bench/cardinality.py --growth 10x10:10
    bench/cardinality.py --shapes 1000x10 --scrapes 20

--scrapes N then times N `/metrics` scrapes: the server's CPU per scrape (user and system, from
/proc/PID/stat) and the exposition's size.

--growth SxO:STEPS runs one process instead: warmed up as above, then STEPS times S new services of O
operations, a window close and a scrape, reading the memory after each; the bytes per series are the
least-squares slope of memory over series, so what the process pays once is left out however small
the load (at 210 series a few of the allocator's pages are as much as the series).

--windows N waits for N window closes after the load (the later ones with no new spans), so the figure
includes what a steady-state window close holds rather than the first one's.

Needs a release build (`cargo build --release`).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import TIDEWATCH, free_port  # noqa: E402


def rss_kib(pid, field="VmRSS"):
    """`field` of /proc/PID/status in KiB, as the kernel counts it (the figures are divided unrounded: at
    210 series a tenth of a MiB is 500 bytes per series)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return float("nan")


def hexid(n):
    return "".join(random.choice("0123456789abcdef") for _ in range(n))


def span(trace, sid, parent, name, kind, start):
    s = {"traceId": trace, "spanId": sid, "name": name, "kind": kind,
         "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + random.randint(1, 50) * 1_000_000)}
    if parent:
        s["parentSpanId"] = parent
    return s


def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=60).read()


def load(port, services, ops, repeats, prefix="svc"):
    now = time.time_ns()
    for _ in range(repeats):
        for i in range(services):
            by_resource = {}
            for o in range(ops):
                trace, client_id, server_id = hexid(32), hexid(16), hexid(16)
                callee, caller = f"{prefix}-{i}", f"{prefix}-{(i - 1) % services}"
                name = f"op-{o}"
                by_resource.setdefault(caller, []).append(span(trace, client_id, None, name, 3, now))
                by_resource.setdefault(callee, []).append(span(trace, server_id, client_id, name, 2, now))
            post(port, {"resourceSpans": [
                {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
                 "scopeSpans": [{"spans": spans}]} for svc, spans in by_resource.items()]})


def series(web):
    """RED series and edges on /metrics, read as a scraper reads them, and the allocator's bytes by state
    (`tidewatch_allocator_bytes`: allocated, cached, active, resident, retained)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=60).read().decode()
    red = sum(1 for l in text.splitlines() if l.startswith("traces_span_metrics_calls_total{"))
    edges = sum(1 for l in text.splitlines() if l.startswith("traces_service_graph_request_total{"))
    alloc = {}
    for l in text.splitlines():
        if l.startswith('tidewatch_allocator_bytes{state="'):
            state, value = l[len('tidewatch_allocator_bytes{state="'):].split('"} ')
            alloc[state] = int(value)
    return red, edges, alloc


def start(ops):
    """A fresh Tidewatch with no history files and no global series budget in the way; its process and
    its OTLP/HTTP and web ports."""
    grpc, http, web = free_port(), free_port(), free_port()
    p = subprocess.Popen([TIDEWATCH, "run", "--set", f"collector.grpc.endpoint=127.0.0.1:{grpc}",
                          "--set", f"collector.http.endpoint=127.0.0.1:{http}", "--set", f"web.endpoint=127.0.0.1:{web}",
                          "--set", "analyzer.store.data_dir=null", "--set", "log.level=warn", "--set", "analyzer.max_series=10000000",
                          "--set", f"analyzer.span_metrics.max_series_per_service={ops * 2 + 10}"],
                         stdout=subprocess.DEVNULL)
    time.sleep(1.0)
    return p, http, web


def warm_up(http, web):
    """One service calling itself, a window close and a scrape: every code path of the load runs once, so
    what is paged in or allocated once per process is in the baseline. Enough calls for the health monitor
    to score the service (`analyzer.health.min_requests`, 20 a window), as it scores the load's. Returns
    the series it made."""
    load(http, 1, 1, repeats=30, prefix="warm")
    time.sleep(11)
    return series(web)


def cpu_seconds(pid):
    """User and system CPU time of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrapes(pid, web, n):
    """The server's CPU milliseconds per `/metrics` scrape over `n` scrapes, and one scrape's size."""
    before, size = cpu_seconds(pid), 0
    for _ in range(n):
        size = len(urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=60).read())
    return round((cpu_seconds(pid) - before) * 1000 / n, 1), size


def run(services, ops, windows=1, n_scrapes=0):
    p, http, web = start(ops)
    try:
        base = rss_kib(p.pid)
        warm_red, warm_edges, warm_alloc = warm_up(http, web)
        warm, warm_anon = rss_kib(p.pid), rss_kib(p.pid, "RssAnon")
        load(http, services, ops, repeats=3)
        # Let a window close (or `windows` of them), so the history holds a row per series too.
        time.sleep(1 + 10 * windows)
        red, edges, alloc = series(web)
        rss, anon = rss_kib(p.pid), rss_kib(p.pid, "RssAnon")
        scrape_ms, scrape_bytes = scrapes(p.pid, web, n_scrapes) if n_scrapes else ("–", "–")
    finally:
        p.terminate()
        p.wait()
    red, edges, grown = red - warm_red, edges - warm_edges, (red + edges) - (warm_red + warm_edges)
    per_series = lambda kib: round(kib * 1024 / max(1, grown))  # noqa: E731
    return {"services": services, "ops_per_service": ops, "red_series": red, "edges": edges,
            "rss_idle_mib": round(base / 1024, 1), "rss_warm_mib": round(warm / 1024, 1), "rss_mib": round(rss / 1024, 1),
            "bytes_per_series": per_series(rss - warm),
            "bytes_per_series_vs_idle": per_series(rss - base),
            "anon_warm_mib": round(warm_anon / 1024, 1), "anon_mib": round(anon / 1024, 1),
            "anon_bytes_per_series": per_series(anon - warm_anon),
            # Growth as the allocator counts it: live bytes, the pages holding them, all its resident pages.
            # ("–" from a build without `tidewatch_allocator_bytes`.)
            **{f"{state}_bytes_per_series": per_series((alloc[state] - warm_alloc[state]) / 1024)
               if state in alloc and state in warm_alloc else "–"
               for state in ("allocated", "cached", "active", "resident")},
            "scrape_cpu_ms": scrape_ms, "scrape_mb": scrape_bytes if scrape_bytes == "–" else round(scrape_bytes / 1e6, 1),
            "rss_kib": rss, "anon_kib": anon}


def slope(points):
    """Least-squares slope and intercept of (x, y) points."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return b, my - b * mx


def growth(services, ops, steps):
    """One process, warmed up, then `steps` times `services` new services of `ops` operations (a ring of
    calls of their own, as `load`), each step followed by a window close and a scrape. Prints the resident
    memory after each step and the bytes per series as the least-squares slope of memory over series:
    what each added series costs, whatever the process pays once."""
    p, http, web = start(ops)
    try:
        warm_red, warm_edges, _ = warm_up(http, web)
        rows = [(0, rss_kib(p.pid), rss_kib(p.pid, "RssAnon"))]
        for step in range(1, steps + 1):
            load(http, services, ops, repeats=3, prefix=f"step{step}")
            time.sleep(11)
            red, edges, _ = series(web)
            rows.append((red + edges - warm_red - warm_edges, rss_kib(p.pid), rss_kib(p.pid, "RssAnon")))
    finally:
        p.terminate()
        p.wait()
    print("| step | series added | RSS MiB | anonymous MiB | bytes per series since the step before (RSS / anonymous) |")
    print("|---|---|---|---|---|")
    for i, (n, rss, anon) in enumerate(rows):
        if i == 0:
            since = "–"
        else:
            dn = n - rows[i - 1][0]
            since = f"{(rss - rows[i - 1][1]) * 1024 / dn:,.0f} / {(anon - rows[i - 1][2]) * 1024 / dn:,.0f}"
        print(f"| {i} | {n:,} | {rss / 1024:.2f} | {anon / 1024:.2f} | {since} |")
    for col, name in ((1, "RSS"), (2, "anonymous")):
        b, a = slope([(r[0], r[col] * 1024) for r in rows])
        print(f"{name}: {b:,.0f} bytes per series (least squares over the {len(rows)} points), "
              f"{(a - rows[0][col] * 1024) / 1048576:+.2f} MiB at none against the warm process")


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--shapes", default="10x10,100x10,100x100,1000x10")
    a.add_argument("--windows", type=int, default=1)
    a.add_argument("--scrapes", type=int, default=0,
                   help="after the memory is read, time this many /metrics scrapes (server CPU per scrape)")
    a.add_argument("--growth", metavar="SxO:STEPS",
                   help="one process growing by S services x O operations per step instead of one per shape")
    args = a.parse_args()
    if not os.access(TIDEWATCH, os.X_OK):
        sys.exit(f"no release build at {TIDEWATCH}: cargo build --release")
    if args.growth:
        shape, steps = args.growth.split(":")
        growth(*map(int, shape.split("x")), int(steps))
        return
    rows = [run(*map(int, s.split("x")), args.windows, args.scrapes) for s in args.shapes.split(",")]
    # What each series costs once the first data has brought in the pools it needs once: RSS growth over
    # series growth from the previous row.
    for prev, r in zip(rows, rows[1:]):
        grown = (r["red_series"] + r["edges"]) - (prev["red_series"] + prev["edges"])
        for col, kib in (("marginal_bytes_per_series", "rss_kib"), ("marginal_anon_bytes_per_series", "anon_kib")):
            r[col] = round((r[kib] - prev[kib]) * 1024 / grown) if grown > 0 else "–"
    rows[0]["marginal_bytes_per_series"] = rows[0]["marginal_anon_bytes_per_series"] = "–"
    for r in rows:
        del r["rss_kib"], r["anon_kib"]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
