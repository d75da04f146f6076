//! The shard lock (`map_wrapper`'s fair thread-and-task `RawLock`) against parking_lot's
//! `RawRwLock`, uncontended, side by side in one run, as ratios:
//!
//! - read lock + unlock, write lock + unlock (through `lock_api::RawRwLock`, as the shards
//!   use them);
//! - an async acquisition (`read_async` / `write_async`, polled once with a no-op waker, as an
//!   executor would) against the sync one on the same lock.
//!
//! Each figure is the best of several interleaved rounds (ns per lock + unlock).
//! `cargo bench --bench lock`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use lock_api::RawRwLock as _;
use map_wrapper::__private::lock::RawLock;

const OPS: u32 = 10_000_000;
const ROUNDS: usize = 7;

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// ns per call of `f`, one round.
fn round(f: &dyn Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..OPS {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(OPS)
}

/// Best of ROUNDS rounds for each case, rounds interleaved so that noise hits all alike.
fn best(cases: &[(&str, &dyn Fn())]) -> Vec<f64> {
    let mut best = vec![f64::INFINITY; cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, f)) in cases.iter().enumerate() {
            best[i] = best[i].min(round(*f));
        }
    }
    best
}

fn main() {
    let ours = RawLock::new();
    let pl = <parking_lot::RawRwLock as lock_api::RawRwLock>::INIT;
    let waker = Waker::from(Arc::new(Noop));

    let read_ours = || {
        let l = black_box(&ours);
        l.lock_shared();
        // SAFETY: locked just above.
        unsafe { lock_api::RawRwLock::unlock_shared(l) };
    };
    let read_pl = || {
        let l = black_box(&pl);
        l.lock_shared();
        // SAFETY: locked just above.
        unsafe { l.unlock_shared() };
    };
    let write_ours = || {
        let l = black_box(&ours);
        l.lock_exclusive();
        // SAFETY: locked just above.
        unsafe { lock_api::RawRwLock::unlock_exclusive(l) };
    };
    let write_pl = || {
        let l = black_box(&pl);
        l.lock_exclusive();
        // SAFETY: locked just above.
        unsafe { l.unlock_exclusive() };
    };
    let read_async = || {
        let l = black_box(&ours);
        let fut = pin!(l.read_async(None, None));
        assert!(matches!(fut.poll(&mut Context::from_waker(&waker)), Poll::Ready(Ok(()))));
        // SAFETY: the future resolved to Ok: the read lock is held.
        unsafe { l.unlock_shared() };
    };
    let write_async = || {
        let l = black_box(&ours);
        let fut = pin!(l.write_async(None, None));
        assert!(matches!(fut.poll(&mut Context::from_waker(&waker)), Poll::Ready(Ok(()))));
        // SAFETY: the future resolved to Ok: the write lock is held.
        unsafe { l.unlock_exclusive() };
    };

    let cases: [(&str, &dyn Fn()); 6] = [
        ("read  ours", &read_ours),
        ("read  parking_lot", &read_pl),
        ("write ours", &write_ours),
        ("write parking_lot", &write_pl),
        ("read  ours async", &read_async),
        ("write ours async", &write_async),
    ];
    let t = best(&cases);
    for ((name, _), ns) in cases.iter().zip(&t) {
        println!("{name:<20} {ns:>6.2} ns per lock+unlock");
    }
    println!("ratio read  ours / parking_lot: {:.2}", t[0] / t[1]);
    println!("ratio write ours / parking_lot: {:.2}", t[2] / t[3]);
    println!("ratio read  async / sync (ours): {:.2}", t[4] / t[0]);
    println!("ratio write async / sync (ours): {:.2}", t[5] / t[2]);
}
