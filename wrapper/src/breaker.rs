//! The slow-operation circuit breaker: the whole rule in one file.
//!
//! **Outcomes.** Each completed operation is *ok*, *slow* (took longer than the map's slow
//! threshold), *failed* (timed out, which also counts as slow and is recorded at the deadline,
//! or would have deadlocked) or *ignored* (cancelled by its caller, or its closure panicked:
//! never counted against the map). A lookup that finds nothing is a normal, ok call.
//!
//! **Window.** Outcomes are kept over a sliding window, count-based (the last N calls, in at
//! most [`MAX_BUCKETS`] blocks) or time-based (the last span of time, in buckets). Both are
//! updated and read in constant time: a ring of blocks with running sums, where a block
//! leaves the window whole.
//!
//! *Ok calls cost no lock.* They are counted by the map's statistics in per-thread-striped
//! counters (which it needs anyway) and the breaker reads the total when it decides; only a
//! slow or failed call takes the breaker's lock to record itself and evaluate the rates. So a
//! healthy map never touches shared breaker state except one read-only atomic load. For a
//! time-based window, ok calls are placed in time by the operations that read the clock
//! anyway (sampled, contended, slow or failed ones), which close a bucket when they see the
//! time has moved past it.
//!
//! **Decision.** When a slow or failed call completes and the window holds at least the
//! minimum number of calls, the breaker opens if the failure rate, the slow rate or the
//! combined (slow-or-failed) rate reaches its threshold.
//!
//! **States.** *Closed* admits everything. *Open* rejects with
//! [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen) for the open wait (fixed, or
//! exponential backoff with jitter over consecutive openings). Then it is *half-open*: a capped
//! number of concurrent probe calls go through; a quota of successful probes closes it, one
//! slow or failed probe opens it again, and if probes are still out when the maximum half-open
//! wait is over it opens again (so it cannot get stuck on probes that never report; an idle
//! half-open breaker simply waits for its next call).
//! Operators can force it open, disable it (admit all, record nothing) or make it
//! *metrics-only* (record, never reject), and close it again.
//!
//! Open → half-open happens when the open wait ends, without waiting for traffic: one timer
//! thread for the process (started when a breaker first opens) wakes at the earliest end of
//! an open wait and moves that breaker on, so its event comes on time, from that thread. Any
//! earlier look (an admission check, a [`state`](CircuitBreaker::state) or
//! [`stats`](crate::MapWrapper::stats) read) makes the same move, so the state reported is
//! always the current one; with a `TestClock` (feature `test-util`) only those looks move it.
//! The event's time ([`BreakerEvent::at`]) is when the wait ended.
//!
//! **Generations.** Every state change bumps a generation. A call remembers the generation it
//! was admitted in; its result is discarded if the state changed meanwhile (a slow call that
//! started before the breaker closed does not count against the fresh window).

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::clock::{duration_nanos, Clock};
use crate::stats::Counters;

/// The most blocks a count-based window, or buckets a time-based one, may have.
pub const MAX_BUCKETS: u32 = 1024;

/// The most calls a count-based window may span.
pub const MAX_WINDOW_CALLS: u32 = 1 << 24;

/// A callback for [`BreakerEvent`]s; see [`Builder::on_breaker_event`](crate::Builder::on_breaker_event).
///
/// Events are delivered in order (of [`BreakerEvent::seq`]), one at a time, with no lock of
/// the breaker or of the map held by the breaker, so a listener may use the map. Usually on the
/// thread whose operation caused the event; while one thread is delivering, events caused on
/// others are delivered by it, and an event caused by a listener is delivered after that
/// listener returns. The open → half-open change comes from the breaker's timer thread. A
/// rejection of a call made by a listener itself is not delivered (it is still counted and
/// logged), so that a listener that uses an open map cannot feed itself. A listener that
/// panics is logged and skipped.
pub type BreakerListener = Arc<dyn Fn(&BreakerEvent) + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------------

/// Which calls the breaker's rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `calls` calls, kept in at most [`MAX_BUCKETS`] blocks of equal size (a block
    /// leaves the window whole, so the window spans between `calls - block + 1` and `calls`
    /// calls; with up to 1024 calls a block is one call and the window is exact).
    Count {
        /// How many calls.
        calls: u32,
    },
    /// The calls of the last `span`, in `buckets` buckets of equal length (a bucket leaves the
    /// window whole).
    Time {
        /// How far back.
        span: Duration,
        /// How many buckets the span is cut into.
        buckets: u32,
    },
}

impl SlidingWindow {
    /// The last `calls` calls.
    pub fn count(calls: u32) -> Self {
        SlidingWindow::Count { calls }
    }

    /// The calls of the last `span`, in 10 buckets.
    pub fn time(span: Duration) -> Self {
        SlidingWindow::Time { span, buckets: 10 }
    }
}

/// How long the breaker stays open before it lets probes through.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum OpenWait {
    /// Always the same wait.
    Fixed(Duration),
    /// `initial × multiplierⁿ` for the n-th consecutive opening without a close in between
    /// (n from 0), at most `max`, then moved by a random factor in `[1 − jitter, 1 + jitter]`
    /// so that many maps do not probe in lockstep.
    Exponential {
        /// The first wait.
        initial: Duration,
        /// The growth per consecutive opening; at least 1.
        multiplier: f64,
        /// The longest wait before jitter.
        max: Duration,
        /// The relative jitter, from 0 (none) to below 1.
        jitter: f64,
    },
}

/// The settings of a map's circuit breaker; give it to
/// [`Builder::breaker`](crate::Builder::breaker). Checked at `build()`: a bad value is a
/// [`BuildError`](crate::BuildError) naming it.
///
/// Defaults: a count window of the last 100 calls, at least 20 calls before it may trip, opens
/// when half of the calls in the window were slow or failed (combined rate 0.5; the separate
/// slow and failure rates are off), a fixed open wait of 5 s, up to 3 concurrent probes, 3
/// successful probes to close, at most 30 s in half-open.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use map_wrapper::breaker::{BreakerConfig, OpenWait, SlidingWindow};
/// use map_wrapper::MapWrapper;
///
/// let config = BreakerConfig::new()
///     .window(SlidingWindow::time(Duration::from_secs(10)))
///     .minimum_calls(50)
///     .failure_rate(0.2)
///     .slow_rate(0.5)
///     .open_wait(OpenWait::Exponential {
///         initial: Duration::from_secs(1),
///         multiplier: 2.0,
///         max: Duration::from_secs(60),
///         jitter: 0.1,
///     });
/// let map: MapWrapper<u64, u64> = MapWrapper::builder().breaker(config).build()?;
/// assert_eq!(map.breaker().unwrap().state(), map_wrapper::breaker::BreakerState::Closed);
///
/// let bad = MapWrapper::<u64, u64>::builder().breaker(BreakerConfig::new().failure_rate(1.5)).build();
/// assert_eq!(bad.unwrap_err().code(), "INVALID_CONFIG");
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a breaker configuration does nothing until given to `Builder::breaker`"]
pub struct BreakerConfig {
    window: SlidingWindow,
    minimum_calls: u32,
    failure_rate: Option<f64>,
    slow_rate: Option<f64>,
    combined_rate: Option<f64>,
    open_wait: OpenWait,
    half_open_probes: u32,
    success_quota: u32,
    max_half_open_wait: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: SlidingWindow::count(100),
            minimum_calls: 20,
            failure_rate: None,
            slow_rate: None,
            combined_rate: Some(0.5),
            open_wait: OpenWait::Fixed(Duration::from_secs(5)),
            half_open_probes: 3,
            success_quota: 3,
            max_half_open_wait: Duration::from_secs(30),
        }
    }
}

impl BreakerConfig {
    /// The defaults (see the type's documentation).
    pub fn new() -> Self {
        Self::default()
    }

