//! The analyzer's part of the configuration. Every struct has one `Default` (the single source of defaults)
//! and rejects unknown fields; `validate` reports every problem at once, each naming its field.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written in config as a number or with a unit: `64MiB`, `512KiB`, `1GiB`, `1000B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n * 1024 * 1024)
    }

    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 64MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The unit latency histograms are exposed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum LatencyUnit {
    /// Milliseconds (`..._duration_milliseconds`), the spanmetrics connector's default name.
    #[serde(rename = "ms")]
    Milliseconds,
    /// Seconds (`..._duration_seconds`): Prometheus' base unit (`promtool check metrics` insists), Tempo's
    /// choice and the connector's `unit: s`. The default.
    #[default]
    #[serde(rename = "s")]
    Seconds,
}

impl LatencyUnit {
    pub fn nanos(self) -> f64 {
        match self {
            LatencyUnit::Milliseconds => 1e6,
            LatencyUnit::Seconds => 1e9,
        }
    }

    /// The suffix in metric names.
    pub fn suffix(self) -> &'static str {
        match self {
            LatencyUnit::Milliseconds => "milliseconds",
            LatencyUnit::Seconds => "seconds",
        }
    }
}

/// RED (span metrics) settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedConfig {
    /// Histogram bucket upper bounds.
    #[serde(with = "duration_list")]
    pub buckets: Vec<Duration>,
    pub unit: LatencyUnit,
    /// Span attributes added as extra labels (dots become underscores in Prometheus).
    pub dimensions: Vec<String>,
    /// Series one service may create; spans past it land in the service's overflow series.
    pub max_series_per_service: usize,
    /// (service, pod) pairs each shard tracks for per-pod RED (a service's pods are on its shard); new pods
    /// past it are not tracked per pod.
    pub max_pods: usize,
}

impl Default for RedConfig {
    fn default() -> RedConfig {
        // The spanmetrics connector's default buckets.
        let ms = [
            2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10_000, 15_000,
        ];
        RedConfig {
            buckets: ms.iter().map(|&m| Duration::from_millis(m)).collect(),
            unit: LatencyUnit::Seconds,
            dimensions: Vec::new(),
            max_series_per_service: 2000,
            max_pods: 10_000,
        }
    }
}

impl RedConfig {
    /// Bucket bounds in the exposition unit.
    pub fn bounds(&self) -> Vec<f64> {
        self.buckets
            .iter()
            .map(|d| d.as_nanos() as f64 / self.unit.nanos())
            .collect()
    }

    fn validate(&self, errors: &mut Vec<String>) {
        check_buckets("analyzer.span_metrics.buckets", &self.buckets, errors);
        if self.max_series_per_service == 0 {
            errors.push("analyzer.span_metrics.max_series_per_service: must be at least 1".into());
        }
    }
}

/// Service graph settings (the servicegraph connector's and Tempo's options).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphConfig {
    /// How long half an edge waits for its other half.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Unpaired halves kept per shard; past it new halves are dropped and counted.
    pub max_items: usize,
    /// Latency histogram bounds (always exposed in seconds, as Tempo and the connector do).
    #[serde(with = "duration_list")]
    pub buckets: Vec<Duration>,
    /// Span attributes copied onto edges as extra labels (`client_`/`server_` prefixed when asked).
    pub dimensions: Vec<String>,
    pub enable_client_server_prefix: bool,
    /// Attributes naming an uninstrumented peer of a client or producer span, in order of preference.
    pub peer_attributes: Vec<String>,
    /// Attributes naming the database of a database client span, in order of preference.
    pub database_name_attributes: Vec<String>,
    /// Expose `traces_service_graph_request_messaging_system_seconds` for messaging edges.
    pub enable_messaging_system_latency_histogram: bool,
    /// Label edges to virtual nodes with `virtual_node="client"|"server"`.
    pub enable_virtual_node_label: bool,
    /// Expose `traces_service_graph_request_total` and `_request_failed_total`.
    pub request_metrics: bool,
    /// Expose the client and server latency histograms.
    pub latency_metrics: bool,
    /// Expose the `traces_service_graph_connection_info` gauge.
    pub connection_info: bool,
    /// Span (then resource) attribute holding a sampling probability p; the edge then counts 1/p calls.
    pub span_multiplier_key: String,
}

impl Default for GraphConfig {
    fn default() -> GraphConfig {
        GraphConfig {
            wait: Duration::from_secs(10),
            max_items: 10_000,
            // The servicegraph connector's buckets (2 ms to 15 s): Tempo's default starts at 100 ms, which
            // puts every fast call in the first bucket and makes its p95 meaningless.
            buckets: [
                2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10_000, 15_000,
            ]
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect(),
            dimensions: Vec::new(),
            enable_client_server_prefix: false,
            peer_attributes: ["peer.service", "db.name", "db.system", "db.system.name"]
                .map(String::from)
                .into(),
            database_name_attributes: ["db.namespace", "db.name", "db.system", "db.system.name"]
                .map(String::from)
                .into(),
            enable_messaging_system_latency_histogram: false,
            enable_virtual_node_label: false,
            request_metrics: true,
            latency_metrics: true,
            connection_info: false,
            span_multiplier_key: String::new(),
        }
    }
}

impl GraphConfig {
    pub fn bounds(&self) -> Vec<f64> {
        self.buckets.iter().map(Duration::as_secs_f64).collect()
    }

    fn validate(&self, errors: &mut Vec<String>) {
        check_buckets("analyzer.service_graph.buckets", &self.buckets, errors);
        if self.max_items == 0 {
            errors.push("analyzer.service_graph.max_items: must be at least 1".into());
        }
    }
}

