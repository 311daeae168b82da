//! The reconciler: for each ServicePolicy, every `interval`, read the target's scale and pods and the
//! service's telemetry, call the pure `decide()` and `heal()`, act (scale subresource by server-side
//! apply; eviction or delete), and report: an Event per action, status conditions, a decision log line,
//! metrics. API errors back off per policy, exponentially, and are retried; nothing is acted on from a
//! partial read.
//!
//! Shaped after kube-rs/controller-rs: `reconcile` and `error_policy` over a shared `Context`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::behavior::ScaleHistory;
use crate::capacity::CapacityLearner;
use crate::config::ScalerConfig;
use crate::crd::{HealMode, ServicePolicy, ServicePolicyStatus, TargetKind};
use crate::decide::{Inputs, PodLoad, decide};
use crate::decisions::{DecisionLog, Entry, Record};
use crate::heal::{HealDecision, HealInputs, heal};
use crate::telemetry::{Telemetry, forecast_input};
use crate::{Error, Result};

/// The field manager of every write.
pub const MANAGER: &str = "tidewatch";

/// What a policy's reconciles remember between runs (the HPA keeps the same in memory).
#[derive(Default)]
struct PolicyState {
    history: ScaleHistory,
    last_scale_ms: Option<i64>,
    restarts: Vec<(i64, String)>,
    capacity: Option<CapacityLearner>,
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
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP tidewatch_operator_reconciles_total ServicePolicy reconciles, by result.\n# TYPE tidewatch_operator_reconciles_total counter\ntidewatch_operator_reconciles_total{{result=\"ok\"}} {}\ntidewatch_operator_reconciles_total{{result=\"error\"}} {}",
            g(&self.reconciles),
            g(&self.failures)
        );
        let _ = writeln!(
            out,
            "# HELP tidewatch_operator_reconcile_seconds_total Time spent reconciling.\n# TYPE tidewatch_operator_reconcile_seconds_total counter\ntidewatch_operator_reconcile_seconds_total {}",
            g(&self.duration_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP tidewatch_operator_actions_total Actions taken (or held back) on workloads.\n# TYPE tidewatch_operator_actions_total counter\ntidewatch_operator_actions_total{{action=\"scale_up\"}} {}\ntidewatch_operator_actions_total{{action=\"scale_down\"}} {}\ntidewatch_operator_actions_total{{action=\"restart\"}} {}\ntidewatch_operator_actions_total{{action=\"held_back\"}} {}",
            g(&self.scale_ups),
            g(&self.scale_downs),
            g(&self.restarts),
            g(&self.held_back)
        );
    }
}

/// Shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub telemetry: Arc<dyn Telemetry>,
    pub log: Arc<DecisionLog>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub interval: Duration,
    pub api_timeout: Duration,
    /// The clock, in Unix ms (tests set it).
    pub now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
    state: Mutex<HashMap<String, PolicyState>>,
}

