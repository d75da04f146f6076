//! A port of ordinary `HashMap` code to `#[guarded_map]` (issue #13's "done when"), and what a
//! ported struct relies on beyond the accessors: serde keeps the declared settings, an auditor
//! can be attached after the fact, `Clone` / `PartialEq` / `Debug` / `Default` work on contents,
//! `no_new` / `no_default` let a user write their own, forced (`#[guard(map)]`) and custom-hasher
//! fields are guarded, `breaker(...)` gives every map a circuit breaker, and `max_entries` /
//! `auto_shrink` bound each map and give memory back.
//!
//! # The port
//!
//! `mod before` is a service written the `HashMap` way, with the common idioms (`insert`, `get`,
//! `contains_key`, `get_mut`, `*entry(k).or_insert(0) += 1`, `for (k, v) in &map`, `keys()`,
//! `values()`, `retain`, `is_empty`, `clear`, `extend`, `len`, `remove`). `mod after` is the same
//! service ported, line for line. The port changes:
//!
//! - the struct's attributes: `#[guarded_map(...)]` above it (and the `use` of it);
//! - each map call, from `self.field.op(..)` to the accessor `self.field_op(..)`, with the same
//!   arguments (`self.field.op(..)` on the `MapWrapper` field would do too);
//! - a `?` after each map call, since every call can now fail (a timeout, a cancellation, a bound
//!   reached): so the methods that call the maps return `Result<_, MapError>`, and their tail
//!   expression is wrapped in `Ok(..)` (or an `Ok(())` line ends a method that returned
//!   nothing).
//!
//! Three lines change beyond that, each marked `// port:` in `mod after`, because a reference
//! into a map cannot outlive the map's lock (the table in the crate docs, "Porting `HashMap`
//! code", gives each mapping):
//!
//! - `*map.entry(k).or_insert(0) += 1` becomes `map_entry(k).or_insert_then(0, |n| *n += 1)?`:
//!   the `&mut V` that `or_insert` returns would escape the lock and the audit, so the change is
//!   a closure, run under the lock and recorded with the value before and after;
//! - `map.get_mut(&k).map(|v| ..)` becomes `map_update(&k, |v| ..)?`, for the same reason;
//! - `for (k, v) in &map` becomes `for (k, v) in map_iter()?`: the loop runs over a copy
//!   (owned pairs, no lock held during the body), since iterating by reference would hold the
//!   shards' locks for the whole loop. Bodies that use `k` and `v` through auto-deref, operators
//!   or field access compile unchanged.
//!
//! `&mut self` stays: nothing in the port needs it to change. What the port buys is that the
//! methods *could* take `&self` (the maps lock themselves), so one `Service` can be shared by
//! threads without a `Mutex` around it; `Clone`, `PartialEq`, `Debug` and `Default` are derived
//! as before (`#[guarded_map]` implements them on the maps' contents).
//!
//! `the_port_changes_only_the_attribute_the_map_calls_and_question_marks` checks the two modules
//! of this file against that list, so the port cannot grow other edits unnoticed.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use map_wrapper::audit::{Auditor, MemorySink};
use map_wrapper::{guarded_map, ErrorKind, MapError};
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
        pub hits: HashMap<String, u64>,
        pub label: String,
    }

    impl Service {
        pub fn put(&mut self, key: &str, bytes: &[u8]) -> Option<Vec<u8>> {
            self.blobs.insert(key.to_string(), bytes.to_vec())
        }

        pub fn blob_len(&self, key: &str) -> Option<usize> {
            self.blobs.get(key).map(|b| b.len())
        }

        pub fn has_blob(&self, key: &str) -> bool {
            self.blobs.contains_key(key)
        }

        pub fn hit(&mut self, page: &str) {
            *self.hits.entry(page.to_string()).or_insert(0) += 1;
        }

        pub fn total_hits(&self) -> u64 {
            self.hits.values().sum()
        }

        pub fn place(&mut self, id: u64, order: Order) {
            self.orders.insert(id, order);
        }

        pub fn place_all(&mut self, batch: Vec<(u64, Order)>) {
            self.orders.extend(batch);
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

        pub fn drop_filled(&mut self) {
            self.orders.retain(|_, o| o.qty > 0);
        }

        pub fn open_orders(&self) -> usize {
            self.orders.len()
        }

        pub fn idle(&self) -> bool {
            self.orders.is_empty()
        }

        pub fn id_sum(&self) -> u64 {
            self.orders.keys().sum()
        }

        pub fn units(&self) -> u32 {
            self.orders.values().map(|o| o.qty).sum()
        }

        pub fn weighted_units(&self) -> u64 {
            let mut total = 0;
            for (id, o) in &self.orders {
                total += id * u64::from(o.qty);
            }
            total
        }

        pub fn reset(&mut self) {
            self.orders.clear();
            self.hits.clear();
        }
    }
}

