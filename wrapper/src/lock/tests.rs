//! Tests of the shard lock: fast paths, FIFO hand-off, deadlines and cancellation for threads
//! and tasks, dropping futures at every point, fairness, and storms against a model.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::CancelToken;

struct CountWaker(AtomicUsize);

impl Wake for CountWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountWaker>, Waker) {
    let c = Arc::new(CountWaker(AtomicUsize::new(0)));
    (c.clone(), Waker::from(c))
}

fn poll<F: Future + Unpin>(f: &mut F, w: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(w))
}

/// Runs a future on this thread, parking between polls.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let w = Waker::from(Arc::new(Unpark(thread::current())));
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(&w)) {
            return v;
        }
        thread::park();
    }
}

/// Waits (bounded) until `lock` has `n` waiters queued.
fn until_queued(lock: &RawLock, n: usize) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while lock.queued() != n {
        assert!(Instant::now() < give_up, "never saw {n} waiters queued (saw {})", lock.queued());
        thread::sleep(Duration::from_millis(1));
    }
}

fn in_ms(ms: u64) -> Option<Instant> {
    Some(Instant::now() + Duration::from_millis(ms))
}

#[test]
fn uncontended_reads_share_and_a_write_excludes() {
    let l = RawLock::new();
    assert!(l.try_lock_shared() && l.try_lock_shared());
    assert_eq!(l.readers(), 2);
    assert!(!l.try_lock_exclusive());
    unsafe { l.unlock_shared() };
    unsafe { l.unlock_shared() };
    assert!(!l.is_locked());
    assert!(l.try_lock_exclusive());
    assert!(l.is_locked_exclusive());
    assert!(!l.try_lock_shared() && !l.try_lock_shared_recursive() && !l.try_lock_exclusive());
    unsafe { l.unlock_exclusive() };
    assert!(!l.is_locked());
}

#[test]
fn a_new_reader_does_not_barge_past_a_queued_writer_but_a_recursive_one_does() {
    let l = RawLock::new();
    assert!(l.try_lock_shared());
    let (c, w) = counting_waker();
    let mut writer = l.write_async(None, None);
    assert!(poll(&mut writer, &w).is_pending());
    assert_eq!(l.queued(), 1);
    assert!(!l.try_lock_shared(), "a reader overtook a queued writer");
    assert!(l.try_lock_shared_recursive());
    unsafe { l.unlock_shared() };
    assert!(!writer.is_granted(), "granted while a reader still held the lock");
    unsafe { l.unlock_shared() };
    assert!(writer.is_granted() && l.is_locked_exclusive());
    assert_eq!(c.0.load(Ordering::SeqCst), 1, "the hand-off wakes the task once");
    assert_eq!(poll(&mut writer, &w), Poll::Ready(Ok(())));
    drop(writer);
    assert!(l.is_locked_exclusive(), "a completed future must not release the caller's lock");
    unsafe { l.unlock_exclusive() };
    assert!(!l.is_locked() && l.queued() == 0);
}

#[test]
fn waiters_are_granted_in_fifo_order_and_readers_in_batches() {
    let l = RawLock::new();
    let (_c, w) = counting_waker();
    assert!(l.try_lock_exclusive());
    let mut r1 = l.read_async(None, None);
    let mut r2 = l.read_async(None, None);
    let mut w1 = l.write_async(None, None);
    let mut r3 = l.read_async(None, None);
    for f in [&mut r1, &mut r2, &mut w1, &mut r3] {
        assert!(poll(f, &w).is_pending());
    }
    unsafe { l.unlock_exclusive() };
    assert!(r1.is_granted() && r2.is_granted() && !w1.is_granted() && !r3.is_granted());
    assert_eq!(l.readers(), 2);
    assert_eq!(poll(&mut r1, &w), Poll::Ready(Ok(())));
    assert_eq!(poll(&mut r2, &w), Poll::Ready(Ok(())));
    assert!(poll(&mut w1, &w).is_pending());
    assert!(poll(&mut r3, &w).is_pending(), "a reader behind a queued writer overtook it");
    unsafe { l.unlock_shared() };
    unsafe { l.unlock_shared() };
    assert!(w1.is_granted() && !r3.is_granted());
    assert_eq!(poll(&mut w1, &w), Poll::Ready(Ok(())));
    unsafe { l.unlock_exclusive() };
    assert_eq!(poll(&mut r3, &w), Poll::Ready(Ok(())));
    unsafe { l.unlock_shared() };
    assert!(!l.is_locked() && l.queued() == 0);
}

