#!/usr/bin/env python3
"""Kafka benchmark: spans per CPU-second of OTLP → Kafka → RED metrics + service graph, Tidewatch side by side
with the OpenTelemetry Collector, on one local Kafka broker.

Pipelines (two processes each, like a scaled-out deployment; all on loopback):
  tidewatch  `tidewatch run --role ingest` (OTLP in, produce, acks=all, lz4)
             → `tidewatch run --role analyze` (one consumer-group member: RED metrics + service graph)
  otelcol    collector 1: otlp receiver → kafkaexporter (partition_traces_by_id, otlp_proto, acks=all, lz4)
             → collector 2: kafkareceiver → span_metrics + service_graph connectors → prometheus exporter
Both use their defaults otherwise; the collector's producer is set to Tidewatch's acknowledgement and
compression so both do the same durable work (its defaults are acks=1, no compression). The collectors'
connectors flush every 5 s, as in bench/peers/otelcol-red.yaml.

Per pipeline and rate: a fresh broker, the two processes, a warm-up (the topic is created, the consumer
group has joined, both ends have seen traffic), then `tidewatch loadgen` (the simulated shop's traces,
OTLP/gRPC, 512-span requests, 4 in flight) for `--duration` seconds. The run ends when the analyzing end has
counted every accepted span (`traces_span_metrics_calls_total` summed). "spans per CPU-second" is the
spans accepted in the run divided by the CPU seconds both processes used from the start of the load until
then (from /proc); the broker's CPU is shown apart (same broker, same settings for both). The load
generator and the broker run on the same cores, so wall-clock rates are shared-machine figures.

    bench/kafka.py [--duration 20] [--rates 10000,30000] [--partitions 4] [--targets tidewatch,otelcol]
                   [--runs 1] [--json FILE]

Needs: a release build (`cargo build --release`), the Kafka broker jars (`tests/kafka/install.sh`) and the
collector (`bench/peers/install.sh otelcol`).
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import PEERS, TIDEWATCH, cpu_seconds, free_port, spread, wait_port  # noqa: E402

TOOLS = os.environ.get("TIDEWATCH_TOOLS", os.path.expanduser("~/.cache/tidewatch-tools"))
KAFKA_LIBS = os.path.join(TOOLS, "kafka", "libs")
OTELCOL = os.path.join(PEERS, "bin", "otelcol-tidewatch-bench")
TOPIC = "bench_spans"


def wait_for(what, timeout, check):
    """Polls `check` until it returns a true value (returned), failing after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.25)


def scrape(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError:
        return ""


def metric_sum(text, name):
    """Sum of every sample of `name` (any labels) in a Prometheus exposition."""
    pat = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.M)
    return sum(float(v) for v in pat.findall(text))


class Proc:
    def __init__(self, name, cmd, tmp, **kw):
        self.name = name
        self.log = os.path.join(tmp, f"{name}.log")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), **kw)

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self):
        return open(self.log).read()[-3000:]


class Broker:
    """One KRaft node (broker + controller) from the jars tests/kafka/install.sh fetches; topics are
    created on first use with `partitions` partitions."""

    def __init__(self, tmp, partitions):
        if not os.path.isdir(KAFKA_LIBS):
            sys.exit(f"no Kafka jars in {KAFKA_LIBS}: run tests/kafka/install.sh")
        self.dir = tempfile.mkdtemp(prefix="kafka-", dir=tmp)
        self.port, controller = free_port(), free_port()
        props = os.path.join(self.dir, "server.properties")
        with open(props, "w") as f:
            f.write(f"""process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={self.dir}/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
num.partitions={partitions}
""")
        self.broker_log = os.path.join(self.dir, "broker.log")
        with open(os.path.join(self.dir, "log4j2.properties"), "w") as f:
            f.write("rootLogger.level = INFO\nrootLogger.appenderRef.f.ref = F\nappender.f.type = File\n"
                    f"appender.f.name = F\nappender.f.fileName = {self.broker_log}\n"
                    "appender.f.layout.type = PatternLayout\nappender.f.layout.pattern = [%d] %p %m (%c)%n\n")
        subprocess.run(self.java() + ["kafka.tools.StorageTool", "format", "--standalone", "-t",
                                      "MkU3OEVBNTcwNTJENDM2Qk", "-c", props],
                       check=True, stdout=subprocess.DEVNULL)
        self.proc = Proc("kafka", self.java() + ["kafka.Kafka", props], self.dir)

        def started():
            if not self.proc.alive():
                sys.exit(f"Kafka exited:\n{self.read_log()[-3000:]}")
            return "Kafka Server started" in self.read_log()

        wait_for("the Kafka broker", 300, started)

    def java(self):
        return ["java", "-Xms128m", "-Xmx512m", f"-Dlog4j2.configurationFile={self.dir}/log4j2.properties",
                "-cp", f"{KAFKA_LIBS}/*"]

    def read_log(self):
        try:
            return open(self.broker_log).read()
        except OSError:
            return ""

    def bootstrap(self):
        return f"127.0.0.1:{self.port}"


