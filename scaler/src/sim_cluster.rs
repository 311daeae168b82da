//! A simulated cluster, for `tidewatch demo`: Deployments whose pods serve a cold start after they are
//! created, scale down as a ReplicaSet does ([`scale_down`]), and are replaced by a new pod when evicted or
//! deleted; ServicePolicies with their status; Events kept in memory. It implements [`Cluster`], so the
//! reconciler drives it exactly as it drives the Kubernetes API.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use kube::ResourceExt;

use crate::cluster::{Cluster, Note, PodInfo, Restarted, TargetScale};
use crate::crd::{HealMode, ServicePolicy, ServicePolicyStatus, TargetRef};
use crate::simulate::scale_down;
use crate::{Error, Result};

/// Events kept.
const EVENTS: usize = 500;

/// A pod of a simulated Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct SimPod {
    pub name: String,
    /// When it starts serving (Unix ms).
    pub ready_at_ms: i64,
}

struct Deployment {
    replicas: u32,
    pods: Vec<SimPod>,
}

/// An Event the simulated cluster received.
#[derive(Clone, Debug, PartialEq)]
pub struct SimEvent {
    pub ts_ms: i64,
    /// `namespace/name` of the policy.
    pub policy: String,
    pub note: Note,
}

#[derive(Default)]
struct State {
    deployments: BTreeMap<(String, String), Deployment>,
    policies: BTreeMap<(String, String), ServicePolicy>,
    events: VecDeque<SimEvent>,
    next_pod: u64,
}

/// The simulated cluster. `clock` gives the time in Unix ms.
pub struct SimCluster {
    cold_start_ms: i64,
    clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    state: Mutex<State>,
}

/// The selector of a simulated Deployment's pods.
fn selector(name: &str) -> String {
    format!("app={name}")
}

impl SimCluster {
    pub fn new(cold_start_ms: i64, clock: Arc<dyn Fn() -> i64 + Send + Sync>) -> SimCluster {
        SimCluster {
            cold_start_ms: cold_start_ms.max(0),
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pod name as a ReplicaSet makes them: the Deployment's name, a hash, a suffix.
    fn new_pod(counter: &mut u64, name: &str, ready_at_ms: i64) -> SimPod {
        *counter += 1;
        // A fixed odd multiplier spreads consecutive numbers over the 5 hex digits.
        let id = counter.wrapping_mul(0x9E37_79B9) & 0xF_FFFF;
        SimPod {
            name: format!("{name}-6d4f8-{id:05x}"),
            ready_at_ms,
        }
    }

    /// Adds a Deployment with `replicas` pods, all serving already.
    pub fn add_deployment(&self, ns: &str, name: &str, replicas: u32) {
        let mut st = self.state();
        let pods = (0..replicas)
            .map(|_| Self::new_pod(&mut st.next_pod, name, i64::MIN))
            .collect();
        st.deployments
            .insert((ns.to_owned(), name.to_owned()), Deployment { replicas, pods });
    }

    /// Creates or replaces a policy (keeping its status).
    pub fn apply_policy(&self, mut policy: ServicePolicy) {
        let key = (policy.namespace().unwrap_or_default(), policy.name_any());
        let mut st = self.state();
        if let Some(old) = st.policies.get(&key) {
            policy.status = old.status.clone();
        }
        st.policies.insert(key, policy);
    }

    /// Every policy, with its status as last written.
    pub fn policies(&self) -> Vec<Arc<ServicePolicy>> {
        self.state().policies.values().cloned().map(Arc::new).collect()
    }

    /// The pods of a Deployment that serve now.
    pub fn ready_pods(&self, ns: &str, name: &str) -> Vec<String> {
        let now = (self.clock)();
        self.state()
            .deployments
            .get(&(ns.to_owned(), name.to_owned()))
            .map(|d| {
                d.pods
                    .iter()
                    .filter(|p| p.ready_at_ms <= now)
                    .map(|p| p.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The Events received, oldest first.
    pub fn events(&self) -> Vec<SimEvent> {
        self.state().events.iter().cloned().collect()
    }

    fn deployment_of<'s>(
        deployments: &'s mut BTreeMap<(String, String), Deployment>,
        ns: &str,
        name: &str,
    ) -> Result<&'s mut Deployment> {
        deployments
            .get_mut(&(ns.to_owned(), name.to_owned()))
            .ok_or_else(|| Error::Target {
                kind: "Deployment".into(),
                name: name.to_owned(),
                why: "not found".into(),
            })
    }
}

impl Cluster for SimCluster {
    fn scale<'a>(&'a self, ns: &'a str, target: &'a TargetRef) -> BoxFuture<'a, Result<Option<TargetScale>>> {
        let st = self.state();
        let scale = st
            .deployments
            .get(&(ns.to_owned(), target.name.clone()))
            .map(|d| TargetScale {
                replicas: d.replicas,
                selector: selector(&target.name),
            });
        Box::pin(std::future::ready(Ok(scale)))
    }

    fn pods<'a>(&'a self, ns: &'a str, selector: &'a str) -> BoxFuture<'a, Result<Vec<PodInfo>>> {
        let now = (self.clock)();
        let st = self.state();
        let pods = selector
            .strip_prefix("app=")
            .and_then(|name| st.deployments.get(&(ns.to_owned(), name.to_owned())))
            .map(|d| {
                d.pods
                    .iter()
                    .map(|p| PodInfo {
                        name: p.name.clone(),
                        ready: p.ready_at_ms <= now,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(pods)))
    }

    fn set_replicas<'a>(
        &'a self,
        ns: &'a str,
        target: &'a TargetRef,
        replicas: u32,
    ) -> BoxFuture<'a, Result<()>> {
        let ready_at = (self.clock)().saturating_add(self.cold_start_ms);
        let mut guard = self.state();
        let st = &mut *guard;
        let result = Self::deployment_of(&mut st.deployments, ns, &target.name).map(|d| {
            let (have, want) = (d.pods.len(), replicas as usize);
            d.replicas = replicas;
            if want > have {
                for _ in have..want {
                    d.pods
                        .push(Self::new_pod(&mut st.next_pod, &target.name, ready_at));
                }
            } else {
                scale_down(&mut d.pods, have - want, |p| p.ready_at_ms);
            }
        });
        Box::pin(std::future::ready(result))
    }

