//! A token bucket per tool: `rate` tokens a second, at most `burst` saved up.

use std::time::{Duration, Instant};

use crate::config::RateLimit;

#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            per_second: limit.rate.per_second,
            burst: f64::from(limit.burst),
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    /// Whether it would be full at `now` (its owner has been idle long
    /// enough that forgetting it changes nothing).
    pub fn is_full(&self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens + earned >= self.burst
    }

    /// Takes a token, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn bucket(per_second: f64, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket::new(
            RateLimit {
                rate: Rate { per_second },
                burst,
            },
            now,
        )
    }

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = bucket(10.0, 3, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(b.try_take(t0 + Duration::from_millis(50)).is_err());
        assert!(b.try_take(t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn an_idle_bucket_refills_only_to_its_burst() {
        let t0 = Instant::now();
        let mut b = bucket(100.0, 2, t0);
        let later = t0 + Duration::from_secs(60);
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("10/s").unwrap().per_second, 10.0);
        assert_eq!(Rate::parse("120/m").unwrap().per_second, 2.0);
        assert!(Rate::parse("10").is_err());
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("5/d").is_err());
    }
}
