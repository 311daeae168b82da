//! `tidewatch nab`: runs a detector over the NAB corpus the way NAB does (each series on its own, rows in
//! order, a fresh detector per series) and scores it with NAB's rules (`tidewatch_eval::nab`).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use tidewatch_analyzer::models::detect::{DETECTORS, Params, factory};
use tidewatch_eval::nab::{Corpus, Scorer, read_split};

use crate::cli::NabArgs;

pub fn run(args: &NabArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut corpus =
        Corpus::load(&args.data).with_context(|| format!("loading NAB from {}", args.data.display()))?;
    if let (Some(split), Some(part)) = (&args.split, &args.part) {
        let keep = read_split(split, part)?;
        corpus
            .retain_files(&keep)
            .with_context(|| format!("--split {}", split.display()))?;
    }
    let mut params = Params::default();
    for kv in &args.params {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--param {kv:?}: expected NAME=VALUE"))?;
        params
            .set(k.trim(), v.trim())
            .map_err(|e| anyhow::anyhow!("--param {kv:?}: {e}"))?;
    }
    let Some(make) = factory(&args.detector, &params) else {
        bail!(
            "unknown detector {:?}: one of {}",
            args.detector,
            DETECTORS.join(", ")
        )
    };
    let loaded = started.elapsed();

    let detecting = Instant::now();
    // The corpus makes one detector per series as a worker takes it up: counted as the series start.
    let progress = crate::progress::Progress::new("nab: series", corpus.files.len());
    let scores = corpus.run(&|| {
        progress.inc("");
        make()
    });
    progress.finish();
    let detected = detecting.elapsed();
    for (file, s) in corpus.files.iter().zip(&scores) {
        if let Some((i, x)) = s.iter().enumerate().find(|(_, x)| !(0.0..=1.0).contains(*x)) {
            bail!("{}: row {i}: the detector scored {x}, outside [0, 1]", file.name);
        }
    }

    if let Some(dir) = &args.write_results {
        corpus
            .write_results(dir, &args.detector, &scores)
            .with_context(|| format!("writing results to {}", dir.display()))?;
    }

    let scoring = Instant::now();
    let report = Scorer::new(&corpus).score(&scores)?;
    let scored = scoring.elapsed();

    println!(
        "NAB v1.1{}: {} series, {} rows, {} windows; detector {}",
        args.part
            .as_ref()
            .map_or(String::new(), |p| format!(" ({p} part)")),
        corpus.files.len(),
        corpus.rows(),
        corpus.window_count(),
        args.detector
    );
    if args.files
        && let Some(p) = report.profiles.first()
    {
        for f in &p.files {
            println!(
                "  {:<62} {:8.3}  windows {}/{}  fp {:4}  lost: missed {:.3} late {:.3} false {:.3}",
                f.file,
                f.score,
                f.windows_hit,
                f.windows,
                f.fp,
                f.lost.missed,
                f.lost.late,
                f.lost.false_alarms
            );
        }
    }
    // The published scores are for the whole corpus only.
    let board = if args.split.is_some() {
        BTreeMap::new()
    } else {
        scoreboard(&args.data)
    };
    for p in &report.profiles {
        let best = board
            .iter()
            .filter_map(|(name, scores)| scores.get(&p.profile).map(|s| (name.as_str(), *s)))
            .filter(|(name, _)| *name != "null")
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let beside = best.map_or(String::new(), |(name, s)| {
            format!("   (best published: {name} {s:.1})")
        });
        let hit: usize = p.files.iter().map(|f| f.windows_hit).sum();
        let windows: usize = p.files.iter().map(|f| f.windows).sum();
        let false_alarms: usize = p.files.iter().map(|f| f.fp).sum();
        println!(
            "{:<20} {:6.2}   raw {:8.3}  threshold {:.6}  windows hit {hit}/{windows}, false-alarm rows \
             {false_alarms}{beside}",
            p.profile, p.normalised, p.raw, p.threshold
        );
        let lost = p.lost();
        println!(
            "{:<20} lost (raw) to missed windows {:.3}, late detections {:.3}, false alarms {:.3}",
            "", lost.missed, lost.late, lost.false_alarms
        );
    }
    println!(
        "time: load {:.2}s, detect {:.2}s ({:.1} µs/row), score {:.2}s",
        loaded.as_secs_f64(),
        detected.as_secs_f64(),
        detected.as_secs_f64() * 1e6 / corpus.rows().max(1) as f64,
        scored.as_secs_f64()
    );
    if args.json {
        println!("{}", report.to_json());
    }
    Ok(())
}

/// `results/final_results.json` of the NAB checkout, if there is one: detector → profile → score.
fn scoreboard(root: &std::path::Path) -> BTreeMap<String, BTreeMap<String, f64>> {
    std::fs::read_to_string(root.join("results/final_results.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}
