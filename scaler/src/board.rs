//! The policies' state as the latest reconcile of each left it, for `GET /api/policies` (the web UI's
//! Scaling page): the same in a real cluster and in `tidewatch demo`'s simulated one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::cluster::Note;
use crate::crd::TargetRef;
use crate::decide::Decision;
use crate::heal::HealDecision;

/// Events kept per policy.
const NOTES: usize = 20;

/// Where the per-replica capacity a decision used came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacitySource {
    /// `spec.capacity.requestsPerReplica`.
    Given,
    /// Learned from telemetry (`capacity.rs`).
    Learned,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityView {
    pub requests_per_replica: f64,
    pub source: CapacitySource,
}

/// The service's latest closed window, as the decision saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoadView {
    pub window_end_ms: Option<i64>,
    /// Requests per second of the whole service.
    pub rate: Option<f64>,
    /// At the policy's latency quantile.
    pub latency_ms: Option<f64>,
    pub error_ratio: Option<f64>,
}

/// One point of the forecast band.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BandPoint {
    pub ts_ms: i64,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// The request-rate forecast the decision read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ForecastView {
    pub model: String,
    pub mase: Option<f64>,
    /// Whether the policy trusts it (its MASE is at most `prediction.maxMase`).
    pub trusted: bool,
    pub step_ms: i64,
    pub points: Vec<BandPoint>,
}

/// An Event the operator published about the policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NoteView {
    pub ts_ms: i64,
    #[serde(flatten)]
    pub note: Note,
}

/// One policy after its latest reconcile.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyView {
    /// `namespace/name`, as `/api/decisions?policy=` takes it.
    pub policy: String,
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub target: TargetRef,
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// `spec.replicas` of the target when the decision was made.
    pub current_replicas: u32,
    pub ready_replicas: u32,
    pub capacity: Option<CapacityView>,
    pub load: LoadView,
    /// The latest decision: replicas (the recommendation), the reactive and predictive answers, the
    /// behaviour rule that shaped it, and why.
    pub recommendation: Decision,
    /// The latest healing decision.
    pub healing: HealDecision,
    pub restarts_in_window: u32,
    pub forecast: Option<ForecastView>,
    pub dry_run: bool,
    /// When the reconcile ran (Unix ms).
    pub updated_ms: i64,
    /// Newest last.
    pub events: Vec<NoteView>,
}

/// Every policy's latest state, by `namespace/name`.
#[derive(Default)]
pub struct Board {
    inner: Mutex<BTreeMap<String, (PolicyView, VecDeque<NoteView>)>>,
}

impl Board {
    /// Records a reconcile's outcome and the Events it published.
    pub fn update(&self, mut view: PolicyView, notes: Vec<NoteView>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = view.policy.clone();
        let (slot, kept) = inner
            .entry(key)
            .or_insert_with(|| (view.clone(), VecDeque::new()));
        kept.extend(notes);
        while kept.len() > NOTES {
            kept.pop_front();
        }
        view.events = kept.iter().cloned().collect();
        *slot = view;
    }

    /// Every policy, by name.
    pub fn policies(&self) -> Vec<PolicyView> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.values().map(|(v, _)| v.clone()).collect()
    }

    /// Forgets a policy that is gone.
    pub fn remove(&self, policy: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(policy);
    }
}
