//! `deploy/` against a real kube-apiserver (tests/it/common/kube.rs): every manifest, the example
//! ServicePolicies and the rendered Helm chart are accepted by server-side apply with strict field
//! validation; the RBAC grants the operator exactly its verbs (asked as the service account itself); the
//! configuration in the ConfigMaps passes `tidewatch check-config`; the chart renders as the golden file.
//!
//! Needs etcd, kube-apiserver and helm: `tests/k8s/install.sh` (tests/run.sh runs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::kube::{KubeCluster, tool};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams, ValidationDirective};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::runtime::wait::{await_condition, conditions};
use serde::Deserialize;
use serde_json::Value;

const NAMESPACE: &str = "tidewatch";
const FIELD_MANAGER: &str = "tidewatch-test";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every document of a multi-document YAML file, as JSON (empty documents skipped).
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML to JSON"))
        .collect()
}

fn read_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    documents(&text)
}

/// `helm template` of the chart as release `tidewatch` in namespace `tidewatch`, with these `--set`s.
fn helm_template(sets: &[&str]) -> String {
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", "tidewatch"])
        .arg(deploy().join("helm/tidewatch"))
        .args(["--namespace", NAMESPACE]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn helm_chart_renders_as_the_golden_file_and_lints() {
    let rendered = helm_template(&[]);
    let golden = deploy().join("golden/helm-default.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered).expect("write golden");
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    if rendered != expected {
        let diff = rendered
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {}: rendered {a:?}, golden {b:?}", i + 1))
            .unwrap_or_else(|| {
                format!(
                    "lengths differ: {} vs {} lines",
                    rendered.lines().count(),
                    expected.lines().count()
                )
            });
        panic!(
            "helm template differs from {} ({diff}); rerun with UPDATE_GOLDEN=1 if intended",
            golden.display()
        );
    }

    let out = Command::new(tool("helm"))
        .args(["lint", "--strict"])
        .arg(deploy().join("helm/tidewatch"))
        .output()
        .expect("run helm lint");
    assert!(
        out.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The chart grants what deploy/rbac.yaml grants, rule for rule.
#[test]
fn chart_rbac_matches_the_plain_manifests() {
    let rules = |docs: Vec<Value>, kind: &str| -> Value {
        docs.into_iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))["rules"]
            .clone()
    };
    let plain = read_documents(&deploy().join("rbac.yaml"));
    let chart = documents(&helm_template(&[]));
    for kind in ["ClusterRole", "Role"] {
        assert_eq!(
            rules(chart.clone(), kind),
            rules(plain.clone(), kind),
            "{kind} rules"
        );
    }
}

/// The configuration the ConfigMaps carry, with the Deployment's environment on top, is valid for this
/// build of Tidewatch and turns the operator on (or off, as the chart's value says).
#[test]
fn configmap_configs_pass_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = [
        (
            "tidewatch.yaml",
            read_documents(&deploy().join("tidewatch.yaml")),
            true,
        ),
        (
            "chart",
            documents(&helm_template(&["config.log.level=debug"])),
            true,
        ),
        (
            "chart-operator-off",
            documents(&helm_template(&["operator.enabled=false"])),
            false,
        ),
    ];
    for (name, docs, operator) in sources {
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .expect("a ConfigMap");
        let config = cm["data"]["config.yaml"].as_str().expect("data.config.yaml");
        let file = dir.path().join(format!("{name}.config.yaml"));
        std::fs::write(&file, config).expect("write config");
        let deployment = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment");
        let mut cmd = crate::common::tidewatch();
        cmd.arg("check-config")
            .arg("--config")
            .arg(&file)
            .env_remove("TIDEWATCH_CONFIG");
        let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("container env");
        for var in env.iter().filter(|v| v["value"].is_string()) {
            cmd.env(
                var["name"].as_str().expect("env name"),
                var["value"].as_str().expect("env value"),
            );
        }
        let out = cmd.output().expect("run tidewatch check-config");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: check-config failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let resolved: serde_yaml::Value = serde_yaml::from_str(&stdout).expect("check-config prints YAML");
        assert_eq!(
            resolved["analyzer"]["store"]["data_dir"].as_str(),
            Some("/var/lib/tidewatch"),
            "{name}: data dir"
        );
        assert_eq!(
            resolved["scaler"]["enabled"].as_bool(),
            Some(operator),
            "{name}: scaler.enabled"
        );
        let level = if name == "chart" { "debug" } else { "info" };
        assert_eq!(
            resolved["log"]["level"].as_str(),
            Some(level),
            "{name}: config values merged"
        );
    }
}

/// Server-side apply of one object (namespaced objects without a namespace go to `tidewatch`).
async fn apply(
    client: &kube::Client,
    discovery: &Discovery,
    doc: &Value,
    dry_run: bool,
) -> Result<Value, String> {
    let obj: DynamicObject =
        serde_json::from_value(doc.clone()).map_err(|e| format!("not an object: {e}"))?;
    let types = obj.types.as_ref().ok_or("no apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types).map_err(|e| e.to_string())?;
    let (resource, caps) = discovery
        .resolve_gvk(&gvk)
        .ok_or_else(|| format!("the API server does not serve {gvk:?}"))?;
    let name = obj.metadata.name.clone().ok_or("no metadata.name")?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj.metadata.namespace.as_deref().unwrap_or(NAMESPACE);
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.field_validation = Some(ValidationDirective::Strict);
    if dry_run {
        params = params.dry_run();
    }
    let applied = api
        .patch(&name, &params, &Patch::Apply(&obj))
        .await
        .map_err(|e| format!("{} {name}: {e}", gvk.kind))?;
    Ok(serde_json::to_value(applied).expect("to JSON"))
}

async fn apply_all(client: &kube::Client, discovery: &Discovery, what: &str, docs: &[Value], dry_run: bool) {
    assert!(!docs.is_empty(), "{what}: no documents");
    let mut errors = Vec::new();
    for doc in docs {
        if let Err(e) = apply(client, discovery, doc, dry_run).await {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "{what}: rejected:\n{}", errors.join("\n"));
}

/// Just enough of the Prometheus Operator's ServiceMonitor CRD for the API server to serve the kind: the
/// real schema is large and not ours; the spec is kept as given.
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: { kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: { type: object, x-kubernetes-preserve-unknown-fields: true }
"#;

async fn install_crds(client: &kube::Client, discovery: &Discovery, docs: &[Value]) {
    apply_all(client, discovery, "CRDs", docs, false).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in docs {
        let name = doc["metadata"]["name"].as_str().expect("CRD name");
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not established in 30 s"))
        .expect("watch CRD");
    }
}

/// A Pod with the pod template of the documents' Deployment, in the `tidewatch` namespace.
fn pod_of_deployment(docs: &[Value]) -> Value {
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pod-security-check", "namespace": NAMESPACE},
        "spec": deployment["spec"]["template"]["spec"],
    })
}

/// The Deployment's pods are admitted in the `tidewatch` namespace, whose label enforces the restricted
/// Pod Security Standard (a Deployment itself is only warned about; its pods are what is refused).
async fn pod_security_admits(client: &kube::Client, discovery: &Discovery, what: &str, docs: &[Value]) {
    if let Err(e) = apply(client, discovery, &pod_of_deployment(docs), true).await {
        panic!("{what}: the Deployment's pod is refused: {e}");
    }
}

/// The chart's two Kafka roles against an existing cluster.
const KAFKA_CHART: [&str; 4] = [
    "kafka.enabled=true",
    "kafka.brokers={kafka-0.kafka:9092,kafka-1.kafka:9092}",
    "kafka.checkpointsClaim=tidewatch-checkpoints",
    "serviceMonitor.enabled=true",
];

/// With `kafka.enabled` the chart runs an ingest and an analyze Deployment instead of the all-in-one one,
/// both on a configuration this build accepts for its role, the analyzers sharing the checkpoint claim;
/// the web Service points at the analyzers (each serves the global view, the operator behind a Lease), and
/// the ServiceMonitor scrapes every pod once.
#[test]
fn kafka_chart_runs_the_two_roles_on_a_valid_config() {
    let docs = documents(&helm_template(&KAFKA_CHART));
    let scraped: std::collections::BTreeMap<&str, &str> = docs
        .iter()
        .filter(|d| d["kind"] == "Service" && d["metadata"]["labels"]["app.kubernetes.io/component"] == "web")
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap_or_default(),
                d["spec"]["selector"]["app.kubernetes.io/component"]
                    .as_str()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        scraped,
        [("tidewatch-ingest", "server"), ("tidewatch-web", "analyze")].into(),
        "{scraped:?}"
    );
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    let names: Vec<&str> = deployments
        .iter()
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["tidewatch-ingest", "tidewatch-analyze"], "{names:?}");
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, cm["data"]["config.yaml"].as_str().expect("config.yaml")).expect("write");
    for d in deployments {
        let pod = &d["spec"]["template"]["spec"];
        let args: Vec<&str> = pod["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let role = args[args.iter().position(|a| *a == "--role").expect("--role") + 1];
        let out = crate::common::tidewatch()
            .args(["check-config", "--role", role, "--config"])
            .arg(&file)
            .env_remove("TIDEWATCH_CONFIG")
            .output()
            .expect("check-config");
        assert!(
            out.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let resolved: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).expect("YAML");
        assert_eq!(resolved["role"].as_str(), Some(role));
        assert_eq!(
            resolved["kafka"]["brokers"][1].as_str(),
            Some("kafka-1.kafka:9092")
        );
        let claims: Vec<&str> = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .collect();
        let want: &[&str] = if role == "analyze" {
            &["tidewatch-checkpoints"]
        } else {
            &[]
        };
        assert_eq!(claims, want, "{role}");
        let env = |name: &str| {
            pod["containers"][0]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == name)
                .and_then(|e| e["value"].as_str())
        };
        if role == "analyze" {
            assert_eq!(env("TIDEWATCH_SCALER__ENABLED"), Some("true"));
            assert_eq!(env("TIDEWATCH_SCALER__LEADER_ELECTION__ENABLED"), Some("true"));
            assert_eq!(pod["automountServiceAccountToken"], true);
        } else {
            assert_eq!(env("TIDEWATCH_SCALER__ENABLED"), None);
            assert_eq!(pod["automountServiceAccountToken"], false);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_manifests_are_accepted_and_rbac_is_least_privilege() {
    let cluster = KubeCluster::start().await;
    let client = cluster.client().await;
    let discovery = Discovery::new(client.clone()).run().await.expect("discovery");

    // The CRDs for real (the examples and the ServiceMonitor need their kinds served), then discover again.
    let mut crds = read_documents(&deploy().join("crds/servicepolicy.yaml"));
    crds.extend(documents(SERVICE_MONITOR_CRD));
    install_crds(&client, &discovery, &crds).await;
    let discovery = Discovery::new(client.clone()).run().await.expect("discovery");

    // The namespaces and the RBAC for real: the access reviews below need them.
    let plain = read_documents(&deploy().join("tidewatch.yaml"));
    let namespaces: Vec<Value> = plain
        .iter()
        .filter(|d| d["kind"] == "Namespace")
        .cloned()
        .collect();
    assert_eq!(namespaces.len(), 1, "tidewatch.yaml has the Namespace");
    apply_all(&client, &discovery, "namespace", &namespaces, false).await;
    cluster.ensure_namespace("shop").await; // the examples' namespace
    let rbac = read_documents(&deploy().join("rbac.yaml"));
    apply_all(&client, &discovery, "deploy/rbac.yaml", &rbac, false).await;

    // Everything else as a dry run, strict about unknown fields.
    apply_all(&client, &discovery, "deploy/tidewatch.yaml", &plain, true).await;
    let monitor = read_documents(&deploy().join("servicemonitor.yaml"));
    apply_all(&client, &discovery, "deploy/servicemonitor.yaml", &monitor, true).await;
    let mut examples: Vec<PathBuf> = std::fs::read_dir(deploy().join("examples"))
        .expect("deploy/examples")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "examples: {examples:?}");
    for example in &examples {
        let docs = read_documents(example);
        apply_all(&client, &discovery, &example.display().to_string(), &docs, true).await;
    }
    for sets in [
        &[][..],
        &[
            "serviceMonitor.enabled=true",
            "persistence.enabled=true",
            "operator.enabled=false",
        ][..],
        &KAFKA_CHART[..],
    ] {
        let chart = documents(&helm_template(sets));
        let kinds: Vec<&str> = chart.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
        ] {
            assert!(
                kinds.contains(&kind),
                "chart with {sets:?} renders no {kind}: {kinds:?}"
            );
        }
        apply_all(
            &client,
            &discovery,
            &format!("helm chart with {sets:?}"),
            &chart,
            true,
        )
        .await;
        pod_security_admits(&client, &discovery, &format!("helm chart with {sets:?}"), &chart).await;
    }
    pod_security_admits(&client, &discovery, "deploy/tidewatch.yaml", &plain).await;
    // And the check has teeth: the same pod as root with the default capabilities is refused.
    let mut root = pod_of_deployment(&plain);
    root["spec"]["securityContext"] = serde_json::json!({});
    root["spec"]["containers"][0]["securityContext"] = serde_json::json!({});
    let err = apply(&client, &discovery, &root, true)
        .await
        .expect_err("a root pod admitted under the restricted Pod Security Standard");
    assert!(err.contains("PodSecurity"), "{err}");

    // The validation is really on: a policy with minReplicas > maxReplicas and one with an unknown field
    // are refused.
    let checkout = read_documents(&deploy().join("examples/checkout-predictive.yaml")).remove(0);
    let mut inverted = checkout.clone();
    inverted["spec"]["minReplicas"] = 50.into();
    let err = apply(&client, &discovery, &inverted, true)
        .await
        .expect_err("minReplicas > maxReplicas accepted");
    assert!(err.contains("minReplicas must not exceed maxReplicas"), "{err}");
    let mut unknown = checkout.clone();
    unknown["spec"]["maxReplica"] = 3.into();
    let err = apply(&client, &discovery, &unknown, true)
        .await
        .expect_err("unknown field accepted");
    assert!(err.contains("maxReplica"), "{err}");

    // RBAC, asked by the operator's own service account through a token from the TokenRequest API.
    let sa = cluster.service_account(NAMESPACE, "tidewatch").await;
    let operator = sa.client().await;
    let allowed: &[(&str, &str, &str, &[&str], &str)] = &[
        // (group, resource, subresource, verbs, namespace: "" = all)
        (
            "tidewatch.dev",
            "servicepolicies",
            "",
            &["get", "list", "watch"],
            "",
        ),
        (
            "tidewatch.dev",
            "servicepolicies",
            "status",
            &["get", "patch"],
            "shop",
        ),
        ("apps", "deployments", "", &["get", "list", "watch"], ""),
        ("apps", "statefulsets", "", &["get", "list", "watch"], ""),
        ("apps", "deployments", "scale", &["get", "patch"], "shop"),
        ("apps", "statefulsets", "scale", &["get", "patch"], "shop"),
        ("", "pods", "", &["get", "list", "watch", "delete"], "shop"),
        ("", "pods", "eviction", &["create"], "shop"),
        ("events.k8s.io", "events", "", &["create", "patch"], "shop"),
        (
            "coordination.k8s.io",
            "leases",
            "",
            &["get", "create", "update"],
            NAMESPACE,
        ),
    ];
    let denied: &[(&str, &str, &str, &[&str], &str)] = &[
        ("", "secrets", "", &["get", "list"], "shop"),
        ("", "secrets", "", &["get"], NAMESPACE),
        ("", "configmaps", "", &["get"], "shop"),
        ("", "pods", "", &["create", "update", "patch"], "shop"),
        ("", "pods", "exec", &["create"], "shop"),
        (
            "apps",
            "deployments",
            "",
            &["create", "update", "patch", "delete"],
            "shop",
        ),
        ("apps", "statefulsets", "", &["update", "patch", "delete"], "shop"),
        ("apps", "deployments", "scale", &["update"], "shop"),
        (
            "tidewatch.dev",
            "servicepolicies",
            "",
            &["create", "update", "patch", "delete"],
            "shop",
        ),
        ("tidewatch.dev", "servicepolicies", "status", &["update"], "shop"),
        ("events.k8s.io", "events", "", &["delete", "update"], "shop"),
        ("", "events", "", &["create"], "shop"),
        // The Lease only in the operator's own namespace, and never deleted.
        (
            "coordination.k8s.io",
            "leases",
            "",
            &["get", "create", "update"],
            "kube-system",
        ),
        (
            "coordination.k8s.io",
            "leases",
            "",
            &["delete", "list"],
            NAMESPACE,
        ),
        (
            "rbac.authorization.k8s.io",
            "clusterroles",
            "",
            &["create", "bind", "escalate"],
            "",
        ),
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
            &["create", "update"],
            "",
        ),
    ];
    let reviews: Api<SelfSubjectAccessReview> = Api::all(operator);
    let mut wrong = Vec::new();
    for (expect, cases) in [(true, allowed), (false, denied)] {
        for &(group, resource, subresource, verbs, namespace) in cases {
            for verb in verbs {
                let review = SelfSubjectAccessReview {
                    spec: SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(ResourceAttributes {
                            group: Some(group.into()),
                            resource: Some(resource.into()),
                            subresource: (!subresource.is_empty()).then(|| subresource.into()),
                            verb: Some((*verb).into()),
                            namespace: (!namespace.is_empty()).then(|| namespace.into()),
                            ..ResourceAttributes::default()
                        }),
                        ..SelfSubjectAccessReviewSpec::default()
                    },
                    ..SelfSubjectAccessReview::default()
                };
                let answer = reviews
                    .create(&PostParams::default(), &review)
                    .await
                    .expect("SelfSubjectAccessReview as the service account")
                    .status
                    .expect("review status");
                if answer.allowed != expect {
                    wrong.push(format!(
                        "{verb} {group}/{resource}{}{} in {:?}: allowed={} (want {expect})",
                        if subresource.is_empty() { "" } else { "/" },
                        subresource,
                        namespace,
                        answer.allowed
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC for {}:\n{}",
        sa.username,
        wrong.join("\n")
    );
}
