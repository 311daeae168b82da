//! Seasonal periods of a series: daily and weekly cycles found from the autocorrelation.

/// Autocorrelation of `y` at `lag`.
pub fn acf(y: &[f64], lag: usize) -> f64 {
    if lag == 0 || lag >= y.len() {
        return 0.0;
    }
    let m = y.iter().sum::<f64>() / y.len() as f64;
    let var: f64 = y.iter().map(|v| (v - m).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    y.iter()
        .zip(&y[lag..])
        .map(|(a, b)| (a - m) * (b - m))
        .sum::<f64>()
        / var
}

/// Daily and weekly periods (in steps of `step_secs`) that the series shows clearly: at least two full
/// periods of history and an autocorrelation above 0.3 at that lag (the best lag within ±2 % of it, since
/// real cycles drift a little). Strongest first.
pub fn detect_periods(y: &[f64], step_secs: f64) -> Vec<usize> {
    let mut found: Vec<(usize, f64)> = [86_400.0, 7.0 * 86_400.0]
        .iter()
        .map(|p| (p / step_secs).round() as usize)
        .filter(|&p| p >= 2 && y.len() >= 2 * p)
        .filter_map(|p| {
            let slack = (p / 50).max(1);
            let (best, r) = (p - slack.min(p - 1)..=p + slack)
                .map(|l| (l, acf(y, l)))
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            (r > 0.3).then_some((best, r))
        })
        .collect();
    found.sort_by(|a, b| b.1.total_cmp(&a.1));
    found.into_iter().map(|(p, _)| p).collect()
}
