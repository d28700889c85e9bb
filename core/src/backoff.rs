//! The one retry backoff of Convoy: exponential with full jitter.
//!
//! Each delay is uniform in `[0, min(cap, base * 2^n)]` (AWS architecture
//! blog, "Exponential Backoff And Jitter"), so that many clients that failed
//! at the same instant do not retry at the same instant. The random source is
//! injectable ([`Backoff::next_delay_with`], [`delay_with`]) so tests can pin
//! the draw; pure arithmetic, no I/O.

use std::time::Duration;

use rand::Rng;

/// The ceiling of delay number `attempt` (0-based): `min(cap, base * 2^attempt)`.
pub fn ceiling(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let mult = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
    base.saturating_mul(mult).min(cap)
}

/// Delay number `attempt` (0-based), drawn uniformly in `[0, ceiling]` from `rng`.
pub fn delay_with<R: Rng + ?Sized>(attempt: u32, base: Duration, cap: Duration, rng: &mut R) -> Duration {
    let ceil = ceiling(attempt, base, cap);
    let ms = u64::try_from(ceil.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.random_range(0..=ms))
}

/// Delay number `attempt` (0-based) with the thread-local random source.
pub fn delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    delay_with(attempt, base, cap, &mut rand::rng())
}

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
        ceiling(self.attempt, self.base, self.cap)
    }

    /// The next delay: uniform in [0, ceiling], then the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// [`Backoff::next_delay`] drawing from `rng`.
    pub fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let d = delay_with(self.attempt, self.base, self.cap, rng);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Start over (after a success).
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
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// A random source that always returns the same word: all-ones draws the
    /// top of a range, all-zeros the bottom.
    struct Fixed(u64);
    impl rand::RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            self.0 as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.0 as u8);
        }
    }

    #[test]
    fn ceiling_doubles_to_cap_and_delays_stay_under_it() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = vec![];
        for _ in 0..6 {
            let c = b.ceiling();
            let d = b.next_delay_with(&mut rng);
            assert!(d <= c, "{d:?} > {c:?}");
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(delay_with(3, base, cap, &mut Fixed(0)), Duration::ZERO);
        // The top of the range: the ceiling itself, 100 ms * 2^3.
        let top = delay_with(3, base, cap, &mut Fixed(u64::MAX));
        assert!(top <= Duration::from_millis(800) && top >= Duration::from_millis(790), "{top:?}");
        // Spread: 400 seeded draws under one ceiling cover both halves.
        let mut rng = StdRng::seed_from_u64(42);
        let lows = (0..400).filter(|_| delay_with(0, cap, cap, &mut rng) < cap / 2).count();
        assert!((100..300).contains(&lows), "lows {lows}");
    }

    #[test]
    fn huge_attempts_and_zero_base_do_not_overflow() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(ceiling(u32::MAX, base, cap), cap);
        assert!(delay(u32::MAX, base, cap) <= cap);
        assert_eq!(delay(5, Duration::ZERO, cap), Duration::ZERO);
        let mut b = Backoff::new(base, cap);
        for _ in 0..100 {
            assert!(b.next_delay() <= cap);
        }
    }
}
