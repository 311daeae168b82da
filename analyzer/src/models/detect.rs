//! Streaming anomaly detectors: one `(timestamp, value)` in, one anomaly score in [0, 1] out.
//!
//! Every detector is online: the score of a row uses that row and the rows before it, nothing after
//! (not even the series' length or range, which NAB hands its detectors and we do not use).

use std::sync::Arc;

use super::ring::{FIXED_STEP, Ring, Values};

/// A streaming anomaly detector over one series.
pub trait AnomalyDetector: Send {
    /// Scores the next point (timestamps in Unix milliseconds, non-decreasing). Returns a score in
    /// [0, 1]: higher is more anomalous.
    fn score(&mut self, t_ms: i64, value: f64) -> f64;
}

/// Upper tail of the standard normal distribution, `P(Z > z)`.
pub fn normal_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Complementary error function, to ~1e-15 relative: a power series of `erf` with only positive terms
/// below 2.5, and the continued fraction of `erfc` above (Lentz's method).
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        // erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n 2^n x^(2n+1) / (1*3*...*(2n+1))
        let x2 = x * x;
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term > sum * 1e-17 {
            n += 1.0;
            term *= 2.0 * x2 / (2.0 * n + 1.0);
            sum += term;
        }
        return 1.0 - std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * sum;
    }
    if x > 27.3 {
        return 0.0;
    }
    // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
    let tiny = 1e-300;
    let mut f = x;
    let mut c = x;
    let mut d = 0.0;
    for k in 1..300 {
        let a = f64::from(k) / 2.0;
        d = x + a * d;
        d = if d.abs() < tiny { 1.0 / tiny } else { 1.0 / d };
        c = x + a / c;
        if c.abs() < tiny {
            c = tiny;
        }
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / (f * std::f64::consts::PI.sqrt())
}

/// NAB's "windowed Gaussian" baseline, re-implemented: the tail probability of each value under a normal
/// fitted to a sliding window of the previous 6400 values, refitted every 100. Kept as the reference that
/// shows our scorer and runner reproduce a published detector end to end (NAB standard score 39.6).
#[derive(Clone, Debug)]
pub struct WindowedGaussian {
    window: Vec<f64>,
    step: Vec<f64>,
    mean: f64,
    std: f64,
    /// Welford's sum of squared deviations while the window fills (NAB refits on every value then;
    /// refitting from scratch would make the fill quadratic).
    m2: f64,
}

impl WindowedGaussian {
    const WINDOW: usize = 6400;
    const STEP: usize = 100;

    pub fn new() -> Self {
        Self {
            window: Vec::new(),
            step: Vec::new(),
            mean: 0.0,
            std: 1.0,
            m2: 0.0,
        }
    }

    fn refit(&mut self) {
        let n = self.window.len() as f64;
        self.mean = pairwise_sum(&self.window) / n;
        let sq: Vec<f64> = self
            .window
            .iter()
            .map(|x| (x - self.mean) * (x - self.mean))
            .collect();
        self.std = (pairwise_sum(&sq) / n).sqrt();
        if self.std == 0.0 {
            self.std = 0.000_001;
        }
    }
}

impl Default for WindowedGaussian {
    fn default() -> Self {
        Self::new()
    }
}

impl AnomalyDetector for WindowedGaussian {
    fn score(&mut self, _t_ms: i64, value: f64) -> f64 {
        let score = if self.window.is_empty() {
            0.0
        } else {
            // Two-sided: a value below the mean is mirrored above it.
            let z = (value - self.mean).abs() / self.std;
            1.0 - normal_tail(z)
        };
        if self.window.len() < Self::WINDOW {
            self.window.push(value);
            let n = self.window.len() as f64;
            let mean = if n == 1.0 {
                value
            } else {
                self.mean + (value - self.mean) / n
            };
            self.m2 += (value - self.mean) * (value - mean);
            if n == 1.0 {
                self.m2 = 0.0;
            }
            self.mean = mean;
            self.std = (self.m2 / n).sqrt();
            if self.std == 0.0 {
                self.std = 0.000_001;
            }
        } else {
            self.step.push(value);
            if self.step.len() == Self::STEP {
                self.window.drain(..Self::STEP);
                self.window.append(&mut self.step);
                self.refit();
            }
        }
        score
    }
}

/// Sum in numpy's order (pairwise, blocks of 8 lanes below 128 values), so the reference detector's means
/// match NAB's to the last bit.
fn pairwise_sum(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 8 {
        return x.iter().fold(0.0, |a, b| a + b);
    }
    if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&x[..8]);
        let mut i = 8;
        while i + 8 <= n {
            for (k, lane) in r.iter_mut().enumerate() {
                *lane += x[i + k];
            }
            i += 8;
        }
        let mut sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &x[i..] {
            sum += v;
        }
        return sum;
    }
    let mut half = n / 2;
    half -= half % 8;
    pairwise_sum(&x[..half]) + pairwise_sum(&x[half..])
}

/// The global parameters of [`Tidewatch`]: the same for every series (NAB forbids per-file tuning). The
/// pattern-novelty defaults and the level and first-difference windows were tuned on the tuning half of
/// NAB (`bench/nab/split.tsv`); the others predate the split and were tuned on the whole corpus
/// (BENCHMARKS.md).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Rows in the robust level baseline (rolling median and MAD of the values).
    pub level_window: usize,
    /// Rows in the baselines of the first differences and of the seasonal differences.
    pub diff_window: usize,
    /// The seasonal baseline replaces the level one when its spread is below this share of the level's.
    pub season_gain: f64,
    /// Weight of the first-difference residual next to the level (or seasonal) residual.
    pub diff_weight: f64,
    /// EWMA factor of the mean absolute deviation that floors each MAD (a quantised or flat stretch
    /// would otherwise make any change infinitely surprising).
    pub scale_alpha: f64,
    /// Rows averaged in the likelihood's short window.
    pub short: usize,
    /// Rows of averaged residuals the likelihood's normal is fitted on.
    pub long: usize,
    /// Least standard deviation of the likelihood's normal.
    pub sigma_floor: f64,
    /// Rows during which a score that does not beat the recent maximum is damped.
    pub refractory: usize,
    /// Factor applied to such a score (0 silences repeats, 1 keeps them).
    pub damp: f64,
    /// How far (as a share) a score must beat the recent maximum to count as a new alarm.
    pub margin: f64,
    /// Rows in a row with an ordinary score (likelihood z under 1, nothing novel) that end an incident:
    /// the next rise is a new one, not damped against the last (0: repeats are damped for `refractory`
    /// rows whatever happens in between).
    pub quiet_reset: usize,
    /// Rows before the first non-zero score.
    pub warmup: usize,
    /// A value beyond the range seen so far by more than this share of the range is novel.
    pub novelty_tolerance: f64,
    /// Likelihood z given to a novel value, plus `novelty_slope` times its excess (in ranges).
    pub novelty_z: f64,
    pub novelty_slope: f64,
    /// Weight of the novelty of the change between rows next to that of the value.
    pub diff_novelty: f64,
    /// Weight of the novelty of a value against the range seen at the same time of day (24 hourly
    /// buckets), once each bucket has seen `phase_days` days: contextual anomalies (a daily peak that
    /// does not come, a flat stretch where the cycle should move) are new extremes of their hour.
    pub phase_novelty: f64,
    pub phase_days: f64,
    /// Rows after a value novel only for its time of day during which another such value is not ranked
    /// as novel: a day that runs out of its usual shape passes several hours' ranges, one after another,
    /// and that is one incident (as `novelty_refractory` is for a run of records).
    pub phase_refractory: usize,
    /// Share by which the remembered range shrinks toward the newest value per row.
    pub range_decay: f64,
    /// Rows after a novel value during which further novel values are not ranked as novel again.
    pub novelty_refractory: usize,
    /// Weight of the novelty of the mean of the latest `mean_rows` values (this one included) against
    /// the range such means have had: a shift that lasts, in a noisy series whose single values have
    /// all been seen before (a count that rises and stays up), sets a record of its mean. At most
    /// `level_window` rows (the values the detector keeps) and `MAX_MEAN_ROWS` (128).
    pub mean_novelty: f64,
    pub mean_rows: usize,
    /// Weight of the novelty of the median of the same latest `mean_rows` values against the range
    /// such medians have had: the typical value moves where spikes kept the mean's range wide (a
    /// spiky series whose quiet level shifts), and a lone spike does not move it.
    pub median_novelty: f64,
    /// Pattern novelty (contextOSE's idea, online): each value is quantised into 8 bins of the range
    /// seen so far; the last `pattern_len` bins, `pattern_stride` rows apart, form a word. A word never
    /// seen before, in a series that has produced no new word for `pattern_quiet` rows, and followed by
    /// new words up to `pattern_confirm` in all within one word's span (a changed shape draws several
    /// in a row; noise draws one), scores `pattern_z` (0 turns it off): a shape the series has not
    /// drawn before, such as a burst in a sparse series or a cycle that stops.
    pub pattern_len: usize,
    pub pattern_stride: usize,
    pub pattern_quiet: usize,
    pub pattern_z: f64,
    pub pattern_confirm: usize,
    /// Scale of the final squashing `z / (z + c)`: any value is equivalent for NAB (rank only).
    pub squash: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            level_window: 100,
            diff_window: 100,
            season_gain: 0.5,
            diff_weight: 0.5,
            scale_alpha: 0.01,
            short: 3,
            long: 5000,
            sigma_floor: 0.05,
            refractory: 100,
            damp: 0.5,
            margin: 0.0,
            quiet_reset: 5,
            warmup: 30,
            novelty_tolerance: 0.02,
            novelty_z: 9.0,
            novelty_slope: 1.0,
            diff_novelty: 0.0,
            phase_novelty: 0.3,
            phase_days: 5.0,
            phase_refractory: 75,
            range_decay: 0.0001,
            novelty_refractory: 20,
            mean_novelty: 0.2,
            mean_rows: 20,
            median_novelty: 0.3,
            pattern_len: 4,
            pattern_stride: 12,
            pattern_quiet: 500,
            pattern_z: 8.0,
            pattern_confirm: 3,
            squash: 5.0,
        }
    }
}

