//! The operator end to end, against a real kube-apiserver and etcd: the CRD and the RBAC from `deploy/`,
//! Tidewatch running as the `tidewatch` service account (leader election on), a Deployment with pods
//! that the load generator's shop reports telemetry for over OTLP, and a ServicePolicy. The Deployment's
//! replicas must change, the pod the models single out (and only it) must be evicted, and Events, status
//! and `/api/decisions` must say so.
//!
//! There is no controller-manager or kubelet: the test creates the pods itself and marks them ready.

use std::time::{Duration, Instant};

use crate::common::Tidewatch;
use crate::common::kube::KubeCluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::runtime::wait::{await_condition, conditions};
use serde::Deserialize;
use serde_json::{Value, json};

const NS: &str = "shop";

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("JSON"))
        .collect()
}

/// Server-side apply of every document of a `deploy/` file, as the admin.
pub(crate) async fn apply_file(client: &kube::Client, path: &str) {
    let discovery = Discovery::new(client.clone()).run().await.expect("discovery");
    for doc in documents(path) {
        let obj: DynamicObject = serde_json::from_value(doc).expect("object");
        let gvk = GroupVersionKind::try_from(obj.types.as_ref().expect("types")).expect("gvk");
        let (res, caps) = discovery.resolve_gvk(&gvk).expect("served kind");
        let name = obj.metadata.name.clone().expect("name");
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or("tidewatch"),
                &res,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &res),
        };
        api.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("{path}: {} {name}: {e}", gvk.kind));
    }
}

/// A GET on the web port; the harness's blocking client needs a thread that may block.
pub(crate) fn web(tw: &Tidewatch, path: &str) -> Option<Value> {
    tokio::task::block_in_place(|| tw.get_web(path).json().ok())
}

pub(crate) async fn eventually<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A running cluster, Tidewatch as the operator, the shop's load, and the inventory Deployment with the
/// pods the shop reports.
struct Env {
    w: Workload,
    tw: Tidewatch,
    _load: crate::common::Guard,
    names: Vec<String>,
    pods: Api<Pod>,
    policies: Api<DynamicObject>,
}

/// The cluster side: the CRD and RBAC as `deploy/` ships them, the operator's service account, and the
/// inventory Deployment (3 replicas, no pods yet: no controller-manager).
pub(crate) struct Workload {
    pub cluster: KubeCluster,
    pub admin: kube::Client,
    pub sa: crate::common::kube::ServiceAccountAccess,
    pub deployments: Api<Deployment>,
    template: Value,
}

pub(crate) async fn workload() -> Workload {
    let cluster = KubeCluster::start().await;
    let admin = cluster.client().await;

    // CRD and RBAC exactly as deploy/ ships them.
    apply_file(&admin, "deploy/crds/servicepolicy.yaml").await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            "servicepolicies.tidewatch.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established")
    .expect("watch CRD");
    cluster.ensure_namespace("tidewatch").await;
    apply_file(&admin, "deploy/rbac.yaml").await;
    let sa = cluster.service_account("tidewatch", "tidewatch").await;

    // The workload: a Deployment of inventory (pods are the test's to create: no controller-manager).
    cluster.ensure_namespace(NS).await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    let default_sa = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    let _ = sas.create(&PostParams::default(), &default_sa).await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let template = json!({"metadata": {"labels": {"app": "inventory"}},
                          "spec": {"containers": [{"name": "app", "image": "inventory:1"}]}});
    let dep = serde_json::from_value(json!({
        "metadata": {"name": "inventory"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "inventory"}}, "template": template},
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &dep)
        .await
        .expect("deployment");
    Workload {
        cluster,
        admin,
        sa,
        deployments,
        template,
    }
}

impl Workload {
    /// The `--set`s that run the operator as the service account, with leader election, every second.
    pub fn operator_sets(&self) -> Vec<String> {
        vec![
            "scaler.enabled=true".into(),
            format!("scaler.kubeconfig={}", self.sa.kubeconfig.display()),
            "scaler.interval=1s".into(),
            "scaler.leader_election.enabled=true".into(),
            "scaler.leader_election.namespace=tidewatch".into(),
        ]
    }

