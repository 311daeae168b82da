//! The Numenta Anomaly Benchmark (NAB v1.1): corpus loader and scorer.
//!
//! NAB is the one public benchmark whose scoring rewards what an operator wants from a streaming
//! detector: an alarm early in an anomaly window, few alarms elsewhere. To compare our detectors with
//! its published scoreboard the scorer has to be NAB's, rule for rule, so this module re-implements the
//! reference scorer (numenta/NAB `nab/sweeper.py`, `optimizer.py`, `scorer.py`, `runner.py`):
//!
//! - **Windows** come ready-made in `labels/combined_windows.json` (each spans 10 % of the file's rows
//!   divided by its number of windows, centred on a label); both ends must be timestamps of the file.
//! - **Probation**: the first `min(floor(0.15 * rows), 750)` rows of each file are not scored at all,
//!   and a window lying wholly inside them counts neither as a hit nor as a miss.
//! - **Row weights**: a row at relative position `y` scores `2 * sigmoid(-5 y) - 1`. Inside a window
//!   `y = -(end - i + 1) / width` (from -1 at the left edge to ~0 at the right), scaled by
//!   `A_TP / (2 * sigmoid(5) - 1)` so the earliest possible detection is worth exactly `A_TP`. Outside,
//!   `y` is the distance past the previous window's right edge over `width - 1` (-1 when no window came
//!   before, or `y > 3`), times `A_FP`.
//! - **Score at a threshold**: a row is a detection when its anomaly score is `>=` the threshold. Each
//!   window contributes the best (earliest) detection's weight, or `-A_FN` when it has none; every
//!   detection outside a window adds its (negative) weight.
//! - **Threshold**: one per detector and profile, the one that maximises the score summed over the whole
//!   corpus, found by sweeping every distinct anomaly score from the highest down (ties go to the higher
//!   threshold, as NAB's stable sort does).
//! - **Normalisation**: `100 * (raw - null) / (perfect - null)`, where `null` is the optimised score of
//!   the null detector (a constant score) and `perfect` is the number of labelled windows times `A_TP`.
//!
//! The sweep sorts the corpus once and updates the running total incrementally (NAB re-sums every
//! window's part at each threshold), so scoring the whole corpus takes well under a second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Error, Result};
use tidewatch_analyzer::models::detect::AnomalyDetector;

/// NAB's probationary share of each file.
pub const PROBATION_PERCENT: f64 = 0.15;
/// The three published profiles, in the order NAB's scoreboard lists them.
pub const PROFILE_NAMES: [&str; 3] = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];

/// Threshold NAB starts its sweep at: above every score, so nothing is detected.
const NOTHING_DETECTED: f64 = 1.1;
/// Marks a row outside every window.
const NO_WINDOW: u32 = u32::MAX;

/// A scoring profile: how much a hit, a miss and a false alarm weigh (`config/profiles.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub tp_weight: f64,
    pub fp_weight: f64,
    pub fn_weight: f64,
}

impl Profile {
    fn new(name: &str, tp_weight: f64, fp_weight: f64, fn_weight: f64) -> Self {
        Self {
            name: name.to_owned(),
            tp_weight,
            fp_weight,
            fn_weight,
        }
    }

    /// NAB v1.1's three profiles, for when no `profiles.json` is at hand.
    pub fn nab_defaults() -> Vec<Profile> {
        vec![
            Self::new("standard", 1.0, 0.11, 1.0),
            Self::new("reward_low_FP_rate", 1.0, 0.22, 1.0),
            Self::new("reward_low_FN_rate", 1.0, 0.11, 2.0),
        ]
    }

    /// Reads `config/profiles.json`; the published profiles come first, in scoreboard order.
    pub fn load(path: &Path) -> Result<Vec<Profile>> {
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(rename = "CostMatrix")]
            cost: Costs,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Costs {
            tp_weight: f64,
            fp_weight: f64,
            fn_weight: f64,
        }
        let text = read_text(path)?;
        let entries: BTreeMap<String, Entry> =
            serde_json::from_str(&text).map_err(|e| json_error(path, &e))?;
        let rank = |name: &str| {
            PROFILE_NAMES
                .iter()
                .position(|p| *p == name)
                .unwrap_or(PROFILE_NAMES.len())
        };
        let mut profiles: Vec<Profile> = entries
            .into_iter()
            .map(|(name, e)| Profile {
                name,
                tp_weight: e.cost.tp_weight,
                fp_weight: e.cost.fp_weight,
                fn_weight: e.cost.fn_weight,
            })
            .collect();
        profiles.sort_by_key(|p| rank(&p.name));
        if profiles.is_empty() {
            return Err(Error::Nab(format!("{}: no profiles", path.display())));
        }
        Ok(profiles)
    }
}

/// An anomaly window as row indices, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
}

