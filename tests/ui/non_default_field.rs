use std::collections::HashMap;
use map_wrapper::guarded_map;

struct Clock;

#[guarded_map]
struct Billing {
    invoices: HashMap<u64, String>,
    clock: Clock,
}

fn main() {}