/// The history: retention, rollups, persistence.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Where the history is saved as Parquet and read back at start; none keeps it in memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// How long per-window rows are kept.
    #[serde(with = "humantime_serde")]
    pub raw_retention: Duration,
    /// Older rows are rolled up into buckets this long.
    #[serde(with = "humantime_serde")]
    pub rollup_step: Duration,
    /// How long rolled-up rows are kept.
    #[serde(with = "humantime_serde")]
    pub rollup_retention: Duration,
    /// How often the history is written to `data_dir` (also at shutdown): the most a crash can lose.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Rows held in memory, raw and rolled up, over every table; past it the oldest rows go first, whatever
    /// the retentions say.
    pub max_rows: usize,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            data_dir: Some("data".into()),
            raw_retention: Duration::from_secs(3600),
            rollup_step: Duration::from_secs(60),
            rollup_retention: Duration::from_secs(24 * 3600),
            snapshot_interval: Duration::from_secs(60),
            max_rows: 1_000_000,
        }
    }
}

impl StoreConfig {
    fn validate(&self, window: Duration, errors: &mut Vec<String>) {
        if self.rollup_step < window {
            errors.push(format!(
                "analyzer.store.rollup_step: must be at least the window ({})",
                humantime::format_duration(window)
            ));
        }
        if self.raw_retention < self.rollup_step {
            errors.push("analyzer.store.raw_retention: must be at least rollup_step".into());
        }
        if self.rollup_retention < self.raw_retention {
            errors.push("analyzer.store.rollup_retention: must be at least raw_retention".into());
        }
        if self.max_rows < 1000 {
            errors.push("analyzer.store.max_rows: must be at least 1000".into());
        }
        if self.snapshot_interval < Duration::from_secs(1) {
            errors.push("analyzer.store.snapshot_interval: must be at least 1s".into());
        }
        if let Some(d) = &self.data_dir
            && d.exists()
            && !d.is_dir()
        {
            errors.push(format!(
                "analyzer.store.data_dir: {} is not a directory",
                d.display()
            ));
        }
    }
}

/// Engine settings: shards, queues, memory.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyzerConfig {
    /// Engine shards; 0 means one per available core.
    pub shards: usize,
    /// Batches each shard's queue holds before receivers are told to retry.
    pub queue_batches: usize,
    /// Bytes held by queued and in-work batches before receivers are told to retry.
    pub max_inflight: ByteSize,
    /// Active series of every kind together (services, RED series, pods, edges and the names they refer
    /// to, metric and log series); past it new ones fold into overflow series (see `budget.rs`).
    pub max_series: usize,
    /// Length of a history window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub span_metrics: RedConfig,
    pub service_graph: GraphConfig,
    pub store: StoreConfig,
    pub health: crate::health::HealthConfig,
    /// The scheduled forecast trainer.
    pub forecast: crate::forecast::ForecastConfig,
}

impl Default for AnalyzerConfig {
    fn default() -> AnalyzerConfig {
        AnalyzerConfig {
            shards: 0,
            queue_batches: 256,
            max_inflight: ByteSize::mib(64),
            max_series: 20_000,
            window: Duration::from_secs(10),
            span_metrics: RedConfig::default(),
            service_graph: GraphConfig::default(),
            store: StoreConfig::default(),
            health: crate::health::HealthConfig::default(),
            forecast: crate::forecast::ForecastConfig::default(),
        }
    }
}

impl AnalyzerConfig {
    /// Appends every problem to `errors`, each starting with the field's path.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.queue_batches == 0 {
            errors.push("analyzer.queue_batches: must be at least 1".into());
        }
        if self.max_inflight.0 < 1024 * 1024 {
            errors.push(format!(
                "analyzer.max_inflight: {} is below the minimum of 1MiB",
                self.max_inflight
            ));
        }
        if self.max_series == 0 {
            errors.push("analyzer.max_series: must be at least 1".into());
        }
        if self.window < Duration::from_millis(100) {
            errors.push("analyzer.window: must be at least 100ms".into());
        }
        self.span_metrics.validate(errors);
        self.service_graph.validate(errors);
        self.store.validate(self.window, errors);
        self.health.validate(errors);
        self.forecast.validate(errors);
    }

    /// Shards to run: the configured number, or one per core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

fn check_buckets(field: &str, b: &[Duration], errors: &mut Vec<String>) {
    if b.is_empty() {
        errors.push(format!("{field}: needs at least one bucket"));
    } else if b.windows(2).any(|w| w[0] >= w[1]) {
        errors.push(format!("{field}: bounds must be strictly increasing"));
    }
}

/// `Vec<Duration>` written as humantime strings (`[2ms, 1s]`).
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| humantime::format_duration(*d).to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<humantime_serde::Serde<Duration>>::deserialize(d).map(|v| v.into_iter().map(|x| *x).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize::mib(64));
        assert_eq!("1000".parse::<ByteSize>().unwrap(), ByteSize(1000));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
    }

    #[test]
    fn defaults_are_valid_and_unknown_fields_rejected() {
        let mut errors = Vec::new();
        AnalyzerConfig::default().validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let bad: Result<AnalyzerConfig, _> = serde_yaml::from_str("shard: 2");
        assert!(bad.unwrap_err().to_string().contains("unknown field `shard`"));
    }

    #[test]
    fn validate_names_every_problem() {
        let cfg: AnalyzerConfig = serde_yaml::from_str(
            "queue_batches: 0\nspan_metrics:\n  buckets: [10ms, 5ms]\nservice_graph:\n  max_items: 0\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        cfg.validate(&mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[1].starts_with("analyzer.span_metrics.buckets"));
    }
}
