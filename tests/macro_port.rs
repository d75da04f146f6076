//! A port of ordinary `HashMap` code to `#[guarded_map]` (issue #13's "done when"), and what a
//! ported struct relies on beyond the accessors: serde keeps the declared settings, an auditor
//! can be attached after the fact, `Clone` / `PartialEq` / `Debug` / `Default` work on contents,
//! `no_new` / `no_default` let a user write their own, forced (`#[guard(map)]`) and custom-hasher
//! fields are guarded, and `breaker(...)` gives every map a circuit breaker.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use map_wrapper::audit::{Auditor, MemorySink};
use map_wrapper::{guarded_map, MapError};
use serde::{Deserialize, Serialize};

/// A value type of the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Units left to fill.
    pub qty: u32,
    /// Price per unit.
    pub price_cents: u64,
}

/// The service as it was written before the port: plain `HashMap` fields.
mod before {
    use super::Order;
    use std::collections::HashMap;

    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct Service {
        pub blobs: HashMap<String, Vec<u8>>,
        pub orders: HashMap<u64, Order>,
        pub label: String,
    }

    impl Service {
        pub fn put(&mut self, key: &str, bytes: &[u8]) -> Option<Vec<u8>> {
            self.blobs.insert(key.to_string(), bytes.to_vec())
        }

        pub fn blob_len(&self, key: &str) -> Option<usize> {
            self.blobs.get(key).map(Vec::len)
        }

        pub fn place(&mut self, id: u64, order: Order) {
            self.orders.insert(id, order);
        }

        pub fn fill(&mut self, id: u64, qty: u32) -> Option<u32> {
            self.orders.get_mut(&id).map(|o| {
                o.qty -= qty.min(o.qty);
                o.qty
            })
        }

        pub fn cancel(&mut self, id: u64) -> Option<Order> {
            self.orders.remove(&id)
        }

        pub fn open_orders(&self) -> usize {
            self.orders.len()
        }
    }
}

/// The same service after the port: the attribute, `&self` instead of `&mut self` (the maps
/// lock themselves), the accessors, and `?` where an operation can fail. Map methods the port
/// still lacks (keys/values/iteration by reference, `entry().or_insert(0) += 1`) are phase two.
mod after {
    use super::Order;
    use map_wrapper::{guarded_map, MapError};
    use std::collections::HashMap;

    #[guarded_map(audit = "service", timeout_ms = 250, shards = 4)]
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct Service {
        pub blobs: HashMap<String, Vec<u8>>,
        pub orders: HashMap<u64, Order>,
        pub label: String,
    }

    impl Service {
        pub fn put(&self, key: &str, bytes: &[u8]) -> Result<Option<Vec<u8>>, MapError> {
            self.blobs_insert(key.to_string(), bytes.to_vec())
        }

        pub fn blob_len(&self, key: &str) -> Result<Option<usize>, MapError> {
            Ok(self.blobs_get(key)?.map(|b| b.len()))
        }

        pub fn place(&self, id: u64, order: Order) -> Result<(), MapError> {
            self.orders_insert(id, order)?;
            Ok(())
        }

        pub fn fill(&self, id: u64, qty: u32) -> Result<Option<u32>, MapError> {
            self.orders_update(&id, |o| {
                o.qty -= qty.min(o.qty);
                o.qty
            })
        }

        pub fn cancel(&self, id: u64) -> Result<Option<Order>, MapError> {
            self.orders_remove(&id)
        }

        pub fn open_orders(&self) -> Result<usize, MapError> {
            self.orders_len()
        }
    }
}

fn order(qty: u32) -> Order {
    Order { qty, price_cents: 100 }
}

#[test]
fn the_ported_service_behaves_as_the_hashmap_one() -> Result<(), MapError> {
    let mut old = before::Service::default();
    let new = after::Service::default();
    assert_eq!(old.put("a", b"xyz"), new.put("a", b"xyz")?);
    assert_eq!(old.put("a", b"xy"), new.put("a", b"xy")?);
    assert_eq!(old.blob_len("a"), new.blob_len("a")?);
    assert_eq!(old.blob_len("zz"), new.blob_len("zz")?);
    for id in 0..5 {
        old.place(id, order(10));
        new.place(id, order(10))?;
    }
    assert_eq!(old.fill(3, 4), new.fill(3, 4)?);
    assert_eq!(old.fill(3, 40), new.fill(3, 40)?);
    assert_eq!(old.fill(99, 1), new.fill(99, 1)?);
    assert_eq!(old.cancel(1), new.cancel(1)?);
    assert_eq!(old.cancel(1), new.cancel(1)?);
    assert_eq!(old.open_orders(), new.open_orders()?);
    // Clone and == as the HashMap struct's: a deep copy, equal by contents, then apart.
    let (old_copy, new_copy) = (old.clone(), new.clone());
    assert!(old_copy == old && new_copy == new);
    old.place(42, order(1));
    new.place(42, order(1))?;
    assert!(old_copy != old && new_copy != new, "the copies are deep");
    assert_eq!(new_copy.orders().name(), "service.orders");
    Ok(())
}

