//! `loom` models of the wait queue: every interleaving (up to a preemption bound) of the fast
//! paths, joining, hand-off, leaving and waking, for threads and tasks.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p map-wrapper --lib --release lock::`

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll, Wake, Waker};

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use super::RawLock;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

struct Noop;
impl Wake for Noop {
    fn wake(self: StdArc<Self>) {}
}

fn noop() -> Waker {
    Waker::from(StdArc::new(Noop))
}

/// Who is inside: +1 per reader, +1000 for a writer; checked on every entry.
struct Inside(AtomicUsize);

impl Inside {
    fn read(&self) {
        let now = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(now < 1000, "a reader entered with a writer inside");
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
    fn write(&self) {
        let before = self.0.fetch_add(1000, Ordering::SeqCst);
        assert_eq!(before, 0, "a writer entered with someone inside");
        self.0.fetch_sub(1000, Ordering::SeqCst);
    }
}

#[test]
fn threads_waiting_in_the_queue_exclude_each_other_and_are_all_woken() {
    model(|| {
        let lock = Arc::new(RawLock::new());
        let inside = Arc::new(Inside(AtomicUsize::new(0)));
        assert!(lock.try_lock_exclusive());
        let writer = {
            let (lock, inside) = (lock.clone(), inside.clone());
            thread::spawn(move || {
                lock.lock_exclusive_until(None, None).unwrap();
                inside.write();
                unsafe { lock.unlock_exclusive() };
            })
        };
        let reader = {
            let (lock, inside) = (lock.clone(), inside.clone());
            thread::spawn(move || {
                lock.lock_shared_until(None, None).unwrap();
                inside.read();
                unsafe { lock.unlock_shared() };
            })
        };
        unsafe { lock.unlock_exclusive() };
        writer.join().unwrap();
        reader.join().unwrap();
        assert!(!lock.is_locked());
        assert_eq!(lock.queued(), 0);
    });
}

#[test]
fn a_task_is_woken_by_the_hand_off() {
    model(|| {
        let lock = Arc::new(RawLock::new());
        assert!(lock.try_lock_shared());
        let task = {
            let lock = lock.clone();
            thread::spawn(move || {
                loom::future::block_on(lock.write_async(None, None)).unwrap();
                unsafe { lock.unlock_exclusive() };
            })
        };
        unsafe { lock.unlock_shared() };
        task.join().unwrap();
        assert!(!lock.is_locked());
        assert_eq!(lock.queued(), 0);
    });
}

#[test]
fn a_future_dropped_while_the_lock_is_handed_to_it_passes_it_on() {
    model(|| {
        let lock = Arc::new(RawLock::new());
        assert!(lock.try_lock_exclusive());
        let task = {
            let lock = lock.clone();
            thread::spawn(move || {
                let mut fut = lock.write_async(None, None);
                let w = noop();
                if let Poll::Ready(r) = Pin::new(&mut fut).poll(&mut Context::from_waker(&w)) {
                    r.unwrap();
                    unsafe { lock.unlock_exclusive() };
                }
                drop(fut);
            })
        };
        unsafe { lock.unlock_exclusive() };
        task.join().unwrap();
        assert!(!lock.is_locked(), "a dropped future leaked the lock");
        assert_eq!(lock.queued(), 0);
    });
}

#[test]
fn a_writer_leaving_the_head_lets_the_reader_behind_it_in() {
    model(|| {
        let lock = Arc::new(RawLock::new());
        assert!(lock.try_lock_shared());
        let writer = {
            let lock = lock.clone();
            thread::spawn(move || {
                let mut fut = lock.write_async(None, None);
                let w = noop();
                // The lock stays read-held by the main thread: the writer cannot get it.
                assert!(Pin::new(&mut fut).poll(&mut Context::from_waker(&w)).is_pending());
                drop(fut);
            })
        };
        let reader = {
            let lock = lock.clone();
            thread::spawn(move || {
                loom::future::block_on(lock.read_async(None, None)).unwrap();
                unsafe { lock.unlock_shared() };
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
        unsafe { lock.unlock_shared() };
        assert!(!lock.is_locked());
        assert_eq!(lock.queued(), 0);
    });
}
