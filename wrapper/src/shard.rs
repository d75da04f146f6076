//! One shard (a lock around a hash table), the per-thread record of which shards this thread
//! holds (for deadlock refusal), and lock acquisition bounded by a deadline and a cancel token.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::context::Effective;
use crate::stats::{Failure, Monitor, Observation};
use crate::MapError;

/// The table of one shard. Entries are stored without their hash: the hash is computed once
/// per operation and passed in, and recomputed only when the table grows.
pub(crate) type Table<K, V> = HashTable<(K, V)>;

/// One shard: a reader-writer lock around a table, alone on its cache line(s) so that two
/// shards locked by two cores do not share a line.
pub(crate) type Shard<K, V> = CachePadded<RwLock<Table<K, V>>>;

/// How long a wait sleeps before it looks at the cancel token again.
const CANCEL_POLL: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// Which shards this thread holds.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
struct Held {
    map: u64,
    shard: usize,
    write: bool,
}

impl Held {
    /// Fills unused inline slots; map ids start at 1, so it matches no real entry.
    const UNUSED: Held = Held { map: 0, shard: 0, write: false };
}

/// How many marks live inline before they spill into a Vec. A thread rarely holds more than
/// one or two (a guard, a closure in progress).
const INLINE_MARKS: usize = 8;

// The marks of this thread form one list: entries 0..INLINE_MARKS in HELD_INLINE, the rest in
// HELD_SPILL, HELD_COUNT entries in all. Count and inline slots are `Cell`s of `Copy` data:
// they need no destructor, so each access is a plain TLS load or store (a `RefCell<Vec>`
// costs a lazy-destructor check and a borrow flag every time). Every operation reads the
// count; a mark (a guard, or a user closure under the lock) writes one slot and the count.
thread_local! {
    static HELD_COUNT: Cell<usize> = const { Cell::new(0) };
    static HELD_INLINE: [Cell<Held>; INLINE_MARKS] = const { [const { Cell::new(Held::UNUSED) }; INLINE_MARKS] };
    static HELD_SPILL: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
}

/// Entry `i` (< count) of this thread's marks; `None` if the spill is already torn down.
fn held_at(i: usize) -> Option<Held> {
    if i < INLINE_MARKS {
        Some(HELD_INLINE.with(|a| a[i].get()))
    } else {
        HELD_SPILL.try_with(|s| s.borrow().get(i - INLINE_MARKS).copied()).ok().flatten()
    }
}

/// What this thread already holds on a shard.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Holding {
    Nothing,
    Read,
    Write,
}

/// Whether this thread holds no shard of any map (one plain thread-local load).
#[inline(always)]
pub(crate) fn holds_nothing() -> bool {
    HELD_COUNT.with(Cell::get) == 0
}

#[inline]
fn holding(map: u64, shard: usize) -> Holding {
    if HELD_COUNT.with(Cell::get) == 0 {
        return Holding::Nothing;
    }
    holding_slow(map, shard)
}

#[cold]
fn holding_slow(map: u64, shard: usize) -> Holding {
    let mut found = Holding::Nothing;
    for e in (0..HELD_COUNT.with(Cell::get)).filter_map(held_at) {
        if e.map == map && e.shard == shard {
            if e.write {
                return Holding::Write;
            }
            found = Holding::Read;
        }
    }
    found
}

/// A shard of `map` this thread holds in any way, if any.
fn any_held(map: u64) -> Option<usize> {
    (0..HELD_COUNT.with(Cell::get)).filter_map(held_at).find(|e| e.map == map).map(|e| e.shard)
}

/// Marks a shard as held by this thread for as long as it lives. Created when a guard leaves
/// the map (a [`Ref`](crate::Ref)) or a user closure runs under the lock, so that a call back
/// into the map from there is refused instead of deadlocking.
pub(crate) struct HeldMark {
    entry: Held,
    // A mark describes the current thread: it must be dropped on it.
    _not_send: PhantomData<*const ()>,
}

