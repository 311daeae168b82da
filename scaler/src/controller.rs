//! The reconciler: for each ServicePolicy, every `interval`, one pass of four steps apart, as in
//! kube-rs/controller-rs:
//! - **observe**: the target's scale and pods (through the [`Cluster`]) and the service's telemetry;
//! - **plan** (pure): `decide()` and `heal()` on inputs that are logged whole, plus the learned capacity;
//! - **act**: change the replicas, restart a pod (or not: dry run, held back);
//! - **report**: an Event per action, a decision log line per decision, status conditions, metrics and the
//!   policy's state for `/api/policies`.
//!
//! API errors back off per policy, exponentially, and are retried; nothing is acted on from a partial
//! read. The same `reconcile` drives the Kubernetes API (`run`, a kube-runtime Controller) and the
//! simulated cluster of `tidewatch demo`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::behavior::ScaleHistory;
use crate::board::{
    BandPoint, Board, CapacitySource, CapacityView, ForecastView, LoadView, NoteView, PolicyView,
};
use crate::calibrate::{Calibrator, CalibratorConfig};
use crate::capacity::CapacityLearner;
use crate::cluster::{Cluster, KubeCluster, Note, NoteType, PodInfo, Restarted};
use crate::config::ScalerConfig;
use crate::crd::{HealMode, ServicePolicy, ServicePolicySpec, ServicePolicyStatus};
use crate::decide::{Decision, Inputs, PodLoad, decide};
use crate::decisions::{DecisionLog, Entry, Record};
use crate::heal::{HealDecision, HealInputs, heal, own_cause};
use crate::telemetry::{Observation, Telemetry, forecast_input};
use crate::{Error, Result};

pub use crate::cluster::MANAGER;

/// What a policy's reconciles remember between runs (the HPA keeps the same in memory).
#[derive(Default)]
struct PolicyState {
    history: ScaleHistory,
    last_scale_ms: Option<i64>,
    restarts: Vec<(i64, String)>,
    capacity: Option<CapacityLearner>,
    /// The forecast's calibration, learned from the service's observed rate (what `simulate` measures).
    calibrator: Option<Calibrator>,
    last_window_ms: Option<i64>,
    /// Reason of the latest held-back heal, so the Event is not repeated every interval.
    last_held: Option<String>,
    failures: u32,
}

/// Reconcile counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: AtomicU64,
    scale_ups: AtomicU64,
    scale_downs: AtomicU64,
    restarts: AtomicU64,
    held_back: AtomicU64,
    duration_us: AtomicU64,
}

impl Metrics {
    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut impl std::fmt::Write) {
        use tidewatch_analyzer::exposition::{Kind, by_label, single};
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        by_label(
            out,
            "tidewatch_operator_reconciles_total",
            Kind::Counter,
            "ServicePolicy reconciles, by result.",
            "result",
            [("ok", g(&self.reconciles)), ("error", g(&self.failures))],
        );
        single(
            out,
            "tidewatch_operator_reconcile_seconds_total",
            Kind::Counter,
            "Time spent reconciling.",
            g(&self.duration_us) as f64 / 1e6,
        );
        by_label(
            out,
            "tidewatch_operator_actions_total",
            Kind::Counter,
            "Actions taken (or held back) on workloads.",
            "action",
            [
                ("scale_up", g(&self.scale_ups)),
                ("scale_down", g(&self.scale_downs)),
                ("restart", g(&self.restarts)),
                ("held_back", g(&self.held_back)),
            ],
        );
    }
}

/// Shared by all reconciles.
pub struct Context {
    pub cluster: Arc<dyn Cluster>,
    pub telemetry: Arc<dyn Telemetry>,
    pub log: Arc<DecisionLog>,
    pub metrics: Arc<Metrics>,
    /// Every policy's latest state, for `/api/policies`.
    pub board: Arc<Board>,
    pub interval: Duration,
    /// The clock, in Unix ms (tests set it).
    pub now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
    state: Mutex<HashMap<String, PolicyState>>,
}

