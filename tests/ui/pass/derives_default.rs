// `#[derive(Default)]` next to `#[guarded_map]`: taken out of the derive, and `Default` is the
// generated one (maps configured as declared), not a derived one (default settings).
use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(timeout_ms = 123)]
#[derive(Debug, Default)]
struct Billing {
    invoices: HashMap<u64, String>,
}

fn main() {
    let b = Billing::default();
    assert_eq!(b.invoices().name(), "Billing.invoices");
    assert_eq!(b.invoices().default_timeout(), std::time::Duration::from_millis(123));
    assert_eq!(format!("{b:?}"), "Billing { invoices: {} }");
}