    /// The inventory pods `tw`'s telemetry reports, created for real and marked ready; their names.
    pub async fn ready_pods(&self, tw: &Tidewatch) -> Vec<String> {
        let names: Vec<String> = eventually(
            "inventory pods in telemetry",
            Duration::from_secs(60),
            async || {
                let v = web(tw, "/api/services/inventory/pods?window=1m")?;
                let names: Vec<String> = v["pods"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| p["pod"].as_str().map(str::to_owned))
                    .collect();
                (names.len() >= 3).then_some(names)
            },
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), NS);
        for name in &names {
            let pod =
                serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "inventory"}},
                                                    "spec": self.template["spec"]}))
                .unwrap();
            pods.create(&PostParams::default(), &pod).await.expect("pod");
            let status = json!({"status": {"phase": "Running",
                                           "conditions": [{"type": "Ready", "status": "True"}]}});
            pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .expect("pod ready");
        }
        names
    }

    pub fn policies(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.admin.clone(),
            NS,
            &kube::core::ApiResource::from_gvk(&GroupVersionKind::gvk(
                "tidewatch.dev",
                "v1alpha1",
                "ServicePolicy",
            )),
        )
    }

    /// Applies the inventory ServicePolicy with `spec`.
    pub async fn apply_policy(&self, spec: Value) {
        let policy: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tidewatch.dev/v1alpha1", "kind": "ServicePolicy",
            "metadata": {"name": "inventory", "namespace": NS},
            "spec": spec,
        }))
        .unwrap();
        self.policies()
            .patch(
                "inventory",
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&policy),
            )
            .await
            .expect("policy");
    }

    /// The inventory Deployment's replicas.
    pub async fn replicas(&self) -> i32 {
        let d = self.deployments.get("inventory").await.expect("deployment");
        d.spec.and_then(|s| s.replicas).unwrap_or(0)
    }
}

