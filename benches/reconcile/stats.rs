//! Statistics.

use super::*;

#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Stats {
    pub(crate) runs: usize,
    pub(crate) wall_med: f64,
    pub(crate) wall_p90: f64,
    pub(crate) cpu_med: f64,
    pub(crate) rss_med_kib: u64,
    pub(crate) rss_max_kib: u64,
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile.
pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub(crate) fn stats(runs: &[Run]) -> Stats {
    let wall: Vec<f64> = runs.iter().map(|r| r.wall_ms).collect();
    let cpu: Vec<f64> = runs.iter().map(|r| r.cpu_ms).collect();
    let rss: Vec<f64> = runs.iter().map(|r| r.rss_kib as f64).collect();
    Stats {
        runs: runs.len(),
        wall_med: median(&wall),
        wall_p90: percentile(&wall, 0.9),
        cpu_med: median(&cpu),
        rss_med_kib: median(&rss) as u64,
        rss_max_kib: runs.iter().map(|r| r.rss_kib).max().unwrap_or(0),
    }
}
