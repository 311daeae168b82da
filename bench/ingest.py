#!/usr/bin/env python3
"""Ingest benchmark: Tidewatch side by side with rotel and the OpenTelemetry Collector, in one run.

Each target is started fresh on loopback (Tidewatch with an empty history directory), fed by `tidewatch
loadgen` (the same load for all: the simulated shop's traces, 4 requests in flight) at fixed span rates and
flat out, over OTLP/gRPC and OTLP/HTTP protobuf. A rate may name its request size: `10000:512` is 10k spans/s
in 512-span requests (the SDKs' default batch, as the Collector's contrib testbed sends); without one,
1,000-span requests. Per run it records what the load generator saw accepted and refused, and, from /proc,
the target process's CPU time (to the nanosecond, summed over its threads) and peak RSS. "spans per
CPU-second" is accepted spans divided by the target's own CPU seconds: the throughput one core would give. The load generator runs on the same two
cores, so flat-out wall-clock rates are shared-machine figures.

Targets and the work they do:
  tidewatch  ingest + RED metrics + service graph (its normal pipeline)
  rotel      ingest only (blackhole exporter): the ingest-speed peer
  otelcol    ingest + spanmetrics + servicegraph connectors + prometheus exporter: the same work as Tidewatch

    bench/ingest.py [--duration 20] [--rates 10000:512,50000,200000,0] [--http-rates 10000:512,0]
                    [--targets tidewatch,rotel,otelcol] [--runs 1] [--json FILE]

With `--runs N` the whole matrix runs N times (interleaved, so a burst of load elsewhere on the machine hits
every target alike) and the table shows each figure as the median with the min-max spread.

Needs: a release build (`cargo build --release`; `BENCH_TIDEWATCH_BIN=path` runs another build, for an A/B
comparison) and the peers (`bench/peers/install.sh rotel otelcol`).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.environ.get("TIDEWATCH_PEERS", os.path.expanduser("~/.cache/tidewatch-peers"))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
TIDEWATCH = os.environ.get("BENCH_TIDEWATCH_BIN", os.path.join(TARGET_DIR, "release", "tidewatch"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU of a process and its threads (the exited ones too), from /proc/PID/stat: in clock
    ticks (10 ms), too coarse for a run that uses a few hundred milliseconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_ns(pid):
    """Each live thread's CPU time in nanoseconds, from /proc/PID/task/TID/schedstat."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread has just exited
    return out


