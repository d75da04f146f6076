// One mistake in the attribute is one error: the struct is still there, with stand-ins for its
// constructor and accessors, so the code that uses them reports nothing more.
use std::collections::HashMap;
use map_wrapper::{guarded_map, MapError};

#[guarded_map(shards = 12)]
pub struct Store {
    pub orders: HashMap<u64, String>,
}

fn use_it() -> Result<usize, MapError> {
    let store = Store::new();
    let _ = Store::default();
    store.orders_insert(1, "one".to_string())?;
    let _: Option<String> = store.orders_get_cloned(&1)?;
    let _ = store.orders_update(&1, |v| v.len())?;
    let _ = store.orders().len();
    store.orders_entry(2).or_insert_then(String::new(), |v| v.push('x'))?;
    store.orders_extend([(3, "three".to_string())])?;
    store.orders_retain(|k, v| *k > 1 && !v.is_empty())?;
    let _: Vec<u64> = store.orders_keys()?.collect();
    let _: Vec<String> = store.orders_values()?.collect();
    for (_k, _v) in store.orders_iter()? {}
    let _: bool = store.orders_is_empty()?;
    store.orders_clear()?;
    store.orders_len()
}

fn main() {
    let _ = use_it();
}