    /// The window the rates are computed over.
    pub fn window(mut self, window: SlidingWindow) -> Self {
        self.window = window;
        self
    }

    /// How many calls the window must hold before the breaker may trip (at least 1).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// Opens when this fraction (in `(0, 1]`) of the calls in the window failed; `None`: never
    /// on failures alone.
    pub fn failure_rate(mut self, rate: impl Into<Option<f64>>) -> Self {
        self.failure_rate = rate.into();
        self
    }

    /// Opens when this fraction (in `(0, 1]`) of the calls in the window were slow (a timeout
    /// is slow too); `None`: never on slowness alone.
    pub fn slow_rate(mut self, rate: impl Into<Option<f64>>) -> Self {
        self.slow_rate = rate.into();
        self
    }

    /// Opens when this fraction (in `(0, 1]`) of the calls in the window were slow or failed;
    /// `None`: no combined threshold. At least one of the three rates must be set.
    pub fn combined_rate(mut self, rate: impl Into<Option<f64>>) -> Self {
        self.combined_rate = rate.into();
        self
    }

    /// How long the breaker stays open before probing.
    pub fn open_wait(mut self, wait: OpenWait) -> Self {
        self.open_wait = wait;
        self
    }

    /// How many probe calls may run at once while half-open (at least 1); more are rejected.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes;
        self
    }

    /// How many probe calls must succeed (ok, not slow) to close the breaker (at least 1).
    pub fn success_quota(mut self, successes: u32) -> Self {
        self.success_quota = successes;
        self
    }

    /// The longest the breaker stays half-open without reaching the success quota before it
    /// opens again.
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.max_half_open_wait = wait;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), crate::BuildError> {
        fn bad(field: &'static str, reason: String) -> Result<(), crate::BuildError> {
            Err(crate::BuildError::new(field, reason))
        }
        match self.window {
            SlidingWindow::Count { calls } => {
                if calls == 0 || calls > MAX_WINDOW_CALLS {
                    return bad(
                        "breaker.window",
                        format!("a count window must hold 1 to {MAX_WINDOW_CALLS} calls, got {calls}"),
                    );
                }
            }
            SlidingWindow::Time { span, buckets } => {
                if buckets == 0 || buckets > MAX_BUCKETS {
                    return bad(
                        "breaker.window",
                        format!("a time window must have 1 to {MAX_BUCKETS} buckets, got {buckets}"),
                    );
                }
                if span < Duration::from_millis(1) * buckets {
                    return bad(
                        "breaker.window",
                        format!(
                            "a time window's buckets must be at least 1 ms long, got {span:?} in {buckets}"
                        ),
                    );
                }
            }
        }
        if self.minimum_calls == 0 {
            return bad("breaker.minimum_calls", "must be at least 1, got 0".into());
        }
        let rates = [
            ("breaker.failure_rate", self.failure_rate),
            ("breaker.slow_rate", self.slow_rate),
            ("breaker.combined_rate", self.combined_rate),
        ];
        for (field, rate) in rates {
            if let Some(r) = rate {
                if !(r > 0.0 && r <= 1.0) {
                    return bad(field, format!("must be a fraction in (0, 1], got {r}"));
                }
            }
        }
        if rates.iter().all(|(_, r)| r.is_none()) {
            return bad(
                "breaker.combined_rate",
                "at least one of failure_rate, slow_rate and combined_rate must be set".into(),
            );
        }
        match self.open_wait {
            OpenWait::Fixed(d) if d.is_zero() => {
                return bad("breaker.open_wait", "must be longer than zero".into());
            }
            OpenWait::Fixed(_) => {}
            OpenWait::Exponential { initial, multiplier, max, jitter } => {
                if initial.is_zero() {
                    return bad("breaker.open_wait", "the initial wait must be longer than zero".into());
                }
                if !(multiplier.is_finite() && multiplier >= 1.0) {
                    return bad(
                        "breaker.open_wait",
                        format!("the multiplier must be at least 1, got {multiplier}"),
                    );
                }
                if max < initial {
                    return bad(
                        "breaker.open_wait",
                        format!("the max wait ({max:?}) must not be below the initial one ({initial:?})"),
                    );
                }
                if !((0.0..1.0).contains(&jitter)) {
                    return bad("breaker.open_wait", format!("the jitter must be in [0, 1), got {jitter}"));
                }
            }
        }
        if self.half_open_probes == 0 {
            return bad("breaker.half_open_probes", "must be at least 1, got 0".into());
        }
        if self.success_quota == 0 {
            return bad("breaker.success_quota", "must be at least 1, got 0".into());
        }
        if self.max_half_open_wait.is_zero() {
            return bad("breaker.max_half_open_wait", "must be longer than zero".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// States and events.
// ---------------------------------------------------------------------------------------------

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Admits every call and watches their outcomes.
    Closed,
    /// Rejects every call until the open wait is over.
    Open,
    /// Lets a few probe calls through to see whether the map has recovered.
    HalfOpen,
    /// Rejects every call until an operator closes it.
    ForcedOpen,
    /// Admits every call and records nothing, until an operator closes it.
    Disabled,
    /// Records outcomes and rates like a closed breaker but never rejects.
    MetricsOnly,
}

impl BreakerState {
    fn code(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
            BreakerState::ForcedOpen => 3,
            BreakerState::Disabled => 4,
            BreakerState::MetricsOnly => 5,
        }
    }

    fn from_code(code: u64) -> Self {
        match code {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            3 => BreakerState::ForcedOpen,
            4 => BreakerState::Disabled,
            _ => BreakerState::MetricsOnly,
        }
    }

    /// A stable lower-case name (`closed`, `open`, `half_open`, …) for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
            BreakerState::MetricsOnly => "metrics_only",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum TransitionCause {
    /// The failure rate in the window reached its threshold (the rate is given).
    FailureRate(f64),
    /// The slow rate in the window reached its threshold.
    SlowRate(f64),
    /// The slow-or-failed rate in the window reached its threshold.
    CombinedRate(f64),
    /// The open wait is over.
    OpenWaitElapsed,
    /// A probe call was slow or failed.
    ProbeFailed,
    /// Enough probe calls succeeded.
    SuccessQuotaReached,
    /// The success quota was not reached within the maximum half-open wait.
    HalfOpenTimedOut,
    /// An operator asked for it.
    Manual,
}

/// Something the breaker did; given to listeners and logged through `tracing`.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerEvent {
    /// The map's name.
    pub map: Arc<str>,
    /// When it happened, on the breaker's [`Clock`] (time since the clock's origin).
    pub at: Duration,
    /// Numbers the state changes of one breaker (1, 2, …); a rejection carries the number of
    /// the last state change before it.
    pub seq: u64,
    /// What happened.
    pub kind: BreakerEventKind,
}

/// What a [`BreakerEvent`] reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BreakerEventKind {
    /// The breaker changed state.
    StateChanged {
        /// The state it left.
        from: BreakerState,
        /// The state it entered.
        to: BreakerState,
        /// Why.
        cause: TransitionCause,
    },
    /// A call was rejected.
    Rejected {
        /// The operation rejected.
        op: crate::Op,
        /// The state that rejected it.
        state: BreakerState,
        /// The `retry_after` given to the caller.
        retry_after: Duration,
    },
}

// ---------------------------------------------------------------------------------------------
// What the breaker needs from a call.
// ---------------------------------------------------------------------------------------------

/// The outcome of one call, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Ok,
    /// Slow; `weight` calls' worth (a sampled call stands for the unsampled ones).
    Slow {
        weight: u64,
    },
    /// Failed; `slow` when it also counts as slow (a timeout).
    Failed {
        slow: bool,
    },
    Ignored,
}

