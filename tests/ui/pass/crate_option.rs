// A crate that re-exports map_wrapper under another path, as a framework would.
mod framework {
    pub use map_wrapper as storage;
    pub use map_wrapper::guarded_map;
}

use std::collections::HashMap;

#[framework::guarded_map(crate = "framework::storage", timeout_ms = 250)]
struct Billing {
    invoices: HashMap<u64, String>,
}

fn main() {
    let b = Billing::new();
    let map: &framework::storage::MapWrapper<u64, String> = b.invoices();
    assert_eq!(map.default_timeout(), std::time::Duration::from_millis(250));
}
