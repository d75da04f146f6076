use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
#[guard(timeout_ms = 200)]
struct Billing {
    invoices: HashMap<u64, String>,
}

fn main() {}
