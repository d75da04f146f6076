use std::collections::HashMap;
use map_wrapper::guarded_map;

struct Key;

#[guarded_map]
struct Billing {
    invoices: HashMap<Key, String>,
}

fn main() {}
