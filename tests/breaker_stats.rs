//! Statistics agree exactly with what the test did; the breaker driven through a real map on
//! a test clock; configuration errors at `build()`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use map_wrapper::breaker::{BreakerConfig, BreakerState, OpenWait, SlidingWindow};
use map_wrapper::clock::TestClock;
use map_wrapper::{CancelToken, ErrorKind, MapWrapper, OpContext};

fn timed_map(clock: &TestClock) -> MapWrapper<u32, u32> {
    MapWrapper::builder().clock(clock.clone()).latency_sampling(1).build().unwrap()
}

#[test]
fn stats_count_every_outcome_exactly() {
    let clock = TestClock::new();
    let map = timed_map(&clock);
    for i in 0..10 {
        map.insert(i, i).unwrap();
    }
    for i in 0..15 {
        map.get_cloned(&i).unwrap(); // 10 found, 5 not found: all ok
    }
    // Three slow updates: the closure moves the test clock past the slow threshold (50 ms).
    for i in 0..3 {
        map.update(&i, |_| clock.advance(Duration::from_millis(100 + i as u64))).unwrap();
    }
    // Cancelled before taking the lock: ignored.
    let token = CancelToken::new();
    token.cancel();
    let cancelled = OpContext::new().cancel_token(token);
    for _ in 0..4 {
        assert_eq!(map.with(&cancelled).remove(&1).unwrap_err().code(), "CANCELLED");
    }
    // A deadline already past: not the map's fault (ignored).
    let expired = OpContext::new().deadline(Instant::now());
    assert_eq!(map.with(&expired).insert(1, 1).unwrap_err().code(), "DEADLINE_EXCEEDED");
    // Would-deadlock: failed.
    let guard = map.get(&5).unwrap().unwrap();
    for _ in 0..2 {
        assert_eq!(map.insert(5, 0).unwrap_err().code(), "WOULD_DEADLOCK");
    }
    drop(guard);
    // A panicking closure: ignored.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        map.update(&2, |_| panic!("caller's bug")).unwrap();
    }));
    assert!(panicked.is_err());

    let s = map.stats();
    let op = |name| *s.op(name).unwrap_or_else(|| panic!("no {name} in {s:?}"));
    let insert = op("insert");
    assert_eq!((insert.ok, insert.slow, insert.failed, insert.ignored, insert.rejected), (10, 0, 2, 1, 0));
    assert_eq!((op("get_cloned").ok, op("get").ok), (15, 1));
    let update = op("update");
    assert_eq!((update.ok, update.slow, update.ignored), (0, 3, 1));
    assert_eq!(op("remove").ignored, 4);
    assert!(s.op("retain").is_none(), "kinds that never ran are left out");
    assert_eq!((s.total.ok, s.total.slow, s.total.failed, s.total.ignored), (26, 3, 2, 6));
    assert_eq!((s.timeouts, s.deadlines_exceeded), (0, 1));
    assert_eq!((s.cancellations, s.would_deadlocks, s.panics, s.rejected), (4, 2, 1, 0));
    // Sampling 1: every ok, slow and failed call is timed; on the test clock, only the slow
    // updates took any time.
    assert_eq!(s.latency.count, 26 + 3 + 2);
    assert_eq!(s.latency.max, Duration::from_millis(102));
    assert_eq!(s.latency.p50, Duration::ZERO);
    assert!(s.latency.p99 >= Duration::from_millis(100), "{:?}", s.latency);
    assert_eq!(s.latency.mean, Duration::from_millis(303) / 31);
    assert!(s.breaker.is_none());
}

#[test]
fn sampling_times_one_in_n_uncontended_operations_of_a_thread() {
    let map: MapWrapper<u32, u32> = MapWrapper::builder().latency_sampling(4).build().unwrap();
    for i in 0..40 {
        map.insert(i, i).unwrap();
    }
    let s = map.stats();
    assert_eq!(s.total.ok, 40);
    assert_eq!(s.latency.count, 10, "1 in 4 of 40 consecutive operations, whatever the phase");
}

