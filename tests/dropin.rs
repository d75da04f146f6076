//! The HashMap surface a port relies on (issue #13, map side): the size bound, the audited
//! `or_insert` idiom, keys/values/capacity, per-shard iteration, memory given back, copies,
//! equality and an auditor given to an existing map.

use std::sync::Arc;
use std::time::Duration;

use map_wrapper::audit::{Auditor, MemorySink};
use map_wrapper::{guarded_map, ErrorKind, MapError, MapWrapper};

fn bounded(max: usize) -> MapWrapper<u32, u32> {
    MapWrapper::builder().name("bounded").max_entries(max).build().unwrap()
}

#[test]
fn an_insert_past_the_bound_is_refused_changes_nothing_and_is_not_retryable() -> Result<(), MapError> {
    let map = bounded(3);
    for i in 0..3 {
        map.insert(i, i)?;
    }
    let e = map.insert(9, 9).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CapacityExceeded);
    assert_eq!(e.code(), "CAPACITY_EXCEEDED");
    assert!(!e.is_retryable() && !e.applied());
    assert!(e.to_string().contains("maximum of 3 entries"), "{e}");
    assert!(e.to_string().contains("max_entries"), "says what to change: {e}");
    assert_eq!(map.len()?, 3);
    assert_eq!(map.get_cloned(&9)?, None);
    // A present key may still change.
    assert_eq!(map.insert(1, 10)?, Some(1));
    map.entry(2).or_insert_then(0, |v| *v += 1)?;
    assert_eq!(map.alter(0, |v| v.map(|v| v + 1))?, Some(0));
    // Every way to add a key is held to the bound.
    assert_eq!(map.entry(7).or_insert(7).unwrap_err().kind(), ErrorKind::CapacityExceeded);
    assert_eq!(map.alter(7, |_| Some(7)).unwrap_err().kind(), ErrorKind::CapacityExceeded);
    let e = map.extend([(1, 1), (8, 8)]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CapacityExceeded);
    assert_eq!(map.len()?, 3);
    // Room again after a removal (and after retain / clear).
    map.remove(&0)?;
    map.insert(9, 9)?;
    assert_eq!(map.retain(|k, _| *k == 9)?, 2);
    map.extend([(20, 20), (21, 21)])?;
    assert_eq!(map.insert(22, 22).unwrap_err().kind(), ErrorKind::CapacityExceeded);
    map.clear()?;
    map.extend([(30, 30), (31, 31), (32, 32)])?;
    assert_eq!(map.max_entries(), Some(3));
    Ok(())
}

#[test]
fn max_entries_zero_is_a_build_error() {
    let e = MapWrapper::<u8, u8>::builder().max_entries(0).build().unwrap_err();
    assert_eq!(e.field(), "max_entries");
}

#[test]
fn concurrent_inserts_never_pass_the_bound() -> Result<(), MapError> {
    let map = Arc::new(MapWrapper::<u32, u32>::builder().shards(8).max_entries(500).build().unwrap());
    let handles: Vec<_> = (0..4u32)
        .map(|t| {
            let map = Arc::clone(&map);
            std::thread::spawn(move || {
                let mut refused = 0;
                for i in 0..400 {
                    match map.insert(t * 10_000 + i, i) {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::CapacityExceeded => refused += 1,
                        Err(e) => return Err(e),
                    }
                }
                Ok(refused)
            })
        })
        .collect();
    let refused: usize = handles.into_iter().map(|h| h.join().unwrap()).sum::<Result<_, _>>()?;
    assert_eq!(map.len()?, 500);
    assert_eq!(refused, 1600 - 500);
    Ok(())
}

#[test]
fn a_refusal_by_the_bound_is_audited_as_refused() -> Result<(), Box<dyn std::error::Error>> {
    let sink = MemorySink::new();
    let map: MapWrapper<String, u32> =
        MapWrapper::builder().name("quota").max_entries(1).auditor(Auditor::new(sink.clone())).build()?;
    map.insert("a".into(), 1)?;
    assert!(map.insert("b".into(), 2).is_err());
    let records = sink.records();
    assert_eq!(records.len(), 2);
    let refused = &records[1];
    assert_eq!(refused.outcome, "capacity_exceeded", "{refused:?}");
    assert_eq!(refused.key, Some(serde_json::json!({ "full": "b" })));
    assert_eq!(refused.new, None);
    assert_eq!(map.len()?, 1);
    Ok(())
}