    fn restart<'a>(&'a self, ns: &'a str, pod: &'a str, _mode: HealMode) -> BoxFuture<'a, Result<Restarted>> {
        let ready_at = (self.clock)().saturating_add(self.cold_start_ms);
        let mut guard = self.state();
        let st = &mut *guard;
        let owner = st
            .deployments
            .iter_mut()
            .find(|((n, _), d)| n == ns && d.pods.iter().any(|p| p.name == pod));
        let result = match owner {
            None => Err(Error::Target {
                kind: "Pod".into(),
                name: pod.to_owned(),
                why: "not found".into(),
            }),
            Some(((_, name), d)) => {
                // The ReplicaSet replaces the pod with a new one.
                d.pods.retain(|p| p.name != pod);
                d.pods.push(Self::new_pod(&mut st.next_pod, name, ready_at));
                Ok(Restarted::Done)
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn publish<'a>(&'a self, policy: &'a ServicePolicy, note: &'a Note) -> BoxFuture<'a, ()> {
        let ev = SimEvent {
            ts_ms: (self.clock)(),
            policy: format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any()),
            note: note.clone(),
        };
        tracing::info!(policy = %ev.policy, reason = note.reason, note = %note.note, "event");
        let mut st = self.state();
        st.events.push_back(ev);
        if st.events.len() > EVENTS {
            st.events.pop_front();
        }
        Box::pin(std::future::ready(()))
    }

    fn patch_status<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
        status: &'a ServicePolicyStatus,
    ) -> BoxFuture<'a, Result<()>> {
        let mut st = self.state();
        let result = match st.policies.get_mut(&(ns.to_owned(), name.to_owned())) {
            Some(p) => {
                p.status = Some(status.clone());
                Ok(())
            }
            None => Err(Error::Target {
                kind: "ServicePolicy".into(),
                name: name.to_owned(),
                why: "not found".into(),
            }),
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    fn target(name: &str) -> TargetRef {
        TargetRef {
            kind: Default::default(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn new_pods_serve_after_the_cold_start_and_scale_down_takes_them_first() {
        let now = Arc::new(AtomicI64::new(1_000_000));
        let clock = now.clone();
        let c = SimCluster::new(20_000, Arc::new(move || clock.load(Ordering::Relaxed)));
        c.add_deployment("shop", "web", 2);
        assert_eq!(c.ready_pods("shop", "web").len(), 2);
        c.set_replicas("shop", &target("web"), 4).await.unwrap();
        let s = c.scale("shop", &target("web")).await.unwrap().unwrap();
        assert_eq!((s.replicas, s.selector.as_str()), (4, "app=web"));
        let pods = c.pods("shop", "app=web").await.unwrap();
        assert_eq!(pods.iter().filter(|p| p.ready).count(), 2);
        now.fetch_add(20_000, Ordering::Relaxed);
        assert_eq!(c.ready_pods("shop", "web").len(), 4);
        // Down to 3: the youngest goes.
        let before = c.ready_pods("shop", "web");
        c.set_replicas("shop", &target("web"), 3).await.unwrap();
        let after = c.ready_pods("shop", "web");
        assert_eq!(after.len(), 3);
        assert!(after.iter().all(|p| before.contains(p)));
        assert!(after.contains(&before[0]) && after.contains(&before[1]));
        assert!(c.scale("shop", &target("nope")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_restart_replaces_only_that_pod() {
        let now = Arc::new(AtomicI64::new(0));
        let clock = now.clone();
        let c = SimCluster::new(5_000, Arc::new(move || clock.load(Ordering::Relaxed)));
        c.add_deployment("shop", "web", 3);
        let pods = c.ready_pods("shop", "web");
        let r = c.restart("shop", &pods[1], HealMode::Evict).await.unwrap();
        assert_eq!(r, Restarted::Done);
        let listed = c.pods("shop", "app=web").await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(!listed.iter().any(|p| p.name == pods[1]));
        assert!(listed.iter().any(|p| p.name == pods[0] && p.ready));
        assert_eq!(listed.iter().filter(|p| !p.ready).count(), 1);
        assert!(c.restart("shop", "ghost", HealMode::Evict).await.is_err());
    }
}
