use std::collections::HashMap;

use map_wrapper::audit::{Auditor, MemorySink};
use map_wrapper::guarded_map;

// Borrowed keys and values, two lifetimes with a bound between them, and two plain fields
// whose types differ only in their lifetimes.
#[guarded_map]
struct Interned<'a, 'b: 'a> {
    names: HashMap<&'a str, &'b str>,
    source: &'a str,
    origin: &'b str,
}

fn main() -> Result<(), map_wrapper::MapError> {
    let owned = String::from("alice");
    let interned = Interned::new();
    interned.names_insert(owned.as_str(), "A")?;
    assert_eq!(interned.names_get_cloned(owned.as_str())?, Some("A"));
    assert_eq!((interned.source, interned.origin), ("", ""));

    // Audit records outlive the operation: an audited struct borrows for 'static.
    let trail = MemorySink::new();
    let audited: Interned<'static, 'static> = Interned::with_auditor(&Auditor::new(trail.clone()))?;
    audited.names_insert("bob", "B")?;
    assert_eq!(trail.records()[0].map.as_deref(), Some("Interned.names"));
    Ok(())
}