#[test]
fn downgrade_lets_the_readers_at_the_head_in_and_keeps_writers_out() {
    let lock: RwLock<u32> = RwLock::new(1);
    let (_c, w) = counting_waker();
    let mut g = lock.write();
    *g = 2;
    let raw = unsafe { lock.raw() };
    let mut r = raw.read_async(None, None);
    let mut wr = raw.write_async(None, None);
    assert!(poll(&mut r, &w).is_pending() && poll(&mut wr, &w).is_pending());
    let g = lock_api::RwLockWriteGuard::downgrade(g);
    assert_eq!(*g, 2);
    assert!(r.is_granted() && !wr.is_granted());
    assert_eq!(poll(&mut r, &w), Poll::Ready(Ok(())));
    unsafe { raw.unlock_shared() };
    drop(g);
    assert!(wr.is_granted());
    drop(wr); // granted, never polled: releases
    assert!(!raw.is_locked() && raw.queued() == 0);
}

#[test]
fn threads_and_tasks_share_one_queue_in_arrival_order() {
    let l = Arc::new(RawLock::new());
    let order = Arc::new(Mutex::new(Vec::new()));
    assert!(l.try_lock_exclusive());
    let spawn_thread = |name: &'static str| {
        let (l, order) = (l.clone(), order.clone());
        thread::spawn(move || {
            l.lock_exclusive_until(None, None).unwrap();
            order.lock().unwrap().push(name);
            unsafe { l.unlock_exclusive() };
        })
    };
    let t1 = spawn_thread("thread 1");
    until_queued(&l, 1);
    let (_c, w) = counting_waker();
    let mut task = l.write_async(None, None);
    assert!(poll(&mut task, &w).is_pending());
    let t2 = spawn_thread("thread 2");
    until_queued(&l, 3);
    unsafe { l.unlock_exclusive() };
    block_on(&mut task).unwrap();
    order.lock().unwrap().push("task");
    unsafe { l.unlock_exclusive() };
    t1.join().unwrap();
    t2.join().unwrap();
    assert_eq!(*order.lock().unwrap(), ["thread 1", "task", "thread 2"]);
}

#[test]
fn a_thread_times_out_at_its_deadline_and_leaves_the_queue() {
    let lock: RwLock<()> = RwLock::new(());
    let held = lock.write();
    let start = Instant::now();
    assert!(lock.try_write_for(Duration::from_millis(30)).is_none());
    assert!(lock.try_read_until(Instant::now() + Duration::from_millis(10)).is_none());
    assert!(start.elapsed() >= Duration::from_millis(40));
    let raw = unsafe { lock.raw() };
    assert_eq!(raw.queued(), 0);
    assert_eq!(raw.lock_exclusive_until(in_ms(5), None), Err(WaitError::Timeout));
    drop(held);
    assert!(lock.try_write().is_some());
}

#[test]
fn a_waiting_thread_is_woken_by_cancel_without_waiting_for_its_deadline() {
    let l = Arc::new(RawLock::new());
    assert!(l.try_lock_exclusive());
    let token = CancelToken::new();
    let waiter = {
        let (l, token) = (l.clone(), token.child());
        thread::spawn(move || {
            let start = Instant::now();
            (
                l.lock_shared_until(Some(Instant::now() + Duration::from_secs(60)), Some(&token)),
                start.elapsed(),
            )
        })
    };
    until_queued(&l, 1);
    token.cancel();
    let (result, waited) = waiter.join().unwrap();
    assert_eq!(result, Err(WaitError::Cancelled));
    assert!(waited < Duration::from_secs(60));
    assert_eq!(l.queued(), 0);
    // Already cancelled: refused before queueing.
    assert_eq!(l.lock_shared_until(None, Some(&token)), Err(WaitError::Cancelled));
    unsafe { l.unlock_exclusive() };
    assert!(!l.is_locked());
}

#[test]
fn a_task_times_out_by_the_timer_thread_alone() {
    let l = RawLock::new();
    assert!(l.try_lock_shared());
    let start = Instant::now();
    // block_on polls only when woken: only the timer thread can wake this future.
    assert_eq!(block_on(l.write_async(in_ms(30), None)), Err(WaitError::Timeout));
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert_eq!(l.queued(), 0);
    unsafe { l.unlock_shared() };
    assert!(l.try_lock_exclusive());
}

