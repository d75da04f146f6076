//! [`RawLock`]: the state word, the fast paths, and the hand-off through the wait queue.
//!
//! # State
//!
//! One `usize`: bit 0 `WRITER` (held exclusively), bit 1 `QUEUED` (the wait queue is not
//! empty), and the number of readers above them. `QUEUED` is set and cleared only under the
//! queue's mutex, and is set exactly while the queue has waiters (at every point where the
//! mutex is free).
//!
//! # Fast paths (no mutex, no clock, no allocation)
//!
//! - `try_read`: one CAS adding a reader, only if neither `WRITER` nor `QUEUED` is set: a new
//!   reader never barges past a waiter, so a writer in the queue is not starved by a stream of
//!   readers (a *recursive* read ignores `QUEUED`: its thread already reads, and the writer
//!   ahead waits for it).
//! - `try_write`: one CAS from 0 to `WRITER`.
//! - `unlock_read`: one `fetch_sub`; only the last reader out of a lock with waiters goes on
//!   to the slow path.
//! - `unlock_write`: one CAS from `WRITER` to 0; with waiters, the slow path.
//!
//! # Hand-off
//!
//! An unlock that sees `QUEUED` takes the queue's mutex and *dispatches*: it grants the lock
//! to the head of the queue directly (counts it in the state word, sets its grant flag, wakes
//! it), and, if the head is a reader, to every reader behind it up to the first writer.
//! Strict FIFO: a waiter is granted only at the head, so neither threads nor tasks, readers
//! nor writers, can be overtaken by someone who came later. A waiter that gives up (deadline,
//! cancel, dropped future) leaves the queue under the mutex; if it was already granted it
//! owns the lock and must release it (the future does so on drop); if it was the head, the
//! queue is dispatched again (readers behind a writer that gave up may now enter).

use std::sync::Arc;
#[cfg(not(loom))]
use std::time::Duration;
use std::time::Instant;

use super::queue::{wake_all, Queue, Signal, WakeList};
use super::sync::{park, park_timeout, AtomicUsize, Mutex, Ordering};
use super::WaitError;
use crate::CancelToken;

const WRITER: usize = 1;
const QUEUED: usize = 2;
const ONE_READER: usize = 4;
const READERS: usize = !(WRITER | QUEUED);

/// A fair reader-writer lock whose FIFO wait queue serves threads and async tasks alike.
///
/// It implements [`lock_api::RawRwLock`] (with timed, recursive and downgrade variants), so
/// `lock_api::RwLock<RawLock, T>` is a complete `RwLock`; its own methods add waits bounded by
/// a deadline and a [`CancelToken`], for threads ([`lock_shared_until`](Self::lock_shared_until))
/// and tasks ([`read_async`](Self::read_async)). Uncontended locking and unlocking is one
/// atomic operation, as in parking_lot.
pub struct RawLock {
    state: AtomicUsize,
    queue: Mutex<Queue>,
}

/// Whether a waiter got the lock when it joined the queue.
enum Joined {
    Granted,
    Queued(u64),
}

