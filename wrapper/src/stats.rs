//! What a map counts about its operations, and the per-operation observation that feeds both
//! the statistics and the circuit breaker.
//!
//! **Cost.** An uncontended operation must stay near 100 ns, and reading the clock costs about
//! 20 ns, so not every operation is timed:
//!
//! - every operation is *counted* (by kind and outcome) with one relaxed `fetch_add` on a
//!   counter striped by thread, so two threads do not share a cache line;
//! - an operation is *timed* (two clock reads) when it had to wait for a lock (the wait reads
//!   the clock anyway), when it is a half-open probe, and otherwise for 1 in
//!   [`Builder::latency_sampling`](crate::Builder::latency_sampling) operations of a thread on
//!   this map (default [`DEFAULT_LATENCY_SAMPLING`]; each map keeps its own count). A sampled slow operation counts for that many
//!   operations in the breaker's slow rate, so sampling does not bias the rate downwards.
//!
//! The latency histogram therefore holds the timed operations (with sampling 1, all of them);
//! its `count` says how many.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::breaker::{Admission, BreakerState, CircuitBreaker, Ended, Verdict};
use crate::clock::{duration_nanos, Clock};
use crate::{MapError, Op};

/// By default, 1 in this many uncontended operations of a thread on a map is timed.
pub const DEFAULT_LATENCY_SAMPLING: u32 = 64;

// ---------------------------------------------------------------------------------------------
// Kinds and outcomes.
// ---------------------------------------------------------------------------------------------

/// The number of counter rows: one per [`Op`].
const KINDS: usize = Op::ALL.len();

/// Where one finished operation is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Slot {
    Ok = 0,
    Slow,
    Timeout,
    WouldDeadlock,
    Cancelled,
    /// The caller's absolute deadline had passed before the operation started.
    Expired,
    /// A closure given by the caller panicked.
    Panicked,
    Rejected,
}
const SLOTS: usize = 8;

/// Slots the breaker counts as calls (ok, slow, failed).
const COUNTED: [Slot; 4] = [Slot::Ok, Slot::Slow, Slot::Timeout, Slot::WouldDeadlock];

const STRIPES: usize = 8;

/// The operation counters: kinds × slots, striped by thread.
pub(crate) struct Counters {
    /// Inline (the counters live in one `Arc` allocation): one pointer less to follow on
    /// every operation.
    stripes: [CachePadded<Stripe>; STRIPES],
}

