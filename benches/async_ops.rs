//! The map's async operations, side by side in one run, as ratios:
//!
//! 1. **against scc's `_async` operations** on the same workload and runtime (tokio, 2
//!    workers; 4 tasks each running a mix of 60 % reads, 20 % inserts, 20 % removes over 64 K
//!    keys): ops/s and ours ÷ scc's;
//! 2. **uncontended async against sync**: `insert_async` / `get_cloned_async` polled once with a
//!    no-op waker (as an executor polls a task), against `insert` / `get_cloned`, one thread,
//!    ns per operation and async ÷ sync (goal ≤ 1.2×);
//! 3. **64 tasks waiting on a held shard** on a 2-worker runtime: the latency of operations on
//!    the other shards (p50, p99) while 64 `insert_async`s wait for the held one, against the
//!    same operations with no waiter.
//!
//! `cargo bench --bench async_ops` (about a minute). Figures are medians of interleaved
//! rounds; the machine is shared, so read the ratios, not the absolute times.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use map_wrapper::{MapWrapper, OpContext};

const KEYS: u64 = 1 << 16;
const TASKS: u64 = 4;
const OPS_PER_TASK: u64 = 200_000;
const ROUNDS: usize = 5;

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The next key and operation of a task's mix (xorshift).
#[inline]
fn next(state: &mut u64) -> (u64, u64) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % KEYS, (*state >> 32) % 10)
}

