mod billing {
    use std::collections::HashMap;

    #[map_wrapper::guarded_map]
    pub struct Billing {
        pub invoices: HashMap<u64, String>,
        pub(crate) drafts: HashMap<u64, String>,
        cards: HashMap<u64, String>,
    }

    impl Billing {
        /// The module itself can use the private accessors.
        pub fn add_card(&self, id: u64, token: &str) -> Result<(), map_wrapper::MapError> {
            self.cards_insert(id, token.to_string()).map(drop)
        }
    }
}

fn main() -> Result<(), map_wrapper::MapError> {
    let b = billing::Billing::new();
    b.invoices_insert(1, "coffee".into())?;
    b.drafts_insert(2, "tea".into())?;
    b.add_card(3, "tok")?;
    assert_eq!(b.invoices_len()? + b.drafts_len()?, 2);
    Ok(())
}
