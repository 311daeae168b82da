"""Sends traces, metrics and logs to an OTLP endpoint with the official OpenTelemetry Python SDK exporters.

Used by the integration tests: a real third-party client, over a real socket. Prints one JSON line with
what the SDK reported, and exits non-zero when an export failed.

    python3 send_otlp.py --protocol grpc|http --endpoint HOST:PORT [--spans N] [--token T] [--ca FILE]
                         [--gzip]
"""

import argparse
import json
import logging
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def exporters(protocol, endpoint, headers, ca, client_cert=None, client_key=None, timeout=10, gzip=False):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        secure = ca is not None
        kw = dict(endpoint=endpoint, headers=headers, insecure=not secure, timeout=timeout)
        if gzip:
            import grpc

            kw["compression"] = grpc.Compression.Gzip
        if secure:
            import grpc

            pair = {}
            if client_cert:
                pair = dict(private_key=open(client_key, "rb").read(), certificate_chain=open(client_cert, "rb").read())
            kw["credentials"] = grpc.ssl_channel_credentials(open(ca, "rb").read(), **pair)
        return OTLPSpanExporter(**kw), OTLPMetricExporter(**kw), OTLPLogExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    scheme = "https" if ca else "http"
    base = f"{scheme}://{endpoint}"
    kw = dict(headers=headers, timeout=timeout)
    if gzip:
        from opentelemetry.exporter.otlp.proto.http import Compression

        kw["compression"] = Compression.Gzip
    if ca:
        kw["certificate_file"] = ca
    if client_cert:
        kw["client_certificate_file"] = client_cert
        kw["client_key_file"] = client_key
    return (
        OTLPSpanExporter(endpoint=f"{base}/v1/traces", **kw),
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics", **kw),
        OTLPLogExporter(endpoint=f"{base}/v1/logs", **kw),
    )


class Recording:
    """Wraps an exporter to remember whether every export succeeded."""

    def __init__(self, inner):
        self.inner = inner
        self.ok = True
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def export(self, batch, *args, **kwargs):
        self.calls += 1
        result = self.inner.export(batch, *args, **kwargs)
        if getattr(result, "name", "SUCCESS") != "SUCCESS":
            self.ok = False
        return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--endpoint", required=True, help="host:port")
    p.add_argument("--spans", type=int, default=100, help="server spans, each with one client child")
    p.add_argument("--service", default="sdk-frontend")
    p.add_argument("--token")
    p.add_argument("--ca", help="CA certificate (PEM) to trust: switches to TLS")
    p.add_argument("--client-cert", help="client certificate (PEM), for mutual TLS")
    p.add_argument("--client-key", help="client private key (PEM), for mutual TLS")
    p.add_argument("--timeout", type=float, default=10, help="seconds per export, retries included")
    p.add_argument("--gzip", action="store_true", help="compress every export with gzip")
    args = p.parse_args()

    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    span_exp, metric_exp, log_exp = (Recording(e) for e in exporters(args.protocol, args.endpoint, headers, args.ca, args.client_cert, args.client_key, args.timeout, args.gzip))
    resource = Resource.create({"service.name": args.service, "k8s.pod.name": f"{args.service}-0"})

    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(span_exp, max_export_batch_size=256))
    tracer = tp.get_tracer("tidewatch-tests")
    for i in range(args.spans):
        with tracer.start_as_current_span("GET /items", kind=SpanKind.SERVER) as server:
            server.set_attribute("http.request.method", "GET")
            with tracer.start_as_current_span("SELECT items", kind=SpanKind.CLIENT) as db:
                db.set_attribute("db.system", "postgresql")
                db.set_attribute("db.name", "items")
            if i % 10 == 0:
                server.set_status(Status(StatusCode.ERROR, "boom"))
    traces_flushed = tp.force_flush(int(args.timeout * 1000))

    reader = PeriodicExportingMetricReader(metric_exp, export_interval_millis=60_000)
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    counter = mp.get_meter("tidewatch-tests").create_counter("items.served")
    counter.add(5, {"route": "/items"})
    metrics_flushed = mp.force_flush(int(args.timeout * 1000))

    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(BatchLogRecordProcessor(log_exp))
    logger = logging.getLogger("tidewatch-tests")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=lp))
    logger.setLevel(logging.INFO)
    logger.info("hello")
    logger.error("failed")
    logs_flushed = lp.force_flush(int(args.timeout * 1000))

    tp.shutdown()
    mp.shutdown()
    lp.shutdown()
    out = {
        "spans": args.spans * 2,
        "traces_ok": span_exp.ok and traces_flushed and span_exp.calls > 0,
        "metrics_ok": metric_exp.ok and metrics_flushed and metric_exp.calls > 0,
        "logs_ok": log_exp.ok and logs_flushed and log_exp.calls > 0,
    }
    print(json.dumps(out))
    sys.exit(0 if out["traces_ok"] and out["metrics_ok"] and out["logs_ok"] else 1)


if __name__ == "__main__":
    main()