/// Each map keeps its own sampling countdown: a thread that uses two maps in turn (as the
/// fields of one `#[guarded_map]` struct are) times one in N operations of each, and a map that
/// asks for every operation to be timed gets them all, whatever the other map asks for.
#[test]
fn each_map_samples_one_in_n_of_its_own_operations_when_a_thread_alternates_maps() {
    let a: MapWrapper<u32, u32> = MapWrapper::builder().latency_sampling(4).build().unwrap();
    let b: MapWrapper<u32, u32> = MapWrapper::builder().latency_sampling(4).build().unwrap();
    let every: MapWrapper<u32, u32> = MapWrapper::builder().latency_sampling(1).build().unwrap();
    for i in 0..200 {
        a.insert(i, i).unwrap();
        b.insert(i, i).unwrap();
        every.insert(i, i).unwrap();
    }
    assert_eq!(a.stats().latency.count, 50, "1 in 4 of a's 200 operations");
    assert_eq!(b.stats().latency.count, 50, "1 in 4 of b's 200 operations");
    assert_eq!(every.stats().latency.count, 200, "every operation of the map sampling 1 in 1");
}

#[test]
fn slow_operations_on_the_test_clock_trip_the_breaker_and_a_rejected_call_does_nothing() {
    let clock = TestClock::new();
    let map: MapWrapper<u32, u32> = MapWrapper::builder()
        .clock(clock.clone())
        .latency_sampling(1)
        .slow_threshold(Duration::from_millis(20))
        .breaker(
            BreakerConfig::new()
                .window(SlidingWindow::count(10))
                .minimum_calls(6)
                .combined_rate(None)
                .slow_rate(0.5)
                .open_wait(OpenWait::Fixed(Duration::from_secs(2))),
        )
        .build()
        .unwrap();
    for i in 0..3 {
        map.insert(i, 0).unwrap();
    }
    for i in 0..3 {
        map.update(&i, |v| {
            clock.advance(Duration::from_millis(30));
            *v += 1;
        })
        .unwrap();
    }
    let s = map.stats();
    let b = s.breaker.unwrap();
    assert_eq!(b.state, BreakerState::Open);
    assert_eq!((b.window_calls, b.slow_rate), (6, 0.5), "the window it tripped on");
    assert_eq!(b.transitions, 1);

    // Rejected: the closure does not run, nothing changes.
    let mut ran = false;
    let err = map.update(&0, |v| {
        ran = true;
        *v = 100;
    });
    match err {
        Err(e) if e.kind() == ErrorKind::CircuitOpen => {
            assert_eq!(e.retry_after(), Some(Duration::from_secs(2)))
        }
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert!(!ran);
    assert_eq!(map.insert(9, 9).unwrap_err().code(), "CIRCUIT_OPEN");

    clock.advance(Duration::from_secs(2));
    assert_eq!(map.breaker().unwrap().state(), BreakerState::HalfOpen);
    for _ in 0..3 {
        map.get_cloned(&0).unwrap(); // probes, quick on the test clock
    }
    assert_eq!(map.breaker().unwrap().state(), BreakerState::Closed);
    assert_eq!(map.get_cloned(&0).unwrap(), Some(1));
    let s = map.stats();
    assert_eq!(s.op("update").unwrap().rejected, 1);
    assert_eq!(s.op("insert").unwrap().rejected, 1);
    assert_eq!(s.rejected, 2);
    assert_eq!(s.op("update").unwrap().slow, 3);
    assert_eq!(s.breaker.unwrap().transitions, 3);
    assert_eq!(s.stale_results, 0);
}

#[test]
fn failure_rate_trips_on_would_deadlocks_and_time_based_windows_forget() {
    let clock = TestClock::new();
    let map: MapWrapper<u32, u32> = MapWrapper::builder()
        .clock(clock.clone())
        .latency_sampling(1)
        .breaker(
            BreakerConfig::new()
                .window(SlidingWindow::Time { span: Duration::from_secs(10), buckets: 10 })
                .minimum_calls(4)
                .failure_rate(0.5)
                .combined_rate(None),
        )
        .build()
        .unwrap();
    map.insert(1, 1).unwrap();
    let deadlock = || {
        let g = map.get(&1).unwrap().unwrap();
        assert_eq!(map.remove(&1).unwrap_err().code(), "WOULD_DEADLOCK");
        drop(g);
    };
    deadlock(); // insert, get, remove: 3 calls, 1 failed
    clock.advance(Duration::from_secs(20));
    for i in 0..3 {
        map.insert(10 + i, 0).unwrap();
    }
    deadlock(); // the old calls have left: 3 inserts, get, remove: 1 of 5 failed
    assert_eq!(map.breaker().unwrap().state(), BreakerState::Closed);
    deadlock(); // 2 of 7
    deadlock(); // 3 of 9
    assert_eq!(map.breaker().unwrap().state(), BreakerState::Closed);
    let s = map.stats().breaker.unwrap();
    assert_eq!((s.window_calls, s.failure_rate), (9, 3.0 / 9.0));
    deadlock(); // 4 of 11
    deadlock(); // 5 of 13
    deadlock(); // 6 of 15
    assert_eq!(map.breaker().unwrap().state(), BreakerState::Closed);
    map.breaker().unwrap().metrics_only();
    for _ in 0..20 {
        deadlock();
    }
    assert_eq!(map.breaker().unwrap().state(), BreakerState::MetricsOnly, "records, never rejects");
    let s = map.stats().breaker.unwrap();
    assert_eq!((s.window_calls, s.failure_rate), (40, 0.5));
    map.breaker().unwrap().close();
    deadlock();
    assert_eq!(map.breaker().unwrap().state(), BreakerState::Closed, "a fresh window: 2 calls");
    deadlock();
    assert_eq!(map.breaker().unwrap().state(), BreakerState::Open);
}

#[test]
fn forced_open_and_disabled_are_operator_states() {
    let map: Arc<MapWrapper<u32, u32>> = Arc::new(
        MapWrapper::builder()
            .breaker(BreakerConfig::new().window(SlidingWindow::count(2)).minimum_calls(1).failure_rate(0.5))
            .build()
            .unwrap(),
    );
    map.insert(1, 1).unwrap();
    let breaker = map.breaker().unwrap();
    breaker.force_open();
    assert_eq!(map.insert(1, 2).unwrap_err().code(), "CIRCUIT_OPEN");
    assert_eq!(map.remove(&1).unwrap_err().code(), "CIRCUIT_OPEN");
    assert_eq!(map.clear().unwrap_err().code(), "CIRCUIT_OPEN");
    // An operation that needs no lock is not refused (and not counted as rejected).
    assert_eq!(map.extend(std::iter::empty()).unwrap(), 0);
    breaker.disable();
    for _ in 0..10 {
        let g = map.get(&1).unwrap().unwrap();
        assert_eq!(map.insert(1, 3).unwrap_err().code(), "WOULD_DEADLOCK");
        drop(g);
    }
    assert_eq!(breaker.state(), BreakerState::Disabled, "a disabled breaker never trips");
    assert_eq!(map.get_cloned(&1).unwrap(), Some(1), "rejected and refused calls changed nothing");
    breaker.close();
    assert_eq!(breaker.state(), BreakerState::Closed);
    let s = map.stats();
    assert_eq!(s.rejected, 3);
    assert_eq!(s.would_deadlocks, 10);
    assert_eq!(s.breaker.unwrap().transitions, 3);
}

#[test]
fn a_breaker_counts_calls_even_when_stats_are_off() {
    let off: MapWrapper<u32, u32> = MapWrapper::builder().stats(false).build().unwrap();
    off.insert(1, 1).unwrap();
    let s = off.stats();
    assert_eq!((s.total.ok, s.latency.count), (0, 0), "no statistics kept");

    let with_breaker: MapWrapper<u32, u32> = MapWrapper::builder()
        .stats(false)
        .breaker(BreakerConfig::new().window(SlidingWindow::count(2)).minimum_calls(2).failure_rate(0.5))
        .build()
        .unwrap();
    with_breaker.insert(1, 1).unwrap();
    let g = with_breaker.get(&1).unwrap().unwrap();
    assert!(with_breaker.insert(1, 1).is_err());
    drop(g);
    assert_eq!(with_breaker.breaker().unwrap().state(), BreakerState::Open);
    assert_eq!(with_breaker.stats().total.ok, 2);
}

#[test]
fn invalid_breaker_settings_are_build_errors_not_panics() {
    fn field(r: Result<MapWrapper<u8, u8>, map_wrapper::BuildError>) -> &'static str {
        match r {
            Err(e) => e.field(),
            Ok(_) => panic!("expected a BuildError"),
        }
    }
    let b = MapWrapper::<u8, u8>::builder;
    assert_eq!(field(b().breaker(BreakerConfig::new().failure_rate(2.0)).build()), "breaker.failure_rate");
    assert_eq!(field(b().breaker(BreakerConfig::new().minimum_calls(0)).build()), "breaker.minimum_calls");
    assert_eq!(
        field(b().breaker(BreakerConfig::new().window(SlidingWindow::count(0))).build()),
        "breaker.window"
    );
    assert_eq!(field(b().on_breaker_event(|_| {}).build()), "on_breaker_event");
    assert_eq!(field(b().latency_sampling(0).build()), "latency_sampling");
    let ok = b().breaker(BreakerConfig::new()).on_breaker_event(|_| {}).build().unwrap();
    assert_eq!(ok.breaker().unwrap().state(), BreakerState::Closed);
    assert_eq!(ok.stats().breaker.unwrap().state, BreakerState::Closed);
}

