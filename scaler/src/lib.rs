//! Tidewatch's Kubernetes side: the `ServicePolicy` operator.
//!
//! - `crd`: the custom resource, generated into `deploy/crds/`.
//! - `hpa` and `behavior`: the Kubernetes HPA v2 algorithm reproduced exactly, the reactive floor under
//!   every predictive answer.
//! - `calibrate`: the forecast's margin learned from its realised errors (conformal), logged with each
//!   decision that uses it.
//! - `decide` and `heal`: pure decisions from explicit inputs, so the reconciler, the simulator and the
//!   replay of the decision log all run the same code.

pub mod behavior;
pub mod board;
pub mod calibrate;
pub mod capacity;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod decisions;
pub mod heal;
pub mod hpa;
pub mod leader;
pub mod sim_cluster;
pub mod simulate;
pub mod telemetry;

/// Errors of the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("decision log {path}: {source}")]
    DecisionLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("ServicePolicy {0} has no namespace")]
    NoNamespace(String),
    #[error("target {kind}/{name}: {why}")]
    Target { kind: String, name: String, why: String },
    #[error("{0}")]
    Config(String),
    #[error("Kubernetes API call timed out after {0:?}")]
    Timeout(std::time::Duration),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
