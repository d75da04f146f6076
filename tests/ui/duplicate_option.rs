use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(timeout_ms = 200, timeout_ms = 300)]
struct Billing {
    #[guard(redact, redact)]
    cards: HashMap<u64, String>,
    #[guard(name = "a")]
    #[guard(name = "b")]
    invoices: HashMap<u64, String>,
}

fn main() {}