#[test]
fn stats_are_exact_under_a_storm_of_threads() {
    const THREADS: usize = 8;
    const OPS: u64 = 2_000;
    let map: Arc<MapWrapper<u64, u64>> = Arc::new(
        MapWrapper::builder().shards(4).latency_sampling(1).breaker(BreakerConfig::new()).build().unwrap(),
    );
    // Records everything, rejects nothing: a descheduled thread may make a call slow here.
    map.breaker().unwrap().metrics_only();
    let storm_map = Arc::clone(&map);
    suite::within(Duration::from_secs(120), move || {
        suite::storm(THREADS, move |t| {
            for i in 0..OPS {
                let key = (t as u64) << 32 | (i % 64);
                match i % 4 {
                    0 => drop(storm_map.insert(key, i).unwrap()),
                    1 => drop(storm_map.get_cloned(&key).unwrap()),
                    2 => drop(storm_map.update(&key, |v| *v += 1).unwrap()),
                    _ => drop(storm_map.contains_key(&key).unwrap()),
                }
            }
        })
    });
    let s = map.stats();
    let per_kind = THREADS as u64 * OPS / 4;
    for name in ["insert", "get_cloned", "update", "contains_key"] {
        let k = s.op(name).unwrap();
        assert_eq!(k.ok + k.slow, per_kind, "{name}: {k:?}");
        assert_eq!((k.failed, k.ignored, k.rejected), (0, 0, 0), "{name}");
    }
    assert_eq!(s.total.ok + s.total.slow, THREADS as u64 * OPS);
    assert_eq!(s.latency.count, THREADS as u64 * OPS, "sampling 1: every call timed");
    let b = s.breaker.unwrap();
    assert_eq!((b.state, b.window_calls), (BreakerState::MetricsOnly, 100), "a full count window");
}

