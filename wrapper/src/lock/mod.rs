//! The shard lock: a fair reader-writer lock whose one FIFO wait queue serves waiting threads
//! and waiting async tasks alike, with waits bounded by a deadline and a [`CancelToken`].
//!
//! - [`RawLock`] implements [`lock_api::RawRwLock`] (timed, recursive, downgrade), so a shard
//!   is a `lock_api::RwLock<RawLock, Table>` ([`RwLock`]) with the usual guards.
//! - Threads wait with [`RawLock::lock_shared_until`] / [`RawLock::lock_exclusive_until`]
//!   (or lock_api's `try_*_for` / `try_*_until`); tasks with [`RawLock::read_async`] /
//!   [`RawLock::write_async`], or [`read_async`] / [`write_async`], which return guards.
//! - Fairness: strict FIFO with hand-off (see `raw.rs`): the lock is granted to the head of
//!   the queue by the unlock itself, a batch of readers at a time, and a newcomer never
//!   overtakes a waiter. So a thread cannot starve a task nor the reverse, and a writer is not
//!   starved by a stream of readers.
//! - Uncontended, locking and unlocking is one atomic operation each: no clock read, no
//!   allocation, no mutex (`cargo bench --bench lock` compares it with parking_lot's).
//! - Async deadlines are kept by one timer thread of the library (`timer.rs` says why), so
//!   the futures need no runtime; cancellation wakes the waiter through the token.
//!
//! ```
//! # use map_wrapper::__private::lock::{RawLock, RwLock};
//! use std::time::{Duration, Instant};
//!
//! let lock: RwLock<u32> = RwLock::new(0);
//! let held = lock.write();
//! let deadline = Instant::now() + Duration::from_millis(10);
//! // A thread gives up at the deadline ...
//! assert!(lock.try_read_until(deadline).is_none());
//! drop(held);
//! assert_eq!(*lock.read(), 0);
//! ```

mod future;
mod queue;
mod raw;
mod sync;
#[cfg(not(loom))]
mod timer;
#[cfg(loom)]
mod timer {
    //! No timer thread in loom models (they wait without deadlines).
    #[derive(Debug)]
    pub(crate) struct TimerEntry;
    pub(crate) fn register(_: std::time::Instant, _: std::task::Waker) -> Option<TimerEntry> {
        None
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;

use std::fmt;
use std::time::Instant;

pub use future::Acquire;
pub use raw::RawLock;

use crate::CancelToken;

/// Why a bounded wait for the lock ended without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed first.
    Timeout,
    /// The cancel token was cancelled first.
    Cancelled,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaitError::Timeout => "the lock stayed held past the deadline",
            WaitError::Cancelled => "the wait for the lock was cancelled",
        })
    }
}

impl std::error::Error for WaitError {}

/// A reader-writer lock around a `T` with the fair thread-and-task queue of [`RawLock`].
#[cfg(not(loom))]
pub type RwLock<T> = lock_api::RwLock<RawLock, T>;
/// A read guard of [`RwLock`].
#[cfg(not(loom))]
pub type RwLockReadGuard<'a, T> = lock_api::RwLockReadGuard<'a, RawLock, T>;
/// A write guard of [`RwLock`].
#[cfg(not(loom))]
pub type RwLockWriteGuard<'a, T> = lock_api::RwLockWriteGuard<'a, RawLock, T>;
/// A read guard of [`RwLock`] narrowed to a part of the value.
#[cfg(not(loom))]
pub type MappedRwLockReadGuard<'a, T> = lock_api::MappedRwLockReadGuard<'a, RawLock, T>;

/// A read guard of `lock`, for a thread: waits in the queue until `deadline` unless `cancel` is
/// cancelled first (see [`RawLock::lock_shared_until`]).
#[cfg(not(loom))]
pub(crate) fn read_until<'a, T: ?Sized>(
    lock: &'a RwLock<T>,
    deadline: Option<Instant>,
    cancel: Option<&CancelToken>,
) -> Result<RwLockReadGuard<'a, T>, WaitError> {
    // SAFETY: `raw` is only used to take a read lock, which the guard below releases.
    let raw = unsafe { lock.raw() };
    raw.lock_shared_until(deadline, cancel)?;
    // SAFETY: the read lock was just acquired (`Ok`) and is owned by no guard yet; the guard
    // made here is its only owner.
    Ok(unsafe { lock.make_read_guard_unchecked() })
}

