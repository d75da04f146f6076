use std::collections::HashMap;

use map_wrapper::guarded_map;

#[guarded_map(audit = "payments")]
struct Billing {
    invoices: HashMap<u64, String>,
    #[guard(name = "payments.cards.v2", digest, timeout_ms = 900)]
    cards: HashMap<u64, String>,
    #[guard(name = "Billing with spaces and ünïcode")]
    notes: HashMap<u64, String>,
}

fn main() {
    let b = Billing::new();
    assert_eq!(b.invoices().name(), "payments.invoices");
    assert_eq!(b.cards().name(), "payments.cards.v2");
    assert_eq!(b.cards().default_timeout(), std::time::Duration::from_millis(900));
    assert_eq!(b.notes().name(), "Billing with spaces and ünïcode");
}
