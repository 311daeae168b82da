//! The whole configuration: one YAML file whose sections belong to the crates that use them.
//!
//! Precedence, lowest first: the defaults (each struct's one `Default`), the file, `TIDEWATCH_*` environment
//! variables, `--set` flags. An override names a field by its path: `--set analyzer.shards=2` or
//! `TIDEWATCH_ANALYZER__SHARDS=2` (`__` between levels); its value is read as YAML, so numbers, booleans,
//! durations and lists work. Unknown fields are errors, and `validate` reports every problem at once.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use tidewatch_analyzer::config::AnalyzerConfig;
use tidewatch_collector::CollectorConfig;
use tidewatch_collector::config::{TlsConfig, TokenConfig};
use tidewatch_scaler::config::ScalerConfig;
use tidewatch_stream::KafkaConfig;

/// Everything Tidewatch reads at start.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What this process does: everything (`all`), or one side of a Kafka deployment.
    pub role: Role,
    pub collector: CollectorConfig,
    pub analyzer: AnalyzerConfig,
    pub web: WebConfig,
    pub log: LogConfig,
    /// The Kubernetes operator (off unless enabled).
    pub scaler: ScalerConfig,
    /// The Kafka cluster the `ingest` and `analyze` roles share (unused by `all`).
    pub kafka: KafkaConfig,
}

/// `--role`: one process doing everything, or the two halves of a deployment on Kafka.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Receivers, analyzer and web side in one process; no Kafka.
    #[default]
    All,
    /// OTLP receivers producing to Kafka (`kafka.topics.*`).
    Ingest,
    /// A member of the consumer group `kafka.group`, analysing the partitions it is given.
    Analyze,
}

/// The web port: probes, `/metrics`, API and UI.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    pub endpoint: SocketAddr,
    /// Require a token on the UI, the API and (by default) `/metrics`; the probes stay open.
    pub auth: Option<WebAuthConfig>,
    /// Serve the web port over TLS (and require client certificates when `client_ca` is set), so the
    /// token above does not travel in clear text. Probes and scrapers must then use HTTPS.
    pub tls: Option<TlsConfig>,
}

/// `web.auth`: the token (the same [`TokenConfig`], with the same rule, as `collector.auth`) and what it
/// covers.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebAuthConfig {
    #[serde(flatten)]
    pub token: TokenConfig,
    /// Require the token on `/metrics` too (the probes are always open).
    pub protect_metrics: bool,
}

impl Default for WebAuthConfig {
    fn default() -> WebAuthConfig {
        WebAuthConfig {
            token: TokenConfig::default(),
            protect_metrics: true,
        }
    }
}

impl Default for WebConfig {
    fn default() -> WebConfig {
        WebConfig {
            endpoint: SocketAddr::from(([0, 0, 0, 0], 8080)),
            auth: None,
            tls: None,
        }
    }
}

/// Log output.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,tidewatch_collector=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Environment variables that are not config paths.
const ENV_NOT_PATHS: &[&str] = &["TIDEWATCH_CONFIG", "TIDEWATCH_PEERS"];

impl Config {
    /// Loads the file (if any), applies environment and `--set` overrides, and validates.
    pub fn load(file: Option<&Path>, sets: &[String]) -> anyhow::Result<Config> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("TIDEWATCH_"))
            .collect();
        Config::resolve(file, &env, sets)
    }

    fn resolve(file: Option<&Path>, env: &[(String, String)], sets: &[String]) -> anyhow::Result<Config> {
        let mut tree = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let v: Value =
                    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
                if v.is_null() {
                    Value::Mapping(Default::default())
                } else {
                    v
                }
            }
            None => Value::Mapping(Default::default()),
        };
        for (key, value) in env {
            if ENV_NOT_PATHS.contains(&key.as_str()) {
                continue;
            }
            if key == "TIDEWATCH_KAFKA_BROKERS" {
                // A comma-separated list, as Kafka tools take it.
                let list: Vec<&str> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|b| !b.is_empty())
                    .collect();
                let yaml = serde_yaml::to_string(&list).context("TIDEWATCH_KAFKA_BROKERS")?;
                set_path(&mut tree, &["kafka".into(), "brokers".into()], &yaml)
                    .context("environment variable TIDEWATCH_KAFKA_BROKERS")?;
                continue;
            }
            let path: Vec<String> = key["TIDEWATCH_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            set_path(&mut tree, &path, value).with_context(|| format!("environment variable {key}"))?;
        }
        for s in sets {
            let Some((path, value)) = s.split_once('=') else {
                bail!("--set {s}: expected PATH=VALUE, e.g. analyzer.shards=2");
            };
            let path: Vec<String> = path.split('.').map(str::to_owned).collect();
            set_path(&mut tree, &path, value).with_context(|| format!("--set {s}"))?;
        }
        let cfg: Config = serde_yaml::from_value(tree).map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every problem, each naming its field, or Ok.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        self.collector.validate(&mut errors);
        self.analyzer.validate(&mut errors);
        self.scaler.validate(&mut errors);
        self.kafka.validate(&mut errors);
        if self.role == Role::Analyze && self.analyzer.service_graph.wait > self.analyzer.window {
            // A successor replays two windows to rebuild the waiting halves (tidewatch-stream's consumer).
            errors.push(format!(
                "analyzer.service_graph.wait: {} is longer than analyzer.window ({}), which --role analyze needs at most",
                humantime::format_duration(self.analyzer.service_graph.wait),
                humantime::format_duration(self.analyzer.window)
            ));
        }
        if let Some(auth) = &self.web.auth {
            auth.token.validate("web.auth", &mut errors);
        }
        if let Some(tls) = &self.web.tls {
            tls.validate("web.tls", &mut errors);
        }
        let endpoints = [
            (self.collector.grpc.enabled, self.collector.grpc.endpoint),
            (self.collector.http.enabled, self.collector.http.endpoint),
        ];
        if endpoints
            .iter()
            .any(|&(on, e)| on && e == self.web.endpoint && e.port() != 0)
        {
            errors.push(format!(
                "web.endpoint: {} is also an OTLP endpoint",
                self.web.endpoint
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("invalid config:\n  - {}", errors.join("\n  - "))
        }
    }
}