/// How a call ended, as the map saw it; [`Verdict::of`] turns it into what the breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Admitted as rejected, but it never asked for a lock (it had nothing to do).
    NotStarted,
    /// It waited for a lock until its deadline.
    TimedOut,
    /// It was refused because it would have deadlocked.
    WouldDeadlock,
    /// Its caller cancelled it.
    Cancelled,
    /// Its caller's deadline had passed before it started.
    Expired,
    /// A closure its caller gave panicked.
    Panicked,
    /// It completed; `took` its latency in clock nanos, if it was timed.
    Completed { took: Option<u64> },
}

impl Verdict {
    /// The breaker's rule for one call:
    ///
    /// - **failed**: a timeout (which also counts as slow) or a would-deadlock (not slow): the
    ///   map could not serve the call;
    /// - **slow**: completed, timed, and above the slow threshold; it weighs `stands_for`
    ///   calls (a call sampled for timing stands for the calls not sampled since the last
    ///   sample, so sampling does not bias the slow rate downwards);
    /// - **ignored**: cancelled, started after its caller's deadline, a caller's closure
    ///   panicked, or never started: none says anything about the map's health;
    /// - **ok**: everything else (completed and not timed, or timed within the threshold).
    pub(crate) fn of(ended: Ended, slow_threshold: u64, stands_for: u64) -> Verdict {
        match ended {
            Ended::TimedOut => Verdict::Failed { slow: true },
            Ended::WouldDeadlock => Verdict::Failed { slow: false },
            Ended::NotStarted | Ended::Cancelled | Ended::Expired | Ended::Panicked => Verdict::Ignored,
            Ended::Completed { took: Some(took) } if took > slow_threshold => {
                Verdict::Slow { weight: stands_for }
            }
            Ended::Completed { .. } => Verdict::Ok,
        }
    }
}

/// Admission of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead. `probe`: a half-open probe, which must be timed and reported.
    Pass {
        generation: u64,
        probe: bool,
    },
    Reject {
        retry_after: Duration,
    },
}

// ---------------------------------------------------------------------------------------------
// The window.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Block {
    /// The call counter when the block was opened (time windows).
    start_calls: u64,
    slow: u64,
    failed: u64,
    bad: u64,
}

#[derive(Debug)]
enum Unit {
    /// Blocks of `calls` calls each.
    Calls(u64),
    /// Buckets of `nanos` each.
    Nanos(u64),
}

/// A ring of blocks with running sums: constant work per call, and a rotation that touches at
/// most every block once per block length.
#[derive(Debug)]
struct Window {
    unit: Unit,
    blocks: Box<[Block]>,
    /// Absolute index of the first block since the last reset, and of the newest one.
    first: u64,
    head: u64,
    /// The call counter at the last reset (count windows count from there).
    base_calls: u64,
    slow: u64,
    failed: u64,
    bad: u64,
}

/// What a window holds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct WindowFigures {
    pub(crate) calls: u64,
    pub(crate) slow: u64,
    pub(crate) failed: u64,
    pub(crate) bad: u64,
}

impl WindowFigures {
    fn rate(part: u64, calls: u64) -> f64 {
        if calls == 0 {
            0.0
        } else {
            part.min(calls) as f64 / calls as f64
        }
    }
    pub(crate) fn failure_rate(&self) -> f64 {
        Self::rate(self.failed, self.calls)
    }
    pub(crate) fn slow_rate(&self) -> f64 {
        Self::rate(self.slow, self.calls)
    }
    pub(crate) fn combined_rate(&self) -> f64 {
        Self::rate(self.bad, self.calls)
    }
}

impl Window {
    fn new(window: SlidingWindow) -> Self {
        let (unit, len) = match window {
            SlidingWindow::Count { calls } => {
                let block = u64::from(calls.div_ceil(MAX_BUCKETS));
                (Unit::Calls(block), u64::from(calls).div_ceil(block))
            }
            SlidingWindow::Time { span, buckets } => {
                (Unit::Nanos(duration_nanos(span) / u64::from(buckets)), u64::from(buckets))
            }
        };
        Window {
            unit,
            blocks: vec![Block::default(); len as usize].into_boxed_slice(),
            first: 0,
            head: 0,
            base_calls: 0,
            slow: 0,
            failed: 0,
            bad: 0,
        }
    }

    fn len(&self) -> u64 {
        self.blocks.len() as u64
    }

    fn index(&self, now: u64, calls: u64) -> u64 {
        match self.unit {
            Unit::Calls(block) => calls.saturating_sub(self.base_calls).saturating_sub(1) / block,
            Unit::Nanos(bucket) => now / bucket,
        }
    }

    fn reset(&mut self, now: u64, calls: u64) {
        self.blocks.fill(Block::default());
        self.base_calls = calls;
        self.first = self.index(now, calls);
        self.head = self.first;
        let len = self.len();
        self.blocks[(self.head % len) as usize].start_calls = calls;
        self.slow = 0;
        self.failed = 0;
        self.bad = 0;
    }

    /// Moves the window forward to the block of (`now`, `calls`); older blocks leave it.
    /// `by_call`: `calls` includes a call that ends now, which belongs to the newest block.
    fn advance(&mut self, now: u64, calls: u64, by_call: bool) {
        let to = self.index(now, calls);
        if to <= self.head {
            return;
        }
        let len = self.len();
        let steps = (to - self.head).min(len);
        let start_calls = if by_call { calls.saturating_sub(1) } else { calls };
        for j in (to + 1 - steps)..=to {
            let b = &mut self.blocks[(j % len) as usize];
            self.slow -= b.slow;
            self.failed -= b.failed;
            self.bad -= b.bad;
            *b = Block { start_calls, ..Block::default() };
        }
        self.head = to;
    }

    fn record(&mut self, verdict: Verdict) {
        let len = self.len();
        let b = &mut self.blocks[(self.head % len) as usize];
        let (slow, failed, bad) = match verdict {
            Verdict::Slow { weight } => (weight, 0, weight),
            Verdict::Failed { slow } => (u64::from(slow), 1, 1),
            Verdict::Ok | Verdict::Ignored => (0, 0, 0),
        };
        b.slow += slow;
        b.failed += failed;
        b.bad += bad;
        self.slow += slow;
        self.failed += failed;
        self.bad += bad;
    }

    fn figures(&self, calls: u64) -> WindowFigures {
        let len = self.len();
        let oldest = self.first.max((self.head + 1).saturating_sub(len));
        let in_window = match self.unit {
            Unit::Calls(block) => calls.saturating_sub(self.base_calls).saturating_sub(oldest * block),
            Unit::Nanos(_) => calls.saturating_sub(self.blocks[(oldest % len) as usize].start_calls),
        };
        WindowFigures { calls: in_window, slow: self.slow, failed: self.failed, bad: self.bad }
    }
}

// ---------------------------------------------------------------------------------------------
// The breaker.
// ---------------------------------------------------------------------------------------------

/// A map's circuit breaker: its state, and the operator's controls. Reached through
/// [`MapWrapper::breaker`](crate::MapWrapper::breaker).
///
/// # Examples
///
/// ```
/// use map_wrapper::breaker::{BreakerConfig, BreakerState};
/// use map_wrapper::MapWrapper;
///
/// let map: MapWrapper<u8, u8> = MapWrapper::builder().breaker(BreakerConfig::new()).build()?;
/// let breaker = map.breaker().expect("configured");
/// breaker.force_open();
/// assert_eq!(map.insert(1, 1).unwrap_err().code(), "CIRCUIT_OPEN");
/// breaker.close();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// map.insert(1, 1)?;
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
pub struct CircuitBreaker {
    map: Arc<str>,
    config: BreakerConfig,
    clock: Clock,
    /// `generation << 3 | state`: the only thing a call admitted while closed reads. On a
    /// cache line of its own, so that the locks and counters the breaker writes on events
    /// do not take that line away from the cores that read it on every operation.
    word: CachePadded<AtomicU64>,
    /// When the current open wait ends (clock nanos); read without the lock to reject.
    open_until: AtomicU64,
    /// The newest bucket of a time window, so that a timed call can see without the lock
    /// whether it must move the window.
    head: AtomicU64,
    /// The map's call counter (ok, slow and failed calls).
    counters: Arc<Counters>,
    inner: Mutex<Inner>,
    listeners: Vec<BreakerListener>,
    /// Events waiting for delivery, and whether a thread is delivering them.
    outbox: Mutex<VecDeque<BreakerEvent>>,
    draining: AtomicBool,
    /// This breaker, for the timer that ends open waits.
    me: Weak<CircuitBreaker>,
}

