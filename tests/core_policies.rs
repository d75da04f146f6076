//! Deadlines, cancellation and deadlock refusal, exercised with real threads holding locks.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use map_wrapper::{CancelToken, ErrorKind, MapError, MapWrapper, Op, OpContext};

/// Generous bound for "returned soon": the machine is shared and noisy.
const SOON: Duration = Duration::from_secs(5);

fn one_shard(timeout: Duration) -> Arc<MapWrapper<u32, u32>> {
    Arc::new(MapWrapper::builder().name("policy-test").shards(1).timeout(timeout).build().unwrap())
}

/// Makes another thread hold the (only) shard until released: for reading through a `get`
/// guard, or for writing by parking inside an `update` closure.
fn hold(
    map: &Arc<MapWrapper<u32, u32>>,
    key: u32,
    write: bool,
) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let map = Arc::clone(map);
    let h = thread::spawn(move || {
        let park = || {
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
        };
        if write {
            map.update(&key, |v| {
                *v += 1;
                park();
            })
            .unwrap()
            .expect("key present");
        } else {
            let guard = map.get(&key).unwrap().expect("key present");
            park();
            drop(guard);
        }
    });
    locked_rx.recv().unwrap();
    (release_tx, h)
}

fn hold_shard(map: &Arc<MapWrapper<u32, u32>>, key: u32) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    hold(map, key, false)
}

