// A field without `Default` does not break the struct: only `new()` and `Default` need it,
// and calling them says which field's type is missing it.
use std::collections::HashMap;
use map_wrapper::guarded_map;

struct Clock;

#[guarded_map]
struct Billing {
    invoices: HashMap<u64, String>,
    clock: Clock,
}

fn main() {
    let _ = Billing::new();
}