async fn setup(loadgen_extra: &[&str]) -> Env {
    let w = workload().await;
    // Tidewatch as the operator's service account, with leader election, on fast windows.
    let tw = tokio::task::block_in_place(|| {
        let operator = w.operator_sets();
        let sets: Vec<&str> = crate::common::FAST_WINDOWS
            .iter()
            .copied()
            .chain(operator.iter().map(String::as_str))
            .collect();
        Tidewatch::start(&sets)
    });
    let _load = crate::common::Guard::spawn(
        crate::common::loadgen(&tw, 4000, 200)
            .args(["--duration", "40s", "--metrics-and-logs", "false"])
            .args(loadgen_extra),
    );
    let names = w.ready_pods(&tw).await;
    let pods: Api<Pod> = Api::namespaced(w.admin.clone(), NS);
    let policies = w.policies();
    Env {
        w,
        tw,
        _load,
        names,
        pods,
        policies,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_scales_the_deployment_and_evicts_only_the_bad_pod() {
    let env = setup(&["--incident", "bad-pod:inventory@10s"]).await;
    let Env {
        w,
        tw,
        names,
        pods,
        policies,
        ..
    } = &env;
    let (admin, deployments) = (&w.admin, &w.deployments);
    let bad = names
        .iter()
        .find(|n| n.ends_with("-a1b2c"))
        .expect("the shop's first pod")
        .clone();

    // The policy: a per-replica capacity well under the pods' load, and healing on.
    w.apply_policy(
        json!({"targetRef": {"kind": "Deployment", "name": "inventory"}, "service": "inventory",
               "minReplicas": 2, "maxReplicas": 8,
               "capacity": {"requestsPerReplica": 1.0},
               "healing": {"enabled": true, "maxRestarts": 1, "backoffSeconds": 0}}),
    )
    .await;

    // Scaled up through the scale subresource: more replicas, within maxReplicas.
    let replicas = eventually("a scale-up", Duration::from_secs(30), async || {
        let d = deployments.get("inventory").await.ok()?;
        let r = d.spec?.replicas?;
        (r > 3).then_some(r)
    })
    .await;
    assert!(replicas <= 8, "{replicas}");

    // The bad pod, and only it, is evicted once the incident is localised to it.
    eventually("the bad pod evicted", Duration::from_secs(40), async || {
        pods.get_opt(&bad).await.ok()?.is_none().then_some(())
    })
    .await;
    for name in names.iter().filter(|n| **n != bad) {
        assert!(
            pods.get_opt(name).await.unwrap().is_some(),
            "healthy pod {name} was removed"
        );
    }

    // Events on the policy, status conditions and the decision log tell the story. A reconcile reports
    // after it acts: the pod can be gone a moment before its Event is written.
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    let reasons = eventually("the restart's Event", Duration::from_secs(30), async || {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("inventory"))
            .filter_map(|e| e.reason.clone())
            .collect();
        reasons.iter().any(|r| r == "PodRestarted").then_some(reasons)
    })
    .await;
    assert!(reasons.iter().any(|r| r == "ScaledUp"), "{reasons:?}");
    let p = policies.get("inventory").await.unwrap();
    let status = &p.data["status"];
    let cond = |t: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t).cloned())
            .unwrap_or_default()
    };
    assert_eq!(cond("Ready")["status"], "True", "{status}");
    assert!(status["desiredReplicas"].as_i64().unwrap_or(0) > 3, "{status}");
    // The decision log is written just after the Events.
    let evicted = format!("evict {bad}");
    let list = eventually("the eviction logged", Duration::from_secs(30), async || {
        let decisions = web(tw, "/api/decisions?policy=shop/inventory")?;
        let list = decisions["decisions"].as_array()?.clone();
        list.iter()
            .any(|d| d["kind"] == "heal" && d["action"] == evicted)
            .then_some(list)
    })
    .await;
    assert!(
        list.iter().any(|d| d["kind"] == "scale"
            && d["outcome"] == "ok"
            && d["action"].as_str().unwrap().starts_with("scale 3→")),
        "{list:?}"
    );
    // The operator held the lease.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(admin.clone(), "tidewatch");
    let lease = leases.get("tidewatch-operator").await.expect("lease");
    assert!(lease.spec.and_then(|s| s.holder_identity).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_rides_out_an_api_server_restart_and_never_leaves_its_bounds() {
    let mut env = setup(&[]).await;
    let spec = |max: i32| {
        json!({"targetRef": {"kind": "Deployment", "name": "inventory"}, "service": "inventory",
               "minReplicas": 2, "maxReplicas": max, "capacity": {"requestsPerReplica": 1.0}})
    };
    env.w.apply_policy(spec(6)).await;
    // Far more load than six replicas carry: it goes to maxReplicas and stays there, never past it.
    eventually("replicas at maxReplicas", Duration::from_secs(30), async || {
        (env.w.replicas().await == 6).then_some(())
    })
    .await;
    for _ in 0..8 {
        assert!(env.w.replicas().await <= 6);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every connection and watch drops while the API server is down for a few seconds.
    env.w.cluster.restart_apiserver(Duration::from_secs(4)).await;

    // A change made after the restart is seen (the watch came back) and the new bound holds at once,
    // stabilisation window or not.
    env.w.apply_policy(spec(4)).await;
    eventually(
        "replicas down to the new maxReplicas",
        Duration::from_secs(30),
        async || (env.w.replicas().await == 4).then_some(()),
    )
    .await;
    for _ in 0..8 {
        assert!(env.w.replicas().await <= 4);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The failures during the outage were counted and retried.
    let metrics = tokio::task::block_in_place(|| env.tw.get_web("/metrics").text().unwrap());
    let errors: f64 = metrics
        .lines()
        .find(|l| l.starts_with("tidewatch_operator_reconciles_total{result=\"error\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("error counter");
    assert!(errors >= 1.0, "{metrics}");
}
