mod billing {
    use std::collections::HashMap;

    #[map_wrapper::guarded_map]
    pub struct Billing {
        pub invoices: HashMap<u64, String>,
        cards: HashMap<u64, String>,
    }
}

fn main() {
    let b = billing::Billing::new();
    b.invoices_insert(1, "ok".into()).unwrap();
    b.cards_insert(1, "hidden".into()).unwrap();
}
