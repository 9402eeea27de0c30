//! Lag-based autoscaling (pure): from the committed throughput and the lag, the parallelism
//! that drains the lag within the target, bounded by min/max and the partition count, applied
//! only after it has been wanted for the stabilization window.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the autoscaler remembers between reconciles (kept in the status).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Rows committed at the previous sample.
    pub rows: u64,
    /// Unix milliseconds of the previous sample.
    pub at_ms: i64,
    /// Highest rows per second per worker seen while lagging (a saturated worker's capacity).
    pub capacity: f64,
    /// Parallelism wanted, and since when (unix ms).
    pub wanted: Option<(i32, i64)>,
}

/// One observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Rows committed so far by the current coordinator run.
    pub rows: u64,
    /// Total lag in records.
    pub lag: i64,
    /// Now, unix milliseconds.
    pub now_ms: i64,
    /// Current parallelism.
    pub parallelism: i32,
    /// Partitions (no worker beyond one per partition helps).
    pub partitions: i32,
}

/// Bounds and targets from the spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Lowest parallelism.
    pub min: i32,
    /// Highest parallelism.
    pub max: i32,
    /// Drain the lag within this time.
    pub target: Duration,
    /// A new parallelism must be wanted this long.
    pub window: Duration,
}

/// The parallelism to apply now (if any) and the updated memory.
pub fn recommend(memory: &Memory, sample: Sample, policy: Policy) -> (Option<i32>, Memory) {
    let mut next = memory.clone();
    next.rows = sample.rows;
    next.at_ms = sample.now_ms;
    let dt = (sample.now_ms - memory.at_ms) as f64 / 1000.0;
    // A first sample, or a restarted coordinator (counter went back): nothing to compare.
    if memory.at_ms == 0 || dt <= 0.0 || sample.rows < memory.rows {
        return (None, next);
    }
    let rate = (sample.rows - memory.rows) as f64 / dt;
    let per_worker = rate / f64::from(sample.parallelism.max(1));
    let target = policy.target.as_secs_f64().max(1.0);
    let lagging = sample.lag as f64 > rate * target;
    if lagging {
        next.capacity = next.capacity.max(per_worker);
    }
    let upper = policy.max.min(sample.partitions.max(1)).max(policy.min);
    // Without a capacity yet (never lagged), there is nothing to size by: stay.
    let desired = if next.capacity > 0.0 {
        // Keep up with what arrives (≈ the committed rate) and drain the lag in time.
        let needed = rate + sample.lag as f64 / target;
        (needed / next.capacity).ceil() as i32
    } else {
        sample.parallelism
    }
    .clamp(policy.min, upper);
    if desired == sample.parallelism {
        next.wanted = None;
        return (None, next);
    }
    match memory.wanted {
        Some((w, since)) if w == desired => {
            let held = Duration::from_millis(u64::try_from(sample.now_ms - since).unwrap_or(0));
            if held >= policy.window {
                next.wanted = None;
                (Some(desired), next)
            } else {
                (None, next)
            }
        }
        _ if policy.window.is_zero() => {
            next.wanted = None;
            (Some(desired), next)
        }
        _ => {
            next.wanted = Some((desired, sample.now_ms));
            (None, next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        min: 1,
        max: 8,
        target: Duration::from_secs(60),
        window: Duration::from_secs(120),
    };

    fn sample(rows: u64, lag: i64, secs: i64, parallelism: i32) -> Sample {
        Sample {
            rows,
            lag,
            now_ms: secs * 1000,
            parallelism,
            partitions: 6,
        }
    }

    #[test]
    fn scales_up_to_drain_the_lag_after_the_window() {
        let mut m = Memory::default();
        // 2 workers commit 20k rows/s while 3M records wait: they are saturated at 10k/s.
        let (p, next) = recommend(&m, sample(0, 3_000_000, 1, 2), POLICY);
        assert_eq!(p, None);
        m = next;
        let (p, next) = recommend(&m, sample(200_000, 3_000_000, 11, 2), POLICY);
        assert_eq!(p, None, "wanted, not yet for the window");
        assert_eq!(next.capacity, 10_000.0);
        // needed = 20k + 3M/60 = 70k rows/s → 7 workers, capped by 6 partitions.
        assert_eq!(next.wanted.map(|w| w.0), Some(6));
        m = next;
        let (p, next) = recommend(&m, sample(1_400_000, 2_900_000, 71, 2), POLICY);
        assert_eq!(p, None, "60 s < 120 s window");
        m = next;
        let (p, _) = recommend(&m, sample(3_800_000, 2_800_000, 191, 2), POLICY);
        assert_eq!(p, Some(6));
    }

    #[test]
    fn scales_down_when_capacity_is_known_and_never_flaps() {
        let mut m = Memory {
            rows: 0,
            at_ms: 1_000,
            capacity: 10_000.0,
            wanted: None,
        };
        // 6 workers, 5k rows/s arriving, no lag: one worker suffices.
        let (p, next) = recommend(&m, sample(50_000, 0, 11, 6), POLICY);
        assert_eq!((p, next.wanted.map(|w| w.0)), (None, Some(1)));
        m = next;
        // A burst changes the wish: the window starts again.
        let (p, next) = recommend(&m, sample(100_000, 900_000, 21, 6), POLICY);
        assert_eq!(p, None);
        assert_ne!(next.wanted.map(|w| w.0), Some(1));
        m = next;
        let (p, next) = recommend(&m, sample(150_000, 0, 31, 6), POLICY);
        assert_eq!((p, next.wanted.map(|w| w.1)), (None, Some(31_000)));
        m = next;
        let (p, _) = recommend(&m, sample(750_000, 0, 151, 6), POLICY);
        assert_eq!(p, Some(1));
    }

    #[test]
    fn lag_sizes_by_the_measured_capacity_and_min_max_hold() {
        let m = Memory {
            rows: 0,
            at_ms: 1_000,
            capacity: 0.0,
            wanted: None,
        };
        // No lag and no capacity known yet: nothing to size by.
        let (p, next) = recommend(&m, sample(1_000, 0, 11, 1), POLICY);
        assert_eq!((p, next.wanted), (None, None));
        let mut policy = POLICY;
        policy.window = Duration::ZERO;
        policy.max = 3;
        // A huge lag at 100 rows/s: as many as allowed, at once with a zero window.
        let (p, next) = recommend(&m, sample(1_000, 10_000_000, 11, 1), policy);
        assert_eq!(p, Some(3), "bounded by maxParallelism");
        assert_eq!(next.capacity, 100.0);
        policy.min = 2;
        policy.max = 1;
        let (p, _) = recommend(&m, sample(1_000, 0, 11, 2), policy);
        assert_eq!(
            p, None,
            "min wins over a max below it (validation refuses such specs)"
        );
        // A coordinator restart resets the counter: no decision from a negative rate.
        let (p, next) = recommend(
            &Memory {
                rows: 5_000,
                ..m.clone()
            },
            sample(10, 0, 11, 1),
            POLICY,
        );
        assert_eq!(p, None);
        assert_eq!(next.rows, 10);
    }
}