impl Context {
    /// Reconciles against the Kubernetes API behind `client`.
    pub fn new(
        client: Client,
        cfg: &ScalerConfig,
        telemetry: Arc<dyn Telemetry>,
        log: Arc<DecisionLog>,
        metrics: Arc<Metrics>,
    ) -> Context {
        let cluster = Arc::new(KubeCluster::new(client, cfg.api_timeout));
        Context::with_cluster(cluster, cfg.interval, telemetry, log, metrics)
    }

    /// Reconciles against any cluster.
    pub fn with_cluster(
        cluster: Arc<dyn Cluster>,
        interval: Duration,
        telemetry: Arc<dyn Telemetry>,
        log: Arc<DecisionLog>,
        metrics: Arc<Metrics>,
    ) -> Context {
        Context {
            cluster,
            telemetry,
            log,
            metrics,
            board: Arc::new(Board::default()),
            interval,
            now_ms: Arc::new(|| Timestamp::now().as_millisecond()),
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes the policies' state on `board` (shared with the web side).
    pub fn with_board(mut self, board: Arc<Board>) -> Context {
        self.board = board;
        self
    }

    fn state<T>(&self, key: &str, f: impl FnOnce(&mut PolicyState) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(s.entry(key.to_owned()).or_default())
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    client: Client,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let policies: Api<ServicePolicy> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    Controller::new(policies, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile stream");
            }
        })
        .await;
}

/// One reconcile of one policy: observe → plan → act → report.
pub async fn reconcile(policy: Arc<ServicePolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let id = PolicyId::of(&policy)?;
    let now = (ctx.now_ms)();
    let Some(seen) = observe(&ctx, &policy, &id, now).await? else {
        report_missing_target(&ctx, &policy, &id, now).await?;
        return Ok(Action::requeue(ctx.interval));
    };
    let plan = ctx.state(&id.key, |st| plan(&policy, &seen, st, now));
    let done = act(&ctx, &policy.spec, &id, &plan).await;
    report(&ctx, &policy, &id, &seen, plan, &done, now).await?;
    ctx.state(&id.key, |st| st.failures = 0);
    ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    ctx.metrics
        .duration_us
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    if let Some(Outcome::Failed(why)) = done.scale {
        // The patch failed: retry sooner than the interval, through the error path's backoff.
        return Err(Error::Target {
            kind: format!("{:?}", policy.spec.target_ref.kind),
            name: policy.spec.target_ref.name.clone(),
            why: format!("error: {why}"),
        });
    }
    Ok(Action::requeue(ctx.interval))
}

/// A policy's namespace, name and `namespace/name` key.
struct PolicyId {
    ns: String,
    name: String,
    key: String,
}

impl PolicyId {
    fn of(policy: &ServicePolicy) -> Result<PolicyId> {
        let name = policy.name_any();
        let ns = policy
            .namespace()
            .ok_or_else(|| Error::NoNamespace(name.clone()))?;
        Ok(PolicyId {
            key: format!("{ns}/{name}"),
            ns,
            name,
        })
    }
}

// ---- observe ----

/// What one reconcile read: the target's replicas and pods, and the service's telemetry.
struct Observed {
    current: u32,
    pods: Vec<PodInfo>,
    telemetry: Observation,
}

/// Reads the target and the telemetry; `None` when the target does not exist.
async fn observe(ctx: &Context, policy: &ServicePolicy, id: &PolicyId, now: i64) -> Result<Option<Observed>> {
    let spec = &policy.spec;
    let Some(scale) = ctx.cluster.scale(&id.ns, &spec.target_ref).await? else {
        return Ok(None);
    };
    let pods = ctx.cluster.pods(&id.ns, &scale.selector).await?;
    let telemetry = ctx
        .telemetry
        .observe(&spec.service, spec.slo.latency_quantile, now);
    Ok(Some(Observed {
        current: scale.replicas,
        pods,
        telemetry,
    }))
}

// ---- plan ----

/// What one reconcile decides, before anything is done, and the memory to keep if it is.
struct Plan {
    inputs: Inputs,
    decision: Decision,
    history: ScaleHistory,
    heal_inputs: HealInputs,
    heal: HealDecision,
    learner: CapacityLearner,
    calibrator: Calibrator,
    last_window_ms: Option<i64>,
    ready: u32,
}

/// The pure step: the decisions from what was observed and what the policy's reconciles remember.
fn plan(policy: &ServicePolicy, seen: &Observed, st: &PolicyState, now: i64) -> Plan {
    let spec = &policy.spec;
    let obs = &seen.telemetry;
    let loads: Vec<PodLoad> = seen
        .pods
        .iter()
        .map(|p| PodLoad {
            rate: obs.pod_rates.get(&p.name).copied(),
            ready: p.ready,
            name: p.name.clone(),
        })
        .collect();
    let ready = loads.iter().filter(|p| p.ready).count() as u32;
    let slo_met = obs.latency_ms.is_none_or(|l| l <= spec.slo.latency_threshold_ms)
        && obs.error_ratio.is_none_or(|e| e <= spec.slo.max_error_ratio);
    let own_fault = own_cause(&obs.causes, &spec.service).is_some();
    let learned_status = policy.status.as_ref().and_then(|s| s.learned_capacity);

    let mut learner = st
        .capacity
        .clone()
        .unwrap_or_else(|| learned_status.map(CapacityLearner::resume).unwrap_or_default());
    let capacity = spec.capacity.requests_per_replica.or_else(|| learner.estimate());
    let mut calibrator = st
        .calibrator
        .clone()
        .unwrap_or_else(|| Calibrator::new(CalibratorConfig::for_capacity(capacity.unwrap_or(1.0))));
    let mut last_window_ms = st.last_window_ms;
    if let (Some(w), Some(rate)) = (obs.window_end_ms, obs.rate)
        && last_window_ms.is_none_or(|l| w > l)
    {
        last_window_ms = Some(w);
        calibrator.observe(w, rate);
        if ready > 0 {
            learner.observe(rate / f64::from(ready), slo_met, own_fault);
        }
    }
    let horizon_ms = i64::from(spec.prediction.horizon_seconds.max(0)) * 1000;
    let mut forecast = obs
        .forecast
        .as_ref()
        .map(|f| forecast_input(f, now, spec.prediction.horizon_seconds));
    if let Some(f) = forecast.as_mut() {
        calibrator.calibrate(now, horizon_ms, f);
    }
    let inputs = Inputs {
        now_ms: now,
        current_replicas: seen.current,
        pods: loads,
        capacity: spec.capacity.requests_per_replica.or_else(|| learner.estimate()),
        forecast,
        last_scale_ms: st.last_scale_ms,
        history: st.history.clone(),
    };
    let (decision, history) = decide(spec, &inputs);
    let heal_inputs = HealInputs {
        now_ms: now,
        service: spec.service.clone(),
        causes: obs.causes.clone(),
        pods: inputs.pods.iter().map(|p| p.name.clone()).collect(),
        ready_pods: ready,
        restarts: recent_restarts(&st.restarts, spec, now),
    };
    let heal = heal(&spec.healing, &heal_inputs);
    Plan {
        inputs,
        decision,
        history,
        heal_inputs,
        heal,
        learner,
        calibrator,
        last_window_ms,
        ready,
    }
}

/// The restarts inside the healing window.
fn recent_restarts(restarts: &[(i64, String)], spec: &ServicePolicySpec, now: i64) -> Vec<(i64, String)> {
    let window_ms = i64::from(spec.healing.window_seconds.max(1)) * 1000;
    restarts
        .iter()
        .filter(|(t, _)| now - t < window_ms)
        .cloned()
        .collect()
}

// ---- act ----

/// How an action went.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ok,
    /// The policy is a dry run: decided and reported, not done.
    DryRun,
    /// Refused for now (a PodDisruptionBudget), with the API's words.
    Refused(String),
    /// The API call failed.
    Failed(String),
}