/// The same service after the port (see the module docs for what changed and why).
mod after {
    use super::Order;
    use map_wrapper::{guarded_map, MapError};
    use std::collections::HashMap;

    #[guarded_map(audit = "service", timeout_ms = 250, shards = 4)]
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct Service {
        pub blobs: HashMap<String, Vec<u8>>,
        pub orders: HashMap<u64, Order>,
        pub hits: HashMap<String, u64>,
        pub label: String,
    }

    impl Service {
        pub fn put(&mut self, key: &str, bytes: &[u8]) -> Result<Option<Vec<u8>>, MapError> {
            self.blobs_insert(key.to_string(), bytes.to_vec())
        }

        pub fn blob_len(&self, key: &str) -> Result<Option<usize>, MapError> {
            Ok(self.blobs_get(key)?.map(|b| b.len()))
        }

        pub fn has_blob(&self, key: &str) -> Result<bool, MapError> {
            self.blobs_contains_key(key)
        }

        pub fn hit(&mut self, page: &str) -> Result<(), MapError> {
            // port: `or_insert` would return a `&mut V`, which cannot leave the lock
            self.hits_entry(page.to_string()).or_insert_then(0, |n| *n += 1)?;
            Ok(())
        }

        pub fn total_hits(&self) -> Result<u64, MapError> {
            Ok(self.hits_values()?.sum())
        }

        pub fn place(&mut self, id: u64, order: Order) -> Result<(), MapError> {
            self.orders_insert(id, order)?;
            Ok(())
        }

        pub fn place_all(&mut self, batch: Vec<(u64, Order)>) -> Result<(), MapError> {
            self.orders_extend(batch)?;
            Ok(())
        }

        pub fn fill(&mut self, id: u64, qty: u32) -> Result<Option<u32>, MapError> {
            // port: `get_mut` is `update`: a `&mut V` cannot leave the lock
            self.orders_update(&id, |o| {
                o.qty -= qty.min(o.qty);
                o.qty
            })
        }

        pub fn cancel(&mut self, id: u64) -> Result<Option<Order>, MapError> {
            self.orders_remove(&id)
        }

        pub fn drop_filled(&mut self) -> Result<(), MapError> {
            self.orders_retain(|_, o| o.qty > 0)?;
            Ok(())
        }

        pub fn open_orders(&self) -> Result<usize, MapError> {
            self.orders_len()
        }

        pub fn idle(&self) -> Result<bool, MapError> {
            self.orders_is_empty()
        }

        pub fn id_sum(&self) -> Result<u64, MapError> {
            Ok(self.orders_keys()?.sum())
        }

        pub fn units(&self) -> Result<u32, MapError> {
            Ok(self.orders_values()?.map(|o| o.qty).sum())
        }

        pub fn weighted_units(&self) -> Result<u64, MapError> {
            let mut total = 0;
            // port: the loop runs over a copy, so that no lock is held during its body
            for (id, o) in self.orders_iter()? {
                total += id * u64::from(o.qty);
            }
            Ok(total)
        }

        pub fn reset(&mut self) -> Result<(), MapError> {
            self.orders_clear()?;
            self.hits_clear()?;
            Ok(())
        }
    }
}

fn order(qty: u32) -> Order {
    Order { qty, price_cents: 100 }
}