/// One stripe of a map's counters, used by the threads whose stripe index it has (one thread
/// each, unless more than [`STRIPES`] threads use the map).
struct Stripe {
    rows: [[AtomicU64; SLOTS]; KINDS],
    /// Operations until the next one sampled for timing, for this map: a countdown per thread
    /// shared by all maps would time one map and never another that the thread uses in turn.
    /// Threads sharing the stripe share it (a relaxed load and store: the sampling rate stays
    /// about one in N, and no count depends on it).
    countdown: AtomicU32,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            stripes: std::array::from_fn(|_| {
                CachePadded::new(Stripe {
                    rows: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
                    countdown: AtomicU32::new(0),
                })
            }),
        }
    }

    #[inline]
    fn add(&self, stripe: usize, kind: usize, slot: Slot) {
        self.row(stripe, kind)[slot as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of kind `kind` in stripe `stripe`.
    #[inline(always)]
    fn row(&self, stripe: usize, kind: usize) -> &[AtomicU64; SLOTS] {
        &self.stripes[stripe & (STRIPES - 1)].rows[kind.min(KINDS - 1)]
    }

    /// The sampling countdown of stripe `stripe`.
    #[inline(always)]
    fn countdown(&self, stripe: usize) -> &AtomicU32 {
        &self.stripes[stripe & (STRIPES - 1)].countdown
    }

    /// Whether the operation now starting on stripe `stripe` is the one in `every` timed.
    fn sampled(&self, stripe: usize, every: u32) -> bool {
        let countdown = self.countdown(stripe);
        let c = countdown.load(Ordering::Relaxed);
        countdown.store(c.checked_sub(1).unwrap_or(every - 1), Ordering::Relaxed);
        c == 0
    }

    fn get(&self, kind: usize, slot: Slot) -> u64 {
        self.stripes.iter().map(|s| s.rows[kind][slot as usize].load(Ordering::Relaxed)).sum()
    }

    /// Counts one ok call (for the breaker's tests, which drive it without a map).
    #[cfg(test)]
    pub(crate) fn count_call(&self) {
        self.add(0, 0, Slot::Ok);
    }

    /// Ok, slow and failed calls so far (what the breaker's windows count).
    pub(crate) fn calls(&self) -> u64 {
        let mut n = 0;
        for s in self.stripes.iter() {
            for k in s.rows.iter() {
                for slot in COUNTED {
                    n += k[slot as usize].load(Ordering::Relaxed);
                }
            }
        }
        n
    }
}

thread_local! {
    // This thread's counter stripe, assigned on its first operation (on the full path).
    static STRIPE: Cell<u32> = const { Cell::new(u32::MAX) };
}

static NEXT_STRIPE: AtomicU32 = AtomicU32::new(0);

/// This thread's stripe (assigned now if it has none).
#[inline]
fn local_stripe() -> usize {
    STRIPE
        .try_with(|stripe| {
            let mut s = stripe.get();
            if s == u32::MAX {
                s = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed);
                stripe.set(s);
            }
            s as usize
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Latency histogram.
// ---------------------------------------------------------------------------------------------

/// Log-linear buckets: 4 per power of two (at most 25 % above the true value), 1 ns to 584
/// years, updated with relaxed atomics.
const BUCKETS: usize = 252;

struct Histogram {
    /// The count is the sum of the buckets: one shared counter fewer to bump per sample.
    buckets: Box<[AtomicU64]>,
    /// Sum and maximum, written by every sample, on a line of their own: the monitor's other
    /// fields are read by every operation of every thread.
    totals: CachePadded<Totals>,
}

struct Totals {
    sum: AtomicU64,
    max: AtomicU64,
}

fn bucket_of(nanos: u64) -> usize {
    if nanos < 4 {
        return nanos as usize;
    }
    let msb = 63 - nanos.leading_zeros() as usize;
    let sub = ((nanos >> (msb - 2)) & 3) as usize;
    (msb - 1) * 4 + sub
}

/// The largest value that falls in bucket `idx`.
fn bucket_top(idx: usize) -> u64 {
    if idx < 4 {
        return idx as u64;
    }
    let msb = idx / 4 + 1;
    let sub = (idx % 4) as u64;
    let width = 1u64 << (msb - 2);
    ((4 + sub) << (msb - 2)).saturating_add(width - 1)
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            totals: CachePadded::new(Totals { sum: AtomicU64::new(0), max: AtomicU64::new(0) }),
        }
    }

    fn record(&self, nanos: u64) {
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        self.totals.sum.fetch_add(nanos, Ordering::Relaxed);
        // Most samples are not a new maximum: read before the read-modify-write, which would
        // take the line exclusively from the other cores that sample.
        if nanos > self.totals.max.load(Ordering::Relaxed) {
            self.totals.max.fetch_max(nanos, Ordering::Relaxed);
        }
    }

    fn summary(&self) -> LatencyStats {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let max = self.totals.max.load(Ordering::Relaxed);
        let quantile = |q: f64| -> Duration {
            if count == 0 {
                return Duration::ZERO;
            }
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_nanos(bucket_top(i).min(max));
                }
            }
            Duration::from_nanos(max)
        };
        let sum = self.totals.sum.load(Ordering::Relaxed);
        LatencyStats {
            count,
            mean: Duration::from_nanos(sum.checked_div(count).unwrap_or(0)),
            p50: quantile(0.50),
            p90: quantile(0.90),
            p99: quantile(0.99),
            max: Duration::from_nanos(max),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-operation observation.
// ---------------------------------------------------------------------------------------------

/// How an operation that failed in the lock layer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Timeout {
        waited: Duration,
    },
    /// The caller's absolute deadline had passed before the operation took a lock.
    Expired,
    WouldDeadlock,
    Cancelled,
    /// The breaker rejected the operation; its `retry_after` until the operation returns it.
    Rejected(Option<Duration>),
}

