//! The Kubernetes test harness itself (tests/it/common/kube.rs): a real etcd + kube-apiserver that serves
//! the API, enforces RBAC on service-account tokens from the TokenRequest API, and is gone when dropped.
//!
//! Needs etcd and kube-apiserver: `tests/k8s/install.sh` (tests/run.sh runs it).

use std::time::Duration;

use crate::common::kube::KubeCluster;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_the_api_enforces_rbac_and_stops_on_drop() {
    let cluster = KubeCluster::start().await;
    let admin = cluster.client().await;

    let version = admin.apiserver_version().await.expect("version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34"),
        "{version:?}"
    );

    // Pods can be created directly (no ServiceAccount admission, no scheduler: it stays Pending).
    cluster.ensure_namespace("shop").await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "shop");
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("checkout-0".into()),
            labels: Some([("app".to_owned(), "checkout".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("checkout:1".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");

    // A service account with a TokenRequest token: authenticated, but allowed nothing until bound.
    let sa = cluster.service_account("shop", "reader").await;
    assert_eq!(sa.username, "system:serviceaccount:shop:reader");
    let as_sa: Api<Pod> = Api::namespaced(sa.client().await, "shop");
    let err = as_sa
        .list(&ListParams::default())
        .await
        .expect_err("listed pods without RBAC");
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err}");

    let roles: Api<Role> = Api::namespaced(admin.clone(), "shop");
    let role = Role {
        metadata: ObjectMeta {
            name: Some("pod-reader".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["list".into()],
            ..PolicyRule::default()
        }]),
    };
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("create role");
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "shop");
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("reader".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "pod-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some("shop".into()),
            ..Subject::default()
        }]),
    };
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create binding");
    // The RBAC authorizer's informer sees the binding within moments.
    let mut listed = None;
    for _ in 0..50 {
        match as_sa.list(&ListParams::default()).await {
            Ok(list) => {
                listed = Some(list);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let names: Vec<String> = listed
        .expect("list pods once bound")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["checkout-0"]);
    // Only what the Role grants: get is still refused.
    let err = as_sa
        .get("checkout-0")
        .await
        .expect_err("get allowed by a list-only role");
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err}");

    // The kubeconfig written for the service account is one a kube client reads on its own.
    let text = std::fs::read_to_string(&sa.kubeconfig).expect("kubeconfig");
    assert!(text.contains(&sa.token), "token in the kubeconfig");

    // Dropping the cluster stops both processes: the API server's port no longer answers.
    let port: u16 = cluster.url.rsplit(':').next().unwrap().parse().expect("port");
    drop(cluster);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "kube-apiserver still listening on {port} after drop"
    );
}
