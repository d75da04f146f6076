//! The synchronisation primitives the lock is built from, switched to `loom`'s models under
//! `cfg(loom)` so that `loom` can explore every interleaving of the wait queue.
//!
//! Only what the queue's correctness rests on goes through here (the state word, the queue's
//! mutex, the grant flag, parking a thread). `std::sync::Arc` stays std's in both builds: a
//! `Waker` can only be made from std's `Arc`, and loom does not need to see reference counts.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[cfg(loom)]
pub(crate) use loom::thread::{current as current_thread, Thread};
#[cfg(not(loom))]
pub(crate) use std::thread::{current as current_thread, Thread};

/// A mutex without poisoning: parking_lot's (its `new` is `const`, which `RawRwLock::INIT`
/// needs), or loom's model of one.
pub(crate) struct Mutex<T> {
    #[cfg(not(loom))]
    inner: parking_lot::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

#[cfg(not(loom))]
pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;
#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new(value: T) -> Self {
        Mutex { inner: parking_lot::Mutex::new(value) }
    }

    #[cfg(loom)]
    pub(crate) fn new(value: T) -> Self {
        Mutex { inner: loom::sync::Mutex::new(value) }
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(loom))]
        {
            self.inner.lock()
        }
        #[cfg(loom)]
        {
            // loom's mutex poisons like std's; a panic in a model fails the model anyway.
            self.inner.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

/// Parks the current thread until it is unparked (or spuriously).
#[inline]
pub(crate) fn park() {
    #[cfg(not(loom))]
    std::thread::park();
    #[cfg(loom)]
    loom::thread::park();
}

/// Parks the current thread for at most `timeout`. loom has no time: there it yields, and the
/// waiter's loop looks again (models use no deadline, so this is never reached in them).
#[inline]
pub(crate) fn park_timeout(timeout: std::time::Duration) {
    #[cfg(not(loom))]
    std::thread::park_timeout(timeout);
    #[cfg(loom)]
    {
        let _ = timeout;
        loom::thread::yield_now();
    }
}