#[test]
fn a_task_is_woken_by_cancel() {
    let l = RawLock::new();
    assert!(l.try_lock_exclusive());
    let token = CancelToken::new();
    let canceller = {
        let token = token.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(10));
            token.cancel();
        })
    };
    assert_eq!(block_on(l.read_async(None, Some(&token))), Err(WaitError::Cancelled));
    canceller.join().unwrap();
    assert_eq!(l.queued(), 0);
    assert_eq!(block_on(l.read_async(None, Some(&token))), Err(WaitError::Cancelled));
    unsafe { l.unlock_exclusive() };
}

#[test]
fn a_head_writer_that_gives_up_lets_the_readers_behind_it_in() {
    let l = RawLock::new();
    let (_c, w) = counting_waker();
    assert!(l.try_lock_shared());
    let token = CancelToken::new();
    let mut writer = l.write_async(None, Some(&token));
    let mut reader = l.read_async(None, None);
    assert!(poll(&mut writer, &w).is_pending() && poll(&mut reader, &w).is_pending());
    token.cancel();
    assert_eq!(poll(&mut writer, &w), Poll::Ready(Err(WaitError::Cancelled)));
    assert!(reader.is_granted(), "the reader stayed queued behind a writer that left");
    assert_eq!(poll(&mut reader, &w), Poll::Ready(Ok(())));
    unsafe { l.unlock_shared() };
    unsafe { l.unlock_shared() };
    assert!(!l.is_locked() && l.queued() == 0);
}

#[test]
fn a_future_dropped_after_its_grant_releases_the_lock_to_the_next() {
    let l = RawLock::new();
    let (_c, w) = counting_waker();
    assert!(l.try_lock_exclusive());
    let mut first = l.write_async(None, None);
    let mut second = l.read_async(None, None);
    assert!(poll(&mut first, &w).is_pending() && poll(&mut second, &w).is_pending());
    unsafe { l.unlock_exclusive() };
    assert!(first.is_granted());
    drop(first);
    assert!(second.is_granted());
    assert_eq!(poll(&mut second, &w), Poll::Ready(Ok(())));
    unsafe { l.unlock_shared() };
    assert!(!l.is_locked() && l.queued() == 0);
}

/// Each of three queued futures (behind a writer: a reader, a writer, a reader) is dropped at
/// each `Poll::Pending` it returns in turn, and also after its grant before it saw it; the
/// others must all get the lock, and nothing may be left locked or queued.
#[test]
fn dropping_each_future_at_each_pending_leaks_nothing() {
    let kinds = [false, true, false];
    let mut cases = 0;
    for victim in 0..kinds.len() {
        for drop_at in 1.. {
            let l = RawLock::new();
            let (_c, w) = counting_waker();
            assert!(l.try_lock_exclusive());
            let mut futs: Vec<Option<Acquire<'_>>> = kinds
                .iter()
                .map(|&x| Some(if x { l.write_async(None, None) } else { l.read_async(None, None) }))
                .collect();
            let mut pendings = [0usize; 3];
            let mut held: Vec<bool> = vec![true]; // the holders, by kind (true = writer)
            let mut dropped = false;
            let mut steps = 0;
            loop {
                steps += 1;
                assert!(steps < 100, "no progress");
                for (i, slot) in futs.iter_mut().enumerate() {
                    let Some(f) = slot else { continue };
                    match poll(f, &w) {
                        Poll::Ready(r) => {
                            r.unwrap();
                            held.push(kinds[i]);
                            *slot = None;
                        }
                        Poll::Pending => {
                            pendings[i] += 1;
                            if i == victim && pendings[i] == drop_at {
                                *slot = None;
                                dropped = true;
                            }
                        }
                    }
                }
                if let Some(exclusive) = held.pop() {
                    unsafe {
                        if exclusive {
                            l.unlock_exclusive()
                        } else {
                            l.unlock_shared()
                        }
                    }
                    // Granted but not yet polled: drop the victim right after its grant.
                    if let Some(f) = &futs[victim] {
                        if f.is_granted() && pendings[victim] + 1 == drop_at {
                            futs[victim] = None;
                            dropped = true;
                        }
                    }
                } else if futs.iter().all(Option::is_none) {
                    break;
                }
            }
            assert!(!l.is_locked() && l.queued() == 0, "victim {victim} dropped at {drop_at}: leaked");
            cases += 1;
            if !dropped {
                break; // the victim completed before its drop point: all points covered
            }
        }
    }
    assert!(cases >= 6, "only {cases} cases ran");
}

