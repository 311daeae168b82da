//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it: the
//! holder renews every third of the lease duration; a candidate takes the lease over only once it has
//! expired; a leader that cannot renew within two thirds of the duration stops acting before anyone
//! else can start, so two replicas never reconcile at once. Every write carries the resourceVersion it
//! read, so a race is a 409 Conflict, never two holders. On shutdown the lease is released.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// A future that resolves when leadership is lost or the program stops.
pub type Lost = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease. `Ok(true)` when this process holds it now.
    pub async fn try_acquire_or_renew(&self) -> kube::Result<bool> {
        let current = match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, 0)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Some(l) => l,
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => {
                Timestamp::now().as_millisecond() > renewed.as_millisecond() + i64::from(secs) * 1000
            }
            _ => true,
        };
        if !mine && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time.clone() } else { None };
        let mut lease = current;
        lease.spec = Some(self.spec(acquired, transitions));
        // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up so a successor need not wait for it to expire.
    async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.identity.as_str())
        {
            if let Some(s) = lease.spec.as_mut() {
                s.holder_identity = None;
                s.lease_duration_seconds = Some(1);
            }
            let _ = self.api.replace(&self.name, &PostParams::default(), &lease).await;
        }
    }

    /// Runs `work` whenever this process leads, until `shutdown` resolves. `work` is given a future that
    /// resolves when leadership is lost, and must return soon after it does.
    pub async fn run<F, Fut>(&self, work: F, shutdown: impl Future<Output = ()>)
    where
        F: Fn(Lost) -> Fut,
        Fut: Future<Output = ()>,
    {
        let renew_every = self.duration / 3;
        let renew_deadline = self.duration * 2 / 3;
        tokio::pin!(shutdown);
        loop {
            // Candidate: try until the lease is ours.
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, lease = %self.name, "leader election: lease not readable")
                    }
                }
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(renew_every) => {}
                }
            }
            tracing::info!(lease = %self.name, identity = %self.identity, "leader election: leading");
            let (lost_tx, lost_rx) = watch::channel(false);
            let lost: Lost = Box::pin(async move {
                let mut rx = lost_rx;
                let _ = rx.wait_for(|l| *l).await;
            });
            let job = work(lost);
            tokio::pin!(job);
            let mut last_renew = Instant::now();
            let mut job_done = false;
            let stopping = loop {
                tokio::select! {
                    () = &mut shutdown => break true,
                    () = &mut job => {
                        job_done = true;
                        break false;
                    }
                    () = tokio::time::sleep(renew_every) => {
                        match self.try_acquire_or_renew().await {
                            Ok(true) => last_renew = Instant::now(),
                            Ok(false) => break false,
                            Err(e) => {
                                tracing::warn!(error = %e, "leader election: renewal failed");
                                if last_renew.elapsed() >= renew_deadline {
                                    break false;
                                }
                            }
                        }
                    }
                }
            };
            let _ = lost_tx.send(true);
            if !job_done {
                job.await;
            }
            if stopping {
                self.release().await;
                return;
            }
            tracing::warn!(lease = %self.name, "leader election: leadership lost; standing by");
        }
    }
}
