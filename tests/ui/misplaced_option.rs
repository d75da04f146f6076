use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(redact)]
struct Billing {
    #[guard(shards = 4)]
    invoices: HashMap<u64, String>,
}

fn main() {}
