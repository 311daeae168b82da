//! Tidewatch's evaluation: what keeps the models honest, apart from the models themselves.
//!
//! - `nab`: the Numenta Anomaly Benchmark (NAB v1.1) corpus loader, the detector harness that runs a
//!   detector over it the way NAB does ([`nab::Corpus::run`]), and a faithful re-implementation of NAB's
//!   scorer (windows, probation, sigmoid weighting, corpus-wide threshold sweep, normalisation between
//!   the null and the perfect detector), checked against NAB's published results.
//! - `forecast`: rolling-origin backtests of the forecasters on recorded traffic-like series, the model
//!   chosen on earlier origins and judged on later ones.
//!
//! The detectors and forecasters themselves live in the analyzer (`models::detect`, `forecast`): the
//! server runs them; this crate only measures them. `tidewatch nab` and `tidewatch forecast-eval` call it.

pub mod forecast;
pub mod nab;

/// The evaluation's errors: inputs that cannot be read, parsed or put together.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that cannot be read (NAB corpus, results): says which.
    #[error("{}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A malformed input file: names the file and the line.
    #[error("{}:{line}: {msg}", path.display())]
    Parse {
        path: std::path::PathBuf,
        line: usize,
        msg: String,
    },
    /// Inputs that parse but do not fit together (scores vs corpus, windows vs rows).
    #[error("NAB: {0}")]
    Nab(String),
    /// A series too short to backtest.
    #[error("{}: only {rows} rows", path.display())]
    TooShort { path: std::path::PathBuf, rows: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
