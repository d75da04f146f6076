//! The async operations: they park the task (not the thread) in the shard's queue, honour
//! deadline and cancel token while waiting, can be dropped at any point without leaking a lock
//! or splitting a change from its audit record, and agree with sync threads on one map.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use map_wrapper::audit::{AuditRecord, Auditor, MemorySink};
use map_wrapper::{CancelToken, ErrorKind, MapWrapper, OpContext};
use suite::{scale, within};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap()
}

/// Two keys of `map` in the same shard.
fn same_shard_keys(map: &MapWrapper<u64, u64>, n: usize) -> Vec<u64> {
    // Shard of a key, seen from outside: a key whose shard is write-held blocks a try.
    let shards = map.shard_count() as u64;
    let mut keys = vec![0u64];
    let first = map.get(&0).unwrap();
    drop(first);
    // Find keys that conflict with key 0: hold a guard on 0, see which try_* writes time out.
    let probe = OpContext::new().timeout(Duration::from_millis(1));
    map.insert(0, 0).unwrap();
    let guard = map.get(&0).unwrap().unwrap();
    let other = std::thread::scope(|s| {
        s.spawn(|| {
            let mut found = Vec::new();
            for k in 1..(shards * 64) {
                if found.len() + 1 == n {
                    break;
                }
                if map.with(&probe).insert(k, 0).is_err() {
                    found.push(k);
                } else {
                    map.remove(&k).unwrap();
                }
            }
            found
        })
        .join()
        .unwrap()
    });
    drop(guard);
    map.remove(&0).unwrap();
    keys.extend(other);
    assert_eq!(keys.len(), n, "found keys sharing a shard");
    keys
}

// ---- responsiveness and per-task deadlock refusal ----------------------------------------------

#[test]
fn a_task_waiting_for_a_shard_leaves_the_thread_to_other_tasks_and_waits_for_another_tasks_guard() {
    // Current-thread runtime: task A holds a guard on a shard across awaits; task B's insert
    // into that shard waits (not WOULD_DEADLOCK: the holder is another task); task C keeps
    // running while B waits. No timing: the order is forced by channels.
    let map: Arc<MapWrapper<u64, u64>> =
        Arc::new(MapWrapper::builder().timeout(Duration::from_secs(30)).build().unwrap());
    let keys = same_shard_keys(&map, 2);
    let (k_held, k_wait) = (keys[0], keys[1]);
    map.insert(k_held, 1).unwrap();
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let m = map.clone();
        let a = tokio::task::spawn_local(async move {
            let guard = m.get(&k_held).unwrap().unwrap();
            held_tx.send(()).unwrap();
            release_rx.await.unwrap();
            drop(guard);
        });
        held_rx.await.unwrap();
        let b_done = Arc::new(AtomicBool::new(false));
        let (m, done) = (map.clone(), b_done.clone());
        let b = tokio::task::spawn_local(async move {
            let r = m.insert_async(k_wait, 7).await;
            done.store(true, Ordering::SeqCst);
            r
        });
        // C: 100 steps, each yielding to the scheduler; B is polled in between and stays pending.
        let c_steps = Arc::new(AtomicUsize::new(0));
        let steps = c_steps.clone();
        let c = tokio::task::spawn_local(async move {
            for _ in 0..100 {
                steps.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        c.await.unwrap();
        assert_eq!(c_steps.load(Ordering::SeqCst), 100, "the third task ran to the end");
        assert!(!b_done.load(Ordering::SeqCst), "the insert waits while the guard lives");
        assert_eq!(
            map.with(&OpContext::new().timeout(Duration::from_millis(1))).get_cloned(&k_wait).unwrap(),
            None
        );
        release_tx.send(()).unwrap();
        a.await.unwrap();
        assert_eq!(b.await.unwrap().unwrap(), None, "the insert went through once the guard was dropped");
    });
    assert_eq!(map.get_cloned(&k_wait).unwrap(), Some(7));
}

/// Polls `fut` once with a waker that does nothing.
fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(&noop_waker()))
}

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fn noop_waker() -> Waker {
    Waker::from(Arc::new(Noop))
}

