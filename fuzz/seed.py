#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, from the OTLP/JSON fixtures in ../shared/data/otlp.

Each fuzz input starts with one selector byte (see fuzz_targets/*.rs): for the OTLP targets it picks the
signal (0 traces, 1 metrics, 2 logs); for the body target the encoding (0 identity, 1 gzip, 2 zstd).
The protobuf seeds are the same requests encoded with the OpenTelemetry Python SDK's generated
protobuf classes (OTLP/JSON ids are hex, protobuf's JSON mapping wants base64, so ids are converted).

Usage: fuzz/seed.py [FIXTURES_DIR]   (writes fuzz/corpus/<target>/, which is not committed)
"""
import base64
import gzip
import hashlib
import json
import pathlib
import sys

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared/data/otlp"
SIGNALS = {"traces": (0, ExportTraceServiceRequest), "metrics": (1, ExportMetricsServiceRequest),
           "logs": (2, ExportLogsServiceRequest)}
ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def signal_of(doc):
    if "resourceSpans" in doc:
        return "traces"
    if "resourceMetrics" in doc:
        return "metrics"
    if "resourceLogs" in doc:
        return "logs"
    return None


def hex_ids_to_base64(node):
    if isinstance(node, dict):
        return {k: (base64.b64encode(bytes.fromhex(v)).decode() if k in ID_KEYS and isinstance(v, str)
                    else hex_ids_to_base64(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [hex_ids_to_base64(v) for v in node]
    return node


def write(target, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def zstd(data):
    try:
        import zstandard
        return zstandard.ZstdCompressor().compress(data)
    except ImportError:
        pass
    import shutil
    import subprocess
    if shutil.which("zstd"):
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    return None


n = 0
for path in sorted(FIXTURES.rglob("*.json")):
    if path.name.endswith(".expected.json"):
        continue
    raw = path.read_bytes()
    doc = json.loads(raw)
    signal = signal_of(doc)
    if signal is None:
        continue
    sel, cls = SIGNALS[signal]
    write("otlp_json", bytes([sel]) + raw)
    msg = json_format.ParseDict(hex_ids_to_base64(doc), cls(), ignore_unknown_fields=True)
    pb = msg.SerializeToString()
    write("otlp_proto", bytes([sel]) + pb)
    write("body", bytes([0]) + pb)
    write("body", bytes([1]) + gzip.compress(pb))
    z = zstd(pb)
    if z is not None:
        write("body", bytes([2]) + z)
    n += 1
print(f"seeded from {n} fixtures in {FIXTURES} into {HERE / 'corpus'}")