#[test]
fn a_rejected_mutation_is_audited_as_circuit_open_and_changes_nothing() {
    use map_wrapper::audit::{Auditor, MemorySink};
    let sink = MemorySink::new();
    let map: MapWrapper<String, u32> = MapWrapper::builder()
        .name("audited")
        .auditor(Auditor::new(sink.clone()))
        .breaker(BreakerConfig::new())
        .build()
        .unwrap();
    map.insert("a".into(), 1).unwrap();
    map.breaker().unwrap().force_open();
    assert_eq!(map.insert("a".into(), 2).unwrap_err().code(), "CIRCUIT_OPEN");
    assert_eq!(map.remove("a").unwrap_err().code(), "CIRCUIT_OPEN");
    map.breaker().unwrap().close();
    assert_eq!(map.get_cloned("a").unwrap(), Some(1));
    let records = sink.records();
    let outcomes: Vec<(&str, &str)> = records.iter().map(|r| (r.op.as_str(), r.outcome.as_str())).collect();
    assert_eq!(outcomes, vec![("insert", "ok"), ("insert", "circuit_open"), ("remove", "circuit_open")]);
    assert_eq!(map.stats().rejected, 2);
}

/// Issue 4 item 7: an audited map's stats show the audit queue, records written and records
/// per fsync, agreeing with what the sink wrote.
#[test]
fn stats_show_the_audit_figures_of_a_file_trail() {
    use map_wrapper::audit::{Auditor, Durability, JsonLinesSink};
    let dir = tempfile::tempdir().unwrap();
    let sink = std::sync::Arc::new(JsonLinesSink::open(dir.path(), Default::default()).unwrap());
    let auditor = Auditor::from_arc(sink.clone()).durability(Durability::Synced);
    let map: MapWrapper<u32, u32> = MapWrapper::builder().auditor(auditor).build().unwrap();
    for i in 0..50 {
        map.insert(i, i).unwrap();
    }
    let audit = map.stats().audit.expect("an audited map has audit stats");
    let figures = audit.sink.expect("a file sink keeps figures");
    // Synced: every insert returned after its record was on disk, so nothing is queued and
    // the 50 records were written by the writer thread.
    assert_eq!(figures.queued, 0);
    assert_eq!(figures.written, 50);
    assert!(figures.syncs >= 1 && figures.syncs <= 51, "{figures:?}");
    assert!(figures.records_per_sync() >= 1.0);
    assert_eq!(audit.lost_records, 0);
    let plain: MapWrapper<u32, u32> = MapWrapper::new();
    assert!(plain.stats().audit.is_none());
}