#[guarded_map(audit = "store", timeout_ms = 250, shards = 8)]
#[derive(Serialize, Deserialize)]
struct Store {
    orders: HashMap<u64, Order>,
    #[guard(redact, timeout_ms = 900)]
    secrets: HashMap<String, String>,
    label: String,
}

#[test]
fn a_deserialized_struct_keeps_its_declared_names_timeouts_shards_and_contents() -> Result<(), MapError> {
    let store = Store::new();
    store.orders_insert(7, order(3))?;
    store.secrets_insert("k".into(), "v".into())?;
    let json = serde_json::to_string(&store).expect("serializes");
    let back: Store = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back.orders().name(), "store.orders");
    assert_eq!(back.orders().default_timeout(), Duration::from_millis(250));
    assert_eq!(back.orders().shard_count(), 8);
    assert_eq!(back.secrets().name(), "store.secrets");
    assert_eq!(back.secrets().default_timeout(), Duration::from_millis(900));
    assert_eq!(back.orders_get_cloned(&7)?, Some(order(3)));
    assert_eq!(back.secrets_get_cloned("k")?, Some("v".to_string()));
    Ok(())
}

#[test]
fn attach_auditor_keeps_contents_records_changes_from_then_on_and_keeps_the_value_policy(
) -> Result<(), MapError> {
    let json = r#"{"orders":{"1":{"qty":2,"price_cents":5}},"secrets":{"a":"hunter2"},"label":"x"}"#;
    let mut store: Store = serde_json::from_str(json).expect("deserializes");
    let trail = MemorySink::new();
    store.attach_auditor(&Auditor::new(trail.clone()))?;
    assert!(trail.records().is_empty(), "entries already there are not records");
    assert_eq!(store.orders_get_cloned(&1)?, Some(Order { qty: 2, price_cents: 5 }));
    store.orders_insert(2, order(1))?;
    store.secrets_insert("b".into(), "swordfish".into())?;
    let maps: Vec<_> = trail.records().iter().map(|r| r.map.clone()).collect();
    assert_eq!(maps, vec![Some("store.orders".to_string()), Some("store.secrets".to_string())]);
    assert!(!trail.text().contains("swordfish"), "the redact policy of the declaration applies");
    assert_eq!(store.orders().default_timeout(), Duration::from_millis(250), "settings kept");
    Ok(())
}

#[test]
fn attach_auditor_refusing_a_digest_map_leaves_the_struct_unaudited_and_whole() -> Result<(), MapError> {
    #[guarded_map]
    struct Digested {
        plain: HashMap<u8, u8>,
        #[guard(digest)]
        hashed: HashMap<u8, u8>,
    }
    let mut d = Digested::new();
    d.plain_insert(1, 1)?;
    let trail = MemorySink::new();
    let err = d.attach_auditor(&Auditor::new(trail.clone())).expect_err("no digest key");
    assert_eq!(err.kind(), map_wrapper::ErrorKind::InvalidConfig, "{err:?}");
    d.plain_insert(2, 2)?;
    assert!(trail.records().is_empty(), "no map got the auditor");
    assert_eq!(d.plain_len()?, 2);
    Ok(())
}

#[test]
fn debug_shows_contents_like_a_hashmap_and_other_fields_as_derived() -> Result<(), MapError> {
    #[guarded_map(shards = 1)]
    #[derive(Debug)]
    struct Small {
        m: HashMap<u8, &'static str>,
        label: &'static str,
    }
    let s = Small::new();
    s.m_insert(1, "one")?;
    assert_eq!(format!("{s:?}"), r#"Small { m: {1: "one"}, label: "" }"#);
    assert_eq!(s.label, "");
    Ok(())
}

#[test]
fn debug_is_bounded_and_does_not_wait_for_a_held_shard() -> Result<(), MapError> {
    #[guarded_map(shards = 1, timeout_ms = 5000)]
    #[derive(Debug)]
    struct Big {
        m: HashMap<u32, u32>,
    }
    let b = Big::new();
    for i in 0..1000 {
        b.m_insert(i, i)?;
    }
    let text = format!("{b:?}");
    assert_eq!(text.matches(": ").count(), 1 + 64 + 1, "`m`, 64 entries and the `..` line: {text}");
    assert!(text.contains(r#"..: 936 more"#), "{text}");
    // A write held by another thread (an update in progress): Debug says so at once instead of
    // waiting out the 5 s timeout.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let b = &b;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            b.m_update(&1, |_| {
                held_tx.send(()).expect("test alive");
                go_rx.recv_timeout(Duration::from_secs(10)).ok();
            })
        });
        held_rx.recv_timeout(Duration::from_secs(10)).expect("the writer holds the shard");
        let started = std::time::Instant::now();
        let text = format!("{b:?}");
        let took = started.elapsed();
        go_tx.send(()).expect("writer alive");
        // One shard, held: nothing shown, the held shard marked.
        assert_eq!(text, "Big { m: {<locked>: 1 shard(s) held for writing} }");
        assert!(took < Duration::from_secs(4), "did not wait out the timeout: {took:?}");
    });
    Ok(())
}

