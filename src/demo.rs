//! `tidewatch demo`: the whole loop on one machine, without a cluster.
//!
//! - **History first.** Before the live traffic starts, `--backfill` simulated days of the shop's traffic
//!   (the same generator, timestamps in the past) go through the receiver's own decode path into the
//!   engine, and each window is closed at its simulated time ([`Engine::backfill_window`]): the rows, the
//!   health monitor's baselines and the forecast trainer's first fit come from that history, so charts,
//!   anomaly scores and forecasts exist from the first page load. The live traffic continues the same
//!   series (same shop, same daily cycle, same counters).
//! - **A simulated cluster.** Each of the shop's services is a Deployment of a [`SimCluster`] with a
//!   ServicePolicy, reconciled every `scaler.interval` by the operator's own [`reconcile`] (decide, heal,
//!   decision log, Events, status). The shop's traffic runs on the Deployments' ready pods, each a queue
//!   ([`SimConfig::serve`], the model of `tidewatch simulate`): more pods, less load per pod, lower latency.
//! - **Incidents** after the start (unless `--incident` or `--calm` says otherwise): a traffic surge, a bad
//!   inventory pod, then payment slowing down, which its callers feel (see [`default_incidents`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tidewatch_analyzer::Engine;
use tidewatch_collector::Receiver;
use tidewatch_collector::decode::{Format, Signal};
use tidewatch_scaler::controller::{Context, error_policy, reconcile};
use tidewatch_scaler::crd::ServicePolicy;
use tidewatch_scaler::sim_cluster::SimCluster;
use tidewatch_scaler::simulate::SimConfig;
use tokio::sync::watch;

use crate::cli::DemoArgs;
use crate::config::Config;
use crate::loadgen::{self, Encoding, LoadArgs, Protocol};
use crate::operator::{EngineTelemetry, Reports};
use crate::topology::{self, Fleet, Incident, Queueing, Shop};

/// The namespace of the shop's Deployments and policies.
pub const NAMESPACE: &str = "shop";

/// Utilisation of each service's pods at the daily mean load, with the replicas it starts with.
const MEAN_UTILISATION: f64 = 0.4;

/// A service's own work at its capacity, in multiples of its idle work (the queueing model's SLO). Kept
/// low, so that a surge slows pods down a few times rather than to the model's cap: when new pods start
/// serving in the middle of a window, the old ones' p95 of that window must not read as three times the
/// new ones', or the analyzer would single out a healthy pod.
const WORK_AT_CAPACITY: f64 = 2.0;