impl Params {
    /// Sets one parameter by name, e.g. `("short", "8")`: for tuning studies from the command line.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
            v.parse().map_err(|_| format!("{key}: bad value {v:?}"))
        }
        match key {
            "level_window" => self.level_window = num(key, value)?,
            "diff_window" => self.diff_window = num(key, value)?,
            "season_gain" => self.season_gain = num(key, value)?,
            "diff_weight" => self.diff_weight = num(key, value)?,
            "scale_alpha" => self.scale_alpha = num(key, value)?,
            "short" => self.short = num(key, value)?,
            "long" => self.long = num(key, value)?,
            "sigma_floor" => self.sigma_floor = num(key, value)?,
            "refractory" => self.refractory = num(key, value)?,
            "damp" => self.damp = num(key, value)?,
            "quiet_reset" => self.quiet_reset = num(key, value)?,
            "margin" => self.margin = num(key, value)?,
            "warmup" => self.warmup = num(key, value)?,
            "novelty_tolerance" => self.novelty_tolerance = num(key, value)?,
            "novelty_z" => self.novelty_z = num(key, value)?,
            "novelty_slope" => self.novelty_slope = num(key, value)?,
            "diff_novelty" => self.diff_novelty = num(key, value)?,
            "phase_novelty" => self.phase_novelty = num(key, value)?,
            "phase_days" => self.phase_days = num(key, value)?,
            "phase_refractory" => self.phase_refractory = num(key, value)?,
            "range_decay" => self.range_decay = num(key, value)?,
            "novelty_refractory" => self.novelty_refractory = num(key, value)?,
            "mean_novelty" => self.mean_novelty = num(key, value)?,
            "mean_rows" => self.mean_rows = num(key, value)?,
            "median_novelty" => self.median_novelty = num(key, value)?,
            "squash" => self.squash = num(key, value)?,
            "pattern_len" => self.pattern_len = num(key, value)?,
            "pattern_stride" => self.pattern_stride = num(key, value)?,
            "pattern_quiet" => self.pattern_quiet = num(key, value)?,
            "pattern_z" => self.pattern_z = num(key, value)?,
            "pattern_confirm" => self.pattern_confirm = num(key, value)?,
            _ => return Err(format!("unknown parameter {key:?}")),
        }
        if !(1..=4).contains(&self.pattern_len) || self.pattern_stride == 0 {
            return Err("pattern_len must be 1 to 4, pattern_stride at least 1".to_owned());
        }
        if self.level_window < 8 || self.diff_window < 8 || self.short == 0 || self.long < 2 {
            return Err("windows must be at least 8 rows (short: 1, long: 2)".to_owned());
        }
        if !(1..=self.level_window.min(MAX_MEAN_ROWS)).contains(&self.mean_rows) {
            return Err(format!(
                "mean_rows must be 1 to level_window, and at most {MAX_MEAN_ROWS}"
            ));
        }
        if !(self.squash > 0.0 && self.sigma_floor > 0.0 && (0.0..=1.0).contains(&self.damp)) {
            return Err("squash and sigma_floor must be positive, damp in [0, 1]".to_owned());
        }
        Ok(())
    }
}

/// Median and MAD over a sliding window of the latest items of a series the detector keeps in a
/// [`Ring`] (the values themselves, their differences, or the seasonal changes): the window holds no copy
/// of them, so the level and first-difference windows share one ring of values. The median is computed
/// when an item joins, the scale once per row; both are the same values a sorted copy would give. The
/// window's length and smoothing are the detector's [`Params`] and its floor the detector's resolution:
/// the caller passes them in, so no window keeps a copy.
#[derive(Clone, Debug)]
struct RollingRobust {
    /// Items in the window.
    len: usize,
    /// The window's median, since the latest item joined (none while the window is empty).
    median: f64,
    /// EWMA of |x - median|: floors the MAD.
    mean_abs_dev: f64,
    /// The scale of the current window once computed (a row asks for it several times); NaN until
    /// then, which a scale never is (its last floor in `robust_scale` is a number).
    cached_scale: f64,
}

