//! What a user of `#[guarded_map]` relies on at run time: the generated struct's maps are
//! named and configured as declared, its accessors are the map's operations, it can be shared
//! by many threads, its accessors give up after the struct's timeout, and with one auditor
//! its trail names every map `"Struct.field"` and keeps redacted values out.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use map_wrapper::audit::verify::{self, Verdict};
use map_wrapper::audit::{Auditor, MemorySink};
use map_wrapper::{guarded_map, GuardedMap, MapError, MapWrapper, OpContext};
use suite::storm;

#[guarded_map(timeout_ms = 120, audit = "ledger")]
struct Ledger {
    /// Balance per account, in cents.
    balances: HashMap<String, i64>,
    #[guard(redact)]
    cards: HashMap<u64, String>,
    #[guard(name = "ledger.notes_v2", timeout_ms = 300)]
    notes: std::collections::HashMap<u32, String>,
    #[guard(skip)]
    raw: HashMap<u8, u8>,
    label: String,
}

#[guarded_map(timeout_ms = 2, slow_ms = 1)]
struct Tight {
    m: HashMap<u8, u8>,
}

#[guarded_map]
struct Plain {
    entries: HashMap<u32, u32>,
}

// The smallest timeout, with the runtime's default slow threshold for it (half of it).
#[guarded_map(shards = 65536, timeout_ms = 1)]
struct AtTheLimits {
    #[guard(
        name = "n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n123456789n12345"
    )]
    m: HashMap<u8, u8>,
}

#[derive(GuardedMap)]
#[guard(timeout_ms = 80)]
struct Derived<K: std::hash::Hash + Eq, V> {
    items: MapWrapper<K, V>,
    count: usize,
}

#[test]
fn maps_are_named_struct_dot_field_unless_renamed() {
    let ledger = Ledger::new();
    assert_eq!(ledger.balances().name(), "ledger.balances");
    assert_eq!(ledger.cards().name(), "ledger.cards");
    assert_eq!(ledger.notes().name(), "ledger.notes_v2");
    assert_eq!(Plain::new().entries().name(), "Plain.entries");
    assert_eq!(Derived::<u8, u8>::new().items().name(), "Derived.items");
}

#[test]
fn maps_get_the_struct_timeout_or_their_own() {
    let ledger = Ledger::new();
    assert_eq!(ledger.balances().default_timeout(), Duration::from_millis(120));
    assert_eq!(ledger.cards().default_timeout(), Duration::from_millis(120));
    assert_eq!(ledger.notes().default_timeout(), Duration::from_millis(300));
    assert_eq!(Derived::<u8, u8>::new().items().default_timeout(), Duration::from_millis(80));
}

/// The macro repeats the runtime's defaults and limits (a proc-macro cannot read them); this
/// pins the two together.
#[test]
fn defaults_and_limits_are_the_runtime_ones() {
    let plain = Plain::default();
    assert_eq!(plain.entries().default_timeout(), map_wrapper::builder::DEFAULT_TIMEOUT);
    assert_eq!(plain.entries().shard_count(), map_wrapper::builder::default_shards());
    let limits = AtTheLimits::new();
    assert_eq!(limits.m().shard_count(), map_wrapper::builder::MAX_SHARDS);
    assert_eq!(limits.m().name().len(), map_wrapper::builder::MAX_NAME_LEN);
    assert_eq!(limits.m().default_timeout(), Duration::from_millis(1));
    assert_eq!(Tight::new().m().default_timeout(), Duration::from_millis(2));
}

#[test]
fn skipped_and_other_fields_are_left_as_declared() {
    let mut ledger = Ledger::default();
    let raw: &mut HashMap<u8, u8> = &mut ledger.raw;
    raw.insert(1, 2);
    assert_eq!(ledger.raw.get(&1), Some(&2));
    assert_eq!(ledger.label, String::new());
    let derived = Derived::<String, u8>::default();
    assert_eq!(derived.count, 0);
}