/// The write guard of `lock`, for a thread; as [`read_until`], calling `queued` once the
/// thread has joined the wait queue (see [`RawLock::lock_exclusive_until_then`]).
#[cfg(not(loom))]
pub(crate) fn write_until_then<'a, T: ?Sized>(
    lock: &'a RwLock<T>,
    deadline: Option<Instant>,
    cancel: Option<&CancelToken>,
    queued: impl FnOnce(),
) -> Result<RwLockWriteGuard<'a, T>, WaitError> {
    // SAFETY: `raw` is only used to take the write lock, which the guard below releases.
    let raw = unsafe { lock.raw() };
    raw.lock_exclusive_until_then(deadline, cancel, queued)?;
    // SAFETY: the write lock was just acquired and is owned by no guard yet.
    Ok(unsafe { lock.make_write_guard_unchecked() })
}

impl RawLock {
    /// Takes a read lock without blocking a thread: the future resolves once the lock is held
    /// (the caller then owns a read lock and releases it with
    /// [`unlock_shared`](Self::unlock_shared)), or fails at `deadline` or when `cancel` is
    /// cancelled. See [`Acquire`] for what dropping it does.
    #[inline]
    pub fn read_async<'a>(
        &'a self,
        deadline: Option<Instant>,
        cancel: Option<&'a CancelToken>,
    ) -> Acquire<'a> {
        Acquire::new(self, false, deadline, cancel)
    }

    /// Takes the write lock without blocking a thread; as [`read_async`](Self::read_async)
    /// (release with [`unlock_exclusive`](Self::unlock_exclusive)).
    #[inline]
    pub fn write_async<'a>(
        &'a self,
        deadline: Option<Instant>,
        cancel: Option<&'a CancelToken>,
    ) -> Acquire<'a> {
        Acquire::new(self, true, deadline, cancel)
    }
}

/// A read guard of `lock`, taken without blocking a thread (see [`RawLock::read_async`]).
/// Dropping the future before it completes leaks nothing.
#[cfg(not(loom))]
pub async fn read_async<'a, T: ?Sized>(
    lock: &'a RwLock<T>,
    deadline: Option<Instant>,
    cancel: Option<&'a CancelToken>,
) -> Result<RwLockReadGuard<'a, T>, WaitError> {
    // SAFETY: `raw` is only used to take a read lock, which the guard below releases.
    let raw = unsafe { lock.raw() };
    raw.read_async(deadline, cancel).await?;
    // SAFETY: the read lock was just acquired (the future resolved to Ok) and is owned by no
    // guard yet; the guard made here is its only owner.
    Ok(unsafe { lock.make_read_guard_unchecked() })
}

/// A write guard of `lock`, taken without blocking a thread; as [`read_async`].
#[cfg(not(loom))]
pub async fn write_async<'a, T: ?Sized>(
    lock: &'a RwLock<T>,
    deadline: Option<Instant>,
    cancel: Option<&'a CancelToken>,
) -> Result<RwLockWriteGuard<'a, T>, WaitError> {
    // SAFETY: `raw` is only used to take the write lock, which the guard below releases.
    let raw = unsafe { lock.raw() };
    raw.write_async(deadline, cancel).await?;
    // SAFETY: the write lock was just acquired and is owned by no guard yet.
    Ok(unsafe { lock.make_write_guard_unchecked() })
}