#[test]
fn partial_eq_compares_contents_not_names() -> Result<(), MapError> {
    #[guarded_map]
    #[derive(PartialEq, Eq)]
    struct A {
        m: HashMap<u8, u8>,
        #[guard(name = "other")]
        n: HashMap<u8, u8>,
    }
    let (x, y) = (A::new(), A::new());
    assert!(x == y);
    x.m_insert(1, 1)?;
    assert!(x != y);
    y.m_insert(1, 2)?;
    assert!(x != y, "same key, other value");
    y.m_insert(1, 1)?;
    assert!(x == y && x == x);
    Ok(())
}

mod own_constructor {
    use map_wrapper::guarded_map;
    use std::collections::HashMap;

    #[guarded_map(no_new, audit = "cfg")]
    pub struct Config {
        pub values: HashMap<String, String>,
    }

    impl Config {
        /// The user's own `new`, with arguments: no clash with the generated constructor.
        pub fn new(defaults: &[(&str, &str)]) -> Result<Self, map_wrapper::MapError> {
            let c = Self::default();
            for (k, v) in defaults {
                c.values_insert(k.to_string(), v.to_string())?;
            }
            Ok(c)
        }
    }

    #[guarded_map(no_default)]
    pub struct Counters {
        pub hits: HashMap<String, u64>,
    }

    impl Default for Counters {
        fn default() -> Self {
            let c = Self::new();
            c.hits_insert("boot".to_string(), 1).expect("a new map takes an insert");
            c
        }
    }
}

#[test]
fn no_new_and_no_default_let_the_user_write_their_own() -> Result<(), MapError> {
    let c = own_constructor::Config::new(&[("a", "1")])?;
    assert_eq!(c.values().name(), "cfg.values", "Default still builds as declared");
    assert_eq!(c.values_get_cloned("a")?, Some("1".to_string()));
    let k = own_constructor::Counters::default();
    assert_eq!(k.hits_get_cloned("boot")?, Some(1));
    Ok(())
}

type Orders = HashMap<u64, Order>;
use std::collections::HashMap as Map;

#[derive(Default, Clone)]
struct Fnv(u64);
impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

#[guarded_map(audit = "shapes")]
struct Shapes {
    #[guard(map)]
    aliased: Orders,
    #[guard(map)]
    renamed: Map<String, u32>,
    hashed: HashMap<u32, u32, BuildHasherDefault<Fnv>>,
    ordered: std::collections::BTreeMap<u32, u32>,
    maybe: Option<HashMap<u32, u32>>,
}

#[test]
fn aliases_with_guard_map_and_custom_hashers_are_guarded_others_left_alone() -> Result<(), MapError> {
    let s = Shapes::new();
    s.aliased_insert(1, order(1))?;
    s.renamed_insert("x".into(), 2)?;
    s.hashed_insert(3, 4)?;
    assert_eq!(s.aliased().name(), "shapes.aliased");
    assert_eq!(s.renamed_get_cloned("x")?, Some(2));
    // The custom hasher is the map's hasher (a type check: this line does not compile otherwise).
    let _hasher: &BuildHasherDefault<Fnv> = s.hashed().hasher();
    assert_eq!(s.hashed_get_cloned(&3)?, Some(4));
    assert!(s.ordered.is_empty() && s.maybe.is_none(), "left as declared");
    Ok(())
}

#[test]
fn breaker_options_give_each_map_the_declared_breaker() {
    #[guarded_map(breaker(failure_rate = 50, min_calls = 10, window = 40, open_ms = 1000))]
    struct Guarded {
        a: HashMap<u8, u8>,
        #[guard(breaker)]
        b: HashMap<u8, u8>,
        plain: HashMap<u8, u8>,
    }
    #[guarded_map]
    struct Unguarded {
        a: HashMap<u8, u8>,
    }
    let g = Guarded::new();
    let a = g.a().breaker().expect("the struct's breaker").config();
    let expected = map_wrapper::breaker::BreakerConfig::new()
        .window(map_wrapper::breaker::SlidingWindow::count(40))
        .minimum_calls(10)
        .failure_rate(0.5)
        .slow_rate(None)
        .combined_rate(None)
        .open_wait(map_wrapper::breaker::OpenWait::Fixed(Duration::from_millis(1000)));
    assert_eq!(a, &expected);
    let b = g.b().breaker().expect("the field's own breaker").config();
    assert_eq!(b, &map_wrapper::breaker::BreakerConfig::new(), "`breaker` alone: the runtime's defaults");
    assert!(g.plain().breaker().is_some(), "the struct's breaker applies to every map");
    assert!(Unguarded::new().a().breaker().is_none());
}
