//! Golden fixtures: every case of `../shared/data/otlp/{servicegraph,spanmetrics}/*.expected.json` (the
//! values Grafana Tempo's own Go tests assert) replayed against the real `tidewatch run` binary over
//! OTLP/HTTP JSON, each expected value checked on the Prometheus text of `/metrics`.
//!
//! Each case gets a fresh process (the fixtures share trace and span ids). The case's Tempo configuration
//! (`defaults_in_effect` overlaid with `set_by_test`) is translated option by option into `--set`
//! overrides; an option Tidewatch does not have makes the case unsupported, and an unsupported case must be
//! listed in [`NOT_SUPPORTED`] with its reason, or the test fails. "Expire" procedures run with
//! `analyzer.service_graph.wait=1ns`: `/metrics` first expires every half edge whose wait has passed, which
//! is Tempo's "push, then `Expire()`". Other cases keep the 10 s default wait, so nothing expires.
//!
//! Where Tidewatch deliberately differs, the difference is handled in the open, in the tables below.
//! Every mismatch of every case is collected and reported at the end, not only the first.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Value};

/// Why filter-policy cases cannot run.
const NO_FILTER_POLICIES: &str = "Tempo's `filter_policies` (include/include_any/exclude span filters with \
     strict or regex matching, and the dropped-side bookkeeping that goes with them) are not a Tidewatch \
     option: Tidewatch builds the graph from every span it accepts";

/// Cases the test does not run, with the reason. A case that turns out unsupported but is not listed here
/// fails the test, and so does an entry here that names no case or a case that is in fact supported.
const NOT_SUPPORTED: &[(&str, &str)] = &[
    (
        "TestServiceGraphs_applyFilterPolicy/include_requester_only",
        NO_FILTER_POLICIES,
    ),
    (
        "TestServiceGraphs_applyFilterPolicy/include_server_only",
        NO_FILTER_POLICIES,
    ),
    (
        "TestServiceGraphs_applyFilterPolicy/exclude_requester",
        NO_FILTER_POLICIES,
    ),
];

/// Cases whose input has spans with an empty trace or span id. Tempo's Go test calls the processor
/// directly; Tidewatch's receiver follows the OTLP specification, under which a span's trace id must be 16
/// bytes and its span id 8, and rejects such a span (partial success, the rest of the request is kept). The
/// test asserts exactly that on the unchanged input, then posts a copy whose missing ids are filled in with
/// valid ones ([`FILL_TRACE_ID`], [`FILL_SPAN_ID`]) and checks the expected values on it. The ids do not
/// enter span metrics, so the values must be Tempo's.
const IDS_FILLED: &[(&str, &str)] = &[(
    "TestSpanMetricsNegativeLatency",
    "the span built in Go code has no trace or span id, which an OTLP receiver must reject",
)];
const FILL_TRACE_ID: &str = "0102030405060708090a0b0c0d0e0f10";
const FILL_SPAN_ID: &str = "0102030405060708";

/// `return_value` expectations: errors Tempo's internal `consume()` returns. Tidewatch has no such call (an
/// OTLP export of valid spans succeeds; spans the service graph cannot hold are dropped and counted), so the
/// test checks the counter instead, against the count the error carries in Tempo: with `max_items` 1,
/// `dns.lookup`, the producer, both `log_to_loki` spans and the consumer find the store full ("dropped 5
/// spans", semantics.md 6.1 item 2). Columns: case, Go error type, counter, value.
const CONSUME_ERRORS: &[(&str, &str, &str, f64)] = &[(
    "TestServiceGraphs_tooManySpansErr",
    "tooManySpansError",
    "tidewatch_service_graph_dropped_spans_total",
    5.0,
)];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Processor {
    ServiceGraph,
    SpanMetrics,
}

/// One case of one expected file.
struct Case {
    file: String,
    fixture: PathBuf,
    processor: Processor,
    spec: Value,
}

impl Case {
    fn name(&self) -> &str {
        self.spec["name"].as_str().expect("case name")
    }
}

#[derive(Default)]
struct Outcome {
    /// Expected-file assertions checked.
    assertions: usize,
    /// Checks of our own (HTTP status, partial success, rejection of invalid ids).
    protocol_checks: usize,
    failures: Vec<String>,
    not_supported: Option<String>,
}

