//! Output written to a pipe is plain text: the server's text log carries no colour escapes, and the long
//! commands report their progress as plain lines (no bar redrawn with carriage returns) on stderr, with
//! their results alone on stdout.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

const ESC: char = '\x1b';

#[test]
fn the_text_log_has_no_escapes_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::common::tidewatch()
        .arg("run")
        .args(["--set", "collector.grpc.endpoint=127.0.0.1:0"])
        .args(["--set", "collector.http.endpoint=127.0.0.1:0"])
        .args(["--set", "web.endpoint=127.0.0.1:0"])
        .arg("--set")
        .arg(format!("analyzer.store.data_dir={}", dir.path().display()))
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tidewatch");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let done = line.contains("tidewatch is ready");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    assert!(ready, "no ready line in the log: {log}");
    // The level is still written, as a word.
    assert!(log.contains(" INFO "), "{log}");
    assert!(!log.contains(ESC), "escape sequences in a piped log: {log:?}");
}

#[test]
fn forecast_eval_reports_progress_as_plain_lines() {
    // The seven series of NAB's realTraffic, read as a directory of CSV files.
    let data = crate::common::shared().join("data/nab/data/realTraffic");
    let files = std::fs::read_dir(&data)
        .unwrap_or_else(|e| panic!("{}: {e}", data.display()))
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "csv"))
        })
        .count();
    let out = crate::common::tidewatch()
        .args(["forecast-eval", "--origins", "4", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(ESC) && !stderr.contains('\r'), "{stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    // One line per series (a short task), then the summary.
    assert_eq!(lines.len(), files + 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("forecast-eval: series: 1/{files} ")),
        "{stderr}"
    );
    assert!(
        lines[files].starts_with(&format!("forecast-eval: series: {files} of {files} in ")),
        "{stderr}"
    );
    // The results stay on stdout, without the progress.
    assert!(stdout.contains("chosen model:") && !stdout.contains("forecast-eval: series"));
}

#[test]
fn simulate_says_what_it_runs_in_plain_lines() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.csv");
    let rows: String = (0..120)
        .map(|i| format!("{},{}\n", 1_700_000_000 + i * 60, 50 + (i % 30) * 10))
        .collect();
    std::fs::write(&trace, format!("timestamp,value\n{rows}")).unwrap();
    let out = crate::common::tidewatch()
        .args(["simulate", "--policy", "hpa", "--trace"])
        .arg(&trace)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("simulating ") && lines[0].ends_with(" under hpa …"));
    assert!(lines[1].contains(" under hpa: done in "), "{stderr}");
    assert!(!stderr.contains(ESC) && !stderr.contains('\r'));
}