#[test]
fn the_ported_service_behaves_as_the_hashmap_one() -> Result<(), MapError> {
    let mut old = before::Service::default();
    let mut new = after::Service::default();
    assert_eq!(old.put("a", b"xyz"), new.put("a", b"xyz")?);
    assert_eq!(old.put("a", b"xy"), new.put("a", b"xy")?);
    assert_eq!(old.blob_len("a"), new.blob_len("a")?);
    assert_eq!(old.blob_len("zz"), new.blob_len("zz")?);
    assert_eq!(old.has_blob("a"), new.has_blob("a")?);
    assert_eq!(old.has_blob("zz"), new.has_blob("zz")?);
    for page in ["/", "/about", "/", "/", "/about", "/x"] {
        old.hit(page);
        new.hit(page)?;
    }
    assert_eq!(old.hits.get("/"), new.hits_get_cloned("/")?.as_ref());
    assert_eq!(old.hits.get("/x"), new.hits_get_cloned("/x")?.as_ref());
    assert_eq!(old.total_hits(), new.total_hits()?);
    assert_eq!(old.idle(), new.idle()?);
    for id in 0..5 {
        old.place(id, order(10));
        new.place(id, order(10))?;
    }
    let batch: Vec<(u64, Order)> = (5..9).map(|id| (id, order(id as u32))).collect();
    old.place_all(batch.clone());
    new.place_all(batch)?;
    assert_eq!(old.idle(), new.idle()?);
    assert_eq!(old.fill(3, 4), new.fill(3, 4)?);
    assert_eq!(old.fill(3, 40), new.fill(3, 40)?);
    assert_eq!(old.fill(99, 1), new.fill(99, 1)?);
    assert_eq!(old.cancel(1), new.cancel(1)?);
    assert_eq!(old.cancel(1), new.cancel(1)?);
    assert_eq!(
        (old.id_sum(), old.units(), old.weighted_units()),
        (new.id_sum()?, new.units()?, new.weighted_units()?)
    );
    old.drop_filled();
    new.drop_filled()?;
    assert_eq!(old.open_orders(), new.open_orders()?);
    assert_eq!(old.orders.contains_key(&3), new.orders_contains_key(&3)?, "the filled order is gone");
    assert_eq!(
        (old.id_sum(), old.units(), old.weighted_units()),
        (new.id_sum()?, new.units()?, new.weighted_units()?)
    );
    // Clone and == as the HashMap struct's: a deep copy, equal by contents, then apart.
    let (old_copy, new_copy) = (old.clone(), new.clone());
    assert!(old_copy == old && new_copy == new);
    old.place(42, order(1));
    new.place(42, order(1))?;
    assert!(old_copy != old && new_copy != new, "the copies are deep");
    assert_eq!(new_copy.orders().name(), "service.orders");
    old.reset();
    new.reset()?;
    assert_eq!((old.idle(), old.total_hits()), (new.idle()?, new.total_hits()?));
    assert!(new.idle()? && new.hits_is_empty()?);
    Ok(())
}

/// The text of `mod <name> { … }` in this file, one entry per line.
fn module_lines<'a>(source: &'a str, name: &str) -> Vec<&'a str> {
    let start = format!("mod {name} {{");
    let mut lines = source.lines().skip_while(|l| *l != start).skip(1);
    let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "}").collect();
    assert!(!body.is_empty(), "no `{start}` in this file");
    body
}

/// An `after` line with the port's mechanical changes undone: accessor form back to a method
/// call on the field, `?` dropped, `Result<T, MapError>` back to `T`, a tail `Ok(x)` back to `x`.
fn unported(line: &str, fields: &[&str]) -> String {
    let mut line = line.replace('?', "");
    for field in fields {
        for op in map_wrapper_accessors() {
            line = line.replace(&format!("self.{field}_{op}("), &format!("self.{field}.{op}("));
        }
    }
    if let (Some(start), Some(end)) = (line.find("Result<"), line.rfind(", MapError>")) {
        let inner = line[start + "Result<".len()..end].to_string();
        line.replace_range(start..end + ", MapError>".len(), &inner);
    }
    line = line.replace(" -> () {", " {");
    let trimmed = line.trim_start();
    if let Some(inner) = trimmed.strip_prefix("Ok(").and_then(|t| t.strip_suffix(')')) {
        line = format!("{}{inner}", &line[..line.len() - trimmed.len()]);
    }
    line
}

/// The suffixes of the generated accessors that the port uses.
fn map_wrapper_accessors() -> [&'static str; 15] {
    [
        "get_cloned",
        "get",
        "contains_key",
        "insert",
        "remove",
        "update",
        "len",
        "is_empty",
        "entry",
        "keys",
        "values",
        "iter",
        "retain",
        "clear",
        "extend",
    ]
}