fn load_cases() -> Vec<Case> {
    let root = crate::common::shared().join("data/otlp");
    let mut cases = Vec::new();
    for (dir, processor) in [
        ("servicegraph", Processor::ServiceGraph),
        ("spanmetrics", Processor::SpanMetrics),
    ] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{}: {e}", root.join(dir).display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.to_string_lossy().ends_with(".expected.json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no expected files in {dir}");
        for path in files {
            let doc: Value = serde_json::from_slice(&std::fs::read(&path).expect("read expected file"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let fixture = path.with_file_name(doc["fixture"].as_str().expect("fixture"));
            let file = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
            for spec in doc["cases"].as_array().expect("cases") {
                cases.push(Case {
                    file: file.clone(),
                    fixture: fixture.clone(),
                    processor,
                    spec: spec.clone(),
                });
            }
        }
    }
    cases
}

/// `defaults_in_effect` overlaid with `set_by_test`; `subprocessors` (and `subprocessors_not_set_by_test`)
/// merged key by key.
fn effective_config(tempo_config: &Value) -> Map<String, Value> {
    let mut cfg = Map::new();
    let mut subprocessors = Map::new();
    for part in ["defaults_in_effect", "set_by_test"] {
        for (k, v) in tempo_config[part].as_object().into_iter().flatten() {
            if k == "subprocessors" || k == "subprocessors_not_set_by_test" {
                subprocessors.extend(v.as_object().expect("subprocessors object").clone());
            } else {
                cfg.insert(k.clone(), v.clone());
            }
        }
    }
    if !subprocessors.is_empty() {
        cfg.insert("subprocessors".into(), Value::Object(subprocessors));
    }
    cfg
}

/// Tempo's float-second bucket bounds as exact durations (nanoseconds), checked to map back to the same
/// float, so the exposed `le` labels are Tempo's.
fn buckets(v: &Value) -> Result<String, String> {
    let mut out = Vec::new();
    for b in v.as_array().ok_or("histogram_buckets is not a list")? {
        let s = b.as_f64().ok_or("bucket is not a number")?;
        let ns = (s * 1e9).round();
        if !(1.0..1e19).contains(&ns) || ns / 1e9 != s {
            return Err(format!("bucket {s} s is not a whole number of nanoseconds"));
        }
        out.push(format!("{}ns", ns as u64));
    }
    Ok(format!("[{}]", out.join(", ")))
}

/// A JSON value is also a YAML value, which is what `--set` parses.
fn yaml(v: &Value) -> String {
    v.to_string()
}

fn require(key: &str, v: &Value, want: &Value, why: &str) -> Result<(), String> {
    if v == want {
        Ok(())
    } else {
        Err(format!("{key}={v} ({why})"))
    }
}

/// The `--set` overrides reproducing one case's Tempo configuration, or why that cannot be done.
fn translate(processor: Processor, cfg: &Map<String, Value>) -> Result<Vec<String>, String> {
    // One shard, so `max_items` is not split across shards.
    let mut sets = vec!["analyzer.shards=1".to_owned()];
    match processor {
        Processor::ServiceGraph => {
            let p = "analyzer.service_graph";
            for (k, v) in cfg {
                match k.as_str() {
                    "wait" => {
                        let w = v.as_str().ok_or("wait is not a duration string")?;
                        sets.push(format!("{p}.wait={w}"));
                    }
                    "max_items" => sets.push(format!("{p}.max_items={}", yaml(v))),
                    // Tempo's expiry goroutines; Tidewatch expires on its own tick and before every scrape.
                    "workers" => {}
                    "histogram_buckets" => sets.push(format!("{p}.buckets={}", buckets(v)?)),
                    "histogram_mode" => require(
                        k,
                        v,
                        &"classic".into(),
                        "Tidewatch exposes classic histograms only",
                    )?,
                    "dimensions"
                    | "peer_attributes"
                    | "database_name_attributes"
                    | "enable_client_server_prefix"
                    | "enable_messaging_system_latency_histogram"
                    | "enable_virtual_node_label"
                    | "span_multiplier_key" => sets.push(format!("{p}.{k}={}", yaml(v))),
                    "enable_tracestate_span_multiplier" => require(
                        k,
                        v,
                        &false.into(),
                        "Tidewatch reads the sampling multiplier from span_multiplier_key only",
                    )?,
                    "filter_policies" => require(k, v, &Value::Array(vec![]), "not a Tidewatch option")?,
                    "subprocessors" => {
                        for (sub, on) in v.as_object().expect("subprocessors object") {
                            let ours = match sub.as_str() {
                                "request" => "request_metrics",
                                "latency" => "latency_metrics",
                                "connection_info" => "connection_info",
                                other => return Err(format!("unknown service-graph subprocessor `{other}`")),
                            };
                            sets.push(format!("{p}.{ours}={}", yaml(on)));
                        }
                    }
                    other => return Err(format!("unknown Tempo service-graph option `{other}`")),
                }
            }
        }
        Processor::SpanMetrics => {
            let p = "analyzer.span_metrics";
            // Tempo's `traces_spanmetrics_latency` is in seconds.
            sets.push(format!("{p}.unit=s"));
            for (k, v) in cfg {
                match k.as_str() {
                    "histogram_buckets" => sets.push(format!("{p}.buckets={}", buckets(v)?)),
                    "histogram_mode" => require(
                        k,
                        v,
                        &"classic".into(),
                        "Tidewatch exposes classic histograms only",
                    )?,
                    "dimensions" => sets.push(format!("{p}.dimensions={}", yaml(v))),
                    "intrinsic_dimensions" => require(
                        k,
                        v,
                        &serde_json::json!({"service": true, "span_name": true, "span_kind": true,
                                            "status_code": true, "status_message": false}),
                        "Tidewatch always labels by service, span name, kind and status code, never by message",
                    )?,
                    "dimension_mappings" | "filter_policies" => {
                        require(k, v, &Value::Array(vec![]), "not a Tidewatch span-metrics option")?
                    }
                    "enable_target_info" | "enable_tracestate_span_multiplier" => {
                        require(k, v, &false.into(), "not a Tidewatch span-metrics option")?
                    }
                    "span_multiplier_key" => {
                        require(k, v, &"".into(), "Tidewatch's span metrics count every span once")?
                    }
                    // Only shape `traces_target_info` and its labels, which are off above.
                    "target_info_excluded_dimensions" | "enable_instance_label" => {}
                    "subprocessors" => {
                        for (sub, on) in v.as_object().expect("subprocessors object") {
                            match sub.as_str() {
                                // Calls and latency are always exposed.
                                "count" | "latency" => require(
                                    sub,
                                    on,
                                    &true.into(),
                                    "Tidewatch always exposes calls and latency",
                                )?,
                                // `traces_spanmetrics_size_total` is not exposed; no assertion reads it
                                // (one that did would fail to map its metric name).
                                "size" => {}
                                other => return Err(format!("unknown span-metrics subprocessor `{other}`")),
                            }
                        }
                    }
                    other => return Err(format!("unknown Tempo span-metrics option `{other}`")),
                }
            }
        }
    }
    Ok(sets)
}

/// Tempo's metric name and labels as Tidewatch exposes them.
fn map_series(name: &str, labels: &Map<String, Value>) -> Result<(String, Vec<(String, String)>), String> {
    let mut rename_service = false;
    let ours = match name {
        n if n.starts_with("traces_service_graph_") => n.to_owned(),
        "tempo_metrics_generator_processor_service_graphs_edges" => {
            "tidewatch_service_graph_edges_total".into()
        }
        "tempo_metrics_generator_processor_service_graphs_expired_edges" => {
            "tidewatch_service_graph_expired_edges_total".into()
        }
        "tempo_metrics_generator_processor_service_graphs_dropped_spans" => {
            "tidewatch_service_graph_dropped_spans_total".into()
        }
        "traces_spanmetrics_calls_total" => {
            rename_service = true;
            "traces_span_metrics_calls_total".into()
        }
        n if n.starts_with("traces_spanmetrics_latency_") => {
            rename_service = true;
            n.replace(
                "traces_spanmetrics_latency_",
                "traces_span_metrics_duration_seconds_",
            )
        }
        other => return Err(format!("no Tidewatch series for Tempo's `{other}`")),
    };
    let mut out = Vec::new();
    for (k, v) in labels {
        let v = v.as_str().ok_or_else(|| format!("label {k} is not a string"))?;
        match k.as_str() {
            // Tempo's self-metrics are per tenant; Tidewatch's are per process, and each case has its own.
            "tenant" if ours.starts_with("tidewatch_") => {}
            "service" if rename_service => out.push(("service_name".into(), v.into())),
            _ => out.push((k.clone(), v.into())),
        }
    }
    Ok((ours, out))
}

fn fmt_labels(labels: &[(String, String)]) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

/// Checks one expectation on a scrape; returns a mismatch description.
fn check(case: &str, m: &crate::common::Metrics, exp: &Value) -> Result<(), String> {
    match exp["source"].as_str() {
        Some("test_registry" | "process_self_metric") => {}
        Some("return_value") => {
            let kind = exp["error_type"].as_str().unwrap_or("?");
            let Some(&(_, _, counter, want)) = CONSUME_ERRORS.iter().find(|c| c.0 == case && c.1 == kind)
            else {
                return Err(format!(
                    "consume() returns {kind} in Tempo, and CONSUME_ERRORS has no Tidewatch counterpart for it"
                ));
            };
            return match m.get(counter, &[]) {
                Some(g) if g == want => Ok(()),
                got => Err(format!(
                    "Tempo's consume() returns {kind} (dropped {want} spans): {counter} expected {want}, got {}",
                    got.map_or("absent".to_owned(), |g| g.to_string())
                )),
            };
        }
        other => return Err(format!("unknown expectation source {other:?}")),
    }
    let tempo_name = exp["metric"].as_str().ok_or("expectation without metric")?;
    let (name, labels) = map_series(
        tempo_name,
        exp["labels"].as_object().ok_or("expectation without labels")?,
    )?;
    let want = exp["value"].as_f64().ok_or("expectation without value")?;
    let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let got = m.get(&name, &pairs);
    let ok = match exp["compare"].as_str() {
        // Exact float equality, as assert.Equal; Tempo's test registry reads an absent series as 0.
        Some("equal") => got.map_or(want == 0.0, |g| g == want),
        Some("in_delta") => {
            let delta = exp["delta"].as_f64().ok_or("in_delta without delta")?;
            got.is_some_and(|g| (g - want).abs() <= delta)
        }
        other => return Err(format!("unknown compare {other:?}")),
    };
    if ok {
        Ok(())
    } else {
        let delta = exp["delta"]
            .as_f64()
            .map(|d| format!(" ±{d}"))
            .unwrap_or_default();
        Err(format!(
            "{name}{} (Tempo: {tempo_name}): expected {want}{delta}, got {}",
            fmt_labels(&labels),
            got.map_or("absent".to_owned(), |g| g.to_string())
        ))
    }
}

/// Every span object of an ExportTraceServiceRequest.
fn spans_mut(body: &mut Value) -> impl Iterator<Item = &mut Value> {
    body["resourceSpans"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .flat_map(|rs| rs["scopeSpans"].as_array_mut().into_iter().flatten())
        .flat_map(|ss| ss["spans"].as_array_mut().into_iter().flatten())
}

fn id_missing(span: &Value, key: &str) -> bool {
    span.get(key).and_then(Value::as_str).is_none_or(str::is_empty)
}

/// Applies the Go test's `input_mutation`.
fn mutate(body: &mut Value, m: &Value) -> Result<(), String> {
    match (m["op"].as_str(), m["applies_to"].as_str()) {
        (Some("append_span_attribute"), Some("every span")) => {
            for span in spans_mut(body) {
                let attrs = span
                    .as_object_mut()
                    .ok_or("span is not an object")?
                    .entry("attributes")
                    .or_insert_with(|| Value::Array(vec![]));
                attrs
                    .as_array_mut()
                    .ok_or("attributes is not a list")?
                    .push(m["attribute"].clone());
            }
            Ok(())
        }
        _ => Err(format!("unknown input_mutation {m}")),
    }
}

/// Posts a body; returns the HTTP status and `partialSuccess.rejectedSpans` (0 when absent).
fn post(tw: &crate::common::Tidewatch, body: Vec<u8>) -> (u16, i64, String) {
    let r = tw.post("/v1/traces", "application/json", body, &[]);
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    let rejected = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            let n = v.get("partialSuccess")?.get("rejectedSpans")?.clone();
            n.as_i64().or_else(|| n.as_str()?.parse().ok())
        })
        .unwrap_or(0);
    (status, rejected, text)
}