/// Sets `path` in a YAML tree to `raw` read as YAML, creating maps on the way.
fn set_path(tree: &mut Value, path: &[String], raw: &str) -> anyhow::Result<()> {
    let value: Value = serde_yaml::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
    let mut node = tree;
    for (i, key) in path.iter().enumerate() {
        if key.is_empty() {
            bail!("empty field name in path");
        }
        let Value::Mapping(map) = node else {
            bail!("{} is not a section", path[..i].join("."));
        };
        let k = Value::String(key.clone());
        if i == path.len() - 1 {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert_with(|| Value::Mapping(Default::default()));
        if node.is_null() {
            *node = Value::Mapping(Default::default());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_resolve_and_round_trip() {
        let cfg = Config::resolve(None, &[], &[]).unwrap();
        assert_eq!(cfg, Config::default());
        let yaml = serde_yaml::to_string(&cfg).unwrap();
        assert_eq!(serde_yaml::from_str::<Config>(&yaml).unwrap(), cfg);
    }

    #[test]
    fn env_then_set_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "analyzer:\n  shards: 3\n  queue_batches: 7\n").unwrap();
        let cfg = Config::resolve(
            Some(&f),
            &env(&[
                ("TIDEWATCH_ANALYZER__SHARDS", "5"),
                ("TIDEWATCH_CONFIG", "ignored"),
            ]),
            &[
                "analyzer.queue_batches=9".into(),
                "analyzer.service_graph.wait=2s".into(),
            ],
        )
        .unwrap();
        assert_eq!((cfg.analyzer.shards, cfg.analyzer.queue_batches), (5, 9));
        assert_eq!(cfg.analyzer.service_graph.wait, std::time::Duration::from_secs(2));
    }

    #[test]
    fn every_problem_is_named() {
        let err = Config::resolve(
            None,
            &[],
            &[
                "collector.max_body=10".into(),
                "analyzer.queue_batches=0".into(),
                "web.endpoint=0.0.0.0:4317".into(),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("collector.max_body"), "{err}");
        assert!(err.contains("analyzer.queue_batches"), "{err}");
        assert!(err.contains("web.endpoint"), "{err}");
    }

    #[test]
    fn kafka_brokers_come_from_their_own_variable() {
        let cfg = Config::resolve(
            None,
            &env(&[("TIDEWATCH_KAFKA_BROKERS", "k1:9092, k2:9093")]),
            &["role=analyze".into()],
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers, ["k1:9092", "k2:9093"]);
        assert_eq!(cfg.role, Role::Analyze);
        let err = Config::resolve(
            None,
            &[],
            &[
                "role=analyze".into(),
                "analyzer.service_graph.wait=30s".into(),
                "kafka.group=''".into(),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("analyzer.service_graph.wait"), "{err}");
        assert!(err.contains("kafka.group"), "{err}");
    }

    #[test]
    fn both_ports_take_the_same_token_rule_and_hide_the_token() {
        let c = Config::resolve(
            None,
            &env(&[("TIDEWATCH_WEB__AUTH__TOKEN", " web-s3cret-token\n")]),
            &[
                "collector.auth.token=otlp-s3cret".into(),
                "web.auth.protect_metrics=false".into(),
            ],
        )
        .unwrap();
        let web = c.web.auth.as_ref().unwrap();
        assert_eq!(web.token.resolve().unwrap(), "web-s3cret-token");
        assert!(!web.protect_metrics);
        let printed = format!("{c:?}{}", serde_yaml::to_string(&c).unwrap());
        assert!(
            !printed.contains("s3cret") && printed.contains("<redacted>"),
            "{printed}"
        );
        for (set, problem) in [
            (
                "collector.auth.token=' short '",
                "collector.auth.token: must be at least 8",
            ),
            ("web.auth.token=short", "web.auth.token: must be at least 8"),
            (
                "web.auth.protect_metrics=true",
                "web.auth: set token or token_file",
            ),
            ("web.auth.tokn=long-enough", "unknown field `tokn`"),
        ] {
            let err = Config::resolve(None, &[], &[set.into()]).unwrap_err();
            assert!(format!("{err:#}").contains(problem), "{set}: {err:#}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_sets_are_errors() {
        let err = Config::resolve(None, &[], &["analyzer.shardz=2".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `shardz`"), "{err}");
        assert!(Config::resolve(None, &[], &["nonsense".into()]).is_err());
        let err =
            Config::resolve(None, &env(&[("TIDEWATCH_WEB__ENDPOINT", "not-an-address")]), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("invalid"), "{err:#}");
    }
}