#[test]
fn an_async_call_from_inside_a_closure_on_its_shard_is_refused_naming_the_closure() {
    let map: MapWrapper<u64, u64> = MapWrapper::new();
    map.insert(1, 1).unwrap();
    let inner = map
        .update(&1, |_| {
            let mut fut = std::pin::pin!(map.insert_async(1, 2));
            poll_once(fut.as_mut())
        })
        .unwrap()
        .unwrap();
    let Poll::Ready(Err(e)) = inner else { panic!("expected an immediate refusal, got {inner:?}") };
    assert_eq!(e.kind(), ErrorKind::WouldDeadlock);
    assert!(e.to_string().contains("from inside a closure"), "{e}");
    assert_eq!(map.get_cloned(&1).unwrap(), Some(1));
    // The whole-map walk too.
    let inner = map
        .update(&1, |_| {
            let mut fut = std::pin::pin!(map.clear_async());
            poll_once(fut.as_mut())
        })
        .unwrap()
        .unwrap();
    assert!(matches!(inner, Poll::Ready(Err(ref e)) if e.kind() == ErrorKind::WouldDeadlock), "{inner:?}");
    assert_eq!(map.len().unwrap(), 1);
}

// ---- deadline and cancel while waiting ----------------------------------------------------------

/// Holds a read guard on `key`'s shard on a helper thread until the returned sender is dropped
/// or sent to.
fn hold_shard(map: &Arc<MapWrapper<u64, u64>>, key: u64) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let m = map.clone();
    std::thread::spawn(move || {
        let g = m.get(&key).unwrap().expect("the key to hold is present");
        ready_tx.send(()).unwrap();
        let _ = rx.recv();
        drop(g);
    });
    ready_rx.recv().unwrap();
    tx
}

#[test]
fn waiting_tasks_end_at_their_deadline_or_on_cancel_and_change_nothing() {
    let map: Arc<MapWrapper<u64, u64>> =
        Arc::new(MapWrapper::builder().timeout(Duration::from_secs(30)).build().unwrap());
    map.insert(5, 50).unwrap();
    let release = hold_shard(&map, 5);
    let rt = current_thread();
    rt.block_on(async {
        // Deadline: 40 ms.
        let ctx = OpContext::new().timeout(Duration::from_millis(40));
        let t0 = Instant::now();
        let e = map.with(&ctx).insert_async(5, 51).await.unwrap_err();
        let took = t0.elapsed();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(took >= Duration::from_millis(40), "not before the deadline: {took:?}");
        eprintln!(
            "timeout: deadline 40 ms, returned after {took:?} (slack {:?})",
            took - Duration::from_millis(40)
        );
        // Cancel: a token cancelled by another task while this one waits.
        let token = CancelToken::new();
        let canceller = token.clone();
        let ctx = OpContext::new().cancel_token(token);
        let cancel_at = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let at = Instant::now();
            canceller.cancel();
            at
        });
        let e = map.with(&ctx).update_async(&5, |v| *v = 0).await.unwrap_err();
        let ended = Instant::now();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        let at = cancel_at.await.unwrap();
        eprintln!("cancel: returned {:?} after the token was cancelled", ended.duration_since(at));
        // Under a scope: the task's ambient deadline applies to the async op.
        let e = OpContext::new()
            .timeout(Duration::from_millis(10))
            .scope(async { map.remove_async(&5).await })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
    });
    drop(release);
    assert_eq!(map.get_cloned(&5).unwrap(), Some(50), "value unchanged");
}