/// One series of the corpus.
#[derive(Clone, Debug)]
pub struct DataFile {
    /// Path relative to `data/`, e.g. `realKnownCause/nyc_taxi.csv` (NAB's key for the file).
    pub name: String,
    /// Unix milliseconds, in file order.
    pub timestamps: Vec<i64>,
    pub values: Vec<f64>,
    pub windows: Vec<Window>,
}

impl DataFile {
    /// Builds a file from rows and windows given as row indices; windows must be ordered, disjoint and
    /// inside the file.
    pub fn new(
        name: impl Into<String>,
        timestamps: Vec<i64>,
        values: Vec<f64>,
        windows: Vec<Window>,
    ) -> Result<Self> {
        let name = name.into();
        if timestamps.len() != values.len() {
            return Err(Error::Nab(format!(
                "{name}: {} timestamps but {} values",
                timestamps.len(),
                values.len()
            )));
        }
        let mut after = 0;
        for w in &windows {
            if w.start > w.end || w.end >= values.len() || w.start < after {
                return Err(Error::Nab(format!(
                    "{name}: window rows {}..={} are out of order, overlap or lie outside the file",
                    w.start, w.end
                )));
            }
            after = w.end + 1;
        }
        Ok(Self {
            name,
            timestamps,
            values,
            windows,
        })
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Number of leading rows NAB leaves unscored: `min(floor(0.15 * rows), 0.15 * 5000)`.
    pub fn probation(&self) -> usize {
        probation_rows(self.len())
    }
}

/// NAB's probationary period for a file of `rows` rows.
pub fn probation_rows(rows: usize) -> usize {
    // NAB compares the row index with this float; both bounds are whole numbers, so `as` is exact.
    (PROBATION_PERCENT * rows as f64)
        .floor()
        .min(PROBATION_PERCENT * 5000.0) as usize
}

/// The NAB corpus: every labelled series, its windows and the scoring profiles.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub files: Vec<DataFile>,
    pub profiles: Vec<Profile>,
}

impl Corpus {
    /// Loads a NAB checkout laid out as `data/`, `labels/combined_windows.json` and
    /// `config/profiles.json` (NAB's defaults when that file is absent). Files are ordered by name.
    pub fn load(root: &Path) -> Result<Self> {
        let labels = root.join("labels").join("combined_windows.json");
        let text = read_text(&labels)?;
        let windows: BTreeMap<String, Vec<[String; 2]>> =
            serde_json::from_str(&text).map_err(|e| json_error(&labels, &e))?;
        let mut files = Vec::with_capacity(windows.len());
        for (name, spans) in &windows {
            let path = root.join("data").join(name);
            let (timestamps, values) = read_series(&path)?;
            let mut rows = Vec::with_capacity(spans.len());
            for [start, end] in spans {
                let find = |t: &str| -> Result<usize> {
                    let ms = parse_timestamp(t).ok_or_else(|| {
                        Error::Nab(format!(
                            "{}: window of {name}: bad timestamp {t:?}",
                            labels.display()
                        ))
                    })?;
                    // NAB demands that a window edge match exactly one row.
                    let mut hits = timestamps
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| **x == ms)
                        .map(|(i, _)| i);
                    match (hits.next(), hits.next()) {
                        (Some(i), None) => Ok(i),
                        _ => Err(Error::Nab(format!(
                            "{}: window edge {t} of {name} does not match exactly one row of {}",
                            labels.display(),
                            path.display()
                        ))),
                    }
                };
                rows.push(Window {
                    start: find(start)?,
                    end: find(end)?,
                });
            }
            files.push(DataFile::new(name.clone(), timestamps, values, rows)?);
        }
        let profiles_path = root.join("config").join("profiles.json");
        let profiles = if profiles_path.exists() {
            Profile::load(&profiles_path)?
        } else {
            Profile::nab_defaults()
        };
        Ok(Self { files, profiles })
    }

    /// Keeps only the files `keep` names (paths relative to `data/`); a name the corpus lacks is an error,
    /// so a split written for one corpus cannot silently select nothing of another.
    pub fn retain_files(&mut self, keep: &[String]) -> Result<()> {
        if let Some(missing) = keep.iter().find(|k| !self.files.iter().any(|f| &f.name == *k)) {
            return Err(Error::Nab(format!("{missing}: not a file of the corpus")));
        }
        self.files.retain(|f| keep.contains(&f.name));
        Ok(())
    }

    /// Writes each file's scores as NAB's result CSVs (`timestamp,value,anomaly_score,label`, label 1
    /// inside a window) to `<dir>/<detector>/<category>/<detector>_<file>`, so NAB's own scorer can
    /// score them.
    pub fn write_results(&self, dir: &Path, detector: &str, scores: &[Vec<f64>]) -> Result<()> {
        for (file, scores) in self.files.iter().zip(scores) {
            let path = results_path(dir, detector, &file.name);
            let write_err = |source| Error::Read {
                path: path.clone(),
                source,
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(write_err)?;
            }
            let mut text = String::from("timestamp,value,anomaly_score,label\n");
            let mut windows = file.windows.iter().peekable();
            for (i, ((t, v), s)) in file.timestamps.iter().zip(&file.values).zip(scores).enumerate() {
                while windows.peek().is_some_and(|w| w.end < i) {
                    windows.next();
                }
                let label = u8::from(windows.peek().is_some_and(|w| w.start <= i));
                text.push_str(&format!("{},{v},{s},{label}\n", format_timestamp(*t)));
            }
            std::fs::write(&path, text).map_err(write_err)?;
        }
        Ok(())
    }

    /// Total rows.
    pub fn rows(&self) -> usize {
        self.files.iter().map(DataFile::len).sum()
    }

    /// Labelled windows, including any inside a probation period (NAB's "perfect" counts them all).
    pub fn window_count(&self) -> usize {
        self.files.iter().map(|f| f.windows.len()).sum()
    }

    /// Runs a fresh detector over every file, rows in order, on all cores (one file per task).
    pub fn run(&self, make: &(dyn Fn() -> Box<dyn AnomalyDetector> + Sync)) -> Vec<Vec<f64>> {
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(self.files.len().max(1));
        let mut out: Vec<Vec<f64>> = vec![Vec::new(); self.files.len()];
        let done: Vec<Vec<(usize, Vec<f64>)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(file) = self.files.get(i) else { break };
                            let mut detector = make();
                            let scores = file
                                .timestamps
                                .iter()
                                .zip(&file.values)
                                .map(|(&t, &v)| detector.score(t, v))
                                .collect();
                            mine.push((i, scores));
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        for (i, scores) in done.into_iter().flatten() {
            out[i] = scores;
        }
        out
    }
}

