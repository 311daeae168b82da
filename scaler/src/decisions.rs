//! The decision log: an append-only record of every decision the operator makes — its inputs, its
//! reason, the action and how the action went — as JSON lines, so a decision can be audited and
//! replayed through the same pure functions (`replay`).
//!
//! Each line is written with one `write` call and flushed to the OS before the action's outcome is
//! reported, so a crash (even `kill -9`) loses at most a line being written; a torn last line is skipped
//! with a warning when the log is read back. The file is rotated past a size bound, keeping one previous
//! file, so it cannot fill the disk.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::crd::{Healing, ServicePolicySpec};
use crate::decide::{Decision, Inputs, decide};
use crate::heal::{HealDecision, HealInputs, heal};
use crate::{Error, Result};

/// Records kept in memory for `/api/decisions`.
const RECENT: usize = 1000;

/// What was decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Scale {
        spec: Box<ServicePolicySpec>,
        inputs: Box<Inputs>,
        decision: Decision,
    },
    Heal {
        healing: Healing,
        inputs: Box<HealInputs>,
        decision: HealDecision,
    },
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts_ms: i64,
    /// `namespace/name` of the ServicePolicy.
    pub policy: String,
    pub service: String,
    #[serde(flatten)]
    pub entry: Entry,
    /// What was done: `scale 4→8`, `evict inventory-7f9c-x2`, `none`, `held back`.
    pub action: String,
    /// `ok`, `dry-run`, or the error that stopped the action.
    pub outcome: String,
}

struct Inner {
    file: Option<(PathBuf, File, u64)>,
    recent: VecDeque<Record>,
    next_seq: u64,
}

/// The log: one per operator, shared by reconciles.
pub struct DecisionLog {
    inner: Mutex<Inner>,
    max_bytes: u64,
}

impl DecisionLog {
    /// A log kept in memory only.
    pub fn in_memory() -> DecisionLog {
        DecisionLog {
            inner: Mutex::new(Inner {
                file: None,
                recent: VecDeque::new(),
                next_seq: 1,
            }),
            max_bytes: u64::MAX,
        }
    }

    /// Opens (or creates) the log at `path`, reading back its newest records.
    pub fn open(path: &Path, max_bytes: u64) -> Result<DecisionLog> {
        let err = |source| Error::DecisionLog {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut recent = VecDeque::new();
        let mut last_seq = 0;
        if path.exists() {
            for rec in read(path)? {
                last_seq = last_seq.max(rec.seq);
                recent.push_back(rec);
                if recent.len() > RECENT {
                    recent.pop_front();
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        // A line torn by a crash is cut off, so the next record starts on a line of its own.
        let bytes = std::fs::read(path).map_err(err)?;
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            file.set_len(whole as u64).map_err(err)?;
        }
        let len = whole as u64;
        Ok(DecisionLog {
            inner: Mutex::new(Inner {
                file: Some((path.to_owned(), file, len)),
                recent,
                next_seq: last_seq + 1,
            }),
            max_bytes,
        })
    }

    /// Appends `rec` (its `seq` is assigned here) and returns the number given.
    pub fn append(&self, mut rec: Record) -> Result<u64> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        rec.seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some((path, file, len)) = inner.file.as_mut() {
            let err = |source| Error::DecisionLog {
                path: path.clone(),
                source,
            };
            let mut line = serde_json::to_vec(&rec).map_err(|e| err(std::io::Error::other(e)))?;
            line.push(b'\n');
            if *len > 0 && *len + line.len() as u64 > self.max_bytes {
                let old = path.with_extension("jsonl.1");
                std::fs::rename(&*path, &old).map_err(err)?;
                *file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&*path)
                    .map_err(err)?;
                *len = 0;
            }
            file.write_all(&line).and_then(|()| file.flush()).map_err(err)?;
            *len += line.len() as u64;
        }
        let seq = rec.seq;
        inner.recent.push_back(rec);
        if inner.recent.len() > RECENT {
            inner.recent.pop_front();
        }
        Ok(seq)
    }

    /// The newest `limit` records (newest last), optionally of one policy.
    pub fn recent(&self, limit: usize, policy: Option<&str>) -> Vec<Record> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Record> = inner
            .recent
            .iter()
            .rev()
            .filter(|r| policy.is_none_or(|p| r.policy == p))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

/// Reads every record of the log at `path`, skipping (and warning about) lines that do not parse, such
/// as one torn by a crash.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let err = |source| Error::DecisionLog {
        path: path.to_owned(),
        source,
    };
    let f = File::open(path).map_err(err)?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(err)?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(path = %path.display(), line = i + 1, error = %e, "decision log: line skipped")
            }
        }
    }
    Ok(out)
}

