//! The wait queue: one FIFO of waiters per lock, shared by threads and tasks.
//!
//! A waiter is a [`Signal`] (a grant flag and the [`Waker`] to call) plus the kind of access it
//! wants. Threads and tasks differ only in their waker: a task's is its executor's, a thread's
//! unparks the thread. The queue itself is a `VecDeque` under a mutex that only the slow paths
//! take (a waiter joining or leaving, an unlock that must hand the lock on); waits are short
//! and queues are short (one per shard), so leaving by a linear search is cheaper than an
//! intrusive list and needs no `unsafe`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Wake, Waker};

use super::sync::{current_thread, AtomicBool, Mutex, Ordering, Thread};

/// What a waiter is woken through, and whether it has been handed the lock.
pub(crate) struct Signal {
    /// Set (under the queue's mutex) when the lock has been handed to this waiter: from then
    /// on the waiter owns it, whether or not it has noticed yet.
    granted: AtomicBool,
    /// The waker to call on a grant, a deadline or a cancellation. A task replaces it when it
    /// is polled with another one.
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    pub(crate) fn new(waker: Waker) -> Arc<Self> {
        Arc::new(Signal { granted: AtomicBool::new(false), waker: Mutex::new(Some(waker)) })
    }

    /// A signal that wakes the current thread.
    pub(crate) fn for_this_thread() -> Arc<Self> {
        Signal::new(Waker::from(Arc::new(Unparker(current_thread()))))
    }

    /// Whether this waiter owns the lock. Acquire: pairs with the release in [`grant`], so
    /// the previous holder's writes are visible to the new one.
    ///
    /// [`grant`]: Signal::grant
    #[inline]
    pub(crate) fn is_granted(&self) -> bool {
        self.granted.load(Ordering::Acquire)
    }

    /// Marks the lock as handed to this waiter (the caller holds the queue's mutex and has
    /// already counted the waiter in the lock's state). The waiter is woken later, by
    /// [`wake`](Signal::wake), once the queue's mutex is released.
    pub(crate) fn grant(&self) {
        self.granted.store(true, Ordering::Release);
    }

    /// Replaces the waker if the new one would wake another task.
    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut slot = self.waker.lock();
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// Calls the waker (outside the signal's own mutex: a waker may run arbitrary code).
    pub(crate) fn wake(&self) {
        let waker = self.waker.lock().clone();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The timer and the cancel token wake a waiter through its signal, so that a task that moves
/// to another waker is still reached.
impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        Signal::wake(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        Signal::wake(self);
    }
}

/// A thread's waker.
struct Unparker(Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// One waiter in the queue.
pub(crate) struct Waiter {
    pub(crate) id: u64,
    pub(crate) exclusive: bool,
    pub(crate) signal: Arc<Signal>,
}

/// The FIFO of waiters of one lock.
pub(crate) struct Queue {
    pub(crate) waiters: VecDeque<Waiter>,
    /// Ids tell waiters apart when one leaves (a signal could be compared by address too, but
    /// an id is plain data).
    next_id: u64,
}

impl Queue {
    pub(crate) const fn new() -> Self {
        Queue { waiters: VecDeque::new(), next_id: 0 }
    }

    pub(crate) fn push(&mut self, exclusive: bool, signal: Arc<Signal>) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.waiters.push_back(Waiter { id, exclusive, signal });
        id
    }

    /// Removes waiter `id`; returns where it was (0 = the head), or `None` if it is not queued
    /// (it was granted the lock and popped).
    pub(crate) fn remove(&mut self, id: u64) -> Option<usize> {
        let pos = self.waiters.iter().position(|w| w.id == id)?;
        self.waiters.remove(pos);
        Some(pos)
    }
}

/// Signals to wake once the queue's mutex is released. Most hand-offs wake one or a few
/// waiters; the Vec allocates only when there is someone to wake (a slow path).
pub(crate) type WakeList = Vec<Arc<Signal>>;

pub(crate) fn wake_all(list: WakeList) {
    for s in list {
        s.wake();
    }
}
