use std::collections::HashMap;

use map_wrapper::{guarded_map, GuardedMap, MapWrapper};

#[guarded_map]
struct Billing {
    invoices: HashMap<u64, String>,
    #[guard(skip)]
    scratch: HashMap<u64, String>,
    #[guard(skip)]
    odd: alias::HashMap<u64>, // a skipped field is not inspected, even with one type argument
}

#[derive(GuardedMap)]
struct Wrapped {
    invoices: MapWrapper<u64, String>,
    #[guard(skip)]
    raw: HashMap<u64, String>,
    #[guard(skip)]
    unguarded: MapWrapper<u64, String>,
}

mod alias {
    /// A `HashMap` of one type parameter.
    pub type HashMap<K> = std::collections::HashMap<K, ()>;
}

fn main() {
    let mut b = Billing::new();
    // Still a plain HashMap: no Result, no accessors.
    b.scratch.insert(1, "x".into());
    let _: &HashMap<u64, ()> = &b.odd;
    assert!(b.invoices_len().is_ok());

    let w = Wrapped::new();
    let _: &HashMap<u64, String> = &w.raw;
    assert!(w.unguarded.name().starts_with("map-"));
}