impl HeldMark {
    #[inline]
    pub(crate) fn new(map: u64, shard: usize, write: bool) -> Self {
        let entry = Held { map, shard, write };
        let n = HELD_COUNT.with(Cell::get);
        if n < INLINE_MARKS {
            HELD_INLINE.with(|a| a[n].set(entry));
            HELD_COUNT.with(|c| c.set(n + 1));
        } else {
            Self::spill(entry, n);
        }
        HeldMark { entry, _not_send: PhantomData }
    }

    #[cold]
    fn spill(entry: Held, n: usize) {
        // `try_with`: during thread teardown the spill may be gone; the mark then records
        // nothing (and its drop finds nothing), as no map call can follow on this thread.
        let pushed = HELD_SPILL.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() == n - INLINE_MARKS {
                s.push(entry);
                true
            } else {
                false
            }
        });
        if pushed == Ok(true) {
            HELD_COUNT.with(|c| c.set(n + 1));
        }
    }

    #[cold]
    fn remove_out_of_order(&self, n: usize) {
        // Marks are usually dropped in reverse order of creation (the fast path in `drop`).
        // Otherwise (guards dropped in another order) move the last entry into this one's slot.
        let Some(pos) = (0..n).rev().find(|&i| held_at(i) == Some(self.entry)) else { return };
        let Some(last) = held_at(n - 1) else { return };
        if pos < INLINE_MARKS {
            HELD_INLINE.with(|a| a[pos].set(last));
        } else {
            let _ = HELD_SPILL.try_with(|s| s.borrow_mut()[pos - INLINE_MARKS] = last);
        }
        Self::pop(n);
    }

    /// Drops entry `n - 1` (the last) from the list.
    fn pop(n: usize) {
        if n > INLINE_MARKS {
            let _ = HELD_SPILL.try_with(|s| s.borrow_mut().pop());
        }
        HELD_COUNT.with(|c| c.set(n - 1));
    }
}

