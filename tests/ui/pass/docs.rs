//! A public struct in a crate that denies missing docs: every generated item is documented.
#![deny(missing_docs)]

use std::collections::HashMap;

use map_wrapper::guarded_map;

/// Billing state.
#[guarded_map(audit = "billing")]
pub struct Billing {
    /// Open invoices.
    pub invoices: HashMap<u64, String>,
    /// Card tokens; never written to the audit trail.
    #[guard(redact)]
    pub cards: HashMap<u64, String>,
    /// A field without a map.
    pub label: String,
}

fn main() {
    let b = Billing::new();
    assert!(b.invoices_len().is_ok());
}
