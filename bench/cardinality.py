#!/usr/bin/env python3
"""How Tidewatch's memory grows with services, operations and edges.

For each shape (services x operations per service) a fresh Tidewatch gets spans over OTLP/HTTP JSON: every
operation of service i is called by service i-1 (so each service but the first has an incoming edge per
operation name), each call being a client span and a server span, repeated a few times so every series
sees several observations. After the load it reads the process's resident memory (VmRSS) and the number
of RED series and edges on /metrics, and reports bytes per series above an idle baseline and, from one row
to the next, the marginal bytes per added series. The same two figures follow for anonymous memory alone
(RssAnon: heap and stacks), which leaves out the binary's code and data that the first load pages in.

    bench/cardinality.py [--shapes 10x10,100x10,100x100,1000x10] [--windows 1]

--windows N waits for N window closes after the load (the later ones with no new spans), so the figure
includes what a steady-state window close holds rather than the first one's.

Needs a release build (`cargo build --release`).
"""

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
TIDEWATCH = os.environ.get("BENCH_TIDEWATCH_BIN", os.path.join(TARGET_DIR, "release", "tidewatch"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def load(port, services, ops, repeats):
    now = time.time_ns()
    for _ in range(repeats):
        for i in range(services):
            by_resource = {}
            for o in range(ops):
                trace, client_id, server_id = hexid(32), hexid(16), hexid(16)
                callee, caller = f"svc-{i}", f"svc-{(i - 1) % services}"
                name = f"op-{o}"
                by_resource.setdefault(caller, []).append(span(trace, client_id, None, name, 3, now))
                by_resource.setdefault(callee, []).append(span(trace, server_id, client_id, name, 2, now))
            post(port, {"resourceSpans": [
                {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": svc}}]},
                 "scopeSpans": [{"spans": spans}]} for svc, spans in by_resource.items()]})


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
        load(http, services, ops, repeats=3)
        # Let a window close (or `windows` of them), so the history holds a row per series too.
        time.sleep(1 + 10 * windows)
        text = urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=60).read().decode()
        red = sum(1 for l in text.splitlines() if l.startswith("traces_span_metrics_calls_total{"))
        edges = sum(1 for l in text.splitlines() if l.startswith("traces_service_graph_request_total{"))
        rss, anon = rss_mib(p.pid), rss_mib(p.pid, "RssAnon")
    finally:
        p.terminate()
        p.wait()
    return {"services": services, "ops_per_service": ops, "red_series": red, "edges": edges,
            "rss_idle_mib": round(base, 1), "rss_mib": round(rss, 1),
            "bytes_per_series": round((rss - base) * 1048576 / max(1, red + edges)),
            "anon_idle_mib": round(base_anon, 1), "anon_mib": round(anon, 1),
            "anon_bytes_per_series": round((anon - base_anon) * 1048576 / max(1, red + edges))}


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
