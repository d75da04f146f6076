use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
#[derive(Debug, Default)]
struct Billing {
    invoices: HashMap<u64, String>,
}

fn main() {}
