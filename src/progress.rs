//! Progress of the long commands (`nab`, `forecast-eval`, `simulate`) on stderr, so stdout keeps only
//! the results: on a terminal a bar redrawn in place (or, for work that cannot be counted, a ticking
//! clock); otherwise plain lines, at most about twenty per task, with no escape sequences.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bar width in characters.
const BAR: usize = 24;
/// Longest item name shown beside the bar.
const ITEM: usize = 40;
/// Shortest time between two redraws of the bar.
const REDRAW: Duration = Duration::from_millis(100);

/// Counted work: `inc` once per item done; `finish` prints the summary line.
pub struct Progress {
    what: String,
    total: usize,
    tty: bool,
    started: Instant,
    state: Mutex<State>,
}

struct State {
    done: usize,
    drawn: Option<Instant>,
}

impl Progress {
    /// Progress over `total` items, on stderr, drawn as a bar when stderr is a terminal.
    pub fn new(what: impl Into<String>, total: usize) -> Progress {
        Progress::with_terminal(what, total, std::io::stderr().is_terminal())
    }

    fn with_terminal(what: impl Into<String>, total: usize, tty: bool) -> Progress {
        Progress {
            what: what.into(),
            total,
            tty,
            started: Instant::now(),
            state: Mutex::new(State { done: 0, drawn: None }),
        }
    }

    /// One more item done (`item` names it). Safe to call from several threads.
    pub fn inc(&self, item: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.done += 1;
        let line = if self.tty {
            let now = Instant::now();
            if st.drawn.is_some_and(|t| now - t < REDRAW) && st.done < self.total {
                return;
            }
            st.drawn = Some(now);
            format!("\r\x1b[2K{}", self.bar(st.done, item))
        } else {
            if !self.plain_line_due(st.done) {
                return;
            }
            format!("{}\n", self.plain(st.done, item))
        };
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes()).and_then(|()| err.flush());
    }

    /// Clears the bar and prints `what: N of M in T s`.
    pub fn finish(&self) {
        let done = self.state.lock().unwrap_or_else(|p| p.into_inner()).done;
        let clear = if self.tty { "\r\x1b[2K" } else { "" };
        eprintln!(
            "{clear}{}: {done} of {} in {:.1} s",
            self.what,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Without a terminal: every item of a short task, else every twentieth of the total, and the last.
    fn plain_line_due(&self, done: usize) -> bool {
        let every = self.total.div_ceil(20).max(1);
        done.is_multiple_of(every) || done == self.total
    }

    fn plain(&self, done: usize, item: &str) -> String {
        format!("{}: {done}/{} {item}", self.what, self.total)
    }

    fn bar(&self, done: usize, item: &str) -> String {
        let filled = (done * BAR).checked_div(self.total).unwrap_or(BAR).min(BAR);
        let item: String = if item.chars().count() > ITEM {
            let tail: Vec<char> = item.chars().rev().take(ITEM - 1).collect();
            std::iter::once('…').chain(tail.into_iter().rev()).collect()
        } else {
            item.to_owned()
        };
        format!(
            "{} [{}{}] {done}/{} {:.0} s {item}",
            self.what,
            "#".repeat(filled),
            "-".repeat(BAR - filled),
            self.total,
            self.started.elapsed().as_secs_f64()
        )
    }
}

/// Runs `work` (which cannot report how far it is) while showing `what` on stderr: a clock ticking every
/// second on a terminal, one line before and one after otherwise. Returns what `work` returns.
pub fn while_running<T>(what: &str, work: impl FnOnce() -> T) -> T {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    if !tty {
        eprintln!("{what} …");
        let out = work();
        eprintln!("{what}: done in {:.1} s", started.elapsed().as_secs_f64());
        return out;
    }
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            loop {
                eprint!("\r\x1b[2K{what} … {:.0} s", started.elapsed().as_secs_f64());
                match stop_rx.recv_timeout(Duration::from_secs(1)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
        });
        let out = work();
        let _ = stop_tx.send(());
        out
    });
    eprintln!(
        "\r\x1b[2K{what}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_and_long_names_are_cut_from_the_left() {
        let p = Progress::with_terminal("nab", 4, true);
        assert!(
            p.bar(0, "a.csv")
                .starts_with("nab [------------------------] 0/4 ")
        );
        assert!(p.bar(2, "a.csv").contains("[############------------] 2/4"));
        assert!(p.bar(4, "a.csv").contains(&format!("[{}] 4/4", "#".repeat(BAR))));
        let long = "x".repeat(100) + "/end.csv";
        let shown = p.bar(1, &long);
        assert!(shown.ends_with("end.csv") && shown.contains('…'), "{shown}");
        // Nothing to count: a full bar, not a division by zero.
        assert!(
            Progress::with_terminal("x", 0, true)
                .bar(0, "")
                .contains(&"#".repeat(BAR))
        );
    }

    #[test]
    fn plain_lines_are_few_and_end_with_the_last_item() {
        let short = Progress::with_terminal("eval", 7, false);
        assert!((1..=7).all(|d| short.plain_line_due(d)));
        let long = Progress::with_terminal("nab", 58, false);
        let due: Vec<usize> = (1..=58).filter(|&d| long.plain_line_due(d)).collect();
        assert!(due.len() <= 21 && due.last() == Some(&58), "{due:?}");
        assert_eq!(long.plain(3, "a.csv"), "nab: 3/58 a.csv");
    }
}
