//! Tidewatch on a real Apache Kafka (KRaft, from `tests/kafka/install.sh`): `--role ingest` producing,
//! `--role analyze` instances in a consumer group, a reference analyzer in a group of its own reading the
//! same topic. Real binary, real broker, real loadgen traffic over OTLP/gRPC. Figures are compared on
//! `/metrics` (each analyzer's partitions) and on the API (every analyzer's global view).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::kafka::{Kafka, Otelcol};
use crate::common::{Metrics, Tidewatch, wait_for};

/// Series whose totals must agree, summed over partitions and instances (histogram sums are floats added
/// in different orders, so they are left out; counts and buckets are exact, and so is a metric's increase:
/// each series is counted on one partition, in its order).
const EXACT: [&str; 10] = [
    "traces_span_metrics_calls_total",
    "traces_span_metrics_duration_seconds_bucket",
    "traces_span_metrics_duration_seconds_count",
    "traces_service_graph_request_total",
    "traces_service_graph_request_failed_total",
    "traces_service_graph_request_server_seconds_count",
    "traces_service_graph_request_client_seconds_count",
    "tidewatch_metric_points_total",
    "tidewatch_metric_increase_total",
    "tidewatch_log_records_total",
];

/// `name{labels without the partition}` → value, summed over every instance given.
fn totals(instances: &[&Tidewatch]) -> BTreeMap<String, f64> {
    series(instances, false)
}

/// `name{labels}` → value, summed over every instance given; `by_partition` keeps the partition label.
fn series(instances: &[&Tidewatch], by_partition: bool) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for tw in instances {
        let m: Metrics = tw.metrics();
        for s in m.samples.iter().filter(|s| EXACT.contains(&s.name.as_str())) {
            let labels: Vec<String> = s
                .labels
                .iter()
                .filter(|(k, _)| by_partition || k.as_str() != "tidewatch_partition")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            *out.entry(format!("{}{{{}}}", s.name, labels.join(",")))
                .or_insert(0.0) += s.value;
        }
    }
    out
}

fn calls(t: &BTreeMap<String, f64>) -> f64 {
    t.iter()
        .filter(|(k, _)| k.starts_with("traces_span_metrics_calls_total{"))
        .map(|(_, v)| v)
        .sum()
}

