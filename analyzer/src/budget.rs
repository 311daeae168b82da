//! The global budget of active series: one count shared by every shard, so no source of new names (a pod id
//! in `service.name`, a request id in a span name, a flood of metric names) can grow memory without bound.
//!
//! A unit is taken by each new service, RED series, pod, service-graph edge or name a graph edge refers
//! to, metric series and log series; none is given back (series are cumulative counters, as Prometheus
//! reads them). Past the limit, new series fold into overflow series instead (RED rows labelled
//! `otel_metric_overflow="true"`, as the OpenTelemetry Collector's connectors mark theirs), and every item
//! that lands there is counted. Services admitted before the budget ran out keep their own series on every
//! shard: admission is decided once, globally, by name.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hashbrown::HashSet;

/// What may be created, and how much was turned away.
#[derive(Debug)]
pub struct SeriesBudget {
    limit: usize,
    used: AtomicUsize,
    overflowed: AtomicU64,
    /// Admitted service names; read only when a shard meets a service it has not seen yet.
    services: Mutex<HashSet<Box<[u8]>, foldhash::fast::FixedState>>,
}

impl SeriesBudget {
    pub fn new(limit: usize) -> SeriesBudget {
        SeriesBudget {
            limit,
            used: AtomicUsize::new(0),
            overflowed: AtomicU64::new(0),
            services: Mutex::new(HashSet::default()),
        }
    }

    /// Takes one unit for a new series; `false` once the budget is spent.
    pub fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                (u < self.limit).then_some(u + 1)
            })
            .is_ok()
    }

    /// Whether the service named `name` has its own series: yes if it was admitted before (by any shard),
    /// or if a unit is left for it now.
    pub fn admit_service(&self, name: &[u8]) -> bool {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if services.contains(name) {
            return true;
        }
        if !self.take() {
            return false;
        }
        services.insert(name.into());
        true
    }

    /// Counts `n` items (spans, points, records) that went to an overflow series.
    pub fn overflowed(&self, n: u64) {
        self.overflowed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Units taken so far: the active series.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Items counted in overflow series because the budget (global or per service) was spent.
    pub fn overflow_items(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// A plain-data copy for readers (the API, the self-metrics).
    pub fn status(&self) -> BudgetStatus {
        BudgetStatus {
            limit: self.limit,
            active: self.used(),
            overflow_items: self.overflow_items(),
        }
    }
}

/// The budget as readers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BudgetStatus {
    pub limit: usize,
    pub active: usize,
    pub overflow_items: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_run_out_and_known_services_stay_admitted() {
        let b = SeriesBudget::new(3);
        assert!(b.admit_service(b"checkout"));
        assert!(b.take());
        assert!(b.admit_service(b"payment"));
        assert!(!b.take());
        assert!(!b.admit_service(b"pod-7f9c"));
        // Seen before the budget ran out: still admitted, at no further cost.
        assert!(b.admit_service(b"checkout"));
        assert_eq!(b.used(), 3);
        b.overflowed(5);
        assert_eq!(
            b.status(),
            BudgetStatus {
                limit: 3,
                active: 3,
                overflow_items: 5
            }
        );
    }
}