fn run_case(case: &Case) -> Outcome {
    let mut out = Outcome::default();
    let name = case.name();
    let spec = &case.spec;
    let cfg = effective_config(&spec["tempo_config"]);
    let listed = NOT_SUPPORTED.iter().find(|(n, _)| *n == name);
    let sets = match (translate(case.processor, &cfg), listed) {
        (Ok(sets), None) => sets,
        (Err(why), Some((_, reason))) => {
            out.not_supported = Some(format!("{reason}; this case sets {why}"));
            return out;
        }
        (Err(why), None) => {
            out.failures
                .push(format!("not supported, and not listed in NOT_SUPPORTED: {why}"));
            return out;
        }
        (Ok(_), Some(_)) => {
            out.failures
                .push("listed in NOT_SUPPORTED, but its configuration translates: remove the entry".into());
            return out;
        }
    };

    // "Expire" is reproduced by wait=1ns and the expiry `/metrics` does before its snapshot.
    let expire = spec["procedure"].as_array().into_iter().flatten().any(|p| {
        let p = p.as_str().unwrap_or("").to_ascii_lowercase();
        p.contains("expire every") || p.contains("expire()")
    });
    let wait = cfg.get("wait").and_then(Value::as_str).unwrap_or("10s");
    if expire != (wait == "1ns") {
        out.failures.push(format!(
            "procedure {} expiry but wait is {wait}: cannot reproduce it",
            if expire { "asks for" } else { "does not ask for" }
        ));
        return out;
    }

    let raw = std::fs::read(&case.fixture).unwrap_or_else(|e| panic!("{}: {e}", case.fixture.display()));
    let mut body: Value = serde_json::from_slice(&raw).expect("fixture JSON");
    let mut changed = false;
    if let Some(m) = spec.get("input_mutation") {
        if let Err(e) = mutate(&mut body, m) {
            out.failures.push(e);
            return out;
        }
        changed = true;
    }
    let missing_ids = spans_mut(&mut body)
        .filter(|s| id_missing(s, "traceId") || id_missing(s, "spanId"))
        .count();
    let fill_ids = IDS_FILLED.iter().any(|(n, _)| *n == name);
    if (missing_ids > 0) != fill_ids {
        out.failures.push(format!(
            "{missing_ids} span(s) without trace or span id, but the case is {}listed in IDS_FILLED",
            if fill_ids { "" } else { "not " }
        ));
        return out;
    }

    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let tw = crate::common::Tidewatch::start(&refs);

    if fill_ids {
        // As sent by the Go test: the receiver must refuse exactly the spans without ids, with 200 and a
        // partial success, as the OTLP specification asks.
        let (status, rejected, text) = post(&tw, serde_json::to_vec(&body).unwrap());
        out.protocol_checks += 1;
        if status != 200 || rejected != missing_ids as i64 {
            out.failures.push(format!(
                "unchanged input (spans without ids, which the OTLP spec makes invalid): expected 200 with \
                 partialSuccess.rejectedSpans={missing_ids}, got {status} {text}"
            ));
        }
        for span in spans_mut(&mut body) {
            for (key, id) in [("traceId", FILL_TRACE_ID), ("spanId", FILL_SPAN_ID)] {
                if id_missing(span, key) {
                    span[key] = id.into();
                }
            }
        }
        changed = true;
    }

    let payload = if changed {
        serde_json::to_vec(&body).unwrap()
    } else {
        raw
    };
    let (status, rejected, text) = post(&tw, payload);
    out.protocol_checks += 1;
    if status != 200 || rejected != 0 {
        out.failures.push(format!(
            "push: expected 200 with every span accepted, got {status} {text}"
        ));
    }

    let metrics = tw.metrics();
    for exp in spec["expect"].as_array().expect("expect list") {
        out.assertions += 1;
        if let Err(e) = check(name, &metrics, exp) {
            out.failures.push(e);
        }
    }
    if !out.failures.is_empty() {
        out.failures.push(format!("--set {}", sets.join(" --set ")));
    }
    out
}

