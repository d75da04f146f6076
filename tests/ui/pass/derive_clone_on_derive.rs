// `#[derive(GuardedMap)]` on a struct of `MapWrapper` fields: `Clone` and `PartialEq` derive
// as usual, because `MapWrapper` implements them (a copy keeps the settings and entries, not
// the auditor; equality compares contents).
use map_wrapper::{GuardedMap, MapWrapper};

#[derive(GuardedMap, Clone, PartialEq)]
struct Book {
    bids: MapWrapper<u32, u64>,
}

fn main() {
    let book = Book { bids: MapWrapper::builder().name("bids").build().unwrap() };
    book.bids.insert(1, 100).unwrap();
    let copy = book.clone();
    assert!(copy == book);
    assert_eq!(copy.bids.name(), "bids");
    copy.bids.insert(2, 5).unwrap();
    assert!(copy != book);
}
