//! The `ServicePolicy` custom resource: what a team asks of Tidewatch for one workload. The YAML in
//! `deploy/crds/` is generated from these types (`tidewatch crdgen`) and checked against them in a test,
//! so the schema the API server enforces and the one the operator reads cannot drift apart.
//!
//! Field defaults follow the Kubernetes HPA wherever the HPA has the same knob, so a policy with only a
//! target, a service name and replica bounds behaves like an HPA plus prediction.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Predictive scaling and self-healing for one Deployment or StatefulSet.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tidewatch.dev",
    version = "v1alpha1",
    kind = "ServicePolicy",
    namespaced,
    status = "ServicePolicyStatus",
    shortname = "svcpol",
    category = "tidewatch",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minReplicas"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxReplicas"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.currentReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct ServicePolicySpec {
    /// The workload to scale and heal.
    pub target_ref: TargetRef,
    /// The `service.name` the workload reports in its telemetry.
    #[x_kube(validation = Rule::new("self != ''").message("service must not be empty"))]
    pub service: String,
    /// Fewest replicas, at least 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Service-level objectives: what counts as a violation.
    #[serde(default)]
    pub slo: Slo,
    /// How much load one replica carries.
    #[serde(default)]
    pub capacity: Capacity,
    /// How fast to move (the HPA's `behavior`, plus a cooldown).
    #[serde(default)]
    pub behavior: Behavior,
    /// Scaling ahead of demand from the forecast.
    #[serde(default)]
    pub prediction: Prediction,
    /// Restarting the pods the models single out.
    #[serde(default)]
    pub healing: Healing,
    /// Decide and report, but change nothing in the cluster.
    #[serde(default)]
    pub dry_run: bool,
}

fn one() -> i32 {
    1
}

/// The scaled workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default)]
    pub kind: TargetKind,
    #[x_kube(validation = Rule::new("self != ''").message("targetRef.name must not be empty"))]
    pub name: String,
}

/// Kinds of workload with a scale subresource that Tidewatch drives.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum TargetKind {
    #[default]
    Deployment,
    StatefulSet,
}

/// Latency quantile an SLO is stated on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum Quantile {
    #[serde(rename = "p50")]
    P50,
    #[default]
    #[serde(rename = "p95")]
    P95,
    #[serde(rename = "p99")]
    P99,
}

/// Service-level objectives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Slo {
    #[serde(default)]
    pub latency_quantile: Quantile,
    /// The quantile must stay at or under this many milliseconds.
    #[serde(default = "default_latency_ms")]
    #[schemars(range(min = 0.0))]
    pub latency_threshold_ms: f64,
    /// The error ratio must stay at or under this share (0–1).
    #[serde(default = "default_error_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_ratio: f64,
}

fn default_latency_ms() -> f64 {
    500.0
}
fn default_error_ratio() -> f64 {
    0.01
}

impl Default for Slo {
    fn default() -> Self {
        Slo {
            latency_quantile: Quantile::P95,
            latency_threshold_ms: default_latency_ms(),
            max_error_ratio: default_error_ratio(),
        }
    }
}

/// Per-replica capacity: the load at which one replica still meets its SLO.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Requests per second one replica serves within the SLO. Learned from telemetry when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub requests_per_replica: Option<f64>,
    /// Share of capacity to run at (the HPA's target utilisation): headroom for noise and cold starts.
    #[serde(default = "default_utilisation")]
    #[schemars(range(min = 0.05, max = 1.0))]
    pub target_utilization: f64,
}

fn default_utilisation() -> f64 {
    0.7
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            requests_per_replica: None,
            target_utilization: default_utilisation(),
        }
    }
}

/// Scaling speed limits, as in the HPA's `spec.behavior`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    #[serde(default = "ScalingRules::default_up")]
    pub scale_up: ScalingRules,
    #[serde(default = "ScalingRules::default_down")]
    pub scale_down: ScalingRules,
    /// Seconds after any scaling action during which no other is taken.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub cooldown_seconds: i32,
    /// Relative distance from 1 within which the reactive usage ratio is left alone (the HPA's 0.1).
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub tolerance: f64,
}

fn default_tolerance() -> f64 {
    crate::hpa::TOLERANCE
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            scale_up: ScalingRules::default_up(),
            scale_down: ScalingRules::default_down(),
            cooldown_seconds: 0,
            tolerance: default_tolerance(),
        }
    }
}

/// One direction's rules (`HPAScalingRules`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Recommendations over this many past seconds are considered: the lowest when scaling up, the
    /// highest when scaling down, so brief swings do not move replicas.
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,
    #[serde(default)]
    pub select_policy: SelectPolicy,
    /// Limits on the change per period; empty means no limit.
    #[serde(default)]
    pub policies: Vec<ScalingPolicy>,
}

