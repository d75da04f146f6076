//! Awaiting a record's durability without blocking the task's thread.
//!
//! [`AuditSink::wait`] blocks its caller until the record is flushed or synced. An async
//! operation hands that wait to one process-wide thread of the library instead and awaits its
//! answer, so that a task waiting for a group commit parks and its worker thread runs other
//! tasks. Waits are served in order on that thread: records are made durable in order
//! (the sink's contract: `Ok` for a ticket covers every earlier one), so the wait for a
//! later ticket usually returns at once after an earlier one. Dropping the future leaves the
//! wait to finish on the thread and discards its answer (the record is already enqueued).
//!
//! This is the one place that knows how a sink's durability is awaited: a sink that offers a
//! non-blocking wait later only changes [`wait`].

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::{AuditSink, Durability, SinkError, Ticket};

/// The answer of one wait, and the task to wake with it.
#[derive(Default)]
struct Slot {
    answer: Option<Result<(), SinkError>>,
    waker: Option<Waker>,
}

struct Job {
    sink: Arc<dyn AuditSink>,
    ticket: Ticket,
    level: Durability,
    slot: Arc<Mutex<Slot>>,
}

/// The waiter thread's inbox, started on first use; `None` if the thread could not start.
fn inbox() -> Option<&'static Mutex<Sender<Job>>> {
    static INBOX: OnceLock<Option<Mutex<Sender<Job>>>> = OnceLock::new();
    INBOX
        .get_or_init(|| {
            let (tx, rx) = channel::<Job>();
            std::thread::Builder::new()
                .name("map-wrapper-durability".into())
                .spawn(move || {
                    for job in rx {
                        let answer = job.sink.wait(&job.ticket, job.level);
                        let waker = {
                            let mut slot = job.slot.lock();
                            slot.answer = Some(answer);
                            slot.waker.take()
                        };
                        if let Some(w) = waker {
                            w.wake();
                        }
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Resolves once the record of `ticket` is as durable as `level` (or with the error that
/// keeps it from being so), without blocking the polling thread.
pub(crate) fn wait(sink: &Arc<dyn AuditSink>, ticket: Ticket, level: Durability) -> Wait {
    let slot = Arc::new(Mutex::new(Slot::default()));
    let job = Job { sink: sink.clone(), ticket, level, slot: slot.clone() };
    match inbox() {
        Some(tx) => match tx.lock().send(job) {
            Ok(()) => Wait { slot },
            Err(e) => Wait::answered(blocking(e.0)),
        },
        // No thread: wait here (blocking), which is what the sync path does anyway.
        None => Wait::answered(blocking(job)),
    }
}

fn blocking(job: Job) -> Result<(), SinkError> {
    job.sink.wait(&job.ticket, job.level)
}

/// The future of [`wait`].
pub(crate) struct Wait {
    slot: Arc<Mutex<Slot>>,
}

impl Wait {
    fn answered(answer: Result<(), SinkError>) -> Self {
        Wait { slot: Arc::new(Mutex::new(Slot { answer: Some(answer), waker: None })) }
    }
}

impl Future for Wait {
    type Output = Result<(), SinkError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
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