impl Drop for HeldMark {
    #[inline]
    fn drop(&mut self) {
        let n = HELD_COUNT.with(Cell::get);
        if n == 0 {
            return;
        }
        if n <= INLINE_MARKS && HELD_INLINE.with(|a| a[n - 1].get()) == self.entry {
            HELD_COUNT.with(|c| c.set(n - 1));
        } else if held_at(n - 1) == Some(self.entry) {
            Self::pop(n);
        } else {
            self.remove_out_of_order(n);
        }
    }
}

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
    pub(crate) op: &'static str,
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
        op: &'static str,
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

    /// Whether the lock can be tried with no check before it: this thread holds no shard of
    /// any map, the operation has no context (no token, no absolute deadline) and the circuit
    /// breaker did not reject it.
    #[inline(always)]
    fn nothing_to_check(&self) -> bool {
        HELD_COUNT.with(Cell::get) == 0
            && self.eff.is_plain()
            && !self.observed.as_ref().is_some_and(|(_, obs)| obs.has_rejection())
    }

    /// Read access to `shard` (index `idx`).
    ///
    /// The fast path (nothing to check, lock free) is a few instructions inlined into the
    /// operation: a lookup on a large table costs cache misses, and the fewer instructions
    /// between two operations' misses, the more of them the CPU overlaps.
    #[inline(always)]
    pub(crate) fn read<'s, T>(
        &mut self,
        idx: usize,
        lock: &'s RwLock<T>,
    ) -> Result<RwLockReadGuard<'s, T>, MapError> {
        if self.nothing_to_check() {
            if let Some(g) = lock.try_read() {
                return Ok(g);
            }
        }
        self.read_checked(idx, lock)
    }

    #[inline(never)]
    fn read_checked<'s, T>(
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
        self.slow(idx, |until| {
            if recursive {
                lock.try_read_recursive_until(until)
            } else {
                lock.try_read_until(until)
            }
        })
    }

    /// Write access to `shard` (index `idx`); the fast path as in [`read`](Self::read).
    #[inline(always)]
    pub(crate) fn write<'s, T>(
        &mut self,
        idx: usize,
        lock: &'s RwLock<T>,
    ) -> Result<RwLockWriteGuard<'s, T>, MapError> {
        if self.nothing_to_check() {
            if let Some(g) = lock.try_write() {
                return Ok(g);
            }
        }
        self.write_checked(idx, lock)
    }

    #[inline(never)]
    fn write_checked<'s, T>(
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
        self.slow(idx, |until| lock.try_write_until(until))
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
        let err = MapError::WouldDeadlock { map: self.map_name.clone(), op: self.op, shard };
        self.failed(Failure::WouldDeadlock, err)
    }

    fn cancelled(&mut self) -> MapError {
        let err = MapError::Cancelled { map: self.map_name.clone(), op: self.op };
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
                let err = MapError::DeadlineExceeded { map: self.map_name.clone(), op: self.op };
                return Err(self.failed(Failure::Expired, err));
            }
        }
        Ok(())
    }

    #[cold]
    fn slow<G>(
        &mut self,
        idx: usize,
        mut try_until: impl FnMut(Instant) -> Option<G>,
    ) -> Result<G, MapError> {
        if let Some((m, obs)) = &mut self.observed {
            m.contended(obs);
        }
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
                let err = MapError::Timeout {
                    map: self.map_name.clone(),
                    op: self.op,
                    shard: idx,
                    waited: now - wait_start,
                    timeout: deadline.saturating_duration_since(start),
                };
                return Err(self.failed(Failure::Timeout { waited: elapsed }, err));
            }
            let until = if poll { deadline.min(now + CANCEL_POLL) } else { deadline };
            if let Some(g) = try_until(until) {
                return Ok(g);
            }
            if self.eff.is_cancelled() {
                return Err(self.cancelled());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_nest_and_unwind() {
        assert_eq!(holding(7, 1), Holding::Nothing);
        let r1 = HeldMark::new(7, 1, false);
        let r2 = HeldMark::new(7, 1, false);
        assert_eq!(holding(7, 1), Holding::Read);
        assert_eq!(holding(7, 2), Holding::Nothing);
        assert_eq!(holding(8, 1), Holding::Nothing);
        drop(r1);
        assert_eq!(holding(7, 1), Holding::Read);
        drop(r2);
        assert_eq!(holding(7, 1), Holding::Nothing);
        let _w = HeldMark::new(7, 1, true);
        assert_eq!(holding(7, 1), Holding::Write);
    }

    #[test]
    fn marks_beyond_the_inline_slots_spill_and_drop_in_any_order() {
        // 20 marks (more than INLINE_MARKS) on distinct shards, one of them a write, dropped
        // in a scrambled order; after each drop `holding` agrees with a plain model.
        let mut marks: Vec<Option<HeldMark>> = (0..20).map(|i| Some(HeldMark::new(11, i, i == 13))).collect();
        let mut live: Vec<bool> = vec![true; 20];
        let expect = |live: &[bool], shard: usize| match (live[shard], shard == 13) {
            (false, _) => Holding::Nothing,
            (true, true) => Holding::Write,
            (true, false) => Holding::Read,
        };
        for shard in 0..20 {
            assert_eq!(holding(11, shard), expect(&live, shard));
        }
        for step in 0..20 {
            let victim = (step * 7 + 3) % 20;
            marks[victim] = None;
            live[victim] = false;
            for shard in 0..20 {
                assert_eq!(holding(11, shard), expect(&live, shard), "after dropping {victim}");
            }
        }
        assert_eq!(HELD_COUNT.with(Cell::get), 0);
        // The same shard held twice: one drop leaves it held.
        let a = HeldMark::new(12, 0, false);
        let b = HeldMark::new(12, 0, false);
        drop(a);
        assert_eq!(holding(12, 0), Holding::Read);
        drop(b);
        assert_eq!(holding(12, 0), Holding::Nothing);
    }

    #[test]
    fn a_mark_is_released_when_a_closure_panics() {
        let r = std::panic::catch_unwind(|| {
            let _m = HeldMark::new(9, 0, true);
            panic!("user code");
        });
        assert!(r.is_err());
        assert_eq!(holding(9, 0), Holding::Nothing);
    }
}