#[test]
fn insert_times_out_when_shard_is_held_and_changes_nothing() {
    let timeout = Duration::from_millis(80);
    let map = one_shard(timeout);
    map.insert(1, 10).unwrap();
    let (release, h) = hold_shard(&map, 1);

    let started = Instant::now();
    let err = map.insert(1, 99).unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        e if e.kind() == ErrorKind::Timeout => {
            let waited = e.waited().unwrap();
            assert!(waited >= timeout, "waited {waited:?} < {timeout:?}");
            assert_eq!(e.op(), Some(Op::Insert));
            assert_eq!(e.map(), Some("policy-test"));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(elapsed >= timeout && elapsed < SOON, "{elapsed:?}");
    assert!(err.is_retryable());

    release.send(()).unwrap();
    h.join().unwrap();
    assert_eq!(map.get_cloned(&1).unwrap(), Some(10), "a timed-out insert must not change the map");
}

#[test]
fn per_call_timeout_overrides_the_map_default() {
    let map = one_shard(Duration::from_secs(30));
    map.insert(1, 10).unwrap();
    let (release, h) = hold_shard(&map, 1);
    let ctx = OpContext::new().timeout(Duration::from_millis(30));
    let started = Instant::now();
    let err = map.with(&ctx).remove(&1).unwrap_err();
    assert_eq!(err.code(), "TIMEOUT");
    assert!(started.elapsed() < SOON);
    release.send(()).unwrap();
    h.join().unwrap();
    assert_eq!(map.len().unwrap(), 1);
}

/// The map's timeout is a ceiling: a context (explicit or ambient) whose timeout is longer
/// does not let an operation wait past the map's. Another thread holds the shard for 1 s; the
/// map's timeout is 200 ms; the caller asks for 5 s. Before the fix the insert waited the full
/// second and succeeded.
#[test]
fn the_maps_timeout_caps_a_longer_context_timeout() {
    let map_timeout = Duration::from_millis(200);
    let held_for = Duration::from_secs(1);
    let long = OpContext::new().timeout(Duration::from_secs(5));
    for ambient in [false, true] {
        let map = one_shard(map_timeout);
        map.insert(9, 1).unwrap();
        let (release, h) = hold_shard(&map, 9);
        let releaser = thread::spawn(move || {
            thread::sleep(held_for);
            let _ = release.send(());
        });
        let started = Instant::now();
        let result = if ambient {
            let _scope = long.clone().enter();
            map.insert(9, 2)
        } else {
            map.with(&long).insert(9, 2)
        };
        let elapsed = started.elapsed();
        let err = result.expect_err("the map's 200 ms timeout must cap the context's 5 s");
        assert_eq!(err.code(), "TIMEOUT", "ambient: {ambient}: {err}");
        assert!(elapsed < held_for, "ambient: {ambient}: waited {elapsed:?}, as long as the holder");
        releaser.join().unwrap();
        h.join().unwrap();
        assert_eq!(map.get_cloned(&9).unwrap(), Some(1), "a timed-out insert changes nothing");
    }
}

#[test]
fn ambient_deadline_bounds_a_whole_scope() {
    let map = one_shard(Duration::from_secs(30));
    map.insert(1, 10).unwrap();
    let (release, h) = hold_shard(&map, 1);
    {
        let _scope = OpContext::new().deadline(Instant::now() + Duration::from_millis(40)).enter();
        let started = Instant::now();
        assert_eq!(map.insert(1, 2).unwrap_err().code(), "TIMEOUT");
        assert!(started.elapsed() < SOON);
        // The deadline has passed: even an uncontended read is not started.
        assert_eq!(map.len().unwrap_err().code(), "DEADLINE_EXCEEDED");
    }
    release.send(()).unwrap();
    h.join().unwrap();
    assert_eq!(map.get_cloned(&1).unwrap(), Some(10));
}

#[test]
fn waiting_insert_returns_cancelled_soon_after_cancel() {
    let map = one_shard(Duration::from_secs(60));
    map.insert(1, 10).unwrap();
    let (release, h) = hold_shard(&map, 1);

    let token = CancelToken::new();
    let waiter = {
        let map = Arc::clone(&map);
        let ctx = OpContext::new().cancel_token(token.clone());
        thread::spawn(move || {
            let called_at = Instant::now();
            let r = map.with(&ctx).insert(1, 99);
            (r, called_at, Instant::now())
        })
    };
    thread::sleep(Duration::from_millis(50)); // let it start waiting
    let cancelled_at = Instant::now();
    token.cancel();
    let (r, called_at, returned_at) = waiter.join().unwrap();
    assert!(matches!(&r, Err(e) if e.kind() == ErrorKind::Cancelled && e.op() == Some(Op::Insert)), "{r:?}");
    // Called before the cancel, on a held shard: it was waiting when the cancel came.
    assert!(called_at < cancelled_at, "the call must start before the cancel for this test to mean anything");
    assert!(returned_at >= cancelled_at);
    assert!(returned_at.duration_since(cancelled_at) < SOON);

    release.send(()).unwrap();
    h.join().unwrap();
    assert_eq!(map.get_cloned(&1).unwrap(), Some(10));
}

#[test]
fn cancelled_context_fails_before_locking() {
    let map = one_shard(Duration::from_secs(1));
    let token = CancelToken::new();
    token.cancel();
    let ctx = OpContext::new().cancel_token(token);
    assert_eq!(map.with(&ctx).insert(1, 1).unwrap_err().code(), "CANCELLED");
    assert_eq!(map.with(&ctx).get_cloned(&1).unwrap_err().code(), "CANCELLED");
    assert!(map.is_empty().unwrap());
}

#[test]
fn cancelling_a_parent_token_cancels_a_child_context() {
    let map = one_shard(Duration::from_secs(1));
    let request = OpContext::new().cancel_token(CancelToken::new());
    let step = request.child();
    request.get_cancel_token().unwrap().cancel();
    assert_eq!(map.with(&step).insert(1, 1).unwrap_err().code(), "CANCELLED");
}

// ---------------------------------------------------------------------------------------------
// Deadlock refusal: every re-entrant path returns WouldDeadlock at once.
// ---------------------------------------------------------------------------------------------

fn refused<T: std::fmt::Debug>(r: Result<T, MapError>) {
    match r {
        Err(e) if e.kind() == ErrorKind::WouldDeadlock => {}
        other => panic!("expected WouldDeadlock, got {other:?}"),
    }
}

#[test]
fn insert_while_holding_get_guard_is_refused() {
    let map = one_shard(Duration::from_secs(60));
    map.insert(1, 1).unwrap();
    let started = Instant::now();
    let guard = map.get(&1).unwrap().unwrap();
    refused(map.insert(2, 2));
    refused(map.remove(&1));
    refused(map.update(&1, |v| *v += 1));
    refused(map.alter(1, |_| None));
    refused(map.entry(1).or_insert(0));
    refused(map.clear());
    refused(map.retain(|_, _| true));
    assert!(started.elapsed() < SOON, "refusals must be immediate, not timeouts");
    // Reading the shard again is safe and allowed.
    assert_eq!(map.get_cloned(&1).unwrap(), Some(1));
    assert_eq!(map.len().unwrap(), 1);
    drop(guard);
    map.insert(2, 2).unwrap();
}

#[test]
fn bulk_writes_while_holding_any_shard_are_refused_before_changing_anything() {
    let map: MapWrapper<u32, u32> = MapWrapper::builder().shards(16).build().unwrap();
    map.extend((0..200).map(|i| (i, i))).unwrap();
    let guard = map.get(&0).unwrap().unwrap();
    refused(map.clear());
    refused(map.retain(|_, _| false));
    drop(guard);
    assert_eq!(map.len().unwrap(), 200, "nothing was cleared or filtered on any shard");
}

#[test]
fn map_call_inside_update_closure_is_refused() {
    let map = one_shard(Duration::from_secs(60));
    map.insert(1, 1).unwrap();
    let inner = map.update(&1, |v| {
        *v = 5;
        (map.get_cloned(&1), map.insert(2, 2), map.len())
    });
    let (get, ins, len) = inner.unwrap().unwrap();
    refused(get);
    refused(ins);
    refused(len);
    assert_eq!(map.get_cloned(&1).unwrap(), Some(5));
    assert_eq!(map.get_cloned(&2).unwrap(), None);
}

#[test]
fn map_calls_inside_other_closures_are_refused() {
    let map = one_shard(Duration::from_secs(60));
    map.insert(1, 1).unwrap();
    let mut inner = Vec::new();
    map.retain(|_, _| {
        inner.push(map.insert(3, 3).map(|_| ()));
        true
    })
    .unwrap();
    map.alter(1, |v| {
        inner.push(map.remove(&1).map(|_| ()));
        v.copied()
    })
    .unwrap();
    map.entry(1).and_modify(|_| inner.push(map.get_cloned(&1).map(|_| ()))).or_insert(0).unwrap();
    map.remove_if(&1, |_, _| {
        inner.push(map.contains_key(&1).map(|_| ()));
        false
    })
    .unwrap();
    map.view(&1, |_| inner.push(map.insert(1, 0).map(|_| ()))).unwrap();
    map.for_each(|_, _| inner.push(map.clear().map(|_| ()))).unwrap();
    assert_eq!(inner.len(), 6);
    for r in inner {
        refused(r);
    }
    assert_eq!(map.snapshot().unwrap(), vec![(1, 1)]);
}

#[test]
fn reads_inside_view_and_for_each_are_allowed() {
    let map = one_shard(Duration::from_secs(60));
    map.insert(1, 1).unwrap();
    let n = map.view(&1, |_| map.len()).unwrap().unwrap().unwrap();
    assert_eq!(n, 1);
    let mut seen = 0;
    map.for_each(|k, _| seen += map.get_cloned(k).unwrap().unwrap()).unwrap();
    assert_eq!(seen, 1);
}

#[test]
fn other_shards_stay_usable_while_a_guard_is_held() {
    let map: MapWrapper<u32, u32> = MapWrapper::builder().shards(64).build().unwrap();
    for i in 0..1000 {
        map.insert(i, i).unwrap();
    }
    let guard = map.get(&0).unwrap().unwrap();
    let (mut ok, mut refusals) = (0, 0);
    for i in 1..1000 {
        match map.insert(i, i + 1) {
            Ok(_) => ok += 1,
            Err(e) if e.kind() == ErrorKind::WouldDeadlock => refusals += 1,
            Err(e) => panic!("{e}"),
        }
    }
    drop(guard);
    assert!(ok > 900, "only the guarded shard is refused: ok={ok}");
    assert!(refusals > 0 && refusals < 100, "refusals={refusals}");
}

#[test]
fn a_panicking_update_closure_releases_the_lock() {
    let map = one_shard(Duration::from_millis(200));
    map.insert(1, 1).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = map.update(&1, |_| panic!("user bug"));
    }));
    assert!(r.is_err());
    // Lock released and the thread no longer counts as holding the shard.
    map.insert(1, 2).unwrap();
    assert_eq!(map.get_cloned(&1).unwrap(), Some(2));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = map.alter(1, |_| panic!("user bug"));
    }));
    assert!(r.is_err());
    assert_eq!(map.get_cloned(&1).unwrap(), Some(2), "a panicking alter changes nothing");
}

