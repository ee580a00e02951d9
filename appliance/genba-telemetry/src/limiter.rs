//! Rate limits per API key and per source address: one token bucket each, kept in memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::rate::TokenBucket;

/// Buckets idle this long are forgotten (they would be full again anyway).
const FORGET_AFTER: Duration = Duration::from_secs(600);

pub struct Limiter {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<String, (TokenBucket, Instant)>>,
}

impl Limiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        Limiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from each named bucket, or none: `Err(wait)` says when to retry.
    pub fn check(&self, names: &[&str], now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 10_000 {
            buckets.retain(|_, (_, used)| now.saturating_duration_since(*used) < FORGET_AFTER);
        }
        let mut wait = Duration::ZERO;
        for name in names {
            let (b, _) = buckets
                .entry((*name).to_owned())
                .or_insert_with(|| (TokenBucket::new(self.rate, self.burst, now), now));
            wait = wait.max(b.wait(now));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for name in names {
            if let Some((b, used)) = buckets.get_mut(*name) {
                b.take(now);
                *used = now;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_key_waits_while_another_key_does_not() {
        let l = Limiter::new(1.0, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.check(&["key:1", "addr:a"], t).is_ok());
        }
        let wait = l.check(&["key:1", "addr:a"], t).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(l.check(&["key:2", "addr:b"], t).is_ok());
        // The same address with another key is still limited by the address bucket.
        assert!(l.check(&["key:3", "addr:a"], t).is_err());
        assert!(l
            .check(&["key:1", "addr:a"], t + Duration::from_secs(1))
            .is_ok());
    }
}
