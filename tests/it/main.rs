//! The integration tests: one crate (one binary to build and link), a module per capability, one
//! harness in `common` (the real `tidewatch` binary on free loopback ports, loadgen, Prometheus, Kafka,
//! a kube-apiserver, and the waits on conditions they share). Run one module with
//! `cargo test --test it demo::` (or any test name filter).

mod common;

mod anomalies;
mod crash_recovery;
mod demo;
mod deploy_manifests;
mod golden_fixtures;
mod grafana_dashboards;
mod history_api;
mod kafka;
mod kube_harness;
mod memory;
mod operator_e2e;
mod otlp_ingest;
mod overload;
mod plain_output;
mod prometheus;
mod simulate_cli;
mod tls;
mod web_auth;
mod web_ui;