/// A tiny deterministic random generator (xorshift), so that failures replay.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Random single-threaded interleavings of new waiters, polls, drops, cancels and releases,
/// checked after every step against a model of who owns the lock.
#[test]
fn random_polls_drops_cancels_and_releases_agree_with_the_model() {
    let steps = if cfg!(debug_assertions) { 20_000 } else { 100_000 };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let l = RawLock::new();
    let tokens: Vec<CancelToken> = (0..4).map(|_| CancelToken::new()).collect();
    let (_c, w) = counting_waker();
    struct Pending<'a> {
        fut: Acquire<'a>,
        exclusive: bool,
    }
    let mut waiting: Vec<Pending<'_>> = Vec::new();
    let mut holders: Vec<bool> = Vec::new();
    let (mut granted, mut cancelled) = (0u64, 0u64);
    for _ in 0..steps {
        match rng.below(5) {
            0 if waiting.len() < 8 => {
                let exclusive = rng.below(2) == 0;
                let token = (rng.below(3) == 0).then(|| &tokens[rng.below(tokens.len())]);
                let mut fut = if exclusive { l.write_async(None, token) } else { l.read_async(None, token) };
                match poll(&mut fut, &w) {
                    Poll::Ready(Ok(())) => holders.push(exclusive),
                    Poll::Ready(Err(_)) => cancelled += 1,
                    Poll::Pending => waiting.push(Pending { fut, exclusive }),
                }
            }
            1 if !waiting.is_empty() => {
                let i = rng.below(waiting.len());
                match poll(&mut waiting[i].fut, &w) {
                    Poll::Ready(Ok(())) => {
                        holders.push(waiting.remove(i).exclusive);
                        granted += 1;
                    }
                    Poll::Ready(Err(e)) => {
                        assert_eq!(e, WaitError::Cancelled);
                        waiting.remove(i);
                        cancelled += 1;
                    }
                    Poll::Pending => {}
                }
            }
            2 if !waiting.is_empty() => {
                let i = rng.below(waiting.len());
                drop(waiting.remove(i));
            }
            3 => {
                let t = &tokens[rng.below(tokens.len())];
                if t.is_cancelled() {
                    // Tokens cannot be reset: keep some live ones by swapping in... a new
                    // waiter picks among the four, so a cancelled one just fails fast.
                } else if rng.below(4) == 0 {
                    t.cancel();
                }
            }
            _ if !holders.is_empty() => {
                let i = rng.below(holders.len());
                let exclusive = holders.swap_remove(i);
                unsafe {
                    if exclusive {
                        l.unlock_exclusive()
                    } else {
                        l.unlock_shared()
                    }
                }
            }
            _ => {}
        }
        // The model: owners are the holders plus the waiters granted but not yet told.
        let owners =
            holders.iter().copied().chain(waiting.iter().filter(|p| p.fut.is_granted()).map(|p| p.exclusive));
        let (writers, readers) = owners.fold((0, 0), |(w, r), x| if x { (w + 1, r) } else { (w, r + 1) });
        assert!(writers <= 1 && (writers == 0 || readers == 0), "{writers} writers with {readers} readers");
        assert_eq!(l.is_locked_exclusive(), writers == 1);
        assert_eq!(l.readers(), readers);
        let queued = waiting.iter().filter(|p| !p.fut.is_granted()).count();
        assert_eq!(l.queued(), queued);
        assert!(queued == 0 || l.is_locked(), "the lock is free while {queued} wait");
    }
    drop(waiting);
    for exclusive in holders {
        unsafe {
            if exclusive {
                l.unlock_exclusive()
            } else {
                l.unlock_shared()
            }
        }
    }
    assert!(!l.is_locked() && l.queued() == 0);
    assert!(
        granted > 100 && cancelled > 0,
        "the walk did not exercise grants ({granted}) and cancels ({cancelled})"
    );
}

