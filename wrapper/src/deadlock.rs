//! Deadlock refusal, in two parts.
//!
//! - **Re-entrant calls.** The per-thread registry of the shards this thread holds (a live
//!   guard, or a user closure running under a shard lock), so that a call that would wait for a
//!   shard its own thread holds is refused with
//!   [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock) instead of hanging. A mark
//!   is a thread-local store: no other thread ever reads it.
//! - **Cycles across threads and maps.** A wait-for graph of the threads that *wait*: a thread
//!   about to wait for a shard ([`waiting_for`], called by the waiting code on its slow path)
//!   publishes what it holds (a copy of its marks) and what it waits for in one global
//!   registry, then follows the edges from itself: the shard it wants → the waiting threads
//!   that hold it → the shards they want → … If that walk comes back to a shard it holds
//!   itself, the wait would close a cycle and it is refused at once, naming the shard it
//!   wanted and the shard of its own that the cycle waits for.
//!
//! Why only waiters publish: every thread in a deadlock cycle is waiting, and a waiting thread's
//! holds cannot change while it waits. So the last thread to start waiting in a cycle finds all
//! the others in the registry (the registry is one mutex: of two threads that start waiting at
//! once, the second sees the first), and a thread that holds shards but never waits costs
//! nothing beyond its thread-local mark. The uncontended path never touches the registry, and
//! the contended path touches it only when the waiting thread holds a shard or (a writer) has
//! waited a few milliseconds.
//!
//! Edges, so that every refusal is a real cycle:
//! - a **write** wait for a shard is blocked by every waiting thread that holds it (read or
//!   write); a **read** wait only by one that holds it for writing;
//! - a read wait is also blocked by a **writer ahead of it in the shard lock's queue** (the
//!   lock is fair: a new reader queues behind a waiting writer). This is how a cycle through
//!   shared read holds deadlocks: A reads 1 and wants to read 2, B reads 2 and wants to write
//!   1, and C waits to write 2 (behind B's read): A waits behind C, C behind B, B behind A.
//!   "Ahead" is read off stamps of one clock, the graph's: a reader takes its stamp *before*
//!   it joins the queue, a writer *after* it has joined ([`WaitGuard::queued`], called from
//!   inside the lock's wait), so a writer stamped before a reader was in the queue before the
//!   reader came. (Ordering by registration refused calls that would not deadlock: a writer
//!   registers before it joins the queue, and a reader that joined in between was ahead of
//!   it, could be granted the lock and go on, while the graph showed it stuck behind the
//!   writer, in a cycle.)
//! - a recursive read (of a shard this thread already reads) never waits behind a writer, so
//!   it is not an edge.
//!
//! Holder edges are exact: a waiter's recorded holds are its holds until it stops waiting
//! (its entry goes when its wait ends, before it can release anything). Writer-ahead edges are
//! exact too, by the stamps. What can be stale is a waiter's *want*: it may have just been
//! granted the lock (then nothing of the graph holds that shard against it, and no writer
//! stamped before it can still be queued ahead of it, so no edge leaves it), or it may have
//! just timed out (the cycle was real until then); for that reason the waiting code tries the
//! lock once more before it returns the refusal. A reader can end up queued behind a writer
//! that it was not behind when it took its stamp (the reader was first blocked by a writer
//! that has since let go, or the writer joined between the reader's stamp and its joining):
//! such a reader waits in bounded steps ([`WaitGuard::renew`], every few milliseconds) and
//! takes a new stamp at each, behind the writers then queued, so that cycle is found within
//! one step.
//! What is still not detected (it ends in a normal timeout): a cycle that forms and dissolves
//! between two steps never shows, which is no deadlock; and holds a thread has without a mark
//! (inside the map's own code, which never waits while holding one).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

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

// ---------------------------------------------------------------------------------------------
// Cycles across threads: the wait-for graph of the threads that wait.
// ---------------------------------------------------------------------------------------------

/// What a wait asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Access {
    /// Shared access to a shard this thread does not hold yet.
    Read,
    /// Exclusive access.
    Write,
}