impl std::fmt::Display for Outcome {
    /// As the decision log and Events write it: `ok`, `dry-run`, the refusal, `error: …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::DryRun => f.write_str("dry-run"),
            Outcome::Refused(why) => f.write_str(why),
            Outcome::Failed(why) => write!(f, "error: {why}"),
        }
    }
}

/// What was done: the scaling outcome when the decision changed the replicas, the restart outcome when
/// the healer asked for one.
struct Done {
    scale: Option<Outcome>,
    restart: Option<Outcome>,
}

async fn act(ctx: &Context, spec: &ServicePolicySpec, id: &PolicyId, plan: &Plan) -> Done {
    let scale = if !plan.decision.changes() {
        None
    } else if spec.dry_run {
        Some(Outcome::DryRun)
    } else {
        Some(
            match ctx
                .cluster
                .set_replicas(&id.ns, &spec.target_ref, plan.decision.replicas)
                .await
            {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Failed(e.to_string()),
            },
        )
    };
    let restart = match &plan.heal {
        HealDecision::Restart { .. } if spec.dry_run => Some(Outcome::DryRun),
        HealDecision::Restart { pod, .. } => {
            Some(match ctx.cluster.restart(&id.ns, pod, spec.healing.mode).await {
                Ok(Restarted::Done) => Outcome::Ok,
                Ok(Restarted::Refused(why)) => Outcome::Refused(why),
                Err(e) => Outcome::Failed(e.to_string()),
            })
        }
        _ => None,
    };
    Done { scale, restart }
}

