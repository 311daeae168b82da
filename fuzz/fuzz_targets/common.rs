//! What the decoder targets share: the first byte of an input picks the signal, and the attribute keys are
//! the ones the default configuration makes the engine read (built once, not per input).

use std::sync::LazyLock;

use tidewatch_analyzer::config::AnalyzerConfig;
use tidewatch_analyzer::engine::wanted_keys;
use tidewatch_analyzer::records::AttrKeys;
use tidewatch_collector::decode::Signal;

pub static KEYS: LazyLock<AttrKeys> = LazyLock::new(|| wanted_keys(&AnalyzerConfig::default()).0);

/// The signal the first byte picks, and the body after it; `None` for an empty input.
pub fn split(data: &[u8]) -> Option<(Signal, &[u8])> {
    let (&sel, body) = data.split_first()?;
    let signal = match sel % 3 {
        0 => Signal::Traces,
        1 => Signal::Metrics,
        _ => Signal::Logs,
    };
    Some((signal, body))
}