class TidewatchPipeline:
    name = "tidewatch"

    def __init__(self, broker, tmp):
        self.grpc, self.web_ingest, self.web_analyze = free_port(), free_port(), free_port()
        common = ["--set", f"kafka.brokers=[{broker.bootstrap()}]", "--set", f"kafka.topics.traces={TOPIC}",
                  "--set", f"kafka.checkpoints=file://{tempfile.mkdtemp(prefix='checkpoints-', dir=tmp)}",
                  "--set", "log.level=warn",
                  "--set", f"analyzer.store.data_dir={tempfile.mkdtemp(prefix='history-', dir=tmp)}"]

        def role(name, web, grpc):
            return [TIDEWATCH, "run", "--role", name, *common,
                    "--set", f"collector.grpc.endpoint=127.0.0.1:{grpc}",
                    "--set", f"collector.http.endpoint=127.0.0.1:{free_port()}",
                    "--set", f"web.endpoint=127.0.0.1:{web}"]

        # The broker creates a topic when a client first asks for it, and answers "not there yet" to that
        # first question: the ingest role exits naming the topic, and is started again.
        def start_ingest():
            p = Proc("tidewatch-ingest", role("ingest", self.web_ingest, self.grpc), tmp)
            wait_for("the ingest role to answer", 60,
                     lambda: _get(self.web_ingest, "/readyz") == "ready\n" or not p.alive())
            return p if p.alive() else None

        self.ingest = wait_for("the ingest role to start (topics created)", 120, start_ingest)
        self.analyze = Proc("tidewatch-analyze", role("analyze", self.web_analyze, free_port()), tmp)
        wait_for("the analyzer to own partitions", 120,
                 lambda: metric_sum(scrape(self.web_analyze), "tidewatch_kafka_partitions_owned") > 0)
        self.procs = [self.ingest, self.analyze]

    def counted(self):
        return metric_sum(scrape(self.web_analyze), "traces_span_metrics_calls_total")

    def derived_series(self):
        text = scrape(self.web_analyze)
        return sum(1 for l in text.splitlines()
                   if l.startswith(("traces_span_metrics_calls_total", "traces_service_graph_request_total")))


def _get(port, path):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()
    except OSError:
        return ""


class OtelcolPipeline:
    name = "otelcol"

    def __init__(self, broker, tmp):
        if not os.access(OTELCOL, os.X_OK):
            sys.exit(f"no {OTELCOL}: bench/peers/install.sh otelcol")
        self.grpc, self.prom = free_port(), free_port()
        self.self_metrics = free_port()

        def telemetry(metrics):
            return f"""service:
  telemetry:
    logs:
      level: warn
    metrics:
{metrics}
"""

        quiet = telemetry("      level: none")
        counting = telemetry(
            "      readers:\n        - pull:\n            exporter:\n              prometheus:\n"
            f"                host: 127.0.0.1\n                port: {self.self_metrics}")
        ingest = f"""receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{self.grpc}
exporters:
  kafka:
    brokers: [{broker.bootstrap()}]
    partition_traces_by_id: true
    traces:
      topic: {TOPIC}
      encoding: otlp_proto
    producer:
      required_acks: -1
      compression: lz4
{quiet}  pipelines:
    traces:
      receivers: [otlp]
      exporters: [kafka]
"""
        analyze = f"""receivers:
  kafka:
    brokers: [{broker.bootstrap()}]
    group_id: bench
    initial_offset: earliest
    traces:
      topics: [{TOPIC}]
      encoding: otlp_proto
connectors:
  span_metrics:
    metrics_flush_interval: 5s
    exclude_dimensions: [collector.instance.id]
  service_graph:
    metrics_flush_interval: 5s
exporters:
  prometheus:
    endpoint: 127.0.0.1:{self.prom}
{counting}  pipelines:
    traces:
      receivers: [kafka]
      exporters: [span_metrics, service_graph]
    metrics:
      receivers: [span_metrics, service_graph]
      exporters: [prometheus]
"""
        self.procs = []
        for name, cfg in (("otelcol-ingest", ingest), ("otelcol-analyze", analyze)):
            path = os.path.join(tmp, f"{name}.yaml")
            open(path, "w").write(cfg)
            self.procs.append(Proc(name, [OTELCOL, "--config", path], tmp))
        self.ingest, self.analyze = self.procs
        wait_port(self.grpc, timeout=60)
        wait_port(self.prom, timeout=60)
        wait_port(self.self_metrics, timeout=60)

    def counted(self):
        # Not the sum of traces_span_metrics_calls_total: the prometheus exporter labels a series by service
        # (job) but not by the rest of the resource, so the shop's pods of one service overwrite each other
        # there. The connectors run inside the receiver's call, so a span the receiver accepted was counted.
        return metric_sum(scrape(self.self_metrics), "otelcol_receiver_accepted_spans")

    def derived_series(self):
        text = scrape(self.prom)
        return sum(1 for l in text.splitlines()
                   if l.startswith(("traces_span_metrics_calls_total", "traces_service_graph_request_total")))


