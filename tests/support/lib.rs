//! Helpers shared by the integration tests, examples and benchmarks of the map-wrapper
//! workspace (the suite package's library; not published).

use std::sync::{Arc, Barrier};
use std::thread;

/// Starts `threads` threads that all begin `work` at the same instant (behind one barrier)
/// and returns their results in thread order. A panic in a thread is re-raised here.
pub fn storm<T, F>(threads: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    let barrier = Arc::new(Barrier::new(threads));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            let work = Arc::clone(&work);
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    work(t)
                })
                .expect("spawn storm thread")
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
}

pub mod linearizability;

/// Whether the long reliability run was asked for (`MAPWRAPPER_LONG=1`); tests then use their
/// long-run sizes instead of the CI sizes.
pub fn long_run() -> bool {
    std::env::var_os("MAPWRAPPER_LONG").is_some_and(|v| v != "0")
}

/// `ci` normally, `long` in the long run.
pub fn scale(ci: usize, long: usize) -> usize {
    if long_run() {
        long
    } else {
        ci
    }
}

/// Runs `f` on a helper thread and fails (instead of hanging CI) if it does not finish
/// within `limit`.
pub fn within<T: Send + 'static>(limit: std::time::Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("did not finish within {limit:?}: a hang"),
    }
}

/// With the `deadlock-detection` feature: starts a thread that asks parking_lot's detector
/// every 100 ms and panics the process with the cycle if it finds one. It sees parking_lot's
/// locks only (the sinks', the breaker's, the lock queue's internal mutex), not the shard
/// locks, which are map-wrapper's own fair `RawLock`. Without the feature,
/// does nothing (the detector is compiled out).
pub fn watch_for_deadlocks() {
    #[cfg(feature = "deadlock-detection")]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            thread::spawn(|| loop {
                thread::sleep(std::time::Duration::from_millis(100));
                let cycles = parking_lot::deadlock::check_deadlock();
                if !cycles.is_empty() {
                    eprintln!("parking_lot found {} deadlock cycle(s):", cycles.len());
                    for t in cycles.iter().flatten() {
                        eprintln!("thread {:?}:\n{:?}", t.thread_id(), t.backtrace());
                    }
                    std::process::abort();
                }
            });
        });
    }
}

/// A storm against a model: `threads` threads start at once on `map`; each owns a key range
/// (its own log is the truth there: inserts, removes, reads, upserts, each result checked as it
/// happens) and all of them increment a shared hot set. Afterwards the map must equal the union
/// of the threads' logs and the hot counters must add up. Returns the number of operations run.
pub fn model_storm(map: Arc<map_wrapper::MapWrapper<u64, u64>>, threads: usize, ops_per_thread: u64) -> u64 {
    use std::collections::HashMap;
    const HOT: u64 = 8;
    // Far above every thread's own key range (t * 1_000 + 0..32).
    const HOT_BASE: u64 = u64::MAX - HOT;
    for h in 0..HOT {
        map.insert(HOT_BASE + h, 0).expect("seed hot key");
    }
    let m = Arc::clone(&map);
    let logs = storm(threads, move |t| {
        let base = t as u64 * 1_000;
        let mut mine = HashMap::new();
        let mut increments = 0u64;
        let mut x = (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for i in 0..ops_per_thread {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = base + x % 32;
            match x % 8 {
                0..=2 => assert_eq!(m.insert(key, i).unwrap(), mine.insert(key, i)),
                3 => assert_eq!(m.remove(&key).unwrap(), mine.remove(&key)),
                4 => assert_eq!(m.get_cloned(&key).unwrap(), mine.get(&key).copied()),
                5 => {
                    let upserted = m.entry(key).and_modify(|v| *v += 1).or_insert(i).unwrap();
                    let expected = match mine.get_mut(&key) {
                        Some(v) => {
                            *v += 1;
                            map_wrapper::Upserted::Existing
                        }
                        None => {
                            mine.insert(key, i);
                            map_wrapper::Upserted::Inserted
                        }
                    };
                    assert_eq!(upserted, expected);
                }
                _ => {
                    m.update(&(HOT_BASE + x % HOT), |v| *v += 1).unwrap().expect("hot key present");
                    increments += 1;
                }
            }
        }
        (mine, increments)
    });
    let mut want = Vec::new();
    let mut increments = 0;
    for (mine, inc) in logs {
        want.extend(mine);
        increments += inc;
    }
    let hot: u64 = (0..HOT).map(|h| map.remove(&(HOT_BASE + h)).unwrap().unwrap()).sum();
    assert_eq!(hot, increments, "no increment lost");
    let mut got = map.snapshot().unwrap();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "0 divergences from the model");
    threads as u64 * ops_per_thread
}