/// What the map observes about its operations: counters, latency, and the breaker.
pub(crate) struct Monitor {
    map: Arc<str>,
    clock: Clock,
    slow_threshold: u64,
    sample_every: u32,
    counters: Arc<Counters>,
    histogram: Histogram,
    stale: AtomicU64,
    breaker: Option<Arc<CircuitBreaker>>,
}

/// One operation on the fast path (see [`Monitor::quick`]): counted as ok (or panicked, if
/// dropped while the thread panics) when dropped, as [`Monitor::finish`] counts a plain one.
pub(crate) struct Counted<'a> {
    /// The counters of this operation's kind in this thread's stripe.
    row: &'a [AtomicU64; SLOTS],
}

/// Counts a fast-path operation that returned normally as ok. (Dropping the [`Counted`]
/// instead counts the same, but first asks whether the thread is panicking: that check is
/// left to the unwinding and early-return paths.)
#[inline(always)]
pub(crate) fn count_ok(counted: Option<Counted<'_>>) {
    if let Some(c) = counted {
        c.row[Slot::Ok as usize].fetch_add(1, Ordering::Relaxed);
        std::mem::forget(c);
    }
}

impl Drop for Counted<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        let slot = if std::thread::panicking() { Slot::Panicked } else { Slot::Ok };
        self.row[slot as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// One operation as the monitor sees it; lives in the operation's `Waiter`.
#[derive(Debug)]
pub(crate) struct Observation {
    generation: u64,
    /// When timing started (clock nanos), if the operation is timed.
    start: Option<u64>,
    failure: Option<Failure>,
    stripe: u8,
    kind: u8,
    probe: bool,
    sampled: bool,
    /// Set when the operation waited for a lock (timed from its first wait).
    contended: bool,
    /// Untimed, not a probe, no failure: the end of the operation is one counter increment.
    plain: bool,
}

impl Observation {
    /// Records how the operation failed.
    #[inline]
    pub(crate) fn fail(&mut self, failure: Failure) {
        self.failure = Some(failure);
        self.plain = false;
    }

    /// The breaker's rejection (its `retry_after`), the first time it is asked for.
    #[inline]
    pub(crate) fn take_rejection(&mut self) -> Option<Duration> {
        match &mut self.failure {
            Some(Failure::Rejected(r)) => r.take(),
            _ => None,
        }
    }
}

impl Monitor {
    pub(crate) fn new(
        map: Arc<str>,
        clock: Clock,
        slow_threshold: Duration,
        sample_every: u32,
        breaker: Option<(crate::breaker::BreakerConfig, Vec<crate::breaker::BreakerListener>)>,
    ) -> Self {
        let counters = Arc::new(Counters::new());
        let breaker = breaker.map(|(config, listeners)| {
            CircuitBreaker::new(map.clone(), config, clock.clone(), Arc::clone(&counters), listeners)
        });
        Monitor {
            map,
            clock,
            slow_threshold: duration_nanos(slow_threshold),
            sample_every: sample_every.max(1),
            counters,
            histogram: Histogram::new(),
            stale: AtomicU64::new(0),
            breaker,
        }
    }

    pub(crate) fn breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_deref()
    }

    /// The fast path's admission of operation `op`: `Some` when the operation needs nothing
    /// but a count (it is not sampled for timing and the breaker lets calls through plainly).
    /// The returned [`Counted`] counts it when dropped. `None`: the operation takes the full
    /// path ([`begin`](Self::begin)), and the sampling countdown is left for `begin` to move.
    #[inline(always)]
    pub(crate) fn quick(&self, op: Op) -> Option<Counted<'_>> {
        // The breaker first: a call it does not pass plainly must not take a turn of the
        // countdown here, as `begin` takes one for it.
        if self.breaker.as_deref().is_some_and(|b| !b.passes_plainly()) {
            return None;
        }
        // A thread's first operation goes to `begin`, which assigns its stripe.
        let stripe = STRIPE.try_with(Cell::get).ok().filter(|&s| s != u32::MAX)? as usize;
        // One stripe reference for both fields: read through `self` again after the store,
        // the counters' address would be loaded again.
        let st: &Stripe = &self.counters.stripes[stripe & (STRIPES - 1)];
        // Sampled (countdown 0): `begin` times it.
        let c = st.countdown.load(Ordering::Relaxed).checked_sub(1)?;
        st.countdown.store(c, Ordering::Relaxed);
        Some(Counted { row: &st.rows[op.index()] })
    }

    /// Drops a fast-path count without counting: the operation did not run on the fast path.
    /// Gives back the turn of the sampling countdown that [`quick`](Self::quick) took, since
    /// the full path ([`begin`](Self::begin)) takes its own: an operation is one turn,
    /// whichever path runs it.
    #[inline]
    pub(crate) fn discard(&self, counted: Counted<'_>) {
        std::mem::forget(counted);
        let stripe = STRIPE.try_with(Cell::get).unwrap_or(0) as usize;
        let countdown = self.counters.countdown(stripe);
        countdown.store(countdown.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Starts watching operation `op`; a rejection by the breaker is left in the observation.
    #[inline(always)]
    pub(crate) fn begin(&self, op: Op) -> Observation {
        let stripe = local_stripe();
        let sampled = self.counters.sampled(stripe, self.sample_every);
        let (generation, probe, rejected) = match self.breaker.as_deref().map(CircuitBreaker::admit) {
            None => (0, false, None),
            Some(Admission::Pass { generation, probe }) => (generation, probe, None),
            Some(Admission::Reject { retry_after }) => (0, false, Some(retry_after)),
        };
        let kind = op.index();
        let mut obs = Observation {
            generation,
            start: None,
            failure: rejected.map(|r| Failure::Rejected(Some(r))),
            stripe: (stripe & (STRIPES - 1)) as u8,
            kind: kind as u8,
            probe,
            sampled,
            contended: false,
            plain: rejected.is_none() && !probe && !sampled,
        };
        // A rejection is counted and reported when the operation hands it out (at its first
        // lock), not here: an operation that never needs a lock (`extend` of nothing) is not
        // refused.
        if sampled || probe {
            obs.start = Some(self.clock.now_nanos());
        }
        obs
    }

    /// The error for a rejected operation, counted and reported as it is handed out.
    #[cold]
    pub(crate) fn circuit_open(&self, op: Op, obs: &Observation, retry_after: Duration) -> MapError {
        self.counters.add(usize::from(obs.stripe), usize::from(obs.kind), Slot::Rejected);
        if let Some(b) = &self.breaker {
            b.rejected(op, retry_after);
        }
        MapError::circuit_open(&self.map, op, retry_after)
    }

    /// The operation is about to wait for a lock: time it from here if it is not timed yet.
    #[cold]
    pub(crate) fn contended(&self, obs: &mut Observation) {
        obs.contended = true;
        obs.plain = false;
        if obs.start.is_none() {
            obs.start = Some(self.clock.now_nanos());
        }
    }

    /// The operation is over: count it, time it, and tell the breaker.
    #[inline]
    pub(crate) fn finish(&self, obs: &Observation) {
        let (kind, stripe) = (usize::from(obs.kind), usize::from(obs.stripe));
        if obs.plain {
            // The fast path: untimed and fine.
            let slot = if std::thread::panicking() { Slot::Panicked } else { Slot::Ok };
            self.counters.add(stripe, kind, slot);
            return;
        }
        self.finish_slow(kind, obs);
    }

    #[cold]
    fn finish_slow(&self, kind: usize, obs: &Observation) {
        let mut now = None;
        let mut took_now = |start: u64| {
            let end = self.clock.now_nanos();
            now = Some(end);
            end.saturating_sub(start)
        };
        // How the call ended (and its latency, if timed); the breaker's rule gives the verdict.
        let (ended, latency) = match obs.failure {
            // Counted when the rejection was handed out.
            Some(Failure::Rejected(None)) => return,
            Some(Failure::Rejected(Some(_))) => (Ended::NotStarted, None),
            // Recorded at the deadline: the time it waited.
            Some(Failure::Timeout { waited }) => (Ended::TimedOut, Some(duration_nanos(waited))),
            Some(Failure::WouldDeadlock) => (Ended::WouldDeadlock, obs.start.map(&mut took_now)),
            Some(Failure::Cancelled) => (Ended::Cancelled, None),
            Some(Failure::Expired) => (Ended::Expired, None),
            None if std::thread::panicking() => (Ended::Panicked, None),
            None => {
                let took = obs.start.map(&mut took_now);
                (Ended::Completed { took }, took)
            }
        };
        // A sampled call stands for the calls not sampled between samples.
        let stands_for =
            if obs.contended || obs.probe || !obs.sampled { 1 } else { u64::from(self.sample_every) };
        let verdict = Verdict::of(ended, self.slow_threshold, stands_for);
        let slot = match ended {
            // Rejected, but it never asked for a lock: it did nothing, successfully.
            Ended::NotStarted => Slot::Ok,
            Ended::TimedOut => Slot::Timeout,
            Ended::WouldDeadlock => Slot::WouldDeadlock,
            Ended::Cancelled => Slot::Cancelled,
            Ended::Expired => Slot::Expired,
            Ended::Panicked => Slot::Panicked,
            Ended::Completed { .. } if matches!(verdict, Verdict::Slow { .. }) => Slot::Slow,
            Ended::Completed { .. } => Slot::Ok,
        };
        self.counters.add(usize::from(obs.stripe), kind, slot);
        if let Some(l) = latency {
            self.histogram.record(l);
        }
        let Some(b) = &self.breaker else { return };
        if obs.probe || matches!(verdict, Verdict::Slow { .. } | Verdict::Failed { .. }) {
            if !b.report(obs.generation, obs.probe, verdict, now) {
                self.stale.fetch_add(1, Ordering::Relaxed);
            }
        } else if let Some(now) = now {
            b.tick(now);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let mut ops = Vec::new();
        let mut total = OpStats::default();
        for (kind, name) in Op::ALL.iter().map(|o| o.as_str()).enumerate() {
            let get = |slot| self.counters.get(kind, slot);
            let s = OpStats {
                op: name,
                ok: get(Slot::Ok),
                slow: get(Slot::Slow),
                failed: get(Slot::Timeout) + get(Slot::WouldDeadlock),
                ignored: get(Slot::Cancelled) + get(Slot::Expired) + get(Slot::Panicked),
                rejected: get(Slot::Rejected),
            };
            total.ok += s.ok;
            total.slow += s.slow;
            total.failed += s.failed;
            total.ignored += s.ignored;
            total.rejected += s.rejected;
            if s != (OpStats { op: name, ..OpStats::default() }) {
                ops.push(s);
            }
        }
        total.op = "all";
        let sum = |slot| (0..KINDS).map(|k| self.counters.get(k, slot)).sum::<u64>();
        Stats {
            map: self.map.clone(),
            ops,
            total,
            timeouts: sum(Slot::Timeout),
            deadlines_exceeded: sum(Slot::Expired),
            cancellations: sum(Slot::Cancelled),
            would_deadlocks: sum(Slot::WouldDeadlock),
            panics: sum(Slot::Panicked),
            rejected: sum(Slot::Rejected),
            latency: self.histogram.summary(),
            stale_results: self.stale.load(Ordering::Relaxed),
            breaker: self.breaker.as_ref().map(|b| {
                let f = b.figures();
                BreakerStats {
                    state: f.state,
                    transitions: f.transitions,
                    window_calls: f.window.calls,
                    failure_rate: f.window.failure_rate(),
                    slow_rate: f.window.slow_rate(),
                    combined_rate: f.window.combined_rate(),
                }
            }),
            audit: None,
        }
    }
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("clock", &self.clock)
            .field("slow_threshold", &Duration::from_nanos(self.slow_threshold))
            .field("sample_every", &self.sample_every)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// The snapshot.
// ---------------------------------------------------------------------------------------------

/// A snapshot of a map's statistics; made by [`MapWrapper::stats`](crate::MapWrapper::stats).
///
/// Counters are read one by one while operations go on, so a snapshot taken under load is
/// not one instant; taken while the map is idle, it is exact.
///
/// More figures may be added (audit queue depth, records written, records per fsync), so the
/// struct is `#[non_exhaustive]`.
///
/// # Examples
///
/// ```
/// use map_wrapper::MapWrapper;
///
/// let map: MapWrapper<u32, u32> = MapWrapper::builder().latency_sampling(1).build()?;
/// map.insert(1, 1)?;
/// map.get_cloned(&1)?;
/// map.get_cloned(&2)?; // not found is an ok call
/// let stats = map.stats();
/// assert_eq!(stats.op("insert").unwrap().ok, 1);
/// assert_eq!(stats.op("get_cloned").unwrap().ok, 2);
/// assert_eq!(stats.total.ok, 3);
/// assert_eq!(stats.latency.count, 3); // sampling 1: every operation is timed
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The map's name.
    pub map: Arc<str>,
    /// Per operation kind that ran at least once (`insert`, `get`, …: [`Op::as_str`](crate::Op::as_str)).
    pub ops: Vec<OpStats>,
    /// All kinds together (`op` is `"all"`).
    pub total: OpStats,
    /// Operations that timed out waiting for a lock.
    pub timeouts: u64,
    /// Operations whose caller's deadline had passed before they started
    /// ([`ErrorKind::DeadlineExceeded`](crate::ErrorKind::DeadlineExceeded)); ignored by the breaker (not the map's doing).
    pub deadlines_exceeded: u64,
    /// Operations cancelled by their caller.
    pub cancellations: u64,
    /// Operations refused because they would have deadlocked.
    pub would_deadlocks: u64,
    /// Operations during which a caller's closure panicked.
    pub panics: u64,
    /// Operations rejected by the circuit breaker.
    pub rejected: u64,
    /// Latency of the timed operations (see the module notes on sampling).
    pub latency: LatencyStats,
    /// Results the breaker discarded because its state changed while the call ran.
    pub stale_results: u64,
    /// The circuit breaker, if the map has one.
    pub breaker: Option<BreakerStats>,
    /// The audit trail, if the map is audited (filled in even when statistics are off).
    pub audit: Option<crate::audit::AuditStats>,
}

impl Stats {
    /// All zero: a map without statistics.
    pub(crate) fn empty(map: Arc<str>) -> Self {
        Stats {
            map,
            ops: Vec::new(),
            total: OpStats { op: "all", ..OpStats::default() },
            timeouts: 0,
            deadlines_exceeded: 0,
            cancellations: 0,
            would_deadlocks: 0,
            panics: 0,
            rejected: 0,
            latency: LatencyStats::default(),
            stale_results: 0,
            breaker: None,
            audit: None,
        }
    }

    /// The figures of one operation kind, if it ran.
    pub fn op(&self, name: &str) -> Option<&OpStats> {
        self.ops.iter().find(|s| s.op == name)
    }

    /// Reports this snapshot through the `metrics` facade: counters `map_wrapper_ops_total`
    /// (labels `map`, `op`, `outcome`), `map_wrapper_timeouts_total`,
    /// `map_wrapper_deadlines_exceeded_total`, `map_wrapper_cancellations_total`, `map_wrapper_would_deadlocks_total`,
    /// `map_wrapper_rejected_total`; gauges `map_wrapper_latency_seconds` (label `quantile`:
    /// `0.5`, `0.9`, `0.99`, `1`) and `map_wrapper_breaker_state` (0 closed, 1 open,
    /// 2 half-open, 3 forced open, 4 disabled, 5 metrics-only); for an audited map whose
    /// auditor has an [`AuditGate`](crate::audit::AuditGate) (a shipper), gauges
    /// `map_wrapper_audit_ship_lag_records` and `map_wrapper_audit_ship_lag_seconds`. Call it
    /// periodically.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        let map = self.map.to_string();
        for s in &self.ops {
            for (outcome, n) in [
                ("ok", s.ok),
                ("slow", s.slow),
                ("failed", s.failed),
                ("ignored", s.ignored),
                ("rejected", s.rejected),
            ] {
                metrics::counter!("map_wrapper_ops_total", "map" => map.clone(), "op" => s.op, "outcome" => outcome)
                    .absolute(n);
            }
        }
        metrics::counter!("map_wrapper_timeouts_total", "map" => map.clone()).absolute(self.timeouts);
        metrics::counter!("map_wrapper_deadlines_exceeded_total", "map" => map.clone())
            .absolute(self.deadlines_exceeded);
        metrics::counter!("map_wrapper_cancellations_total", "map" => map.clone())
            .absolute(self.cancellations);
        metrics::counter!("map_wrapper_would_deadlocks_total", "map" => map.clone())
            .absolute(self.would_deadlocks);
        metrics::counter!("map_wrapper_rejected_total", "map" => map.clone()).absolute(self.rejected);
        for (q, d) in [
            ("0.5", self.latency.p50),
            ("0.9", self.latency.p90),
            ("0.99", self.latency.p99),
            ("1", self.latency.max),
        ] {
            metrics::gauge!("map_wrapper_latency_seconds", "map" => map.clone(), "quantile" => q)
                .set(d.as_secs_f64());
        }
        if let Some(b) = &self.breaker {
            metrics_breaker_state(&self.map, b.state);
        }
        if let Some(a) = &self.audit {
            if let Some(n) = a.ship_lag_records {
                metrics::gauge!("map_wrapper_audit_ship_lag_records", "map" => map.clone()).set(n as f64);
            }
            if let Some(s) = a.ship_lag_seconds {
                metrics::gauge!("map_wrapper_audit_ship_lag_seconds", "map" => map.clone()).set(s);
            }
        }
    }
}

/// Sets the `map_wrapper_breaker_state` gauge (also done at every state change).
#[cfg(feature = "metrics")]
pub(crate) fn metrics_breaker_state(map: &str, state: BreakerState) {
    let code = match state {
        BreakerState::Closed => 0.0,
        BreakerState::Open => 1.0,
        BreakerState::HalfOpen => 2.0,
        BreakerState::ForcedOpen => 3.0,
        BreakerState::Disabled => 4.0,
        BreakerState::MetricsOnly => 5.0,
    };
    metrics::gauge!("map_wrapper_breaker_state", "map" => map.to_string()).set(code);
}

/// How the operations of one kind ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OpStats {
    /// The operation's name.
    pub op: &'static str,
    /// Completed, and (if timed) not slow.
    pub ok: u64,
    /// Completed, but timed above the slow threshold.
    pub slow: u64,
    /// Timed out or refused as a would-be deadlock.
    pub failed: u64,
    /// Cancelled, started after their caller's deadline, or a caller's closure panicked.
    pub ignored: u64,
    /// Rejected by the circuit breaker.
    pub rejected: u64,
}