/// Re-runs each logged decision from its logged inputs. Returns the records whose decision differs.
pub fn replay(records: &[Record]) -> Vec<(u64, String)> {
    let mut diffs = Vec::new();
    for r in records {
        match &r.entry {
            Entry::Scale {
                spec,
                inputs,
                decision,
            } => {
                let (again, _) = decide(spec, inputs);
                if again != *decision {
                    diffs.push((r.seq, format!("logged {decision:?}, replayed {again:?}")));
                }
            }
            Entry::Heal {
                healing,
                inputs,
                decision,
            } => {
                let again = heal(healing, inputs);
                if again != *decision {
                    diffs.push((r.seq, format!("logged {decision:?}, replayed {again:?}")));
                }
            }
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behavior::ScaleHistory;
    use crate::decide::PodLoad;

    fn record(policy: &str) -> Record {
        let spec: ServicePolicySpec = serde_yaml::from_str(
            "targetRef: {name: web}\nservice: web\nmaxReplicas: 9\ncapacity: {requestsPerReplica: 10}\n",
        )
        .unwrap();
        let inputs = Inputs {
            now_ms: 5,
            current_replicas: 2,
            pods: vec![
                PodLoad {
                    name: "a".into(),
                    rate: Some(20.0),
                    ready: true,
                };
                2
            ],
            capacity: Some(10.0),
            forecast: None,
            last_scale_ms: None,
            history: ScaleHistory::default(),
        };
        let (decision, _) = decide(&spec, &inputs);
        Record {
            seq: 0,
            ts_ms: 5,
            policy: policy.into(),
            service: "web".into(),
            entry: Entry::Scale {
                spec: Box::new(spec),
                inputs: Box::new(inputs),
                decision,
            },
            action: "scale 2→6".into(),
            outcome: "ok".into(),
        }
    }

    #[test]
    fn survives_reopen_and_a_torn_line_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::open(&path, 1 << 20).unwrap();
        assert_eq!(log.append(record("ns/a")).unwrap(), 1);
        assert_eq!(log.append(record("ns/b")).unwrap(), 2);
        drop(log);
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"ts_ms\":").unwrap();
        drop(f);
        let log = DecisionLog::open(&path, 1 << 20).unwrap();
        assert_eq!(log.recent(10, None).len(), 2);
        assert_eq!(log.recent(10, Some("ns/b"))[0].seq, 2);
        assert_eq!(log.append(record("ns/a")).unwrap(), 3);
        let all = read(&path).unwrap();
        assert_eq!(all.len(), 3);
        assert!(replay(&all).is_empty());
        // A tampered decision is caught by the replay.
        let mut bad = all[0].clone();
        if let Entry::Scale { decision, .. } = &mut bad.entry {
            decision.replicas += 1;
        }
        assert_eq!(replay(&[bad]).len(), 1);
    }

    #[test]
    fn rotates_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::open(&path, 4096).unwrap();
        for _ in 0..20 {
            log.append(record("ns/a")).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        assert!(path.with_extension("jsonl.1").exists());
        assert_eq!(log.recent(100, None).len(), 20);
    }
}
