use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
struct Billing {
    invoices: HashMap<u64>,
    cards: std::collections::HashMap,
    totals: sharded::HashMap<u64, u64, std::collections::hash_map::RandomState, u8>,
}

mod sharded {
    /// A map of four type parameters (a hypothetical sharded map with a tag type).
    pub type HashMap<K, V, S, T> = std::collections::HashMap<K, (V, T), S>;
}

fn main() {}
