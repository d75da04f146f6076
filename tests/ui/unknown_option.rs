use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(timeout = 200)]
struct Billing {
    #[guard(redakt)]
    invoices: HashMap<u64, String>,
}

fn main() {}