#[test]
fn map_wrapper_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn for_any<K: Send + Sync, V: Send + Sync, S: Send + Sync>() {
        assert_send_sync::<MapWrapper<K, V, S>>();
    }
    // `for_any` compiles only because the bound holds for every Send + Sync K, V, S.
    let _ = for_any::<String, Vec<u8>, ()>;
    assert_send_sync::<MapWrapper<String, Vec<u8>>>();
    assert_send_sync::<MapWrapper<u64, Arc<str>, std::hash::BuildHasherDefault<std::hash::DefaultHasher>>>();
    assert_send_sync::<OpContext>();
    assert_send_sync::<CancelToken>();
}

#[test]
fn builder_misuse_returns_errors() {
    for shards in [0, 3, 100, 1 << 20] {
        let e = MapWrapper::<u8, u8>::builder().shards(shards).build().unwrap_err();
        assert_eq!(e.code(), "INVALID_CONFIG");
        assert!(e.to_string().contains("power of two"), "{e}");
    }
    let e = MapWrapper::<u8, u8>::builder().name("").build().unwrap_err();
    assert_eq!(e.field(), "name");
    let e = MapWrapper::<u8, u8>::builder()
        .timeout(Duration::from_millis(5))
        .slow_threshold(Duration::from_millis(9))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "slow_threshold");
}

