//! Exponential backoff with full jitter (AWS architecture blog, "Exponential
//! Backoff And Jitter"): each delay is uniform in [0, min(cap, base * 2^n)], so
//! that thousands of agents that lost the hub at the same instant do not come
//! back at the same instant.

use std::time::Duration;

use rand::Rng;

/// Backoff state for one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start at up to `base` and grow to at most `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let mult = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(mult).min(self.cap)
    }

    /// The next delay: uniform in [0, ceiling], then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceil = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceil.as_millis() as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    /// Start over (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_to_cap_and_delays_stay_under_it() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut ceilings = vec![];
        for _ in 0..6 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c, "{d:?} > {c:?}");
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        // Full jitter: 200 draws under a 10 s ceiling are not all alike and
        // cover both halves of the range.
        let mut lows = 0;
        let mut highs = 0;
        for _ in 0..200 {
            let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
            let d = b.next_delay();
            if d < Duration::from_secs(5) { lows += 1 } else { highs += 1 }
        }
        assert!(lows > 40 && highs > 40, "lows {lows} highs {highs}");
    }
}