/// A thread that waits for a shard: what it holds (its marks when it started waiting) and
/// what it wants.
struct Waiting {
    thread: u64,
    /// Where the wait stands in the shard lock's FIFO queue, on the graph's clock
    /// (`Graph::seq`): a reader's stamp is taken *before* it joins the queue (at registration
    /// and at each renewal), a writer's *after* it has joined ([`WaitGuard::queued`];
    /// [`NOT_QUEUED`] until then). So a writer's stamp below a reader's means the writer was
    /// in the queue before the reader joined it: ahead of it, in a FIFO queue.
    stamp: u64,
    holds: Box<[Held]>,
    want: Held,
    want_map: Arc<str>,
}

struct Graph {
    /// The clock of the stamps.
    seq: u64,
    waiting: Vec<Waiting>,
}

/// The stamp of a writer that has not joined the lock's queue yet: ahead of no reader.
const NOT_QUEUED: u64 = u64::MAX;

/// Every thread that waits for a shard lock of any map right now. Touched only by threads
/// that start or stop waiting.
static GRAPH: Mutex<Graph> = Mutex::new(Graph { seq: 0, waiting: Vec::new() });

static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

/// This thread's id in the graph (assigned on its first wait).
fn thread_id() -> u64 {
    THREAD.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

/// Whether holding `h` keeps a wait for `want` from being granted.
fn conflicts(h: &Held, want: &Held) -> bool {
    h.map == want.map && h.shard == want.shard && (want.write || h.write)
}

/// Whether the thread waiting for `want` (with stamp `stamp`) is blocked by `by`: `by` holds
/// the shard in a conflicting way, or (for a read) `by` is a writer queued for it ahead.
fn blocked_by(thread: u64, want: &Held, stamp: u64, by: &Waiting) -> bool {
    by.thread != thread
        && (by.holds.iter().any(|h| conflicts(h, want))
            || (!want.write
                && by.want.write
                && by.want.map == want.map
                && by.want.shard == want.shard
                && by.stamp < stamp))
}

/// A wait that would close a cycle: the shard of this thread's that another thread of the
/// cycle waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cycle {
    /// The name of the map of `held_shard`.
    pub(crate) held_map: Arc<str>,
    /// The shard this thread holds that the cycle waits for.
    pub(crate) held_shard: usize,
    /// How many threads the cycle has, this one included.
    pub(crate) threads: usize,
}

/// This thread's entry in the wait-for graph, removed when dropped (when the wait ends, by
/// lock, timeout or cancellation).
#[must_use = "the wait is registered only while the guard lives"]
pub(crate) struct WaitGuard {
    /// 0: nothing was registered.
    thread: u64,
    /// A registered read wait: see [`renew`](WaitGuard::renew). (A registered wait that is
    /// not a read is a write: see [`queued`](WaitGuard::queued).)
    reader: bool,
    _not_send: PhantomData<*const ()>,
}

impl WaitGuard {
    /// To be called by a registered write wait once the thread has joined the shard lock's
    /// queue (the lock calls it: `RawLock::lock_exclusive_until_then`), before it parks: from
    /// now on every reader that joins the queue is behind this writer, so a reader that takes
    /// its stamp from now on is blocked by it. Until then the writer is ahead of no reader: a
    /// reader that registers after the writer but joins the queue first is ahead of it (and
    /// may be granted the lock), and an edge to the writer would make a cycle that is none.
    pub(crate) fn queued(&self) {
        if self.thread == 0 || self.reader {
            return;
        }
        let mut g = GRAPH.lock();
        let stamp = g.seq;
        g.seq += 1;
        if let Some(w) = g.waiting.iter_mut().find(|w| w.thread == self.thread) {
            w.stamp = stamp;
        }
    }

    const NONE: WaitGuard = WaitGuard { thread: 0, reader: false, _not_send: PhantomData };

    /// Whether the wait must be [`renew`](WaitGuard::renew)ed from time to time: a read wait
    /// of a thread that holds shards.
    pub(crate) fn needs_renewal(&self) -> bool {
        self.thread != 0 && self.reader
    }

