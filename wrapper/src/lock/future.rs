//! [`Acquire`]: the future of an async lock acquisition.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::queue::Signal;
use super::raw::RawLock;
use super::WaitError;
use crate::cancel::CancelWatch;
use crate::CancelToken;

/// The future returned by [`RawLock::read_async`] and [`RawLock::write_async`]: resolves to
/// `Ok(())` once the lock is held, or to an error at the deadline or on cancellation.
///
/// It waits in the lock's FIFO queue (the one threads wait in) without blocking a thread. It
/// is woken by the hand-off when the lock is passed to it, by the cancel token, and by the
/// library's timer thread at the deadline (see the `lock` module).
///
/// Dropping it is safe at any point: before the lock is handed to it, it leaves the queue (and
/// the waiters behind it move up); if the lock was handed to it but it was dropped before it
/// returned `Ready`, it releases the lock, which passes to the next waiter. Once it has
/// returned `Ok(())`, the caller holds the lock and must release it.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<'a> {
    lock: &'a RawLock,
    exclusive: bool,
    deadline: Option<Instant>,
    cancel: Option<&'a CancelToken>,
    state: State,
}

enum State {
    Start,
    Waiting {
        id: u64,
        signal: Arc<Signal>,
        /// Held for their `Drop`, which unregisters them.
        _timer: Option<super::timer::TimerEntry>,
        _watch: Option<CancelWatch>,
        /// No timer thread could be started: poll the clock on every wake-up.
        self_wake: bool,
    },
    Done,
}

impl<'a> Acquire<'a> {
    #[inline]
    pub(crate) fn new(
        lock: &'a RawLock,
        exclusive: bool,
        deadline: Option<Instant>,
        cancel: Option<&'a CancelToken>,
    ) -> Self {
        Acquire { lock, exclusive, deadline, cancel, state: State::Start }
    }

    /// Whether the lock has been handed to this future (tests: a grant it has not yet seen).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn is_granted(&self) -> bool {
        matches!(&self.state, State::Waiting { signal, .. } if signal.is_granted())
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(CancelToken::is_cancelled)
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Leaves the queue after a deadline or cancellation; a grant that came first wins.
    fn give_up(&mut self, why: WaitError) -> Poll<Result<(), WaitError>> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Waiting { id, signal, .. } if !self.lock.leave(id, &signal) => Poll::Ready(Err(why)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl Future for Acquire<'_> {
    type Output = Result<(), WaitError>;

    /// The uncontended case (first poll, lock free) is inlined into the caller; everything
    /// else is [`poll_slow`](Acquire::poll_slow).
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let State::Start = this.state {
            let fast =
                if this.exclusive { this.lock.try_lock_exclusive() } else { this.lock.try_lock_shared() };
            if fast {
                this.state = State::Done;
                return Poll::Ready(Ok(()));
            }
        }
        this.poll_slow(cx)
    }
}

impl Acquire<'_> {
    #[inline(never)]
    fn poll_slow(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WaitError>> {
        let this = self;
        if let State::Start = this.state {
            if this.cancelled() {
                this.state = State::Done;
                return Poll::Ready(Err(WaitError::Cancelled));
            }
            if this.expired() {
                this.state = State::Done;
                return Poll::Ready(Err(WaitError::Timeout));
            }
            let signal = Signal::new(cx.waker().clone());
            let Some(id) = this.lock.join_async(this.exclusive, &signal) else {
                this.state = State::Done;
                return Poll::Ready(Ok(()));
            };
            let timer = this.deadline.map(|d| super::timer::register(d, Waker::from(signal.clone())));
            let self_wake = matches!(timer, Some(None));
            let watch = this.cancel.map(|c| c.watch(Waker::from(signal.clone())));
            this.state = State::Waiting { id, signal, _timer: timer.flatten(), _watch: watch, self_wake };
        }
        let State::Waiting { signal, self_wake, .. } = &this.state else {
            panic!("`Acquire` polled after it completed");
        };
        let self_wake = *self_wake;
        if signal.is_granted() {
            this.state = State::Done;
            return Poll::Ready(Ok(()));
        }
        if this.cancelled() {
            return this.give_up(WaitError::Cancelled);
        }
        if this.expired() {
            return this.give_up(WaitError::Timeout);
        }
        signal.set_waker(cx.waker());
        // A grant between the check above and the new waker woke the old one: look again.
        if signal.is_granted() {
            this.state = State::Done;
            return Poll::Ready(Ok(()));
        }
        if self_wake {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    #[inline]
    fn drop(&mut self) {
        if let State::Waiting { .. } = self.state {
            self.leave_on_drop();
        }
    }
}

impl Acquire<'_> {
    #[cold]
    fn leave_on_drop(&mut self) {
        if let State::Waiting { id, signal, .. } = &self.state {
            if self.lock.leave(*id, signal) {
                // Handed the lock, never told the caller: pass it on.
                // SAFETY: `leave` returned true, so this waiter was granted the lock and owns
                // it; no one else will release that grant (the future never returned it).
                unsafe {
                    if self.exclusive {
                        self.lock.unlock_exclusive();
                    } else {
                        self.lock.unlock_shared();
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for Acquire<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::Waiting { .. } => "waiting",
            State::Done => "done",
        };
        f.debug_struct("Acquire")
            .field("exclusive", &self.exclusive)
            .field("deadline", &self.deadline)
            .field("state", &state)
            .finish()
    }
}
