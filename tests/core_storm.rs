//! Storms: hundreds of threads started at once on one map; afterwards the map agrees with what
//! the threads' own logs say. Bounded in time by the per-operation deadline and a watchdog.

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

/// Hundreds of threads at once: each owns a key range and checks every result against its own
/// log; all of them hammer a shared hot set; the final map equals the union of the logs.
#[test]
fn hundreds_of_threads_agree_with_their_own_logs() {
    within(Duration::from_secs(240), || suite::model_storm(map(16), 300, 400));
}

/// The same storm on a map with statistics off, whose uncontended operations take the bare
/// fast path (no `Waiter`, no count) and whose contended ones fall back to the full path.
#[test]
fn hundreds_of_threads_agree_with_their_own_logs_on_a_map_without_statistics() {
    let bare = MapWrapper::builder().name("storm").shards(16).stats(false).timeout(Duration::from_secs(30));
    within(Duration::from_secs(240), || suite::model_storm(Arc::new(bare.build().unwrap()), 300, 400));
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
