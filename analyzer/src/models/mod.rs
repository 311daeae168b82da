//! Models over the history: anomaly detectors and the benchmark that keeps them honest.
//!
//! - `nab`: the Numenta Anomaly Benchmark (NAB v1.1) corpus loader and scorer, a faithful re-implementation
//!   of NAB's own scoring (windows, probation, sigmoid weighting, corpus-wide threshold sweep,
//!   normalisation between the null and the perfect detector), checked against NAB's published results.
//! - `detect`: streaming anomaly detectors (one value in, one score in [0, 1] out, no look-ahead).
//! - `multivariate`: a linfa Gaussian-mixture detector over a service's RED vector per window.

pub mod detect;
pub mod multivariate;
pub mod nab;
