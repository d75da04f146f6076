use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(timeout_ms = "200", audit = billing, shards = 4u8, slow_ms = -1)]
struct Billing {
    #[guard(redact = true, name = 5)]
    cards: HashMap<u64, String>,
}

fn main() {}
