//! Client-side rate limiting shared by the cloud providers: token buckets shaped like the
//! clouds' own throttles, so bursts queue here instead of turning into throttled answers.
use std::time::{Duration, Instant};

/// A bucket's shape: how many calls may burst and how fast it refills.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_sec: f64,
}

/// A token bucket that hands out reservations: a caller takes its token now (the count may go
/// negative) and waits until the bucket would have held it. Callers are served in order, and the
/// wait is computed under the lock but slept outside it.
#[derive(Debug)]
pub struct Bucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self { rate, tokens: rate.burst, last: now }
    }

    /// The wait before the caller may go; its token is taken now.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate.per_sec).min(self.rate.burst) - 1.0;
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens / self.rate.per_sec) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_bursts_then_paces_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Rate { burst: 3.0, per_sec: 2.0 }, t0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        // Reservations queue up half a second apart.
        assert_eq!(b.reserve(t0), Duration::from_millis(500));
        assert_eq!(b.reserve(t0), Duration::from_millis(1000));
        // After 2 s the debt (2 tokens) is repaid and 2 more accrued, capped by the burst.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(b.reserve(later), Duration::ZERO);
        let much_later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.reserve(much_later), Duration::ZERO);
        }
        assert!(b.reserve(much_later) > Duration::ZERO);
    }
}