// ---- report ----

/// An action as the decision log writes it: `scale 4→8`, `evict inventory-7f9c-x2`, `held back`, `none`.
fn scale_action(d: &Decision) -> String {
    if d.changes() {
        format!("scale {}→{}", d.current, d.replicas)
    } else {
        "none".into()
    }
}

fn heal_action(h: &HealDecision, mode: HealMode) -> String {
    match h {
        HealDecision::Restart { pod, .. } => match mode {
            HealMode::Evict => format!("evict {pod}"),
            HealMode::Delete => format!("delete {pod}"),
        },
        HealDecision::HeldBack { .. } => "held back".into(),
        HealDecision::None { .. } => "none".into(),
    }
}

/// Keeps what the reconcile changed, counts it, and reports it: Events, decision log, status, board.
async fn report(
    ctx: &Context,
    policy: &ServicePolicy,
    id: &PolicyId,
    seen: &Observed,
    plan: Plan,
    done: &Done,
    now: i64,
) -> Result<()> {
    let spec = &policy.spec;
    let d = &plan.decision;
    let scaled = done.scale == Some(Outcome::Ok);
    let restarted = done.restart == Some(Outcome::Ok);
    let held_reason = match &plan.heal {
        HealDecision::HeldBack { reason, .. } => Some(reason.clone()),
        _ => None,
    };
    // Remember.
    let held_repeat = ctx.state(&id.key, |st| {
        st.history = plan.history.clone();
        st.capacity = Some(plan.learner.clone());
        st.calibrator = Some(plan.calibrator.clone());
        st.last_window_ms = plan.last_window_ms;
        st.restarts = plan.heal_inputs.restarts.clone();
        if scaled {
            st.history.record_scale(now, d.current, d.replicas);
            st.last_scale_ms = Some(now);
        }
        if let (true, HealDecision::Restart { pod, .. }) = (restarted, &plan.heal) {
            st.restarts.push((now, pod.clone()));
        }
        let repeat = held_reason.is_some() && st.last_held == held_reason;
        if held_reason.is_some() {
            st.last_held = held_reason.clone();
        }
        repeat
    });
    // Count.
    let m = &ctx.metrics;
    if scaled {
        let counter = if d.replicas > d.current {
            &m.scale_ups
        } else {
            &m.scale_downs
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    if restarted {
        m.restarts.fetch_add(1, Ordering::Relaxed);
    }
    if held_reason.is_some() {
        m.held_back.fetch_add(1, Ordering::Relaxed);
    }
    // Events.
    let notes = notes(spec, &plan, done, held_repeat);
    for n in &notes {
        ctx.cluster.publish(policy, n).await;
    }
    // The decision log.
    log_decisions(ctx, spec, id, &plan, done, now);
    // Status and board.
    let (restarts, capacity, last_scale) = ctx.state(&id.key, |st| {
        (
            st.restarts.len() as u32,
            st.capacity.as_ref().and_then(CapacityLearner::estimate),
            st.last_scale_ms,
        )
    });
    let status = status(policy, seen, &plan, done, capacity, last_scale, restarts, now);
    ctx.cluster.patch_status(&id.ns, &id.name, &status).await?;
    ctx.board.update(
        board_view(policy, id, seen, plan, restarts, now),
        notes
            .into_iter()
            .map(|note| NoteView { ts_ms: now, note })
            .collect(),
    );
    Ok(())
}

/// The Events of a reconcile: one for a scaling decision that changes the replicas, one for a restart,
/// one for a held-back restart unless its reason is the same as last time.
fn notes(spec: &ServicePolicySpec, plan: &Plan, done: &Done, held_repeat: bool) -> Vec<Note> {
    let d = &plan.decision;
    let mut out = Vec::new();
    if let Some(outcome) = &done.scale {
        let up = d.replicas > d.current;
        let (type_, reason) = match outcome {
            Outcome::Ok if up => (NoteType::Normal, "ScaledUp"),
            Outcome::Ok => (NoteType::Normal, "ScaledDown"),
            Outcome::DryRun => (NoteType::Normal, "WouldScale"),
            Outcome::Refused(_) | Outcome::Failed(_) => (NoteType::Warning, "ScaleFailed"),
        };
        out.push(Note {
            type_,
            reason,
            action: "Scale",
            note: format!("{} ({outcome}): {}", scale_action(d), d.reason),
        });
    }
    match (&plan.heal, &done.restart) {
        (HealDecision::Restart { reason, .. }, Some(outcome)) => {
            let (type_, ev) = match outcome {
                Outcome::Ok => (NoteType::Normal, "PodRestarted"),
                Outcome::DryRun => (NoteType::Normal, "WouldRestartPod"),
                Outcome::Refused(_) | Outcome::Failed(_) => (NoteType::Warning, "RestartFailed"),
            };
            out.push(Note {
                type_,
                reason: ev,
                action: "Heal",
                note: format!(
                    "{} ({outcome}): {reason}",
                    heal_action(&plan.heal, spec.healing.mode)
                ),
            });
        }
        (HealDecision::HeldBack { pod, reason }, _) if !held_repeat => out.push(Note {
            type_: NoteType::Warning,
            reason: "RestartHeldBack",
            action: "Heal",
            note: format!("restart of {pod} held back: {reason}"),
        }),
        _ => {}
    }
    out
}

/// Appends the scaling decision, and the healing decision when there was something to consider.
fn log_decisions(ctx: &Context, spec: &ServicePolicySpec, id: &PolicyId, plan: &Plan, done: &Done, now: i64) {
    let record = |entry: Entry, action: String, outcome: &Option<Outcome>| Record {
        seq: 0,
        ts_ms: now,
        policy: id.key.clone(),
        service: spec.service.clone(),
        entry,
        action,
        outcome: outcome.as_ref().unwrap_or(&Outcome::Ok).to_string(),
    };
    let scale = record(
        Entry::Scale {
            spec: Box::new(spec.clone()),
            inputs: Box::new(plan.inputs.clone()),
            decision: plan.decision.clone(),
        },
        scale_action(&plan.decision),
        &done.scale,
    );
    if let Err(e) = ctx.log.append(scale) {
        tracing::error!(error = %e, "decision log: scale decision not recorded");
    }
    if matches!(&plan.heal, HealDecision::None { reason } if reason.is_empty()) {
        return;
    }
    let heal = record(
        Entry::Heal {
            healing: spec.healing.clone(),
            inputs: Box::new(plan.heal_inputs.clone()),
            decision: plan.heal.clone(),
        },
        heal_action(&plan.heal, spec.healing.mode),
        &done.restart,
    );
    if let Err(e) = ctx.log.append(heal) {
        tracing::error!(error = %e, "decision log: healing decision not recorded");
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str, old: &[Condition], now: &Time) -> Condition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.chars().take(1024).collect(),
        last_transition_time: since,
        observed_generation: None,
    }
}

fn fmt_time(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

fn time(now: i64) -> Time {
    Time(Timestamp::from_millisecond(now).unwrap_or_else(|_| Timestamp::now()))
}

/// Why the policy is degraded, if it is.
fn degraded(
    spec: &ServicePolicySpec,
    seen: &Observed,
    plan: &Plan,
    done: &Done,
    capacity: Option<f64>,
) -> Option<(&'static str, String)> {
    let failed = |o: &Option<Outcome>| matches!(o, Some(Outcome::Failed(_)));
    if failed(&done.scale) || failed(&done.restart) {
        let outcome = |o: &Option<Outcome>| o.as_ref().unwrap_or(&Outcome::Ok).to_string();
        Some((
            "ActionFailed",
            format!(
                "{}: {}; {}: {}",
                scale_action(&plan.decision),
                outcome(&done.scale),
                heal_action(&plan.heal, spec.healing.mode),
                outcome(&done.restart)
            ),
        ))
    } else if seen.telemetry.window_end_ms.is_none() {
        Some((
            "NoTelemetry",
            format!("no telemetry from service {} yet", spec.service),
        ))
    } else if spec.capacity.requests_per_replica.is_none() && capacity.is_none() {
        Some((
            "CapacityUnknown",
            "no per-replica capacity given and not enough telemetry to learn it".into(),
        ))
    } else {
        None
    }
}

/// The policy's status after a reconcile.
#[allow(clippy::too_many_arguments)]
fn status(
    policy: &ServicePolicy,
    seen: &Observed,
    plan: &Plan,
    done: &Done,
    capacity: Option<f64>,
    last_scale: Option<i64>,
    restarts: u32,
    now: i64,
) -> ServicePolicyStatus {
    let spec = &policy.spec;
    let d = &plan.decision;
    let old = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let now_time = time(now);
    let scale_failed = matches!(done.scale, Some(Outcome::Failed(_)));
    let scaling_reason = if d.changes() {
        if d.replicas > d.current {
            "ScaleUp"
        } else {
            "ScaleDown"
        }
    } else {
        d.limit.as_str()
    };
    let (heal_ok, heal_reason, heal_msg) = match &plan.heal {
        HealDecision::Restart { pod, reason } => (true, "PodRestarted", format!("{pod}: {reason}")),
        HealDecision::HeldBack { pod, reason } => (false, "HeldBack", format!("{pod}: {reason}")),
        HealDecision::None { reason } if reason.is_empty() => {
            (false, "NoFault", "no pod of this service is at fault".to_owned())
        }
        HealDecision::None { reason } => (false, "NotAtFault", reason.clone()),
    };
    let learned_status = policy.status.as_ref().and_then(|s| s.learned_capacity);
    ServicePolicyStatus {
        observed_generation: policy.metadata.generation,
        current_replicas: Some(seen.current as i32),
        desired_replicas: Some(d.replicas as i32),
        learned_capacity: capacity.or(learned_status),
        last_decision: Some(d.reason.clone()),
        last_scale_time: last_scale
            .map(fmt_time)
            .or_else(|| policy.status.as_ref().and_then(|s| s.last_scale_time.clone())),
        restarts_in_window: Some(restarts as i32),
        conditions: vec![
            condition(
                "Ready",
                !scale_failed,
                if scale_failed { "ScaleFailed" } else { "Reconciled" },
                &d.reason,
                old,
                &now_time,
            ),
            condition("Scaling", d.changes(), scaling_reason, &d.reason, old, &now_time),
            condition("Healing", heal_ok, heal_reason, &heal_msg, old, &now_time),
            match degraded(spec, seen, plan, done, capacity) {
                Some((reason, msg)) => condition("Degraded", true, reason, &msg, old, &now_time),
                None => condition("Degraded", false, "AsExpected", "", old, &now_time),
            },
        ],
    }
}

/// The policy's state for `/api/policies`.
fn board_view(
    policy: &ServicePolicy,
    id: &PolicyId,
    seen: &Observed,
    plan: Plan,
    restarts: u32,
    now: i64,
) -> PolicyView {
    let spec = &policy.spec;
    let obs = &seen.telemetry;
    let capacity = plan.inputs.capacity.map(|c| CapacityView {
        requests_per_replica: c,
        source: if spec.capacity.requests_per_replica.is_some() {
            CapacitySource::Given
        } else {
            CapacitySource::Learned
        },
    });
    let forecast = obs.forecast.as_ref().map(|f| ForecastView {
        model: f.model.clone(),
        mase: f.mase,
        trusted: spec.prediction.enabled
            && f.mase
                .is_some_and(|m| m.is_finite() && m <= spec.prediction.max_mase),
        step_ms: f.step_ms,
        points: f
            .points
            .iter()
            .map(|(ts, p)| BandPoint {
                ts_ms: *ts,
                mean: p.mean,
                lo: p.lo,
                hi: p.hi,
            })
            .collect(),
    });
    PolicyView {
        policy: id.key.clone(),
        namespace: id.ns.clone(),
        name: id.name.clone(),
        service: spec.service.clone(),
        target: spec.target_ref.clone(),
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        current_replicas: seen.current,
        ready_replicas: plan.ready,
        capacity,
        load: LoadView {
            window_end_ms: obs.window_end_ms,
            rate: obs.rate,
            latency_ms: obs.latency_ms,
            error_ratio: obs.error_ratio,
        },
        recommendation: plan.decision,
        healing: plan.heal,
        restarts_in_window: restarts,
        forecast,
        dry_run: spec.dry_run,
        updated_ms: now,
        events: Vec::new(),
    }
}

/// A target that does not exist: the policy is degraded, with a Warning.
async fn report_missing_target(ctx: &Context, policy: &ServicePolicy, id: &PolicyId, now: i64) -> Result<()> {
    let spec = &policy.spec;
    let msg = format!("{:?} {} not found", spec.target_ref.kind, spec.target_ref.name);
    let old = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let now_time = time(now);
    let status = ServicePolicyStatus {
        observed_generation: policy.metadata.generation,
        conditions: vec![
            condition("Ready", false, "TargetNotFound", &msg, old, &now_time),
            condition("Degraded", true, "TargetNotFound", &msg, old, &now_time),
        ],
        ..policy.status.clone().unwrap_or_default()
    };
    ctx.cluster.patch_status(&id.ns, &id.name, &status).await?;
    let note = Note {
        type_: NoteType::Warning,
        reason: "TargetNotFound",
        action: "Reconcile",
        note: msg,
    };
    ctx.cluster.publish(policy, &note).await;
    ctx.board.remove(&id.key);
    ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Backs off per policy: 1 s, 2 s, 4 s … up to the interval.
pub fn error_policy(policy: Arc<ServicePolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failures.fetch_add(1, Ordering::Relaxed);
    let key = format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any());
    let n = ctx.state(&key, |st| {
        st.failures = st.failures.saturating_add(1);
        st.failures
    });
    let wait = Duration::from_secs(1 << (n - 1).min(10)).min(ctx.interval.max(Duration::from_secs(1)));
    tracing::warn!(policy = %key, error = %err, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}