/// One file's result at the chosen threshold, as in NAB's `<detector>_<profile>_scores.csv`. Row counts
/// leave out the probation period; `total` is the file's row count.
#[derive(Clone, Debug, PartialEq)]
pub struct FileScore {
    pub file: String,
    pub score: f64,
    pub tp: usize,
    pub tn: usize,
    pub fp: usize,
    pub fn_: usize,
    pub total: usize,
    /// Windows with at least one scored row, and how many of them hold a detection.
    pub windows: usize,
    pub windows_hit: usize,
    /// Where `score` falls short of a perfect detector's `windows * A_TP`.
    pub lost: Losses,
}

/// What a score loses against a perfect detector (one detection at each window's left edge, nothing
/// else), by cause: `windows * A_TP - score = missed + late + false_alarms`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Losses {
    /// Windows without a detection: `A_TP + A_FN` each.
    pub missed: f64,
    /// Windows detected after their left edge: `A_TP` less the earliest detection's weight.
    pub late: f64,
    /// Detections outside every window: the sum of their (negative) weights, as a positive number.
    pub false_alarms: f64,
}

impl std::ops::Add for Losses {
    type Output = Losses;
    fn add(self, o: Losses) -> Losses {
        Losses {
            missed: self.missed + o.missed,
            late: self.late + o.late,
            false_alarms: self.false_alarms + o.false_alarms,
        }
    }
}

/// A detector's result under one profile.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileScore {
    pub profile: String,
    /// The corpus-optimal threshold (a row is a detection when its score is `>=` this).
    pub threshold: f64,
    /// Raw NAB score: the sum of the per-file scores at `threshold`.
    pub raw: f64,
    /// Raw score of the null detector under this profile (its own optimal threshold).
    pub null: f64,
    /// Raw score of a perfect detector: labelled windows times `A_TP`.
    pub perfect: f64,
    /// `100 * (raw - null) / (perfect - null)`: the number on NAB's scoreboard.
    pub normalised: f64,
    pub files: Vec<FileScore>,
}

impl ProfileScore {
    /// The files' losses, summed.
    pub fn lost(&self) -> Losses {
        self.files
            .iter()
            .map(|f| f.lost)
            .fold(Losses::default(), |a, b| a + b)
    }
}

/// A detector's results under every profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub profiles: Vec<ProfileScore>,
}

impl Report {
    pub fn get(&self, profile: &str) -> Option<&ProfileScore> {
        self.profiles.iter().find(|p| p.profile == profile)
    }

    /// `{"standard":…,"reward_low_FP_rate":…,"reward_low_FN_rate":…}` (normalised scores, profiles in
    /// scoreboard order).
    pub fn to_json(&self) -> String {
        let fields: Vec<String> = self
            .profiles
            .iter()
            .map(|p| {
                format!(
                    "{}:{}",
                    serde_json::Value::from(p.profile.as_str()),
                    serde_json::Value::from(p.normalised)
                )
            })
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

/// `100 * (raw - null) / (perfect - null)`.
pub fn normalise(raw: f64, null: f64, perfect: f64) -> f64 {
    100.0 * (raw - null) / (perfect - null)
}

/// `2 * sigmoid(-5 y) - 1`, and -1 past three window widths (NAB's `scaledSigmoid`).
fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 * (1.0 / (1.0 + (5.0 * y).exp())) - 1.0
    }
}