#[test]
fn golden_fixtures() {
    let cases = load_cases();
    for (n, _) in NOT_SUPPORTED.iter().chain(IDS_FILLED) {
        assert!(
            cases.iter().any(|c| c.name() == *n),
            "table entry `{n}` names no case"
        );
    }
    for (n, ..) in CONSUME_ERRORS {
        assert!(
            cases.iter().any(|c| c.name() == *n),
            "CONSUME_ERRORS entry `{n}` names no case"
        );
    }

    // A few cases at a time, each with its own process.
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..cases.len()).map(|_| None).collect());
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 6);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let outcome = run_case(case);
                    results.lock().unwrap()[i] = Some(outcome);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();

    let (mut ran, mut assertions, mut protocol, mut unsupported) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for (case, outcome) in cases.iter().zip(results) {
        let o = outcome.expect("every case ran");
        let label = format!("{} :: {}", case.file, case.name());
        if let Some(why) = &o.not_supported {
            unsupported += 1;
            println!("NOT SUPPORTED {label}: {why}");
            continue;
        }
        ran += 1;
        assertions += o.assertions;
        protocol += o.protocol_checks;
        let note = IDS_FILLED
            .iter()
            .find(|(n, _)| *n == case.name())
            .map(|(_, why)| format!(" [ids filled in: {why}]"))
            .unwrap_or_default();
        if o.failures.is_empty() {
            println!("ok   {label} ({} assertions){note}", o.assertions);
        } else {
            println!("FAIL {label}{note}");
            for f in &o.failures {
                println!("       {f}");
                failures.push(format!("{label}: {f}"));
            }
        }
    }
    println!(
        "golden: {ran} cases, {assertions} assertions checked (+{protocol} protocol checks), {unsupported} cases not supported"
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
