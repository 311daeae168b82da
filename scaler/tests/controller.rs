//! The reconciler against a scripted Kubernetes API (tower-test, as kube-rs/controller-rs tests it): each
//! scenario answers the requests the reconciler must make, in order, and asserts their exact method, path,
//! query and body — the scale patch, the eviction, the Events and the status.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tidewatch_scaler::config::ScalerConfig;
use tidewatch_scaler::controller::{Context, Metrics, error_policy, reconcile};
use tidewatch_scaler::crd::{Quantile, ServicePolicy};
use tidewatch_scaler::decisions::{DecisionLog, Entry};
use tidewatch_scaler::heal::CauseInput;
use tidewatch_scaler::telemetry::{Observation, Telemetry};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct Scripted(Observation);

impl Telemetry for Scripted {
    fn observe(&self, _: &str, _: Quantile, _: i64) -> Observation {
        self.0.clone()
    }
}

fn policy(extra: Value) -> Arc<ServicePolicy> {
    let mut spec = json!({
        "targetRef": {"kind": "Deployment", "name": "checkout"},
        "service": "checkout",
        "minReplicas": 2,
        "maxReplicas": 10,
        "capacity": {"requestsPerReplica": 100.0, "targetUtilization": 0.5},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "tidewatch.dev/v1alpha1",
            "kind": "ServicePolicy",
            "metadata": {"name": "checkout-policy", "namespace": "shop", "generation": 3, "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap(),
    )
}

/// What the API server answers to a status patch: the object.
fn policy_json() -> Value {
    serde_json::to_value(&*policy(json!({}))).unwrap()
}

fn observation(rates: &[(&str, f64)], causes: Vec<CauseInput>) -> Observation {
    Observation {
        window_end_ms: Some(1_000),
        rate: Some(rates.iter().map(|(_, r)| r).sum()),
        latency_ms: Some(20.0),
        error_ratio: Some(0.0),
        pod_rates: rates
            .iter()
            .map(|(p, r)| ((*p).to_owned(), *r))
            .collect::<BTreeMap<_, _>>(),
        forecast: None,
        causes,
    }
}

fn context(obs: Observation) -> (Arc<Context>, Handle, Arc<DecisionLog>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let log = Arc::new(DecisionLog::in_memory());
    let mut ctx = Context::new(
        client,
        &ScalerConfig::default(),
        Arc::new(Scripted(obs)),
        log.clone(),
        Arc::new(Metrics::default()),
    );
    ctx.now_ms = Arc::new(|| 1_700_000_000_000);
    (Arc::new(ctx), handle, log)
}

fn ok(v: Value) -> Response<Body> {
    Response::builder()
        .body(Body::from(serde_json::to_vec(&v).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code});
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

/// Takes the next request, checks method and path (with query), and returns its JSON body.
async fn expect(h: &mut Handle, method: &str, path_and_query: &str, reply: Response<Body>) -> Value {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!(req.method().as_str(), method, "{}", req.uri());
    assert_eq!(req.uri().path_and_query().unwrap().as_str(), path_and_query);
    let body = req.into_body().collect_bytes().await.unwrap();
    send.send_response(reply);
    if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    }
}

fn scale(replicas: i32) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "checkout", "namespace": "shop"},
           "spec": {"replicas": replicas}, "status": {"replicas": replicas, "selector": "app=checkout"}})
}

fn pods(names: &[&str]) -> Value {
    let items: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"metadata": {"name": n, "namespace": "shop", "labels": {"app": "checkout"}},
                         "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

const SCALE_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/checkout/scale";
const PODS_PATH: &str = "/api/v1/namespaces/shop/pods?&labelSelector=app%3Dcheckout";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events?";
const STATUS_PATH: &str = "/apis/tidewatch.dev/v1alpha1/namespaces/shop/servicepolicies/checkout-policy/status?&force=true&fieldManager=tidewatch";

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn overloaded_pods_scale_up_by_server_side_apply_with_an_event_and_status() {
    let (ctx, mut h, log) = context(observation(&[("checkout-a", 80.0), ("checkout-b", 80.0)], vec![]));
    let task = tokio::spawn(reconcile(policy(json!({})), ctx.clone()));
    expect(&mut h, "GET", SCALE_PATH, ok(scale(2))).await;
    expect(&mut h, "GET", PODS_PATH, ok(pods(&["checkout-a", "checkout-b"]))).await;
    // 80 req/s per pod at 100 per replica is 0.8 against a 0.5 target: ratio 1.6 → ceil(3.2) = 4.
    let patch = expect(
        &mut h,
        "PATCH",
        &format!("{SCALE_PATH}?&force=true&fieldManager=tidewatch"),
        ok(scale(4)),
    )
    .await;
    assert_eq!(
        patch,
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
               "metadata": {"name": "checkout", "namespace": "shop"}, "spec": {"replicas": 4}})
    );
    let event = expect(&mut h, "POST", EVENTS_PATH, ok(json!({}))).await;
    assert_eq!(event["reason"], "ScaledUp");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["action"], "Scale");
    assert_eq!(event["regarding"]["name"], "checkout-policy");
    assert!(
        event["note"].as_str().unwrap().starts_with("scale 2→4 (ok)"),
        "{event}"
    );
    let st = expect(&mut h, "PATCH", STATUS_PATH, ok(policy_json())).await;
    assert_eq!(st["apiVersion"], "tidewatch.dev/v1alpha1");
    assert_eq!(st["status"]["currentReplicas"], 2);
    assert_eq!(st["status"]["desiredReplicas"], 4);
    assert_eq!(st["status"]["observedGeneration"], 3);
    assert_eq!(condition(&st, "Scaling")["status"], "True");
    assert_eq!(condition(&st, "Scaling")["reason"], "ScaleUp");
    assert_eq!(condition(&st, "Ready")["status"], "True");
    assert_eq!(condition(&st, "Degraded")["status"], "False");
    let action = task.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(ScalerConfig::default().interval));
    let logged = log.recent(10, None);
    assert_eq!(logged.len(), 1);
    assert_eq!(
        (logged[0].action.as_str(), logged[0].outcome.as_str()),
        ("scale 2→4", "ok")
    );
    assert!(matches!(&logged[0].entry, Entry::Scale { decision, .. } if decision.replicas == 4));
}

