use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(audit = "billing")]
struct Billing {
    invoices: HashMap<u64, String>,
    #[guard(name = "billing.invoices")]
    archived: HashMap<u64, String>,
}

fn main() {}