/// A scored row's ground truth: its window (corpus-wide id) or `NO_WINDOW`, and its unweighted sigmoid.
#[derive(Clone, Copy, Debug)]
struct Truth {
    window: u32,
    unweighted: f64,
}

/// Ground truth of one file, for its rows after probation.
#[derive(Clone, Debug)]
struct FileTruth {
    name: String,
    rows: usize,
    probation: usize,
    /// Offset of this file's first scored row in the flattened truth.
    offset: usize,
    /// Corpus-wide ids of the windows with at least one scored row.
    windows: Vec<u32>,
}

/// NAB's scorer over one corpus: ground truth is laid out once, then any number of detectors' scores are
/// swept against it.
#[derive(Clone, Debug)]
pub struct Scorer {
    files: Vec<FileTruth>,
    truth: Vec<Truth>,
    window_ids: u32,
    label_count: usize,
    profiles: Vec<Profile>,
    /// The null detector's optimised raw score per profile (NAB's null scores a constant 0.5).
    null: Vec<f64>,
}

impl Scorer {
    pub fn new(corpus: &Corpus) -> Self {
        let mut files = Vec::with_capacity(corpus.files.len());
        let mut truth = Vec::with_capacity(corpus.rows());
        let mut window_ids = 0u32;
        for f in &corpus.files {
            let probation = f.probation();
            let offset = truth.len();
            let mut scored_windows = Vec::new();
            let first_id = window_ids;
            window_ids += u32::try_from(f.windows.len()).unwrap_or(u32::MAX - 1);
            // Walk the rows as NAB does: inside a window, after one, or before the first.
            let mut next = 0usize; // index of the next window not yet passed
            for i in 0..f.len() {
                while next < f.windows.len() && f.windows[next].end < i {
                    next += 1;
                }
                let inside = f.windows.get(next).filter(|w| w.start <= i);
                let (window, unweighted) = match inside {
                    Some(w) => {
                        let width = (w.end - w.start + 1) as f64;
                        let y = -((w.end - i + 1) as f64) / width;
                        (first_id + next as u32, scaled_sigmoid(y))
                    }
                    None if next == 0 => (NO_WINDOW, -1.0),
                    None => {
                        let prev = f.windows[next - 1];
                        let width = (prev.end - prev.start + 1) as f64;
                        let y = (i - prev.end) as f64 / (width - 1.0);
                        (NO_WINDOW, scaled_sigmoid(y))
                    }
                };
                if i < probation {
                    continue;
                }
                if window != NO_WINDOW && scored_windows.last() != Some(&window) {
                    scored_windows.push(window);
                }
                truth.push(Truth { window, unweighted });
            }
            files.push(FileTruth {
                name: f.name.clone(),
                rows: f.len(),
                probation,
                offset,
                windows: scored_windows,
            });
        }
        let mut scorer = Self {
            files,
            truth,
            window_ids,
            label_count: corpus.window_count(),
            profiles: corpus.profiles.clone(),
            null: Vec::new(),
        };
        let constant = vec![0.5; scorer.truth.len()];
        let order = sort_descending(&constant);
        scorer.null = scorer
            .profiles
            .iter()
            .map(|p| scorer.sweep(&constant, &order, p).1)
            .collect();
        scorer
    }

    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    /// Scores a detector: `scores[f][i]` is its anomaly score (in [0, 1]; anything finite is accepted,
    /// as NAB does) for row `i` of file `f` (corpus order). Every profile gets its own corpus-optimal threshold, as NAB's optimiser does.
    pub fn score(&self, scores: &[Vec<f64>]) -> Result<Report> {
        self.score_with(scores, None)
    }

    /// Scores a detector at given thresholds (one per profile, in `profiles()` order) instead of
    /// optimising them: NAB's scoring step alone, e.g. to replay a published run's thresholds.
    pub fn score_at(&self, scores: &[Vec<f64>], thresholds: &[f64]) -> Result<Report> {
        if thresholds.len() != self.profiles.len() {
            return Err(Error::Nab(format!(
                "{} thresholds for {} profiles",
                thresholds.len(),
                self.profiles.len()
            )));
        }
        self.score_with(scores, Some(thresholds))
    }

