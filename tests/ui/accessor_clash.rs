use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
struct Billing {
    invoices: HashMap<u64, String>,
    invoices_get: HashMap<u64, String>,
    new: HashMap<u64, String>,
    orders: HashMap<u64, String>,
    orders_keys: HashMap<u64, String>,
}

fn main() {}
