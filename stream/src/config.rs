//! The `kafka` section (one `Default`, unknown fields rejected, `validate` names every problem). Read only
//! by `--role ingest` and `--role analyze`; `--role all` needs no Kafka.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidewatch_collector::decode::Signal;

/// The Kafka cluster, its topics, the consumer group and where partition checkpoints live.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` (also `TIDEWATCH_KAFKA_BROKERS`, comma-separated).
    pub brokers: Vec<String>,
    pub topics: Topics,
    /// The analyzers' consumer group.
    pub group: String,
    /// How long a produce may wait for the cluster's acknowledgement (`acks=all`) before the receiver
    /// answers 503 / `UNAVAILABLE`; also librdkafka's `message.timeout.ms`.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// How long the group waits for a silent analyzer before moving its partitions to the others.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Partition checkpoints, an `object_store` URL: `file:///shared/dir` or `http(s)://` (WebDAV).
    pub checkpoints: String,
    /// How the clients talk to the brokers.
    pub security: Security,
}

impl Default for KafkaConfig {
    fn default() -> KafkaConfig {
        KafkaConfig {
            brokers: vec!["localhost:9092".into()],
            topics: Topics::default(),
            group: "tidewatch".into(),
            produce_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            checkpoints: "file:///var/lib/tidewatch/checkpoints".into(),
            security: Security::default(),
        }
    }
}

/// Topic names; the OpenTelemetry Collector's kafkaexporter defaults.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub traces: String,
    pub metrics: String,
    pub logs: String,
}

impl Topics {
    /// The topic `signal` goes to.
    pub fn name(&self, signal: Signal) -> &str {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        }
    }

    /// The signal `topic` carries.
    pub fn signal(&self, topic: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|&s| self.name(s) == topic)
    }
}

impl Default for Topics {
    fn default() -> Topics {
        Topics {
            traces: "otlp_spans".into(),
            metrics: "otlp_metrics".into(),
            logs: "otlp_logs".into(),
        }
    }
}

/// `security.protocol` and its settings, as librdkafka names them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    pub protocol: Protocol,
    /// For `sasl_plaintext` and `sasl_ssl`.
    pub sasl: Option<Sasl>,
    /// For `ssl` and `sasl_ssl`: the CA that signed the brokers' certificates, and a client certificate
    /// for mutual TLS.
    pub tls: Option<KafkaTls>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    /// A file holding the password (a mounted Secret), never the password itself.
    pub password_file: PathBuf,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl KafkaConfig {
    /// Every problem, each naming its field under `kafka.`.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.brokers.is_empty() {
            errors.push("kafka.brokers: name at least one broker (host:port)".into());
        }
        for b in &self.brokers {
            let port_ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                errors.push(format!("kafka.brokers: `{b}` is not host:port"));
            }
        }
        for (field, t) in [
            ("traces", &self.topics.traces),
            ("metrics", &self.topics.metrics),
            ("logs", &self.topics.logs),
        ] {
            let ok = !t.is_empty()
                && t.len() <= 249
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                errors.push(format!(
                    "kafka.topics.{field}: `{t}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
                ));
            }
        }
        if self.group.is_empty() {
            errors.push("kafka.group: must not be empty".into());
        }
        if self.produce_timeout < Duration::from_millis(100) {
            errors.push("kafka.produce_timeout: must be at least 100ms".into());
        }
        if self.session_timeout < Duration::from_secs(1) {
            errors.push("kafka.session_timeout: must be at least 1s".into());
        }
        if let Err(e) = url::Url::parse(&self.checkpoints) {
            errors.push(format!(
                "kafka.checkpoints: `{}` is not a URL: {e}",
                self.checkpoints
            ));
        }
        let s = &self.security;
        match (&s.sasl, s.protocol.sasl()) {
            (None, true) => errors.push(format!(
                "kafka.security.sasl: required with protocol {}",
                s.protocol.as_librdkafka()
            )),
            (Some(_), false) => errors.push(format!(
                "kafka.security.sasl: set, but protocol {} does not use SASL",
                s.protocol.as_librdkafka()
            )),
            (Some(sasl), true) => {
                if !MECHANISMS.contains(&sasl.mechanism.as_str()) {
                    errors.push(format!(
                        "kafka.security.sasl.mechanism: `{}` is not one of {}",
                        sasl.mechanism,
                        MECHANISMS.join(", ")
                    ));
                }
                if !sasl.password_file.is_file() {
                    errors.push(format!(
                        "kafka.security.sasl.password_file: {} is not a readable file",
                        sasl.password_file.display()
                    ));
                }
            }
            (None, false) => {}
        }
        if let Some(tls) = &s.tls {
            if !matches!(s.protocol, Protocol::Ssl | Protocol::SaslSsl) {
                errors.push(format!(
                    "kafka.security.tls: set, but protocol {} does not use TLS",
                    s.protocol.as_librdkafka()
                ));
            }
            if tls.cert.is_some() != tls.key.is_some() {
                errors.push("kafka.security.tls: set cert and key together".into());
            }
            for (field, f) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if let Some(f) = f
                    && !f.is_file()
                {
                    errors.push(format!(
                        "kafka.security.tls.{field}: {} is not a readable file",
                        f.display()
                    ));
                }
            }
        }
    }

    /// The librdkafka settings every client of ours shares: brokers and security.
    pub fn client_config(&self) -> std::io::Result<rdkafka::ClientConfig> {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("security.protocol", self.security.protocol.as_librdkafka())
            // Reconnect with backoff, up to 10 s between attempts, while the cluster is away.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "10000");
        if let Some(sasl) = &self.security.sasl {
            let password = std::fs::read_to_string(&sasl.password_file)?;
            c.set("sasl.mechanisms", &sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", password.trim_end_matches(['\n', '\r']));
        }
        if let Some(tls) = &self.security.tls {
            for (key, f) in [
                ("ssl.ca.location", &tls.ca),
                ("ssl.certificate.location", &tls.cert),
                ("ssl.key.location", &tls.key),
            ] {
                if let Some(f) = f {
                    c.set(key, f.display().to_string());
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let mut errors = Vec::new();
        KafkaConfig::default().validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn every_problem_is_named() {
        let cfg = KafkaConfig {
            brokers: vec!["nohost".into()],
            topics: Topics {
                traces: "bad topic".into(),
                ..Topics::default()
            },
            group: String::new(),
            checkpoints: "not a url".into(),
            security: Security {
                protocol: Protocol::SaslSsl,
                sasl: None,
                tls: None,
            },
            ..KafkaConfig::default()
        };
        let mut errors = Vec::new();
        cfg.validate(&mut errors);
        let all = errors.join("\n");
        for field in [
            "kafka.brokers",
            "kafka.topics.traces",
            "kafka.group",
            "kafka.checkpoints",
            "kafka.security.sasl",
        ] {
            assert!(all.contains(field), "{field} missing from {all}");
        }
    }
}
