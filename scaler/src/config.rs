//! The `scaler:` section of the configuration. The operator is off unless `enabled` is set, so
//! `tidewatch run` on its defaults needs no cluster.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalerConfig {
    /// Run the ServicePolicy operator.
    pub enabled: bool,
    /// A kubeconfig file; none means the usual inference (`KUBECONFIG`, `~/.kube/config`, in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Watch ServicePolicies in this namespace only; none watches all namespaces.
    pub namespace: Option<String>,
    /// How often each ServicePolicy is reconciled (the HPA's sync period is 15 s).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The append-only decision log (JSON lines); none puts it at `<analyzer.store.data_dir>/decisions.jsonl`,
    /// or keeps it in memory only when there is no data dir.
    pub decision_log: Option<PathBuf>,
    /// The log file is rotated (one previous file kept) past this many bytes.
    pub decision_log_max_bytes: u64,
    /// Timeout of each Kubernetes API call.
    #[serde(with = "humantime_serde")]
    pub api_timeout: Duration,
    pub leader_election: LeaderElectionConfig,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            enabled: false,
            kubeconfig: None,
            namespace: None,
            interval: Duration::from_secs(15),
            decision_log: None,
            decision_log_max_bytes: 64 << 20,
            api_timeout: Duration::from_secs(10),
            leader_election: LeaderElectionConfig::default(),
        }
    }
}

/// Only the holder of a Lease reconciles, so several replicas of Tidewatch never act twice.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderElectionConfig {
    pub enabled: bool,
    pub lease_name: String,
    /// Namespace of the Lease; none uses `POD_NAMESPACE`, else `default`.
    pub namespace: Option<String>,
    /// How long a lease lasts without renewal; renewals happen every third of it.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: false,
            lease_name: "tidewatch-operator".into(),
            namespace: None,
            lease_duration: Duration::from_secs(15),
        }
    }
}

impl ScalerConfig {
    /// Adds every problem to `errors`, each naming its field.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.interval < Duration::from_secs(1) {
            errors.push("scaler.interval: must be at least 1s".into());
        }
        if self.api_timeout.is_zero() {
            errors.push("scaler.api_timeout: must be longer than zero".into());
        }
        if self.decision_log_max_bytes < 4096 {
            errors.push("scaler.decision_log_max_bytes: must be at least 4096".into());
        }
        if self.leader_election.lease_duration < Duration::from_secs(3) {
            errors.push("scaler.leader_election.lease_duration: must be at least 3s".into());
        }
        if self.leader_election.lease_name.is_empty() {
            errors.push("scaler.leader_election.lease_name: must not be empty".into());
        }
    }
}