def loadgen(port, rate, duration, batch=512):
    cmd = [TIDEWATCH, "loadgen", "--endpoint", f"http://127.0.0.1:{port}", "--rate", str(rate),
           "--duration", f"{duration}s", "--batch", str(batch), "--concurrency", "4",
           "--metrics-and-logs", "false", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_one(name, rate, duration, partitions, tmp):
    tmp = tempfile.mkdtemp(prefix=f"{name}-", dir=tmp)
    broker = Broker(tmp, partitions)
    pipeline = None
    try:
        pipeline = (TidewatchPipeline if name == "tidewatch" else OtelcolPipeline)(broker, tmp)
        # Warm-up: the topic exists, the group has joined, both ends have run.
        warm = loadgen(pipeline.grpc, 2000, 2)["spans_accepted"]
        wait_for(f"{name}: the warm-up counted", 180, lambda: pipeline.counted() >= warm)
        procs = pipeline.procs
        cpu0 = [p.cpu() for p in procs]
        kafka0, wall0 = broker.proc.cpu(), time.time()
        r = loadgen(pipeline.grpc, rate, duration)
        want = warm + r["spans_accepted"]
        wait_for(f"{name}: every accepted span counted", 300, lambda: pipeline.counted() >= want)
        wall = time.time() - wall0
        cpu = [p.cpu() - c for p, c in zip(procs, cpu0)]
        kafka_cpu = broker.proc.cpu() - kafka0
        counted = pipeline.counted()
        series = pipeline.derived_series()
    except Exception:
        for p in (pipeline.procs if pipeline else []) + [broker.proc]:
            print(f"--- {p.name}\n{p.tail()}", file=sys.stderr)
        raise
    finally:
        for p in (pipeline.procs if pipeline else []):
            p.stop()
        broker.proc.stop()
    total = sum(cpu)
    return {
        "target": name, "rate": rate, "accepted": r["spans_accepted"], "refused": r["spans_refused"],
        "failed": r["spans_failed"], "counted": counted - warm,
        "accepted_per_s": round(r["spans_accepted"] / r["seconds"]),
        "ingest_cpu_s": round(cpu[0], 2), "analyze_cpu_s": round(cpu[1], 2), "kafka_cpu_s": round(kafka_cpu, 2),
        "spans_per_cpu_s": round(r["spans_accepted"] / total) if total > 0 else None,
        "wall_s": round(wall, 1), "derived_series": series,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--rates", default="10000,30000", help="spans/s sent by the load generator")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--targets", default="tidewatch,otelcol")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole matrix; the table shows the spread")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args()
    if not os.access(TIDEWATCH, os.X_OK):
        sys.exit(f"no release build at {TIDEWATCH}: cargo build --release")
    cells = [(t, int(r)) for r in a.rates.split(",") for t in a.targets.split(",")]
    tmp = tempfile.mkdtemp(prefix="tidewatch-bench-kafka-")
    rows = []
    for _ in range(a.runs):
        for name, rate in cells:
            row = run_one(name, rate, a.duration, a.partitions, tmp)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    cols = ["target", "rate", "accepted_per_s", "refused", "failed", "ingest_cpu_s", "analyze_cpu_s",
            "spans_per_cpu_s", "kafka_cpu_s", "derived_series"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name, rate in cells:
        mine = [r for r in rows if (r["target"], r["rate"]) == (name, rate)]
        print("| " + " | ".join([name, str(rate)] + [spread([r[c] for r in mine]) for c in cols[2:]]) + " |")
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