#[test]
fn or_insert_then_is_the_counting_idiom_and_records_old_and_new() -> Result<(), Box<dyn std::error::Error>> {
    let sink = MemorySink::new();
    let words: MapWrapper<String, u32> = MapWrapper::builder().auditor(Auditor::new(sink.clone())).build()?;
    for w in ["x", "y", "x", "x"] {
        words.entry(w.to_string()).or_insert_then(0, |n| *n += 1)?;
    }
    assert_eq!(words.get_cloned("x")?, Some(3));
    assert_eq!(words.get_cloned("y")?, Some(1));
    let r = sink.records();
    assert_eq!(r.len(), 4);
    // Inserted: no old value, the new one is after `f`.
    let full = |n: u32| Some(serde_json::json!({ "full": n }));
    assert_eq!((r[0].old.clone(), r[0].new.clone()), (None, full(1)));
    assert_eq!((r[3].old.clone(), r[3].new.clone()), (full(2), full(3)));
    // The closure's result comes back.
    assert_eq!(words.entry("x".into()).or_default_then(|n| *n * 10)?, 30);
    Ok(())
}

#[test]
fn keys_values_and_for_over_a_reference() -> Result<(), MapError> {
    let map: MapWrapper<u32, u32> = (0..50).map(|i| (i, i * 2)).collect();
    let mut keys: Vec<u32> = map.keys()?.collect();
    keys.sort_unstable();
    assert_eq!(keys, (0..50).collect::<Vec<_>>());
    assert_eq!(map.values()?.sum::<u32>(), 2 * (0..50).sum::<u32>());
    let mut seen = 0;
    for entry in &map {
        let (k, v) = entry?;
        if k >= 1000 {
            continue; // inserted by this loop into a shard not copied yet
        }
        assert_eq!(v, k * 2);
        // No lock is held in the loop body: writing the map here does not deadlock.
        map.insert(k + 1000, v)?;
        seen += 1;
    }
    assert_eq!(seen, 50, "every original entry once");
    Ok(())
}

#[test]
fn per_shard_iteration_inside_a_write_of_the_map_yields_would_deadlock_once() -> Result<(), MapError> {
    let map: MapWrapper<u32, u32> = MapWrapper::builder().shards(1).build().unwrap();
    map.insert(1, 1)?;
    let items = map
        .update(&1, |_| map.iter_by_shard().map(|e| e.map_err(|e| e.kind())).collect::<Vec<_>>())?
        .expect("present");
    assert_eq!(items, vec![Err(ErrorKind::WouldDeadlock)]);
    Ok(())
}

#[test]
fn capacity_reserve_and_shrink_to_fit_give_memory_back() -> Result<(), MapError> {
    let map = MapWrapper::<u32, u32>::with_capacity(10_000);
    assert!(map.capacity()? >= 10_000);
    let map: MapWrapper<u32, u32> = (0..20_000).map(|i| (i, i)).collect();
    let full = map.capacity()?;
    map.reserve(20_000)?;
    assert!(map.capacity()? >= 40_000);
    map.retain(|k, _| k % 10 == 0)?;
    map.shrink_to_fit()?;
    assert!(map.capacity()? * 4 < full, "{} vs {full}", map.capacity()?);
    assert_eq!(map.len()?, 2_000);
    assert_eq!(map.get_cloned(&1230)?, Some(1230));
    Ok(())
}

#[test]
fn clone_keeps_settings_and_entries_but_not_the_auditor() -> Result<(), Box<dyn std::error::Error>> {
    let sink = MemorySink::new();
    let map: MapWrapper<String, u32> = MapWrapper::builder()
        .name("orders")
        .timeout(Duration::from_millis(250))
        .max_entries(2)
        .auditor(Auditor::new(sink.clone()))
        .build()?;
    map.insert("a".into(), 1)?;
    let copy = map.clone();
    assert_eq!(copy.name(), "orders");
    assert_eq!(copy.default_timeout(), Duration::from_millis(250));
    assert_eq!(copy.max_entries(), Some(2));
    assert!(copy == map);
    copy.insert("b".into(), 2)?;
    assert!(copy != map);
    // The bound counts the copied entries.
    assert_eq!(copy.insert("c".into(), 3).unwrap_err().kind(), ErrorKind::CapacityExceeded);
    assert_eq!(sink.records().len(), 1, "the copy's changes are not recorded in the original's trail");
    Ok(())
}