#[tokio::test]
async fn the_singled_out_pod_is_evicted_and_nothing_else_is_touched() {
    let causes = vec![CauseInput {
        service: "checkout".into(),
        pod: Some("checkout-b".into()),
        explanation: "checkout-b error ratio 40% while its siblings are at 0%".into(),
    }];
    let (ctx, mut h, log) = context(observation(&[("checkout-a", 50.0), ("checkout-b", 50.0)], causes));
    let p = policy(json!({"healing": {"enabled": true, "maxRestarts": 1}}));
    let task = tokio::spawn(reconcile(p, ctx.clone()));
    expect(&mut h, "GET", SCALE_PATH, ok(scale(2))).await;
    expect(&mut h, "GET", PODS_PATH, ok(pods(&["checkout-a", "checkout-b"]))).await;
    // Utilisation exactly at target: no scale patch. The eviction of the bad pod comes next.
    let ev = expect(
        &mut h,
        "POST",
        "/api/v1/namespaces/shop/pods/checkout-b/eviction?",
        ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
    )
    .await;
    assert_eq!(ev["metadata"]["name"], "checkout-b");
    let event = expect(&mut h, "POST", EVENTS_PATH, ok(json!({}))).await;
    assert_eq!(event["reason"], "PodRestarted");
    assert!(
        event["note"].as_str().unwrap().contains("evict checkout-b (ok)"),
        "{event}"
    );
    let st = expect(&mut h, "PATCH", STATUS_PATH, ok(policy_json())).await;
    assert_eq!(condition(&st, "Healing")["reason"], "PodRestarted");
    assert_eq!(st["status"]["restartsInWindow"], 1);
    task.await.unwrap().unwrap();
    let heal: Vec<_> = log
        .recent(10, None)
        .into_iter()
        .filter(|r| matches!(r.entry, Entry::Heal { .. }))
        .collect();
    assert_eq!(heal.len(), 1);
    assert_eq!(heal[0].action, "evict checkout-b");

    // The budget is spent: the next reconcile holds back (a Warning, once) and evicts nothing.
    let task = tokio::spawn(reconcile(
        policy(json!({"healing": {"enabled": true, "maxRestarts": 1}})),
        ctx.clone(),
    ));
    expect(&mut h, "GET", SCALE_PATH, ok(scale(2))).await;
    expect(&mut h, "GET", PODS_PATH, ok(pods(&["checkout-a", "checkout-b"]))).await;
    let event = expect(&mut h, "POST", EVENTS_PATH, ok(json!({}))).await;
    assert_eq!(
        (event["reason"].as_str(), event["type"].as_str()),
        (Some("RestartHeldBack"), Some("Warning"))
    );
    let st = expect(&mut h, "PATCH", STATUS_PATH, ok(policy_json())).await;
    assert_eq!(condition(&st, "Healing")["reason"], "HeldBack");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_cause_downstream_restarts_nothing() {
    let causes = vec![CauseInput {
        service: "payment".into(),
        pod: Some("payment-x".into()),
        explanation: "payment p95 latency 9x its usual".into(),
    }];
    let (ctx, mut h, _) = context(observation(&[("checkout-a", 50.0), ("checkout-b", 50.0)], causes));
    let task = tokio::spawn(reconcile(policy(json!({"healing": {"enabled": true}})), ctx));
    expect(&mut h, "GET", SCALE_PATH, ok(scale(2))).await;
    expect(&mut h, "GET", PODS_PATH, ok(pods(&["checkout-a", "checkout-b"]))).await;
    // Straight to the status: no eviction, no event.
    let st = expect(&mut h, "PATCH", STATUS_PATH, ok(policy_json())).await;
    assert_eq!(condition(&st, "Healing")["status"], "False");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn dry_run_decides_and_reports_but_changes_nothing() {
    let (ctx, mut h, log) = context(observation(&[("checkout-a", 80.0), ("checkout-b", 80.0)], vec![]));
    let task = tokio::spawn(reconcile(policy(json!({"dryRun": true})), ctx));
    expect(&mut h, "GET", SCALE_PATH, ok(scale(2))).await;
    expect(&mut h, "GET", PODS_PATH, ok(pods(&["checkout-a", "checkout-b"]))).await;
    let event = expect(&mut h, "POST", EVENTS_PATH, ok(json!({}))).await;
    assert_eq!(event["reason"], "WouldScale");
    let st = expect(&mut h, "PATCH", STATUS_PATH, ok(policy_json())).await;
    assert_eq!(st["status"]["desiredReplicas"], 4);
    task.await.unwrap().unwrap();
    assert_eq!(log.recent(1, None)[0].outcome, "dry-run");
}

#[tokio::test]
async fn a_missing_target_degrades_the_policy() {
    let (ctx, mut h, _) = context(observation(&[], vec![]));
    let task = tokio::spawn(reconcile(policy(json!({})), ctx));
    expect(&mut h, "GET", SCALE_PATH, status(404, "NotFound")).await;
    let st = expect(&mut h, "PATCH", STATUS_PATH, ok(policy_json())).await;
    assert_eq!(condition(&st, "Degraded")["reason"], "TargetNotFound");
    assert_eq!(condition(&st, "Ready")["status"], "False");
    let event = expect(&mut h, "POST", EVENTS_PATH, ok(json!({}))).await;
    assert_eq!(
        (event["reason"].as_str(), event["type"].as_str()),
        (Some("TargetNotFound"), Some("Warning"))
    );
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn api_errors_back_off_exponentially_and_a_failed_patch_is_retried() {
    let (ctx, mut h, log) = context(observation(&[("checkout-a", 80.0), ("checkout-b", 80.0)], vec![]));
    let p = policy(json!({}));
    let task = tokio::spawn(reconcile(p.clone(), ctx.clone()));
    expect(&mut h, "GET", SCALE_PATH, status(500, "InternalError")).await;
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(
        error_policy(p.clone(), &err, ctx.clone()),
        Action::requeue(std::time::Duration::from_secs(1))
    );
    assert_eq!(
        error_policy(p.clone(), &err, ctx.clone()),
        Action::requeue(std::time::Duration::from_secs(2))
    );
    assert_eq!(
        error_policy(p.clone(), &err, ctx.clone()),
        Action::requeue(std::time::Duration::from_secs(4))
    );

    // A conflict on the scale patch: reported (Warning, Degraded), logged, and the reconcile fails so it
    // is retried through the backoff.
    let task = tokio::spawn(reconcile(p.clone(), ctx.clone()));
    expect(&mut h, "GET", SCALE_PATH, ok(scale(2))).await;
    expect(&mut h, "GET", PODS_PATH, ok(pods(&["checkout-a", "checkout-b"]))).await;
    expect(
        &mut h,
        "PATCH",
        &format!("{SCALE_PATH}?&force=true&fieldManager=tidewatch"),
        status(409, "Conflict"),
    )
    .await;
    let event = expect(&mut h, "POST", EVENTS_PATH, ok(json!({}))).await;
    assert_eq!(event["reason"], "ScaleFailed");
    let st = expect(&mut h, "PATCH", STATUS_PATH, ok(policy_json())).await;
    assert_eq!(condition(&st, "Degraded")["reason"], "ActionFailed");
    assert!(task.await.unwrap().is_err());
    assert!(log.recent(1, None)[0].outcome.starts_with("error"));
}

#[tokio::test]
async fn an_api_server_that_does_not_answer_times_out_and_backs_off() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let cfg = ScalerConfig {
        api_timeout: std::time::Duration::from_millis(200),
        ..ScalerConfig::default()
    };
    let ctx = Arc::new(Context::new(
        kube::Client::new(svc, "default"),
        &cfg,
        Arc::new(Scripted(observation(&[("checkout-a", 80.0)], vec![]))),
        Arc::new(DecisionLog::in_memory()),
        Arc::new(Metrics::default()),
    ));
    let p = policy(json!({}));
    let task = tokio::spawn(reconcile(p.clone(), ctx.clone()));
    // The request arrives and is never answered.
    let (req, _never) = h.next_request().await.expect("a request");
    assert_eq!(req.uri().path(), SCALE_PATH);
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(
        error_policy(p, &err, ctx),
        Action::requeue(std::time::Duration::from_secs(1))
    );
}