    fn score_with(&self, scores: &[Vec<f64>], thresholds: Option<&[f64]>) -> Result<Report> {
        let flat = self.flatten(scores)?;
        let order = if thresholds.is_none() {
            sort_descending(&flat)
        } else {
            Vec::new()
        };
        let mut profiles = Vec::with_capacity(self.profiles.len());
        for (k, profile) in self.profiles.iter().enumerate() {
            let threshold = match thresholds {
                Some(t) => t[k],
                None => self.sweep(&flat, &order, profile).0,
            };
            let files = self.files_at(&flat, threshold, profile);
            let raw = files.iter().map(|f| f.score).sum();
            let null_raw = self.null[k];
            let perfect = self.label_count as f64 * profile.tp_weight;
            profiles.push(ProfileScore {
                profile: profile.name.clone(),
                threshold,
                raw,
                null: null_raw,
                perfect,
                normalised: normalise(raw, null_raw, perfect),
                files,
            });
        }
        Ok(Report { profiles })
    }

    /// Checks shape and range, and keeps the scored rows (after probation) in truth order.
    fn flatten(&self, scores: &[Vec<f64>]) -> Result<Vec<f64>> {
        if scores.len() != self.files.len() {
            return Err(Error::Nab(format!(
                "scores for {} files, the corpus has {}",
                scores.len(),
                self.files.len()
            )));
        }
        let mut flat = Vec::with_capacity(self.truth.len());
        for (file, s) in self.files.iter().zip(scores) {
            if s.len() != file.rows {
                return Err(Error::Nab(format!(
                    "{}: {} scores for {} rows",
                    file.name,
                    s.len(),
                    file.rows
                )));
            }
            // NAB's scorer sorts whatever it is given (some published result files hold scores a
            // hair outside [0, 1]); only a score that cannot be ordered is refused.
            if let Some((i, x)) = s.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(Error::Nab(format!(
                    "{}: row {i}: anomaly score {x} is not a number",
                    file.name
                )));
            }
            // `+ 0.0` turns -0.0 into 0.0, which NAB treats as the same threshold.
            flat.extend(s[file.probation..].iter().map(|x| x + 0.0));
        }
        Ok(flat)
    }

    /// NAB's corpus-wide sweep: the best (threshold, raw score); ties keep the higher threshold.
    fn sweep(&self, flat: &[f64], order: &[u32], p: &Profile) -> (f64, f64) {
        let max_tp = scaled_sigmoid(-1.0);
        let mut best_part = vec![-p.fn_weight; self.window_ids as usize];
        let scored_windows: usize = self.files.iter().map(|f| f.windows.len()).sum();
        let mut windows_part = -p.fn_weight * scored_windows as f64;
        let mut fp_part = 0.0;
        let mut current = NOTHING_DETECTED;
        let mut best = (current, windows_part);
        for &idx in order {
            let idx = idx as usize;
            if flat[idx] != current {
                let total = fp_part + windows_part;
                if total > best.1 {
                    best = (current, total);
                }
                current = flat[idx];
            }
            let t = self.truth[idx];
            if t.window == NO_WINDOW {
                fp_part += t.unweighted * p.fp_weight;
            } else {
                let w = t.unweighted * p.tp_weight / max_tp;
                let part = &mut best_part[t.window as usize];
                if w > *part {
                    windows_part += w - *part;
                    *part = w;
                }
            }
        }
        let total = fp_part + windows_part;
        if total > best.1 {
            best = (current, total);
        }
        best
    }

    /// Per-file results at a fixed threshold (NAB's scoring step).
    fn files_at(&self, flat: &[f64], threshold: f64, p: &Profile) -> Vec<FileScore> {
        let max_tp = scaled_sigmoid(-1.0);
        let mut best_part: BTreeMap<u32, f64> = BTreeMap::new();
        self.files
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let end = self.files.get(k + 1).map_or(self.truth.len(), |n| n.offset);
                best_part.clear();
                best_part.extend(f.windows.iter().map(|&w| (w, -p.fn_weight)));
                let (mut tp, mut tn, mut fp, mut fn_) = (0, 0, 0, 0);
                let mut fp_part = 0.0;
                for (t, &s) in self.truth[f.offset..end].iter().zip(&flat[f.offset..end]) {
                    let detected = s >= threshold;
                    match (t.window == NO_WINDOW, detected) {
                        (true, true) => {
                            fp += 1;
                            fp_part += t.unweighted * p.fp_weight;
                        }
                        (true, false) => tn += 1,
                        (false, true) => {
                            tp += 1;
                            let w = t.unweighted * p.tp_weight / max_tp;
                            let part = best_part.entry(t.window).or_insert(-p.fn_weight);
                            *part = part.max(w);
                        }
                        (false, false) => fn_ += 1,
                    }
                }
                let score = fp_part + best_part.values().sum::<f64>();
                let windows_hit = best_part.values().filter(|&&v| v > -p.fn_weight).count();
                let lost = Losses {
                    missed: (best_part.len() - windows_hit) as f64 * (p.tp_weight + p.fn_weight),
                    late: best_part
                        .values()
                        .filter(|&&v| v > -p.fn_weight)
                        .map(|v| p.tp_weight - v)
                        .sum(),
                    false_alarms: -fp_part,
                };
                FileScore {
                    file: f.name.clone(),
                    score,
                    tp,
                    tn,
                    fp,
                    fn_,
                    total: f.rows,
                    windows: f.windows.len(),
                    windows_hit,
                    lost,
                }
            })
            .collect()
    }
}