/// With the default sampling most operations take the fast path (a count, no `Waiter`), one in
/// 64 the timed full path: together they count every operation exactly, from many threads, and
/// a panicking closure on the fast path is counted as a panic and releases the lock.
///
/// Timeout and slow threshold far above any stall of a loaded machine: a sampled call slower
/// than the default 50 ms would be counted slow, not ok, and (standing for 64 calls) open the
/// default breaker, after which the calls fail.
#[test]
fn the_fast_path_counts_every_operation_exactly() {
    let map: MapWrapper<u32, u32> = MapWrapper::builder()
        .timeout(Duration::from_secs(120))
        .slow_threshold(Duration::from_secs(60))
        .breaker(BreakerConfig::new())
        .build()
        .unwrap();
    let threads = 8u32;
    let per = 1_000u32;
    std::thread::scope(|s| {
        for t in 0..threads {
            let map = &map;
            s.spawn(move || {
                for i in 0..per {
                    let k = t * per + i;
                    assert_eq!(map.insert(k, i).unwrap(), None);
                    assert_eq!(map.get_cloned(&k).unwrap(), Some(i));
                    assert_eq!(map.update(&k, |v| *v + 1).unwrap(), Some(i + 1));
                    assert!(map.contains_key(&k).unwrap());
                    if i % 2 == 0 {
                        assert_eq!(map.remove(&k).unwrap(), Some(i));
                    }
                }
            });
        }
    });
    for _ in 0..3 {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = map.update(&1, |_| panic!("caller's bug"));
        }));
        assert!(r.is_err());
        map.insert(1, 1).unwrap(); // the lock was released
    }
    let s = map.stats();
    let n = u64::from(threads * per);
    let ok = |name| s.op(name).unwrap_or_else(|| panic!("no {name} in {s:?}")).ok;
    assert_eq!(ok("insert"), n + 3);
    assert_eq!(ok("get_cloned"), n);
    assert_eq!(ok("contains_key"), n);
    assert_eq!(ok("remove"), n / 2);
    assert_eq!(ok("update"), n);
    assert_eq!((s.total.slow, s.total.failed, s.total.rejected), (0, 0, 0));
    assert_eq!(s.panics, 3);
    assert_eq!(s.breaker.unwrap().state, BreakerState::Closed);
    assert_eq!(map.len().unwrap() as u64, n - n / 2, "key 1 (odd, kept) was only replaced");
}

/// Runs `f` on a thread of its own, whose sampling countdown starts afresh (its first
/// operation on a map with statistics is the sampled one).
fn on_a_fresh_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|s| s.spawn(f).join().unwrap());
}