#[test]
fn accessors_are_the_map_operations() -> Result<(), MapError> {
    let ledger = Ledger::new();
    assert_eq!(ledger.balances_insert("alice".into(), 100)?, None);
    assert_eq!(ledger.balances_insert("alice".into(), 120)?, Some(100));
    assert_eq!(ledger.balances_get_cloned("alice")?, Some(120));
    assert_eq!(*ledger.balances_get("alice")?.expect("present"), 120);
    assert!(ledger.balances_contains_key("alice")?);
    assert_eq!(ledger.balances_update("alice", |b| *b -= 20)?, Some(()));
    assert_eq!(ledger.balances_update("nobody", |b| *b -= 20)?, None);
    assert_eq!(ledger.balances_len()?, 1);
    assert_eq!(ledger.balances_remove("alice")?, Some(100));
    assert_eq!(ledger.balances_len()?, 0);
    assert!(!ledger.balances_contains_key("alice")?);
    // The accessor and the field are the same map.
    ledger.balances().insert("bob".into(), 5)?;
    assert_eq!(ledger.balances_get_cloned("bob")?, Some(5));
    Ok(())
}

#[test]
fn hashmap_shaped_accessors_are_the_map_operations_too() -> Result<(), MapError> {
    let ledger = Ledger::new();
    assert!(ledger.balances_is_empty()?);
    assert_eq!(
        ledger.balances_extend([("a".to_string(), 1), ("b".to_string(), 2), ("c".to_string(), 3)])?,
        3
    );
    assert!(!ledger.balances_is_empty()?);
    // HashMap's `*m.entry(k).or_insert(0) += 1`.
    ledger.balances_entry("a".into()).or_insert_then(0, |n| *n += 10)?;
    ledger.balances_entry("new".into()).or_insert_then(0, |n| *n += 10)?;
    assert_eq!(ledger.balances_get_cloned("a")?, Some(11));
    assert_eq!(ledger.balances_get_cloned("new")?, Some(10));
    let mut keys: Vec<String> = ledger.balances_keys()?.collect();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c", "new"]);
    assert_eq!(ledger.balances_values()?.sum::<i64>(), 11 + 2 + 3 + 10);
    let mut pairs: Vec<(String, i64)> = ledger.balances_iter()?.collect();
    pairs.sort();
    assert_eq!(pairs, [("a".into(), 11), ("b".into(), 2), ("c".into(), 3), ("new".into(), 10)]);
    assert_eq!(ledger.balances_retain(|_, v| *v >= 10)?, 2);
    assert_eq!(ledger.balances_len()?, 2);
    assert_eq!(ledger.balances_clear()?, 2);
    assert!(ledger.balances_is_empty()?);
    // The other maps of the struct are untouched.
    ledger.cards_insert(1, "tok".into())?;
    ledger.balances_clear()?;
    assert_eq!(ledger.cards_len()?, 1);
    Ok(())
}

#[derive(GuardedMap)]
#[guard(max_entries = 3, auto_shrink)]
struct DerivedBounded {
    #[guard(max_entries = 1)]
    one: MapWrapper<u8, u8>,
    three: MapWrapper<u8, u8>,
}

#[test]
fn the_derive_takes_max_entries_and_generates_the_same_accessors() -> Result<(), MapError> {
    let d = DerivedBounded::new();
    assert_eq!(d.one().max_entries(), Some(1), "the field's bound wins");
    assert_eq!(d.three().max_entries(), Some(3));
    d.one_entry(1).or_insert_then(0, |n| *n += 1)?;
    assert_eq!(d.one_insert(2, 2).unwrap_err().kind(), map_wrapper::ErrorKind::CapacityExceeded);
    assert_eq!(d.three_extend([(1, 1), (2, 2), (3, 3)])?, 3);
    assert_eq!(d.three_extend([(4, 4)]).unwrap_err().kind(), map_wrapper::ErrorKind::CapacityExceeded);
    assert_eq!(d.three_keys()?.map(u32::from).sum::<u32>(), 6);
    assert_eq!(d.three_retain(|k, _| *k == 1)?, 2);
    assert!(!d.three_is_empty()?);
    assert_eq!(d.one_iter()?.collect::<Vec<_>>(), [(1, 1)]);
    Ok(())
}

