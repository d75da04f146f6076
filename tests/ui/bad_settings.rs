use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(shards = 12, timeout_ms = 0, audit = "")]
struct Billing {
    invoices: HashMap<u64, String>,
    #[guard(name = "bad\nname")]
    cards: HashMap<u64, String>,
}

#[guarded_map(timeout_ms = 100, slow_ms = 100)]
struct Slow {
    m: HashMap<u8, u8>,
}

#[guarded_map(slow_ms = 0)]
struct ZeroSlow {
    m: HashMap<u8, u8>,
}

#[guarded_map(timeout_ms = 100, slow_ms = 40)]
struct FieldBelowSlow {
    m: HashMap<u8, u8>,
    #[guard(timeout_ms = 30)]
    n: HashMap<u8, u8>,
}

#[guarded_map(shards = 131072)]
struct TooManyShards {
    m: HashMap<u8, u8>,
}

#[guarded_map(max_entries = 0)]
struct NoRoom {
    m: HashMap<u8, u8>,
    #[guard(max_entries = 0)]
    n: HashMap<u8, u8>,
}

fn main() {}
