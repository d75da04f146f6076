//! [`Clock`]: where the circuit breaker and the latency statistics read the time, so that tests
//! can drive time-based policy (windows, open waits, backoff) deterministically.
//!
//! Lock deadlines are not affected: waiting for a lock is done by `parking_lot` against the real
//! monotonic clock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic clock: the real one ([`Clock::system`], the default) or a `TestClock` (feature
/// `test-util`) that only moves when a test moves it.
///
/// Times are nanoseconds since the clock's own origin (when it was made), which fits in a
/// `u64` for 584 years and can be stored in an atomic.
///
/// # Examples
///
/// ```
/// use map_wrapper::clock::Clock;
///
/// let clock = Clock::system();
/// let t0 = clock.now_nanos();
/// assert!(clock.now_nanos() >= t0);
/// assert!(!clock.is_test());
/// ```
#[derive(Clone)]
pub struct Clock {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    System(Instant),
    #[cfg_attr(not(any(test, feature = "test-util")), allow(dead_code))]
    Test(Arc<AtomicU64>),
}

impl Clock {
    /// The real monotonic clock ([`Instant`]), with its origin now.
    pub fn system() -> Self {
        Clock { inner: Inner::System(Instant::now()) }
    }

    /// Nanoseconds since the clock's origin; never decreases.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        match &self.inner {
            Inner::System(origin) => duration_nanos(origin.elapsed()),
            Inner::Test(now) => now.load(Ordering::Acquire),
        }
    }

    /// The real instant at `nanos` on this clock, or `None` for a test clock (whose time is
    /// not the real one).
    pub(crate) fn instant_at(&self, nanos: u64) -> Option<Instant> {
        match &self.inner {
            Inner::System(origin) => origin.checked_add(Duration::from_nanos(nanos)),
            Inner::Test(_) => None,
        }
    }

    /// Whether this is a `TestClock` (feature `test-util`).
    pub fn is_test(&self) -> bool {
        matches!(self.inner, Inner::Test(_))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::System(_) => f.write_str("Clock::System"),
            Inner::Test(now) => write!(f, "Clock::Test({}ns)", now.load(Ordering::Relaxed)),
        }
    }
}

/// A clock that stands still until the test moves it; clones share one time. Test support:
/// only with the `test-util` feature.
///
/// Give it to a map with [`Builder::clock`](crate::Builder::clock) to test the circuit breaker
/// without sleeping.
///
/// ```
/// use std::time::Duration;
/// use map_wrapper::clock::{Clock, TestClock};
///
/// let test = TestClock::new();
/// let clock = Clock::from(test.clone());
/// let t0 = clock.now_nanos();
/// test.advance(Duration::from_millis(5));
/// assert_eq!(clock.now_nanos() - t0, 5_000_000);
/// ```
#[cfg(any(test, feature = "test-util"))]
#[derive(Clone, Default)]
pub struct TestClock {
    now: Arc<AtomicU64>,
}

#[cfg(any(test, feature = "test-util"))]
impl TestClock {
    /// A test clock at time zero.
    pub fn new() -> Self {
        TestClock::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(duration_nanos(by), Ordering::AcqRel);
    }

    /// The time since the clock's origin.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now.load(Ordering::Acquire))
    }
}

#[cfg(any(test, feature = "test-util"))]
impl fmt::Debug for TestClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TestClock").field(&self.elapsed()).finish()
    }
}

#[cfg(any(test, feature = "test-util"))]
impl From<TestClock> for Clock {
    fn from(test: TestClock) -> Self {
        Clock { inner: Inner::Test(test.now) }
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_moves_forward() {
        let c = Clock::system();
        let a = c.now_nanos();
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.now_nanos() >= a + 2_000_000);
        assert!(!c.is_test());
    }

    #[test]
    fn test_clock_moves_only_when_told_and_clones_share_it() {
        let t = TestClock::new();
        let c = Clock::from(t.clone());
        let c2 = c.clone();
        assert_eq!(c.now_nanos(), 0);
        t.advance(Duration::from_micros(3));
        assert_eq!(c2.now_nanos(), 3_000);
        assert!(c.is_test());
        assert_eq!(duration_nanos(Duration::MAX), u64::MAX);
    }
}