class CpuMeter:
    """A process's CPU time over a window, to the nanosecond: the sum over its threads of the time each ran
    (schedstat), sampled every 50 ms so that a thread which exits during the window still counts with what
    it had used when last seen (it can only lose the last 50 ms of a thread that exits, and the threads that
    exit here are idle pool threads). Cross-checked against /proc/PID/stat's clock ticks, which include every
    exited thread: a precise figure more than three ticks below them (each reading of utime and stime
    truncates) means CPU was lost, and the ticks are used instead."""

    def __init__(self, pid):
        self.pid, self.seen, self.stop_flag = pid, {}, threading.Event()
        self.start = thread_cpu_ns(pid)
        self.ticks0 = cpu_seconds(pid)
        self.seen.update(self.start)
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while not self.stop_flag.wait(0.05):
            self.seen.update(thread_cpu_ns(self.pid))

    def seconds(self):
        """CPU seconds since the meter started: the precise figure and the process's clock ticks."""
        self.stop_flag.set()
        self.thread.join()
        self.seen.update(thread_cpu_ns(self.pid))
        ticks = cpu_seconds(self.pid) - self.ticks0
        precise = (sum(self.seen.values()) - sum(self.start.values())) / 1e9
        if precise < ticks - 3 / CLK_TCK:
            print(f"warning: {precise:.3f} CPU-s from the threads but {ticks:.2f} from the process's ticks; "
                  "using the ticks", file=sys.stderr)
            return ticks, ticks
        return precise, ticks


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_parts_mib(pid):
    """Resident memory now, split into anonymous (heap, stacks) and file-backed (the binary's text pages)."""
    parts = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Rss", "Anonymous"):
                parts[k] = int(v.split()[0]) / 1024
    return parts.get("Rss", float("nan")), parts.get("Anonymous", float("nan"))


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Target:
    def __init__(self, name, tmp):
        self.name, self.tmp = name, tmp
        self.grpc, self.http, self.web = free_port(), free_port(), free_port()
        self.proc = None

    def start(self):
        log = open(os.path.join(self.tmp, f"{self.name}.log"), "w")
        if self.name == "tidewatch":
            data = tempfile.mkdtemp(prefix="history-", dir=self.tmp)
            cmd = [TIDEWATCH, "run", "--set", f"collector.grpc.endpoint=127.0.0.1:{self.grpc}",
                   "--set", f"collector.http.endpoint=127.0.0.1:{self.http}",
                   "--set", f"web.endpoint=127.0.0.1:{self.web}", "--set", "log.level=warn",
                   "--set", f"analyzer.store.data_dir={data}"]
        elif self.name == "rotel":
            cmd = [os.path.join(PEERS, "bin", "rotel"), "start", "--exporter", "blackhole",
                   "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc}", "--otlp-http-endpoint", f"127.0.0.1:{self.http}"]
        elif self.name == "otelcol":
            src = open(os.path.join(ROOT, "bench", "peers", "otelcol-red.yaml")).read()
            cfg = (src.replace("127.0.0.1:14317", f"127.0.0.1:{self.grpc}")
                      .replace("127.0.0.1:14318", f"127.0.0.1:{self.http}")
                      .replace("127.0.0.1:18889", f"127.0.0.1:{self.web}")
                      .replace("127.0.0.1:18888", f"127.0.0.1:{free_port()}"))
            path = os.path.join(self.tmp, "otelcol.yaml")
            open(path, "w").write(cfg)
            cmd = [os.path.join(PEERS, "bin", "otelcol-tidewatch-bench"), "--config", path]
        else:
            raise ValueError(self.name)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_port(self.grpc)
            wait_port(self.http)
        except RuntimeError as e:
            self.stop()
            tail = open(log.name).read()[-2000:]
            raise RuntimeError(f"{self.name} did not start ({e}); its log ends with:\n{tail}") from e
        time.sleep(0.5)

    def derived_series(self):
        """How many RED/graph series the target exposes (proof it did the work)."""
        if self.name == "rotel":
            return None
        url = f"http://127.0.0.1:{self.web}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return sum(1 for l in text.splitlines()
                   if l.startswith(("traces_span_metrics_calls_total", "traces_service_graph_request_total")))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def loadgen(protocol, port, rate, batch, duration):
    cmd = [TIDEWATCH, "loadgen", "--protocol", protocol, "--endpoint", f"http://127.0.0.1:{port}",
           "--rate", str(rate), "--duration", f"{duration}s", "--batch", str(batch), "--concurrency", "4",
           "--metrics-and-logs", "false", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def started(name, tmp):
    """A started target. A port picked free can be taken before the target binds it: one retry, on new ports."""
    try:
        t = Target(name, tmp)
        t.start()
    except RuntimeError as e:
        print(f"retrying on new ports: {e}", file=sys.stderr)
        t = Target(name, tmp)
        t.start()
    return t


def run_one(name, protocol, rate, batch, duration, tmp):
    t = started(name, tmp)
    try:
        pid = t.proc.pid
        idle_rss, _ = rss_parts_mib(pid)
        meter, wall0 = CpuMeter(pid), time.time()
        r = loadgen(protocol, t.grpc if protocol == "grpc" else t.http, rate, batch, duration)
        # Let the target finish what it accepted before reading its CPU (Tidewatch answers after enqueueing).
        time.sleep(1.0)
        cpu, cpu_ticks = meter.seconds()
        wall = time.time() - wall0
        rss = peak_rss_mib(pid)
        end_rss, end_anon = rss_parts_mib(pid)
        series = t.derived_series()
    finally:
        t.stop()
    return {
        "target": name, "protocol": protocol, "rate": rate or "max", "batch": batch,
        "accepted_per_s": round(r["spans_accepted"] / r["seconds"]),
        "accepted": r["spans_accepted"], "refused": r["spans_refused"], "failed": r["spans_failed"],
        "cpu_cores": round(cpu / wall, 2), "cpu_s": round(cpu, 4), "cpu_ticks_s": round(cpu_ticks, 2),
        "spans_per_cpu_s": round(r["spans_accepted"] / cpu) if cpu > 0 else None,
        "peak_rss_mib": round(rss, 1), "idle_rss_mib": round(idle_rss, 1),
        "end_rss_mib": round(end_rss, 1), "end_file_rss_mib": round(end_rss - end_anon, 1),
        "p99_ms": r["p99_ms"], "derived_series": series,
    }


def spread(values):
    """`median (min-max)` of a list of numbers, or the one value."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return "–"
    med = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    fmt = (lambda x: f"{x:,.0f}") if med >= 100 else (lambda x: f"{x:.1f}")
    return fmt(med) if len(v) == 1 else f"{fmt(med)} ({fmt(v[0])}–{fmt(v[-1])})"


def print_ratios(rows, cells, runs):
    """Tidewatch's spans per CPU-second over the OTel Collector's and its peak RSS against both peers', per
    cell and per run (each run's cells are consecutive in `rows`), so that "in every run" can be checked."""
    targets = {c[0] for c in cells}
    if "tidewatch" not in targets or len(targets) < 2:
        return
    print()
    print("| protocol | rate | batch | tidewatch / otelcol spans per CPU-s, per run | tidewatch peak RSS MiB vs rotel, otelcol, per run |")
    print("|---|---|---|---|---|")
    for key in sorted({c[1:] for c in cells}, key=lambda k: (k[0], k[1] == 0, k[1])):
        protocol, rate, batch = key
        ratios, rss = [], []
        for run in range(runs):
            mine = {r["target"]: r for r in rows[run * len(cells):(run + 1) * len(cells)]
                    if (r["protocol"], r["rate"], r["batch"]) == (protocol, rate or "max", batch)}
            tw, oc, ro = mine.get("tidewatch"), mine.get("otelcol"), mine.get("rotel")
            if tw and oc and tw["spans_per_cpu_s"] and oc["spans_per_cpu_s"]:
                ratios.append(f"{tw['spans_per_cpu_s'] / oc['spans_per_cpu_s']:.1f}x")
            peers = ", ".join(f"{p['peak_rss_mib']}" if p else "–" for p in (ro, oc))
            rss.append(f"{tw['peak_rss_mib']} vs {peers}" if tw else "–")
        print(f"| {protocol} | {rate or 'max'} | {batch} | {' / '.join(ratios) or '–'} | {' / '.join(rss)} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--rates", default="10000:512,50000,200000,0",
                   help="spans/s[:spans per request] for gRPC; 0 = as fast as accepted")
    p.add_argument("--http-rates", default="10000:512,0", help="the same for OTLP/HTTP")
    p.add_argument("--protocols", default="grpc,http")
    p.add_argument("--targets", default="tidewatch,rotel,otelcol")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole matrix; the table shows the spread")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args()
    if not os.access(TIDEWATCH, os.X_OK):
        sys.exit(f"no release build at {TIDEWATCH}: cargo build --release")
    cells = []
    for protocol in a.protocols.split(","):
        for spec in (a.rates if protocol == "grpc" else a.http_rates).split(","):
            rate, _, batch = spec.partition(":")
            for name in a.targets.split(","):
                cells.append((name, protocol, int(rate), int(batch or 1000)))
    rows = []
    tmp = tempfile.mkdtemp(prefix="tidewatch-bench-")
    for _ in range(a.runs):
        for cell in cells:
            row = run_one(*cell, a.duration, tmp)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    cols = ["target", "protocol", "rate", "batch", "accepted_per_s", "refused", "failed", "cpu_cores",
            "spans_per_cpu_s", "idle_rss_mib", "peak_rss_mib", "end_file_rss_mib", "p99_ms", "derived_series"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name, protocol, rate, batch in cells:
        mine = [r for r in rows if (r["target"], r["protocol"], r["rate"], r["batch"]) == (name, protocol, rate or "max", batch)]
        out = [name, protocol, str(rate or "max"), str(batch)]
        for c in cols[4:]:
            vals = [r[c] for r in mine]
            out.append(spread(vals) if all(isinstance(v, (int, float)) or v is None for v in vals) else str(vals[0]))
        print("| " + " | ".join(out) + " |")
    print_ratios(rows, cells, a.runs)
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