impl Context {
    pub fn new(
        client: Client,
        cfg: &ScalerConfig,
        telemetry: Arc<dyn Telemetry>,
        log: Arc<DecisionLog>,
        metrics: Arc<Metrics>,
    ) -> Context {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            telemetry,
            log,
            metrics,
            interval: cfg.interval,
            api_timeout: cfg.api_timeout,
            now_ms: Arc::new(|| Timestamp::now().as_millisecond()),
            state: Mutex::new(HashMap::new()),
        }
    }

    fn state<T>(&self, key: &str, f: impl FnOnce(&mut PolicyState) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(s.entry(key.to_owned()).or_default())
    }

    async fn timed<T>(&self, fut: impl Future<Output = kube::Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.api_timeout, fut).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Timeout(self.api_timeout)),
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let policies: Api<ServicePolicy> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
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

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn fmt_time(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// One reconcile of one policy.
pub async fn reconcile(policy: Arc<ServicePolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = policy
        .namespace()
        .ok_or_else(|| Error::NoNamespace(policy.name_any()))?;
    let name = policy.name_any();
    let key = format!("{ns}/{name}");
    let spec = &policy.spec;
    let now = (ctx.now_ms)();
    let now_time = Time(Timestamp::from_millisecond(now).unwrap_or_else(|_| Timestamp::now()));
    let old_conditions = policy
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let obj_ref = policy.object_ref(&());

    // 1. The target's scale: the current replicas and the selector of its pods.
    let target = &spec.target_ref.name;
    let scale = match spec.target_ref.kind {
        TargetKind::Deployment => {
            ctx.timed(Api::<Deployment>::namespaced(ctx.client.clone(), &ns).get_scale(target))
                .await
        }
        TargetKind::StatefulSet => {
            ctx.timed(Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns).get_scale(target))
                .await
        }
    };
    let scale = match scale {
        Ok(s) => s,
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => {
            let msg = format!("{:?} {target} not found", spec.target_ref.kind);
            let status = ServicePolicyStatus {
                observed_generation: policy.metadata.generation,
                conditions: vec![
                    condition("Ready", false, "TargetNotFound", &msg, &old_conditions, &now_time),
                    condition(
                        "Degraded",
                        true,
                        "TargetNotFound",
                        &msg,
                        &old_conditions,
                        &now_time,
                    ),
                ],
                ..policy.status.clone().unwrap_or_default()
            };
            patch_status(&ctx, &ns, &name, &status).await?;
            publish(
                &ctx,
                EventType::Warning,
                "TargetNotFound",
                "Reconcile",
                msg,
                &obj_ref,
            )
            .await;
            ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
            return Ok(Action::requeue(ctx.interval));
        }
        Err(e) => return Err(e),
    };
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let pods: Vec<Pod> = if selector.is_empty() {
        Vec::new()
    } else {
        ctx.timed(
            Api::<Pod>::namespaced(ctx.client.clone(), &ns).list(&ListParams::default().labels(&selector)),
        )
        .await?
        .items
    };
    let pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();

    // 2. Telemetry.
    let obs = ctx
        .telemetry
        .observe(&spec.service, spec.slo.latency_quantile, now);
    let loads: Vec<PodLoad> = pods
        .iter()
        .map(|p| {
            let pod = p.name_any();
            PodLoad {
                rate: obs.pod_rates.get(&pod).copied(),
                ready: pod_ready(p),
                name: pod,
            }
        })
        .collect();
    let ready = loads.iter().filter(|p| p.ready).count() as u32;
    let slo_met = obs.latency_ms.is_none_or(|l| l <= spec.slo.latency_threshold_ms)
        && obs.error_ratio.is_none_or(|e| e <= spec.slo.max_error_ratio);
    let own_fault = obs.causes.first().is_some_and(|c| c.service == spec.service);
    let learned_status = policy.status.as_ref().and_then(|s| s.learned_capacity);

    // 3. Decide, from inputs that are logged whole.
    let (inputs, heal_inputs) = ctx.state(&key, |st| {
        let learner = st
            .capacity
            .get_or_insert_with(|| learned_status.map(CapacityLearner::resume).unwrap_or_default());
        if let (Some(w), Some(rate)) = (obs.window_end_ms, obs.rate)
            && st.last_window_ms.is_none_or(|l| w > l)
            && ready > 0
        {
            st.last_window_ms = Some(w);
            learner.observe(rate / f64::from(ready), slo_met, own_fault);
        }
        let capacity = spec.capacity.requests_per_replica.or_else(|| learner.estimate());
        let inputs = Inputs {
            now_ms: now,
            current_replicas: current,
            pods: loads.clone(),
            capacity,
            forecast: obs
                .forecast
                .as_ref()
                .map(|f| forecast_input(f, now, spec.prediction.horizon_seconds)),
            last_scale_ms: st.last_scale_ms,
            history: st.history.clone(),
        };
        let window_ms = i64::from(spec.healing.window_seconds.max(1)) * 1000;
        st.restarts.retain(|(t, _)| now - t < window_ms);
        let heal_inputs = HealInputs {
            now_ms: now,
            service: spec.service.clone(),
            causes: obs.causes.clone(),
            pods: loads.iter().map(|p| p.name.clone()).collect(),
            ready_pods: ready,
            restarts: st.restarts.clone(),
        };
        (inputs, heal_inputs)
    });
    let (decision, history) = decide(spec, &inputs);
    ctx.state(&key, |st| st.history = history);

    // 4. Act on the scale.
    let mut scaled = false;
    let (action, outcome) = if decision.changes() {
        let action = format!("scale {}→{}", decision.current, decision.replicas);
        if spec.dry_run {
            (action, "dry-run".to_owned())
        } else {
            match patch_scale(&ctx, spec.target_ref.kind, &ns, target, decision.replicas).await {
                Ok(()) => {
                    scaled = true;
                    (action, "ok".to_owned())
                }
                Err(e) => (action, format!("error: {e}")),
            }
        }
    } else {
        ("none".to_owned(), "ok".to_owned())
    };
    if scaled {
        ctx.state(&key, |st| {
            st.history.record_scale(now, decision.current, decision.replicas);
            st.last_scale_ms = Some(now);
        });
        let up = decision.replicas > decision.current;
        let counter = if up {
            &ctx.metrics.scale_ups
        } else {
            &ctx.metrics.scale_downs
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    if decision.changes() {
        let (kind, reason) = match (scaled, spec.dry_run) {
            (true, _) => (
                EventType::Normal,
                if decision.replicas > decision.current {
                    "ScaledUp"
                } else {
                    "ScaledDown"
                },
            ),
            (false, true) => (EventType::Normal, "WouldScale"),
            (false, false) => (EventType::Warning, "ScaleFailed"),
        };
        publish(
            &ctx,
            kind,
            reason,
            "Scale",
            format!("{action} ({outcome}): {}", decision.reason),
            &obj_ref,
        )
        .await;
    }
    let scale_record = Record {
        seq: 0,
        ts_ms: now,
        policy: key.clone(),
        service: spec.service.clone(),
        entry: Entry::Scale {
            spec: Box::new(spec.clone()),
            inputs: Box::new(inputs),
            decision: decision.clone(),
        },
        action: action.clone(),
        outcome: outcome.clone(),
    };
    if let Err(e) = ctx.log.append(scale_record) {
        tracing::error!(error = %e, "decision log: scale decision not recorded");
    }
    let scale_failed = outcome.starts_with("error");

    // 5. Heal.
    let heal_decision = heal(&spec.healing, &heal_inputs);
    let (heal_action, heal_outcome) = match &heal_decision {
        HealDecision::Restart { pod, reason } => {
            let verb = match spec.healing.mode {
                HealMode::Evict => "evict",
                HealMode::Delete => "delete",
            };
            let action = format!("{verb} {pod}");
            let outcome = if spec.dry_run {
                "dry-run".to_owned()
            } else {
                let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
                let res = match spec.healing.mode {
                    HealMode::Evict => ctx
                        .timed(pods_api.evict(pod, &EvictParams::default()))
                        .await
                        .map(drop),
                    HealMode::Delete => ctx
                        .timed(pods_api.delete(pod, &DeleteParams::default()))
                        .await
                        .map(drop),
                };
                match res {
                    Ok(()) => "ok".to_owned(),
                    // 429: a PodDisruptionBudget refuses the eviction now.
                    Err(Error::Kube(kube::Error::Api(e))) if e.code == 429 => {
                        format!("refused by a PodDisruptionBudget: {}", e.message)
                    }
                    Err(e) => format!("error: {e}"),
                }
            };
            if outcome == "ok" {
                ctx.state(&key, |st| st.restarts.push((now, pod.clone())));
                ctx.metrics.restarts.fetch_add(1, Ordering::Relaxed);
            }
            let (kind, ev) = match outcome.as_str() {
                "ok" => (EventType::Normal, "PodRestarted"),
                "dry-run" => (EventType::Normal, "WouldRestartPod"),
                _ => (EventType::Warning, "RestartFailed"),
            };
            publish(
                &ctx,
                kind,
                ev,
                "Heal",
                format!("{action} ({outcome}): {reason}"),
                &obj_ref,
            )
            .await;
            (action, outcome)
        }
        HealDecision::HeldBack { pod, reason } => {
            ctx.metrics.held_back.fetch_add(1, Ordering::Relaxed);
            let repeat = ctx.state(&key, |st| {
                let same = st.last_held.as_deref() == Some(reason.as_str());
                st.last_held = Some(reason.clone());
                same
            });
            if !repeat {
                publish(
                    &ctx,
                    EventType::Warning,
                    "RestartHeldBack",
                    "Heal",
                    format!("restart of {pod} held back: {reason}"),
                    &obj_ref,
                )
                .await;
            }
            ("held back".to_owned(), "ok".to_owned())
        }
        HealDecision::None { .. } => ("none".to_owned(), "ok".to_owned()),
    };
    // Healing decisions are logged when there was something to consider.
    if !matches!(&heal_decision, HealDecision::None { reason } if reason.is_empty()) {
        let rec = Record {
            seq: 0,
            ts_ms: now,
            policy: key.clone(),
            service: spec.service.clone(),
            entry: Entry::Heal {
                healing: spec.healing.clone(),
                inputs: Box::new(heal_inputs),
                decision: heal_decision.clone(),
            },
            action: heal_action.clone(),
            outcome: heal_outcome.clone(),
        };
        if let Err(e) = ctx.log.append(rec) {
            tracing::error!(error = %e, "decision log: healing decision not recorded");
        }
    }

    // 6. Status.
    let (restarts_in_window, capacity, last_scale) = ctx.state(&key, |st| {
        (
            st.restarts.len() as i32,
            st.capacity.as_ref().and_then(CapacityLearner::estimate),
            st.last_scale_ms,
        )
    });
    let degraded = if scale_failed || heal_outcome.starts_with("error") {
        Some((
            "ActionFailed",
            format!("{action}: {outcome}; {heal_action}: {heal_outcome}"),
        ))
    } else if obs.window_end_ms.is_none() {
        Some((
            "NoTelemetry",
            format!("no telemetry from service {} yet", spec.service),
        ))
    } else if inputs_capacity_missing(spec.capacity.requests_per_replica, capacity) {
        Some((
            "CapacityUnknown",
            "no per-replica capacity given and not enough telemetry to learn it".into(),
        ))
    } else {
        None
    };
    let scaling_reason = if decision.changes() {
        if decision.replicas > decision.current {
            "ScaleUp"
        } else {
            "ScaleDown"
        }
    } else {
        decision.limit.as_str()
    };
    let (heal_ok, heal_reason, heal_msg) = match &heal_decision {
        HealDecision::Restart { pod, reason } => (true, "PodRestarted", format!("{pod}: {reason}")),
        HealDecision::HeldBack { pod, reason } => (false, "HeldBack", format!("{pod}: {reason}")),
        HealDecision::None { reason } if reason.is_empty() => {
            (false, "NoFault", "no pod of this service is at fault".to_owned())
        }
        HealDecision::None { reason } => (false, "NotAtFault", reason.clone()),
    };
    let status = ServicePolicyStatus {
        observed_generation: policy.metadata.generation,
        current_replicas: Some(current as i32),
        desired_replicas: Some(decision.replicas as i32),
        learned_capacity: capacity.or(learned_status),
        last_decision: Some(decision.reason.clone()),
        last_scale_time: last_scale
            .map(fmt_time)
            .or_else(|| policy.status.as_ref().and_then(|s| s.last_scale_time.clone())),
        restarts_in_window: Some(restarts_in_window),
        conditions: vec![
            condition(
                "Ready",
                !scale_failed,
                if scale_failed { "ScaleFailed" } else { "Reconciled" },
                &decision.reason,
                &old_conditions,
                &now_time,
            ),
            condition(
                "Scaling",
                decision.changes(),
                scaling_reason,
                &decision.reason,
                &old_conditions,
                &now_time,
            ),
            condition(
                "Healing",
                heal_ok,
                heal_reason,
                &heal_msg,
                &old_conditions,
                &now_time,
            ),
            match &degraded {
                Some((reason, msg)) => condition("Degraded", true, reason, msg, &old_conditions, &now_time),
                None => condition("Degraded", false, "AsExpected", "", &old_conditions, &now_time),
            },
        ],
    };
    patch_status(&ctx, &ns, &name, &status).await?;

    ctx.state(&key, |st| st.failures = 0);
    ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    ctx.metrics
        .duration_us
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    if scale_failed {
        // The patch failed: retry sooner than the interval, through the error path's backoff.
        return Err(Error::Target {
            kind: format!("{:?}", spec.target_ref.kind),
            name: target.clone(),
            why: outcome,
        });
    }
    Ok(Action::requeue(ctx.interval))
}

fn inputs_capacity_missing(given: Option<f64>, learned: Option<f64>) -> bool {
    given.is_none() && learned.is_none()
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

async fn patch_scale(ctx: &Context, kind: TargetKind, ns: &str, name: &str, replicas: u32) -> Result<()> {
    let body = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas},
    });
    // Forced: Tidewatch owns `spec.replicas` of a target it scales, as the HPA does.
    let pp = PatchParams::apply(MANAGER).force();
    match kind {
        TargetKind::Deployment => {
            ctx.timed(Api::<Deployment>::namespaced(ctx.client.clone(), ns).patch_scale(
                name,
                &pp,
                &Patch::Apply(&body),
            ))
            .await?;
        }
        TargetKind::StatefulSet => {
            ctx.timed(
                Api::<StatefulSet>::namespaced(ctx.client.clone(), ns).patch_scale(
                    name,
                    &pp,
                    &Patch::Apply(&body),
                ),
            )
            .await?;
        }
    }
    Ok(())
}

async fn patch_status(ctx: &Context, ns: &str, name: &str, status: &ServicePolicyStatus) -> Result<()> {
    let body = json!({
        "apiVersion": ServicePolicy::api_version(&()),
        "kind": ServicePolicy::kind(&()),
        "status": status,
    });
    let api: Api<ServicePolicy> = Api::namespaced(ctx.client.clone(), ns);
    ctx.timed(api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)))
        .await?;
    Ok(())
}

/// Publishes an Event; a failure to record one is logged, never fatal to the reconcile.
async fn publish(
    ctx: &Context,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    obj: &k8s_openapi::api::core::v1::ObjectReference,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    match tokio::time::timeout(ctx.api_timeout, ctx.recorder.publish(&ev, obj)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, reason, "event not recorded"),
        Err(_) => tracing::warn!(reason, "event not recorded: timed out"),
    }
}
