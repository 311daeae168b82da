//! The cluster as the reconciler sees it: read a target's scale and pods, change its replicas, restart a
//! pod, publish an Event, write a policy's status. Two implementations: [`KubeCluster`], the Kubernetes
//! API (scale subresource by server-side apply, the Eviction API, `events.k8s.io` Events, the status
//! subresource), and [`crate::sim_cluster::SimCluster`], simulated Deployments for `tidewatch demo`.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::crd::{HealMode, ServicePolicy, ServicePolicyStatus, TargetKind, TargetRef};
use crate::{Error, Result};

/// The field manager of every write.
pub const MANAGER: &str = "tidewatch";

/// A target's scale: `spec.replicas` and the label selector of its pods.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetScale {
    pub replicas: u32,
    pub selector: String,
}

/// One pod of a target that is not being deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub name: String,
    pub ready: bool,
}

/// How a restart request went, when the API answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Restarted {
    Done,
    /// Refused for now (a PodDisruptionBudget): not an error, retried on a later reconcile.
    Refused(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NoteType {
    Normal,
    Warning,
}

/// An Event about a policy: what the operator did or held back, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Note {
    #[serde(rename = "type")]
    pub type_: NoteType,
    /// `ScaledUp`, `PodRestarted`, `RestartHeldBack`, …
    pub reason: &'static str,
    /// `Scale`, `Heal` or `Reconcile`.
    pub action: &'static str,
    pub note: String,
}

/// What the reconciler needs of a cluster. Every call may fail with an API error or a timeout; a target
/// that does not exist is `Ok(None)` from [`Cluster::scale`], not an error.
pub trait Cluster: Send + Sync {
    fn scale<'a>(&'a self, ns: &'a str, target: &'a TargetRef) -> BoxFuture<'a, Result<Option<TargetScale>>>;
    /// The pods matching `selector`, without those being deleted.
    fn pods<'a>(&'a self, ns: &'a str, selector: &'a str) -> BoxFuture<'a, Result<Vec<PodInfo>>>;
    fn set_replicas<'a>(
        &'a self,
        ns: &'a str,
        target: &'a TargetRef,
        replicas: u32,
    ) -> BoxFuture<'a, Result<()>>;
    fn restart<'a>(&'a self, ns: &'a str, pod: &'a str, mode: HealMode) -> BoxFuture<'a, Result<Restarted>>;
    /// Publishes an Event about `policy`; a failure is logged, never fatal to the reconcile.
    fn publish<'a>(&'a self, policy: &'a ServicePolicy, note: &'a Note) -> BoxFuture<'a, ()>;
    fn patch_status<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        status: &'a ServicePolicyStatus,
    ) -> BoxFuture<'a, Result<()>>;
}

/// The Kubernetes API, every call bounded by a timeout.
pub struct KubeCluster {
    client: Client,
    recorder: Recorder,
    timeout: Duration,
}

impl KubeCluster {
    pub fn new(client: Client, timeout: Duration) -> KubeCluster {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        KubeCluster {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            timeout,
        }
    }

    async fn timed<T>(&self, fut: impl Future<Output = kube::Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Cluster for KubeCluster {
    fn scale<'a>(&'a self, ns: &'a str, target: &'a TargetRef) -> BoxFuture<'a, Result<Option<TargetScale>>> {
        Box::pin(async move {
            let scale = match target.kind {
                TargetKind::Deployment => {
                    self.timed(Api::<Deployment>::namespaced(self.client.clone(), ns).get_scale(&target.name))
                        .await
                }
                TargetKind::StatefulSet => {
                    self.timed(
                        Api::<StatefulSet>::namespaced(self.client.clone(), ns).get_scale(&target.name),
                    )
                    .await
                }
            };
            match scale {
                Ok(s) => Ok(Some(TargetScale {
                    replicas: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0).max(0) as u32,
                    selector: s.status.and_then(|s| s.selector).unwrap_or_default(),
                })),
                Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn pods<'a>(&'a self, ns: &'a str, selector: &'a str) -> BoxFuture<'a, Result<Vec<PodInfo>>> {
        Box::pin(async move {
            if selector.is_empty() {
                return Ok(Vec::new());
            }
            let api = Api::<Pod>::namespaced(self.client.clone(), ns);
            let list = self
                .timed(api.list(&ListParams::default().labels(selector)))
                .await?;
            Ok(list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| PodInfo {
                    name: p.name_any(),
                    ready: pod_ready(p),
                })
                .collect())
        })
    }

    fn set_replicas<'a>(
        &'a self,
        ns: &'a str,
        target: &'a TargetRef,
        replicas: u32,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let name = &target.name;
            let body = json!({
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"replicas": replicas},
            });
            // Forced: Tidewatch owns `spec.replicas` of a target it scales, as the HPA does.
            let pp = PatchParams::apply(MANAGER).force();
            let patch = Patch::Apply(&body);
            match target.kind {
                TargetKind::Deployment => {
                    let api = Api::<Deployment>::namespaced(self.client.clone(), ns);
                    self.timed(api.patch_scale(name, &pp, &patch)).await?;
                }
                TargetKind::StatefulSet => {
                    let api = Api::<StatefulSet>::namespaced(self.client.clone(), ns);
                    self.timed(api.patch_scale(name, &pp, &patch)).await?;
                }
            }
            Ok(())
        })
    }

    fn restart<'a>(&'a self, ns: &'a str, pod: &'a str, mode: HealMode) -> BoxFuture<'a, Result<Restarted>> {
        Box::pin(async move {
            let api = Api::<Pod>::namespaced(self.client.clone(), ns);
            let res = match mode {
                HealMode::Evict => self
                    .timed(api.evict(pod, &EvictParams::default()))
                    .await
                    .map(drop),
                HealMode::Delete => self
                    .timed(api.delete(pod, &DeleteParams::default()))
                    .await
                    .map(drop),
            };
            match res {
                Ok(()) => Ok(Restarted::Done),
                // 429: a PodDisruptionBudget refuses the eviction now.
                Err(Error::Kube(kube::Error::Api(e))) if e.code == 429 => Ok(Restarted::Refused(format!(
                    "refused by a PodDisruptionBudget: {}",
                    e.message
                ))),
                Err(e) => Err(e),
            }
        })
    }

    fn publish<'a>(&'a self, policy: &'a ServicePolicy, note: &'a Note) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let ev = Event {
                type_: match note.type_ {
                    NoteType::Normal => EventType::Normal,
                    NoteType::Warning => EventType::Warning,
                },
                reason: note.reason.into(),
                note: Some(note.note.chars().take(1000).collect()),
                action: note.action.into(),
                secondary: None,
            };
            let obj = policy.object_ref(&());
            let reason = note.reason;
            match tokio::time::timeout(self.timeout, self.recorder.publish(&ev, &obj)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, reason, "event not recorded"),
                Err(_) => tracing::warn!(reason, "event not recorded: timed out"),
            }
        })
    }

    fn patch_status<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        status: &'a ServicePolicyStatus,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let body = json!({
                "apiVersion": ServicePolicy::api_version(&()),
                "kind": ServicePolicy::kind(&()),
                "status": status,
            });
            let api: Api<ServicePolicy> = Api::namespaced(self.client.clone(), ns);
            self.timed(api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)))
                .await?;
            Ok(())
        })
    }
}
