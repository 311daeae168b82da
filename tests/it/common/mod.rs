//! Test harness: the real `tidewatch` binary on free loopback ports, and readers for what it serves.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod kafka;
pub mod kube;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `../shared` beside the project: fixtures and benchmark data.
pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// The binary under test, as a command to add arguments to.
pub fn tidewatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tidewatch"))
}

/// `tidewatch loadgen` aimed at `tw`'s OTLP/gRPC port: `rate` spans per second in requests of `batch`
/// spans. Add the duration and anything else; its report on stdout is discarded unless asked for.
pub fn loadgen(tw: &Tidewatch, rate: u32, batch: u32) -> Command {
    let mut cmd = tidewatch();
    cmd.args(["loadgen", "--endpoint", &format!("http://{}", tw.grpc)])
        .args(["--rate", &rate.to_string(), "--batch", &batch.to_string()])
        .stdout(Stdio::null());
    cmd
}

/// The report a finished `tidewatch loadgen --json` printed last, once it exited successfully.
pub fn loadgen_report(out: std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("loadgen's report {last:?}: {e}"))
}

/// A child process (loadgen, Prometheus, …) killed and reaped when dropped.
pub struct Guard(Child);

impl Guard {
    pub fn spawn(cmd: &mut Command) -> Guard {
        Guard(cmd.spawn().expect("start a test process"))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback (bound, then released for the process that will listen on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Polls `check` every 100 ms until it returns `Ok`, for at most `within` (generous: a busy machine is
/// slow, and the wait ends as soon as the condition holds). A timeout panics with `what` and the last
/// `Err`: what was seen instead.
pub fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; instead: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A real Prometheus (Debian's package, `bench/peers/install.sh prometheus`) scraping `tw`'s web port
/// every second, on a free port; stopped when dropped.
pub struct Prometheus {
    pub port: u16,
    _child: Guard,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn scraping(tw: &Tidewatch) -> Prometheus {
        let bin = Path::new("/usr/bin/prometheus");
        assert!(
            bin.exists(),
            "{} missing: run `bench/peers/install.sh prometheus` (tests/run.sh does)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: tidewatch\n    static_configs: [{{targets: ['{}']}}]\n", tw.web),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = Guard::spawn(
            Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        Prometheus {
            port,
            _child: child,
            _dir: dir,
        }
    }
}

/// A running `tidewatch run`, stopped (SIGTERM, then killed) when dropped.
pub struct Tidewatch {
    child: Child,
    pub grpc: String,
    pub http: String,
    pub web: String,
    pub stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tidewatch {
    /// Starts with every listener on 127.0.0.1:0 and these `--set` overrides.
    pub fn start(sets: &[&str]) -> Tidewatch {
        Tidewatch::start_with(sets, &[])
    }

    pub fn start_with(sets: &[&str], env: &[(&str, &str)]) -> Tidewatch {
        Tidewatch::spawn(&["run"], sets, env, Duration::from_secs(10))
    }

    /// Starts `tidewatch demo` with `args` and these `--set` overrides; waits up to `ready_within` for
    /// it to be ready (its backfill comes first).
    /// `tidewatch demo` run fast (2 s windows and reconciles, 2-minute simulated days, 3 days of backfill,
    /// 2 s cold starts) with `incidents`, as the demo and browser tests run it.
    pub fn start_fast_demo(incidents: &[&str]) -> Tidewatch {
        let mut args = vec![
            "--rate",
            "1000",
            "--day",
            "2m",
            "--backfill",
            "3",
            "--cold-start",
            "2s",
        ];
        for i in incidents {
            args.extend(["--incident", i]);
        }
        let sets = [
            "analyzer.window=2s",
            "scaler.interval=2s",
            "analyzer.forecast.step=10s",
            "analyzer.forecast.horizon=2m",
        ];
        // The backfill comes before readiness: 3 days of 2 minutes at 2 s windows.
        Tidewatch::start_demo(&args, &sets, Duration::from_secs(600))
    }

    pub fn start_demo(args: &[&str], sets: &[&str], ready_within: Duration) -> Tidewatch {
        let command: Vec<&str> = std::iter::once("demo").chain(args.iter().copied()).collect();
        Tidewatch::spawn(&command, sets, &[], ready_within)
    }

    fn spawn(command: &[&str], sets: &[&str], env: &[(&str, &str)], ready_within: Duration) -> Tidewatch {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = dir.path().join("stderr.log");
        let mut cmd = tidewatch();
        cmd.args(command);
        // History goes to the test's own directory unless the test names one (later --set flags win).
        let data_dir = format!("analyzer.store.data_dir={}", dir.path().join("data").display());
        for s in [
            "collector.grpc.endpoint=127.0.0.1:0",
            "collector.http.endpoint=127.0.0.1:0",
            "web.endpoint=127.0.0.1:0",
            data_dir.as_str(),
        ]
        .iter()
        .chain(sets)
        {
            cmd.arg("--set").arg(s);
        }
        // RUST_LOG=info unless the test's own environment says otherwise.
        cmd.env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        let mut child = cmd.spawn().expect("start tidewatch");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("read start line");
        // The rest of stdout (the demo prints as it goes) is kept beside stderr, so the pipe never closes
        // under a writer.
        let rest = dir.path().join("stdout.log");
        if let Ok(mut f) = std::fs::File::create(&rest) {
            std::thread::spawn(move || std::io::copy(&mut out, &mut f));
        }
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| {
                    panic!(
                        "no {k}= in start line {line:?}; stderr: {}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    )
                })
                .to_owned()
        };
        let tw = Tidewatch {
            grpc: field("grpc"),
            http: field("http"),
            web: field("web"),
            child,
            stderr,
            _dir: dir,
        };
        tw.wait_ready(sets.iter().any(|s| s.starts_with("web.tls")), ready_within);
        tw
    }

    /// Polls `/readyz`, over HTTPS when the web port has TLS (the certificate is not what this checks).
    fn wait_ready(&self, https: bool, within: Duration) {
        let client = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .expect("client");
        let url = format!("{}://{}/readyz", if https { "https" } else { "http" }, self.web);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(r) = client.get(&url).send()
                && r.status().is_success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("tidewatch not ready: {}", self.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// POSTs to the OTLP/HTTP port.
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> reqwest::blocking::Response {
        let mut req = reqwest::blocking::Client::new()
            .post(format!("http://{}{path}", self.http))
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().expect("POST to tidewatch")
    }

    pub fn get_web(&self, path: &str) -> reqwest::blocking::Response {
        reqwest::blocking::get(format!("http://{}{path}", self.web)).expect("GET from tidewatch")
    }

    /// GETs `path` from the web port as JSON: the status, and the body (`Null` if it is not JSON).
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.get_web(path);
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// Polls `path` until it answers 200 with a body `ok` accepts, for at most `within`.
    pub fn wait_json(
        &self,
        path: &str,
        within: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(path, within, || match self.get_json(path) {
            (200, v) if ok(&v) => Ok(v),
            (status, v) => Err(format!("{status} {v}")),
        })
    }

    pub fn metrics(&self) -> Metrics {
        let r = self.get_web("/metrics");
        assert!(r.status().is_success(), "/metrics: {}", r.status());
        Metrics::parse(&r.text().expect("metrics body"))
    }

    /// The process id, for `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no shutdown, no final save) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("tidewatch did not stop on SIGTERM: {}", self.logs());
    }
}

impl Drop for Tidewatch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The Prometheus text `/metrics` served, parsed.
#[derive(Debug)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}').expect("closing brace"))),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the series with exactly these labels (labels with an empty value count as absent).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// The sum over series of `name` whose labels include these.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    pub fn items(&self, signal: &str, outcome: &str) -> f64 {
        self.get(
            "tidewatch_collector_items_total",
            &[("signal", signal), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"").expect("label");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => break,
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').to_owned(), value);
        rest = after[end..].trim_start_matches(',');
    }
    out
}

/// Python with the OpenTelemetry SDK (installed by `.ci/run` or `bench/peers/install.sh python`).
pub fn python() -> Command {
    let py = std::env::var("TIDEWATCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc, opentelemetry.exporter.otlp.proto.http"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} lacks the OpenTelemetry SDK: run `bench/peers/install.sh python` (CI does)"
    );
    Command::new(py)
}

/// An OTLP/JSON traces request for `service`: one 5 ms server span named `name` per (trace id, span id).
pub fn json_traces<T: AsRef<str>>(service: &str, name: &str, ids: &[(T, T)]) -> Vec<u8> {
    let spans: Vec<serde_json::Value> = ids
        .iter()
        .map(|(t, s)| {
            serde_json::json!({"traceId": t.as_ref(), "spanId": s.as_ref(), "name": name, "kind": 2,
                "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000005000000"})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": spans}]}]}))
    .expect("JSON")
}

/// `n` such spans whose trace and span ids count up from `first`.
pub fn numbered_json_traces(service: &str, name: &str, first: u32, n: u32) -> Vec<u8> {
    let ids: Vec<(String, String)> = (first..first + n)
        .map(|id| (format!("{id:032x}"), format!("{id:016x}")))
        .collect();
    json_traces(service, name, &ids)
}

/// Quarter-second windows (the detectors warm up in about eight seconds), so a test of the models runs in
/// seconds.
pub const FAST_WINDOWS: [&str; 3] = [
    "analyzer.window=250ms",
    "analyzer.store.rollup_step=1s",
    "analyzer.health.min_requests=10",
];