/// Row indices ordered by score, highest first; equal scores keep corpus order (a stable sort, as NAB's).
fn sort_descending(flat: &[f64]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..flat.len() as u32).collect();
    order.sort_by(|&a, &b| flat[b as usize].total_cmp(&flat[a as usize]));
    order
}

/// Where NAB keeps a detector's results for a data file:
/// `<results>/<detector>/<category>/<detector>_<file name>`.
pub fn results_path(results: &Path, detector: &str, file: &str) -> PathBuf {
    let (dir, base) = file.rsplit_once('/').unwrap_or(("", file));
    results
        .join(detector)
        .join(dir)
        .join(format!("{detector}_{base}"))
}

/// Reads the `anomaly_score` column of a NAB results CSV (`timestamp,value,anomaly_score,…`).
pub fn read_result_scores(path: &Path) -> Result<Vec<f64>> {
    let text = read_text(path)?;
    let mut lines = text.lines();
    let header = lines.next().ok_or_else(|| parse_error(path, 1, "empty file"))?;
    let column = header
        .trim_end_matches('\r')
        .split(',')
        .position(|c| c.trim() == "anomaly_score")
        .ok_or_else(|| parse_error(path, 1, "no anomaly_score column"))?;
    let mut scores = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let cell = line
            .split(',')
            .nth(column)
            .ok_or_else(|| parse_error(path, n + 2, "too few columns"))?;
        let x: f64 = cell
            .trim()
            .parse()
            .map_err(|_| parse_error(path, n + 2, &format!("bad score {cell:?}")))?;
        scores.push(x);
    }
    Ok(scores)
}

/// Reads a NAB data file: a `timestamp,value` header, then one row per line.
pub fn read_series(path: &Path) -> Result<(Vec<i64>, Vec<f64>)> {
    let text = read_text(path)?;
    let mut lines = text.lines();
    let header = lines
        .next()
        .map(|h| h.trim_start_matches('\u{feff}').trim_end_matches('\r'));
    if header.map(|h| h.split(',').map(str::trim).collect::<Vec<_>>()) != Some(vec!["timestamp", "value"]) {
        return Err(parse_error(path, 1, "expected the header timestamp,value"));
    }
    let (mut timestamps, mut values) = (Vec::new(), Vec::new());
    for (n, line) in lines.enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let no = n + 2;
        let (t, v) = line
            .split_once(',')
            .ok_or_else(|| parse_error(path, no, "expected timestamp,value"))?;
        let t = parse_timestamp(t.trim())
            .ok_or_else(|| parse_error(path, no, &format!("bad timestamp {t:?}")))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| parse_error(path, no, &format!("bad value {v:?}")))?;
        if !v.is_finite() {
            return Err(parse_error(path, no, "value is not finite"));
        }
        timestamps.push(t);
        values.push(v);
    }
    Ok((timestamps, values))
}

/// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]` (or with a `T`, and an optional `Z`), read as UTC, into Unix
/// milliseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, min, sec): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if d.next().is_some() || t.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    if h > 23 || min > 59 || sec > 60 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |acc, b| acc * 10 + i64::from(b - b'0'));
    let days = days_from_civil(y, m, day);
    Some(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + ms)
}

/// Formats Unix milliseconds as NAB writes timestamps, `YYYY-MM-DD HH:MM:SS` (UTC; milliseconds, when
/// there are any, as a `.fff` fraction).
pub fn format_timestamp(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, min, sec, frac) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    let mut out = format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}:{sec:02}");
    if frac != 0 {
        out.push_str(&format!(".{frac:03}"));
    }
    out
}

