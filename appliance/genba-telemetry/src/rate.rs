//! A token bucket: `rate` sends a second on average, `burst` at once after a quiet spell.

use std::time::{Duration, Instant};

pub struct TokenBucket {
    /// Tokens per second now: `max_rate`, or less after the receiver asked to slow down.
    rate: f64,
    max_rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate,
            max_rate: rate,
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

    /// After a receiver answered "wait `after`" (429 or 503 with `Retry-After`): spends the
    /// whole bucket and sends no faster than one per `after` from then on, so a sink paced
    /// above its receiver's limit does not keep running into it (Slack warns that it may
    /// disable apps that do). [`TokenBucket::recover`] creeps back up to the configured rate.
    pub fn slow_down(&mut self, after: Duration, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
        if !after.is_zero() {
            self.rate = self.rate.min(1.0 / after.as_secs_f64());
        }
    }

    /// After a delivery the receiver accepted: 5% closer to the configured rate.
    pub fn recover(&mut self) {
        self.rate = (self.rate * 1.05).min(self.max_rate);
    }

    /// The rate in force now.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_after_caps_the_rate_until_deliveries_bring_it_back() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10, t0);
        b.slow_down(Duration::from_secs(2), t0);
        assert_eq!(b.rate(), 0.5);
        // The bucket is empty: the next send waits the full two seconds.
        let w = b.wait(t0);
        assert!(
            w > Duration::from_millis(1990) && w <= Duration::from_secs(2),
            "{w:?}"
        );
        b.recover();
        assert!((b.rate() - 0.525).abs() < 1e-9, "{}", b.rate());
        for _ in 0..200 {
            b.recover();
        }
        assert_eq!(b.rate(), 10.0, "never above the configured rate");
        // A Retry-After longer than the current pace never speeds it up.
        b.slow_down(Duration::from_millis(10), t0);
        assert_eq!(b.rate(), 10.0);
    }

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