/// Latency of the timed operations. Percentiles are bucket upper bounds (at most 25 % above
/// the true value) capped by the maximum; a timeout counts with the time it waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LatencyStats {
    /// How many operations were timed.
    pub count: u64,
    /// Their mean.
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The slowest.
    pub max: Duration,
}

/// The circuit breaker's part of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// Its state now.
    pub state: BreakerState,
    /// How many state changes it has made.
    pub transitions: u64,
    /// The calls in its window (since the last close).
    pub window_calls: u64,
    /// The share of failed calls in the window.
    pub failure_rate: f64,
    /// The share of slow calls in the window.
    pub slow_rate: f64,
    /// The share of slow-or-failed calls in the window.
    pub combined_rate: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_their_values_within_a_quarter() {
        for v in [0u64, 1, 3, 4, 5, 7, 8, 9, 100, 1_000, 123_456, 50_000_000, u64::MAX / 3, u64::MAX] {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v}");
            let top = bucket_top(b);
            assert!(top >= v, "{v} in bucket {b} topped at {top}");
            assert!(top as f64 <= v as f64 * 1.25 + 1.0, "{v} -> {top}");
            if b > 0 {
                assert!(bucket_top(b - 1) < v, "{v}");
            }
        }
    }

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let h = Histogram::new();
        for i in 1..=100u64 {
            h.record(i * 1_000);
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.max, Duration::from_micros(100));
        let near = |d: Duration, want: u64| {
            let n = d.as_nanos() as u64;
            n >= want && n as f64 <= want as f64 * 1.25
        };
        assert!(near(s.p50, 50_000), "{s:?}");
        assert!(near(s.p90, 90_000), "{s:?}");
        assert!(near(s.p99, 99_000), "{s:?}");
        assert_eq!(s.mean, Duration::from_nanos(50_500));
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn publish_metrics_reports_the_snapshot_through_the_facade() {
        use std::collections::BTreeMap;
        use std::sync::Mutex;

        use metrics::{
            Counter, CounterFn, Gauge, GaugeFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
        };

        type Store = Arc<Mutex<BTreeMap<String, f64>>>;
        struct Handle(String, Store);
        impl CounterFn for Handle {
            fn increment(&self, v: u64) {
                *self.1.lock().unwrap().entry(self.0.clone()).or_default() += v as f64;
            }
            fn absolute(&self, v: u64) {
                self.1.lock().unwrap().insert(self.0.clone(), v as f64);
            }
        }
        impl GaugeFn for Handle {
            fn increment(&self, v: f64) {
                *self.1.lock().unwrap().entry(self.0.clone()).or_default() += v;
            }
            fn decrement(&self, v: f64) {
                *self.1.lock().unwrap().entry(self.0.clone()).or_default() -= v;
            }
            fn set(&self, v: f64) {
                self.1.lock().unwrap().insert(self.0.clone(), v);
            }
        }
        struct Rec(Store);
        impl Rec {
            fn handle(&self, key: &Key) -> Arc<Handle> {
                let labels: Vec<String> =
                    key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
                Arc::new(Handle(format!("{}{{{}}}", key.name(), labels.join(",")), Arc::clone(&self.0)))
            }
        }
        impl Recorder for Rec {
            fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
                Counter::from_arc(self.handle(key))
            }
            fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
                Gauge::from_arc(self.handle(key))
            }
            fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
                metrics::Histogram::noop()
            }
        }

        let store: Store = Arc::default();
        let rec = Rec(Arc::clone(&store));
        let map: crate::MapWrapper<u8, u8> = crate::MapWrapper::builder()
            .name("m")
            .breaker(crate::breaker::BreakerConfig::new())
            .build()
            .unwrap();
        map.insert(1, 1).unwrap();
        map.insert(2, 2).unwrap();
        metrics::with_local_recorder(&rec, || {
            map.breaker().unwrap().force_open();
            assert!(map.insert(3, 3).is_err());
            map.stats().publish_metrics();
        });
        let got = store.lock().unwrap().clone();
        assert_eq!(got["map_wrapper_ops_total{map=m,op=insert,outcome=ok}"], 2.0);
        assert_eq!(got["map_wrapper_ops_total{map=m,op=insert,outcome=rejected}"], 1.0);
        assert_eq!(got["map_wrapper_rejected_total{map=m}"], 1.0);
        assert_eq!(got["map_wrapper_breaker_state{map=m}"], 3.0);
        assert!(got.contains_key("map_wrapper_latency_seconds{map=m,quantile=0.99}"));
        assert!(!got.keys().any(|k| k.starts_with("map_wrapper_audit_ship_lag")), "no gate, no lag gauges");

        struct Behind;
        impl crate::audit::AuditGate for Behind {
            fn refusal(&self) -> Option<Arc<str>> {
                None
            }
            fn lag(&self) -> (u64, f64) {
                (7, 1.5)
            }
        }
        let auditor = crate::audit::Auditor::new(crate::audit::MemorySink::new()).gate(Arc::new(Behind));
        let shipped: crate::MapWrapper<u8, u8> =
            crate::MapWrapper::builder().name("s").auditor(auditor).build().unwrap();
        let audit = shipped.stats().audit.unwrap();
        assert_eq!((audit.ship_lag_records, audit.ship_lag_seconds), (Some(7), Some(1.5)));
        metrics::with_local_recorder(&rec, || shipped.stats().publish_metrics());
        let got = store.lock().unwrap().clone();
        assert_eq!(got["map_wrapper_audit_ship_lag_records{map=s}"], 7.0);
        assert_eq!(got["map_wrapper_audit_ship_lag_seconds{map=s}"], 1.5);
    }

    #[test]
    fn counters_sum_over_stripes() {
        let c = Counters::new();
        for stripe in 0..20 {
            c.add(stripe, Op::Insert.index(), Slot::Ok);
        }
        c.add(3, Op::Serialize.index(), Slot::Timeout);
        c.add(3, Op::Get.index(), Slot::Cancelled);
        assert_eq!(c.get(Op::Insert.index(), Slot::Ok), 20);
        assert_eq!(c.get(Op::Serialize.index(), Slot::Timeout), 1);
        assert_eq!(c.calls(), 21);
    }
}
