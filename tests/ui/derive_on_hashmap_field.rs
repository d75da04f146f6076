use std::collections::HashMap;
use map_wrapper::{GuardedMap, MapWrapper};

#[derive(GuardedMap)]
struct Billing {
    invoices: MapWrapper<u64, String>,
    #[guard(redact)]
    cards: HashMap<u64, String>,
}

fn main() {}