#[test]
fn reads_time_out_behind_a_held_write_guard() {
    let timeout = Duration::from_millis(60);
    let map = one_shard(timeout);
    map.insert(1, 10).unwrap();
    let (release, h) = hold(&map, 1, true);
    for r in [map.get_cloned(&1).map(|_| ()), map.contains_key(&1).map(|_| ()), map.len().map(|_| ())] {
        match r {
            Err(e) if e.kind() == ErrorKind::Timeout => assert!(e.waited().unwrap() >= timeout, "{e:?}"),
            other => panic!("expected Timeout, got {other:?}"),
        }
    }
    assert_eq!(map.insert(2, 2).unwrap_err().code(), "TIMEOUT");
    release.send(()).unwrap();
    h.join().unwrap();
    assert_eq!(
        map.snapshot().unwrap(),
        vec![(1, 11)],
        "the held update finished; the timed-out insert did nothing"
    );
}

#[test]
fn a_recursive_read_is_not_queued_behind_a_waiting_writer() {
    let map = one_shard(Duration::from_secs(10));
    map.insert(0, 0).unwrap();
    let guard = map.get(&0).unwrap().unwrap();
    let writer = {
        let map = Arc::clone(&map);
        thread::spawn(move || map.insert(0, 1))
    };
    thread::sleep(Duration::from_millis(100)); // the writer is now queued behind our guard
    let started = Instant::now();
    assert_eq!(map.get_cloned(&0).unwrap(), Some(0));
    assert_eq!(map.len().unwrap(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a plain read would wait for the writer, which waits for us"
    );
    drop(guard);
    writer.join().unwrap().unwrap();
    assert_eq!(map.get_cloned(&0).unwrap(), Some(1));
}

#[test]
fn a_bulk_operation_counts_its_deadline_from_the_call() {
    // The deadline of `extend` starts at the call: an early short wait does not make a later
    // short wait fail, and `waited` reports the wait, not the time since the first one.
    let map = one_shard(Duration::from_millis(300));
    map.insert(0, 0).unwrap();
    let (release, h) = hold_shard(&map, 0);
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        release.send(()).unwrap();
    });
    let n = map.extend([(1, 1), (2, 2)]).unwrap();
    assert_eq!(n, 2);
    releaser.join().unwrap();
    h.join().unwrap();
    // A slow iterator takes the call past its deadline; the next wait then fails at once,
    // and the error reports that wait (about nothing), not the time since the call.
    let (cmd_tx, cmd_rx) = mpsc::channel::<()>();
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let holder = {
        let map = Arc::clone(&map);
        thread::spawn(move || {
            for () in cmd_rx {
                let g = map.get(&0).unwrap().unwrap();
                ack_tx.send(()).unwrap();
                thread::sleep(Duration::from_millis(50));
                drop(g);
            }
        })
    };
    let mut step = 0;
    let pairs = std::iter::from_fn(|| {
        step += 1;
        match step {
            1 => Some((3, 3)),
            2 => {
                thread::sleep(Duration::from_millis(400));
                cmd_tx.send(()).unwrap();
                ack_rx.recv().unwrap();
                Some((4, 4))
            }
            _ => None,
        }
    });
    match map.extend(pairs) {
        Err(e) if e.kind() == ErrorKind::Timeout => {
            let (waited, timeout) = (e.waited().unwrap(), e.timeout().unwrap());
            assert_eq!(timeout, Duration::from_millis(300));
            assert!(waited < Duration::from_millis(250), "waited {waited:?} must count only the last wait");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(map.get_cloned(&3).unwrap(), Some(3), "pairs before the error stay inserted");
    assert_eq!(map.get_cloned(&4).unwrap(), None);
    drop(cmd_tx);
    holder.join().unwrap();
}

#[test]
fn extend_while_holding_a_guard_is_refused_and_keeps_the_rest() {
    let map = one_shard(Duration::from_secs(60));
    map.insert(0, 0).unwrap();
    let guard = map.get(&0).unwrap().unwrap();
    refused(map.extend([(1, 1), (2, 2)]));
    drop(guard);
    assert_eq!(map.len().unwrap(), 1);
}

#[test]
fn an_expired_deadline_is_reported_as_such() {
    let map = one_shard(Duration::from_secs(1));
    let ctx = OpContext::new().deadline(Instant::now());
    let e = map.with(&ctx).insert(1, 1).unwrap_err();
    assert!(e.kind() == ErrorKind::DeadlineExceeded && e.op() == Some(Op::Insert), "{e:?}");
    assert!(!e.is_retryable());
    assert!(map.is_empty().unwrap());
}

/// Declares `Key(u32, bool)` in a test, equal and hashed by its number. When its flag is set, its
/// `Drop` calls `len()` on the map in the static `$map` and pushes the result to `$seen`: it
/// tells whether a key is dropped under the map's lock (`len` then times out) or after it.
macro_rules! key_that_calls_the_map_when_dropped {
    ($map:ident, $seen:ident) => {
        struct Key(u32, bool);
        impl PartialEq for Key {
            fn eq(&self, o: &Self) -> bool {
                self.0 == o.0
            }
        }
        impl Eq for Key {}
        impl std::hash::Hash for Key {
            fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
                self.0.hash(h)
            }
        }
        impl Drop for Key {
            fn drop(&mut self) {
                if self.1 {
                    if let Some(m) = $map.get() {
                        $seen.lock().unwrap().push(m.len());
                    }
                }
            }
        }
    };
}