fn ours_round(rt: &tokio::runtime::Runtime, map: &Arc<MapWrapper<u64, u64>>) -> f64 {
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let map = map.clone();
                tokio::spawn(async move {
                    let mut s = 0x9e37_79b9 + t;
                    for _ in 0..OPS_PER_TASK {
                        let (k, what) = next(&mut s);
                        match what {
                            0..=5 => {
                                black_box(map.get_cloned_async(&k).await.unwrap());
                            }
                            6 | 7 => {
                                black_box(map.insert_async(k, k).await.unwrap());
                            }
                            _ => {
                                black_box(map.remove_async(&k).await.unwrap());
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    (TASKS * OPS_PER_TASK) as f64 / start.elapsed().as_secs_f64()
}

fn scc_round(rt: &tokio::runtime::Runtime, map: &Arc<scc::HashMap<u64, u64>>) -> f64 {
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let map = map.clone();
                tokio::spawn(async move {
                    let mut s = 0x9e37_79b9 + t;
                    for _ in 0..OPS_PER_TASK {
                        let (k, what) = next(&mut s);
                        match what {
                            0..=5 => {
                                black_box(map.read_async(&k, |_, v| *v).await);
                            }
                            6 | 7 => {
                                black_box(map.upsert_async(k, k).await);
                            }
                            _ => {
                                black_box(map.remove_async(&k).await);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    (TASKS * OPS_PER_TASK) as f64 / start.elapsed().as_secs_f64()
}

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Polls `fut` once; it must be ready (uncontended).
#[inline(always)]
fn ready<F: Future>(fut: F, cx: &mut Context<'_>) -> F::Output {
    match pin!(fut).poll(cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("uncontended operation pending"),
    }
}

/// ns per operation of `f` over `n` calls.
fn ns_per(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Per-operation latencies (ns) of `n` get_cloned/insert pairs on keys of other shards.
async fn probe(map: &MapWrapper<u64, u64>, keys: &[u64], n: usize) -> Vec<u64> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let k = keys[i % keys.len()];
        let t = Instant::now();
        if i % 2 == 0 {
            black_box(map.get_cloned_async(&k).await.unwrap());
        } else {
            black_box(map.insert_async(k, i as u64).await.unwrap());
        }
        lat.push(t.elapsed().as_nanos() as u64);
        if i % 64 == 0 {
            tokio::task::yield_now().await; // leave the workers to the waiters now and then
        }
    }
    lat
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0
}

fn main() {
    // ---- 1. against scc -----------------------------------------------------------------------
    let rt = runtime(2);
    let ours = Arc::new(MapWrapper::<u64, u64>::new());
    let theirs = Arc::new(scc::HashMap::<u64, u64>::new());
    for k in 0..KEYS / 2 {
        ours.insert(k, k).unwrap();
        let _ = theirs.insert_sync(k, k);
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(ours_round(&rt, &ours));
        b.push(scc_round(&rt, &theirs));
    }
    let (a, b) = (median(a), median(b));
    println!("1. mixed async workload, tokio 2 workers, {TASKS} tasks x {OPS_PER_TASK} ops (60% read, 20% insert, 20% remove), {KEYS} keys");
    println!("   | map | Mops/s | ours / scc |");
    println!("   |---|---:|---:|");
    println!("   | MapWrapper *_async | {:.2} | {:.2}x |", a / 1e6, a / b);
    println!("   | scc::HashMap *_async | {:.2} | 1.00x |", b / 1e6);

    // ---- 2. uncontended async vs sync ---------------------------------------------------------
    let map = MapWrapper::<u64, u64>::new();
    for k in 0..1024 {
        map.insert(k, k).unwrap();
    }
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let n = 2_000_000u64;
    let (mut si, mut ai, mut sg, mut ag) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS * 2 {
        si.push(ns_per(n, |i| {
            black_box(map.insert(i & 1023, i).unwrap());
        }));
        ai.push(ns_per(n, |i| {
            black_box(ready(map.insert_async(i & 1023, i), &mut cx).unwrap());
        }));
        sg.push(ns_per(n, |i| {
            black_box(map.get_cloned(&(i & 1023)).unwrap());
        }));
        ag.push(ns_per(n, |i| {
            black_box(ready(map.get_cloned_async(&(i & 1023)), &mut cx).unwrap());
        }));
    }
    let (si, ai, sg, ag) = (median(si), median(ai), median(sg), median(ag));
    println!("\n2. uncontended, one thread, polled once with a no-op waker (goal: async <= 1.2x sync)");
    println!("   | operation | sync ns | async ns | async / sync |");
    println!("   |---|---:|---:|---:|");
    println!("   | insert | {si:.1} | {ai:.1} | {:.2}x |", ai / si);
    println!("   | get_cloned | {sg:.1} | {ag:.1} | {:.2}x |", ag / sg);

    // ---- 3. 64 waiters on a held shard ----------------------------------------------------------
    let map: Arc<MapWrapper<u64, u64>> =
        Arc::new(MapWrapper::builder().shards(16).timeout(Duration::from_secs(60)).build().unwrap());
    for k in 0..4096 {
        map.insert(k, k).unwrap();
    }
    // The held shard's keys: those a held guard on key 0 blocks (probed with a zero timeout).
    let held = map.get(&0).unwrap().unwrap();
    let no_wait = OpContext::new().timeout(Duration::ZERO);
    let (blocked, free): (Vec<u64>, Vec<u64>) = std::thread::scope(|s| {
        s.spawn(|| (1..4096u64).partition(|k| map.with(&no_wait).insert(*k, *k).is_err())).join().unwrap()
    });
    drop(held);
    let samples = 200_000;
    let rt = runtime(2);
    let baseline = rt.block_on(probe(&map, &free, samples));
    // Hold the shard on a plain thread, start 64 waiters, measure, then let go.
    let release = Arc::new(AtomicBool::new(false));
    let (m, r) = (map.clone(), release.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let g = m.get(&0).unwrap().unwrap();
        ready_tx.send(()).unwrap();
        while !r.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(g);
    });
    ready_rx.recv().unwrap();
    let (contended, waited) = rt.block_on(async {
        let waiters: Vec<_> = (0..64)
            .map(|i| {
                let m = map.clone();
                let k = blocked[i % blocked.len()];
                tokio::spawn(async move { m.insert_async(k, 0).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let lat = probe(&map, &free, samples).await;
        let still_waiting = waiters.iter().filter(|w| !w.is_finished()).count();
        release.store(true, Ordering::Release);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        (lat, still_waiting)
    });
    holder.join().unwrap();
    let (mut b, mut c) = (baseline, contended);
    b.sort_unstable();
    c.sort_unstable();
    println!("\n3. operations on other shards, tokio 2 workers, {samples} ops, while 64 insert_async wait on a held shard ({waited} still waiting at the end)");
    println!("   | case | p50 us | p99 us | p99.9 us |");
    println!("   |---|---:|---:|---:|");
    println!("   | no waiter | {:.2} | {:.2} | {:.2} |", pct(&b, 0.5), pct(&b, 0.99), pct(&b, 0.999));
    println!("   | 64 waiters | {:.2} | {:.2} | {:.2} |", pct(&c, 0.5), pct(&c, 0.99), pct(&c, 0.999));
    println!("   p99 with waiters / without: {:.2}x", pct(&c, 0.99) / pct(&b, 0.99));
}