impl RollingRobust {
    fn new() -> Self {
        Self {
            len: 0,
            median: 0.0,
            mean_abs_dev: 0.0,
            cached_scale: f64::NAN,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// `x` joins the window of the latest `cap` items, its deviation smoothed with factor `alpha`;
    /// `window` yields the series after it joined, newest first.
    fn push(&mut self, x: f64, window: impl Iterator<Item = f64>, cap: usize, alpha: f64) {
        self.cached_scale = f64::NAN;
        if let Some(m) = self.median() {
            let dev = (x - m).abs();
            self.mean_abs_dev += alpha * (dev - self.mean_abs_dev);
        }
        self.len = (self.len + 1).min(cap);
        let mut items: Vec<f64> = window.take(self.len).collect();
        // `window` holds `x` at least, so a non-empty window has a median.
        self.median = median(&mut items).unwrap_or(f64::NAN);
    }

    fn median(&self) -> Option<f64> {
        (self.len > 0).then_some(self.median)
    }

    /// Robust z-score of `x` against the window (`window`: the series, newest first):
    /// `(x - median) / scale`, where the scale is the normal-consistent MAD floored by the smoothed mean
    /// absolute deviation and by `floor`.
    fn z(&mut self, x: f64, window: impl Iterator<Item = f64>, floor: f64) -> Option<f64> {
        let m = self.median()?;
        Some((x - m) / self.robust_scale(m, window, floor))
    }

    /// The scale of the window around its median `m`, computed once per row.
    fn robust_scale(&mut self, m: f64, window: impl Iterator<Item = f64>, floor: f64) -> f64 {
        if !self.cached_scale.is_nan() {
            return self.cached_scale;
        }
        // The deviations live only for the call: a buffer kept per window would cost a third of the
        // detector's memory for every signal of every service.
        let mut deviations: Vec<f64> = window.take(self.len).map(|y| (y - m).abs()).collect();
        let mid = deviations.len() / 2;
        let (_, mad, _) = deviations.select_nth_unstable_by(mid, f64::total_cmp);
        let scale = (1.4826 * *mad)
            .max(self.mean_abs_dev)
            .max(floor)
            .max(1e-9 * m.abs().max(1e-3));
        self.cached_scale = scale;
        scale
    }

    fn scale(&mut self, window: impl Iterator<Item = f64>, floor: f64) -> Option<f64> {
        let m = self.median()?;
        let z = self.z(m + 1.0, window, floor)?;
        Some(1.0 / z)
    }
}

/// The median of `items` (reordered), as the middle of a sorted copy: for an even count the mean of the
/// two middle items.
fn median(items: &mut [f64]) -> Option<f64> {
    let n = items.len();
    if n == 0 {
        return None;
    }
    let (below, &mut mid, _) = items.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        return Some(mid);
    }
    let lower = below.iter().copied().max_by(f64::total_cmp)?;
    Some(0.5 * (lower + mid))
}

/// How far a value lies outside the range seen so far, in shares of that range (0 inside it): the
/// "spatial" anomaly Numenta's NAB detector adds to HTM. A new extreme is rare in a stable series and
/// stops being new once seen, so this signal silences itself. With a resolution `res` (see
/// [`Tidewatch::with_resolution`]) only the excess beyond `res` counts, in shares of `max(range, res)`.
/// The range is kept as two numbers, NaN before the first value (the detector only feeds it finite
/// ones): an `Option` would take 8 bytes more in each of a detector's ranges.
#[derive(Clone, Copy, Debug)]
struct RangeNovelty {
    lo: f64,
    hi: f64,
}

impl Default for RangeNovelty {
    fn default() -> Self {
        Self::new(None)
    }
}

impl RangeNovelty {
    fn new(range: Option<(f64, f64)>) -> Self {
        let (lo, hi) = range.unwrap_or((f64::NAN, f64::NAN));
        Self { lo, hi }
    }

    /// The range seen so far, once a value has been.
    fn range(&self) -> Option<(f64, f64)> {
        (!self.lo.is_nan()).then_some((self.lo, self.hi))
    }

    /// The novelty of `x`; then the range takes `x` in, each bound moving toward it by the share
    /// `decay` (`Params::range_decay`: old extremes fade).
    fn observe(&mut self, x: f64, decay: f64, res: f64) -> f64 {
        let Some((lo, hi)) = self.range() else {
            (self.lo, self.hi) = (x, x);
            return 0.0;
        };
        let (new_lo, new_hi) = (lo.min(x), hi.max(x));
        self.lo = new_lo + decay * (x - new_lo);
        self.hi = new_hi - decay * (new_hi - x);
        let span = (hi - lo).max(res);
        if span <= 0.0 {
            0.0
        } else {
            (((x - hi).max(lo - x) - res) / span).max(0.0)
        }
    }
}

/// Bits of the bin a value is quantised into for [`PatternNovelty`].
const PATTERN_BIN_BITS: usize = 3;
const PATTERN_BINS: usize = 1 << PATTERN_BIN_BITS;
/// Longest word of [`PatternNovelty`], in bins.
const PATTERN_MAX_LEN: usize = 4;
/// Every word fits a set of this many bits (4096).
const PATTERN_WORDS: usize = 1 << (PATTERN_BIN_BITS * PATTERN_MAX_LEN);
/// Most words [`Words`] lists before it turns into the set of every word: as many bytes as the set.
const LISTED_WORDS: usize = PATTERN_WORDS / 8 / size_of::<u16>();

/// The words a [`PatternNovelty`] has seen: a sorted list while that is smaller than a set of every
/// possible word (4096 bits, 512 bytes), then that set. Both give the same answers; a series that
/// draws few words (a steady one) never needs the set.
#[derive(Clone, Debug)]
enum Words {
    Listed(Vec<u16>),
    All(Box<[u64; PATTERN_WORDS / 64]>),
}

impl Default for Words {
    fn default() -> Self {
        Words::Listed(Vec::new())
    }
}

impl Words {
    /// Remembers `word`; whether it is new.
    fn insert(&mut self, word: u16) -> bool {
        fn add(set: &mut [u64; PATTERN_WORDS / 64], word: u16) -> bool {
            let (slot, bit) = (usize::from(word) / 64, 1u64 << (word % 64));
            let new = set[slot] & bit == 0;
            set[slot] |= bit;
            new
        }
        match self {
            Words::Listed(list) => match list.binary_search(&word) {
                Ok(_) => false,
                Err(at) if list.len() < LISTED_WORDS => {
                    list.insert(at, word);
                    true
                }
                Err(_) => {
                    let mut set = Box::new([0; PATTERN_WORDS / 64]);
                    for &w in list.iter() {
                        add(&mut set, w);
                    }
                    let new = add(&mut set, word);
                    *self = Words::All(set);
                    new
                }
            },
            Words::All(set) => add(set, word),
        }
    }

    /// Heap bytes held (the capacity, used or not).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        match self {
            Words::Listed(list) => list.capacity() * size_of::<u16>(),
            Words::All(set) => size_of_val(&**set),
        }
    }
}

/// New words of quantised values (see `Params::pattern_len`): the words seen, and the bins of the last
/// `len * stride` rows.
#[derive(Clone, Debug, Default)]
struct PatternNovelty {
    seen: Words,
    /// Oldest first, in room for a word's span exactly (a `Vec`, as `Tidewatch::recent`).
    bins: Vec<u8>,
    /// Rows since a word was last new (the count stops at `u32::MAX`, far past any `pattern_quiet`).
    since_new: u32,
    /// The new words of the current candidate and the rows since its first.
    candidate: Option<(u32, u32)>,
}

impl PatternNovelty {
    /// Whether the word ending at `x` (binned in `range`) completes `pattern_confirm` new words within
    /// one word's span, the first in a series whose words had been familiar for `pattern_quiet` rows;
    /// then the word is remembered.
    fn observe(&mut self, x: f64, range: Option<(f64, f64)>, p: &Params) -> bool {
        let (len, stride) = (p.pattern_len.clamp(1, PATTERN_MAX_LEN), p.pattern_stride.max(1));
        let bin = match range {
            Some((lo, hi)) if hi > lo => {
                let share = ((x - lo) / (hi - lo)).clamp(0.0, 1.0);
                ((share * PATTERN_BINS as f64) as usize).min(PATTERN_BINS - 1) as u8
            }
            _ => 0,
        };
        let span = (len - 1) * stride + 1;
        if self.bins.len() == span {
            self.bins.remove(0);
        }
        self.bins.reserve_exact(span - self.bins.len());
        self.bins.push(bin);
        if self.bins.len() < span {
            return false;
        }
        let word = (0..len).fold(0u16, |w, k| {
            (w << PATTERN_BIN_BITS) | u16::from(self.bins[k * stride])
        });
        let new = self.seen.insert(word);
        if new && self.since_new as usize >= p.pattern_quiet {
            self.candidate = Some((0, 0));
        }
        self.since_new = if new { 0 } else { self.since_new.saturating_add(1) };
        let Some((count, age)) = self.candidate.as_mut() else {
            return false;
        };
        *count += u32::from(new);
        *age = age.saturating_add(1);
        if *count as usize >= p.pattern_confirm.max(1) {
            self.candidate = None;
            true
        } else {
            if *age as usize > span {
                self.candidate = None;
            }
            false
        }
    }
}