#[test]
fn a_key_removed_by_alter_is_dropped_after_unlocking() {
    use std::sync::{Mutex, OnceLock};
    static MAP: OnceLock<MapWrapper<Key, u32>> = OnceLock::new();
    static SEEN: Mutex<Vec<Result<usize, MapError>>> = Mutex::new(Vec::new());
    key_that_calls_the_map_when_dropped!(MAP, SEEN);
    let map = MAP
        .get_or_init(|| MapWrapper::builder().shards(1).timeout(Duration::from_millis(100)).build().unwrap());
    map.insert(Key(1, true), 1).unwrap();
    assert_eq!(map.alter(Key(1, false), |_| None).unwrap(), Some(1));
    let seen = SEEN.lock().unwrap();
    assert!(matches!(seen.as_slice(), [Ok(0)]), "the stored key's Drop saw {seen:?}");
}

/// `insert` of a key already stored keeps the stored key and drops the caller's: after
/// unlocking, on the fast path (no context) as on the full path (a context, explicit or
/// ambient) and in `extend`, so that the key's `Drop` may use the map.
#[test]
fn the_key_insert_does_not_store_is_dropped_after_unlocking_on_every_path() {
    use std::sync::{Mutex, OnceLock};
    static MAP: OnceLock<MapWrapper<Key, u32>> = OnceLock::new();
    static SEEN: Mutex<Vec<Result<usize, MapError>>> = Mutex::new(Vec::new());
    key_that_calls_the_map_when_dropped!(MAP, SEEN);
    let map = MAP
        .get_or_init(|| MapWrapper::builder().shards(1).timeout(Duration::from_millis(100)).build().unwrap());
    map.insert(Key(1, false), 1).unwrap();
    assert_eq!(map.insert(Key(1, true), 2).unwrap(), Some(1), "fast path");
    assert_eq!(map.with(&OpContext::new()).insert(Key(1, true), 3).unwrap(), Some(2), "full path");
    {
        let _scope = OpContext::new().actor("t").enter();
        assert_eq!(map.insert(Key(1, true), 4).unwrap(), Some(3), "full path, ambient context");
    }
    assert_eq!(map.extend([(Key(1, true), 5)]).unwrap(), 1);
    assert_eq!(map.entry(Key(1, true)).or_insert(0).unwrap(), map_wrapper::Upserted::Existing);
    assert_eq!(
        map.with(&OpContext::new()).entry(Key(1, true)).or_insert(0).unwrap(),
        map_wrapper::Upserted::Existing
    );
    let seen = SEEN.lock().unwrap();
    assert!(
        seen.len() == 6 && seen.iter().all(|r| matches!(r, Ok(1))),
        "each unstored key's Drop ran after unlocking and saw the map: {seen:?}"
    );
    assert_eq!(map.get_cloned(&Key(1, false)).unwrap(), Some(5));
}