#[test]
fn tokio_abort_and_timeout_cancel_a_waiting_insert() {
    let map: Arc<MapWrapper<u64, u64>> =
        Arc::new(MapWrapper::builder().timeout(Duration::from_secs(30)).build().unwrap());
    map.insert(9, 0).unwrap();
    let release = hold_shard(&map, 9);
    let rt = multi_thread(2);
    rt.block_on(async {
        let m = map.clone();
        let task = tokio::spawn(async move { m.insert_async(9, 1).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_millis(20), map.insert_async(9, 2)).await;
        assert!(r.is_err(), "timed out");
        assert!(t0.elapsed() < Duration::from_secs(5), "tokio's timeout ended the wait: {:?}", t0.elapsed());
    });
    drop(release);
    // Neither write landed, and no lock was left behind: a 100 ms sync insert goes through.
    assert_eq!(map.get_cloned(&9).unwrap(), Some(0));
    let quick = OpContext::new().timeout(Duration::from_millis(100));
    assert_eq!(map.with(&quick).insert(9, 3).unwrap(), Some(0));
}

// ---- per-task context -----------------------------------------------------------------------

#[test]
fn each_task_records_under_its_own_scope_on_a_shared_thread() {
    let sink = MemorySink::new();
    let map: Arc<MapWrapper<u64, u64>> =
        Arc::new(MapWrapper::builder().auditor(Auditor::new(sink.clone())).build().unwrap());
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for (i, actor) in ["alice", "bob"].into_iter().enumerate() {
            let m = map.clone();
            tasks.push(tokio::task::spawn_local(OpContext::new().actor(actor).scope(async move {
                for j in 0..10u64 {
                    m.insert_async(i as u64 * 100 + j, j).await.unwrap();
                    tokio::task::yield_now().await; // the other task runs here
                }
            })));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let records = sink.records();
    let inserts: Vec<&AuditRecord> = records.iter().filter(|r| r.op == "insert").collect();
    assert_eq!(inserts.len(), 20);
    for r in inserts {
        let key = full_u64(&r.key).unwrap();
        let expected = if key < 100 { "alice" } else { "bob" };
        assert_eq!(r.actor, expected, "key {key}");
    }
    assert!(OpContext::current().is_none());
}

// ---- cancellation safety ----------------------------------------------------------------------

/// A `u64` key or value as a record writes it under the `Full` policy (`{"full": n}`).
fn full_u64(v: &Option<serde_json::Value>) -> Option<u64> {
    v.as_ref()?.get("full")?.as_u64()
}

/// The map's content as its audit records say it should be: replays every `ok` record.
fn replay(records: &[AuditRecord]) -> HashMap<u64, u64> {
    let mut state = HashMap::new();
    for r in records.iter().filter(|r| r.outcome == "ok" && r.map.is_some()) {
        let Some(key) = full_u64(&r.key) else { continue };
        match full_u64(&r.new) {
            Some(v) => state.insert(key, v),
            None => state.remove(&key),
        };
    }
    state
}

/// A tiny deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type OpFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

#[test]
fn dropping_async_ops_at_every_pending_leaks_no_lock_and_splits_no_change_from_its_record() {
    // Each round: a guard on this thread holds a key's shard (async ops wait for guards: they
    // may be another task's), an async mutation is polled until Pending, and is then either
    // dropped at its k-th Pending, dropped right after the guard is released (the lock was
    // handed to it, unseen), or run to the end. After each round the map must equal the replay
    // of its audit records, and the key's shard must be free.
    let rounds = scale(3_000, 100_000);
    let sink = MemorySink::new();
    let map: MapWrapper<u64, u64> = MapWrapper::builder()
        .shards(4)
        .timeout(Duration::from_secs(30))
        .auditor(Auditor::new(sink.clone()))
        .build()
        .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut pendings, mut dropped_waiting, mut dropped_granted, mut completed) = (0u64, 0u64, 0u64, 0u64);
    let mut max_pendings = 0;
    let no_wait = OpContext::new().timeout(Duration::ZERO);
    for round in 0..rounds {
        let key = rng.below(16);
        let v = rng.below(1000);
        let other = rng.below(16);
        map.insert(key, round as u64).unwrap();
        map.insert(other, round as u64 + 1).unwrap();
        // Guards on both keys' shards (maybe the same one): a walk waits at each in turn.
        let mut guards: Vec<_> = [key, other].iter().map(|k| map.get(k).unwrap().unwrap()).collect();
        let mut fut: OpFuture<'_> = match rng.below(8) {
            0 => Box::pin(async { drop(map.insert_async(key, v).await) }),
            1 => Box::pin(async { drop(map.remove_async(&key).await) }),
            2 => Box::pin(async { drop(map.update_async(&key, |x| *x = v).await) }),
            3 => Box::pin(async { drop(map.alter_async(key, |_| Some(v)).await) }),
            4 => Box::pin(async { drop(map.entry(key).and_modify(|x| *x += 1).or_insert_async(v).await) }),
            5 => Box::pin(async { drop(map.extend_async([(other, v), (key, v)]).await) }),
            6 => Box::pin(async { drop(map.retain_async(|_, x| *x % 2 == 0).await) }),
            _ => Box::pin(async { drop(map.remove_if_async(&key, |_, x| *x % 2 == 1).await) }),
        };
        // 0: dropped at its `stop_at`-th Pending, queued; 1: dropped right after the last guard
        // goes (the unlock hands the shard to it, unseen); 2: run to the end.
        let plan = rng.below(3);
        let stop_at = 1 + rng.below(2);
        let mut seen = 0;
        loop {
            match poll_once(fut.as_mut()) {
                Poll::Ready(()) => {
                    completed += 1;
                    break;
                }
                Poll::Pending => {
                    pendings += 1;
                    seen += 1;
                    if plan == 0 && seen >= stop_at {
                        dropped_waiting += 1;
                        break;
                    }
                    // The oldest guard goes; the future may pend again at the next shard.
                    if !guards.is_empty() {
                        drop(guards.remove(0));
                    }
                    if plan == 1 && guards.is_empty() {
                        dropped_granted += 1;
                        break;
                    }
                }
            }
        }
        max_pendings = max_pendings.max(seen);
        drop(fut);
        drop(guards);
        // No lock left behind: the shards of both keys take a write at once (a no-op
        // remove_if locks and changes nothing).
        for k in [key, other] {
            map.with(&no_wait).remove_if(&k, |_, _| false).unwrap();
        }
        if round % (rounds / 60).max(50) == 0 || round + 1 == rounds {
            let expect = replay(&sink.records());
            let got: HashMap<u64, u64> = map.snapshot().unwrap().into_iter().collect();
            assert_eq!(got, expect, "round {round}: the map and the replay of its records differ");
        }
    }
    // Every shard free: a zero-wait write on each key succeeds.
    for k in 0..16 {
        map.with(&no_wait).insert(k, 0).unwrap();
    }
    let expect = replay(&sink.records());
    let got: HashMap<u64, u64> = map.snapshot().unwrap().into_iter().collect();
    assert_eq!(got, expect);
    eprintln!(
        "{rounds} rounds: {pendings} Pending polls; dropped while queued {dropped_waiting}, dropped after the \
         hand-off {dropped_granted}, completed {completed}; at most {max_pendings} Pending in one op"
    );
    assert!(dropped_waiting > 0 && dropped_granted > 0 && completed > 0 && max_pendings >= 2);
}

