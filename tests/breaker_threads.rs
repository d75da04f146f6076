//! The circuit breaker with real threads and real locks: a thread holds a shard, operations
//! time out, the breaker opens and fails fast, the holder lets go, probes succeed, it closes.

use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use map_wrapper::breaker::{
    BreakerConfig, BreakerEvent, BreakerEventKind, BreakerState, OpenWait, SlidingWindow, TransitionCause,
};
use map_wrapper::clock::TestClock;
use map_wrapper::{ErrorKind, MapWrapper};

type Events = Arc<Mutex<Vec<BreakerEvent>>>;

fn recorder() -> (Events, impl Fn(&BreakerEvent) + Send + Sync + 'static) {
    let events: Events = Arc::default();
    let log = Arc::clone(&events);
    (events, move |e: &BreakerEvent| log.lock().unwrap().push(e.clone()))
}

/// Events reduced to what the tests compare: state changes and rejections.
#[derive(Debug, PartialEq)]
enum Seen {
    Changed(BreakerState, BreakerState),
    Rejected,
}

fn seen(events: &Events) -> Vec<Seen> {
    let mut out: Vec<Seen> = Vec::new();
    for e in events.lock().unwrap().iter() {
        match &e.kind {
            BreakerEventKind::StateChanged { from, to, .. } => out.push(Seen::Changed(*from, *to)),
            // Runs of rejections collapse into one.
            BreakerEventKind::Rejected { .. } if out.last() == Some(&Seen::Rejected) => {}
            BreakerEventKind::Rejected { .. } => out.push(Seen::Rejected),
            _ => {}
        }
    }
    out
}

