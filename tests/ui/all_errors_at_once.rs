// Three mistakes, three errors, and nothing more: the struct is still emitted as written, so
// the code that uses it does not add "cannot find type" errors.
use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(timeout_ms = "fast", shards = 3)]
struct Billing {
    #[guard(colour = "red")]
    invoices: HashMap<u64, String>,
}

fn total(b: &Billing) -> usize {
    b.invoices.len()
}

fn main() {
    let _ = total;
}
