//! Reliability of the core map: a storm of a thousand threads checked against a model, and
//! linearizability of small concurrent histories. Sizes grow with `MAPWRAPPER_LONG=1`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use map_wrapper::MapWrapper;
use suite::linearizability::{check, Clock, Event, KeyOp};
use suite::{scale, within};

/// ≥ 1,000 threads started at once, checked against a model (see `suite::model_storm`).
/// CI: 1,000 × 100 ops; long run: 1,000 × 10,000 (10 M).
#[test]
fn a_thousand_threads_started_at_once_agree_with_the_model() {
    let ops = scale(100, 10_000) as u64;
    suite::watch_for_deadlocks();
    within(Duration::from_secs(if suite::long_run() { 3600 } else { 300 }), move || {
        let m = Arc::new(
            MapWrapper::builder().name("storm-1000").timeout(Duration::from_secs(60)).build().unwrap(),
        );
        let ran = suite::model_storm(m, 1000, ops);
        eprintln!("SUMMARY storm storm_threads=1000 storm_ops={ran}");
    });
}

/// Runs one small concurrent history: `threads` threads × `per_thread` single-key ops on
/// `keys` keys of a map with `shards` shards, stamped with a shared logical clock.
fn history(
    seed: u64,
    threads: usize,
    per_thread: usize,
    keys: u64,
    shards: usize,
) -> (Vec<Event>, BTreeMap<u64, u64>) {
    let map: Arc<MapWrapper<u64, u64>> =
        Arc::new(MapWrapper::builder().shards(shards).timeout(Duration::from_secs(30)).build().unwrap());
    let mut initial = BTreeMap::new();
    for k in 0..keys {
        if (seed >> k) & 1 == 1 {
            map.insert(k, k * 100).unwrap();
            initial.insert(k, k * 100);
        }
    }
    let clock = Arc::new(Clock::default());
    let barrier = Arc::new(Barrier::new(threads));
    let ready = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (map, clock, barrier) = (Arc::clone(&map), Arc::clone(&clock), Arc::clone(&barrier));
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                let mut x =
                    seed.wrapping_mul(31).wrapping_add(t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut events = Vec::with_capacity(per_thread);
                barrier.wait();
                // Then spin until every thread is here: a barrier wakes threads one by one,
                // tens of microseconds apart, longer than a whole history takes.
                ready.fetch_add(1, Ordering::SeqCst);
                while ready.load(Ordering::SeqCst) < threads {
                    std::hint::spin_loop();
                }
                for i in 0..per_thread {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // A short random pause between operations: a thread's whole history would
                    // otherwise fit in the time the next thread takes to wake up, and nothing
                    // would overlap.
                    for _ in 0..(x >> 40) % 64 {
                        std::hint::spin_loop();
                    }
                    let key = x % keys;
                    let invoked = clock.tick();
                    let op = match (x >> 8) % 4 {
                        0 => {
                            let value = 1_000 + (t * 100 + i) as u64;
                            KeyOp::Insert { value, returned: map.insert(key, value).unwrap() }
                        }
                        1 => KeyOp::Remove { returned: map.remove(&key).unwrap() },
                        2 => KeyOp::Get { returned: map.get_cloned(&key).unwrap() },
                        _ => KeyOp::Increment {
                            returned: map
                                .update(&key, |v| {
                                    *v += 1;
                                    *v
                                })
                                .unwrap(),
                        },
                    };
                    let returned = clock.tick();
                    events.push(Event { key, op, invoked, returned });
                }
                events
            })
        })
        .collect();
    let events = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    (events, initial)
}

/// CI: 300 histories; long run: 10,000.
#[test]
fn small_concurrent_histories_are_linearizable() {
    let n = scale(300, 10_000);
    within(Duration::from_secs(if suite::long_run() { 3600 } else { 300 }), move || {
        let mut overlapping = 0usize;
        let mut seed = 0u64;
        // At least `n` histories holding at least `n / 3` operations that overlapped another
        // one; on a loaded machine threads overlap less, so go on (up to 20 × n histories)
        // until they hold that much concurrency.
        let enough = n / 3;
        while seed < n as u64 || (overlapping < enough && seed < 20 * n as u64) {
            seed += 1;
            let shards = if seed % 2 == 0 { 1 } else { 4 };
            let (events, initial) = history(seed, 3, 48, 4, shards);
            // Count operations that ran concurrently with another one: without overlap the
            // check would prove nothing.
            overlapping += events
                .iter()
                .filter(|a| events.iter().any(|b| b.invoked < a.invoked && a.invoked < b.returned))
                .count();
            if let Err(key) = check(&events, &initial) {
                let mut sub: Vec<_> = events.iter().filter(|e| e.key == key).collect();
                sub.sort_by_key(|e| e.invoked);
                panic!(
                    "history {seed}: key {key} not linearizable (initial {:?}):\n{sub:#?}",
                    initial.get(&key)
                );
            }
        }
        assert!(
            overlapping >= enough,
            "too little concurrency to test anything: {overlapping} overlapping ops in {seed} histories"
        );
        eprintln!("SUMMARY linearizability histories={seed} overlapping={overlapping}");
    });
}