#[test]
fn held_shard_opens_the_breaker_which_fails_fast_then_closes_after_probes() {
    const TIMEOUT: Duration = Duration::from_millis(100);
    // Long enough that a descheduled test thread still finds the breaker open.
    const OPEN_WAIT: Duration = Duration::from_secs(1);
    let (events, listener) = recorder();
    let map: Arc<MapWrapper<u32, u32>> = Arc::new(
        MapWrapper::builder()
            .name("held")
            .shards(1)
            .timeout(TIMEOUT)
            .slow_threshold(Duration::from_millis(40))
            .latency_sampling(1)
            .breaker(
                BreakerConfig::new()
                    .window(SlidingWindow::count(10))
                    .minimum_calls(5)
                    .combined_rate(0.5)
                    .open_wait(OpenWait::Fixed(OPEN_WAIT))
                    .half_open_probes(2)
                    .success_quota(3),
            )
            .on_breaker_event(listener)
            .build()
            .unwrap(),
    );
    map.insert(0, 0).unwrap();

    // A thread holds the only shard inside an `update` closure until told to let go.
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = {
        let map = Arc::clone(&map);
        thread::spawn(move || {
            map.update(&0, |v| {
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                *v = 99;
            })
        })
    };
    held_rx.recv().unwrap();

    // Operations wait for the shard and time out; with the first insert, four timeouts make
    // five calls (the minimum), 80 % failed: the breaker opens.
    for i in 0..4 {
        let started = Instant::now();
        let err = map.insert(i + 1, i).unwrap_err();
        assert_eq!(err.code(), "TIMEOUT", "{err}");
        assert!(started.elapsed() >= TIMEOUT);
    }
    assert_eq!(map.breaker().unwrap().state(), BreakerState::Open);

    // Now operations fail fast: they do not wait for the shard.
    let mut rejected = 0;
    for i in 0..20 {
        match map.get_cloned(&i) {
            Err(e) if e.kind() == ErrorKind::CircuitOpen => {
                assert_eq!(e.map(), Some("held"));
                assert!(e.retry_after().unwrap() <= OPEN_WAIT);
                rejected += 1;
            }
            other => panic!("expected CircuitOpen, got {other:?}"),
        }
    }
    assert_eq!(map.stats().timeouts, 4, "rejected calls never waited for the lock");

    // The holder lets go; once the open wait is over, probes go through and succeed.
    release_tx.send(()).unwrap();
    assert_eq!(holder.join().unwrap().unwrap(), Some(()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut probes = 0;
    while map.breaker().unwrap().state() != BreakerState::Closed {
        assert!(Instant::now() < deadline, "the breaker did not close");
        match map.insert(100 + probes, probes) {
            Ok(_) => probes += 1,
            Err(e) if e.kind() == ErrorKind::CircuitOpen => {
                rejected += 1;
                thread::sleep(e.retry_after().unwrap().max(Duration::from_millis(1)));
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(probes, 3, "the success quota");
    assert_eq!(map.get_cloned(&0).unwrap(), Some(99));

    assert_eq!(
        seen(&events),
        vec![
            Seen::Changed(BreakerState::Closed, BreakerState::Open),
            Seen::Rejected,
            Seen::Changed(BreakerState::Open, BreakerState::HalfOpen),
            Seen::Changed(BreakerState::HalfOpen, BreakerState::Closed),
        ]
    );
    let changes: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e.kind {
            BreakerEventKind::StateChanged { cause, .. } => Some((e.seq, cause)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            (1, TransitionCause::CombinedRate(0.8)),
            (2, TransitionCause::OpenWaitElapsed),
            (3, TransitionCause::SuccessQuotaReached)
        ]
    );

    // The statistics say exactly what happened.
    let stats = map.stats();
    let insert = stats.op("insert").unwrap();
    assert_eq!((insert.ok, insert.slow, insert.failed, insert.rejected), (1 + 3, 0, 4, rejected - 20));
    let get = stats.op("get_cloned").unwrap();
    assert_eq!((get.ok, get.rejected), (1, 20));
    let update = stats.op("update").unwrap();
    assert_eq!((update.ok, update.slow), (0, 1), "the holder's own update was slow");
    assert_eq!(stats.timeouts, 4);
    assert_eq!(stats.rejected, rejected);
    assert_eq!(stats.stale_results, 1, "the holder's result came after the breaker opened");
    // Every completed call was timed (sampling 1): 4 inserts, 4 timeouts, 1 update, 1 get.
    assert_eq!(stats.latency.count, 10);
    // 5 fast calls, 4 timeouts counted at their deadline, the holder's 400 ms and more.
    assert!(stats.latency.p50 < Duration::from_millis(40), "{:?}", stats.latency);
    assert!(stats.latency.p90 >= TIMEOUT, "{:?}", stats.latency);
    assert!(stats.latency.max >= 4 * TIMEOUT, "{:?}", stats.latency);
    let breaker = stats.breaker.unwrap();
    assert_eq!((breaker.state, breaker.transitions), (BreakerState::Closed, 3));
}

#[test]
fn half_open_admits_only_its_probe_cap_under_concurrency() {
    const THREADS: usize = 8;
    let clock = TestClock::new();
    let (events, listener) = recorder();
    let map: Arc<MapWrapper<u32, u32>> = Arc::new(
        MapWrapper::builder()
            .shards(4)
            .clock(clock.clone())
            .breaker(
                BreakerConfig::new()
                    .window(SlidingWindow::count(5))
                    .minimum_calls(5)
                    .failure_rate(0.5)
                    .open_wait(OpenWait::Fixed(Duration::from_secs(5)))
                    .half_open_probes(2)
                    .success_quota(3),
            )
            .on_breaker_event(listener)
            .build()
            .unwrap(),
    );
    map.insert(1, 1).unwrap();
    // Trip it with would-deadlocks: a live guard, and a write to the same key.
    {
        let guard = map.get(&1).unwrap().unwrap();
        // insert, get and three would-deadlocks: 5 calls, 3 failed.
        for _ in 0..3 {
            assert_eq!(map.insert(1, 2).unwrap_err().code(), "WOULD_DEADLOCK");
        }
        drop(guard);
    }
    assert_eq!(map.breaker().unwrap().state(), BreakerState::Open);
    clock.advance(Duration::from_secs(5));
    assert_eq!(map.breaker().unwrap().state(), BreakerState::HalfOpen);

    // Eight threads ask at once; admitted ones stay inside `view` until released.
    let barrier = Arc::new(Barrier::new(THREADS));
    let release = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (map, barrier, release) = (Arc::clone(&map), Arc::clone(&barrier), Arc::clone(&release));
            thread::spawn(move || {
                barrier.wait();
                map.view(&1, |_| {
                    let (lock, cv) = &*release;
                    let mut go = lock.lock().unwrap();
                    while !*go {
                        go = cv.wait(go).unwrap();
                    }
                })
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while map.stats().rejected < (THREADS - 2) as u64 {
        assert!(Instant::now() < deadline, "rejections did not arrive: {:?}", map.stats());
        thread::sleep(Duration::from_millis(1));
    }
    {
        let (lock, cv) = &*release;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    let refused =
        results.iter().filter(|r| matches!(r, Err(e) if e.kind() == ErrorKind::CircuitOpen)).count();
    assert_eq!((admitted, refused), (2, THREADS - 2));
    assert_eq!(map.breaker().unwrap().state(), BreakerState::HalfOpen, "2 successes of a quota of 3");
    map.get_cloned(&1).unwrap();
    assert_eq!(map.breaker().unwrap().state(), BreakerState::Closed);
    let rejections = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                BreakerEventKind::Rejected { op: map_wrapper::Op::View, state: BreakerState::HalfOpen, .. }
            )
        })
        .count();
    assert_eq!(rejections, THREADS - 2);
}

#[test]
fn listeners_run_outside_the_breaker_lock_and_may_use_the_map() {
    // The listener reads the breaker's state (which takes the breaker's lock) and the map:
    // were it called under the lock, this would hang, so the test runs on a thread and gives
    // it a generous bound.
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let cell: Arc<std::sync::OnceLock<std::sync::Weak<MapWrapper<u32, u32>>>> = Arc::default();
        let reads = Arc::new(Mutex::new(Vec::new()));
        let (cell2, log) = (Arc::clone(&cell), Arc::clone(&reads));
        let map: Arc<MapWrapper<u32, u32>> = Arc::new(
            MapWrapper::builder()
                .breaker(
                    BreakerConfig::new().window(SlidingWindow::count(1)).minimum_calls(1).failure_rate(1.0),
                )
                .on_breaker_event(move |e| {
                    let m = cell2.get().and_then(std::sync::Weak::upgrade).expect("map alive");
                    // The breaker is open: the listener's own call is rejected, and that
                    // rejection is not fed back to the listener.
                    let len = m.len().map_err(|e| e.code());
                    log.lock().unwrap().push((e.seq, m.breaker().unwrap().state(), len));
                })
                .build()
                .unwrap(),
        );
        cell.set(Arc::downgrade(&map)).unwrap();
        map.insert(1, 1).unwrap();
        let guard = map.get(&1).unwrap().unwrap();
        assert_eq!(map.insert(1, 2).unwrap_err().code(), "WOULD_DEADLOCK");
        drop(guard);
        assert_eq!(map.breaker().unwrap().state(), BreakerState::Open);
        let reads = reads.lock().unwrap().clone();
        done_tx.send(reads).unwrap();
    });
    let reads = done_rx.recv_timeout(Duration::from_secs(30)).expect("the listener hung");
    assert_eq!(reads, vec![(1, BreakerState::Open, Err("CIRCUIT_OPEN"))]);
}

#[test]
fn open_moves_to_half_open_on_time_without_any_traffic() {
    const OPEN_WAIT: Duration = Duration::from_millis(150);
    // Each event with the name of the thread that delivered it.
    type Log = Arc<Mutex<Vec<(BreakerEvent, Option<String>)>>>;
    let seen: Log = Arc::default();
    let log = Arc::clone(&seen);
    let map: MapWrapper<u32, u32> = MapWrapper::builder()
        .breaker(
            BreakerConfig::new()
                .window(SlidingWindow::count(2))
                .minimum_calls(2)
                .failure_rate(0.5)
                .open_wait(OpenWait::Fixed(OPEN_WAIT)),
        )
        .on_breaker_event(move |e| {
            log.lock().unwrap().push((e.clone(), thread::current().name().map(str::to_owned)));
        })
        .build()
        .unwrap();
    map.insert(1, 1).unwrap();
    let guard = map.get(&1).unwrap().unwrap();
    assert!(map.insert(1, 2).is_err());
    drop(guard);
    let opened = Instant::now();

    // Nobody touches the map: the half-open event must still come.
    let deadline = opened + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no half-open event without traffic");
        thread::sleep(Duration::from_millis(5));
    }
    assert!(opened.elapsed() >= OPEN_WAIT);
    let seen = seen.lock().unwrap();
    let (open, half) = (&seen[0].0, &seen[1]);
    assert!(matches!(open.kind, BreakerEventKind::StateChanged { to: BreakerState::Open, .. }));
    assert_eq!(
        half.0.kind,
        BreakerEventKind::StateChanged {
            from: BreakerState::Open,
            to: BreakerState::HalfOpen,
            cause: TransitionCause::OpenWaitElapsed
        }
    );
    assert_eq!(half.0.at - open.at, OPEN_WAIT, "dated at the end of the wait");
    assert_eq!(half.1.as_deref(), Some("map-wrapper-breaker-timer"));
    drop(seen);
    assert_eq!(map.breaker().unwrap().state(), BreakerState::HalfOpen);
}

#[test]
fn state_changes_reach_listeners_in_order_under_concurrency() {
    const THREADS: usize = 6;
    let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let log = Arc::clone(&seqs);
    let map: Arc<MapWrapper<u64, u64>> = Arc::new(
        MapWrapper::builder()
            .breaker(BreakerConfig::new())
            .on_breaker_event(move |e| {
                if matches!(e.kind, BreakerEventKind::StateChanged { .. }) {
                    log.lock().unwrap().push(e.seq);
                }
            })
            .build()
            .unwrap(),
    );
    let storm_map = Arc::clone(&map);
    suite::within(Duration::from_secs(120), move || {
        suite::storm(THREADS, move |t| {
            for i in 0..300u64 {
                if t < 2 {
                    // Two operators flip the breaker; the others keep calling.
                    let b = storm_map.breaker().unwrap();
                    if i % 2 == 0 {
                        b.force_open();
                    } else {
                        b.close();
                    }
                } else {
                    let _ = storm_map.insert(i, i);
                }
            }
        })
    });
    let seqs = seqs.lock().unwrap();
    assert!(seqs.len() >= 2, "{seqs:?}");
    assert!(seqs.iter().zip(1..).all(|(&s, n)| s == n), "missing or out of order: {seqs:?}");
    let s = map.stats();
    assert_eq!(s.breaker.unwrap().transitions, seqs.len() as u64);
    assert_eq!(s.op("insert").unwrap().ok + s.rejected, (THREADS as u64 - 2) * 300);
}

#[test]
fn a_panicking_listener_fails_neither_the_operation_nor_later_events() {
    let calls = Arc::new(Mutex::new(0));
    let count = Arc::clone(&calls);
    let map: MapWrapper<u32, u32> = MapWrapper::builder()
        .breaker(BreakerConfig::new())
        .on_breaker_event(move |_| {
            *count.lock().unwrap() += 1;
            panic!("listener bug");
        })
        .build()
        .unwrap();
    map.breaker().unwrap().force_open();
    assert_eq!(map.insert(1, 1).unwrap_err().code(), "CIRCUIT_OPEN");
    map.breaker().unwrap().close();
    map.insert(1, 1).unwrap();
    assert_eq!(*calls.lock().unwrap(), 3, "forced open, rejected, closed: every event delivered");
}