// ---- mixed storm ------------------------------------------------------------------------------

#[test]
fn sync_threads_and_async_tasks_agree_with_a_model_in_a_storm() {
    within(Duration::from_secs(120), || {
        let map: Arc<MapWrapper<u64, u64>> =
            Arc::new(MapWrapper::builder().shards(4).timeout(Duration::from_secs(30)).build().unwrap());
        let ops = scale(2_000, 50_000) as u64;
        const HOT: u64 = 1_000_000;
        map.insert(HOT, 0).unwrap();
        // Each worker owns keys [id * 1000, id * 1000 + 1000) and checks every result against
        // its own model; all increment the hot key.
        fn step(rng: &mut Rng, id: u64) -> (u64, u64, u64) {
            (id * 1000 + rng.below(64), rng.below(4), rng.below(100))
        }
        let mut threads = Vec::new();
        for id in 0..2u64 {
            let m = map.clone();
            threads.push(std::thread::spawn(move || {
                let mut rng = Rng(id + 1);
                let mut model = HashMap::new();
                for _ in 0..ops {
                    let (k, what, v) = step(&mut rng, id);
                    match what {
                        0 => assert_eq!(m.insert(k, v).unwrap(), model.insert(k, v)),
                        1 => assert_eq!(m.remove(&k).unwrap(), model.remove(&k)),
                        2 => assert_eq!(m.get_cloned(&k).unwrap(), model.get(&k).copied()),
                        _ => {
                            m.update(&HOT, |h| *h += 1).unwrap();
                        }
                    }
                }
                model
            }));
        }
        let rt = multi_thread(2);
        let models = rt.block_on(async {
            let mut tasks = Vec::new();
            for id in 2..8u64 {
                let m = map.clone();
                tasks.push(tokio::spawn(async move {
                    let mut rng = Rng(id + 1);
                    let mut model = HashMap::new();
                    for _ in 0..ops {
                        let (k, what, v) = step(&mut rng, id);
                        match what {
                            0 => assert_eq!(m.insert_async(k, v).await.unwrap(), model.insert(k, v)),
                            1 => assert_eq!(m.remove_async(&k).await.unwrap(), model.remove(&k)),
                            2 => assert_eq!(m.get_cloned_async(&k).await.unwrap(), model.get(&k).copied()),
                            _ => {
                                m.update_async(&HOT, |h| *h += 1).await.unwrap();
                            }
                        }
                    }
                    model
                }));
            }
            let mut models = Vec::new();
            for t in tasks {
                models.push(t.await.unwrap());
            }
            models
        });
        let mut expect: HashMap<u64, u64> = HashMap::new();
        for t in threads {
            expect.extend(t.join().unwrap());
        }
        for m in models {
            expect.extend(m);
        }
        let hot = map.remove(&HOT).unwrap().unwrap();
        let got: HashMap<u64, u64> = map.snapshot().unwrap().into_iter().collect();
        assert_eq!(got, expect);
        // Each worker's hot increments: replay its generator to count them.
        let mut increments = 0;
        for id in 0..8u64 {
            let mut rng = Rng(id + 1);
            for _ in 0..ops {
                if step(&mut rng, id).1 == 3 {
                    increments += 1;
                }
            }
        }
        assert_eq!(hot, increments);
    });
}