/// The step between rows, from the first timestamps: the median of the first 16 gaps.
#[derive(Clone, Debug)]
enum StepEstimate {
    /// The gaps so far between increasing timestamps, then the latest timestamp.
    Learning(Vec<i64>),
    Known(i64),
}

impl StepEstimate {
    fn observe(&mut self, t_ms: i64) -> Option<i64> {
        if let StepEstimate::Learning(seen) = self {
            if let Some(last) = seen.pop()
                && t_ms > last
            {
                seen.push(t_ms - last);
            }
            seen.push(t_ms);
            if seen.len() > 16 {
                seen.pop();
                seen.sort_unstable();
                // The gaps are dropped: every detector of every signal would keep them.
                *self = StepEstimate::Known(seen[seen.len() / 2]);
            }
        }
        self.known()
    }

    fn known(&self) -> Option<i64> {
        match self {
            StepEstimate::Known(step) => Some(*step),
            StepEstimate::Learning(_) => None,
        }
    }
}

/// Step 3 of [`Tidewatch`]: the mean of the last `short` raw anomalies against a normal fitted to the
/// last `long` such means, as a z-score (0 until two means are in).
///
/// The fit needs only the sum and the sum of squares of those means, so they are kept as the sums of
/// blocks of consecutive means (at most [`LIKELIHOOD_BLOCKS`] blocks and one more, 272 bytes) instead
/// of one by one (40 KB at `long` = 5000): the window lets go of a whole block at a time, so once it is
/// full it holds between `long` less a block and `long` means. Until then the fit is exactly over every
/// mean.
#[derive(Clone, Debug)]
struct Likelihood {
    /// The last `short` raw anomalies, oldest first (a few: a `Vec`, as `Tidewatch::recent`).
    raw: Vec<f64>,
    raw_sum: f64,
    /// Sum and sum of squares of each full block in the fit, oldest first.
    blocks: Ring<(f64, f64)>,
    /// The block being filled: sum, sum of squares, means.
    open: (f64, f64, usize),
    /// The sum and sum of squares of the means in the fit (`means` counts them).
    means_sum: f64,
    means_sq: f64,
}

/// Most blocks [`Likelihood`] keeps its long window in: with 16, a long window of 5,000 means lets go
/// of 313 at a time (64 cost three times the memory and scored the same on the whole NAB corpus,
/// BENCHMARKS.md).
const LIKELIHOOD_BLOCKS: usize = 16;

/// Means per block of [`Likelihood`] for a long window of `long` means.
fn likelihood_block(long: usize) -> usize {
    long.div_ceil(LIKELIHOOD_BLOCKS).max(1)
}

impl Default for Likelihood {
    fn default() -> Self {
        Self {
            raw: Vec::new(),
            raw_sum: 0.0,
            blocks: Ring::new(),
            open: (0.0, 0.0, 0),
            means_sum: 0.0,
            means_sq: 0.0,
        }
    }
}

impl Likelihood {
    /// Means in the fit: the full blocks' and the open one's (a full block is let go of before the
    /// ring of blocks would drop one, see `observe`).
    fn means(&self, block: usize) -> usize {
        self.blocks.len() * block + self.open.2
    }

    /// The z-score of the raw anomaly `a`, with `p`'s `short`, `long` and `sigma_floor`.
    fn observe(&mut self, a: f64, p: &Params) -> f64 {
        self.raw.push(a);
        self.raw_sum += a;
        if self.raw.len() > p.short.max(1) {
            self.raw_sum -= self.raw.remove(0);
        }
        let mean = self.raw_sum / self.raw.len() as f64;
        let block = likelihood_block(p.long);
        let n = self.means(block) as f64;
        let z = if n >= 2.0 {
            let mu = self.means_sum / n;
            let var = (self.means_sq / n - mu * mu).max(0.0);
            (mean - mu) / var.sqrt().max(p.sigma_floor)
        } else {
            0.0
        };
        self.means_sum += mean;
        self.means_sq += mean * mean;
        self.open = (self.open.0 + mean, self.open.1 + mean * mean, self.open.2 + 1);
        if self.open.2 == block {
            // Room for `long` means and a block more: the ring never drops a block itself.
            self.blocks
                .push((self.open.0, self.open.1), p.long.div_ceil(block) + 1);
            self.open = (0.0, 0.0, 0);
        }
        // The block being filled is younger than `long` means, so a full one is there to let go of.
        if self.means(block) > p.long
            && let Some((sum, sq)) = self.blocks.pop_oldest()
        {
            self.means_sum -= sum;
            self.means_sq -= sq;
        }
        z
    }
}

/// Our streaming detector: robust residuals against a level or seasonal baseline, turned into a
/// likelihood the way Numenta post-processes HTM, with new extremes ranked first and repeats damped.
///
/// Per row, before the row joins the baselines:
/// 1. **Residuals.** `z_level`: the value against the rolling median/MAD of the last `level_window`
///    values. `z_season`: the change since one day earlier (when the rows are evenly spaced and a day is
///    a whole number of them) against the rolling median/MAD of such changes; it replaces `z_level` when
///    the daily pattern explains the series (its spread is under `season_gain` of the level's).
///    `z_diff`: the change since the previous row against the rolling median/MAD of changes (spikes,
///    bursts of noise). Each MAD is floored by an EWMA of the absolute deviation.
/// 2. **Raw anomaly** `a = ln(1 + max(|z_base|, diff_weight * |z_diff|))` (log: heavy tails compressed
///    so the next stage's normal fits).
/// 3. **Likelihood.** The mean of `a` over the last `short` rows is compared with a normal fitted to
///    the last `long` such means: `z = (mean - mu) / max(sigma, sigma_floor)`. A series that is always
///    noisy learns that it is, so one threshold serves every series.
/// 4. **Novelty.** A value (or, weighted by `diff_novelty`, a change between rows; or, weighted by
///    `mean_novelty` and `median_novelty`, the mean and the median of the latest `mean_rows` values; or,
///    weighted by `phase_novelty` and only while the daily baseline explains the series, a value against
///    the range seen at the same hour of the day, the first of a run within `phase_refractory` rows)
///    beyond the range seen so far by more than `novelty_tolerance` of that range scores `novelty_z` plus
///    its excess: above any residual. On NAB this is the most precise signal by far (new extremes are
///    rare, and stop being new once seen), so it is ranked first and residual alarms fill in below it.
///    Below it, at `pattern_z`: new words of quantised values (`PatternNovelty`, 3 within a word's
///    span) in a series whose words have long been familiar, i.e. a shape it has not drawn before (a
///    burst in a sparse series, a cycle that stops).
/// 5. **Repeats.** A score that does not beat the highest of the previous `refractory` rows is damped
///    (NAB, like an on-call engineer, wants one early alarm per incident, not a stream of them), unless
///    `quiet_reset` ordinary rows in a row came between: then the incident is over, and the next rise
///    is a new one (a regression an hour after a recovered spike must page again).
/// 6. `z / (z + squash)`, so scores stay in [0, 1) without ties at the top.
#[derive(Clone, Debug)]
pub struct Tidewatch {
    /// Shared by the detectors made with the same parameters (the health monitor's four per service);
    /// the parts below read theirs from here rather than keep copies.
    p: Arc<Params>,
    /// Changes smaller than this do not matter (0: any does), see [`Tidewatch::with_resolution`]: it
    /// floors every robust scale and every novelty's excess, and sets the quantum values are rounded to.
    res: f64,
    rows: usize,
    step: StepEstimate,
    /// The latest values, as many as the level window, the first-difference window and the seasonal
    /// change (a period back) need: all of them read this one ring.
    values: Values,
    level: RollingRobust,
    diffs: RollingRobust,
    /// The seasonal baseline and time-of-day ranges, once the rows turn out to have a daily period.
    daily: Option<Box<Daily>>,
    /// How many of the latest values the first difference and the seasonal change may read: the last
    /// one until the period is known, then up to a period of them (at most `MAX_PERIOD`), counted from
    /// then.
    reach: u32,
    likelihood: Likelihood,
    /// The rows of the last `refractory` with a score above every later one's, and their scores,
    /// oldest first (a short list: a `Vec` rather than a `VecDeque`, whose 8 more bytes would be kept by
    /// every detector).
    recent: Vec<(usize, f64)>,
    /// Range of the values seen so far, of the changes between rows, and of the means and medians of
    /// the latest `mean_rows` values.
    value_range: RangeNovelty,
    diff_range: RangeNovelty,
    mean_range: RangeNovelty,
    median_range: RangeNovelty,
    /// Row of the latest novel value; 0 for none (rows count from 1).
    last_novel: usize,
    /// Rows in a row with an ordinary score (`Params::quiet_reset`; the count stops at `u32::MAX`).
    quiet: u32,
    pattern: PatternNovelty,
    /// The value of the level baseline (rolling median) before the latest row joined it; NaN while
    /// there was none (a median of finite values never is NaN).
    last_level: f64,
}