impl RawLock {
    /// An unlocked lock.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        RawLock { state: AtomicUsize::new(0), queue: Mutex::new(Queue::new()) }
    }

    /// An unlocked lock.
    #[cfg(loom)]
    pub fn new() -> Self {
        RawLock { state: AtomicUsize::new(0), queue: Mutex::new(Queue::new()) }
    }

    // ---- fast paths --------------------------------------------------------------------------

    /// Takes a read lock if it is free of writers and of waiters; never waits.
    #[inline]
    pub fn try_lock_shared(&self) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        if s & (WRITER | QUEUED) == 0 {
            if let Some(n) = s.checked_add(ONE_READER) {
                if self.state.compare_exchange(s, n, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return true;
                }
            }
        }
        self.try_lock_shared_retry(false)
    }

    /// Takes a read lock if no writer holds it, even past queued waiters (for a thread that
    /// already reads: a writer ahead of it in the queue waits for it). Never waits.
    #[inline]
    pub fn try_lock_shared_recursive(&self) -> bool {
        self.try_lock_shared_retry(true)
    }

    /// The CAS loop behind a failed first try: another reader may have come or gone.
    #[cold]
    fn try_lock_shared_retry(&self, recursive: bool) -> bool {
        let blocked = if recursive { WRITER } else { WRITER | QUEUED };
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & blocked != 0 {
                return false;
            }
            let Some(n) = s.checked_add(ONE_READER) else { return false };
            match self.state.compare_exchange_weak(s, n, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    /// Takes the write lock if it is free; never waits.
    #[inline]
    pub fn try_lock_exclusive(&self) -> bool {
        self.state.compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    /// Releases a read lock.
    ///
    /// # Safety
    ///
    /// The caller holds a read lock (from a successful acquisition it has not released).
    #[inline]
    pub unsafe fn unlock_shared(&self) {
        let prev = self.state.fetch_sub(ONE_READER, Ordering::Release);
        debug_assert!(prev & READERS != 0, "unlock_shared without a read lock");
        if prev & (READERS | QUEUED) == ONE_READER | QUEUED {
            // The last reader out, and someone waits: a writer at the head.
            self.handoff(0);
        }
    }

    /// Releases the write lock.
    ///
    /// # Safety
    ///
    /// The caller holds the write lock.
    #[inline]
    pub unsafe fn unlock_exclusive(&self) {
        if self.state.compare_exchange(WRITER, 0, Ordering::Release, Ordering::Relaxed).is_err() {
            self.handoff(WRITER);
        }
    }

    /// Turns the write lock into a read lock, letting the readers at the head of the queue in
    /// with it.
    ///
    /// # Safety
    ///
    /// The caller holds the write lock.
    pub unsafe fn downgrade(&self) {
        if self.state.compare_exchange(WRITER, ONE_READER, Ordering::Release, Ordering::Relaxed).is_err() {
            self.handoff(WRITER.wrapping_sub(ONE_READER));
        }
    }

    /// Whether the lock is held (read or write).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & (WRITER | READERS) != 0
    }

    /// Whether the lock is held for writing.
    pub fn is_locked_exclusive(&self) -> bool {
        self.state.load(Ordering::Relaxed) & WRITER != 0
    }

    // ---- the queue -----------------------------------------------------------------------------

    /// The slow half of an unlock: under the queue's mutex, subtracts `release` from the state
    /// (the holder's `WRITER` bit, or `WRITER - ONE_READER` for a downgrade, or nothing for a
    /// reader, who has already subtracted itself) and hands the lock on.
    #[cold]
    fn handoff(&self, release: usize) {
        let mut wake = WakeList::new();
        {
            let mut q = self.queue.lock();
            if release != 0 {
                // Wrapping: a downgrade adds a reader while it removes the writer.
                let _ = self
                    .state
                    .fetch_update(Ordering::Release, Ordering::Relaxed, |s| Some(s.wrapping_sub(release)));
            }
            self.dispatch(&mut q, &mut wake);
        }
        wake_all(wake);
    }

    /// Grants the lock to the head of the queue while it can: a writer if nobody holds the
    /// lock, a reader (and the readers right behind it) if no writer does. Clears `QUEUED`
    /// once the queue is empty. Called with the queue's mutex held; the signals to wake are
    /// pushed on `wake`.
    fn dispatch(&self, q: &mut Queue, wake: &mut WakeList) {
        while let Some(head) = q.waiters.front() {
            let s = self.state.load(Ordering::Relaxed);
            if head.exclusive {
                if s & (WRITER | READERS) != 0 {
                    break;
                }
                // A recursive reader may come in meanwhile: CAS, and look again if it did.
                // Acquire: the writer-to-be sees the writes of every reader that left.
                if self.state.compare_exchange(s, s | WRITER, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                    continue;
                }
            } else {
                if s & WRITER != 0 {
                    break;
                }
                // With QUEUED set, nobody outside this mutex sets WRITER: add the reader.
                self.state.fetch_add(ONE_READER, Ordering::AcqRel);
            }
            let Some(w) = q.waiters.pop_front() else { break };
            w.signal.grant();
            wake.push(w.signal);
        }
        if q.waiters.is_empty() {
            self.state.fetch_and(!QUEUED, Ordering::Release);
        }
    }

    /// Takes the lock at once if the queue is empty and the lock is free for this access, or
    /// joins the tail of the queue (setting `QUEUED`, so that the holder's unlock hands over).
    fn join(&self, exclusive: bool, signal: &Arc<Signal>) -> Joined {
        let mut q = self.queue.lock();
        let mut s = self.state.load(Ordering::Relaxed);
        while s & QUEUED == 0 {
            let busy = if exclusive { WRITER | READERS } else { WRITER };
            let (next, taken) = if s & busy == 0 {
                match s.checked_add(if exclusive { WRITER } else { ONE_READER }) {
                    Some(n) => (n, true),
                    None => (s | QUEUED, false),
                }
            } else {
                (s | QUEUED, false)
            };
            // A CAS, not a store: if the holder unlocked meanwhile (its fast path saw no
            // QUEUED), this fails and the lock is looked at again.
            match self.state.compare_exchange_weak(s, next, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) if taken => return Joined::Granted,
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        let id = q.push(exclusive, signal.clone());
        // A holder in the middle of its unlock will dispatch once it has the mutex; otherwise
        // the head is blocked, and so is this waiter behind it.
        Joined::Queued(id)
    }

    /// Leaves the queue. Returns `true` if the waiter had been granted the lock meanwhile (it
    /// owns it then and must release it), `false` if it left without it.
    pub(crate) fn leave(&self, id: u64, signal: &Signal) -> bool {
        let mut wake = WakeList::new();
        {
            let mut q = self.queue.lock();
            if signal.is_granted() {
                return true;
            }
            if q.remove(id) == Some(0) || q.waiters.is_empty() {
                // The head left: the next ones may enter (readers behind a writer that gave up).
                self.dispatch(&mut q, &mut wake);
            }
        }
        wake_all(wake);
        false
    }

    /// Joins the queue for an async waiter (see [`Acquire`](super::Acquire)).
    pub(crate) fn join_async(&self, exclusive: bool, signal: &Arc<Signal>) -> Option<u64> {
        match self.join(exclusive, signal) {
            Joined::Granted => None,
            Joined::Queued(id) => Some(id),
        }
    }

    /// The number of readers holding the lock (tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn readers(&self) -> usize {
        (self.state.load(Ordering::Relaxed) & READERS) / ONE_READER
    }

    /// The number of waiters in the queue (tests and diagnostics).
    pub fn queued(&self) -> usize {
        self.queue.lock().waiters.len()
    }

    // ---- waiting threads -----------------------------------------------------------------------

    /// Takes a read lock, waiting in the queue until `deadline` (none: without bound) unless
    /// `cancel` is cancelled first. A cancelled token fails the call before it waits.
    ///
    /// A grant that races the deadline or the cancellation wins: `Ok` then means the lock is
    /// held.
    pub fn lock_shared_until(
        &self,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
    ) -> Result<(), WaitError> {
        if self.try_lock_shared() {
            return Ok(());
        }
        self.wait(false, deadline, cancel)
    }

    /// Takes the write lock; as [`lock_shared_until`](Self::lock_shared_until).
    pub fn lock_exclusive_until(
        &self,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
    ) -> Result<(), WaitError> {
        if self.try_lock_exclusive() {
            return Ok(());
        }
        self.wait(true, deadline, cancel)
    }

    /// Takes the write lock as [`lock_exclusive_until`](Self::lock_exclusive_until) does, and
    /// calls `queued` once this thread has joined the wait queue (not if it got the lock
    /// without queueing), before it parks: from then on every waiter that joins is behind it.
    /// The map's wait-for graph learns there when a waiting writer is ahead of a reader.
    pub(crate) fn lock_exclusive_until_then(
        &self,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
        queued: impl FnOnce(),
    ) -> Result<(), WaitError> {
        if self.try_lock_exclusive() {
            return Ok(());
        }
        self.wait_then(true, deadline, cancel, queued)
    }

    /// Parks this thread in the queue. The thread is woken by the hand-off, by the cancel
    /// token (it registers its waker there), or by its own timed park at the deadline.
    #[cold]
    fn wait(
        &self,
        exclusive: bool,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
    ) -> Result<(), WaitError> {
        self.wait_then(exclusive, deadline, cancel, || {})
    }

    /// [`wait`](Self::wait), calling `queued` once the thread is in the queue (outside the
    /// queue's mutex).
    #[cold]
    fn wait_then(
        &self,
        exclusive: bool,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
        queued: impl FnOnce(),
    ) -> Result<(), WaitError> {
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(WaitError::Cancelled);
        }
        let signal = Signal::for_this_thread();
        let id = match self.join(exclusive, &signal) {
            Joined::Granted => return Ok(()),
            Joined::Queued(id) => id,
        };
        queued();
        let _watch = cancel.map(|c| c.watch(std::task::Waker::from(signal.clone())));
        loop {
            if signal.is_granted() {
                return Ok(());
            }
            if cancel.is_some_and(CancelToken::is_cancelled) {
                return self.give_up(id, &signal, WaitError::Cancelled);
            }
            match deadline {
                None => park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return self.give_up(id, &signal, WaitError::Timeout);
                    }
                    park_timeout(d - now);
                }
            }
        }
    }

    fn give_up(&self, id: u64, signal: &Signal, why: WaitError) -> Result<(), WaitError> {
        if self.leave(id, signal) {
            Ok(())
        } else {
            Err(why)
        }
    }

    #[cfg(not(loom))]
    fn deadline_in(timeout: Duration) -> Option<Instant> {
        Instant::now().checked_add(timeout)
    }

    #[cfg(not(loom))]
    fn timed(&self, exclusive: bool, recursive: bool, deadline: Option<Instant>) -> bool {
        let fast = if exclusive {
            self.try_lock_exclusive()
        } else if recursive {
            self.try_lock_shared_recursive()
        } else {
            self.try_lock_shared()
        };
        fast || self.wait(exclusive, deadline, None).is_ok()
    }
}