/// Runs each operation that has a fast path once on `map` (key 1 present) and returns the
/// error codes; `ran` is set if a closure ran.
fn every_single_key_operation(map: &MapWrapper<u32, u32>, ran: &std::cell::Cell<bool>) -> Vec<&'static str> {
    let code = |r: Result<(), MapError>| r.map_or_else(|e| e.code(), |()| "OK");
    vec![
        code(map.insert(1, 99).map(drop)),
        code(map.get(&1).map(drop)),
        code(map.get_cloned(&1).map(drop)),
        code(map.view(&1, |_| ran.set(true)).map(drop)),
        code(map.contains_key(&1).map(drop)),
        code(map.remove(&1).map(drop)),
        code(map.remove_entry(&1).map(drop)),
        code(map.remove_if(&1, |_, _| !ran.replace(true)).map(drop)),
        code(map.update(&1, |v| *v = u32::from(ran.replace(true))).map(drop)),
        code(map.entry(2).or_insert_with(|| u32::from(ran.replace(true))).map(drop)),
    ]
}

/// No operation takes the fast path under a context: a cancelled token or a passed deadline,
/// given with `with` or entered as the ambient scope, fails each one before it locks or runs
/// anything, on a map with statistics and on one without.
#[test]
fn every_fast_path_operation_honours_a_cancelled_or_expired_context() {
    for stats in [true, false] {
        let map: MapWrapper<u32, u32> = MapWrapper::builder().shards(1).stats(stats).build().unwrap();
        for i in 0..10 {
            map.insert(1, i).unwrap(); // warm: past the thread's first, sampled, operation
        }
        let token = CancelToken::new();
        token.cancel();
        let contexts = [
            (OpContext::new().cancel_token(token), "CANCELLED"),
            (OpContext::new().deadline(Instant::now()), "DEADLINE_EXCEEDED"),
        ];
        for (ctx, expected) in &contexts {
            let ran = std::cell::Cell::new(false);
            let scoped = {
                let _scope = ctx.clone().enter();
                every_single_key_operation(&map, &ran)
            };
            assert_eq!(scoped, vec![*expected; 10], "ambient {expected}, stats {stats}");
            let with = map.with(ctx);
            let code = |r: Result<(), MapError>| r.map_or_else(|e| e.code(), |()| "OK");
            let explicit = vec![
                code(with.insert(1, 99).map(drop)),
                code(with.get(&1).map(drop)),
                code(with.get_cloned(&1).map(drop)),
                code(with.view(&1, |_| ran.set(true)).map(drop)),
                code(with.contains_key(&1).map(drop)),
                code(with.remove(&1).map(drop)),
                code(with.remove_entry(&1).map(drop)),
                code(with.remove_if(&1, |_, _| !ran.replace(true)).map(drop)),
                code(with.update(&1, |v| *v = u32::from(ran.replace(true))).map(drop)),
                code(with.entry(2).or_insert_with(|| u32::from(ran.replace(true))).map(drop)),
            ];
            assert_eq!(explicit, vec![*expected; 10], "explicit {expected}, stats {stats}");
            assert!(!ran.get(), "no closure ran");
        }
        assert_eq!(map.snapshot().unwrap(), vec![(1, 9)]);
        // Without a context the same calls succeed (and the key is removed by the first remove).
        let ran = std::cell::Cell::new(false);
        let plain = every_single_key_operation(&map, &ran);
        assert_eq!(plain, vec!["OK"; 10]);
    }
}