impl ScalingRules {
    /// The HPA's default for scaling up: no stabilisation; at most double or +4 pods per 15 s.
    pub fn default_up() -> Self {
        ScalingRules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy {
                    type_: PolicyType::Percent,
                    value: 100,
                    period_seconds: 15,
                },
                ScalingPolicy {
                    type_: PolicyType::Pods,
                    value: 4,
                    period_seconds: 15,
                },
            ],
        }
    }

    /// The HPA's default for scaling down: a 5-minute stabilisation window; anything down to the minimum.
    pub fn default_down() -> Self {
        ScalingRules {
            stabilization_window_seconds: 300,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy {
                type_: PolicyType::Percent,
                value: 100,
                period_seconds: 15,
            }],
        }
    }
}

/// Which policy wins when several apply.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum SelectPolicy {
    /// The policy allowing the largest change.
    #[default]
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// A limit on change within a period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    #[serde(rename = "type")]
    pub type_: PolicyType,
    /// Pods, or percent of the replicas at the start of the period.
    #[schemars(range(min = 1))]
    pub value: i32,
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PolicyType {
    Pods,
    Percent,
}

/// Scaling ahead of demand.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Prediction {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How far ahead replicas must be ready: pod cold start plus metric lag.
    #[serde(default = "default_horizon")]
    #[schemars(range(min = 0, max = 86400))]
    pub horizon_seconds: i32,
    /// The forecast is trusted only when its backtest MASE against seasonal naive is at most this.
    #[serde(default = "default_max_mase")]
    #[schemars(range(min = 0.0))]
    pub max_mase: f64,
}

fn yes() -> bool {
    true
}
fn default_horizon() -> i32 {
    180
}
fn default_max_mase() -> f64 {
    1.0
}

impl Default for Prediction {
    fn default() -> Self {
        Prediction {
            enabled: true,
            horizon_seconds: default_horizon(),
            max_mase: default_max_mase(),
        }
    }
}

/// Restarting pods the models single out as the cause of an anomaly.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Healing {
    #[serde(default)]
    pub enabled: bool,
    /// At most this many restarts per window.
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub max_restarts: i32,
    #[serde(default = "default_heal_window")]
    #[schemars(range(min = 1))]
    pub window_seconds: i32,
    /// Least time between two restarts; doubles after each restart inside the window.
    #[serde(default = "default_backoff")]
    #[schemars(range(min = 0))]
    pub backoff_seconds: i32,
    #[serde(default)]
    pub mode: HealMode,
}

fn default_heal_window() -> i32 {
    3600
}
fn default_backoff() -> i32 {
    300
}

impl Default for Healing {
    fn default() -> Self {
        Healing {
            enabled: false,
            max_restarts: 1,
            window_seconds: default_heal_window(),
            backoff_seconds: default_backoff(),
            mode: HealMode::Evict,
        }
    }
}

/// How a pod is restarted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum HealMode {
    /// The Eviction API: respects PodDisruptionBudgets.
    #[default]
    Evict,
    /// A plain delete: for workloads without a PDB where eviction would be refused forever.
    Delete,
}

/// What the operator last saw and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Requests per second per replica learned from telemetry (when the spec gives none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_capacity: Option<f64>,
    /// The reason of the latest decision, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<String>,
    /// RFC 3339 time of the latest scaling action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Pods restarted within the healing window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts_in_window: Option<i32>,
    /// Ready, Scaling, Healing, Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The CustomResourceDefinition as YAML: what `tidewatch crdgen` prints and `deploy/crds/` holds.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let header = "# Generated by `tidewatch crdgen` from scaler/src/crd.rs: do not edit by hand.\n";
    // Serialising a value we built cannot fail.
    format!(
        "{header}{}",
        serde_yaml::to_string(&ServicePolicy::crd()).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn minimal_policy_takes_the_hpa_defaults() {
        let spec: ServicePolicySpec =
            serde_yaml::from_str("targetRef: {name: checkout}\nservice: checkout\nmaxReplicas: 10\n")
                .unwrap();
        assert_eq!(spec.min_replicas, 1);
        assert_eq!(spec.target_ref.kind, TargetKind::Deployment);
        assert_eq!(spec.behavior, Behavior::default());
        assert_eq!(spec.behavior.scale_down.stabilization_window_seconds, 300);
        assert!(spec.prediction.enabled);
        assert!(!spec.healing.enabled);
    }

    #[test]
    fn schema_carries_the_validation_rules() {
        let crd = serde_json::to_string(&ServicePolicy::crd()).unwrap();
        assert!(crd.contains("self.minReplicas <= self.maxReplicas"), "{crd}");
        assert!(crd.contains(r#""minimum":1"#), "{crd}");
        assert!(crd.contains(r#""status":{}"#), "status subresource: {crd}");
    }
}
