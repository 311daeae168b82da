//! Our NAB scorer against NAB's published numbers (`../shared/data/nab/results/`).
//!
//! The shared copy of NAB keeps each published detector's *summary* (`<detector>_<profile>_scores.csv`:
//! the threshold, per-file scores at it, and the corpus total) and the scoreboard (`final_results.json`),
//! but not the per-row anomaly scores. So the scorer is checked four ways:
//!
//! 1. the null detector (a constant) gives NAB's baselines, file by file;
//! 2. every published total normalises, with our null and perfect scores, to its scoreboard entry;
//! 3. two published detectors that are deterministic, NAB's `random` (Python's Mersenne Twister seeded
//!    with 42 per file) and `windowedGaussian`, are re-run here and re-scored end to end, threshold sweep
//!    included;
//! 4. where per-row result files are present (`results/<detector>/<category>/<detector>_<file>.csv`,
//!    in the shared copy or under `$NAB_RESULTS_DIR`, e.g. a NAB checkout's `results/`), every such
//!    detector is re-scored from them (numenta, ARTime, ...).
//!
//! Each re-scored detector must land within 0.5 points of the scoreboard twice: re-optimising the
//! threshold over the corpus as NAB's sweeper does, and replaying the published run's threshold. Two
//! published entries (htmjava, random) were produced by NAB's older optimiser, a local search that stopped
//! short of the best threshold; for them the exhaustive sweep finds a higher score, and the check is that
//! replaying their threshold reproduces the published number and that the sweep never does worse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tidewatch_analyzer::models::detect::{AnomalyDetector, WindowedGaussian};
use tidewatch_eval::nab::{Corpus, Scorer, normalise, read_result_scores, results_path};

/// How far (in normalised points) a re-scored detector may land from the scoreboard.
const TOLERANCE: f64 = 0.5;

fn nab_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab")
}

fn corpus() -> &'static (Corpus, Scorer) {
    static CORPUS: OnceLock<(Corpus, Scorer)> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let corpus = Corpus::load(&nab_root()).expect("NAB corpus in ../shared/data/nab");
        let scorer = Scorer::new(&corpus);
        (corpus, scorer)
    })
}