struct Inner {
    window: Window,
    /// Half-open bookkeeping.
    in_flight: u32,
    successes: u32,
    half_open_since: u64,
    /// Consecutive openings without a close (for backoff).
    openings: u32,
    rng: u64,
    transitions: u64,
}

/// A snapshot of the breaker for [`Stats`](crate::stats::Stats).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BreakerFigures {
    pub(crate) state: BreakerState,
    pub(crate) window: WindowFigures,
    pub(crate) transitions: u64,
}

const STATE_BITS: u64 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

impl CircuitBreaker {
    pub(crate) fn new(
        map: Arc<str>,
        config: BreakerConfig,
        clock: Clock,
        counters: Arc<Counters>,
        listeners: Vec<BreakerListener>,
    ) -> Arc<Self> {
        let mut window = Window::new(config.window);
        window.reset(clock.now_nanos(), counters.calls());
        let seed = RandomState::new().build_hasher().finish() | 1;
        Arc::new_cyclic(|me| CircuitBreaker {
            map,
            config,
            clock,
            word: CachePadded::new(AtomicU64::new(BreakerState::Closed.code())),
            open_until: AtomicU64::new(0),
            head: AtomicU64::new(window.head),
            counters,
            inner: Mutex::new(Inner {
                window,
                in_flight: 0,
                successes: 0,
                half_open_since: 0,
                openings: 0,
                rng: seed,
                transitions: 0,
            }),
            listeners,
            outbox: Mutex::new(VecDeque::new()),
            draining: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state. An open breaker whose wait is over reports (and becomes) half-open.
    pub fn state(&self) -> BreakerState {
        self.refresh();
        self.load().1
    }

    /// Forces the breaker open: every call is rejected until [`close`](Self::close). Each of
    /// these controls does nothing when the breaker is already in the state asked for.
    pub fn force_open(&self) {
        self.manual(BreakerState::ForcedOpen);
    }

    /// Disables the breaker: every call is admitted and nothing is recorded, until
    /// [`close`](Self::close).
    pub fn disable(&self) {
        self.manual(BreakerState::Disabled);
    }

    /// Makes the breaker record outcomes and rates without ever rejecting, until
    /// [`close`](Self::close).
    pub fn metrics_only(&self) {
        self.manual(BreakerState::MetricsOnly);
    }

    /// Closes the breaker, from any state, with an empty window; resets the open-wait backoff.
    pub fn close(&self) {
        self.manual(BreakerState::Closed);
    }

    #[inline]
    fn load(&self) -> (u64, BreakerState) {
        let w = self.word.load(Ordering::Acquire);
        (w >> STATE_BITS, BreakerState::from_code(w & STATE_MASK))
    }

    /// Whether calls pass without a probe or a clock reading (closed, disabled or
    /// metrics-only): the operation fast path's admission.
    #[inline(always)]
    pub(crate) fn passes_plainly(&self) -> bool {
        matches!(self.load().1, BreakerState::Closed | BreakerState::Disabled | BreakerState::MetricsOnly)
    }

    /// Whether a call may start. Reads no clock while closed, disabled or metrics-only.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        let (generation, state) = self.load();
        match state {
            BreakerState::Closed | BreakerState::Disabled | BreakerState::MetricsOnly => {
                Admission::Pass { generation, probe: false }
            }
            _ => self.admit_slow(),
        }
    }

    #[cold]
    fn admit_slow(&self) -> Admission {
        let now = self.clock.now_nanos();
        let (_, state) = self.load();
        if state == BreakerState::Open {
            let until = self.open_until.load(Ordering::Acquire);
            if now < until {
                return Admission::Reject { retry_after: Duration::from_nanos(until - now) };
            }
        }
        let admission = {
            let mut inner = self.inner.lock();
            self.refresh_locked(&mut inner, now);
            let (generation, state) = self.load();
            match state {
                BreakerState::Closed | BreakerState::Disabled | BreakerState::MetricsOnly => {
                    Admission::Pass { generation, probe: false }
                }
                BreakerState::HalfOpen if inner.in_flight < self.config.half_open_probes => {
                    inner.in_flight += 1;
                    Admission::Pass { generation, probe: true }
                }
                BreakerState::HalfOpen => {
                    let ends =
                        inner.half_open_since.saturating_add(duration_nanos(self.config.max_half_open_wait));
                    Admission::Reject { retry_after: Duration::from_nanos(ends.saturating_sub(now)) }
                }
                BreakerState::Open => Admission::Reject {
                    retry_after: Duration::from_nanos(
                        self.open_until.load(Ordering::Acquire).saturating_sub(now),
                    ),
                },
                BreakerState::ForcedOpen => Admission::Reject { retry_after: self.base_wait() },
            }
        };
        self.drain();
        admission
    }

    /// Records a rejection: a tracing event and the listeners.
    pub(crate) fn rejected(&self, op: crate::Op, retry_after: Duration) {
        let state = self.load().1;
        tracing::debug!(
            target: "map_wrapper::breaker",
            map = %self.map, op = op.as_str(), state = state.as_str(), retry_after_ms = retry_after.as_millis() as u64,
            "call rejected by the circuit breaker"
        );
        if self.listeners.is_empty() || IN_LISTENER.with(Cell::get) {
            return;
        }
        let seq = self.load().0;
        let event = BreakerEvent {
            map: self.map.clone(),
            at: Duration::from_nanos(self.clock.now_nanos()),
            seq,
            kind: BreakerEventKind::Rejected { op, state, retry_after },
        };
        self.outbox.lock().push_back(event);
        self.drain();
    }

    /// Reports the outcome of a probe, or of a slow or failed call, admitted in `generation`
    /// (ok calls that are not probes need no report: the map's call counter, which already
    /// includes this call, counts them). `now` is when the call ended, if it was timed.
    /// Returns `false` when the result was discarded as stale.
    pub(crate) fn report(&self, generation: u64, probe: bool, verdict: Verdict, now: Option<u64>) -> bool {
        let current = {
            let mut inner = self.inner.lock();
            let now = now.unwrap_or_else(|| self.clock.now_nanos());
            // No time-driven move here: a result is only compared with the generation it was
            // admitted in, and a probe that reports is not stuck.
            let (current_gen, state) = self.load();
            let current = current_gen == generation;
            if current {
                match (state, probe) {
                    (BreakerState::HalfOpen, true) => {
                        inner.in_flight = inner.in_flight.saturating_sub(1);
                        match verdict {
                            Verdict::Ok => {
                                inner.successes += 1;
                                if inner.successes >= self.config.success_quota {
                                    let c = self.counters.calls();
                                    self.transition(
                                        &mut inner,
                                        BreakerState::Closed,
                                        TransitionCause::SuccessQuotaReached,
                                        now,
                                        c,
                                    );
                                }
                            }
                            Verdict::Slow { .. } | Verdict::Failed { .. } => {
                                let c = self.counters.calls();
                                self.transition(
                                    &mut inner,
                                    BreakerState::Open,
                                    TransitionCause::ProbeFailed,
                                    now,
                                    c,
                                );
                            }
                            Verdict::Ignored => {}
                        }
                    }
                    (BreakerState::Closed | BreakerState::MetricsOnly, false) => {
                        let c = self.counters.calls();
                        inner.window.advance(now, c, true);
                        self.head.store(inner.window.head, Ordering::Relaxed);
                        inner.window.record(verdict);
                        if state == BreakerState::Closed {
                            if let Some(cause) = self.should_trip(&inner.window.figures(c)) {
                                self.transition(&mut inner, BreakerState::Open, cause, now, c);
                            }
                        }
                    }
                    _ => {}
                }
            }
            current
        };
        self.drain();
        current
    }

    /// Lets a timed call move a time window forward without taking the lock when it has not
    /// crossed into a new bucket.
    #[inline]
    pub(crate) fn tick(&self, now: u64) {
        let SlidingWindow::Time { span, buckets } = self.config.window else { return };
        let bucket = duration_nanos(span) / u64::from(buckets);
        if now / bucket <= self.head.load(Ordering::Relaxed) {
            return;
        }
        let state = self.load().1;
        if !matches!(state, BreakerState::Closed | BreakerState::MetricsOnly) {
            return;
        }
        let mut inner = self.inner.lock();
        let c = self.counters.calls();
        inner.window.advance(now, c, true);
        self.head.store(inner.window.head, Ordering::Relaxed);
    }

    /// The figures for statistics.
    pub(crate) fn figures(&self) -> BreakerFigures {
        self.refresh();
        let mut inner = self.inner.lock();
        let (_, state) = self.load();
        let calls = self.counters.calls();
        if matches!(state, BreakerState::Closed | BreakerState::MetricsOnly) {
            inner.window.advance(self.clock.now_nanos(), calls, false);
            self.head.store(inner.window.head, Ordering::Relaxed);
        }
        BreakerFigures { state, window: inner.window.figures(calls), transitions: inner.transitions }
    }

    fn should_trip(&self, f: &WindowFigures) -> Option<TransitionCause> {
        if f.calls < u64::from(self.config.minimum_calls) {
            return None;
        }
        let reached = |threshold: Option<f64>, rate: f64| threshold.is_some_and(|t| rate >= t);
        if reached(self.config.failure_rate, f.failure_rate()) {
            return Some(TransitionCause::FailureRate(f.failure_rate()));
        }
        if reached(self.config.slow_rate, f.slow_rate()) {
            return Some(TransitionCause::SlowRate(f.slow_rate()));
        }
        if reached(self.config.combined_rate, f.combined_rate()) {
            return Some(TransitionCause::CombinedRate(f.combined_rate()));
        }
        None
    }

    /// Applies the time-driven transitions (open wait over, half-open timed out).
    fn refresh(&self) {
        let (_, state) = self.load();
        if !matches!(state, BreakerState::Open | BreakerState::HalfOpen) {
            return;
        }
        {
            let mut inner = self.inner.lock();
            let now = self.clock.now_nanos();
            self.refresh_locked(&mut inner, now);
        }
        self.drain();
    }

    fn refresh_locked(&self, inner: &mut Inner, now: u64) {
        let (_, state) = self.load();
        match state {
            BreakerState::Open => {
                let until = self.open_until.load(Ordering::Acquire);
                if now >= until {
                    // The event is dated when the wait ended, not when it was noticed; the
                    // half-open period starts now, when probes can first arrive.
                    self.transition(
                        inner,
                        BreakerState::HalfOpen,
                        TransitionCause::OpenWaitElapsed,
                        until,
                        0,
                    );
                    inner.half_open_since = now;
                }
            }
            BreakerState::HalfOpen => {
                let ends =
                    inner.half_open_since.saturating_add(duration_nanos(self.config.max_half_open_wait));
                // Stuck means probes were let through and have not reported; an idle half-open
                // breaker just waits for its next call.
                if now >= ends && inner.in_flight > 0 {
                    let c = self.counters.calls();
                    self.transition(inner, BreakerState::Open, TransitionCause::HalfOpenTimedOut, now, c);
                }
            }
            _ => {}
        }
    }

    fn manual(&self, to: BreakerState) {
        {
            let mut inner = self.inner.lock();
            if to == BreakerState::Closed {
                inner.openings = 0;
            }
            // Asking for the state it is in changes nothing (and sends no event).
            if self.load().1 != to {
                let now = self.clock.now_nanos();
                let calls = self.counters.calls();
                self.transition(&mut inner, to, TransitionCause::Manual, now, calls);
            }
        }
        self.drain();
    }

    fn base_wait(&self) -> Duration {
        match self.config.open_wait {
            OpenWait::Fixed(d) => d,
            OpenWait::Exponential { initial, .. } => initial,
        }
    }

    fn open_wait(&self, inner: &mut Inner) -> u64 {
        let n = inner.openings;
        inner.openings = inner.openings.saturating_add(1);
        match self.config.open_wait {
            OpenWait::Fixed(d) => duration_nanos(d),
            OpenWait::Exponential { initial, multiplier, max, jitter } => {
                let exp = multiplier.powi(n.min(1000) as i32);
                let base = (initial.as_secs_f64() * exp).min(max.as_secs_f64());
                // xorshift64*: a uniform factor in [-1, 1).
                let mut x = inner.rng;
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                inner.rng = x;
                let u = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
                let factor = 1.0 + jitter * (2.0 * u - 1.0);
                // Saturates instead of panicking on waits beyond `Duration::MAX`.
                duration_nanos(
                    Duration::try_from_secs_f64((base * factor).max(1e-9)).unwrap_or(Duration::MAX),
                )
            }
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, cause: TransitionCause, now: u64, calls: u64) {
        let (generation, from) = self.load();
        let next = generation.wrapping_add(1) & (u64::MAX >> STATE_BITS);
        match to {
            BreakerState::Open => {
                let wait = self.open_wait(inner);
                let until = now.saturating_add(wait);
                self.open_until.store(until, Ordering::Release);
                if let Some(at) = self.clock.instant_at(until) {
                    timer::schedule(at, self.me.clone());
                }
            }
            BreakerState::HalfOpen => {
                inner.in_flight = 0;
                inner.successes = 0;
                inner.half_open_since = now;
            }
            BreakerState::Closed | BreakerState::MetricsOnly => {
                if to == BreakerState::Closed && cause != TransitionCause::Manual {
                    inner.openings = 0;
                }
                inner.window.reset(now, calls);
                self.head.store(inner.window.head, Ordering::Relaxed);
            }
            BreakerState::ForcedOpen | BreakerState::Disabled => {}
        }
        self.word.store(next << STATE_BITS | to.code(), Ordering::Release);
        inner.transitions += 1;
        // Queued under the breaker's lock, so the queue is in the order of the changes.
        self.outbox.lock().push_back(BreakerEvent {
            map: self.map.clone(),
            at: Duration::from_nanos(now),
            seq: next,
            kind: BreakerEventKind::StateChanged { from, to, cause },
        });
    }

    /// Delivers queued events, in order, with no lock held. One thread delivers at a time: a
    /// thread that finds another one delivering leaves its events to it, and a listener that
    /// causes an event (by using the map) sees it after it returns, not nested inside itself.
    fn drain(&self) {
        loop {
            if self.draining.swap(true, Ordering::Acquire) {
                return;
            }
            struct Done<'a>(&'a AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let done = Done(&self.draining);
            loop {
                let next = self.outbox.lock().pop_front();
                match next {
                    Some(event) => self.deliver(&event),
                    None => break,
                }
            }
            drop(done);
            // An event queued between the last look and the store above would wait for the
            // next one: look again.
            if self.outbox.lock().is_empty() {
                return;
            }
        }
    }

    /// Logs one event and hands it to the listeners.
    fn deliver(&self, event: &BreakerEvent) {
        if let BreakerEventKind::StateChanged { from, to, cause } = &event.kind {
            tracing::warn!(
                target: "map_wrapper::breaker",
                map = %self.map, from = from.as_str(), to = to.as_str(), cause = ?cause, seq = event.seq,
                "circuit breaker changed state"
            );
            #[cfg(feature = "metrics")]
            crate::stats::metrics_breaker_state(&self.map, *to);
        }
        call_listeners(&self.map, &self.listeners, event);
    }
}

/// Ends open waits on time: one thread for the process, started when a breaker first opens,
/// sleeping until the earliest open wait ends and then moving that breaker to half-open (which
/// sends its event). It holds breakers weakly, so a dropped map is simply skipped. Breakers on
/// a test clock are not scheduled: the test moves time, and the next look moves the state.
mod timer {
    use std::cmp::Ordering as CmpOrdering;
    use std::collections::BinaryHeap;
    use std::sync::{OnceLock, Weak};
    use std::time::Instant;

    use parking_lot::{Condvar, Mutex};

    use super::CircuitBreaker;

    struct Due {
        at: Instant,
        breaker: Weak<CircuitBreaker>,
    }

    impl PartialEq for Due {
        fn eq(&self, other: &Self) -> bool {
            self.at == other.at
        }
    }
    impl Eq for Due {}
    impl PartialOrd for Due {
        fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Due {
        /// Reversed: the heap's top is the earliest.
        fn cmp(&self, other: &Self) -> CmpOrdering {
            other.at.cmp(&self.at)
        }
    }

    struct Timer {
        queue: Mutex<BinaryHeap<Due>>,
        wake: Condvar,
    }

    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();

    fn timer() -> Option<&'static Timer> {
        *TIMER.get_or_init(|| {
            let t: &'static Timer =
                Box::leak(Box::new(Timer { queue: Mutex::new(BinaryHeap::new()), wake: Condvar::new() }));
            let spawned =
                std::thread::Builder::new().name("map-wrapper-breaker-timer".into()).spawn(move || run(t));
            match spawned {
                Ok(_) => Some(t),
                Err(e) => {
                    // Without the thread the state still moves at the next look (an admission or
                    // a stats read); only the event comes later.
                    tracing::warn!(target: "map_wrapper::breaker", error = %e, "no breaker timer thread");
                    None
                }
            }
        })
    }

    pub(super) fn schedule(at: Instant, breaker: Weak<CircuitBreaker>) {
        if let Some(t) = timer() {
            t.queue.lock().push(Due { at, breaker });
            t.wake.notify_one();
        }
    }

    fn run(t: &'static Timer) {
        loop {
            let due = {
                let mut q = t.queue.lock();
                loop {
                    match q.peek().map(|d| d.at) {
                        None => t.wake.wait(&mut q),
                        Some(at) if at <= Instant::now() => break q.pop(),
                        Some(at) => {
                            t.wake.wait_until(&mut q, at);
                        }
                    }
                }
            };
            if let Some(b) = due.and_then(|d| d.breaker.upgrade()) {
                // A panicking listener must not stop the timer for every other breaker.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.refresh()));
            }
        }
    }
}

thread_local! {
    // Set while this thread runs a listener: a listener that uses the map while the breaker is
    // open would otherwise be told of its own rejections, and recurse without end.
    static IN_LISTENER: Cell<bool> = const { Cell::new(false) };
}

/// Calls each listener; a listener that panics is logged and does not stop the others, nor
/// fail the map operation that happened to deliver the event.
fn call_listeners(map: &str, listeners: &[BreakerListener], event: &BreakerEvent) {
    if listeners.is_empty() {
        return;
    }
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_LISTENER.with(|f| f.set(self.0));
        }
    }
    let _restore = Restore(IN_LISTENER.with(|f| f.replace(true)));
    for l in listeners {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l(event))).is_err() {
            tracing::error!(target: "map_wrapper::breaker", map, seq = event.seq, "a breaker listener panicked");
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("map", &self.map)
            .field("state", &self.load().1)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_rule_fails_timeouts_and_deadlocks_and_weighs_sampled_slow_calls() {
        let v = |e| Verdict::of(e, 100, 64);
        assert_eq!(v(Ended::TimedOut), Verdict::Failed { slow: true });
        assert_eq!(v(Ended::WouldDeadlock), Verdict::Failed { slow: false });
        for e in [Ended::NotStarted, Ended::Cancelled, Ended::Expired, Ended::Panicked] {
            assert_eq!(v(e), Verdict::Ignored, "{e:?}");
        }
        assert_eq!(v(Ended::Completed { took: Some(101) }), Verdict::Slow { weight: 64 });
        assert_eq!(v(Ended::Completed { took: Some(100) }), Verdict::Ok);
        assert_eq!(v(Ended::Completed { took: None }), Verdict::Ok);
    }
    use crate::clock::TestClock;

    const S: Duration = Duration::from_secs(1);

    /// A breaker without a map: calls are admitted, counted and reported as the map does,
    /// every call timed (a map with latency sampling 1).
    struct Rig {
        b: Arc<CircuitBreaker>,
        counters: Arc<Counters>,
        clock: TestClock,
        events: Arc<Mutex<Vec<BreakerEvent>>>,
    }

    impl Rig {
        fn new(config: BreakerConfig) -> Rig {
            config.validate().expect("valid test config");
            let clock = TestClock::new();
            let counters = Arc::new(Counters::new());
            let events = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&events);
            let listener: BreakerListener = Arc::new(move |e: &BreakerEvent| log.lock().push(e.clone()));
            let b = CircuitBreaker::new(
                Arc::from("rig"),
                config,
                Clock::from(clock.clone()),
                Arc::clone(&counters),
                vec![listener],
            );
            Rig { b, counters, clock, events }
        }

        /// Admits one call; `Ok(admission)` to finish later, `Err(retry_after)` if rejected.
        fn start(&self) -> Result<Admission, Duration> {
            match self.b.admit() {
                a @ Admission::Pass { .. } => Ok(a),
                Admission::Reject { retry_after } => Err(retry_after),
            }
        }

        /// Finishes an admitted call; returns whether its result counted (not stale).
        fn end(&self, a: Admission, v: Verdict) -> bool {
            let Admission::Pass { generation, probe } = a else { panic!("not admitted") };
            if v != Verdict::Ignored {
                self.counters.count_call();
            }
            let now = self.clock.elapsed().as_nanos() as u64;
            if probe || matches!(v, Verdict::Slow { .. } | Verdict::Failed { .. }) {
                self.b.report(generation, probe, v, Some(now))
            } else {
                self.b.tick(now);
                true
            }
        }

        fn call(&self, v: Verdict) -> Result<(), Duration> {
            let a = self.start()?;
            self.end(a, v);
            Ok(())
        }

        fn calls(&self, n: usize, v: Verdict) {
            for _ in 0..n {
                self.call(v).expect("admitted");
            }
        }

        fn state(&self) -> BreakerState {
            self.b.state()
        }

        /// The state changes so far, as (from, to, cause).
        fn changes(&self) -> Vec<(BreakerState, BreakerState, TransitionCause)> {
            self.events
                .lock()
                .iter()
                .filter_map(|e| match e.kind {
                    BreakerEventKind::StateChanged { from, to, cause } => Some((from, to, cause)),
                    _ => None,
                })
                .collect()
        }

        fn trip(&self) {
            self.b.force_open();
            self.b.close();
            while self.state() == BreakerState::Closed {
                self.call(FAIL).unwrap();
            }
            assert_eq!(self.state(), BreakerState::Open);
        }
    }