/// The incidents of a demo run without `--incident`: a surge of the whole shop's traffic (the forecast
/// knows only the daily cycle), one bad inventory pod among healthy siblings, then payment slowing down
/// (a cause downstream of checkout and the frontend).
pub fn default_incidents() -> Vec<Incident> {
    [
        "surge@15s+75s",
        "bad-pod:inventory@95s+60s",
        "latency:payment@160s+60s",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Latency buckets of the demo's RED histograms, in milliseconds (a 1-1.5-2-3-5 series from 1 ms to
/// 15 s).
const BUCKETS_MS: [u64; 26] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000, 7000,
    10_000, 12_000, 15_000,
];

/// The demo's settings over the user's: history and decisions in memory (`analyzer.store.data_dir` is
/// ignored, every run starts from the same past), and, unless buckets are configured, RED latency
/// buckets finer than the spanmetrics connector's. With the connector's (…, 10, 50, 100 ms), a pod whose
/// p95 sits just past 10 ms reads as about 30 ms, three times siblings at 9 ms: enough for the analyzer to
/// single it out, and the healer to restart a healthy pod.
pub fn configure(cfg: &mut Config) {
    cfg.analyzer.store.data_dir = None;
    let red = &mut cfg.analyzer.span_metrics;
    if red.buckets == tidewatch_analyzer::config::RedConfig::default().buckets {
        red.buckets = BUCKETS_MS.iter().map(|&ms| Duration::from_millis(ms)).collect();
    }
}

/// The simulated cluster's ready pods, as the shop's fleet.
struct ClusterFleet(Arc<SimCluster>);

impl Fleet for ClusterFleet {
    fn ready_pods(&self, service: &str) -> Vec<String> {
        self.0.ready_pods(NAMESPACE, service)
    }
}

/// A demo, before and after its backfill.
pub struct Demo {
    args: DemoArgs,
    incidents: Vec<Incident>,
    grpc: SocketAddr,
    token: Option<String>,
    window: Duration,
    interval: Duration,
    cluster: Arc<SimCluster>,
    shop: Shop,
}

impl Demo {
    /// The shop on a simulated cluster: one Deployment and one ServicePolicy per service.
    pub fn new(cfg: &Config, args: DemoArgs, grpc: SocketAddr) -> anyhow::Result<Demo> {
        let cold_start = i64::try_from(args.cold_start.as_millis()).unwrap_or(i64::MAX);
        let cluster = Arc::new(SimCluster::new(cold_start, Arc::new(now_ms)));
        let traces_per_s = args.rate as f64 / topology::SPANS_PER_TRACE;
        let mut models = Vec::new();
        for (i, (service, pods, work_ms)) in topology::services().enumerate() {
            // Capacity per pod such that the pods it starts with run at MEAN_UTILISATION at the mean load.
            let mean = traces_per_s * topology::REQUESTS_PER_TRACE[i];
            let capacity = ((mean / (pods as f64 * MEAN_UTILISATION)).max(1.0) * 10.0).round() / 10.0;
            models.push(SimConfig {
                capacity,
                base_latency_ms: work_ms,
                slo_latency_ms: work_ms * WORK_AT_CAPACITY,
                ..SimConfig::default()
            });
            cluster.add_deployment(NAMESPACE, service, pods as u32);
            cluster.apply_policy(policy(service, pods, capacity)?);
        }
        let incidents = if args.calm {
            Vec::new()
        } else if args.incidents.is_empty() {
            default_incidents()
        } else {
            args.incidents.clone()
        };
        let fleet = Arc::new(ClusterFleet(cluster.clone()));
        // No incidents during the backfill: they are set when the live traffic starts.
        let shop = Shop::with_queueing(
            Vec::new(),
            args.day,
            Queueing {
                fleet,
                models,
                traces_per_s,
            },
        );
        Ok(Demo {
            incidents,
            grpc,
            token: cfg.collector.auth.as_ref().and_then(|a| a.resolve().ok()),
            window: cfg.analyzer.window,
            interval: cfg.scaler.interval,
            cluster,
            shop,
            args,
        })
    }

    /// Writes the backfilled history: windows from `--backfill` days ago up to now, each closed at its
    /// simulated time once its traffic is in the engine.
    pub async fn backfill(&mut self, engine: &Engine, rx: &Receiver) -> anyhow::Result<()> {
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX).max(1);
        let span_ms = (self.args.day.as_secs_f64() * self.args.backfill * 1000.0) as i64;
        let windows = (span_ms / window_ms).max(0);
        if windows == 0 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let start_ms = now_ms() - windows * window_ms;
        println!(
            "demo: writing {:.1} simulated days of history ({windows} windows) before the live traffic",
            self.args.backfill
        );
        let mut rng = SmallRng::seed_from_u64(self.args.seed);
        let step_ms = window_ms.min(1000);
        let start_ns = (start_ms as u64).saturating_mul(1_000_000);
        let mut end = start_ms;
        // Windows until the history reaches the present (the backfill itself takes time), at most twice
        // the asked length.
        for k in 0..windows * 2 {
            let w_start = start_ms + k * window_ms;
            if k >= windows && w_start + window_ms > now_ms() {
                break;
            }
            let mut t = w_start;
            while t < w_start + window_ms {
                let elapsed = Duration::from_millis((t - start_ms) as u64);
                let spans =
                    self.args.rate as f64 * self.shop.traffic_factor(elapsed) * step_ms as f64 / 1000.0;
                let t_ns = (t as u64).saturating_mul(1_000_000);
                let req = self
                    .shop
                    .traces(&mut rng, spans.round().max(1.0) as usize, t_ns, elapsed);
                export(rx, Signal::Traces, req.encode_to_vec().into()).await?;
                t += step_ms;
            }
            let elapsed = Duration::from_millis((t - start_ms) as u64);
            let t_ns = (t as u64).saturating_mul(1_000_000);
            let metrics = self.shop.metrics(&mut rng, t_ns, start_ns, elapsed);
            export(rx, Signal::Metrics, metrics.encode_to_vec().into()).await?;
            let logs = self.shop.logs(t_ns);
            export(rx, Signal::Logs, logs.encode_to_vec().into()).await?;
            end = w_start + window_ms;
            engine
                .backfill_window(end)
                .await
                .context("demo: closing a backfilled window")?;
        }
        engine.end_backfill().await.context("demo: ending the backfill")?;
        // The live traffic continues the daily cycle where the history ends.
        self.shop.offset = Duration::from_millis((end - start_ms).max(0) as u64);
        println!(
            "demo: history written in {:.1}s; live traffic and the simulated cluster start now",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Runs the live traffic and the operator on the simulated cluster until `stop` turns true.
    pub async fn run(
        self,
        engine: Arc<Engine>,
        reports: Reports,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let Demo {
            args,
            incidents,
            grpc,
            token,
            window,
            interval,
            cluster,
            mut shop,
        } = self;
        let telemetry = Arc::new(EngineTelemetry {
            engine,
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
        });
        let ctx = Arc::new(
            Context::with_cluster(cluster.clone(), interval, telemetry, reports.log, reports.metrics)
                .with_board(reports.board),
        );
        for i in &incidents {
            println!("demo: incident {i}");
        }
        shop.incidents = incidents;
        let load = LoadArgs {
            endpoint: Some(format!("http://127.0.0.1:{}", grpc.port())),
            protocol: Protocol::Grpc,
            encoding: Encoding::Protobuf,
            rate: args.rate,
            duration: Duration::ZERO,
            batch: 200,
            concurrency: 2,
            day: args.day,
            incidents: Vec::new(),
            metrics_and_logs: true,
            token,
            seed: args.seed,
            json: false,
        };
        let mut traffic_stop = stop.clone();
        let traffic = tokio::spawn(loadgen::run_shop(load, Some(shop), async move {
            let _ = traffic_stop.wait_for(|s| *s).await;
        }));
        operate(&ctx, &cluster, interval, stop).await;
        match traffic.await {
            Ok(Ok(report)) => loadgen::print(&report, false),
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "demo traffic failed"),
            Err(e) => tracing::error!(error = %e, "demo traffic task failed"),
        }
        Ok(())
    }
}

/// Reconciles every policy of the simulated cluster every `interval` until `stop` turns true, through
/// the operator's own `reconcile` and its backoff on errors.
async fn operate(
    ctx: &Arc<Context>,
    cluster: &SimCluster,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for policy in cluster.policies() {
            if let Err(e) = reconcile(policy.clone(), ctx.clone()).await {
                // The next tick retries; the backoff's wait is shorter than the interval only after
                // failures, which the simulated cluster does not have but for a missing object.
                let _ = error_policy(policy, &e, ctx.clone());
            }
        }
    }
}

