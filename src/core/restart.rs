//! How often a crashed child may come back, and how long it waits first:
//! OTP's restart intensity and exponential backoff with jitter. Plain data
//! with the time passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Backoff;

/// OTP restart intensity: at most `max` restarts within any `window`.
#[derive(Debug)]
pub struct RestartBudget {
    max: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn new(max: u32, window: Duration) -> Self {
        RestartBudget {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now`; `Some(n)` with the restarts in the window
    /// (counting this one) if another restart is allowed, `None` if the budget is spent.
    pub fn record(&mut self, now: Instant) -> Option<u32> {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let n = self.recent.len() as u32;
        (n <= self.max).then_some(n)
    }
}

/// The delay before restart number `attempt` (1-based): `min * 2^(attempt-1)`,
/// capped at `max`, then "equal jitter": half fixed, half random (`unit` in 0..1).
pub fn backoff_delay(b: Backoff, attempt: u32, unit: f64) -> Duration {
    let exp = b
        .min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(b.max);
    d / 2 + d.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// A small xorshift for jitter; quality does not matter, independence from the clock does.
pub fn jitter_unit(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_max_restarts_within_window() {
        let mut b = RestartBudget::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.record(t0), Some(1));
        assert_eq!(b.record(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(b.record(t0 + Duration::from_secs(2)), Some(3));
        assert_eq!(b.record(t0 + Duration::from_secs(3)), None);
    }

    #[test]
    fn budget_forgets_restarts_older_than_window() {
        let mut b = RestartBudget::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.record(t0), Some(1));
        assert_eq!(b.record(t0 + Duration::from_secs(5)), Some(2));
        // t0 leaves the window exactly at t0 + 10s.
        assert_eq!(b.record(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(b.record(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn zero_budget_fails_on_first_crash() {
        let mut b = RestartBudget::new(0, Duration::from_secs(10));
        assert_eq!(b.record(Instant::now()), None);
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_cap() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(backoff_delay(b, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(b, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(b, 2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(b, 3, 0.5), Duration::from_millis(300));
        assert_eq!(backoff_delay(b, 10, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(b, 99, 0.0), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_in_unit_interval() {
        let mut seed = 42;
        for _ in 0..1000 {
            let u = jitter_unit(&mut seed);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
