use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
struct Billing {
    #[guard]
    invoices: HashMap<u64, String>,
    #[guard = "redact"]
    cards: HashMap<u64, String>,
}

fn main() {}
