use map_wrapper::{GuardedMap, MapWrapper};

#[derive(GuardedMap)]
struct Billing {
    invoices: MapWrapper<u64, String>,
    #[guard(redact)]
    label: String,
}

fn main() {}
