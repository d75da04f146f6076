//! What an audited map records: one record per change, refusals with their outcome, who did
//! it, per-key order under contention, and values that never leak under Redacted or Digest.

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use map_wrapper::audit::{
    verify, AuditRecord, AuditSink, Auditor, Durability, JsonLinesOptions, JsonLinesSink, MemorySink,
    TeeSink, TracingSink, ValuePolicy,
};
use map_wrapper::{CancelToken, MapWrapper, OpContext};
use serde_json::json;

fn audited(sink: &MemorySink) -> MapWrapper<String, i64> {
    MapWrapper::builder().name("accounts").shards(4).auditor(Auditor::new(sink.clone())).build().unwrap()
}

fn full(v: serde_json::Value) -> Option<serde_json::Value> {
    Some(json!({ "full": v }))
}

fn intact(sink: &MemorySink) {
    let report =
        verify::verify_bytes(&[("memory".into(), sink.text().into_bytes())], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
}

#[test]
fn every_kind_of_mutation_writes_one_record_per_affected_key() {
    let sink = MemorySink::new();
    let map = audited(&sink);
    map.insert("a".into(), 1).unwrap();
    map.insert("a".into(), 2).unwrap();
    map.update("a", |v| *v += 10).unwrap();
    map.alter("b".into(), |_| Some(5)).unwrap();
    map.alter("b".into(), |_| None).unwrap();
    map.entry("c".into()).or_insert(7).unwrap();
    map.entry("c".into()).and_modify(|v| *v *= 2).or_insert(0).unwrap();
    map.remove_if("c", |_, v| *v == 14).unwrap();
    map.extend([("d".to_string(), 1), ("e".to_string(), 2), ("f".to_string(), 3)]).unwrap();
    map.remove_entry("d").unwrap();
    map.retain(|k, _| k != "e").unwrap();
    map.clear().unwrap(); // removes "a" and "f"

    let recs = sink.records();
    let got: Vec<(&str, Option<serde_json::Value>, Option<serde_json::Value>)> =
        recs.iter().map(|r| (r.op.as_str(), r.old.clone(), r.new.clone())).collect();
    let mut clear: Vec<_> = got[got.len() - 2..].to_vec();
    clear.sort_by_key(|c| c.1.as_ref().map(|v| v.to_string()));
    assert_eq!(
        got[..got.len() - 2],
        [
            ("insert", None, full(json!(1))),
            ("insert", full(json!(1)), full(json!(2))),
            ("update", full(json!(2)), full(json!(12))),
            ("alter", None, full(json!(5))),
            ("alter", full(json!(5)), None),
            ("entry", None, full(json!(7))),
            ("entry", full(json!(7)), full(json!(14))),
            ("remove_if", full(json!(14)), None),
            ("extend", None, full(json!(1))),
            ("extend", None, full(json!(2))),
            ("extend", None, full(json!(3))),
            ("remove_entry", full(json!(1)), None),
            ("retain", full(json!(2)), None),
        ]
    );
    assert_eq!(clear, [("clear", full(json!(12)), None), ("clear", full(json!(3)), None)]);
    assert!(recs.iter().all(|r| r.outcome == "ok" && r.map.as_deref() == Some("accounts")));
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=recs.len() as u64).collect::<Vec<_>>());
    assert_eq!(recs[0].key, full(json!("a")));
    intact(&sink);
}

#[test]
fn calls_that_change_nothing_write_nothing() {
    let sink = MemorySink::new();
    let map = audited(&sink);
    map.remove("nope").unwrap();
    map.update("nope", |v| *v += 1).unwrap();
    map.alter("nope".into(), |_| None).unwrap();
    map.insert("k".into(), 1).unwrap();
    map.remove_if("k", |_, _| false).unwrap();
    map.retain(|_, _| true).unwrap();
    assert_eq!(sink.len(), 1);
}

