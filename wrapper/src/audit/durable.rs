//! Awaiting the sink's blocking calls without blocking the task's thread.
//!
//! Two sink calls can block: [`AuditSink::wait`] (until a record is flushed or synced) and
//! [`AuditSink::admit`] (until the sink's queue has room: back-pressure). An async
//! operation hands such a call to one process-wide thread of the library and awaits its
//! answer, so that a task waiting for a group commit or for room parks and its worker thread
//! runs other tasks. Calls are served in order on that thread: records are made durable in
//! order (the sink's contract: `Ok` for a ticket covers every earlier one), so the wait for a
//! later ticket usually returns at once after an earlier one. Dropping the future leaves the
//! call to finish on the thread and discards its answer.
//!
//! This is the one place that knows how an async operation awaits the sink: a sink that
//! offers non-blocking waits later only changes [`wait`] and [`admit`].

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::Mutex;

use super::sink::AdmitError;
use super::{AuditSink, Durability, SinkError, Ticket};

/// The answer of one call, and the task to wake with it.
struct Slot<T> {
    answer: Option<T>,
    waker: Option<Waker>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The helper thread's inbox, started on first use; `None` if the thread could not start.
fn inbox() -> Option<&'static Mutex<Sender<Job>>> {
    static INBOX: OnceLock<Option<Mutex<Sender<Job>>>> = OnceLock::new();
    INBOX
        .get_or_init(|| {
            let (tx, rx) = channel::<Job>();
            std::thread::Builder::new()
                .name("map-wrapper-audit-wait".into())
                .spawn(move || rx.into_iter().for_each(|job| job()))
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Runs `call` on the helper thread; the future resolves to its answer. Without a thread
/// (it could not be started) the call runs here, blocking, as the sync path does.
fn off_thread<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> OffThread<T> {
    let slot = Arc::new(Mutex::new(Slot { answer: None, waker: None }));
    let shared = slot.clone();
    let job: Job = Box::new(move || {
        let answer = call();
        let waker = {
            let mut slot = shared.lock();
            slot.answer = Some(answer);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    });
    match inbox() {
        Some(tx) => {
            if let Err(unsent) = tx.lock().send(job) {
                (unsent.0)();
            }
        }
        None => job(),
    }
    OffThread { slot }
}

/// Resolves once the record of `ticket` is as durable as `level` (or with the error that
/// keeps it from being so).
pub(crate) fn wait(
    sink: &Arc<dyn AuditSink>,
    ticket: Ticket,
    level: Durability,
) -> OffThread<Result<(), SinkError>> {
    let sink = sink.clone();
    off_thread(move || sink.wait(&ticket, level))
}

/// Resolves once the sink has room for one more record, or at `deadline` with
/// [`AdmitError::Full`]. Asks without waiting first: the common case (room) costs no
/// hand-off.
pub(crate) async fn admit(sink: &Arc<dyn AuditSink>, deadline: Instant) -> Result<(), AdmitError> {
    match sink.admit(Instant::now()) {
        Err(AdmitError::Full { .. }) if Instant::now() < deadline => {
            let sink = sink.clone();
            off_thread(move || sink.admit(deadline)).await
        }
        other => other,
    }
}

/// The future of a call made on the helper thread.
pub(crate) struct OffThread<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> Future for OffThread<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.slot.lock();
        match slot.answer.take() {
            Some(answer) => Poll::Ready(answer),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
