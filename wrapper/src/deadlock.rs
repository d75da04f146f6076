//! Deadlock refusal: the per-thread registry of the shards this thread holds (a live guard, or
//! a user closure running under a shard lock), so that a call that would wait for a shard its
//! own thread holds is refused with [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock)
//! instead of hanging.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

// ---------------------------------------------------------------------------------------------
// Which shards this thread holds.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
struct Held {
    map: u64,
    shard: usize,
    write: bool,
    /// A guard handed to the caller (`Ref`), as opposed to a closure or encoder the map runs
    /// under the lock. Async operations look only at the latter: a guard alive on this thread
    /// may belong to another task (see `holding_in_op`).
    guard: bool,
}

impl Held {
    /// Fills unused inline slots; map ids start at 1, so it matches no real entry.
    const UNUSED: Held = Held { map: 0, shard: 0, write: false, guard: false };
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
pub(crate) fn holding(map: u64, shard: usize) -> Holding {
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

/// What a closure (or encoder) the map is running right now on this thread holds on a shard,
/// ignoring guards. Async operations refuse on this only: closures never span an `.await`,
/// so a mark of that kind means the async call comes from inside the closure (it would wait
/// for its own caller); a guard mark may be another task's, which this one can wait for.
#[inline]
pub(crate) fn holding_in_op(map: u64, shard: usize) -> Holding {
    if HELD_COUNT.with(Cell::get) == 0 {
        return Holding::Nothing;
    }
    let mut found = Holding::Nothing;
    for e in (0..HELD_COUNT.with(Cell::get)).filter_map(held_at) {
        if !e.guard && e.map == map && e.shard == shard {
            if e.write {
                return Holding::Write;
            }
            found = Holding::Read;
        }
    }
    found
}

/// A shard of `map` a closure running on this thread holds (guards ignored), if any.
pub(crate) fn any_held_in_op(map: u64) -> Option<usize> {
    (0..HELD_COUNT.with(Cell::get)).filter_map(held_at).find(|e| !e.guard && e.map == map).map(|e| e.shard)
}

/// A shard of `map` this thread holds in any way, if any.
pub(crate) fn any_held(map: u64) -> Option<usize> {
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
    /// A mark for a closure or encoder the map runs under the lock (lives within one call).
    #[inline]
    pub(crate) fn new(map: u64, shard: usize, write: bool) -> Self {
        Self::push(Held { map, shard, write, guard: false })
    }

    /// A mark for a guard handed to the caller (it may outlive the call, and on an async
    /// runtime be held by a task while other tasks run on the thread).
    #[inline]
    pub(crate) fn guard(map: u64, shard: usize, write: bool) -> Self {
        Self::push(Held { map, shard, write, guard: true })
    }

    #[inline]
    fn push(entry: Held) -> Self {
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
