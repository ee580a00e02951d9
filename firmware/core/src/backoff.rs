//! Reconnect backoff: exponential growth, a cap, and "equal jitter".
//!
//! Attempt `n` (0-based) waits a random time in `[d/2, d]` where `d = min(cap, base * 2^n)`.
//! The random number is supplied by the caller (the ESP32's hardware RNG, or any PRNG on
//! the host), so the type needs no `std` and tests are deterministic. Jitter spreads out a
//! kitchen full of thermometers reconnecting after the broker restarts; the lower bound
//! `d/2` keeps a single device from hammering the broker.

/// Exponential backoff state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base_ms: u32,
    cap_ms: u32,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting around `base_ms` and never exceeding `cap_ms`
    /// (`base_ms` is at least 1; `cap_ms` at least `base_ms`).
    pub const fn new(base_ms: u32, cap_ms: u32) -> Self {
        let base_ms = if base_ms == 0 { 1 } else { base_ms };
        let cap_ms = if cap_ms < base_ms { base_ms } else { cap_ms };
        Backoff {
            base_ms,
            cap_ms,
            attempt: 0,
        }
    }

    /// The un-jittered delay for the current attempt: `min(cap, base * 2^attempt)`.
    pub fn ceiling_ms(&self) -> u32 {
        let factor = 1u64 << self.attempt.min(32);
        (u64::from(self.base_ms) * factor).min(u64::from(self.cap_ms)) as u32
    }

    /// The delay before the next attempt, jittered by `random`, and advances the attempt count.
    pub fn next_delay_ms(&mut self, random: u32) -> u32 {
        let ceiling = self.ceiling_ms();
        let half = ceiling / 2;
        let span = ceiling - half; // >= half; delay in [half, ceiling]
        let jitter = (u64::from(random) * (u64::from(span) + 1)) >> 32;
        self.attempt = self.attempt.saturating_add(1);
        half + jitter as u32
    }

    /// Call after a successful connection: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let mut b = Backoff::new(1_000, 60_000);
        let ceilings: Vec<u32> = (0..10)
            .map(|_| {
                let c = b.ceiling_ms();
                b.next_delay_ms(u32::MAX);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(b.attempts(), 10);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let mut b = Backoff::new(1_000, 60_000);
        // the lowest and highest random values hit the bounds exactly
        let (mut lo, mut hi) = (b, b);
        assert_eq!(lo.next_delay_ms(0), 500);
        assert_eq!(hi.next_delay_ms(u32::MAX), 1_000);
        // a middle value lands in the middle
        let mid = b.next_delay_ms(u32::MAX / 2);
        assert!((740..=760).contains(&mid), "{mid}");
        // many random values: always in [d/2, d], and spread out (not all equal)
        let mut x: u32 = 0x1234_5678;
        for attempt in 1..40 {
            let ceiling = b.ceiling_ms();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let d = b.next_delay_ms(x);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "attempt {attempt}: {d} not in [{}, {ceiling}]",
                ceiling / 2
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in (0..100u32).map(|i| i.wrapping_mul(0x9E37_79B9)) {
            seen.insert(Backoff::new(1_000, 60_000).next_delay_ms(r));
        }
        assert!(seen.len() > 50, "jitter spreads delays: {}", seen.len());
    }

    #[test]
    fn reset_starts_over_and_no_overflow() {
        let mut b = Backoff::new(500, u32::MAX);
        for _ in 0..1_000 {
            b.next_delay_ms(u32::MAX);
        }
        assert_eq!(b.ceiling_ms(), u32::MAX);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay_ms(u32::MAX), 500);
        // degenerate parameters are fixed up
        let mut z = Backoff::new(0, 0);
        assert_eq!(z.next_delay_ms(u32::MAX), 1);
        let mut inv = Backoff::new(5_000, 10);
        assert_eq!(inv.ceiling_ms(), 5_000);
        assert!(inv.next_delay_ms(0) >= 2_500);
    }
}