#[test]
fn a_writer_is_not_starved_by_a_stream_of_readers() {
    let l = Arc::new(RawLock::new());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (l, stop) = (l.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    l.lock_shared_until(None, None).unwrap();
                    for _ in 0..200 {
                        std::hint::spin_loop();
                    }
                    unsafe { l.unlock_shared() };
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    let got = (0..20).all(|_| {
        let ok = l.lock_exclusive_until(Some(Instant::now() + Duration::from_secs(10)), None).is_ok();
        if ok {
            unsafe { l.unlock_exclusive() };
        }
        ok
    });
    stop.store(true, Ordering::Relaxed);
    readers.into_iter().for_each(|r| r.join().unwrap());
    assert!(got, "a writer waited 10 s behind overlapping readers");
}

#[test]
#[allow(clippy::await_holding_lock)] // the holder task keeps the lock across an await on purpose
fn on_a_current_thread_runtime_other_tasks_run_while_one_waits() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let lock = Arc::new(RwLock::new(0u32));
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let holder = {
            let lock = lock.clone();
            tokio::spawn(async move {
                let mut g = write_async(&lock, None, None).await.unwrap();
                held_tx.send(()).unwrap();
                release_rx.await.unwrap();
                *g = 1;
            })
        };
        held_rx.await.unwrap();
        let waiter = {
            let lock = lock.clone();
            tokio::spawn(async move { *write_async(&lock, None, None).await.unwrap() })
        };
        // Let the waiter queue; then a third task runs to completion on the only thread.
        tokio::task::yield_now().await;
        assert_eq!(unsafe { lock.raw() }.queued(), 1);
        let third = tokio::spawn(async { 7 }).await.unwrap();
        assert_eq!(third, 7);
        assert!(!waiter.is_finished());
        release_tx.send(()).unwrap();
        holder.await.unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
    });
}

#[test]
#[allow(clippy::await_holding_lock)] // the test holds the lock while tasks wait for it
fn tokio_timeout_and_abort_leave_the_queue() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let lock = Arc::new(RwLock::new(0u32));
        let g = lock.write();
        let r = tokio::time::timeout(Duration::from_millis(20), write_async(&lock, None, None)).await;
        assert!(r.is_err());
        let task = {
            let lock = lock.clone();
            tokio::spawn(async move {
                let _g = write_async(&lock, None, None).await;
            })
        };
        while unsafe { lock.raw() }.queued() == 0 {
            tokio::task::yield_now().await;
        }
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(unsafe { lock.raw() }.queued(), 0);
        drop(g);
        assert!(lock.try_write().is_some());
    });
}