#[test]
fn many_threads_share_one_struct_and_lose_nothing() {
    const THREADS: usize = 8;
    const PER_THREAD: u64 = 500;
    let ledger = Arc::new(Ledger::new());
    ledger.balances_insert("pool".into(), 0).unwrap();
    let shared = Arc::clone(&ledger);
    storm(THREADS, move |t| {
        for i in 0..PER_THREAD {
            // Every thread deposits into one hot account (contention on one shard) and
            // records a card and a note of its own.
            shared.balances_update("pool", |b| *b += 1).unwrap();
            shared.cards_insert(t as u64 * PER_THREAD + i, format!("tok-{t}-{i}")).unwrap();
            shared.notes().entry(t as u32).and_modify(|n| n.push('.')).or_default().unwrap();
        }
    });
    assert_eq!(ledger.balances_get_cloned("pool").unwrap(), Some((THREADS as u64 * PER_THREAD) as i64));
    assert_eq!(ledger.cards_len().unwrap(), THREADS * PER_THREAD as usize);
    for t in 0..THREADS {
        let note = ledger.notes_get_cloned(&(t as u32)).unwrap().expect("every thread wrote a note");
        assert_eq!(note.len() as u64, PER_THREAD - 1);
        assert_eq!(ledger.cards_get_cloned(&(t as u64 * PER_THREAD)).unwrap(), Some(format!("tok-{t}-0")));
    }
}

/// Holds a read guard on `key` of the `balances` map in another thread until told to let go.
fn hold_balance(ledger: &Arc<Ledger>, key: &'static str) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = Arc::clone(ledger);
    let handle = thread::spawn(move || {
        let guard = holder.balances_get(key).unwrap().expect("present");
        held_tx.send(()).unwrap();
        // Bounded: the test releases it, and a lost test thread does not hang the run.
        let _ = release_rx.recv_timeout(Duration::from_secs(10));
        drop(guard);
    });
    held_rx.recv_timeout(Duration::from_secs(10)).expect("holder took the guard");
    (release_tx, handle)
}