    const OK: Verdict = Verdict::Ok;
    const FAIL: Verdict = Verdict::Failed { slow: false };
    const SLOW: Verdict = Verdict::Slow { weight: 1 };
    const TIMEOUT: Verdict = Verdict::Failed { slow: true };

    fn count(calls: u32) -> BreakerConfig {
        BreakerConfig::new()
            .window(SlidingWindow::count(calls))
            .minimum_calls(calls)
            .combined_rate(None)
            .open_wait(OpenWait::Fixed(S))
    }

    #[test]
    fn trips_on_failure_rate_once_minimum_calls_are_in() {
        let r = Rig::new(count(10).failure_rate(0.5));
        r.calls(5, OK);
        r.calls(4, FAIL);
        assert_eq!(r.state(), BreakerState::Closed, "9 calls: below the minimum");
        r.call(FAIL).unwrap();
        assert_eq!(r.state(), BreakerState::Open);
        assert_eq!(
            r.changes(),
            vec![(BreakerState::Closed, BreakerState::Open, TransitionCause::FailureRate(0.5))]
        );
    }

    #[test]
    fn does_not_trip_before_minimum_calls_even_when_all_fail() {
        let r = Rig::new(count(20).minimum_calls(10).failure_rate(0.5));
        r.calls(9, FAIL);
        assert_eq!(r.state(), BreakerState::Closed);
        r.call(FAIL).unwrap();
        assert_eq!(r.state(), BreakerState::Open);
    }

