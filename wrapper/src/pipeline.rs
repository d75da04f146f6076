//! The per-operation pipeline of the full path: a [`Waiter`] gathers an operation's contexts,
//! asks the statistics and the breaker about it (sampling, admission), takes shard locks
//! under one deadline and cancel token, refuses what would deadlock, and counts the outcome
//! when it drops.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::context::Effective;
use crate::deadlock::{self, any_held, holding, holding_in_op, Access, Holding};
use crate::lock::{self, RwLock, RwLockReadGuard, RwLockWriteGuard, WaitError};
use crate::stats::{Failure, Monitor, Observation};
use crate::{CancelToken, MapError, Op};

/// How long a read wait of a thread that holds shards waits before it queues again in the
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
    /// Set while an async acquisition is pending: if the future is dropped then, the
    /// operation counts as cancelled.
    awaiting: bool,
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
        Waiter {
            map_name,
            map_id,
            op,
            eff,
            default_timeout,
            window: None,
            checked_absolute: false,
            observed,
            awaiting: false,
        }
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
        // A recursive read never queues behind a writer (the lock lets it pass the queue): not an
        // edge of the wait-for graph.
        let access = if recursive { None } else { Some(Access::Read) };
        self.slow(idx, access, |until, cancel, _| {
            if recursive {
                lock.try_read_recursive_until(until).ok_or(WaitError::Timeout)
            } else {
                lock::read_until(lock, Some(until), cancel)
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
        self.slow(idx, Some(Access::Write), |until, cancel, waiting| {
            lock::write_until_then(lock, Some(until), cancel, || {
                if let Some(w) = waiting {
                    w.queued();
                }
            })
        })
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

    /// The sync wait for shard `idx` (its non-blocking try failed): first registers the wait
    /// in the wait-for graph (`access`; `None` for a wait that cannot be part of a cycle),
    /// which refuses it if it would close a cycle of waiting threads; then this thread parks in
    /// the shard's queue until the deadline or the cancel token (which wakes it), or until the
    /// unlock hands it the lock. A wait that must renew its place in the graph (a reader that
    /// holds shards, a writer that held nothing at first) waits in steps of [`REQUEUE`].
    /// `acquire` gets the wait's entry in the graph: a writer tells it when it has joined the
    /// lock's queue ([`WaitGuard::queued`](deadlock::WaitGuard::queued)).
    #[cold]
    #[inline(never)]
    fn slow<G>(
        &mut self,
        idx: usize,
        access: Option<Access>,
        mut acquire: impl FnMut(
            Instant,
            Option<&CancelToken>,
            Option<&deadlock::WaitGuard>,
        ) -> Result<G, WaitError>,
    ) -> Result<G, MapError> {
        // A thread that holds nothing cannot close a cycle. A writer among them is still a node
        // (readers queue behind it), but joins the graph only once it has waited one step:
        // short waits, the common contention, never touch the graph's lock.
        let mut deferred = access == Some(Access::Write) && deadlock::holds_nothing();
        let mut waiting = match access.filter(|_| !deferred) {
            None => None,
            Some(a) => match deadlock::waiting_for(self.map_name, self.map_id, idx, a) {
                Ok(w) => Some(w),
                Err(cycle) => return self.refuse_cycle(idx, cycle, &mut acquire),
            },
        };
        let (wait_start, start, deadline) = self.wait_window();
        let cancel = self.eff.cancel_token();
        loop {
            let requeue = deferred || waiting.as_ref().is_some_and(deadlock::WaitGuard::needs_renewal);
            let until = if requeue { deadline.min(Instant::now() + REQUEUE) } else { deadline };
            match acquire(until, cancel.as_ref(), waiting.as_ref()) {
                Err(WaitError::Timeout) if until < deadline => {}
                got => return self.wait_ended(idx, got, wait_start, start, deadline),
            }
            if deferred {
                deferred = false;
                // Holds nothing: never refused.
                waiting = deadlock::waiting_for(self.map_name, self.map_id, idx, Access::Write).ok();
            } else if let Some(Err(cycle)) = waiting.as_mut().map(deadlock::WaitGuard::renew) {
                return self.refuse_cycle(idx, cycle, &mut acquire);
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
        acquire: &mut impl FnMut(
            Instant,
            Option<&CancelToken>,
            Option<&deadlock::WaitGuard>,
        ) -> Result<G, WaitError>,
    ) -> Result<G, MapError> {
        if let Ok(g) = acquire(Instant::now(), None, None) {
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

    /// The async wait: as [`slow`](Self::slow), the task waiting in the same queue. Dropped
    /// while pending, the acquisition leaves the queue (or releases a lock handed to it) and
    /// the operation counts as cancelled.
    #[cold]
    async fn slow_async<G, F>(
        &mut self,
        idx: usize,
        acquire: impl FnOnce(Instant, Option<CancelToken>) -> F,
    ) -> Result<G, MapError>
    where
        F: Future<Output = Result<G, WaitError>>,
    {
        let (wait_start, start, deadline) = self.wait_window();
        let cancel = self.eff.cancel_token();
        self.awaiting = true;
        let got = acquire(deadline, cancel).await;
        self.awaiting = false;
        self.wait_ended(idx, got, wait_start, start, deadline)
    }

    /// The operation's window at its first wait (when it started, when it must give up),
    /// and the start of this wait; tells the statistics the operation is contended.
    fn wait_window(&mut self) -> (Instant, Instant, Instant) {
        if let Some((m, obs)) = &mut self.observed {
            m.contended(obs);
        }
        let wait_start = Instant::now();
        let (start, deadline) = *self
            .window
            .get_or_insert_with(|| (wait_start, self.eff.deadline_from(wait_start, self.default_timeout)));
        (wait_start, start, deadline)
    }

    /// Turns the end of a wait into the operation's result.
    fn wait_ended<G>(
        &mut self,
        idx: usize,
        got: Result<G, WaitError>,
        wait_start: Instant,
        start: Instant,
        deadline: Instant,
    ) -> Result<G, MapError> {
        match got {
            Ok(g) => Ok(g),
            Err(WaitError::Cancelled) => Err(self.cancelled()),
            Err(WaitError::Timeout) => {
                // The operation's own time at its deadline (for an operation that visits many
                // shards, more than the wait for this one).
                let now = Instant::now();
                let err = MapError::timed_out(
                    self.map_name,
                    self.op,
                    idx,
                    now - wait_start,
                    deadline.saturating_duration_since(start),
                );
                Err(self.failed(Failure::Timeout { waited: now - start }, err))
            }
        }
    }

    // ---- the async way to take a lock ---------------------------------------------------------

    /// Read access to `lock` (shard `idx`) for an async operation: the checks of
    /// [`read`](Self::read), then a wait that parks the task, not the thread.
    ///
    /// Deadlock refusal is per operation here: async operations take closures, so the only
    /// shards "held" by the operation's own call chain are those whose closure is running on
    /// this thread right now (a call back into the map from inside a closure). Guards
    /// (`Ref`) alive on this thread may belong to other tasks: this task waits for them.
    pub(crate) async fn read_async<'s, T>(
        &mut self,
        idx: usize,
        lock: &'s RwLock<T>,
    ) -> Result<RwLockReadGuard<'s, T>, MapError> {
        if let Some(e) = self.rejection() {
            return Err(e);
        }
        let recursive = match holding_in_op(self.map_id, idx) {
            Holding::Write => return Err(self.would_deadlock_in_closure(idx)),
            Holding::Read => true,
            Holding::Nothing => false,
        };
        self.precheck()?;
        let fast = if recursive { lock.try_read_recursive() } else { lock.try_read() };
        if let Some(g) = fast {
            return Ok(g);
        }
        self.slow_async(idx, |until, cancel| lock::read_async_owned(lock, Some(until), cancel)).await
    }

    /// Write access to `lock` (shard `idx`) for an async operation; as
    /// [`read_async`](Self::read_async).
    pub(crate) async fn write_async<'s, T>(
        &mut self,
        idx: usize,
        lock: &'s RwLock<T>,
    ) -> Result<RwLockWriteGuard<'s, T>, MapError> {
        if let Some(e) = self.rejection() {
            return Err(e);
        }
        if holding_in_op(self.map_id, idx) != Holding::Nothing {
            return Err(self.would_deadlock_in_closure(idx));
        }
        self.precheck()?;
        if let Some(g) = lock.try_write() {
            return Ok(g);
        }
        self.slow_async(idx, |until, cancel| lock::write_async_owned(lock, Some(until), cancel)).await
    }

    /// For async operations that write every shard: refuses up front if a closure of this
    /// map is running on this thread (the call comes from inside it).
    pub(crate) fn refuse_if_in_closure(&mut self) -> Result<(), MapError> {
        if let Some(e) = self.rejection() {
            return Err(e);
        }
        match crate::deadlock::any_held_in_op(self.map_id) {
            Some(shard) => Err(self.would_deadlock_in_closure(shard)),
            None => Ok(()),
        }
    }

    fn would_deadlock_in_closure(&mut self, shard: usize) -> MapError {
        let err = MapError::would_deadlock_in_closure(self.map_name, self.op, shard);
        self.failed(Failure::WouldDeadlock, err)
    }
}

impl Drop for Waiter<'_, '_> {
    /// The operation is over (its locks are released by now, except a guard it handed out):
    /// count its outcome and tell the breaker.
    #[inline]
    fn drop(&mut self) {
        if let Some((m, obs)) = &mut self.observed {
            if self.awaiting {
                // An async acquisition dropped while it waited: the caller gave up.
                obs.fail(Failure::Cancelled);
            }
            m.finish(obs);
        }
    }
}