#[cfg(not(loom))]
impl Default for RawLock {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RawLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("RawLock")
            .field("writer", &(s & WRITER != 0))
            .field("readers", &((s & READERS) / ONE_READER))
            .field("queued", &(s & QUEUED != 0))
            .finish()
    }
}

// SAFETY: `RawLock` is a reader-writer lock: a write lock is granted only when the state has
// no writer and no reader (`try_lock_exclusive`'s CAS from 0; `dispatch` and `join` check
// `WRITER | READERS` is clear in the value their CAS replaces), and a read lock only when the
// state has no writer (the read CASes check `WRITER` in the value they replace; `dispatch`
// adds a reader only when `WRITER` is clear, and while `QUEUED` is set no one else can set
// it, since `try_lock_exclusive` needs a state of 0 and everything else that sets it holds the
// queue's mutex). Acquisitions use Acquire and releases Release on the state word (grants
// through the queue add a Release store / Acquire load of the grant flag), so a holder sees
// every write made under the lock before it. `loom` checks the queue (see `lock::loom_tests`).
#[cfg(not(loom))]
unsafe impl lock_api::RawRwLock for RawLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: RawLock = RawLock::new();

    // Any thread may release: the lock has no notion of an owner thread (a task may be resumed
    // on another worker between its lock and its unlock).
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock_shared(&self) {
        if !self.try_lock_shared() {
            let _ = self.wait(false, None, None);
        }
    }

    #[inline]
    fn try_lock_shared(&self) -> bool {
        RawLock::try_lock_shared(self)
    }

    #[inline]
    unsafe fn unlock_shared(&self) {
        // SAFETY: forwarded; the caller holds a read lock.
        unsafe { RawLock::unlock_shared(self) }
    }

    #[inline]
    fn lock_exclusive(&self) {
        if !self.try_lock_exclusive() {
            let _ = self.wait(true, None, None);
        }
    }

    #[inline]
    fn try_lock_exclusive(&self) -> bool {
        RawLock::try_lock_exclusive(self)
    }

    #[inline]
    unsafe fn unlock_exclusive(&self) {
        // SAFETY: forwarded; the caller holds the write lock.
        unsafe { RawLock::unlock_exclusive(self) }
    }

    #[inline]
    fn is_locked(&self) -> bool {
        RawLock::is_locked(self)
    }

    #[inline]
    fn is_locked_exclusive(&self) -> bool {
        RawLock::is_locked_exclusive(self)
    }
}

