//! A latency histogram with fixed buckets, shared by the processor (time from a command's
//! arrival to its answer) and the gateway (time from sending a command to its answer), so
//! both report in the same buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 21] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
    0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Durations counted into the buckets; safe to share between tasks.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> LatencyCounts {
        LatencyCounts {
            buckets: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment, as reported (`rpc.status`, `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyCounts {
    /// `buckets[i]`: durations of at most `LATENCY_BUCKETS[i]` seconds and more than the bound
    /// before (not cumulative). Longer than the last bound: counted only in `count`.
    pub buckets: Vec<u64>,
    pub count: u64,
    /// The sum of all durations, in microseconds.
    pub sum_micros: u64,
}

impl LatencyCounts {
    /// What was counted since `earlier` (counts taken from the same histogram before).
    pub fn since(&self, earlier: &LatencyCounts) -> LatencyCounts {
        LatencyCounts {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n - earlier.buckets.get(i).copied().unwrap_or(0))
                .collect(),
            count: self.count - earlier.count,
            sum_micros: self.sum_micros - earlier.sum_micros,
        }
    }

    /// The bucket holding quantile `q` (0..=1), as its (lower, upper) bounds in seconds; the
    /// upper bound is infinite past the last bucket. `None` when nothing was counted.
    pub fn quantile_bucket(&self, q: f64) -> Option<(f64, f64)> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
                return Some((lower, LATENCY_BUCKETS[i]));
            }
        }
        Some((LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1], f64::INFINITY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_bucket_that_holds_them() {
        let h = Histogram::default();
        for ms in [1u64, 2, 2, 3, 40, 41, 42, 43, 44, 900] {
            h.observe(Duration::from_millis(ms));
        }
        let counts = h.read();
        assert_eq!(counts.count, 10);
        assert_eq!(counts.sum_micros, 1_118_000);
        assert_eq!(counts.quantile_bucket(0.1), Some((0.0005, 0.001)));
        assert_eq!(counts.quantile_bucket(0.5), Some((0.03, 0.04)));
        assert_eq!(counts.quantile_bucket(0.6), Some((0.04, 0.05)));
        assert_eq!(counts.quantile_bucket(1.0), Some((0.5, 1.0)));
        let later = {
            h.observe(Duration::from_secs(60));
            h.read()
        };
        let delta = later.since(&counts);
        assert_eq!(delta.count, 1);
        assert_eq!(delta.buckets.iter().sum::<u64>(), 0);
        assert_eq!(delta.quantile_bucket(0.5), Some((30.0, f64::INFINITY)));
        assert_eq!(LatencyCounts::default().quantile_bucket(0.5), None);
    }
}