/// The date of a day count since 1970-01-01: the inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let d = day_of_year - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = year_of_era + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The files of one part of a split file (`bench/nab/split.tsv`: `part<TAB>file` lines, `#` comments).
pub fn read_split(path: &Path, part: &str) -> Result<Vec<String>> {
    let text = read_text(path)?;
    let mut files = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (p, file) = line
            .split_once('\t')
            .ok_or_else(|| parse_error(path, n + 1, "expected part<TAB>file"))?;
        if p == part {
            files.push(file.trim().to_owned());
        }
    }
    if files.is_empty() {
        return Err(parse_error(path, 1, &format!("no file in part {part:?}")));
    }
    Ok(files)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (eras of 400 years, years starting in March).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (m + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_error(path: &Path, line: usize, msg: &str) -> Error {
    Error::Parse {
        path: path.to_owned(),
        line,
        msg: msg.to_owned(),
    }
}

fn json_error(path: &Path, e: &serde_json::Error) -> Error {
    Error::Parse {
        path: path.to_owned(),
        line: e.line(),
        msg: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_back_to_what_was_parsed() {
        for t in [
            "2014-02-14 14:30:00",
            "1970-01-01 00:00:00",
            "2000-02-29 23:59:59.250",
            "2015-12-31 01:02:03",
        ] {
            assert_eq!(format_timestamp(parse_timestamp(t).unwrap()), t);
        }
    }

    /// A file of `n` rows, five minutes apart, with the given windows.
    fn file(name: &str, n: usize, windows: &[(usize, usize)]) -> DataFile {
        let ts = (0..n as i64).map(|i| i * 300_000).collect();
        let ws = windows
            .iter()
            .map(|&(start, end)| Window { start, end })
            .collect();
        DataFile::new(name, ts, vec![0.0; n], ws).unwrap()
    }

    fn corpus(files: Vec<DataFile>) -> Corpus {
        Corpus {
            files,
            profiles: Profile::nab_defaults(),
        }
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750() {
        assert_eq!(probation_rows(4032), 604);
        assert_eq!(probation_rows(1000), 150);
        assert_eq!(probation_rows(10_320), 750);
        assert_eq!(probation_rows(0), 0);
    }

    #[test]
    fn sigmoid_matches_nab_landmarks() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298_151_430_3).abs() < 1e-12);
        assert!((scaled_sigmoid(-0.5) - 0.848_283_639_957_512_9).abs() < 1e-12);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
    }

    #[test]
    fn timestamps_parse_as_utc() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp("2014-04-10 07:15:00.000000"),
            Some(1_397_114_100_000)
        );
        assert_eq!(parse_timestamp("2000-02-29T12:00:00.5"), Some(951_825_600_500));
        assert_eq!(parse_timestamp("2014-13-01 00:00:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn earliest_detection_scores_a_full_true_positive() {
        // 1000 rows: probation 150; one window at rows 500..=599.
        let c = corpus(vec![file("a.csv", 1000, &[(500, 599)])]);
        let scorer = Scorer::new(&c);
        let mut s = vec![0.0; 1000];
        s[500] = 1.0;
        let report = scorer.score(&[s]).unwrap();
        let standard = report.get("standard").unwrap();
        assert_eq!(standard.threshold, 1.0);
        assert!((standard.raw - 1.0).abs() < 1e-12, "{}", standard.raw);
        assert_eq!(standard.null, -1.0);
        assert_eq!(standard.perfect, 1.0);
        assert!((standard.normalised - 100.0).abs() < 1e-9);
        let f = &standard.files[0];
        assert_eq!((f.tp, f.fp, f.fn_, f.tn, f.total), (1, 0, 99, 750, 1000));
    }

    #[test]
    fn late_detection_and_false_alarms_cost_what_nab_says() {
        let c = corpus(vec![file("a.csv", 1000, &[(500, 599)])]);
        let scorer = Scorer::new(&c);
        let mut s = vec![0.0; 1000];
        s[550] = 0.9; // halfway: y = -(599 - 550 + 1) / 100 = -0.5
        s[200] = 0.9; // before any window: -A_FP
        s[610] = 0.9; // 11 rows past the window: y = 11 / 99
        let report = scorer.score(&[s]).unwrap();
        let p = report.get("reward_low_FP_rate").unwrap();
        let tp = scaled_sigmoid(-0.5) / scaled_sigmoid(-1.0);
        let fp = -0.22 + 0.22 * scaled_sigmoid(11.0 / 99.0);
        assert_eq!(p.threshold, 0.9);
        assert!((p.raw - (tp + fp)).abs() < 1e-12, "{} vs {}", p.raw, tp + fp);
        // What it lost against one detection at the window's left edge: lateness and false alarms.
        let lost = p.lost();
        assert_eq!(lost.missed, 0.0);
        assert!((lost.late - (1.0 - tp)).abs() < 1e-12);
        assert!((lost.false_alarms + fp).abs() < 1e-12);
        // Low-FN profile: a miss costs 2, so the same detections still beat detecting nothing.
        let q = report.get("reward_low_FN_rate").unwrap();
        assert!((q.null + 2.0).abs() < 1e-12);
    }

    #[test]
    fn the_threshold_is_optimised_over_the_whole_corpus() {
        // File a has a 0.8 hit; file b has three 0.9 false alarms. Alone, b would pick "nothing";
        // together the sweep must weigh them at one threshold.
        let c = corpus(vec![file("a.csv", 1000, &[(500, 599)]), file("b.csv", 1000, &[])]);
        let scorer = Scorer::new(&c);
        let mut a = vec![0.0; 1000];
        a[500] = 0.8;
        let mut b = vec![0.0; 1000];
        for i in [300, 400, 900] {
            b[i] = 0.9;
        }
        let report = scorer.score(&[a.clone(), b]).unwrap();
        let p = report.get("standard").unwrap();
        // At 0.8: +1 - 3 * 0.11 = 0.67 beats -1 (nothing) and -1.33 (only the false alarms).
        assert_eq!(p.threshold, 0.8);
        assert!((p.raw - 0.67).abs() < 1e-12);
        assert_eq!(p.files[1].fp, 3);
        // Perfect would be 1: the raw score falls short by exactly the losses.
        let lost = p.lost();
        assert!((lost.missed + lost.late + lost.false_alarms - (1.0 - p.raw)).abs() < 1e-12);
        // At a threshold above the hit, the window is missed: A_TP + A_FN.
        let above = scorer.score_at(&[a, vec![0.0; 1000]], &[0.85; 3]).unwrap();
        let q = above.get("standard").unwrap();
        assert_eq!(q.lost().missed, 2.0);
    }

    #[test]
    fn windows_inside_probation_are_neither_hits_nor_misses() {
        let c = corpus(vec![file("a.csv", 1000, &[(10, 20), (500, 599)])]);
        let scorer = Scorer::new(&c);
        let report = scorer.score(&[vec![0.0; 1000]]).unwrap();
        let p = report.get("standard").unwrap();
        // Only the second window can be missed; but "perfect" still counts both labels.
        assert_eq!(p.raw, -1.0);
        assert_eq!(p.perfect, 2.0);
        // A false alarm after the first window is weighed by its distance from it.
        let mut s = vec![0.0; 1000];
        s[400] = 1.0;
        s[500] = 1.0;
        let q = scorer.score(&[s]).unwrap();
        let expected = 1.0 + 0.11 * scaled_sigmoid((400.0 - 20.0) / 10.0);
        assert!((q.get("standard").unwrap().files[0].score - expected).abs() < 1e-12);
    }

    #[test]
    fn ties_keep_the_higher_threshold() {
        let c = corpus(vec![file("a.csv", 1000, &[(500, 599)])]);
        let scorer = Scorer::new(&c);
        let mut s = vec![0.0; 1000];
        s[500] = 0.9;
        s[520] = 0.7; // a later hit in the same window adds nothing
        let report = scorer.score(&[s]).unwrap();
        assert_eq!(report.get("standard").unwrap().threshold, 0.9);
    }

    #[test]
    fn bad_scores_are_refused() {
        let c = corpus(vec![file("a.csv", 10, &[])]);
        let scorer = Scorer::new(&c);
        assert!(scorer.score(&[vec![0.0; 9]]).is_err());
        let mut s = vec![0.0; 10];
        s[3] = f64::NAN;
        let e = scorer.score(&[s]).unwrap_err().to_string();
        assert!(e.contains("a.csv") && e.contains("row 3"), "{e}");
        let mut s = vec![0.0; 10];
        s[9] = f64::INFINITY;
        assert!(scorer.score(&[s]).is_err());
    }

    #[test]
    fn malformed_csv_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv");
        std::fs::write(
            &path,
            "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:05:00,oops\n",
        )
        .unwrap();
        let e = read_series(&path).unwrap_err().to_string();
        assert!(e.contains("x.csv") && e.contains(":3:"), "{e}");
        std::fs::write(&path, "time,value\n").unwrap();
        assert!(read_series(&path).unwrap_err().to_string().contains(":1:"));
        std::fs::write(&path, "timestamp,value\r\n2014-01-01 00:00:00,1.5\r\n").unwrap();
        assert_eq!(read_series(&path).unwrap(), (vec![1_388_534_400_000], vec![1.5]));
    }

    #[test]
    fn corpus_loads_windows_as_rows() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data/cat")).unwrap();
        std::fs::create_dir_all(root.join("labels")).unwrap();
        let mut csv = String::from("timestamp,value\n");
        for i in 0..20 {
            csv.push_str(&format!("2014-01-01 00:{i:02}:00,{i}\n"));
        }
        std::fs::write(root.join("data/cat/s.csv"), csv).unwrap();
        std::fs::write(
            root.join("labels/combined_windows.json"),
            r#"{"cat/s.csv": [["2014-01-01 00:05:00.000000", "2014-01-01 00:07:00.000000"]]}"#,
        )
        .unwrap();
        let c = Corpus::load(root).unwrap();
        assert_eq!(c.files[0].windows, vec![Window { start: 5, end: 7 }]);
        assert_eq!(c.profiles, Profile::nab_defaults());
        std::fs::write(
            root.join("labels/combined_windows.json"),
            r#"{"cat/s.csv": [["2014-01-01 00:05:30", "2014-01-01 00:07:00"]]}"#,
        )
        .unwrap();
        assert!(
            Corpus::load(root)
                .unwrap_err()
                .to_string()
                .contains("exactly one row")
        );
    }

    #[test]
    fn results_paths_follow_nab_layout() {
        assert_eq!(
            results_path(Path::new("r"), "numenta", "realKnownCause/nyc_taxi.csv"),
            Path::new("r/numenta/realKnownCause/numenta_nyc_taxi.csv")
        );
    }
}
