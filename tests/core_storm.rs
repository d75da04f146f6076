//! Storms: hundreds of threads started at once on one map; afterwards the map agrees with what
//! the threads' own logs say. Bounded in time by the per-operation deadline and a watchdog.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use map_wrapper::MapWrapper;
use suite::{storm, within};

fn map(shards: usize) -> Arc<MapWrapper<u64, u64>> {
    // A generous timeout: under a storm on 2 cores, waits are long but must not fail.
    Arc::new(
        MapWrapper::builder().name("storm").shards(shards).timeout(Duration::from_secs(30)).build().unwrap(),
    )
}

#[test]
fn ten_threads_each_removing_its_key_all_removed_each_once() {
    within(Duration::from_secs(60), || {
        for _round in 0..50 {
            let m = map(8);
            for k in 0..10 {
                m.insert(k, k * 100).unwrap();
            }
            let seen = Arc::new(AtomicUsize::new(0));
            let results = {
                let (m, seen) = (Arc::clone(&m), Arc::clone(&seen));
                storm(10, move |t| {
                    let r = m.remove(&(t as u64)).unwrap();
                    if r.is_some() {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    r
                })
            };
            for (t, r) in results.iter().enumerate() {
                assert_eq!(*r, Some(t as u64 * 100), "thread {t} saw its own removal");
            }
            assert_eq!(seen.load(Ordering::Relaxed), 10);
            assert!(m.is_empty().unwrap());
        }
    });
}

#[test]
fn concurrent_removes_of_one_key_succeed_exactly_once() {
    within(Duration::from_secs(60), || {
        for round in 0..50u64 {
            let m = map(4);
            m.insert(7, round).unwrap();
            let m2 = Arc::clone(&m);
            let results = storm(16, move |_| m2.remove(&7).unwrap());
            let winners: Vec<_> = results.into_iter().flatten().collect();
            assert_eq!(winners, vec![round]);
        }
    });
}

/// Each thread owns a disjoint range of keys for inserts/removes (so its own log is the truth
/// for those keys) and also reads and updates a shared hot set that everybody touches.
#[test]
fn hundreds_of_threads_agree_with_their_own_logs() {
    const THREADS: usize = 300;
    const OPS: u64 = 400;
    const HOT: u64 = 16;
    // Far above every thread's own key range (t * 10_000 + 0..64).
    const HOT_BASE: u64 = u64::MAX - HOT;
    within(Duration::from_secs(240), || {
        let m = map(16);
        for h in 0..HOT {
            m.insert(HOT_BASE + h, 0).unwrap();
        }
        let m2 = Arc::clone(&m);
        let logs = storm(THREADS, move |t| {
            let base = t as u64 * 10_000;
            let mut mine: HashMap<u64, u64> = HashMap::new();
            let mut hot_increments = 0u64;
            let mut x = t as u64 * 0x9E37_79B9 + 1;
            for i in 0..OPS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = base + x % 64;
                match x % 10 {
                    0..=3 => {
                        assert_eq!(m2.insert(key, i).unwrap(), mine.insert(key, i));
                    }
                    4 | 5 => {
                        assert_eq!(m2.remove(&key).unwrap(), mine.remove(&key));
                    }
                    6 => {
                        assert_eq!(m2.get_cloned(&key).unwrap(), mine.get(&key).copied());
                    }
                    7 | 8 => {
                        let hot = HOT_BASE + x % HOT;
                        m2.update(&hot, |v| *v += 1).unwrap().expect("hot key present");
                        hot_increments += 1;
                    }
                    _ => {
                        let hot = HOT_BASE + x % HOT;
                        assert!(m2.get_cloned(&hot).unwrap().is_some());
                    }
                }
            }
            (mine, hot_increments)
        });

        let mut expected: HashMap<u64, u64> = HashMap::new();
        let mut increments = 0;
        for (mine, inc) in logs {
            expected.extend(mine);
            increments += inc;
        }
        let hot_total: u64 = (0..HOT).map(|h| m.remove(&(HOT_BASE + h)).unwrap().unwrap()).sum();
        assert_eq!(hot_total, increments, "no update lost");
        let mut got = m.snapshot().unwrap();
        got.sort_unstable();
        let mut want: Vec<_> = expected.into_iter().collect();
        want.sort_unstable();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
    });
}

#[test]
fn bulk_operations_under_a_storm_lose_nothing() {
    within(Duration::from_secs(120), || {
        let m = map(8);
        let removed_by_clear = Arc::new(AtomicUsize::new(0));
        let (m2, rc) = (Arc::clone(&m), Arc::clone(&removed_by_clear));
        let inserted: Vec<usize> = storm(64, move |t| {
            if t == 0 {
                for _ in 0..20 {
                    rc.fetch_add(m2.clear().unwrap(), Ordering::Relaxed);
                    std::thread::yield_now();
                }
                0
            } else {
                let base = t as u64 * 1000;
                m2.extend((0..200).map(|i| (base + i, i))).unwrap()
            }
        });
        let total: usize = inserted.iter().sum();
        assert_eq!(total, 63 * 200);
        assert_eq!(
            removed_by_clear.load(Ordering::Relaxed) + m.len().unwrap(),
            total,
            "every insert either cleared or present"
        );
    });
}