/// The sum of every series of family `name`.
fn family(t: &BTreeMap<String, f64>, name: &str) -> f64 {
    t.iter()
        .filter(|(k, _)| k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .map(|(_, v)| v)
        .sum()
}

/// The group's metric points and log records: every one the ingest role accepted, and as many, series by
/// series (counter increases too), as the reference counted.
fn signals_agree(group: &[&Tidewatch], reference: &Tidewatch, ingest: &Tidewatch) -> Result<(), String> {
    let m = ingest.metrics();
    let (points, records) = (
        m.items("data_points", "accepted"),
        m.items("log_records", "accepted"),
    );
    let (g, r) = (totals(group), totals(&[reference]));
    for (name, want) in [
        ("tidewatch_metric_points_total", points),
        ("tidewatch_log_records_total", records),
    ] {
        if family(&g, name) != want || family(&r, name) != want {
            return Err(format!(
                "{name}: group {}, reference {}, ingest accepted {want}",
                family(&g, name),
                family(&r, name)
            ));
        }
    }
    let increase = "tidewatch_metric_increase_total";
    if family(&g, increase) <= 0.0 || family(&g, increase) != family(&r, increase) {
        return Err(format!(
            "{increase}: group {}, reference {}",
            family(&g, increase),
            family(&r, increase)
        ));
    }
    Ok(())
}

/// The global view's latest reading of `metric` per pod of `service`, from `/api/series`.
fn global_metric(tw: &Tidewatch, service: &str, metric: &str) -> Result<BTreeMap<String, f64>, String> {
    let (status, pods) = tw.get_json(&format!("/api/services/{service}/pods?window=1h"));
    let pods: Vec<String> = pods["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["pod"].as_str().map(str::to_owned))
        .collect();
    if status != 200 || pods.is_empty() {
        return Err(format!("{service}'s pods: {status} {pods:?}"));
    }
    let mut out = BTreeMap::new();
    for pod in pods {
        let path = format!("/api/series?service={service}&pod={pod}&name={metric}&from=-2m&step=1s");
        let (status, v) = tw.get_json(&path);
        let last = v["points"]
            .as_array()
            .and_then(|p| p.last())
            .and_then(|p| p["value"].as_f64());
        match (status, last) {
            (200, Some(last)) => out.insert(pod, last),
            _ => return Err(format!("{path}: {status} {v}")),
        };
    }
    Ok(out)
}

fn edges(t: &BTreeMap<String, f64>) -> f64 {
    t.iter()
        .filter(|(k, _)| k.starts_with("traces_service_graph_request_total{"))
        .map(|(_, v)| v)
        .sum()
}

/// What an analyzer's global view (its history, as the API and the web UI read it) counted in the last
/// hour.
#[derive(Debug, PartialEq)]
struct Global {
    /// Spans: every operation's requests, over every service.
    spans: f64,
    /// The map's services: requests (their entry spans).
    nodes: BTreeMap<String, f64>,
    /// The map's edges: requests per (client, server).
    edges: BTreeMap<(String, String), f64>,
    /// Requests per (service, pod).
    pods: BTreeMap<(String, String), f64>,
}

fn global(tw: &Tidewatch) -> Result<Global, String> {
    let get = |path: &str| match tw.get_json(path) {
        (200, v) => Ok(v),
        (status, v) => Err(format!("{path}: {status} {v}")),
    };
    let list = |v: &serde_json::Value, k: &str| v[k].as_array().cloned().unwrap_or_default();
    let f = |v: &serde_json::Value| v["requests"].as_f64().unwrap_or(f64::NAN);
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let g = get("/api/graph?window=1h")?;
    // An analyzer admits no series itself (each partition's owner does): no budget of its own to show.
    if !g["series_budget"].is_null() {
        return Err(format!("an analyzer's series_budget: {}", g["series_budget"]));
    }
    let nodes = list(&g, "nodes")
        .iter()
        .filter(|n| n["virtual"] == false)
        .map(|n| (s(n, "id"), f(n)))
        .collect();
    let mut edges = BTreeMap::new();
    for e in list(&g, "edges") {
        *edges.entry((s(&e, "source"), s(&e, "target"))).or_insert(0.0) += f(&e);
    }
    let (mut spans, mut pods) = (0.0, BTreeMap::new());
    for svc in list(&get("/api/services?window=1h")?, "services") {
        let name = s(&svc, "name");
        let ops = get(&format!("/api/services/{name}/operations?window=1h"))?;
        spans += list(&ops, "operations").iter().map(f).sum::<f64>();
        for p in list(&get(&format!("/api/services/{name}/pods?window=1h"))?, "pods") {
            pods.insert((name.clone(), s(&p, "pod")), f(&p));
        }
    }
    if pods.is_empty() {
        return Err("no pods".into());
    }
    Ok(Global {
        spans,
        nodes,
        edges,
        pods,
    })
}

/// Service-graph requests per (client, server) on `/metrics`, over every partition.
fn metric_edges(tw: &Tidewatch) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for s in tw
        .metrics()
        .samples
        .into_iter()
        .filter(|s| s.name == "traces_service_graph_request_total")
    {
        let key = (s.labels["client"].clone(), s.labels["server"].clone());
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

/// Every analyzer's global view holds the same figures: `spans` spans, and `reference`'s service graph.
fn global_views_agree(analyzers: &[&Tidewatch], reference: &Tidewatch, spans: f64) -> Result<(), String> {
    let want = metric_edges(reference);
    for (i, tw) in analyzers.iter().enumerate() {
        let g = global(tw)?;
        if g.spans != spans || g.edges != want {
            return Err(format!(
                "analyzer {i}: {} spans of {spans}; edges {:?}, want {want:?}",
                g.spans, g.edges
            ));
        }
        if i > 0 {
            let first = global(analyzers[0])?;
            if g != first {
                return Err(format!("analyzer {i}: {g:?}; analyzer 0: {first:?}"));
            }
        }
    }
    Ok(())
}

fn counter(tw: &Tidewatch, name: &str) -> f64 {
    tw.metrics().sum(name, &[])
}

/// Waits until the group has settled with both members: each owns some partitions (joining takes a
/// rebalance, longer on a busy machine).
fn both_own_partitions(a: &Tidewatch, b: &Tidewatch) {
    wait_for("both analyzers own partitions", Duration::from_secs(180), || {
        let owned = |tw: &Tidewatch| counter(tw, "tidewatch_kafka_partitions_owned");
        if owned(a) > 0.0 && owned(b) > 0.0 {
            Ok(())
        } else {
            Err(format!("a owns {}, b owns {}", owned(a), owned(b)))
        }
    });
}

struct Cluster {
    kafka: Kafka,
    checkpoints: tempfile::TempDir,
}

impl Cluster {
    fn start(partitions: i32) -> Cluster {
        let kafka = Kafka::start();
        kafka.create_topic("otlp_spans", partitions);
        kafka.create_topic("otlp_metrics", 2);
        kafka.create_topic("otlp_logs", 2);
        Cluster {
            kafka,
            checkpoints: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn sets(&self, role: &str, group: &str) -> Vec<String> {
        vec![
            format!("role={role}"),
            format!("kafka.brokers=[{}]", self.kafka.bootstrap()),
            format!("kafka.group={group}"),
            format!("kafka.checkpoints=file://{}", self.checkpoints.path().display()),
            "kafka.session_timeout=6s".into(),
            "kafka.produce_timeout=3s".into(),
            "analyzer.window=1s".into(),
            "analyzer.service_graph.wait=1s".into(),
        ]
    }

    fn start_role(&self, role: &str, group: &str) -> Tidewatch {
        self.start_on("otlp_spans", role, group)
    }

    /// A role with `kafka.topics.traces` set to `topic`.
    fn start_on(&self, topic: &str, role: &str, group: &str) -> Tidewatch {
        self.start_with(role, group, &[format!("kafka.topics.traces={topic}")], &[])
    }

    /// A role with more `--set`s and environment variables.
    fn start_with(&self, role: &str, group: &str, extra: &[String], env: &[(&str, &str)]) -> Tidewatch {
        let sets: Vec<String> = self
            .sets(role, group)
            .into_iter()
            .chain(extra.iter().cloned())
            .collect();
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        Tidewatch::start_with(&sets, env)
    }
}

/// `tidewatch loadgen` against the ingest role's gRPC port, at `rate` spans/s for `duration` (0: until
/// SIGTERM), its JSON report on the last line.
fn loadgen(ingest: &Tidewatch, rate: u32, duration: &str) -> Child {
    loadgen_to(&ingest.grpc, rate, duration, true)
}

/// `tidewatch loadgen` against any OTLP/gRPC endpoint `host:port`, with or without metrics and logs.
fn loadgen_to(grpc: &str, rate: u32, duration: &str, metrics_and_logs: bool) -> Child {
    crate::common::tidewatch()
        .args(["loadgen", "--endpoint", &format!("http://{grpc}")])
        .args(["--metrics-and-logs", &metrics_and_logs.to_string()])
        .args([
            "--rate",
            &rate.to_string(),
            "--duration",
            duration,
            "--batch",
            "200",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start loadgen")
}

fn report(child: Child) -> serde_json::Value {
    crate::common::loadgen_report(child.wait_with_output().expect("loadgen"))
}

fn n(r: &serde_json::Value, k: &str) -> f64 {
    r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"))
}

/// Two analyzers in one group sum to a reference analyzer in its own group and to the accepted span
/// count; then one is killed with SIGKILL mid-stream, a replacement joins, and the totals still agree
/// exactly: the new owners resumed from the checkpoints and replayed, counting nothing twice.
#[test]
fn analyzers_in_a_group_equal_a_reference_and_survive_kill_9() {
    let c = Cluster::start(6);
    let ingest = c.start_role("ingest", "unused");
    let a = c.start_role("analyze", "tw");
    let b = c.start_role("analyze", "tw");
    let reference = c.start_role("analyze", "reference");

    // The group has settled with both members before traffic.
    both_own_partitions(&a, &b);
    let first = report(loadgen(&ingest, 3000, "4s"));
    let accepted = n(&first, "spans_accepted");
    assert!(accepted > 1000.0, "{first}");
    assert_eq!(
        n(&first, "spans_refused") + n(&first, "spans_failed"),
        0.0,
        "{first}"
    );
    let agree = |group: &[&Tidewatch], want: f64| {
        let (g, r) = (totals(group), totals(&[&reference]));
        if calls(&g) != want || calls(&r) != want {
            return Err(format!(
                "calls: group {} reference {} accepted {want}",
                calls(&g),
                calls(&r)
            ));
        }
        if g != r {
            let diff: Vec<_> = g.iter().filter(|(k, v)| r.get(*k) != Some(v)).take(5).collect();
            return Err(format!("series differ, e.g. {diff:?}"));
        }
        Ok(())
    };
    wait_for("two analyzers vs the reference", Duration::from_secs(180), || {
        agree(&[&a, &b], accepted)
    });
    let t = totals(&[&reference]);
    assert!(edges(&t) > 0.0, "the service graph has edges");
    for (tw, who) in [(&a, "a"), (&b, "b")] {
        let owned = counter(tw, "tidewatch_kafka_partitions_owned");
        assert!(owned > 0.0, "{who} owns partitions");
    }
    // Each analyzer's API and UI show the whole topic, not its own partitions: the same figures on both
    // (and on the reference, whose group has all partitions in one process), equal to every accepted span.
    wait_for(
        "every analyzer's global view holds every accepted span",
        Duration::from_secs(180),
        || global_views_agree(&[&a, &b, &reference], &reference, accepted),
    );
    let g = global(&a).expect("a's global view");
    eprintln!(
        "global view on a, b and the reference: {} spans, {} services, {} edges with {} requests, {} pods",
        g.spans,
        g.nodes.len(),
        g.edges.len(),
        g.edges.values().sum::<f64>(),
        g.pods.len()
    );

    // The analyzer to kill is one that owns a partition of the metrics topic (the group decides which), so
    // a cumulative sum changes owner mid-stream.
    let owned = |tw: &Tidewatch, family: &str| {
        let m = tw.metrics();
        let parts: std::collections::BTreeSet<String> = m
            .samples
            .iter()
            .filter(|s| s.name == family)
            .filter_map(|s| s.labels.get("tidewatch_partition").cloned())
            .collect();
        parts.len()
    };
    let metrics_family = "tidewatch_metric_points_total";
    let (mut a, b) = if owned(&a, metrics_family) > 0 {
        (a, b)
    } else {
        (b, a)
    };
    assert!(
        owned(&a, metrics_family) > 0,
        "neither analyzer owns a partition of the metrics topic"
    );

    // Mid-stream: traffic flows, `a` has checkpointed, then it dies without a word.
    let load = loadgen(&ingest, 3000, "12s");
    let checkpoints = counter(&a, "tidewatch_kafka_checkpoints_total");
    wait_for(
        "a checkpoints under the second load",
        Duration::from_secs(60),
        || {
            let now = counter(&a, "tidewatch_kafka_checkpoints_total");
            if now > checkpoints + 6.0 {
                Ok(())
            } else {
                Err(format!("{now} checkpoints"))
            }
        },
    );
    eprintln!(
        "killed now: an analyzer owning {} partitions of the metrics topic and {} of the logs topic",
        owned(&a, metrics_family),
        owned(&a, "tidewatch_log_records_total")
    );
    a.kill9();
    let a2 = c.start_role("analyze", "tw");
    let second = report(load);
    assert_eq!(
        n(&second, "spans_refused") + n(&second, "spans_failed"),
        0.0,
        "{second}"
    );
    let accepted = accepted + n(&second, "spans_accepted");
    wait_for(
        "after kill -9, the group vs the reference",
        Duration::from_secs(240),
        || agree(&[&a2, &b], accepted),
    );
    let t = totals(&[&reference]);
    let sum = |name: &str| counter(&a2, name) + counter(&b, name);
    let (resumed, replayed) = (
        sum("tidewatch_kafka_partitions_resumed_total"),
        sum("tidewatch_kafka_records_replayed_total"),
    );
    eprintln!(
        "kill -9: accepted {accepted}; counted {} calls, {} service-graph requests; {resumed} partitions resumed from checkpoints, {replayed} records of their open windows read again",
        calls(&t),
        edges(&t)
    );
    assert!(resumed > 0.0, "the new owners resumed from checkpoints");
    // Metric points and log records went through the same partitions and takeover: every accepted one
    // counted once, cumulative sums' increases as the reference's.
    wait_for(
        "after kill -9, metric points and log records",
        Duration::from_secs(180),
        || signals_agree(&[&a2, &b], &reference, &ingest),
    );
    let t = totals(&[&reference]);
    eprintln!(
        "kill -9: {} metric points, counters' increase {}, {} log records, as the ingest role accepted",
        family(&t, "tidewatch_metric_points_total"),
        family(&t, "tidewatch_metric_increase_total"),
        family(&t, "tidewatch_log_records_total"),
    );
    // Every analyzer's global view reads the same latest gauge values as the reference's, which read
    // every partition of the metrics topic in one process.
    wait_for(
        "the global views' metric series agree",
        Duration::from_secs(180),
        || {
            let want = global_metric(&reference, "frontend", "container.memory.usage")?;
            for (tw, who) in [(&a2, "a2"), (&b, "b")] {
                let got = global_metric(tw, "frontend", "container.memory.usage")?;
                if got != want {
                    return Err(format!("{who}: {got:?}, reference {want:?}"));
                }
            }
            Ok(())
        },
    );
    // The global view of the analyzer that stayed went on through the failover, and still holds everything.
    wait_for(
        "after kill -9, the global view holds every accepted span",
        Duration::from_secs(180),
        || global_views_agree(&[&b, &reference], &reference, accepted),
    );

    // Anomalies and forecasts come from the global history on every analyzer, the replacement's too.
    let load = loadgen(&ingest, 3000, "0s");
    for (tw, who) in [(&b, "b"), (&a2, "a2")] {
        wait_for(
            &format!("{who} scores the shop's services"),
            Duration::from_secs(180),
            || match tw.get_json("/api/anomalies") {
                (200, v) => {
                    let scored: Vec<&str> = v["services"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s["service"].as_str())
                        .collect();
                    if ["frontend", "checkout", "payment"]
                        .iter()
                        .all(|s| scored.contains(s))
                    {
                        Ok(())
                    } else {
                        Err(format!("scored {scored:?}"))
                    }
                }
                (status, v) => Err(format!("{status} {v}")),
            },
        );
        let f = tw.wait_json(
            "/api/services/frontend/forecast?horizon=5s&step=1s&history=10m",
            Duration::from_secs(240),
            |v| v["forecast"].as_array().is_some_and(|p| p.len() == 5),
        );
        assert!(f["history_points"].as_u64().unwrap_or(0) >= 24, "{f}");
    }
    // The web UI on an analyzer: the whole shop on the map, and this analyzer's own part in the panel the
    // all-in-one process gives to its receivers.
    crate::web_ui::browser_ready();
    let nodes = "user,frontend,checkout,payment,inventory,shipping,postgres,stripe";
    let edges = "user>frontend,frontend>checkout,frontend>inventory,checkout>payment,checkout>inventory,\
                 checkout>shipping,inventory>postgres,payment>stripe";
    let ui = crate::web_ui::drive(
        "check",
        &b,
        &crate::web_ui::artifacts("kafka-analyzer"),
        &["--service", "checkout", "--nodes", nodes, "--edges", edges],
    );
    crate::web_ui::assert_no_browser_errors(&ui);
    let drawn: Vec<&str> = ui["overview"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str())
        .collect();
    for id in nodes.split(',') {
        assert!(drawn.contains(&id), "{id} not on the map: {drawn:?}");
    }
    let panel = ui["collector"].as_str().unwrap_or_default();
    assert!(
        panel.contains("This analyzer") && panel.contains("partitions owned"),
        "{panel}"
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(load.id().to_string())
        .status();
    let third = report(load);
    assert_eq!(
        n(&third, "spans_refused") + n(&third, "spans_failed"),
        0.0,
        "{third}"
    );
}

/// The topic the OpenTelemetry Collector's kafkaexporter writes in the test below.
const OTELCOL_TOPIC: &str = "otlp_spans_otelcol";

/// The collector's configuration: OTLP in; out to Kafka with the kafkaexporter (`partition_traces_by_id`,
/// `otlp_proto`) and, the same requests, to Tidewatch's ingest role over OTLP/gRPC.
fn otelcol_config(kafka: &str, ingest_grpc: &str) -> impl FnOnce(&str, &str) -> String {
    let (kafka, ingest_grpc) = (kafka.to_owned(), ingest_grpc.to_owned());
    move |grpc, http| {
        format!(
            r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {grpc}
      http:
        endpoint: {http}
exporters:
  kafka:
    brokers: [{kafka}]
    partition_traces_by_id: true
    traces:
      topic: {OTELCOL_TOPIC}
      encoding: otlp_proto
  otlp_grpc/tidewatch:
    endpoint: {ingest_grpc}
    timeout: 120s
    tls:
      insecure: true
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [kafka, otlp_grpc/tidewatch]
"#
        )
    }
}

/// `n` traces of one INTERNAL span each (nothing for the service graph to wait for), ids from `first`.
fn internal_spans(first: u32, n: u32) -> Vec<u8> {
    let spans: Vec<serde_json::Value> = (first..first + n)
        .map(|id| {
            serde_json::json!({"traceId": format!("{id:032x}"), "spanId": format!("{id:016x}"), "name": "tick",
                "kind": 1, "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000001000000"})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "tick"}}]},
        "scopeSpans": [{"spans": spans}]}]}))
    .expect("JSON")
}

/// The OpenTelemetry Collector (built with the Collector builder, contrib kafkaexporter) writes one topic
/// and fans the same requests out to Tidewatch's ingest role, which writes `otlp_spans`. Two analyzers in a
/// group on the collector's topic count exactly what a reference analyzer counts on Tidewatch's own topic,
/// partition by partition (so both placed every trace alike), and every span the collector accepted.
#[test]
fn analyzers_read_what_the_otel_collector_kafkaexporter_writes() {
    let c = Cluster::start(6);
    c.kafka.create_topic(OTELCOL_TOPIC, 6);
    // Both topics must hold each span once. A write the broker acknowledges later than
    // `kafka.produce_timeout` is refused with its earlier messages already in the topic, and the collector's
    // retry writes them again (RELIABILITY.md, "What can count twice"): on a busy machine the cluster's 3 s
    // was not enough. Here the ingest role and the collector's exporter wait long enough that only a real
    // failure is refused, and the wait below says if one was.
    let ingest = c.start_with(
        "ingest",
        "unused",
        &[
            "kafka.topics.traces=otlp_spans".into(),
            "kafka.produce_timeout=60s".into(),
        ],
        &[],
    );
    let collector = Otelcol::start(otelcol_config(&c.kafka.bootstrap(), &ingest.grpc));
    let a = c.start_on(OTELCOL_TOPIC, "analyze", "tw");
    let b = c.start_on(OTELCOL_TOPIC, "analyze", "tw");
    let reference = c.start_role("analyze", "reference");
    both_own_partitions(&a, &b);
    let r = report(loadgen_to(&collector.grpc, 3000, "4s", false));
    assert_eq!(n(&r, "spans_refused") + n(&r, "spans_failed"), 0.0, "{r}");
    let mut accepted = n(&r, "spans_accepted");
    assert!(accepted > 1000.0, "{r}");
    let counted = |want: f64| {
        let (g, t) = (calls(&totals(&[&a, &b])), calls(&totals(&[&reference])));
        if g == want && t == want {
            Ok(())
        } else {
            let twice = counter(&ingest, "tidewatch_kafka_spans_acked_in_refused_total");
            Err(format!(
                "collector's topic {g}, Tidewatch's topic {t}, accepted {want}; spans written by refused requests {twice}"
            ))
        }
    };
    wait_for(
        "both topics hold every accepted span",
        Duration::from_secs(180),
        || counted(accepted),
    );
    // Record time must pass `service_graph.wait` beyond the last record on every partition before the
    // halves still waiting there expire. Every record read so far was stamped before now; the spans sent
    // after this pause move every partition's clock past that, and leave nothing waiting themselves.
    std::thread::sleep(Duration::from_secs(2));
    let tick = reqwest::blocking::Client::new()
        .post(format!("http://{}/v1/traces", collector.http))
        .header("content-type", "application/json")
        .body(internal_spans(1, 300))
        .send()
        .expect("POST /v1/traces to the collector");
    assert!(tick.status().is_success(), "{}", tick.status());
    accepted += 300.0;
    wait_for(
        "the collector's topic, partition by partition, vs Tidewatch's",
        Duration::from_secs(180),
        || {
            counted(accepted)?;
            let (g, t) = (series(&[&a, &b], true), series(&[&reference], true));
            if g != t {
                let diff: Vec<_> = g.iter().filter(|(k, v)| t.get(*k) != Some(v)).take(5).collect();
                return Err(format!("series differ, e.g. {diff:?}"));
            }
            Ok(())
        },
    );
    let t = totals(&[&reference]);
    assert!(edges(&t) > 0.0, "the service graph has edges");
    eprintln!(
        "otelcol kafkaexporter: accepted {accepted}; {} calls, {} service-graph requests on both topics",
        calls(&t),
        edges(&t)
    );
}

/// The broker is stopped for 10 s under load: the ingest role refuses retryably (503 / UNAVAILABLE), takes
/// traffic again once the broker is back, every span sent is accounted for, and every accepted span reaches
/// an analyzer.
#[test]
fn a_kafka_outage_is_refused_retryably_and_loses_nothing_accepted() {
    let mut c = Cluster::start(3);
    let ingest = c.start_role("ingest", "unused");
    let reference = c.start_role("analyze", "reference");
    let accepted_now = |tw: &Tidewatch| tw.metrics().items("spans", "accepted");
    let load = loadgen(&ingest, 1000, "0s");
    wait_for(
        "spans accepted before the outage",
        Duration::from_secs(60),
        || {
            let a = accepted_now(&ingest);
            if a > 0.0 { Ok(()) } else { Err("none yet".into()) }
        },
    );
    c.kafka.stop();
    let down = Instant::now();
    wait_for("refusals while Kafka is down", Duration::from_secs(60), || {
        let r = ingest.metrics().items("spans", "refused");
        if r > 0.0 {
            Ok(())
        } else {
            Err("no refusal yet".into())
        }
    });
    // The outage lasts 10 s (the scenario, not a wait for something to happen).
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    let before = accepted_now(&ingest);
    c.kafka.resume();
    wait_for(
        "accepting again after Kafka is back",
        Duration::from_secs(120),
        || {
            let a = accepted_now(&ingest);
            if a > before + 2000.0 {
                Ok(())
            } else {
                Err(format!("{a} accepted, {before} before"))
            }
        },
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(load.id().to_string())
        .status();
    let r = report(load);
    let (sent, accepted, refused) = (
        n(&r, "spans_sent"),
        n(&r, "spans_accepted"),
        n(&r, "spans_refused"),
    );
    assert!(refused > 0.0, "{r}");
    assert_eq!(
        sent,
        accepted + refused + n(&r, "spans_rejected") + n(&r, "spans_failed"),
        "{r}"
    );
    assert_eq!(
        n(&r, "spans_failed"),
        0.0,
        "refusals are retryable answers, not failures: {r}"
    );
    // Every accepted span reaches the analyzer. A refused request whose messages were partly written
    // before the broker went away adds those spans too: the ingest role counts every message it handed to
    // a broker in a refused request (acknowledged or not: an acknowledgement can be lost), and that count
    // bounds what can be counted beyond the accepted spans (a client retrying such a request counts them
    // twice).
    let bound = counter(&ingest, "tidewatch_kafka_spans_acked_in_refused_total");
    assert!(bound <= refused, "{bound} acknowledged of {refused} refused");
    wait_for(
        "the reference counts every accepted span",
        Duration::from_secs(180),
        || {
            let got = calls(&totals(&[&reference]));
            if got >= accepted && got <= accepted + bound {
                Ok(())
            } else {
                Err(format!(
                    "{got} counted, {accepted} accepted, {bound} possibly written in refused requests"
                ))
            }
        },
    );
    eprintln!(
        "outage: sent {sent}, accepted {accepted}, refused {refused} ({bound} of them possibly written); the analyzer counted {}",
        calls(&totals(&[&reference]))
    );
}

/// A cluster that cannot be reached is a clear error at start, naming the setting.
#[test]
fn unreachable_brokers_are_a_named_error_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = crate::common::tidewatch()
        .args([
            "run",
            "--role",
            "ingest",
            "--set",
            &format!("kafka.brokers=[127.0.0.1:{port}]"),
        ])
        .args([
            "--set",
            "collector.grpc.endpoint=127.0.0.1:0",
            "--set",
            "collector.http.endpoint=127.0.0.1:0",
        ])
        .args(["--set", "web.endpoint=127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.brokers: cannot reach 127.0.0.1:"), "{err}");
}

/// The operator on the analyze role, against a real kube-apiserver: two analyzers with `scaler.enabled` and
/// leader election, the shop's load through the ingest role. The inventory pods are found in the global
/// view's pod breakdown; the Deployment is scaled up from the global view; one analyzer, the Lease
/// holder, makes every decision, and the other none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holder_among_the_analyzers_scales_from_the_global_view() {
    use crate::operator_e2e::{eventually, web, workload};
    let w = workload().await;
    let operator = w.operator_sets();
    let (_kafka, ingest, a, b) = tokio::task::block_in_place(|| {
        let c = Cluster::start(6);
        let ingest = c.start_role("ingest", "unused");
        // The Lease's identities, as a pod's name would be.
        let a = c.start_with("analyze", "tw", &operator, &[("HOSTNAME", "analyzer-a")]);
        let b = c.start_with("analyze", "tw", &operator, &[("HOSTNAME", "analyzer-b")]);
        both_own_partitions(&a, &b);
        (c, ingest, a, b)
    });
    let _load = crate::common::Guard::spawn(crate::common::loadgen(&ingest, 4000, 200).args([
        "--duration",
        "120s",
        "--metrics-and-logs",
        "false",
    ]));
    let names = w.ready_pods(&a).await;
    w.apply_policy(
        serde_json::json!({"targetRef": {"kind": "Deployment", "name": "inventory"}, "service": "inventory",
               "minReplicas": 2, "maxReplicas": 8, "capacity": {"requestsPerReplica": 1.0}}),
    )
    .await;
    let replicas = eventually("a scale-up", Duration::from_secs(120), async || {
        let r = w.replicas().await;
        (r > 3).then_some(r)
    })
    .await;
    assert!(replicas <= 8, "{replicas}");
    let decisions = |tw: &Tidewatch| -> Vec<serde_json::Value> {
        web(tw, "/api/decisions?policy=shop/inventory")
            .and_then(|v| v["decisions"].as_array().cloned())
            .unwrap_or_default()
    };
    let (da, db) = (decisions(&a), decisions(&b));
    let (acting, holder) = if da.is_empty() {
        (&db, "analyzer-b")
    } else {
        (&da, "analyzer-a")
    };
    assert!(
        da.is_empty() != db.is_empty(),
        "one analyzer decides: a made {}, b {}",
        da.len(),
        db.len()
    );
    assert!(
        acting.iter().any(|d| d["kind"] == "scale"
            && d["outcome"] == "ok"
            && d["action"].as_str().unwrap_or_default().starts_with("scale 3→")),
        "{acting:?}"
    );
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(w.admin.clone(), "tidewatch");
    let lease = leases.get("tidewatch-operator").await.expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(holder),
        "the analyzer that decides holds the Lease"
    );
    eprintln!(
        "operator on the analyze role: pods {names:?} from the global view, scaled 3 → {replicas}; {} decisions by the Lease holder, none by the other",
        acting.len()
    );
}
