use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
struct Billing {
    invoices: HashMap<u64, String>,
    #[guard(skip, redact, timeout_ms = 100)]
    cache: HashMap<u64, String>,
}

fn main() {}