/// [`read_async`] with a token it owns (the map's async operations make the token from their
/// contexts when they first wait).
#[cfg(not(loom))]
pub(crate) async fn read_async_owned<T: ?Sized>(
    lock: &RwLock<T>,
    deadline: Option<Instant>,
    cancel: Option<CancelToken>,
) -> Result<RwLockReadGuard<'_, T>, WaitError> {
    // SAFETY: `raw` is only used to take a read lock, which the guard below releases.
    let raw = unsafe { lock.raw() };
    raw.read_async(deadline, cancel.as_ref()).await?;
    // SAFETY: the read lock was just acquired and is owned by no guard yet.
    Ok(unsafe { lock.make_read_guard_unchecked() })
}

/// [`write_async`] with a token it owns.
#[cfg(not(loom))]
pub(crate) async fn write_async_owned<T: ?Sized>(
    lock: &RwLock<T>,
    deadline: Option<Instant>,
    cancel: Option<CancelToken>,
) -> Result<RwLockWriteGuard<'_, T>, WaitError> {
    // SAFETY: `raw` is only used to take the write lock, which the guard below releases.
    let raw = unsafe { lock.raw() };
    raw.write_async(deadline, cancel.as_ref()).await?;
    // SAFETY: the write lock was just acquired and is owned by no guard yet.
    Ok(unsafe { lock.make_write_guard_unchecked() })
}

/// Under `cfg(loom)` only the queue is modelled (`loom_tests`); the rest of the crate still
/// has to compile, so the shards fall back to parking_lot's `RwLock` (the waits below are
/// plain timed waits; no map code runs in loom models).
#[cfg(loom)]
mod loom_fallback {
    use std::time::Instant;

    use super::WaitError;
    use crate::CancelToken;

    /// The shards' lock in loom builds.
    pub type RwLock<T> = parking_lot::RwLock<T>;
    /// Its read guard.
    pub type RwLockReadGuard<'a, T> = parking_lot::RwLockReadGuard<'a, T>;
    /// Its write guard.
    pub type RwLockWriteGuard<'a, T> = parking_lot::RwLockWriteGuard<'a, T>;
    /// Its mapped read guard.
    pub type MappedRwLockReadGuard<'a, T> = parking_lot::MappedRwLockReadGuard<'a, T>;

    fn far(deadline: Option<Instant>) -> Instant {
        deadline.unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(86_400))
    }

    pub(crate) fn read_until<'a, T: ?Sized>(
        lock: &'a RwLock<T>,
        deadline: Option<Instant>,
        _: Option<&CancelToken>,
    ) -> Result<RwLockReadGuard<'a, T>, WaitError> {
        lock.try_read_until(far(deadline)).ok_or(WaitError::Timeout)
    }

    pub(crate) fn write_until<'a, T: ?Sized>(
        lock: &'a RwLock<T>,
        deadline: Option<Instant>,
        _: Option<&CancelToken>,
    ) -> Result<RwLockWriteGuard<'a, T>, WaitError> {
        lock.try_write_until(far(deadline)).ok_or(WaitError::Timeout)
    }

    pub(crate) async fn read_async_owned<T: ?Sized>(
        lock: &RwLock<T>,
        deadline: Option<Instant>,
        cancel: Option<CancelToken>,
    ) -> Result<RwLockReadGuard<'_, T>, WaitError> {
        read_until(lock, deadline, cancel.as_ref())
    }

    pub(crate) fn write_until_then<'a, T: ?Sized>(
        lock: &'a RwLock<T>,
        deadline: Option<Instant>,
        cancel: Option<&CancelToken>,
        _: impl FnOnce(),
    ) -> Result<RwLockWriteGuard<'a, T>, WaitError> {
        write_until(lock, deadline, cancel)
    }

    pub(crate) async fn write_async_owned<T: ?Sized>(
        lock: &RwLock<T>,
        deadline: Option<Instant>,
        cancel: Option<CancelToken>,
    ) -> Result<RwLockWriteGuard<'_, T>, WaitError> {
        write_until(lock, deadline, cancel.as_ref())
    }
}

#[cfg(loom)]
pub(crate) use loom_fallback::{
    read_async_owned, read_until, write_async_owned, write_until, write_until_then,
};
#[cfg(loom)]
pub use loom_fallback::{MappedRwLockReadGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
