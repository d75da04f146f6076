// HashMap's `get_mut`, `iter_mut` and `values_mut` would hand out a `&mut V` past the map's
// lock and its audit trail: each is refused with an error that says what to write instead, and
// the code around the call type-checks (one mistake, one error).
use std::collections::HashMap;
use map_wrapper::{guarded_map, MapError};

#[guarded_map]
struct Book {
    orders: HashMap<u64, u32>,
}

fn port(book: &Book) -> Result<(), MapError> {
    if let Some(qty) = book.orders_get_mut(&1)? {
        *qty -= 1;
    }
    for (_, qty) in book.orders_iter_mut()? {
        *qty += 1;
    }
    for qty in book.orders_values_mut()? {
        *qty = 0;
    }
    Ok(())
}

fn main() {
    let _ = port(&Book::new());
}
