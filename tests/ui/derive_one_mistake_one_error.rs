// `#[derive(GuardedMap)]` as `#[guarded_map]`: one mistake in its options is one error; the
// code that uses the constructor and accessors reports nothing more.
use map_wrapper::{GuardedMap, MapError, MapWrapper};

#[derive(GuardedMap)]
#[guard(max_entries = 0)]
pub struct Store {
    pub orders: MapWrapper<u64, String>,
}

fn use_it() -> Result<usize, MapError> {
    let store = Store::new();
    let _ = Store::default();
    store.orders_insert(1, "one".to_string())?;
    store.orders_entry(2).or_insert_then(String::new(), |v| v.push('x'))?;
    let _: Vec<u64> = store.orders_keys()?.collect();
    let _ = store.orders().len();
    store.orders_len()
}

fn main() {
    let _ = use_it();
}