/// Sync threads and async tasks (two workers) hammer one lock with writes and reads under
/// deadlines, cancel tokens and dropped futures. Writers keep two counters equal; readers check
/// them; at the end both equal the number of successful writes. Bounded: a watchdog fails the
/// test if the storm does not end.
#[test]
#[allow(clippy::await_holding_lock)] // a task holds the lock across an await on purpose
fn a_storm_of_threads_and_tasks_agrees_with_a_model() {
    let (done_tx, done_rx) = mpsc::channel();
    let lock = Arc::new(RwLock::new((0u64, 0u64)));
    let watched = lock.clone();
    thread::spawn(move || {
        let writes = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let ops = if cfg!(debug_assertions) { 1_000 } else { 5_000 };
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (lock, writes, failures) = (lock.clone(), writes.clone(), failures.clone());
                thread::spawn(move || {
                    let mut rng = Rng(0xABCD + t);
                    for i in 0..ops {
                        let token = CancelToken::new();
                        if rng.below(10) == 0 {
                            token.cancel();
                        }
                        let deadline =
                            Some(Instant::now() + Duration::from_micros(50 + rng.below(2000) as u64));
                        let raw = unsafe { lock.raw() };
                        if i % 2 == 0 {
                            if raw.lock_exclusive_until(deadline, Some(&token)).is_ok() {
                                let g = unsafe { lock.make_write_guard_unchecked() };
                                let mut g = g;
                                g.0 += 1;
                                if rng.below(20) == 0 {
                                    // A long hold: the waiters' short deadlines pass.
                                    thread::sleep(Duration::from_micros(300));
                                }
                                g.1 += 1;
                                writes.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        } else if raw.lock_shared_until(deadline, Some(&token)).is_ok() {
                            let g = unsafe { lock.make_read_guard_unchecked() };
                            assert_eq!(g.0, g.1, "a reader saw a half-done write");
                        } else {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let (lock, writes, failures) = (lock.clone(), writes.clone(), failures.clone());
                    tokio::spawn(async move {
                        let mut rng = Rng(0x1234 + t);
                        for i in 0..ops {
                            let deadline =
                                Some(Instant::now() + Duration::from_micros(50 + rng.below(3000) as u64));
                            let token = CancelToken::new();
                            match rng.below(6) {
                                0 => {
                                    // Dropped mid-wait by tokio's timeout.
                                    let lk = lock.clone();
                                    let w = writes.clone();
                                    let r = tokio::time::timeout(Duration::from_micros(200), async move {
                                        let mut g = write_async(&lk, None, None).await.unwrap();
                                        g.0 += 1;
                                        g.1 += 1;
                                        w.fetch_add(1, Ordering::Relaxed);
                                        // Held across an await: the timeout may drop the
                                        // future here, and the guard with it.
                                        tokio::task::yield_now().await;
                                    })
                                    .await;
                                    if r.is_err() {
                                        failures.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                1 => {
                                    let canceller = {
                                        let token = token.clone();
                                        tokio::spawn(async move { token.cancel() })
                                    };
                                    if let Ok(mut g) = write_async(&lock, deadline, Some(&token)).await {
                                        g.0 += 1;
                                        g.1 += 1;
                                        writes.fetch_add(1, Ordering::Relaxed);
                                    }
                                    canceller.await.unwrap();
                                }
                                _ if i % 2 == 0 => match write_async(&lock, deadline, None).await {
                                    Ok(mut g) => {
                                        g.0 += 1;
                                        g.1 += 1;
                                        writes.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(_) => {
                                        failures.fetch_add(1, Ordering::Relaxed);
                                    }
                                },
                                _ => match read_async(&lock, deadline, None).await {
                                    Ok(g) => assert_eq!(g.0, g.1, "a reader saw a half-done write"),
                                    Err(_) => {
                                        failures.fetch_add(1, Ordering::Relaxed);
                                    }
                                },
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        threads.into_iter().for_each(|t| t.join().unwrap());
        let g = lock.read();
        let raw = unsafe { lock.raw() };
        done_tx
            .send((g.0, g.1, writes.load(Ordering::Relaxed), failures.load(Ordering::Relaxed), raw.queued()))
            .unwrap();
    });
    let Ok((a, b, writes, failures, queued)) = done_rx.recv_timeout(Duration::from_secs(240)) else {
        let raw = unsafe { watched.raw() };
        panic!("the storm hung (or panicked): {raw:?}, {} queued", raw.queued());
    };
    assert_eq!(queued, 0);
    assert_eq!(a, b);
    assert_eq!(a, writes, "writes lost or doubled");
    assert!(
        writes > 0 && failures > 0,
        "the storm did not exercise both outcomes: {writes} writes, {failures} failures"
    );
}

/// Threads and tasks contending for the write lock, with deadlines far beyond what FIFO
/// service needs: every acquisition must succeed, on both sides.
#[test]
fn sync_and_async_writers_both_progress() {
    let lock = Arc::new(RawLock::new());
    let counter = Arc::new(AtomicU64::new(0));
    let per = if cfg!(debug_assertions) { 200 } else { 2_000 };
    let deadline = || Some(Instant::now() + Duration::from_secs(20));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (l, c) = (lock.clone(), counter.clone());
            thread::spawn(move || {
                (0..per)
                    .filter(|_| {
                        let ok = l.lock_exclusive_until(deadline(), None).is_ok();
                        if ok {
                            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                            unsafe { l.unlock_exclusive() };
                        }
                        ok
                    })
                    .count()
            })
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let task_ok: usize = rt.block_on(async {
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (l, c) = (lock.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut ok = 0;
                    for _ in 0..per {
                        if l.write_async(deadline(), None).await.is_ok() {
                            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                            unsafe { l.unlock_exclusive() };
                            ok += 1;
                        }
                        tokio::task::yield_now().await;
                    }
                    ok
                })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        sum
    });
    let thread_ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(thread_ok, 2 * per, "a thread was starved");
    assert_eq!(task_ok, 2 * per, "a task was starved");
    assert_eq!(counter.load(Ordering::Relaxed), 4 * per as u64, "mutual exclusion broken");
}

#[test]
fn a_writer_is_told_once_it_is_in_the_queue_and_not_when_it_takes_the_lock_at_once() {
    let lock = RawLock::new();
    let mut told = false;
    lock.lock_exclusive_until_then(None, None, || told = true).unwrap();
    assert!(!told, "took the free lock without queueing");
    thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        let lock = &lock;
        let waiter = s.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            // Called outside the queue's mutex (it takes it here), while still queued.
            lock.lock_exclusive_until_then(Some(deadline), None, move || tx.send(lock.queued()).unwrap())
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(1), "told while in the queue");
        // SAFETY: this thread holds the write lock (taken above).
        unsafe { lock.unlock_exclusive() };
        assert_eq!(waiter.join().unwrap(), Ok(()));
    });
    // SAFETY: the waiter's write lock, handed over by the unlock above.
    unsafe { lock.unlock_exclusive() };
    assert!(!lock.is_locked());
}