/// An operation whose shard is taken falls back from the fast path to the full one: it is one
/// operation of the thread, so it takes one turn of the sampling countdown, not two. With
/// sampling 64, the first operation of a thread and then every 64th are timed, whether the
/// ones between were contended or not.
#[test]
fn an_operation_that_falls_back_to_the_full_path_takes_one_turn_of_the_sampling_countdown() {
    let map: MapWrapper<u32, u32> =
        MapWrapper::builder().shards(1).timeout(Duration::from_millis(2)).build().unwrap();
    on_a_fresh_thread(|| {
        map.insert(1, 1).unwrap(); // timed: the thread's first operation
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let map = &map;
            s.spawn(move || {
                let guard = map.get(&1).unwrap().unwrap(); // timed: that thread's first operation
                locked_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                drop(guard);
            });
            locked_rx.recv().unwrap();
            for _ in 0..10 {
                // Timed (it waited), and the 2nd to 11th operations of this thread.
                assert_eq!(map.insert(2, 2).unwrap_err().code(), "TIMEOUT");
            }
            release_tx.send(()).unwrap();
        });
        for _ in 0..53 {
            map.get_cloned(&1).unwrap(); // the 12th to 64th: not sampled
        }
        assert_eq!(map.stats().latency.count, 1 + 1 + 10, "{:?}", map.stats().latency);
        map.get_cloned(&1).unwrap(); // the 65th: sampled
        assert_eq!(map.stats().latency.count, 1 + 1 + 10 + 1);
    });
    let s = map.stats();
    assert_eq!((s.total.ok, s.timeouts), (1 + 1 + 54, 10));
}

/// The same for a call the breaker rejects: it takes one turn of the countdown.
#[test]
fn a_call_the_breaker_rejects_takes_one_turn_of_the_sampling_countdown() {
    let map: MapWrapper<u32, u32> = MapWrapper::builder().breaker(BreakerConfig::new()).build().unwrap();
    on_a_fresh_thread(|| {
        map.insert(1, 1).unwrap(); // timed: the thread's first operation
        map.breaker().unwrap().force_open();
        for _ in 0..10 {
            assert_eq!(map.get_cloned(&1).unwrap_err().code(), "CIRCUIT_OPEN"); // 2nd to 11th
        }
        map.breaker().unwrap().close();
        for _ in 0..53 {
            map.get_cloned(&1).unwrap(); // the 12th to 64th: not sampled
        }
        assert_eq!(map.stats().latency.count, 1, "{:?}", map.stats().latency);
        map.get_cloned(&1).unwrap(); // the 65th: sampled
        assert_eq!(map.stats().latency.count, 2);
    });
    let s = map.stats();
    assert_eq!((s.total.ok, s.rejected), (1 + 54, 10));
}

/// On a thread past its first (sampled) operation, every operation with a fast path asks the
/// breaker: forced open or open, each is rejected, runs no closure and changes nothing.
#[test]
fn every_fast_path_operation_is_rejected_by_an_open_breaker() {
    let map: MapWrapper<u32, u32> = MapWrapper::builder()
        .breaker(BreakerConfig::new().window(SlidingWindow::count(2)).minimum_calls(1).failure_rate(0.5))
        .build()
        .unwrap();
    let breaker = map.breaker().unwrap();
    let all_rejected = |state: BreakerState| {
        assert_eq!(breaker.state(), state);
        let ran = std::cell::Cell::new(false);
        let results = [
            map.insert(1, 9).map(drop),
            map.get(&1).map(drop),
            map.get_cloned(&1).map(drop),
            map.view(&1, |_| ran.set(true)).map(drop),
            map.contains_key(&1).map(drop),
            map.remove(&1).map(drop),
            map.remove_entry(&1).map(drop),
            map.remove_if(&1, |_, _| {
                ran.set(true);
                true
            })
            .map(drop),
            map.update(&1, |v| {
                ran.set(true);
                *v = 9;
            })
            .map(drop),
            map.entry(2)
                .or_insert_with(|| {
                    ran.set(true);
                    9
                })
                .map(drop),
        ];
        for r in results {
            assert_eq!(r.unwrap_err().code(), "CIRCUIT_OPEN", "in state {state:?}");
        }
        assert!(!ran.get(), "no closure ran in state {state:?}");
    };
    for i in 0..10 {
        map.insert(1, i).unwrap(); // the thread's countdown is running: the next calls are not sampled
    }
    breaker.force_open();
    all_rejected(BreakerState::ForcedOpen);
    breaker.close();
    let guard = map.get(&1).unwrap().unwrap();
    assert_eq!(map.insert(1, 0).unwrap_err().code(), "WOULD_DEADLOCK");
    drop(guard);
    all_rejected(BreakerState::Open);
    let s = map.stats();
    for name in [
        "insert",
        "get",
        "get_cloned",
        "view",
        "contains_key",
        "remove",
        "remove_entry",
        "remove_if",
        "update",
        "entry",
    ] {
        assert_eq!(s.op(name).unwrap().rejected, 2, "{name}: {:?}", s.op(name));
    }
    breaker.close();
    assert_eq!(map.snapshot().unwrap(), vec![(1, 9)], "the rejected calls changed nothing");
}