#[test]
fn refused_operations_are_recorded_with_their_outcome() {
    let sink = MemorySink::new();
    let map = Arc::new(audited(&sink));
    map.insert("k".into(), 1).unwrap();

    // Would deadlock: this thread holds the shard through a guard.
    let guard = map.get("k").unwrap().unwrap();
    assert_eq!(map.insert("k".into(), 2).unwrap_err().code(), "WOULD_DEADLOCK");
    drop(guard);

    // Timeout: another thread holds the shard.
    let (held, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let holder = {
        let (map, held, release) = (Arc::clone(&map), Arc::clone(&held), Arc::clone(&release));
        std::thread::spawn(move || {
            let _g = map.get("k").unwrap();
            held.wait();
            release.wait();
        })
    };
    held.wait();
    let ctx = OpContext::new().timeout(Duration::from_millis(5));
    assert_eq!(map.with(&ctx).insert("k".into(), 3).unwrap_err().code(), "TIMEOUT");
    release.wait();
    holder.join().unwrap();

    // Cancelled.
    let token = CancelToken::new();
    token.cancel();
    let ctx = OpContext::new().cancel_token(token);
    assert_eq!(map.with(&ctx).remove("k").unwrap_err().code(), "CANCELLED");

    let recs = sink.records();
    let outcomes: Vec<(&str, &str)> = recs.iter().map(|r| (r.op.as_str(), r.outcome.as_str())).collect();
    assert_eq!(
        outcomes,
        [("insert", "ok"), ("insert", "would_deadlock"), ("insert", "timeout"), ("remove", "cancelled")]
    );
    assert_eq!(recs[1].key, full(json!("k")), "an owned key is recorded");
    assert_eq!(recs[3].key, None, "a borrowed key is not");
    assert!(recs[2].reason.as_deref().unwrap().contains("timed out"));
    assert!(recs[1..].iter().all(|r| r.new.is_none() && r.old.is_none()));
    assert_eq!(map.get_cloned("k").unwrap(), Some(1), "refused operations changed nothing");
}

#[test]
fn the_actor_is_never_empty_and_comes_from_the_context_first() {
    let sink = MemorySink::new();
    let plain = audited(&sink);
    plain.insert("a".into(), 1).unwrap();
    let named: MapWrapper<String, i64> = MapWrapper::builder()
        .auditor(Auditor::new(sink.clone()).default_actor("billing-svc"))
        .build()
        .unwrap();
    named.insert("b".into(), 1).unwrap();
    {
        let _scope = OpContext::new().actor("alice").trace_id("req-1").tag("tenant", "acme").enter();
        named.insert("c".into(), 1).unwrap();
        let ctx = OpContext::new().actor("bob").tag("tenant", "zeta").tag("via", "api");
        named.with(&ctx).insert("d".into(), 1).unwrap();
    }
    let recs = sink.records();
    let who: Vec<(&str, Option<&str>)> =
        recs.iter().map(|r| (r.actor.as_str(), r.trace_id.as_deref())).collect();
    assert_eq!(
        who,
        [("unattributed", None), ("billing-svc", None), ("alice", Some("req-1")), ("bob", Some("req-1"))]
    );
    assert_eq!(recs[2].tags.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(recs[3].tags.get("tenant").map(String::as_str), Some("zeta"));
    assert_eq!(recs[3].tags.get("via").map(String::as_str), Some("api"));
}

#[test]
fn digest_policy_without_a_digest_key_is_a_config_error() {
    let err = MapWrapper::<String, String>::builder()
        .value_policy(ValuePolicy::Digest)
        .auditor(Auditor::new(MemorySink::new()))
        .build()
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_CONFIG");
    assert!(err.to_string().contains("value_policy"), "{err}");
    let err = MapWrapper::<String, String>::builder()
        .key_policy(ValuePolicy::Digest)
        .auditor_redacted(Auditor::new(MemorySink::new()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("key_policy"), "{err}");
}

/// A tracing subscriber that keeps the text of every event's fields.
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);
impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut out = self.0.lock().unwrap();
        out.push_str(&format!("target={} ", event.metadata().target()));
        event.record(&mut Fields(&mut out));
        out.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn redacted_and_digested_values_never_reach_any_sink() {
    const SECRET: &str = "4111-1111-1111-1111";
    const SECRET_KEY: &str = "customer-secret-id";
    let dir = tempfile::tempdir().unwrap();
    let memory = MemorySink::new();
    let captured = Arc::new(Mutex::new(String::new()));
    let file = JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap();
    let tee: Arc<dyn AuditSink> =
        Arc::new(TeeSink::new(vec![Arc::new(memory.clone()), Arc::new(TracingSink::new()), Arc::new(file)]));
    let auditor = Auditor::from_arc(tee).digest_key("k1", b"0123456789abcdef0123456789abcdef".to_vec());

    tracing::subscriber::with_default(Capture(Arc::clone(&captured)), || {
        let redacted: MapWrapper<String, String> = MapWrapper::builder()
            .name("cards")
            .value_policy(ValuePolicy::Redacted)
            .auditor(auditor.clone())
            .build()
            .unwrap();
        let digested: MapWrapper<String, String> = MapWrapper::builder()
            .name("tokens")
            .key_policy(ValuePolicy::Digest)
            .value_policy(ValuePolicy::Digest)
            .auditor(auditor.clone())
            .build()
            .unwrap();
        #[derive(Debug)]
        struct NotSerialize(#[allow(dead_code)] String);
        let opaque: MapWrapper<String, NotSerialize> =
            MapWrapper::builder().name("opaque").auditor_redacted(auditor.clone()).build().unwrap();
        for map in [&redacted, &digested] {
            map.insert("c1".into(), SECRET.into()).unwrap();
            map.update("c1", |v| v.push('9')).unwrap();
            if map.name() == "tokens" {
                map.insert(SECRET_KEY.into(), SECRET.into()).unwrap();
            }
            map.clear().unwrap();
        }
        opaque.insert("c1".into(), NotSerialize(SECRET.into())).unwrap();
        opaque.remove("c1").unwrap();
    });
    drop(auditor); // closes the file sink

    let mut outputs = vec![("memory", memory.text()), ("tracing", captured.lock().unwrap().clone())];
    for seg in std::fs::read_dir(dir.path()).unwrap() {
        outputs.push(("file", std::fs::read_to_string(seg.unwrap().path()).unwrap()));
    }
    for (name, text) in &outputs {
        assert!(!text.contains("4111"), "{name} leaked a value:\n{text}");
        assert!(!text.contains(SECRET_KEY), "{name} leaked a digested key:\n{text}");
    }
    assert!(outputs[1].1.contains("target=audit"), "{}", outputs[1].1);
    let recs = memory.records();
    assert_eq!(recs.len(), 10);
    assert_eq!(recs[0].new, Some(json!({ "redacted": true })));
    let d: &AuditRecord = &recs[3];
    assert_eq!(d.map.as_deref(), Some("tokens"));
    assert_eq!(d.new.as_ref().unwrap()["key_id"], "k1");
    assert_eq!(d.new.as_ref().unwrap()["digest"].as_str().unwrap().len(), 64);
    // Equal values give equal digests (they can be matched without being revealed).
    assert_eq!(recs[5].new, recs[3].new);
    assert_ne!(recs[5].key, recs[3].key);
    assert_eq!(recs[8].new, Some(json!({ "redacted": true })));
}

#[test]
fn per_key_order_matches_the_values_each_key_held_under_contention() {
    const THREADS: usize = 8;
    const OPS: i64 = 300;
    const KEYS: i64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let opts = JsonLinesOptions { max_segment_bytes: 64 << 10, ..Default::default() };
    let sink = JsonLinesSink::open(dir.path(), opts).unwrap();
    let map: Arc<MapWrapper<i64, i64>> = Arc::new(
        MapWrapper::builder()
            .shards(2)
            .timeout(Duration::from_secs(10))
            .auditor(Auditor::new(sink).durability(Durability::Flushed))
            .build()
            .unwrap(),
    );
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (map, barrier) = (Arc::clone(&map), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..OPS {
                    let key = (i + t as i64) % KEYS;
                    if i % 3 == 0 {
                        map.alter(key, |old| Some(old.map_or(1, |v| v + 1))).unwrap();
                    } else {
                        map.entry(key).and_modify(|v| *v += 1).or_insert(1).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let finals: HashMap<i64, i64> = map.snapshot().unwrap().into_iter().collect();
    drop(map);

    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
    assert!(report.segments > 1, "rotation happened: {}", report.human());
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut n = 0;
    for seg in map_wrapper::audit::list_segments(dir.path()).unwrap() {
        for line in std::fs::read_to_string(seg.1).unwrap().lines() {
            let Ok(r) = serde_json::from_str::<AuditRecord>(line) else { continue };
            let Some(key) = r.key.as_ref().and_then(|k| k["full"].as_i64()) else { continue };
            let new = r.new.as_ref().unwrap()["full"].as_i64().unwrap();
            let last = seen.entry(key).or_insert(0);
            assert_eq!(new, *last + 1, "key {key}: record seq {} out of order", r.seq);
            *last = new;
            n += 1;
        }
    }
    assert_eq!(n, THREADS as i64 * OPS);
    assert_eq!(seen, finals);
}

#[test]
fn a_closure_that_panics_after_changing_a_value_is_recorded_as_panicked() {
    let sink = MemorySink::new();
    let map = audited(&sink);
    map.insert("k".into(), 1).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        map.update("k", |v| {
            *v = 99;
            panic!("user code");
        })
    }));
    assert!(r.is_err(), "the panic goes on to the caller");
    assert_eq!(map.get_cloned("k").unwrap(), Some(99));
    let rec = sink.records().pop().unwrap();
    assert_eq!((rec.op.as_str(), rec.outcome.as_str()), ("update", "panicked"));
    assert_eq!((rec.old, rec.new), (full(json!(1)), full(json!(99))));
    map.insert("k".into(), 2).unwrap(); // the shard was released
}

/// A value whose `Serialize` misbehaves: it panics, or it calls back into its map.
struct Nasty {
    panic: bool,
    map: Option<Arc<MapWrapper<u8, Nasty>>>,
}

impl serde::Serialize for Nasty {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.panic {
            panic!("serializer bug");
        }
        if let Some(map) = &self.map {
            let Err(err) = map.insert(1, Nasty { panic: false, map: None }) else {
                panic!("a write to the held shard went through");
            };
            return s.serialize_str(err.code());
        }
        s.serialize_str("fine")
    }
}

#[test]
fn a_serialize_impl_that_panics_or_reenters_the_map_still_gets_its_record() {
    let sink = MemorySink::new();
    let map: Arc<MapWrapper<u8, Nasty>> =
        Arc::new(MapWrapper::builder().shards(1).auditor(Auditor::new(sink.clone())).build().unwrap());
    map.insert(1, Nasty { panic: true, map: None }).unwrap();
    map.insert(2, Nasty { panic: false, map: Some(Arc::clone(&map)) }).unwrap();
    let recs = sink.records();
    let ops: Vec<(&str, &str)> = recs.iter().map(|r| (r.op.as_str(), r.outcome.as_str())).collect();
    // The call back into the map is refused (and audited as such) while the outer record is
    // being encoded, so its record comes first.
    assert_eq!(ops, [("insert", "ok"), ("insert", "would_deadlock"), ("insert", "ok")]);
    assert_eq!(recs[0].new, Some(json!({ "unencodable": "the Serialize implementation panicked" })));
    assert_eq!(recs[2].new, full(json!("WOULD_DEADLOCK")), "refused, not deadlocked");
    map.remove(&2).unwrap(); // breaks the Arc cycle
}