/// What a [`Tidewatch`] keeps once its rows turn out to have a daily period (a day is a whole number of
/// rows, up to [`MAX_PERIOD`]). Boxed: a series without one, such as the server's 10 s windows (8,640 a
/// day), pays a pointer for it.
#[derive(Clone, Debug)]
struct Daily {
    /// Rows in a day.
    period: usize,
    /// The latest seasonal changes, the seasonal window's items.
    changes: Values,
    seasonal: RollingRobust,
    /// Range of the values seen in each hour of the day (fading as `value_range`'s does), with the rows
    /// seen there; allocated at the first row that reads them (`Params::phase_novelty`).
    /// A bucket's range is only read once it has seen a row (`seen` > 0).
    phase_ranges: Vec<((f64, f64), u32)>,
    /// Row of the latest value novel only for its time of day (`Params::phase_refractory`); 0 for none.
    last_novel: usize,
}

impl Daily {
    fn new(period: usize) -> Daily {
        Daily {
            period,
            changes: Values::default(),
            seasonal: RollingRobust::new(),
            phase_ranges: Vec::new(),
            last_novel: 0,
        }
    }

    /// Whether the daily baseline explains the series: the seasonal changes' spread is under
    /// `season_gain` of the level window's (`level` over `values`, floored by `res`).
    fn explains(&mut self, level: &mut RollingRobust, values: &Values, season_gain: f64, res: f64) -> bool {
        matches!(
            (self.seasonal.scale(self.changes.newest(), res), level.scale(values.newest(), res)),
            (Some(ss), Some(ls)) if ss < season_gain * ls
        )
    }
}

/// Whether a novel value at `row` starts a run: no novel value came in the `refractory` rows before it
/// (`last`, the row of the latest one, 0 for none). `last` moves to `row` either way, so a run lasts
/// while novel values keep coming.
fn first_of_run(last: &mut usize, row: usize, refractory: usize) -> bool {
    let first = *last == 0 || *last + refractory < row;
    *last = row;
    first
}

/// Longest daily period (in rows) tracked: one-minute data.
const MAX_PERIOD: usize = 1440;

/// Most rows `Params::mean_rows` may take: the mean and the median read them from a buffer on the stack.
const MAX_MEAN_ROWS: usize = 128;

const DAY_MS: i64 = 86_400_000;
/// Buckets of the day for the time-of-day range (`Params::phase_novelty`).
const PHASES: usize = 24;

/// The quantum values are rounded to at resolution `res` (see [`Tidewatch::with_resolution`]): the
/// largest power of two at most `res / 1024` ([`FIXED_STEP`] of it), or 0 for none.
fn quantum(res: f64) -> f64 {
    let q = (res * FIXED_STEP).log2().floor().exp2();
    if q.is_normal() { q } else { 0.0 }
}

impl Tidewatch {
    /// The detector `tidewatch nab` scores: no resolution, since NAB's series come without units.
    pub fn new(p: impl Into<Arc<Params>>) -> Self {
        Self::with_resolution(p, 0.0)
    }

    /// The detector for a series whose changes smaller than `res` (in the series' own units) do not
    /// matter: every robust scale is at least `res`, and a new extreme counts as novel only by how far
    /// it passes the range plus `res`. The health monitor feeds RED signals in units of a noticeable
    /// change with `res` = 1 (`health::Signal`); `res` = 0 is exactly [`Tidewatch::new`].
    ///
    /// With a resolution, values are rounded to the largest power of two at most `res / 1024` (a change
    /// a thousand times too small to matter): such values are exact in single precision, and those of a
    /// resolution of 1 or more from 0 to 64 are whole counts of 2^-10, so the windows hold them in half
    /// or a quarter of the memory ([`Values`]).
    pub fn with_resolution(p: impl Into<Arc<Params>>, res: f64) -> Self {
        let p = p.into();
        Self {
            res: if res.is_finite() { res.max(0.0) } else { 0.0 },
            rows: 0,
            step: StepEstimate::Learning(Vec::new()),
            values: Values::default(),
            level: RollingRobust::new(),
            diffs: RollingRobust::new(),
            daily: None,
            reach: 0,
            likelihood: Likelihood::default(),
            recent: Vec::new(),
            value_range: RangeNovelty::default(),
            diff_range: RangeNovelty::default(),
            mean_range: RangeNovelty::default(),
            median_range: RangeNovelty::default(),
            last_novel: 0,
            quiet: 0,
            pattern: PatternNovelty::default(),
            last_level: f64::NAN,
            p,
        }
    }

    /// Rows scored so far, and the rows before the first non-zero score (`Params::warmup`).
    pub fn warmup(&self) -> (usize, usize) {
        (self.rows, self.p.warmup)
    }

    /// Bytes the detector holds: its own size and its heap (capacities, used or not).
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> usize {
        let daily = self.daily.as_deref().map_or(0, |daily| {
            size_of::<Daily>()
                + daily.changes.heap_bytes()
                + daily.phase_ranges.capacity() * size_of::<((f64, f64), u32)>()
        });
        let gaps = match &self.step {
            StepEstimate::Learning(seen) => seen.capacity() * size_of::<i64>(),
            _ => 0,
        };
        size_of::<Tidewatch>()
            + self.values.heap_bytes()
            + self.likelihood.raw.capacity() * size_of::<f64>()
            + self.likelihood.blocks.heap_bytes()
            + self.recent.capacity() * size_of::<(usize, f64)>()
            + self.pattern.seen.heap_bytes()
            + self.pattern.bins.capacity()
            + daily
            + gaps
    }

    /// The level baseline (rolling median) the latest row was compared with: tells a rise from a fall.
    pub fn last_level(&self) -> Option<f64> {
        (!self.last_level.is_nan()).then_some(self.last_level)
    }

    /// Step 1 and 2: the raw anomaly of `value`, before it joins the baselines.
    fn raw_anomaly(&mut self, value: f64) -> f64 {
        const MIN_ROWS: usize = 8;
        let (p, res) = (&*self.p, self.res);
        let z_level = if self.level.len() >= MIN_ROWS {
            self.level.z(value, self.values.newest(), res).unwrap_or(0.0)
        } else {
            0.0
        };
        let mut z_base = z_level.abs();
        let back = self.daily.as_ref().and_then(|d| self.back(d.period));
        if let (Some(d), Some(back)) = (self.daily.as_deref_mut(), back)
            && d.seasonal.len() >= MIN_ROWS
        {
            let z_season = d.seasonal.z(value - back, d.changes.newest(), res).unwrap_or(0.0);
            if d.explains(&mut self.level, &self.values, p.season_gain, res) {
                z_base = z_season.abs();
            }
        }
        let z_diff = match self.back(1) {
            Some(last) if self.diffs.len() >= MIN_ROWS => self
                .diffs
                .z(value - last, self.values.newest_differences(), res)
                .unwrap_or(0.0),
            _ => 0.0,
        };
        z_base.max(p.diff_weight * z_diff.abs()).ln_1p()
    }