    #[test]
    fn trips_on_slow_rate_and_counts_a_timeout_as_slow() {
        let r = Rig::new(count(10).slow_rate(0.6));
        r.calls(4, OK);
        r.calls(5, SLOW);
        r.call(FAIL).unwrap(); // failed but not slow: 5/10 slow
        assert_eq!(r.state(), BreakerState::Closed);
        r.call(TIMEOUT).unwrap(); // the window drops the first ok: 6 slow of 10
        assert_eq!(r.changes()[0].2, TransitionCause::SlowRate(0.6));
    }

    #[test]
    fn trips_on_combined_rate() {
        let r = Rig::new(count(10).failure_rate(0.9).slow_rate(0.9).combined_rate(0.6));
        r.calls(4, OK);
        r.calls(3, SLOW);
        r.calls(2, FAIL);
        assert_eq!(r.state(), BreakerState::Closed);
        r.call(FAIL).unwrap();
        assert_eq!(r.changes()[0].2, TransitionCause::CombinedRate(0.6));
    }

    #[test]
    fn a_sampled_slow_call_weighs_for_the_calls_it_stands_for() {
        let r = Rig::new(count(100).minimum_calls(10).slow_rate(0.5));
        r.calls(60, OK);
        r.call(Verdict::Slow { weight: 64 }).unwrap();
        assert_eq!(r.state(), BreakerState::Open);
    }

