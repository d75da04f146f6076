//! The generated code means the same next to a user's own `Result`, `Ok`, `Option`,
//! `Default`, `core`, `map_wrapper` module …, compiles without a single warning, and keeps the
//! user's `use std::collections::HashMap;` used (in the style of serde's `test_gen.rs`).
#![deny(warnings)]

use std::collections::HashMap;

// Decoys: every name a careless expansion might reach for unqualified.
#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Ok;
#[allow(dead_code)]
struct Err;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
struct Some;
#[allow(dead_code)]
struct None;
#[allow(dead_code)]
struct Default;
#[allow(dead_code)]
struct Clone;
#[allow(dead_code)]
struct Duration;
#[allow(dead_code)]
struct MapWrapper;
#[allow(dead_code)]
struct MapError;
#[allow(dead_code)]
struct Auditor;
#[allow(dead_code)]
trait Serialize {}
#[allow(dead_code)]
trait Hash {}
#[allow(dead_code)]
trait Borrow {}
#[allow(dead_code)]
trait Sized {}
#[allow(dead_code)]
trait FnOnce {}
#[allow(dead_code)]
trait FnMut {}
#[allow(dead_code)]
trait IntoIterator {}
#[allow(dead_code)]
struct Entry;
#[allow(dead_code)]
struct Iter;
#[allow(dead_code)]
struct RandomState;
#[allow(dead_code)]
struct IntoIter;
#[allow(dead_code)]
trait Debug {}
#[allow(dead_code)]
trait PartialEq {}
#[allow(dead_code)]
trait Deserialize {}
#[allow(dead_code)]
trait Deserializer {}
#[allow(dead_code)]
struct Formatter;
#[allow(dead_code)]
struct BreakerConfig;
#[allow(dead_code)]
mod core {}
#[allow(dead_code)]
mod __private {}
#[allow(dead_code)]
mod map_wrapper {}

/// A public struct: its generated accessors are public and documented (missing_docs).
#[::map_wrapper::guarded_map(timeout_ms = 100, shards = 4)]
pub struct Inventory<'a, T: std::hash::Hash + Eq> {
    /// Stock per item.
    pub stock: HashMap<&'a str, u32>,
    /// Tags per item, keyed by a generic type.
    pub(crate) tags: HashMap<T, Vec<String>>,
    #[guard(redact)]
    r#type: HashMap<u8, u8>,
    note: T,
}

/// The std traits and serde taken over, a breaker, a generic key: all by absolute path.
#[::map_wrapper::guarded_map(audit = "catalog", breaker(failure_rate = 50))]
#[derive(
    std::fmt::Debug,
    std::clone::Clone,
    std::cmp::PartialEq,
    std::cmp::Eq,
    ::serde::Serialize,
    ::serde::Deserialize,
)]
pub struct Catalog<T: std::hash::Hash + Eq> {
    /// Items by key.
    pub items: HashMap<T, u32>,
    /// A plain field.
    pub note: String,
}

#[test]
fn taken_over_traits_and_serde_ignore_the_names_in_scope() {
    let c: Catalog<u8> = Catalog::new();
    assert!(c.items_insert(1, 2).is_ok());
    let copy = std::clone::Clone::clone(&c);
    assert!(copy == c);
    assert_eq!(format!("{c:?}"), "Catalog { items: {1: 2}, note: \"\" }");
    let json = serde_json::to_string(&c).expect("serializes");
    let back: Catalog<u8> = serde_json::from_str(&json).expect("deserializes");
    assert!(back == c);
    assert_eq!(back.items().name(), "catalog.items");
    assert!(back.items().breaker().is_some());
}

/// Uses nothing but the derive, on an already-wrapped field.
#[derive(::map_wrapper::GuardedMap)]
#[guard(audit = "hygiene")]
struct Wrapped<Q> {
    m: ::map_wrapper::MapWrapper<Q, u8>,
}

#[test]
fn generated_code_ignores_the_names_in_scope() {
    let inv: Inventory<'_, u16> = Inventory::new();
    assert!(inv.stock_insert("bolt", 3).is_ok());
    assert!(matches!(inv.stock_get_cloned("bolt"), std::result::Result::Ok(std::option::Option::Some(3))));
    assert!(inv.tags_insert(7, vec!["steel".to_string()]).is_ok());
    assert!(inv.type_insert(1, 2).is_ok());
    // The HashMap-shaped accessors: entry, extend, retain, keys, values, iter, clear, is_empty.
    assert!(inv.stock_entry("bolt").or_insert_then(0, |n| *n += 1).is_ok());
    assert!(inv.stock_extend([("nut", 1), ("washer", 9)]).is_ok_and(|n| n == 2));
    assert!(inv.stock_retain(|k, _| *k != "washer").is_ok_and(|n| n == 1));
    assert!(inv.stock_keys().is_ok_and(|k| k.count() == 2));
    assert!(inv.stock_values().is_ok_and(|v| v.sum::<u32>() == 5));
    assert!(inv.tags_iter().is_ok_and(|mut i| i.next().is_some_and(|(k, _)| k == 7)));
    assert!(inv.type_clear().is_ok_and(|n| n == 1));
    assert!(inv.type_is_empty().is_ok_and(|empty| empty));
    assert_eq!(inv.r#type().name(), "Inventory.type");
    assert_eq!(inv.note, 0);
    let trail = ::map_wrapper::audit::MemorySink::new();
    let audited = Inventory::<'static, u16>::with_auditor(&::map_wrapper::audit::Auditor::new(trail.clone()));
    assert!(audited.is_ok_and(|inv| inv.stock_insert("nut", 1).is_ok()));
    assert_eq!(trail.len(), 1);
    let w: Wrapped<u64> = <Wrapped<u64> as std::default::Default>::default();
    assert!(w.m_insert(1, 1).is_ok());
    assert_eq!(w.m().name(), "hygiene.m");
}

#[test]
fn a_struct_inside_a_function_works_too() {
    #[::map_wrapper::guarded_map]
    struct Local {
        m: HashMap<u8, u8>,
    }
    assert_eq!(Local::new().m_len().ok(), std::option::Option::Some(0));
}