/// An audited map never takes the fast path: on a thread whose statistics would let most
/// calls through it, every change is recorded, in order.
#[test]
fn an_audited_map_records_every_change_made_on_a_warm_thread() {
    use map_wrapper::audit::{Auditor, MemorySink};
    let sink = MemorySink::new();
    let map: MapWrapper<u32, u32> =
        MapWrapper::builder().auditor(Auditor::new(sink.clone())).shards(4).build().unwrap();
    let mut expected = Vec::new();
    for i in 0..100 {
        map.insert(i, i).unwrap();
        map.update(&i, |v| *v += 1).unwrap();
        map.entry(i).and_modify(|v| *v += 1).or_insert(0).unwrap();
        assert_eq!(map.get_cloned(&i).unwrap(), Some(i + 2));
        if i % 2 == 0 {
            assert_eq!(map.remove(&i).unwrap(), Some(i + 2));
            expected.extend([(i, "insert"), (i, "update"), (i, "entry"), (i, "remove")]);
        } else {
            assert_eq!(map.remove_if(&i, |_, _| true).unwrap(), Some(i + 2));
            expected.extend([(i, "insert"), (i, "update"), (i, "entry"), (i, "remove_if")]);
        }
    }
    let records = sink.records();
    let got: Vec<(Option<serde_json::Value>, &str)> =
        records.iter().map(|r| (r.key.clone(), r.op.as_str())).collect();
    let expected: Vec<_> =
        expected.into_iter().map(|(k, op)| (Some(serde_json::json!({ "full": k })), op)).collect();
    assert_eq!(got, expected);
    assert!(records.iter().all(|r| r.outcome == "ok"));
    assert_eq!(map.stats().total.ok, 500);
}

/// A closure that panics on the fast path (a warm thread, statistics on): the lock is
/// released, the thread no longer counts as holding the shard, and the call is counted once,
/// as a panic, under its own kind.
#[test]
fn a_panicking_closure_on_the_fast_path_is_counted_once_and_leaves_nothing_held() {
    let map: MapWrapper<u32, u32> =
        MapWrapper::builder().shards(1).timeout(Duration::from_millis(200)).build().unwrap();
    map.insert(1, 1).unwrap(); // the thread's first operation: sampled, on the full path
    let panics = |f: &dyn Fn()| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        assert!(r.is_err());
        // Released and unmarked: a write from this thread neither times out nor is refused.
        assert_eq!(map.insert(1, 1).unwrap(), Some(1));
    };
    panics(&|| drop(map.update(&1, |_| panic!("caller's bug"))));
    panics(&|| drop(map.view(&1, |_| panic!("caller's bug"))));
    panics(&|| drop(map.remove_if(&1, |_, _| panic!("caller's bug"))));
    panics(&|| drop(map.entry(1).and_modify(|_| panic!("caller's bug")).or_insert(0)));
    panics(&|| drop(map.entry(2).or_insert_with(|| panic!("caller's bug"))));
    let s = map.stats();
    for name in ["update", "view", "remove_if", "entry"] {
        let k = s.op(name).unwrap();
        let expected_panics = if name == "entry" { 2 } else { 1 };
        assert_eq!((k.ok, k.ignored), (0, expected_panics), "{name}: {k:?}");
    }
    assert_eq!((s.panics, s.op("insert").unwrap().ok), (5, 6));
    assert_eq!(map.snapshot().unwrap(), vec![(1, 1)], "no panicking call changed the map");
}
