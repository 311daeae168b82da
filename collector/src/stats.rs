//! The collector's own counters, exposed on `/metrics` as `tidewatch_collector_*`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use tidewatch_analyzer::exposition::{Kind, family, sample, single};

use crate::decode::Signal;

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every item accepted.
    Ok,
    /// Some items rejected (partial success).
    Partial,
    BadRequest,
    TooLarge,
    Unsupported,
    Unauthenticated,
    /// Refused for now (queue full or memory limit): the client retries.
    Refused,
    /// The body did not arrive within `collector.body_timeout`.
    TimedOut,
}

const OUTCOMES: [(Outcome, &str); 8] = [
    (Outcome::Ok, "ok"),
    (Outcome::Partial, "partial"),
    (Outcome::BadRequest, "bad_request"),
    (Outcome::TooLarge, "too_large"),
    (Outcome::Unsupported, "unsupported"),
    (Outcome::Unauthenticated, "unauthenticated"),
    (Outcome::Refused, "refused"),
    (Outcome::TimedOut, "timed_out"),
];

/// Receiving protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

const PROTOCOLS: [(Protocol, &str); 2] = [(Protocol::Grpc, "grpc"), (Protocol::Http, "http")];

const SIGNALS: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

fn signal_idx(s: Signal) -> usize {
    s as usize
}

fn outcome_idx(outcome: Outcome) -> usize {
    OUTCOMES.iter().position(|(x, _)| *x == outcome).unwrap_or(0)
}

/// Lock-free counters, shared by all receivers.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: [AtomicU64; 3],
    rejected: [AtomicU64; 3],
    refused: [AtomicU64; 3],
    requests: [[AtomicU64; 8]; 2],
    bytes: [AtomicU64; 2],
    /// Bytes of request bodies being read now (see `budget.rs`).
    reading: AtomicUsize,
    /// Open OTLP connections, and those closed at once for being over the cap (see `limit.rs`).
    connections: AtomicUsize,
    connections_refused: AtomicU64,
}

impl Stats {
    pub fn items(&self, signal: Signal, accepted: u64, rejected: u64) {
        self.accepted[signal_idx(signal)].fetch_add(accepted, Relaxed);
        self.rejected[signal_idx(signal)].fetch_add(rejected, Relaxed);
    }

    /// Items decoded but refused because the engine could not take them.
    pub fn refused(&self, signal: Signal, n: u64) {
        self.refused[signal_idx(signal)].fetch_add(n, Relaxed);
    }

    pub fn request(&self, protocol: Protocol, outcome: Outcome, wire_bytes: usize) {
        self.requests[protocol as usize][outcome_idx(outcome)].fetch_add(1, Relaxed);
        self.bytes[protocol as usize].fetch_add(wire_bytes as u64, Relaxed);
    }

    /// Takes `n` bytes of the reading budget if that keeps it within `limit`.
    pub fn take_reading(&self, n: usize, limit: usize) -> bool {
        self.reading
            .fetch_update(Relaxed, Relaxed, |used| {
                used.checked_add(n).filter(|&u| u <= limit)
            })
            .is_ok()
    }

    pub fn give_back_reading(&self, n: usize) {
        self.reading.fetch_sub(n, Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// Bytes of request bodies being read now.
    pub fn reading(&self) -> usize {
        self.reading.load(Relaxed)
    }

    /// Requests of `protocol` that ended with `outcome`.
    pub fn requests(&self, protocol: Protocol, outcome: Outcome) -> u64 {
        self.requests[protocol as usize][outcome_idx(outcome)].load(Relaxed)
    }

    pub fn accepted(&self, signal: Signal) -> u64 {
        self.accepted[signal_idx(signal)].load(Relaxed)
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut impl std::fmt::Write) {
        let items = "tidewatch_collector_items_total";
        family(
            out,
            items,
            Kind::Counter,
            "Items received, by signal and outcome.",
        );
        for s in SIGNALS {
            let i = signal_idx(s);
            for (outcome, c) in [
                ("accepted", &self.accepted[i]),
                ("rejected", &self.rejected[i]),
                ("refused", &self.refused[i]),
            ] {
                let labels = [("signal", s.items()), ("outcome", outcome)];
                sample(out, items, &labels, c.load(Relaxed));
            }
        }
        let requests = "tidewatch_collector_requests_total";
        family(
            out,
            requests,
            Kind::Counter,
            "Export requests, by protocol and outcome.",
        );
        for (p, name) in PROTOCOLS {
            for (o, (_, oname)) in OUTCOMES.iter().enumerate() {
                let v = self.requests[p as usize][o].load(Relaxed);
                sample(out, requests, &[("protocol", name), ("outcome", oname)], v);
            }
        }
        for (name, kind, help, value) in [
            (
                "tidewatch_collector_connections",
                Kind::Gauge,
                "Open OTLP connections (capped by collector.max_connections).",
                self.connections.load(Relaxed) as u64,
            ),
            (
                "tidewatch_collector_connections_refused_total",
                Kind::Counter,
                "OTLP connections closed at once for being over collector.max_connections.",
                self.connections_refused.load(Relaxed),
            ),
            (
                "tidewatch_collector_reading_bytes",
                Kind::Gauge,
                "Bytes of request bodies being read now (capped by collector.max_reading).",
                self.reading() as u64,
            ),
        ] {
            single(out, name, kind, help, value);
        }
        let received = "tidewatch_collector_received_bytes_total";
        family(
            out,
            received,
            Kind::Counter,
            "Request bytes as received (before decompression).",
        );
        for (p, name) in PROTOCOLS {
            sample(
                out,
                received,
                &[("protocol", name)],
                self.bytes[p as usize].load(Relaxed),
            );
        }
    }
}