// SAFETY: the timed acquisitions take the lock by the same paths as the untimed ones (see
// above); they only stop waiting at the deadline, leaving the queue without the lock.
#[cfg(not(loom))]
unsafe impl lock_api::RawRwLockTimed for RawLock {
    type Duration = Duration;
    type Instant = Instant;

    #[inline]
    fn try_lock_shared_for(&self, timeout: Duration) -> bool {
        self.timed(false, false, Self::deadline_in(timeout))
    }

    #[inline]
    fn try_lock_shared_until(&self, timeout: Instant) -> bool {
        self.timed(false, false, Some(timeout))
    }

    #[inline]
    fn try_lock_exclusive_for(&self, timeout: Duration) -> bool {
        self.timed(true, false, Self::deadline_in(timeout))
    }

    #[inline]
    fn try_lock_exclusive_until(&self, timeout: Instant) -> bool {
        self.timed(true, false, Some(timeout))
    }
}

// SAFETY: a recursive read is a read taken while `WRITER` is clear (see the impl above); it
// only skips the no-barging rule, which is about fairness, not exclusion.
#[cfg(not(loom))]
unsafe impl lock_api::RawRwLockRecursive for RawLock {
    #[inline]
    fn lock_shared_recursive(&self) {
        if !self.try_lock_shared_recursive() {
            let _ = self.wait(false, None, None);
        }
    }

    #[inline]
    fn try_lock_shared_recursive(&self) -> bool {
        RawLock::try_lock_shared_recursive(self)
    }
}

// SAFETY: as for `RawRwLockTimed` and `RawRwLockRecursive` above.
#[cfg(not(loom))]
unsafe impl lock_api::RawRwLockRecursiveTimed for RawLock {
    #[inline]
    fn try_lock_shared_recursive_for(&self, timeout: Duration) -> bool {
        self.timed(false, true, Self::deadline_in(timeout))
    }

    #[inline]
    fn try_lock_shared_recursive_until(&self, timeout: Instant) -> bool {
        self.timed(false, true, Some(timeout))
    }
}

// SAFETY: `downgrade` replaces the writer by one reader in one atomic step (CAS, or under the
// queue's mutex), so no writer can enter in between.
#[cfg(not(loom))]
unsafe impl lock_api::RawRwLockDowngrade for RawLock {
    #[inline]
    unsafe fn downgrade(&self) {
        // SAFETY: forwarded; the caller holds the write lock.
        unsafe { RawLock::downgrade(self) }
    }
}