/// `remove`, `remove_entry` and `remove_if` drop the stored key they take out (and hand the
/// value back) after unlocking, on the fast path as on the full one: the key's `Drop` may use
/// the map.
#[test]
fn a_removed_key_is_dropped_after_unlocking_on_every_path() {
    use std::sync::{Mutex, OnceLock};
    static MAP: OnceLock<MapWrapper<Key, u32>> = OnceLock::new();
    static SEEN: Mutex<Vec<Result<usize, MapError>>> = Mutex::new(Vec::new());
    key_that_calls_the_map_when_dropped!(MAP, SEEN);
    let map = MAP
        .get_or_init(|| MapWrapper::builder().shards(1).timeout(Duration::from_millis(100)).build().unwrap());
    let ctx = OpContext::new();
    let probe = Key(1, false);
    for full in [false, true] {
        // Calls through `with` take the full path; the plain calls, the fast one.
        let with = map.with(&ctx);
        let put = || assert_eq!(map.insert(Key(1, true), 1).unwrap(), None);
        put();
        assert_eq!(if full { with.remove(&probe) } else { map.remove(&probe) }.unwrap(), Some(1));
        put();
        let (k, v) =
            if full { with.remove_entry(&probe) } else { map.remove_entry(&probe) }.unwrap().unwrap();
        assert_eq!(v, 1);
        drop(k);
        put();
        let r = if full { with.remove_if(&probe, |_, _| true) } else { map.remove_if(&probe, |_, _| true) };
        assert_eq!(r.unwrap(), Some(1));
    }
    let seen = SEEN.lock().unwrap();
    assert!(
        seen.len() == 6 && seen.iter().all(|r| matches!(r, Ok(0))),
        "each removed key's Drop ran after unlocking and saw the map: {seen:?}"
    );
}
