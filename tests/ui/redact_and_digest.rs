use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
struct Billing {
    #[guard(redact, digest)]
    cards: HashMap<u64, String>,
}

fn main() {}
