//! The one source of wall-clock time: the [`Clock`] trait, the system clock
//! and a controllable [`FakeClock`] for tests.
//!
//! Code that stamps or compares times takes a [`SharedClock`] instead of
//! calling `SystemTime::now()`, so tests move time forward explicitly instead
//! of sleeping. Reading a clock is the only thing here; there is no I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time in Unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// A clock shared between tasks.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Now, in Unix milliseconds, from the system clock (0 before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct FakeClock {
    ms: Arc<AtomicI64>,
}

impl FakeClock {
    /// A clock standing at `unix_ms`.
    pub fn new(unix_ms: i64) -> Self {
        Self { ms: Arc::new(AtomicI64::new(unix_ms)) }
    }

    /// A clock standing at the system's current time.
    pub fn at_system_now() -> Self {
        Self::new(now_ms())
    }

    /// Move forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.ms.fetch_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Stand at `unix_ms`.
    pub fn set(&self, unix_ms: i64) {
        self.ms.store(unix_ms, Ordering::SeqCst);
    }

    /// This clock as a [`SharedClock`] (sharing its time).
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_after_2020_and_monotone_enough() {
        let a = SystemClock.now_ms();
        let b = system().now_ms();
        assert!(a > 1_577_836_800_000, "{a}");
        assert!(b >= a);
    }

    #[test]
    fn fake_clock_moves_only_when_told_and_clones_share_it() {
        let c = FakeClock::new(1_000);
        let shared = c.shared();
        assert_eq!(shared.now_ms(), 1_000);
        c.advance(Duration::from_secs(2));
        assert_eq!(shared.now_ms(), 3_000);
        c.clone().set(10);
        assert_eq!(c.now_ms(), 10);
        assert_eq!(shared.now_ms(), 10);
        assert!(FakeClock::at_system_now().now_ms() > 0);
    }
}
