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

thread_local! {
    // Usually empty; one entry per live guard or running closure. A Vec beats a set at these
    // sizes, and `const` init keeps the access a plain TLS read.
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    // How many entries HELD has. A `Cell<usize>` needs no destructor, so reading it is one
    // plain TLS load, where HELD itself costs a lazy-destructor check and a borrow: the fast
    // path of every operation reads only this.
    static HELD_COUNT: Cell<usize> = const { Cell::new(0) };
}

/// What this thread already holds on a shard.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Holding {
    Nothing,
    Read,
    Write,
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
    HELD.try_with(|h| {
        let h = h.borrow();
        let mut found = Holding::Nothing;
        for e in h.iter().filter(|e| e.map == map && e.shard == shard) {
            if e.write {
                return Holding::Write;
            }
            found = Holding::Read;
        }
        found
    })
    .unwrap_or(Holding::Nothing)
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
    pub(crate) fn new(map: u64, shard: usize, write: bool) -> Self {
        let entry = Held { map, shard, write };
        let _ = HELD.try_with(|h| {
            h.borrow_mut().push(entry);
            HELD_COUNT.with(|n| n.set(n.get() + 1));
        });
        HeldMark { entry, _not_send: PhantomData }
    }
}

impl Drop for HeldMark {
    fn drop(&mut self) {
        let _ = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            if let Some(pos) = h.iter().rposition(|e| *e == self.entry) {
                h.swap_remove(pos);
                HELD_COUNT.with(|n| n.set(n.get() - 1));
            }
        });
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
}

impl<'a, 'c> Waiter<'a, 'c> {
    pub(crate) fn new(
        map_name: &'a Arc<str>,
        map_id: u64,
        op: &'static str,
        eff: Effective<'c>,
        default_timeout: Duration,
    ) -> Self {
        Waiter { map_name, map_id, op, eff, default_timeout, window: None, checked_absolute: false }
    }

    /// Read access to `shard` (index `idx`).
    #[inline]
    pub(crate) fn read<'s, T>(
        &mut self,
        idx: usize,
        lock: &'s RwLock<T>,
    ) -> Result<RwLockReadGuard<'s, T>, MapError> {
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

    /// Write access to `shard` (index `idx`).
    #[inline]
    pub(crate) fn write<'s, T>(
        &mut self,
        idx: usize,
        lock: &'s RwLock<T>,
    ) -> Result<RwLockWriteGuard<'s, T>, MapError> {
        if holding(self.map_id, idx) != Holding::Nothing {
            return Err(self.would_deadlock(idx));
        }
        self.precheck()?;
        if let Some(g) = lock.try_write() {
            return Ok(g);
        }
        self.slow(idx, |until| lock.try_write_until(until))
    }

    fn would_deadlock(&self, shard: usize) -> MapError {
        MapError::WouldDeadlock { map: self.map_name.clone(), op: self.op, shard }
    }

    fn cancelled(&self) -> MapError {
        MapError::Cancelled { map: self.map_name.clone(), op: self.op }
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
            if let Some(d) = self.eff.absolute_deadline() {
                let now = Instant::now();
                if now >= d {
                    return Err(MapError::Timeout {
                        map: self.map_name.clone(),
                        op: self.op,
                        shard: usize::MAX,
                        waited: Duration::ZERO,
                        timeout: Duration::ZERO,
                    });
                }
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
        let (start, deadline) = *self.window.get_or_insert_with(|| {
            let now = Instant::now();
            (now, self.eff.deadline_from(now, self.default_timeout))
        });
        let poll = self.eff.has_cancel();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(MapError::Timeout {
                    map: self.map_name.clone(),
                    op: self.op,
                    shard: idx,
                    waited: now - start,
                    timeout: deadline.saturating_duration_since(start),
                });
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
    fn a_mark_is_released_when_a_closure_panics() {
        let r = std::panic::catch_unwind(|| {
            let _m = HeldMark::new(9, 0, true);
            panic!("user code");
        });
        assert!(r.is_err());
        assert_eq!(holding(9, 0), Holding::Nothing);
    }
}