    #[test]
    fn count_window_forgets_calls_older_than_its_size() {
        let r = Rig::new(count(10).failure_rate(0.5));
        r.calls(5, FAIL); // 5 calls: below the minimum
        r.calls(20, OK);
        r.calls(4, FAIL);
        assert_eq!(r.state(), BreakerState::Closed, "only 4 of the last 10 failed");
        r.call(FAIL).unwrap();
        assert_eq!(r.state(), BreakerState::Open);
    }

    #[test]
    fn time_window_forgets_buckets_older_than_its_span() {
        let config = count(5)
            .window(SlidingWindow::Time { span: Duration::from_secs(10), buckets: 10 })
            .minimum_calls(5)
            .failure_rate(0.5);
        let r = Rig::new(config);
        r.calls(4, FAIL);
        r.clock.advance(Duration::from_secs(11));
        r.calls(2, OK);
        r.call(FAIL).unwrap();
        assert_eq!(r.state(), BreakerState::Closed, "the 4 old failures left the window");
        assert_eq!(r.b.figures().window.calls, 3);
        r.call(FAIL).unwrap();
        assert_eq!(r.state(), BreakerState::Closed, "4 calls: below the minimum");
        r.call(FAIL).unwrap();
        assert_eq!(r.state(), BreakerState::Open, "3 of 5 failed");
    }

    #[test]
    fn open_rejects_until_the_wait_is_over_then_reports_half_open_without_traffic() {
        let r = Rig::new(count(4).failure_rate(0.5));
        r.calls(4, FAIL);
        assert_eq!(r.start(), Err(S));
        r.clock.advance(Duration::from_millis(400));
        assert_eq!(r.start(), Err(Duration::from_millis(600)));
        r.clock.advance(Duration::from_millis(700));
        // No call: reading the state moves it on, and the event is dated at the end of the wait.
        assert_eq!(r.state(), BreakerState::HalfOpen);
        let events = r.events.lock().clone();
        let last = events.last().unwrap();
        assert_eq!(last.at, S);
        assert_eq!(
            last.kind,
            BreakerEventKind::StateChanged {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
                cause: TransitionCause::OpenWaitElapsed
            }
        );
        let rejections =
            events.iter().filter(|e| matches!(e.kind, BreakerEventKind::Rejected { .. })).count();
        assert_eq!(rejections, 0, "the rig's rejections are not reported by admit itself");
    }

    #[test]
    fn half_open_caps_probes_and_closes_after_the_success_quota() {
        let r = Rig::new(count(4).failure_rate(0.5).half_open_probes(2).success_quota(3));
        r.trip();
        r.clock.advance(S);
        let p1 = r.start().unwrap();
        let p2 = r.start().unwrap();
        assert!(matches!(p1, Admission::Pass { probe: true, .. }));
        assert!(r.start().is_err(), "a third concurrent probe is rejected");
        assert!(r.end(p1, OK));
        let p3 = r.start().unwrap();
        assert!(r.end(p2, OK));
        assert_eq!(r.state(), BreakerState::HalfOpen, "2 of 3 successes");
        assert!(r.end(p3, OK));
        assert_eq!(r.state(), BreakerState::Closed);
        let changes = r.changes();
        assert_eq!(
            changes[changes.len() - 1],
            (BreakerState::HalfOpen, BreakerState::Closed, TransitionCause::SuccessQuotaReached)
        );
        // A fresh window: the failures before the close are gone.
        assert_eq!(r.b.figures().window, WindowFigures::default());
    }

    #[test]
    fn half_open_ignores_cancelled_probes_and_reopens_on_a_slow_one() {
        let r = Rig::new(count(4).failure_rate(0.5).half_open_probes(1).success_quota(2));
        r.trip();
        r.clock.advance(S);
        let p = r.start().unwrap();
        assert!(r.end(p, Verdict::Ignored));
        assert_eq!(r.state(), BreakerState::HalfOpen);
        let p = r.start().unwrap(); // the slot was given back
        r.end(p, SLOW);
        assert_eq!(r.state(), BreakerState::Open);
        assert_eq!(r.changes().last().unwrap().2, TransitionCause::ProbeFailed);
    }

    #[test]
    fn exponential_backoff_grows_to_its_cap_and_resets_on_close() {
        let wait = OpenWait::Exponential { initial: S, multiplier: 2.0, max: 5 * S, jitter: 0.0 };
        let r = Rig::new(count(4).failure_rate(0.5).open_wait(wait).half_open_probes(1).success_quota(1));
        r.calls(4, FAIL);
        let mut waits = Vec::new();
        for _ in 0..4 {
            let retry = r.start().unwrap_err();
            waits.push(retry);
            r.clock.advance(retry);
            let probe = r.start().unwrap();
            r.end(probe, FAIL);
        }
        assert_eq!(waits, vec![S, 2 * S, 4 * S, 5 * S]);
        let retry = r.start().unwrap_err();
        r.clock.advance(retry);
        let probe = r.start().unwrap();
        r.end(probe, OK);
        assert_eq!(r.state(), BreakerState::Closed);
        r.calls(4, FAIL);
        assert_eq!(r.start(), Err(S), "a close resets the backoff");
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let wait = OpenWait::Exponential { initial: 10 * S, multiplier: 1.0, max: 10 * S, jitter: 0.5 };
        let r = Rig::new(count(4).failure_rate(0.5).open_wait(wait).half_open_probes(1).success_quota(1));
        r.calls(4, FAIL);
        let mut seen = Vec::new();
        for _ in 0..20 {
            let retry = r.start().unwrap_err();
            assert!(retry >= 5 * S && retry <= 15 * S, "{retry:?}");
            seen.push(retry);
            r.clock.advance(retry);
            let probe = r.start().unwrap();
            r.end(probe, FAIL);
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 10, "{seen:?}");
    }

