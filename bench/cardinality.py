#!/usr/bin/env python3
"""How Tidewatch's memory grows with services, operations and edges.

For each shape (services x operations per service) a fresh Tidewatch gets spans over OTLP/HTTP JSON: every
operation of service i is called by service i-1 (so each service but the first has an incoming edge per
operation name), each call being a client span and a server span, repeated a few times so every series
sees several observations. Before the load, a warm-up (one service calling itself, a window close and a
scrape) runs every code path once, so what a process pages in or allocates once (its code, a scrape's
buffers, the allocator's first pages per thread) is in the warm baseline. After the load it waits for a
window close, reads `/metrics` as a scraper would, and reports the resident memory (VmRSS) per added RED
series and edge against the warm baseline, against the idle process before the warm-up, and, from one
row to the next, the marginal bytes per added series. The anonymous columns (RssAnon: heap and stacks)
leave out the binary's own pages.

    bench/cardinality.py [--shapes 10x10,100x10,100x100,1000x10] [--windows 1]

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


def rss_mib(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
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
    """RED series and edges on /metrics, read as a scraper reads them."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=60).read().decode()
    red = sum(1 for l in text.splitlines() if l.startswith("traces_span_metrics_calls_total{"))
    edges = sum(1 for l in text.splitlines() if l.startswith("traces_service_graph_request_total{"))
    return red, edges


def run(services, ops, windows=1):
    grpc, http, web = free_port(), free_port(), free_port()
    p = subprocess.Popen([TIDEWATCH, "run", "--set", f"collector.grpc.endpoint=127.0.0.1:{grpc}",
                          "--set", f"collector.http.endpoint=127.0.0.1:{http}", "--set", f"web.endpoint=127.0.0.1:{web}",
                          "--set", "analyzer.store.data_dir=null", "--set", "log.level=warn", "--set", "analyzer.max_series=10000000",
                          "--set", f"analyzer.span_metrics.max_series_per_service={ops * 2 + 10}"],
                         stdout=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        base, base_anon = rss_mib(p.pid), rss_mib(p.pid, "RssAnon")
        # A warm-up: one service calling itself, a window close and a scrape run every code path of the
        # load once, so what is paged in or allocated once per process is in the warm baseline.
        load(http, 1, 1, repeats=3, prefix="warm")
        time.sleep(11)
        warm_red, warm_edges = series(web)
        warm, warm_anon = rss_mib(p.pid), rss_mib(p.pid, "RssAnon")
        load(http, services, ops, repeats=3)
        # Let a window close (or `windows` of them), so the history holds a row per series too.
        time.sleep(1 + 10 * windows)
        red, edges = series(web)
        rss, anon = rss_mib(p.pid), rss_mib(p.pid, "RssAnon")
    finally:
        p.terminate()
        p.wait()
    red, edges, grown = red - warm_red, edges - warm_edges, (red + edges) - (warm_red + warm_edges)
    return {"services": services, "ops_per_service": ops, "red_series": red, "edges": edges,
            "rss_idle_mib": round(base, 1), "rss_warm_mib": round(warm, 1), "rss_mib": round(rss, 1),
            "bytes_per_series": round((rss - warm) * 1048576 / max(1, grown)),
            "bytes_per_series_vs_idle": round((rss - base) * 1048576 / max(1, grown)),
            "anon_warm_mib": round(warm_anon, 1), "anon_mib": round(anon, 1),
            "anon_bytes_per_series": round((anon - warm_anon) * 1048576 / max(1, grown))}


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--shapes", default="10x10,100x10,100x100,1000x10")
    a.add_argument("--windows", type=int, default=1)
    args = a.parse_args()
    if not os.access(TIDEWATCH, os.X_OK):
        sys.exit(f"no release build at {TIDEWATCH}: cargo build --release")
    rows = [run(*map(int, s.split("x")), args.windows) for s in args.shapes.split(",")]
    # What each series costs once the first data has brought in the pools it needs once: RSS growth over
    # series growth from the previous row.
    for prev, r in zip(rows, rows[1:]):
        grown = (r["red_series"] + r["edges"]) - (prev["red_series"] + prev["edges"])
        for col, mib in (("marginal_bytes_per_series", "rss_mib"), ("marginal_anon_bytes_per_series", "anon_mib")):
            r[col] = round((r[mib] - prev[mib]) * 1048576 / grown) if grown > 0 else "–"
    rows[0]["marginal_bytes_per_series"] = rows[0]["marginal_anon_bytes_per_series"] = "–"
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