/// Sends one request body through the receiver, waiting while the engine's queues are full.
async fn export(rx: &Receiver, signal: Signal, body: Bytes) -> anyhow::Result<()> {
    loop {
        match rx.export(signal, Format::Protobuf, body.clone()).await {
            Ok(_) => return Ok(()),
            Err(tidewatch_collector::Error::Refused(_)) => tokio::time::sleep(Duration::from_millis(2)).await,
            Err(e) => return Err(e).context("demo: backfilled traffic refused"),
        }
    }
}

/// The ServicePolicy of one of the shop's services.
fn policy(service: &str, pods: usize, capacity: f64) -> anyhow::Result<ServicePolicy> {
    let p = serde_json::json!({
        "apiVersion": "tidewatch.dev/v1alpha1",
        "kind": "ServicePolicy",
        "metadata": {"name": service, "namespace": NAMESPACE, "generation": 1},
        "spec": {
            "targetRef": {"kind": "Deployment", "name": service},
            "service": service,
            "minReplicas": pods.min(2),
            "maxReplicas": 12,
            "capacity": {"requestsPerReplica": capacity},
            "healing": {"enabled": true, "maxRestarts": 2, "backoffSeconds": 30},
        },
    });
    serde_json::from_value(p).context("demo: building a ServicePolicy")
}