// ---- durability --------------------------------------------------------------------------------

/// A sink whose durability waits block until the gate is opened.
struct GatedSink {
    inner: MemorySink,
    open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl map_wrapper::audit::AuditSink for GatedSink {
    fn append(
        &self,
        event: map_wrapper::audit::AuditEvent,
    ) -> Result<map_wrapper::audit::Ticket, map_wrapper::audit::SinkError> {
        self.inner.append(event)
    }

    fn wait(
        &self,
        _: &map_wrapper::audit::Ticket,
        _: map_wrapper::audit::Durability,
    ) -> Result<(), map_wrapper::audit::SinkError> {
        let (lock, cv) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        Ok(())
    }
}

#[test]
fn a_synced_insert_awaits_its_group_commit_without_blocking_its_thread() {
    // Current-thread runtime: the insert's durability wait is blocked until another task of
    // the same thread opens the gate. Blocking the thread would hang (caught by `within`).
    within(Duration::from_secs(60), || {
        let open = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let sink = GatedSink { inner: MemorySink::new(), open: open.clone() };
        let auditor = Auditor::new(sink).durability(map_wrapper::audit::Durability::Synced);
        let map: Arc<MapWrapper<u64, u64>> =
            Arc::new(MapWrapper::builder().auditor(auditor).build().unwrap());
        let rt = current_thread();
        rt.block_on(async {
            let m = map.clone();
            let insert = tokio::spawn(async move { m.insert_async(1, 10).await });
            tokio::task::yield_now().await; // the insert runs, applies, and awaits durability
            assert!(!insert.is_finished(), "the insert waits for its record to be synced");
            assert_eq!(map.get_cloned(&1).unwrap(), Some(10), "applied before the wait");
            let (lock, cv) = &*open;
            *lock.lock().unwrap() = true;
            cv.notify_all();
            assert_eq!(insert.await.unwrap().unwrap(), None);
        });
    });
}

#[test]
fn every_async_operation_is_a_send_future_for_send_and_sync_keys_and_values() {
    // tokio::spawn on a multi-thread runtime needs Send futures: checked at compile time.
    fn send<T: Send>(t: T) -> T {
        t
    }
    let map: MapWrapper<String, Vec<u8>> = MapWrapper::new();
    let ctx = OpContext::new();
    let rt = current_thread();
    rt.block_on(async {
        send(map.insert_async("k".into(), vec![1])).await.unwrap();
        send(map.get_cloned_async("k")).await.unwrap();
        send(map.contains_key_async("k")).await.unwrap();
        send(map.view_async("k", |v| v.len())).await.unwrap();
        send(map.update_async("k", |v| v.push(2))).await.unwrap();
        send(map.alter_async("k".into(), |v| v.cloned())).await.unwrap();
        send(map.entry("e".into()).and_modify(|v| v.push(0)).or_insert_async(vec![])).await.unwrap();
        send(map.entry("d".into()).or_default_async()).await.unwrap();
        send(map.remove_if_async("e", |_, _| true)).await.unwrap();
        send(map.remove_entry_async("d")).await.unwrap();
        send(map.extend_async(vec![("x".to_string(), vec![])])).await.unwrap();
        send(map.retain_async(|k, _| k != "x")).await.unwrap();
        send(map.with(&ctx).remove_async("k")).await.unwrap();
        assert_eq!(send(map.len_async()).await.unwrap(), 0);
        assert!(send(map.is_empty_async()).await.unwrap());
        send(map.clear_async()).await.unwrap();
        send(OpContext::new().actor("a").scope(map.insert_async("s".into(), vec![]))).await.unwrap();
    });
    assert_eq!(map.len().unwrap(), 1);
}

#[test]
fn async_mutations_obey_the_maps_size_bound_like_the_sync_ones() {
    current_thread().block_on(async {
        let map: MapWrapper<u64, u64> = MapWrapper::builder().name("bounded").max_entries(2).build().unwrap();
        map.insert_async(1, 1).await.unwrap();
        map.entry(2).or_insert_async(2).await.unwrap();
        let e = map.insert_async(3, 3).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CapacityExceeded, "{e}");
        assert!(!e.is_retryable());
        assert_eq!(map.alter_async(4, |_| Some(4)).await.unwrap_err().kind(), ErrorKind::CapacityExceeded);
        assert_eq!(map.extend_async([(5, 5)]).await.unwrap_err().kind(), ErrorKind::CapacityExceeded);
        assert_eq!(map.len().unwrap(), 2, "refused changes changed nothing");
        // Replacing a stored key is allowed; a removal frees a slot.
        map.insert_async(1, 10).await.unwrap();
        map.remove_async(&2).await.unwrap();
        map.insert_async(3, 3).await.unwrap();
        assert_eq!(map.clear_async().await.unwrap(), 2);
        map.insert_async(6, 6).await.unwrap();
        map.insert_async(7, 7).await.unwrap();
        assert_eq!(map.len().unwrap(), 2);
    });
}