#[test]
fn set_auditor_records_changes_from_then_on() -> Result<(), Box<dyn std::error::Error>> {
    let mut map: MapWrapper<String, u32> = MapWrapper::builder().name("late").build()?;
    map.insert("before".into(), 1)?;
    let sink = MemorySink::new();
    map.set_auditor(Auditor::new(sink.clone()))?;
    map.insert("after".into(), 2)?;
    map.remove("before")?;
    let ops: Vec<_> = sink.records().iter().map(|r| (r.op.clone(), r.map.clone())).collect();
    assert_eq!(
        ops,
        vec![
            ("insert".to_string(), Some("late".to_string())),
            ("remove".to_string(), Some("late".to_string()))
        ]
    );
    Ok(())
}

#[test]
fn debug_of_a_guarded_struct_shows_readable_shards_and_marks_held_ones() -> Result<(), MapError> {
    #[guarded_map(shards = 2, timeout_ms = 5000)]
    #[derive(Debug)]
    struct S {
        m: std::collections::HashMap<u32, u32>,
    }
    let s = S::new();
    for i in 0..20 {
        s.m_insert(i, i)?;
    }
    // Hold the shard of key 0 for writing from inside an update, and format from there.
    let text = s.m_update(&0, |_| format!("{s:?}"))?.expect("present");
    assert!(text.contains("<locked>: 1 shard(s) held for writing"), "{text}");
    assert!(text.matches(": ").count() > 2, "the other shard's entries are shown: {text}");
    Ok(())
}

#[test]
fn timeout_ms_zero_is_accepted_and_means_never_wait_as_in_the_builder() -> Result<(), MapError> {
    #[guarded_map(timeout_ms = 0, shards = 1)]
    struct NoWait {
        m: std::collections::HashMap<u32, u32>,
    }
    let s = NoWait::new();
    let built: MapWrapper<u32, u32> = MapWrapper::builder().timeout(Duration::ZERO).build().unwrap();
    assert_eq!(s.m().default_timeout(), built.default_timeout());
    assert_eq!(s.m().default_timeout(), Duration::ZERO);
    s.m_insert(1, 1)?;
    // Held by another thread: fails at once with Timeout instead of waiting.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let s = &s;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            s.m_update(&1, |_| {
                held_tx.send(()).unwrap();
                go_rx.recv_timeout(Duration::from_secs(10)).ok();
            })
        });
        held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let e = s.m_insert(2, 2).unwrap_err();
        go_tx.send(()).unwrap();
        assert_eq!(e.kind(), ErrorKind::Timeout);
    });
    Ok(())
}

#[test]
fn a_builder_deserializes_into_a_configured_map_that_records_changes_after_loading(
) -> Result<(), Box<dyn std::error::Error>> {
    use serde::de::DeserializeSeed;
    let sink = MemorySink::new();
    let json = r#"{"a": 1, "b": 2}"#;
    let builder = MapWrapper::<String, u32>::builder()
        .name("loaded")
        .timeout(Duration::from_millis(250))
        .max_entries(3)
        .auditor(Auditor::new(sink.clone()));
    // An ambient context that is already cancelled does not affect loading (the map is owned).
    let cancel = map_wrapper::CancelToken::new();
    cancel.cancel();
    let scope = map_wrapper::OpContext::new().cancel_token(cancel).enter();
    let map = builder.deserialize(&mut serde_json::Deserializer::from_str(json))?;
    drop(scope);
    assert_eq!((map.name(), map.default_timeout()), ("loaded", Duration::from_millis(250)));
    assert_eq!(map.len()?, 2);
    assert!(sink.records().is_empty(), "loading is not a change");
    map.insert("c".into(), 3)?;
    assert_eq!(sink.records().len(), 1);
    assert_eq!(map.insert("d".into(), 4).unwrap_err().kind(), ErrorKind::CapacityExceeded);
    // More entries than the bound: a deserialization error that says so.
    let too_many = r#"{"a": 1, "b": 2, "c": 3}"#;
    let e = MapWrapper::<String, u32>::builder()
        .name("small")
        .max_entries(2)
        .deserialize(&mut serde_json::Deserializer::from_str(too_many))
        .unwrap_err();
    assert!(e.to_string().contains("at most 2 entries (max_entries)"), "{e}");
    Ok(())
}
