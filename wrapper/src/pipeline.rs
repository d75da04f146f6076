//! The per-operation pipeline of the full path: a [`Waiter`] gathers an operation's contexts,
//! asks the statistics and the breaker about it (sampling, admission), takes shard locks
//! under one deadline and cancel token, refuses what would deadlock, and counts the outcome
//! when it drops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::context::Effective;
use crate::deadlock::{self, any_held, holding, Access, Holding};
use crate::stats::{Failure, Monitor, Observation};
use crate::{MapError, Op};

/// How long a wait sleeps before it looks at the cancel token again.
const CANCEL_POLL: Duration = Duration::from_millis(1);

/// How long a read wait of a thread that holds shards sleeps before it queues again in the
/// wait-for graph (see `deadlock::WaitGuard::renew`), and how long a writer that holds nothing
/// waits before it joins the graph.
const REQUEUE: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------------
// Bounded acquisition.
// ---------------------------------------------------------------------------------------------

/// One operation in progress: its contexts, and the shard locks it acquires under one deadline
/// shared by all the shards it visits. Lives from the start of the operation to its end, so
/// per-operation policy (outcome, latency) hangs off it. The clock is read only once a lock
/// turns out to be contended (or when the caller gave an absolute deadline, which must be
/// checked even on the fast path).
pub(crate) struct Waiter<'a, 'c> {
    pub(crate) map_name: &'a Arc<str>,
    pub(crate) map_id: u64,
    pub(crate) op: Op,
    pub(crate) eff: Effective<'c>,
    pub(crate) default_timeout: Duration,
    /// When this operation first had to wait, and the instant it must give up.
    window: Option<(Instant, Instant)>,
    checked_absolute: bool,
    /// Statistics and circuit breaker: what this operation is, as they see it (including a
    /// rejection by the breaker, returned before the first lock).
    observed: Option<(&'a Monitor, Observation)>,
}

impl<'a, 'c> Waiter<'a, 'c> {
    #[inline(always)]
    pub(crate) fn new(
        map_name: &'a Arc<str>,
        map_id: u64,
        op: Op,
        eff: Effective<'c>,
        default_timeout: Duration,
        monitor: Option<&'a Monitor>,
    ) -> Self {
        let observed = monitor.map(|m| (m, m.begin(op)));
        Waiter { map_name, map_id, op, eff, default_timeout, window: None, checked_absolute: false, observed }
    }

    /// The circuit breaker's rejection of this operation, the first time it is asked for.
    #[inline]
    fn rejection(&mut self) -> Option<MapError> {
        match &mut self.observed {
            Some((m, obs)) => obs.take_rejection().map(|r| m.circuit_open(self.op, obs, r)),
            None => None,
        }
    }

    /// Remembers how the operation failed, for its outcome.
    #[inline]
    fn failed(&mut self, failure: Failure, err: MapError) -> MapError {
        if let Some((_, obs)) = &mut self.observed {
            obs.fail(failure);
        }
        err
    }