    /// Novelty of the value and of the change since the previous row (see `RangeNovelty`), and whether
    /// the value completes a new pattern (`Params::pattern_z`).
    fn novelty(&mut self, t_ms: i64, value: f64) -> (f64, bool) {
        let (p, res) = (&*self.p, self.res);
        let warm = self.rows > p.warmup;
        let new_pattern = p.pattern_z > 0.0 && self.pattern.observe(value, self.value_range.range(), p);
        let mut v = self.value_range.observe(value, p.range_decay, res);
        // The time-of-day ranges count only while the daily baseline explains the series, so a series
        // with no daily period (a day is not a whole number of rows up to `MAX_PERIOD`, as with the
        // server's 10 s windows, 8,640 a day) keeps none.
        if p.phase_novelty > 0.0
            && let Some(daily) = self.daily.as_deref_mut()
            && let Some(step) = self.step.known().filter(|s| *s > 0 && *s < DAY_MS)
        {
            let bucket = usize::try_from(t_ms.rem_euclid(DAY_MS) / (DAY_MS / PHASES as i64))
                .unwrap_or(0)
                .min(PHASES - 1);
            let per_day = (DAY_MS / PHASES as i64) as f64 / step as f64;
            if daily.phase_ranges.is_empty() {
                daily.phase_ranges = vec![((0.0, 0.0), 0); PHASES];
            }
            let (stored, seen) = &mut daily.phase_ranges[bucket];
            // The hour's range fades and counts novelty as the whole series' range does.
            let mut range = RangeNovelty::new((*seen > 0).then_some(*stored));
            let novelty = range.observe(value, p.range_decay, res);
            if let Some(r) = range.range() {
                *stored = r;
            }
            *seen = seen.saturating_add(1);
            let seen = *seen;
            let phase = p.phase_novelty * novelty;
            if phase > v.max(p.novelty_tolerance)
                && daily.explains(&mut self.level, &self.values, p.season_gain, res)
                && seen as f64 > p.phase_days * per_day
            {
                // Novel only for its hour: the first of a run counts.
                if first_of_run(&mut daily.last_novel, self.rows, p.phase_refractory) {
                    v = phase;
                }
            }
        }
        // The mean and the median of the latest `mean_rows` values, once there are as many (the
        // ring's newest value is the previous row's: this one joins it after).
        if (p.mean_novelty > 0.0 || p.median_novelty > 0.0) && p.mean_rows > 0 {
            let mut latest = [0.0; MAX_MEAN_ROWS];
            let mut n = 0;
            let newest = std::iter::once(value).chain(self.values.newest());
            for (slot, x) in latest.iter_mut().zip(newest).take(p.mean_rows) {
                *slot = x;
                n += 1;
            }
            if n == p.mean_rows {
                let latest = &mut latest[..n];
                let mean = latest.iter().sum::<f64>() / n as f64;
                if p.mean_novelty > 0.0 && mean.is_finite() {
                    v = v.max(p.mean_novelty * self.mean_range.observe(mean, p.range_decay, res));
                }
                if p.median_novelty > 0.0
                    && let Some(median) = median(latest)
                {
                    v = v.max(p.median_novelty * self.median_range.observe(median, p.range_decay, res));
                }
            }
        }
        // The ring's newest value is the previous row's: this one joins it after.
        let change = match self.values.newest().next() {
            Some(last) => self.diff_range.observe(value - last, p.range_decay, res),
            None => 0.0,
        };
        let novelty = if warm { v.max(p.diff_novelty * change) } else { 0.0 };
        (novelty, new_pattern)
    }

    /// `value` to the nearest multiple of the quantum, if it has one and the multiple is finite.
    fn rounded(&self, value: f64) -> f64 {
        let quantum = quantum(self.res);
        if quantum == 0.0 {
            return value;
        }
        let r = (value / quantum).round() * quantum;
        if r.is_finite() { r } else { value }
    }

    /// Values the ring keeps: as many as the level window, the first-difference window and, once the
    /// period is known, the seasonal change (a period back) read.
    fn values_cap(&self) -> usize {
        let period = self.daily.as_ref().map_or(0, |d| d.period);
        self.p.level_window.max(self.p.diff_window + 1).max(period)
    }

    /// The value `rows` rows before the one being scored, if within reach.
    fn back(&self, rows: usize) -> Option<f64> {
        (rows <= self.reach as usize).then(|| self.values.newest().nth(rows - 1))?
    }

    /// The row joins the baselines.
    fn learn(&mut self, value: f64) {
        let p = &*self.p;
        let last = self.back(1);
        let season = self.daily.as_ref().and_then(|d| self.back(d.period));
        self.values.push(value, self.values_cap());
        if let Some(last) = last {
            self.diffs.push(
                value - last,
                self.values.newest_differences(),
                p.diff_window,
                p.scale_alpha,
            );
        }
        if let (Some(d), Some(back)) = (self.daily.as_deref_mut(), season) {
            let change = value - back;
            d.changes.push(change, p.diff_window);
            d.seasonal
                .push(change, d.changes.newest(), p.diff_window, p.scale_alpha);
        }
        self.level
            .push(value, self.values.newest(), p.level_window, p.scale_alpha);
        let period = self.daily.as_ref().map_or(1, |d| d.period);
        self.reach = (self.reach + 1).min(period.max(1) as u32);
    }
}

impl AnomalyDetector for Tidewatch {
    fn score(&mut self, t_ms: i64, value: f64) -> f64 {
        self.rows += 1;
        if self.daily.is_none()
            && let Some(step) = self.step.observe(t_ms)
            && step > 0
            && DAY_MS % step == 0
        {
            let period = usize::try_from(DAY_MS / step).unwrap_or(usize::MAX);
            if (8..=MAX_PERIOD).contains(&period) {
                // From now on the ring of values keeps a period of them: the seasonal change reads the
                // value a period back.
                self.daily = Some(Box::new(Daily::new(period)));
            }
        }
        if !value.is_finite() {
            return 0.0;
        }
        let value = self.rounded(value);
        self.last_level = self.level.median().unwrap_or(f64::NAN);
        let a = self.raw_anomaly(value);
        let (novelty, new_pattern) = self.novelty(t_ms, value);
        self.learn(value);

        // Step 3: likelihood of the short mean under the long-run normal.
        let p = &*self.p;
        let z = self.likelihood.observe(a, p);
        if self.rows <= p.warmup {
            return 0.0;
        }

        // An ordinary stretch of `quiet_reset` rows just ended the last incident: whatever rises now is
        // a new one, not a repeat to damp. (A run of records still spans `novelty_refractory` rows:
        // ending it at a quiet stretch too cost 4 points on the held-out half of NAB.)
        if p.quiet_reset > 0 && self.quiet as usize >= p.quiet_reset {
            self.recent.clear();
            // Nor is the room a long incident took kept for the next one.
            self.recent.shrink_to(4);
        }
        let mut z = z.max(0.0);
        if novelty > p.novelty_tolerance && p.novelty_z > 0.0 {
            // A run of records is one incident: only its first is ranked as novel.
            if first_of_run(&mut self.last_novel, self.rows, p.novelty_refractory) {
                z = z.max(p.novelty_z + p.novelty_slope * novelty);
            }
        }
        if new_pattern {
            z = z.max(p.pattern_z);
        }
        self.quiet = if z < 1.0 { self.quiet.saturating_add(1) } else { 0 };

        // Step 4: damp repeats.
        let expired = self
            .recent
            .iter()
            .take_while(|&&(row, _)| row + p.refractory < self.rows)
            .count();
        self.recent.drain(..expired);
        let recent_max = self.recent.iter().map(|&(_, s)| s).fold(0.0, f64::max);
        while self.recent.last().is_some_and(|&(_, s)| s <= z) {
            self.recent.pop();
        }
        self.recent.push((self.rows, z));
        let z = if z > recent_max * (1.0 + p.margin) {
            z
        } else {
            z * p.damp
        };

        // Step 5.
        let s = z / (z + p.squash);
        if s.is_finite() { s.clamp(0.0, 1.0) } else { 0.0 }
    }
}

