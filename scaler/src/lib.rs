//! Tidewatch's Kubernetes side. So far it holds the reactive floor of every scaling decision: the
//! Kubernetes HPA v2 replica calculation, reproduced exactly (`hpa.rs`), so that Tidewatch's predictive
//! answer can only add safety on top of what the HPA would do. The operator (CRD, reconciler, healing)
//! builds on it.

pub mod hpa;