#[test]
fn the_port_changes_only_the_attribute_the_map_calls_and_question_marks() {
    let source = include_str!("macro_port.rs");
    let old = module_lines(source, "before");
    // Each line of the port, with the reason of a `// port:` comment on the line before it;
    // without the lines the port adds: the attribute and its `use`, and `Ok(())` ending a
    // method that returned nothing.
    let mut new: Vec<(&str, Option<&str>)> = Vec::new();
    let mut why = None;
    for line in module_lines(source, "after") {
        let t = line.trim();
        if let Some(reason) = t.strip_prefix("// port:") {
            why = Some(reason);
        } else if !(t.starts_with("#[guarded_map") || t.starts_with("use map_wrapper::") || t == "Ok(())") {
            new.push((line, why.take()));
        }
    }
    assert_eq!(old.len(), new.len(), "the port is line for line");
    let fields = ["blobs", "orders", "hits"];
    let mut exceptions = Vec::new();
    for (o, (n, why)) in old.iter().zip(&new) {
        if let Some(why) = why {
            assert!(!why.trim().is_empty(), "a `// port:` comment says why: {n}");
            assert_ne!(unported(n, &fields), *o, "a needless `// port:` on {n}");
            exceptions.push(o.trim());
            continue;
        }
        assert_eq!(unported(n, &fields), *o, "the port changed more than it should:\n{o}\n{n}");
    }
    // The only idioms that are rewritten: the ones the module docs name (a `&mut V` or a `&V`
    // that would outlive the lock).
    assert_eq!(
        exceptions,
        [
            "*self.hits.entry(page.to_string()).or_insert(0) += 1;",
            "self.orders.get_mut(&id).map(|o| {",
            "for (id, o) in &self.orders {",
        ]
    );
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

#[test]
fn a_field_bound_refuses_the_insert_past_it_changes_nothing_and_is_not_retryable() -> Result<(), MapError> {
    #[guarded_map(max_entries = 100)]
    struct Quotas {
        #[guard(max_entries = 2)]
        small: HashMap<String, u32>,
        big: HashMap<String, u32>,
    }
    #[guarded_map(max_entries = 1)]
    struct Tiny {
        only: HashMap<u32, u32>,
    }
    let q = Quotas::new();
    assert_eq!(q.small().max_entries(), Some(2), "the field's bound wins over the struct's");
    assert_eq!(q.big().max_entries(), Some(100), "the struct's bound applies to every map");
    assert_eq!(Tiny::new().only().max_entries(), Some(1));
    q.small_insert("a".into(), 1)?;
    q.small_insert("b".into(), 2)?;
    let err = q.small_insert("c".into(), 3).expect_err("a third key is past the bound");
    assert_eq!(err.kind(), ErrorKind::CapacityExceeded, "{err:?}");
    assert!(!err.is_retryable(), "retrying cannot help until entries are removed");
    assert!(!err.applied());
    let text = err.to_string();
    assert!(text.contains("Quotas.small") && text.contains("max_entries = N"), "says what to change: {text}");
    // Nothing changed, whichever accessor tried to add the key.
    assert_eq!(
        q.small_entry("c".into()).or_insert_then(0, |n| *n += 1).unwrap_err().kind(),
        ErrorKind::CapacityExceeded
    );
    assert_eq!(q.small_extend([("c".to_string(), 3)]).unwrap_err().kind(), ErrorKind::CapacityExceeded);
    assert_eq!(q.small_len()?, 2);
    assert!(!q.small_contains_key("c")?);
    let mut pairs: Vec<_> = q.small_iter()?.collect();
    pairs.sort();
    assert_eq!(pairs, [("a".to_string(), 1), ("b".to_string(), 2)]);
    // A present key may still change; a removal makes room.
    q.small_insert("b".into(), 20)?;
    q.small_entry("a".into()).or_insert_then(0, |n| *n += 1)?;
    q.small_remove("a")?;
    q.small_insert("c".into(), 3)?;
    assert_eq!(q.small_len()?, 2);
    // The other maps keep their own bound.
    assert_eq!(q.big_extend((0..100).map(|i| (i.to_string(), i)))?, 100);
    assert_eq!(q.big_insert("one more".into(), 0).unwrap_err().kind(), ErrorKind::CapacityExceeded);
    Ok(())
}

#[test]
fn a_bound_refusal_through_a_guarded_struct_is_audited_as_refused() -> Result<(), MapError> {
    #[guarded_map]
    struct Quota {
        #[guard(max_entries = 1)]
        slots: HashMap<String, u32>,
    }
    let trail = MemorySink::new();
    let q = Quota::with_auditor(&Auditor::new(trail.clone()))?;
    q.slots_insert("a".into(), 1)?;
    assert!(q.slots_insert("b".into(), 2).is_err());
    let records = trail.records();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].outcome, "capacity_exceeded", "{:?}", records[1]);
    assert_eq!(records[1].map.as_deref(), Some("Quota.slots"));
    assert_eq!(q.slots_len()?, 1);
    Ok(())
}

#[test]
fn auto_shrink_gives_memory_back_after_a_retain_without_shrink_to_fit() -> Result<(), MapError> {
    #[guarded_map(shards = 4)]
    struct Caches {
        #[guard(auto_shrink)]
        shrinking: HashMap<u32, u32>,
        kept: HashMap<u32, u32>,
    }
    let c = Caches::new();
    c.shrinking_extend((0..10_000).map(|i| (i, i)))?;
    c.kept_extend((0..10_000).map(|i| (i, i)))?;
    let big = c.kept().capacity()?;
    assert_eq!(c.shrinking_retain(|k, _| *k < 100)?, 9_900);
    assert_eq!(c.kept_retain(|k, _| *k < 100)?, 9_900);
    let (kept, shrunk) = (c.kept().capacity()?, c.shrinking().capacity()?);
    assert!(kept > big / 2, "without auto_shrink the table stays large: {kept} of {big}");
    assert!(shrunk < big / 10, "auto_shrink gave the memory back: {shrunk} of {big}");
    assert_eq!(c.shrinking_len()?, 100);
    Ok(())
}