#[test]
fn accessors_time_out_after_the_struct_timeout_while_a_guard_is_held() {
    let ledger = Arc::new(Ledger::new());
    ledger.balances_insert("hot".into(), 1).unwrap();
    let (release, holder) = hold_balance(&ledger, "hot");

    let started = Instant::now();
    let err = ledger.balances_insert("hot".into(), 2).unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        e if e.kind() == map_wrapper::ErrorKind::Timeout => {
            assert_eq!(e.map(), Some("ledger.balances"));
            assert_eq!(e.op(), Some(map_wrapper::Op::Insert));
            assert_eq!(e.timeout(), Some(Duration::from_millis(120)));
            let waited = e.waited().unwrap();
            assert!(waited >= Duration::from_millis(120), "waited only {waited:?}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(120), "returned after {elapsed:?}");
    // Generous bound: it gave up instead of waiting for the holder.
    assert!(elapsed < Duration::from_secs(5), "returned after {elapsed:?}");

    release.send(()).unwrap();
    holder.join().unwrap();
    // The refused insert changed nothing; with the guard gone the write goes through.
    assert_eq!(ledger.balances_get_cloned("hot").unwrap(), Some(1));
    assert_eq!(ledger.balances_insert("hot".into(), 2).unwrap(), Some(1));
}

#[test]
fn a_field_timeout_overrides_the_struct_timeout() {
    let ledger = Arc::new(Ledger::new());
    ledger.notes_insert(7, "n".into()).unwrap();
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = Arc::clone(&ledger);
    let handle = thread::spawn(move || {
        holder
            .notes_update(&7, |_| {
                held_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(10));
            })
            .unwrap();
    });
    held_rx.recv_timeout(Duration::from_secs(10)).expect("holder took the lock");
    let started = Instant::now();
    let err = ledger.notes_get_cloned(&7).unwrap_err();
    assert_eq!(err.code(), "TIMEOUT");
    assert!(started.elapsed() >= Duration::from_millis(300), "returned after {:?}", started.elapsed());
    release_tx.send(()).unwrap();
    handle.join().unwrap();
}

#[test]
fn one_auditor_names_every_map_struct_dot_field_and_keeps_redacted_values_out() {
    const THREADS: usize = 8;
    let sink = MemorySink::new();
    let ledger = Arc::new(Ledger::with_auditor(&Auditor::new(sink.clone())).unwrap());
    let shared = Arc::clone(&ledger);
    storm(THREADS, move |t| {
        let _as = OpContext::new().actor(format!("teller-{t}")).enter();
        shared.balances_insert(format!("acct-{t}"), t as i64).unwrap();
        shared.balances_update(&format!("acct-{t}"), |b| *b += 100).unwrap();
        shared.cards_insert(t as u64, format!("tok-SECRET-{t}")).unwrap();
        if t % 2 == 0 {
            shared.cards_remove(&(t as u64)).unwrap();
        }
        shared.notes_insert(t as u32, format!("note-{t}")).unwrap();
    });
    // Reads are not audited; the skipped raw map is not a guarded map at all.
    assert_eq!(ledger.balances_get_cloned("acct-3").unwrap(), Some(103));

    let records = sink.records();
    let count =
        |map: &str, op: &str| records.iter().filter(|r| r.map.as_deref() == Some(map) && r.op == op).count();
    assert_eq!(count("ledger.balances", "insert"), THREADS);
    assert_eq!(count("ledger.balances", "update"), THREADS);
    assert_eq!(count("ledger.cards", "insert"), THREADS);
    assert_eq!(count("ledger.cards", "remove"), THREADS / 2);
    assert_eq!(count("ledger.notes_v2", "insert"), THREADS);
    assert_eq!(records.len(), 4 * THREADS + THREADS / 2, "one record per mutation, no other");

    for r in &records {
        assert_eq!(r.outcome, "ok");
        let key = r.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
        // Each teller's records carry its actor (the ambient context of its thread).
        let teller = (0..THREADS).find(|t| key.contains(&t.to_string())).expect("a key of some teller");
        assert_eq!(r.actor, format!("teller-{teller}"), "{r:?}");
        match r.map.as_deref() {
            Some("ledger.cards") => {
                for value in [&r.old, &r.new].into_iter().flatten() {
                    assert_eq!(value, &serde_json::json!({"redacted": true}), "{r:?}");
                }
            }
            Some("ledger.balances") if r.op == "insert" => {
                assert_eq!(r.new, Some(serde_json::json!({"full": teller as i64})));
            }
            _ => {}
        }
    }
    let text = sink.text();
    assert!(!text.contains("SECRET"), "a redacted value reached the trail");
    assert!(text.contains("note-3"), "values of other maps are recorded in full");

    // One sink, one chain: the whole struct's trail verifies as one.
    let report = verify::verify_bytes(&[("memory".into(), text.into_bytes())], &Default::default()).unwrap();
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.human());
    assert_eq!(report.records, records.len() as u64);
}

#[guarded_map(audit = "vault")]
struct Vault {
    #[guard(digest)]
    pins: HashMap<u32, String>,
}

#[test]
fn a_digest_map_needs_a_digest_key_and_then_records_no_plain_value() {
    let refused = Vault::with_auditor(&Auditor::new(MemorySink::new()));
    assert_eq!(refused.err().map(|e| e.code()), Some("INVALID_CONFIG"));

    let sink = MemorySink::new();
    let auditor =
        Auditor::new(sink.clone()).digest_key("k1", b"a test key of at least 32 bytes.....".to_vec());
    let vault = Vault::with_auditor(&auditor).unwrap();
    vault.pins_insert(1, "PIN-4321".into()).unwrap();
    let records = sink.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].map.as_deref(), Some("vault.pins"));
    assert!(!sink.text().contains("PIN-4321"));
    // Without an auditor the same struct audits nothing and needs no key.
    assert!(Vault::new().pins_insert(1, "x".into()).is_ok());
}