    /// Read access to `shard` (index `idx`), after the checks a full-path operation makes:
    /// the breaker's rejection, a shard this thread already holds, the cancel token and the
    /// absolute deadline; then a bounded wait. (The operations' fast path tries the lock
    /// before it ever makes a `Waiter`: see `map.rs`.)
    #[inline(never)]
    pub(crate) fn read<'s, T>(
        &mut self,
        idx: usize,
        lock: &'s RwLock<T>,
    ) -> Result<RwLockReadGuard<'s, T>, MapError> {
        if let Some(e) = self.rejection() {
            return Err(e);
        }
        let recursive = match holding(self.map_id, idx) {
            Holding::Write => return Err(self.would_deadlock(idx)),
            Holding::Read => true,
            Holding::Nothing => false,
        };
        self.precheck()?;
        // A thread that already reads this shard must read it again recursively: a fair
        // RwLock would otherwise queue it behind a waiting writer that waits for it.
        let fast = if recursive { lock.try_read_recursive() } else { lock.try_read() };
        if let Some(g) = fast {
            return Ok(g);
        }
        self.slow_read(idx, recursive, lock)
    }

    /// The wait of [`read`](Self::read), out of line so that its fast path keeps no more
    /// registers than before.
    #[cold]
    #[inline(never)]
    fn slow_read<'s, T>(
        &mut self,
        idx: usize,
        recursive: bool,
        lock: &'s RwLock<T>,
    ) -> Result<RwLockReadGuard<'s, T>, MapError> {
        // A recursive read never queues behind a writer: not an edge of the wait-for graph.
        let access = if recursive { None } else { Some(Access::Read) };
        self.slow(idx, access, |until| {
            if recursive {
                lock.try_read_recursive_until(until)
            } else {
                lock.try_read_until(until)
            }
        })
    }

    /// Write access to `shard` (index `idx`), after the checks of [`read`](Self::read).
    #[inline(never)]
    pub(crate) fn write<'s, T>(
        &mut self,
        idx: usize,
        lock: &'s RwLock<T>,
    ) -> Result<RwLockWriteGuard<'s, T>, MapError> {
        if let Some(e) = self.rejection() {
            return Err(e);
        }
        if holding(self.map_id, idx) != Holding::Nothing {
            return Err(self.would_deadlock(idx));
        }
        self.precheck()?;
        if let Some(g) = lock.try_write() {
            return Ok(g);
        }
        self.slow(idx, Some(Access::Write), |until| lock.try_write_until(until))
    }

    /// For operations that write every shard: refuses up front, before changing anything, if
    /// this thread holds any shard of the map (the operation would reach it and deadlock).
    /// A call the circuit breaker rejected is refused with that first.
    pub(crate) fn refuse_if_holding_any(&mut self) -> Result<(), MapError> {
        if let Some(e) = self.rejection() {
            return Err(e);
        }
        match any_held(self.map_id) {
            Some(shard) => Err(self.would_deadlock(shard)),
            None => Ok(()),
        }
    }

    fn would_deadlock(&mut self, shard: usize) -> MapError {
        let err = MapError::would_deadlock(self.map_name, self.op, shard);
        self.failed(Failure::WouldDeadlock, err)
    }

    fn cancelled(&mut self) -> MapError {
        let err = MapError::cancelled(self.map_name, self.op);
        self.failed(Failure::Cancelled, err)
    }

    /// Starts the operation's clock now instead of at its first wait: for operations that visit
    /// many shards, whose one deadline must count from the call (they read the clock once; the
    /// single-key fast path does not).
    pub(crate) fn start_clock(&mut self) {
        let now = Instant::now();
        self.window = Some((now, self.eff.deadline_from(now, self.default_timeout)));
    }

    /// Fails a cancelled operation, or one whose absolute deadline has passed, before it
    /// locks. An operation with no context at all (the common case) has neither to check.
    #[inline]
    fn precheck(&mut self) -> Result<(), MapError> {
        if self.eff.is_plain() {
            return Ok(());
        }
        self.precheck_contexts()
    }

    fn precheck_contexts(&mut self) -> Result<(), MapError> {
        if self.eff.is_cancelled() {
            return Err(self.cancelled());
        }
        if !self.checked_absolute {
            self.checked_absolute = true;
            if self.eff.absolute_deadline().is_some_and(|d| Instant::now() >= d) {
                let err = MapError::deadline_exceeded(self.map_name, self.op);
                return Err(self.failed(Failure::Expired, err));
            }
        }
        Ok(())
    }

    /// Waits for shard `idx` (its non-blocking try failed): first registers the wait in the
    /// wait-for graph (`access`; `None` for a wait that cannot be part of a cycle), which
    /// refuses it if it would close a cycle of waiting threads; then waits under the deadline
    /// and the cancel token.
    #[cold]
    #[inline(never)]
    fn slow<G>(
        &mut self,
        idx: usize,
        access: Option<Access>,
        mut try_until: impl FnMut(Instant) -> Option<G>,
    ) -> Result<G, MapError> {
        if let Some((m, obs)) = &mut self.observed {
            m.contended(obs);
        }
        // A thread that holds nothing cannot close a cycle. A writer among them is still a node
        // (readers queue behind it), but joins the graph only once it has waited one step:
        // short waits, the common contention, never touch the graph's lock.
        let mut deferred = access == Some(Access::Write) && deadlock::holds_nothing();
        let mut waiting = match access.filter(|_| !deferred) {
            None => None,
            Some(a) => match deadlock::waiting_for(self.map_name, self.map_id, idx, a) {
                Ok(w) => Some(w),
                Err(cycle) => return self.refuse_cycle(idx, cycle, &mut try_until),
            },
        };
        let wait_start = Instant::now();
        let (start, deadline) = *self
            .window
            .get_or_insert_with(|| (wait_start, self.eff.deadline_from(wait_start, self.default_timeout)));
        let poll = self.eff.has_cancel();
        loop {
            let now = Instant::now();
            if now >= deadline {
                // The operation's own time at its deadline (for an operation that visits many
                // shards, more than the wait for this one).
                let elapsed = now - start;
                let err = MapError::timed_out(
                    self.map_name,
                    self.op,
                    idx,
                    now - wait_start,
                    deadline.saturating_duration_since(start),
                );
                return Err(self.failed(Failure::Timeout { waited: elapsed }, err));
            }
            let requeue = deferred || waiting.as_ref().is_some_and(deadlock::WaitGuard::needs_renewal);
            let until = match (poll, requeue) {
                (true, _) => deadline.min(now + CANCEL_POLL),
                (false, true) => deadline.min(now + REQUEUE),
                (false, false) => deadline,
            };
            if let Some(g) = try_until(until) {
                return Ok(g);
            }
            if self.eff.is_cancelled() {
                return Err(self.cancelled());
            }
            if deferred {
                deferred = false;
                // Holds nothing: never refused.
                waiting = deadlock::waiting_for(self.map_name, self.map_id, idx, Access::Write).ok();
            } else if let Some(Err(cycle)) = waiting.as_mut().map(deadlock::WaitGuard::renew) {
                return self.refuse_cycle(idx, cycle, &mut try_until);
            }
        }
    }

    /// Refuses a wait for shard `idx` that would close a cycle, after one last try: a lock that
    /// came free since (a member of the cycle gave up) is taken instead.
    #[cold]
    fn refuse_cycle<G>(
        &mut self,
        idx: usize,
        cycle: deadlock::Cycle,
        try_until: &mut impl FnMut(Instant) -> Option<G>,
    ) -> Result<G, MapError> {
        if let Some(g) = try_until(Instant::now()) {
            return Ok(g);
        }
        let err = MapError::would_deadlock_cycle(
            self.map_name,
            self.op,
            idx,
            cycle.held_map,
            cycle.held_shard,
            cycle.threads,
        );
        Err(self.failed(Failure::WouldDeadlock, err))
    }
}

impl Drop for Waiter<'_, '_> {
    /// The operation is over (its locks are released by now, except a guard it handed out):
    /// count its outcome and tell the breaker.
    #[inline]
    fn drop(&mut self) {
        if let Some((m, obs)) = &self.observed {
            m.finish(obs);
        }
    }
}