/// `final_results.json`: detector → profile → normalised score.
fn scoreboard() -> BTreeMap<String, BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(nab_root().join("results/final_results.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// One row of a published `<detector>_<profile>_scores.csv`.
#[derive(Debug)]
struct SummaryRow {
    file: String,
    threshold: f64,
    score: f64,
    tp: usize,
    fp: usize,
}

/// A published summary: per-file rows, the `Totals` score, and whether it is of this corpus (some
/// summaries were left from an older, smaller corpus: their totals count other rows).
struct Summary {
    rows: Vec<SummaryRow>,
    total: f64,
    current: bool,
}

fn summary(detector: &str, profile: &str) -> Option<Summary> {
    let path = nab_root().join(format!("results/{detector}/{detector}_{profile}_scores.csv"));
    let text = std::fs::read_to_string(path).ok()?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        if c.len() < 10 {
            continue;
        }
        if c[0] == "Totals" {
            let current = c[9].parse::<usize>().ok() == Some(corpus().0.rows());
            return Some(Summary {
                rows,
                total: c[4].parse().ok()?,
                current,
            });
        }
        rows.push(SummaryRow {
            file: c[2].to_owned(),
            threshold: c[3].parse().ok()?,
            score: c[4].parse().ok()?,
            tp: c[5].parse().ok()?,
            fp: c[7].parse().ok()?,
        });
    }
    None
}

/// Python 2's `str(float)`, which NAB's results files were written with: 12 significant digits.
fn as_published(x: f64) -> f64 {
    format!("{x:.11e}").parse().unwrap()
}

fn run(make: impl Fn() -> Box<dyn AnomalyDetector> + Sync) -> Vec<Vec<f64>> {
    let (corpus, _) = corpus();
    let mut scores = corpus.run(&make);
    for s in scores.iter_mut().flatten() {
        *s = as_published(*s);
    }
    scores
}

/// Scores `scores` as `detector`'s and compares with the scoreboard, both re-optimised and at the
/// published thresholds; per-file rows too where the summary is current. Returns the problems found.
fn check(detector: &str, scores: &[Vec<f64>]) -> Vec<String> {
    let (_, scorer) = corpus();
    let board = scoreboard();
    let published = &board[detector];
    let report = scorer.score(scores).unwrap();
    let summaries: Vec<Option<Summary>> = scorer
        .profiles()
        .iter()
        .map(|p| summary(detector, &p.name))
        .collect();
    let thresholds: Option<Vec<f64>> = summaries
        .iter()
        .map(|s| s.as_ref().and_then(|s| s.rows.first()).map(|r| r.threshold))
        .collect();
    let replay = thresholds.map(|t| scorer.score_at(scores, &t).unwrap());
    let mut problems = Vec::new();
    for (k, p) in report.profiles.iter().enumerate() {
        let want = published[&p.profile];
        let replayed = replay.as_ref().and_then(|r| r.get(&p.profile));
        println!(
            "{detector:>18} {:<19} swept {:7.3} (threshold {:.6})  at published threshold {:>7}  published {:7.3}",
            p.profile,
            p.normalised,
            p.threshold,
            replayed.map_or("-".to_owned(), |r| format!("{:.3}", r.normalised)),
            want
        );
        let replay_ok = replayed.is_some_and(|r| (r.normalised - want).abs() <= TOLERANCE);
        if replayed.is_some() && !replay_ok {
            problems.push(format!(
                "{detector} {}: at the published threshold, not {want:.3}",
                p.profile
            ));
        }
        let swept_ok = (p.normalised - want).abs() <= TOLERANCE;
        // The exhaustive sweep may beat an older optimiser's threshold, never lose to it.
        let beat_old_optimiser = replay_ok && p.normalised > want;
        if !swept_ok && !beat_old_optimiser {
            problems.push(format!(
                "{detector} {}: swept {:.3} vs published {want:.3}",
                p.profile, p.normalised
            ));
        }
        // File by file at the published threshold, when the summary is of this corpus.
        let (Some(Some(s)), Some(replayed)) = (summaries.get(k), replayed) else {
            continue;
        };
        if !s.current {
            continue;
        }
        let ours: BTreeMap<&str, _> = replayed.files.iter().map(|f| (f.file.as_str(), f)).collect();
        let off: Vec<&str> = s
            .rows
            .iter()
            .filter(|r| {
                let f = ours[r.file.as_str()];
                (f.score - r.score).abs() > 1e-6 || f.tp != r.tp || f.fp != r.fp
            })
            .map(|r| r.file.as_str())
            .collect();
        if off.len() > 1 {
            problems.push(format!(
                "{detector} {}: files differ from the summary: {off:?}",
                p.profile
            ));
        }
    }
    problems
}

/// Python's `random` (MT19937, `seed(42)` through `init_by_array`, 53-bit `random()`), as NAB's random
/// detector draws it: re-seeded with 42 for every file.
struct PythonRandom {
    mt: [u32; 624],
    index: usize,
}

impl PythonRandom {
    fn seeded(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = 19_650_218;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        let key = [seed];
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            mt[i] =
                (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                mt[0] = mt[623];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        Self { mt, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn random(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }
}

struct RandomDetector(PythonRandom);

impl AnomalyDetector for RandomDetector {
    fn score(&mut self, _t_ms: i64, _value: f64) -> f64 {
        self.0.random()
    }
}

#[test]
fn python_random_matches_cpython() {
    let mut r = PythonRandom::seeded(42);
    let got: Vec<f64> = (0..3).map(|_| r.random()).collect();
    assert_eq!(
        got,
        [0.6394267984578837, 0.025010755222666936, 0.27502931836911926]
    );
}

#[test]
fn null_detector_gives_the_published_baselines() {
    let (corpus, scorer) = corpus();
    assert_eq!(corpus.files.len(), 58);
    assert_eq!(corpus.rows(), 365_558);
    assert_eq!(corpus.window_count(), 116);
    let constant: Vec<Vec<f64>> = corpus.files.iter().map(|f| vec![0.5; f.len()]).collect();
    let report = scorer.score(&constant).unwrap();
    for p in &report.profiles {
        let s = summary("null", &p.profile).expect("null summary");
        assert_eq!(p.raw, s.total, "{}", p.profile);
        assert_eq!(p.null, s.total);
        assert_eq!(p.perfect, 116.0);
        assert_eq!(p.normalised, 0.0);
        for row in s.rows {
            let ours = p.files.iter().find(|f| f.file == row.file).unwrap();
            assert_eq!(ours.score, row.score, "{} {}", p.profile, row.file);
        }
    }
}

#[test]
fn published_totals_normalise_to_the_scoreboard() {
    let (corpus, scorer) = corpus();
    let null: Vec<Vec<f64>> = corpus.files.iter().map(|f| vec![0.5; f.len()]).collect();
    let baseline = scorer.score(&null).unwrap();
    let mut checked = 0;
    for (detector, profiles) in scoreboard() {
        for (profile, want) in profiles {
            let Some(s) = summary(&detector, &profile).filter(|s| s.current) else {
                continue;
            };
            let p = baseline.get(&profile).unwrap();
            let ours = normalise(s.total, p.null, p.perfect);
            assert!(
                (ours - want).abs() < 1e-6,
                "{detector} {profile}: {ours} vs {want}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 36, "only {checked} published totals found");
}

#[test]
fn random_detector_rescores_to_the_scoreboard() {
    let scores = run(|| Box::new(RandomDetector(PythonRandom::seeded(42))));
    let problems = check("random", &scores);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn windowed_gaussian_rescores_to_the_scoreboard() {
    let scores = run(|| Box::new(WindowedGaussian::new()));
    let problems = check("windowedGaussian", &scores);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn published_result_files_rescore_to_the_scoreboard() {
    let (corpus, _) = corpus();
    let mut dirs = vec![nab_root().join("results")];
    if let Some(extra) = std::env::var_os("NAB_RESULTS_DIR") {
        dirs.insert(0, PathBuf::from(extra));
    }
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for detector in scoreboard().keys() {
        let Some(dir) = dirs
            .iter()
            .find(|d| results_path(d, detector, &corpus.files[0].name).exists())
        else {
            continue;
        };
        let scores: Vec<Vec<f64>> = corpus
            .files
            .iter()
            .map(|f| read_result_scores(&results_path(dir, detector, &f.name)).unwrap())
            .collect();
        problems.extend(check(detector, &scores));
        checked.push(detector.clone());
    }
    println!("re-scored from per-row result files: {checked:?}");
    if checked.is_empty() {
        println!(
            "no per-row result files under {dirs:?}: set NAB_RESULTS_DIR to a NAB checkout's results/ to \
             re-score numenta, ARTime and the rest"
        );
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
