use map_wrapper::{GuardedMap, MapWrapper};

#[derive(Default, GuardedMap)]
struct Billing {
    invoices: MapWrapper<u64, String>,
}

fn main() {}
