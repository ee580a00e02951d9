//! A token bucket: `rate` sends a second on average, `burst` at once after a quiet spell.

use std::time::{Duration, Instant};

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// How long to wait before a send is allowed (zero: now).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Takes one token (call after `wait` returned zero).
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// Spends the whole bucket, e.g. after Slack answered 429.
    pub fn drain(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_second() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.wait(t0), Duration::ZERO);
            b.take(t0);
        }
        let w = b.wait(t0);
        assert!(
            w > Duration::from_millis(990) && w <= Duration::from_secs(1),
            "{w:?}"
        );
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(b.wait(t1), Duration::ZERO);
        b.take(t1);
        assert!(b.wait(t1) > Duration::ZERO);
        // A long quiet spell refills only up to the burst.
        let t2 = t1 + Duration::from_secs(100);
        for _ in 0..3 {
            assert_eq!(b.wait(t2), Duration::ZERO);
            b.take(t2);
        }
        assert!(b.wait(t2) > Duration::ZERO);
    }
}