/// The detectors `tidewatch nab --detector` knows.
pub const DETECTORS: [&str; 2] = ["tidewatch", "windowed-gaussian"];

/// What makes a fresh detector for each series.
pub type Factory = Box<dyn Fn() -> Box<dyn AnomalyDetector> + Sync>;

/// The factory of a detector named in `DETECTORS`, with `params` for ours.
pub fn factory(name: &str, params: &Params) -> Option<Factory> {
    let params = params.clone();
    match name {
        "tidewatch" => Some(Box::new(move || Box::new(Tidewatch::new(params.clone())))),
        "windowed-gaussian" | "windowedGaussian" => Some(Box::new(|| Box::new(WindowedGaussian::new()))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        let cases = [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (2.5, 0.000_406_952_017_444_959_3),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_034_8e-12),
            (10.0, 2.088_487_583_762_545e-45),
        ];
        for (x, want) in cases {
            let got = erfc(x);
            assert!(
                ((got - want) / want).abs() < 1e-13,
                "erfc({x}) = {got}, want {want}"
            );
        }
        assert!((erfc(-1.0) - (2.0 - 0.157_299_207_050_285_13)).abs() < 1e-15);
    }

    #[test]
    fn pairwise_sum_adds_up() {
        let x: Vec<f64> = (0..1000).map(f64::from).collect();
        assert_eq!(pairwise_sum(&x), 499_500.0);
        assert_eq!(pairwise_sum(&x[..5]), 10.0);
    }

    #[test]
    fn windowed_gaussian_flags_a_jump() {
        let mut d = WindowedGaussian::new();
        let mut last = 0.0;
        for i in 0..500 {
            last = d.score(i, 10.0 + f64::from((i % 7) as i32));
        }
        assert!(last < 0.99);
        assert!(d.score(500, 1000.0) > 0.999);
    }

    #[test]
    fn tidewatch_never_looks_ahead() {
        // Same first 600 rows, different futures: the first 600 scores must not differ.
        let base: Vec<f64> = (0..600)
            .map(|i| 50.0 + 10.0 * (f64::from(i) / 20.0).sin())
            .collect();
        let run = |tail: f64| {
            let mut d = Tidewatch::new(Params::default());
            let mut out = Vec::new();
            for (i, v) in base.iter().copied().chain((0..300).map(|_| tail)).enumerate() {
                out.push(d.score(i as i64 * 300_000, v));
            }
            out
        };
        let (a, b) = (run(50.0), run(5000.0));
        assert_eq!(a[..600], b[..600]);
        assert!(a.iter().chain(&b).all(|s| (0.0..=1.0).contains(s)));
        // The jump to 5000 is a new extreme: it outranks everything before it.
        let before = b[..600].iter().copied().fold(0.0, f64::max);
        assert!(b[600] > before, "{} vs {before}", b[600]);
    }

    #[test]
    fn a_new_incident_after_a_quiet_stretch_is_not_damped_as_a_repeat() {
        // Noise around 50; an incident at 200 for 3 rows; quiet; a second, smaller one 40 rows later
        // (well within `refractory`). A repeat in the middle of the first incident stays damped.
        let series = |gap: usize| -> Vec<f64> {
            let mut v: Vec<f64> = (0..400).map(|i: i32| 50.0 + f64::from(i * 7 % 11)).collect();
            v.extend([200.0, 200.0, 200.0]);
            v.extend((0..gap).map(|i| 50.0 + f64::from((i * 7 % 11) as u8)));
            v.extend([150.0; 3]);
            v
        };
        let scores = |p: Params, v: &[f64]| -> Vec<f64> {
            let mut d = Tidewatch::new(p);
            v.iter()
                .enumerate()
                .map(|(i, &x)| d.score(i as i64 * 60_000, x))
                .collect()
        };
        let never = Params {
            quiet_reset: 0,
            ..Params::default()
        };
        let v = series(40);
        let (with, without) = (scores(Params::default(), &v), scores(never.clone(), &v));
        let second = 403 + 40;
        let (a, b) = (
            with[second..].iter().copied().fold(0.0, f64::max),
            without[second..].iter().copied().fold(0.0, f64::max),
        );
        assert!(a > b + 0.05, "after a quiet stretch {a:.3}, damped {b:.3}");
        // No quiet stretch in between (2 rows): the second rise is part of the first incident.
        let v = series(2);
        let (with, without) = (scores(Params::default(), &v), scores(never, &v));
        assert_eq!(with[405..], without[405..]);
    }

    #[test]
    fn a_cycle_that_stops_draws_a_new_pattern() {
        // A daily sine (288 rows a day) draws every word it will ever draw in its first day; 10 days
        // later a flat stretch in the middle of its range is a shape it has never drawn: the words
        // sliding into it are new one after another, and the third alarms.
        let params = Params {
            pattern_len: 4,
            pattern_stride: 12,
            pattern_quiet: 500,
            pattern_confirm: 3,
            ..Params::default()
        };
        let mut p = PatternNovelty::default();
        let range = Some((-1.0, 1.0));
        let sine = |i: usize| (i as f64 * std::f64::consts::TAU / 288.0).sin();
        let novel: Vec<usize> = (0..2880)
            .filter(|&i| p.observe(sine(i), range, &params))
            .collect();
        assert!(
            novel.is_empty(),
            "a familiar cycle drew new patterns at {novel:?}"
        );
        let flat: Vec<usize> = (0..60).filter(|_| p.observe(0.01, range, &params)).collect();
        assert_eq!(flat.len(), 1, "one alarm for the flat stretch: {flat:?}");
        // A series that keeps drawing new words (noise) never gets there.
        let mut noisy = PatternNovelty::default();
        let mut x = 1u64;
        let hits = (0..3000)
            .filter(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                noisy.observe((x >> 11) as f64 / (1u64 << 53) as f64, Some((0.0, 1.0)), &params)
            })
            .count();
        assert_eq!(hits, 0);
    }

    /// The rows of `rows` (row, time, value) whose novelty passes the tolerance, fed to `d` row by row
    /// as `score` takes them (the novelty before the row is learnt).
    fn novel_rows(d: &mut Tidewatch, rows: impl IntoIterator<Item = (usize, i64, f64)>) -> Vec<usize> {
        rows.into_iter()
            .filter(|&(_, t_ms, value)| {
                d.rows += 1;
                let (novelty, _) = d.novelty(t_ms, value);
                d.learn(value);
                novelty > d.p.novelty_tolerance
            })
            .map(|(row, _, _)| row)
            .collect()
    }

    #[test]
    fn a_day_out_of_shape_is_one_time_of_day_novelty() {
        // Hourly rows on a daily cycle between 0 and 10 for ten days; then a flat day at 5, inside the
        // series' range but outside most hours' ranges. Each hour it passes is new for that hour; with
        // the refractory period only the first of the run ranks as novel.
        // The noise gives each hour a spread of five values, all seen in the first five days.
        let cycle =
            |i: usize| 5.0 + 5.0 * (i as f64 * std::f64::consts::TAU / 24.0).sin() + 0.1 * (i * 7 % 5) as f64;
        let flat_day_novelties = |phase_refractory: usize| -> Vec<usize> {
            // The flat day's mean is new too; that novelty is not this test's.
            let mut d = Tidewatch::new(Params {
                phase_refractory,
                mean_novelty: 0.0,
                ..Params::default()
            });
            let hour = 3_600_000;
            for i in 0..240 {
                d.score(i as i64 * hour, cycle(i));
            }
            novel_rows(&mut d, (240..264).map(|i| (i, i as i64 * hour, 5.0)))
        };
        let every = flat_day_novelties(0);
        assert!(
            every.len() > 4,
            "the flat day passes many hours' ranges: {every:?}"
        );
        assert_eq!(flat_day_novelties(75), every[..1], "one incident, one novelty");
    }

    /// The rows among `shifted` (row, value; one a minute, after `before`'s 500) whose novelty passes
    /// the tolerance, for a detector with these weights of the mean and median novelties.
    fn level_novelties(
        mean_novelty: f64,
        median_novelty: f64,
        before: impl Fn(usize) -> f64,
        shifted: impl Iterator<Item = (usize, f64)>,
    ) -> Vec<usize> {
        let mut d = Tidewatch::new(Params {
            mean_novelty,
            median_novelty,
            ..Params::default()
        });
        let minute = 60_000;
        for i in 0..500 {
            d.score(i as i64 * minute, before(i));
        }
        novel_rows(&mut d, shifted.map(|(i, v)| (i, i as i64 * minute, v)))
    }

    #[test]
    fn a_shift_inside_the_range_is_a_new_mean() {
        // Noise from 0 to 10 for 500 rows, then noise from 5 to 10: no value is new, but the mean of
        // the latest `mean_rows` values rises above any it had (about 5) within those rows.
        let noise = |i: usize| (i * 10 % 11) as f64;
        let shifted = || (500..560).map(|i| (i, 5.0 + noise(i) / 2.0));
        assert_eq!(
            level_novelties(0.0, 0.0, noise, shifted()),
            Vec::<usize>::new(),
            "no value is new"
        );
        let p = Params::default();
        let novel = level_novelties(p.mean_novelty, 0.0, noise, shifted());
        assert!(
            novel.first().is_some_and(|&row| row < 500 + p.mean_rows),
            "the mean is new: {novel:?}"
        );
    }

    #[test]
    fn a_quiet_level_that_shifts_under_spikes_is_a_new_median() {
        // A quiet level near 0 with spikes: one row in five at 12.5 for 250 rows, then two in five at
        // 18.75, so the mean of 20 rows has been 2.5 and 7.5 while their median stayed near 0. Then
        // the level itself moves to 4-6 without spikes: no value and no mean is new, the median is.
        let quiet = |i: usize| 0.1 * (i * 7 % 5) as f64;
        let before = |i: usize| match (i < 250, i % 5) {
            (true, 0) => 12.5,
            (false, 0 | 1) => 18.75,
            _ => quiet(i),
        };
        let shifted = || (500..560).map(|i| (i, 4.0 + (i % 3) as f64));
        let p = Params::default();
        assert_eq!(
            level_novelties(p.mean_novelty, 0.0, before, shifted()),
            Vec::<usize>::new(),
            "no value or mean is new"
        );
        let novel = level_novelties(p.mean_novelty, p.median_novelty, before, shifted());
        assert!(
            novel.first().is_some_and(|&row| row < 500 + p.mean_rows),
            "the median is new: {novel:?}"
        );
    }

    /// The list of words answers as the set of every word does, and never takes more room than it.
    #[test]
    fn listed_words_answer_as_the_set_does() {
        let mut words = Words::default();
        let mut seen = vec![false; PATTERN_WORDS];
        let mut x = 5u64;
        for i in 0..4000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // A few dozen words at first, as most series draw; then hundreds more.
            let range = if i < 1000 { 40 } else { 600 };
            let word = ((x >> 33) % range) as u16;
            let new = !std::mem::replace(&mut seen[usize::from(word)], true);
            assert_eq!(words.insert(word), new, "word {word} at {i}");
            assert!(words.heap_bytes() <= PATTERN_WORDS / 8);
            if i == 999 {
                assert!(matches!(words, Words::Listed(_)) && words.heap_bytes() <= 128);
            }
        }
        assert!(matches!(words, Words::All(_)));
    }

    /// The median and scale of a window read from a shared ring are those of a sorted copy of the
    /// window's own items (the detector kept one per window before the windows shared their values).
    #[test]
    fn windows_over_a_shared_ring_match_sorted_copies() {
        let reference = |items: &[f64], m: f64| {
            let mut sorted = items.to_vec();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len();
            let median = if n % 2 == 1 {
                sorted[n / 2]
            } else {
                0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
            };
            let mut dev: Vec<f64> = sorted.iter().map(|y| (y - m).abs()).collect();
            dev.sort_by(f64::total_cmp);
            (median, dev[n / 2])
        };
        let (cap, mut x) = (40, 7u64);
        let mut values = Values::default();
        let mut level = RollingRobust::new();
        let mut diffs = RollingRobust::new();
        let (mut all, mut all_diffs) = (Vec::new(), Vec::new());
        for i in 0..500 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // Ties and both signs of zero, which a total order sorts apart.
            let v = match i % 7 {
                0 => 0.0,
                1 => -0.0,
                _ => ((x >> 40) % 50) as f64 - 20.0,
            };
            values.push(v, cap + 1);
            if let Some(&last) = all.last() {
                all_diffs.push(v - last);
                diffs.push(v - last, values.newest_differences(), cap, 0.01);
            }
            all.push(v);
            level.push(v, values.newest(), cap, 0.01);
            for (w, items, differences) in [(&mut level, &all, false), (&mut diffs, &all_diffs, true)] {
                let window = &items[items.len().saturating_sub(cap)..];
                assert_eq!(w.len(), window.len());
                let Some(m) = w.median() else { continue };
                let (median, mad) = reference(window, m);
                assert_eq!(m.to_bits(), median.to_bits(), "median at row {i}");
                let want = (1.4826 * mad).max(w.mean_abs_dev).max(1e-9 * m.abs().max(1e-3));
                let got = if differences {
                    w.robust_scale(m, values.newest_differences(), 0.0)
                } else {
                    w.robust_scale(m, values.newest(), 0.0)
                };
                assert_eq!(got.to_bits(), want.to_bits(), "scale at row {i}");
            }
        }
    }

    /// What one signal of one service costs once every window is full: the server's 10 s windows for
    /// a day (the likelihood's 5000 means fill in 14 hours).
    #[test]
    fn a_detector_in_steady_state_stays_small() {
        let mut d = Tidewatch::with_resolution(Params::default(), 1.0);
        let mut x = 3u64;
        for i in 0..8640 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let v = 40.0 + 10.0 * (i as f64 / 500.0).sin() + ((x >> 40) % 100) as f64 / 50.0;
            d.score(1_700_000_000_000 + i * 10_000, v);
        }
        let bytes = d.footprint();
        eprintln!("detector after a day of 10 s windows: {bytes} bytes");
        // 1,527 bytes on 2026-12-01: 0.2 KB of values (101, two bytes each), 0.27 KB of likelihood
        // blocks, the pattern words (0.5 KB: this noisy series draws enough of them to fill the set),
        // the struct (0.4 KB); no time-of-day ranges (no daily period at 10 s rows).
        assert!(bytes < 1600, "{bytes} bytes");
    }

    #[test]
    fn tidewatch_survives_bad_values() {
        let mut d = Tidewatch::new(Params::default());
        for (i, v) in [1.0, f64::NAN, f64::INFINITY, 0.0, -1e300, 1e300, 3.0]
            .into_iter()
            .cycle()
            .take(500)
            .enumerate()
        {
            let s = d.score(i as i64, v);
            assert!((0.0..=1.0).contains(&s), "{s}");
        }
    }

    #[test]
    fn params_are_checked() {
        let mut p = Params::default();
        assert!(p.set("short", "3").is_ok());
        assert_eq!(p.short, 3);
        assert!(p.set("short", "x").is_err());
        assert!(p.set("nope", "1").is_err());
        assert!(p.set("damp", "2").is_err());
        assert!(factory("tidewatch", &p).is_some() && factory("windowed-gaussian", &p).is_some());
        assert!(factory("nope", &p).is_none());
    }
}