    /// A read wait that goes on after a bounded try (it has left the lock's queue): it joins
    /// the queue again right after this, behind the writers queued by now, so it takes a new
    /// stamp and looks for a cycle again. (A reader first blocked by a writer that let go,
    /// then by a writer that came after it, waits behind the later writer: without this, a
    /// cycle through that writer would not be seen.) The waiting code must then wait in bounded steps and call this
    /// between them; a refusal here unregisters the wait.
    pub(crate) fn renew(&mut self) -> Result<(), Cycle> {
        if !self.needs_renewal() {
            return Ok(());
        }
        let mut g = GRAPH.lock();
        let stamp = g.seq;
        g.seq += 1;
        let Some(i) = g.waiting.iter().position(|w| w.thread == self.thread) else { return Ok(()) };
        g.waiting[i].stamp = stamp;
        let me = &g.waiting[i];
        if let Some(cycle) = find_cycle(&g.waiting, me.thread, &me.want, stamp, &me.holds) {
            g.waiting.swap_remove(i);
            self.thread = 0;
            return Err(cycle);
        }
        Ok(())
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if self.thread != 0 {
            let mut g = GRAPH.lock();
            if let Some(i) = g.waiting.iter().position(|w| w.thread == self.thread) {
                g.waiting.swap_remove(i);
            }
        }
    }
}

/// Called by the waiting code when this thread is about to wait for `shard` of map `map`
/// (named `map_name`), after its non-blocking try failed and after the re-entrant checks:
/// registers the wait for as long as the returned guard lives, or refuses it if it would close
/// a cycle of waiting threads. Works with any wait implementation: it looks only at the graph.
/// A read wait whose guard [`needs_renewal`](WaitGuard::needs_renewal) must wait in bounded
/// steps and [`renew`](WaitGuard::renew) between them.
///
/// A thread that holds nothing cannot close a cycle: it is registered (a writer, so that
/// readers queued behind it see it) without a search, or not at all (a reader). The waiting
/// code registers such a writer only once it has waited a few milliseconds, so that short
/// waits never take the graph's lock; a reader's periodic [`renew`](WaitGuard::renew) sees it
/// from then on.
#[cold]
pub(crate) fn waiting_for(
    map_name: &Arc<str>,
    map: u64,
    shard: usize,
    access: Access,
) -> Result<WaitGuard, Cycle> {
    let write = access == Access::Write;
    let holds: Box<[Held]> = (0..HELD_COUNT.with(Cell::get)).filter_map(held_at).collect();
    if holds.is_empty() && !write {
        return Ok(WaitGuard::NONE);
    }
    let thread = thread_id();
    let want = Held { map, shard, write, guard: false };
    let mut g = GRAPH.lock();
    // A reader is about to join the queue: behind every writer stamped by now. A writer's
    // place counts only once it is in the queue (`WaitGuard::queued`).
    let stamp = if write {
        NOT_QUEUED
    } else {
        g.seq += 1;
        g.seq - 1
    };
    if !holds.is_empty() {
        if let Some(cycle) = find_cycle(&g.waiting, thread, &want, stamp, &holds) {
            return Err(cycle);
        }
    }
    let reader = !holds.is_empty() && !write;
    g.waiting.push(Waiting { thread, stamp, holds, want, want_map: map_name.clone() });
    Ok(WaitGuard { thread, reader, _not_send: PhantomData })
}

