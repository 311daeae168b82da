//! Anomaly detectors over the history (scored by `tidewatch-eval`'s NAB harness, which is not part of the
//! analyzer).
//!
//! - `detect`: streaming anomaly detectors (one value in, one score in [0, 1] out, no look-ahead).
//! - `multivariate`: a linfa Gaussian-mixture detector over a service's RED vector per window.
//! - `ring`: the bounded windows both keep their recent values in.

pub mod detect;
pub mod multivariate;
pub mod ring;