    #[test]
    fn stuck_half_open_reopens_after_its_max_wait_and_late_probes_are_stale() {
        let r = Rig::new(
            count(4).failure_rate(0.5).half_open_probes(2).success_quota(2).max_half_open_wait(10 * S),
        );
        r.trip();
        r.clock.advance(S);
        let stuck1 = r.start().unwrap();
        let stuck2 = r.start().unwrap();
        assert!(r.start().is_err());
        r.clock.advance(10 * S);
        assert_eq!(r.state(), BreakerState::Open);
        assert_eq!(r.changes().last().unwrap().2, TransitionCause::HalfOpenTimedOut);
        r.clock.advance(S);
        let fresh = r.start().unwrap();
        assert!(!r.end(stuck1, OK), "a probe of the old half-open is stale");
        assert!(!r.end(stuck2, OK));
        assert_eq!(r.state(), BreakerState::HalfOpen, "stale successes do not count");
        assert!(r.end(fresh, OK));
        let again = r.start().unwrap();
        assert!(r.end(again, OK));
        assert_eq!(r.state(), BreakerState::Closed);
    }

    #[test]
    fn idle_half_open_waits_for_traffic_instead_of_reopening() {
        let r =
            Rig::new(count(4).failure_rate(0.5).half_open_probes(1).success_quota(1).max_half_open_wait(S));
        r.trip();
        r.clock.advance(S);
        assert_eq!(r.state(), BreakerState::HalfOpen);
        r.clock.advance(100 * S);
        assert_eq!(r.state(), BreakerState::HalfOpen, "no probe is out: nothing is stuck");
        r.call(OK).unwrap();
        assert_eq!(r.state(), BreakerState::Closed);
    }

    #[test]
    fn results_of_calls_started_before_a_state_change_are_discarded() {
        let r = Rig::new(count(4).failure_rate(0.5).half_open_probes(1).success_quota(1));
        let old = r.start().unwrap();
        r.calls(4, FAIL);
        assert_eq!(r.state(), BreakerState::Open);
        r.clock.advance(S);
        let probe = r.start().unwrap();
        r.end(probe, OK);
        assert_eq!(r.state(), BreakerState::Closed);
        assert!(!r.end(old, FAIL), "started before the breaker opened");
        assert_eq!(r.b.figures().window.failed, 0);
    }

    #[test]
    fn forced_open_rejects_until_closed_whatever_the_time() {
        let r = Rig::new(count(4).failure_rate(0.5));
        r.b.force_open();
        r.clock.advance(1000 * S);
        assert_eq!(r.state(), BreakerState::ForcedOpen);
        assert!(r.start().is_err());
        r.b.close();
        r.call(OK).unwrap();
        assert_eq!(
            r.changes(),
            vec![
                (BreakerState::Closed, BreakerState::ForcedOpen, TransitionCause::Manual),
                (BreakerState::ForcedOpen, BreakerState::Closed, TransitionCause::Manual),
            ]
        );
    }

    #[test]
    fn disabled_admits_and_records_nothing() {
        let r = Rig::new(count(4).failure_rate(0.5));
        r.b.disable();
        r.calls(50, FAIL);
        assert_eq!(r.state(), BreakerState::Disabled);
        assert_eq!(r.b.figures().window.failed, 0);
    }

    #[test]
    fn metrics_only_records_rates_but_never_rejects() {
        let r = Rig::new(count(4).failure_rate(0.5));
        r.b.metrics_only();
        r.calls(4, FAIL);
        assert_eq!(r.state(), BreakerState::MetricsOnly);
        let f = r.b.figures().window;
        assert_eq!((f.calls, f.failed), (4, 4));
        assert_eq!(f.failure_rate(), 1.0);
        r.b.close();
        r.calls(4, FAIL);
        assert_eq!(r.state(), BreakerState::Open, "closed again, it trips");
    }

    #[test]
    fn half_open_cap_holds_under_concurrent_admission() {
        for _ in 0..20 {
            let r = Arc::new(Rig::new(count(4).failure_rate(0.5).half_open_probes(3).success_quota(100)));
            r.trip();
            r.clock.advance(S);
            let barrier = Arc::new(std::sync::Barrier::new(16));
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let (r, barrier) = (Arc::clone(&r), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        r.start().is_ok()
                    })
                })
                .collect();
            let admitted =
                handles.into_iter().filter(|_| true).map(|h| h.join().unwrap()).filter(|&ok| ok).count();
            assert_eq!(admitted, 3);
        }
    }

    #[test]
    fn extreme_but_valid_settings_saturate_instead_of_panicking() {
        let wait = OpenWait::Exponential { initial: S, multiplier: 1e300, max: Duration::MAX, jitter: 0.99 };
        let r = Rig::new(count(1).minimum_calls(1).failure_rate(1.0).open_wait(wait).half_open_probes(1));
        r.call(FAIL).unwrap();
        let first = r.start().unwrap_err();
        r.clock.advance(first);
        let probe = r.start().unwrap();
        r.end(probe, FAIL);
        let second = r.start();
        assert!(matches!(second, Err(d) if d > Duration::from_secs(1 << 30)), "{first:?} then {second:?}");
        let time =
            BreakerConfig::new().window(SlidingWindow::Time { span: Duration::MAX, buckets: MAX_BUCKETS });
        let r = Rig::new(time.minimum_calls(1).failure_rate(1.0));
        r.clock.advance(Duration::from_secs(1 << 30));
        r.call(FAIL).unwrap();
        assert_eq!(r.state(), BreakerState::Open);
    }

    #[test]
    fn invalid_configurations_name_their_field() {
        let field = |c: BreakerConfig| match c.validate() {
            Err(e) => e.field(),
            Ok(_) => panic!("expected a BuildError"),
        };
        assert_eq!(field(BreakerConfig::new().window(SlidingWindow::count(0))), "breaker.window");
        assert_eq!(
            field(BreakerConfig::new().window(SlidingWindow::Time { span: S, buckets: 0 })),
            "breaker.window"
        );
        assert_eq!(
            field(
                BreakerConfig::new()
                    .window(SlidingWindow::Time { span: Duration::from_micros(5), buckets: 10 })
            ),
            "breaker.window"
        );
        assert_eq!(field(BreakerConfig::new().minimum_calls(0)), "breaker.minimum_calls");
        assert_eq!(field(BreakerConfig::new().failure_rate(0.0)), "breaker.failure_rate");
        assert_eq!(field(BreakerConfig::new().slow_rate(f64::NAN)), "breaker.slow_rate");
        assert_eq!(field(BreakerConfig::new().combined_rate(1.01)), "breaker.combined_rate");
        assert_eq!(field(BreakerConfig::new().combined_rate(None)), "breaker.combined_rate");
        assert_eq!(
            field(BreakerConfig::new().open_wait(OpenWait::Fixed(Duration::ZERO))),
            "breaker.open_wait"
        );
        let exp =
            |initial, multiplier, max, jitter| OpenWait::Exponential { initial, multiplier, max, jitter };
        assert_eq!(field(BreakerConfig::new().open_wait(exp(S, 0.5, S, 0.0))), "breaker.open_wait");
        assert_eq!(field(BreakerConfig::new().open_wait(exp(S, 2.0, S / 2, 0.0))), "breaker.open_wait");
        assert_eq!(field(BreakerConfig::new().open_wait(exp(S, 2.0, S, 1.0))), "breaker.open_wait");
        assert_eq!(field(BreakerConfig::new().half_open_probes(0)), "breaker.half_open_probes");
        assert_eq!(field(BreakerConfig::new().success_quota(0)), "breaker.success_quota");
        assert_eq!(
            field(BreakerConfig::new().max_half_open_wait(Duration::ZERO)),
            "breaker.max_half_open_wait"
        );
        assert!(BreakerConfig::new().validate().is_ok());
    }
}