/// Breadth-first from the waiters that block `want`: the first one found whose own want is
/// blocked by `holds` closes the shortest cycle.
fn find_cycle(waiting: &[Waiting], thread: u64, want: &Held, stamp: u64, holds: &[Held]) -> Option<Cycle> {
    let mut seen = vec![false; waiting.len()];
    let mut queue = VecDeque::new();
    for (i, w) in waiting.iter().enumerate() {
        if blocked_by(thread, want, stamp, w) {
            seen[i] = true;
            queue.push_back((i, 2));
        }
    }
    while let Some((i, threads)) = queue.pop_front() {
        let w = &waiting[i];
        if let Some(h) = holds.iter().find(|h| conflicts(h, &w.want)) {
            return Some(Cycle { held_map: w.want_map.clone(), held_shard: h.shard, threads });
        }
        for (j, next) in waiting.iter().enumerate() {
            if !seen[j] && blocked_by(w.thread, &w.want, w.stamp, next) {
                seen[j] = true;
                queue.push_back((j, threads + 1));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(thread: u64, stamp: u64, holds: &[(u64, usize, bool)], want: (u64, usize, bool)) -> Waiting {
        let h = |(map, shard, write): (u64, usize, bool)| Held { map, shard, write, guard: false };
        Waiting {
            thread,
            stamp,
            holds: holds.iter().copied().map(h).collect(),
            want: h(want),
            want_map: Arc::from(format!("map{}", want.0)),
        }
    }

    fn cycle(waiting: &[Waiting], holds: &[(u64, usize, bool)], want: (u64, usize, bool)) -> Option<Cycle> {
        let me = w(99, 1000, holds, want);
        find_cycle(waiting, me.thread, &me.want, me.stamp, &me.holds)
    }

    #[test]
    fn a_write_wait_on_a_shard_whose_holder_waits_for_ours_is_a_cycle() {
        // B reads (1, 2) and wants to write (1, 1); we read (1, 1) and want to write (1, 2).
        let b = [w(1, 0, &[(1, 2, false)], (1, 1, true))];
        let c = cycle(&b, &[(1, 1, false)], (1, 2, true)).expect("AB/BA");
        assert_eq!((&*c.held_map, c.held_shard, c.threads), ("map1", 1, 2));
        // Two readers that each want to *read* the other's shard do not block each other.
        let b = [w(1, 0, &[(1, 2, false)], (1, 1, false))];
        assert_eq!(cycle(&b, &[(1, 1, false)], (1, 2, false)), None);
        // A read wait is blocked by a write holder.
        let b = [w(1, 0, &[(1, 2, true)], (1, 1, true))];
        assert!(cycle(&b, &[(1, 1, false)], (1, 2, false)).is_some());
    }

    #[test]
    fn cycles_through_three_threads_and_two_maps_are_found_and_chains_are_not() {
        // B holds (1, 2) wants (2, 3); C holds (2, 3) wants (1, 1); we hold (1, 1), want (1, 2).
        let chain = [w(1, 0, &[(1, 2, true)], (2, 3, true)), w(2, 1, &[(2, 3, true)], (1, 1, true))];
        let c = cycle(&chain, &[(1, 1, true)], (1, 2, true)).expect("A->B->C->A");
        assert_eq!((&*c.held_map, c.held_shard, c.threads), ("map1", 1, 3));
        // The same chain with C waiting for a shard nobody of the chain holds: no cycle.
        let open = [w(1, 0, &[(1, 2, true)], (2, 3, true)), w(2, 1, &[(2, 3, true)], (1, 5, true))];
        assert_eq!(cycle(&open, &[(1, 1, true)], (1, 2, true)), None);
        // Same shard index in another map is another shard.
        let other_map = [w(1, 0, &[(2, 2, true)], (1, 1, true))];
        assert_eq!(cycle(&other_map, &[(1, 1, true)], (1, 2, true)), None);
        // A cycle that does not pass through us is not ours to refuse.
        let theirs = [w(1, 0, &[(1, 2, true)], (1, 3, true)), w(2, 1, &[(1, 3, true)], (1, 2, true))];
        assert_eq!(cycle(&theirs, &[(1, 1, true)], (1, 2, true)), None);
    }

    #[test]
    fn a_read_wait_queues_only_behind_a_writer_that_waited_first() {
        // B reads (1, 2) and wants to write (1, 1), which we read; C waits to write (1, 2).
        // We want to read (1, 2): B shares it with us, but we queue behind C, C behind B's read,
        // B behind our read: a cycle, if C started waiting before us.
        let before = [w(1, 0, &[(1, 2, false)], (1, 1, true)), w(2, 1, &[], (1, 2, true))];
        let c = cycle(&before, &[(1, 1, false)], (1, 2, false)).expect("through a waiting writer");
        assert_eq!((c.held_shard, c.threads), (1, 3));
        // C registered after us (seq 2000 > 1000): we are ahead of it, no cycle.
        let after = [w(1, 0, &[(1, 2, false)], (1, 1, true)), w(2, 2000, &[], (1, 2, true))];
        assert_eq!(cycle(&after, &[(1, 1, false)], (1, 2, false)), None);
        // A writer waiting on a shard no waiting thread holds blocks nothing for good.
        let free = [w(2, 1, &[], (1, 2, true)), w(1, 0, &[(1, 3, false)], (1, 1, true))];
        assert_eq!(cycle(&free, &[(1, 1, false)], (1, 2, false)), None);
    }

    #[test]
    fn waiting_for_registers_until_the_guard_drops_and_refuses_the_closing_wait() {
        let map: Arc<str> = Arc::from("unit");
        // Map ids far from any real map's.
        let (m, other) = (u64::MAX - 7, u64::MAX - 8);
        let registered = |map: u64| GRAPH.lock().waiting.iter().filter(|w| w.want.map == map).count();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _held = HeldMark::new(m, 2, false);
            let _w = waiting_for(&Arc::from("unit"), m, 1, Access::Write).expect("first waiter");
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
        });
        rx.recv().unwrap();
        assert_eq!(registered(m), 1);
        {
            let _held = HeldMark::new(m, 1, false);
            // Another map's shard 2 is not the one the other thread holds.
            let ok = waiting_for(&map, other, 2, Access::Write).expect("no cycle");
            drop(ok);
            let c = waiting_for(&map, m, 2, Access::Write).err().expect("closes the cycle");
            assert_eq!((c.held_shard, c.threads), (1, 2));
            // Reading what the other thread reads is no wait at all.
            assert!(waiting_for(&map, m, 2, Access::Read).is_ok());
        }
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(registered(m), 0);
    }

    /// A thread parked in the graph: it marks `holds` and registers a wait for `want`, then
    /// takes steps on command until dropped.
    struct Parked {
        cmd: Option<std::sync::mpsc::Sender<Step>>,
        ack: std::sync::mpsc::Receiver<()>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    enum Step {
        /// The wait has joined the lock's queue (`WaitGuard::queued`).
        Queued,
        /// A bounded step ended: the wait queues again (`WaitGuard::renew`).
        Renew,
    }

    impl Parked {
        fn new(holds: &'static [(u64, usize, bool)], want: (u64, usize, Access)) -> Self {
            let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<Step>();
            let (ack_tx, ack) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                let _marks: Vec<HeldMark> = holds.iter().map(|&(m, s, w)| HeldMark::new(m, s, w)).collect();
                let mut g = waiting_for(&Arc::from("unit"), want.0, want.1, want.2).expect("registers");
                ack_tx.send(()).unwrap();
                for step in cmd_rx {
                    match step {
                        Step::Queued => g.queued(),
                        Step::Renew => g.renew().expect("no cycle through this thread"),
                    }
                    ack_tx.send(()).unwrap();
                }
            });
            ack.recv().unwrap();
            Parked { cmd: Some(cmd_tx), ack, thread: Some(thread) }
        }

        /// Takes `step` and returns once it is done.
        fn step(&self, step: Step) {
            self.cmd.as_ref().unwrap().send(step).unwrap();
            self.ack.recv().unwrap();
        }
    }

    impl Drop for Parked {
        fn drop(&mut self) {
            drop(self.cmd.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn a_writer_is_ahead_of_a_reader_only_once_it_has_joined_the_lock_queue() {
        // Map ids far from any real map's (and from the other tests').
        const M: u64 = u64::MAX - 20;
        let map: Arc<str> = Arc::from("unit");
        // S reads shard 2 and waits to write shard 1.
        let _s = Parked::new(&[(M, 2, false)], (M, 1, Access::Write));
        // U (holding shard 9) waits to write shard 2, behind S's read; it has registered but
        // not joined the lock's queue yet.
        let u = Parked::new(&[(M, 9, true)], (M, 2, Access::Write));
        // V reads shard 3 and waits to read shard 2: it joins the queue before U does, so it
        // is ahead of U (the lock may even hand it shard 2 at once, S holding it shared).
        let v = Parked::new(&[(M, 3, false)], (M, 2, Access::Read));
        // Then U joins the queue.
        u.step(Step::Queued);
        // We read shard 1 and want to write shard 3 (V reads it). V is not behind U, so the
        // chain us → V → U → S → us is no cycle: V gets shard 2 and goes on. (When the graph
        // ordered waits by registration, this was refused.)
        let held = HeldMark::new(M, 1, false);
        let ok = waiting_for(&map, M, 3, Access::Write);
        assert!(ok.is_ok(), "refused through a reader that is ahead of the writer: {:?}", ok.err());
        drop(ok);
        // V's bounded step ends and it queues again, now behind U: from then on the cycle is
        // real, and the wait that would close it is refused.
        v.step(Step::Renew);
        let c = waiting_for(&map, M, 3, Access::Write).err().expect("us → V → U → S → us");
        assert_eq!((c.held_shard, c.threads), (1, 4));
        drop(held);
    }

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
