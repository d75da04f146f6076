use std::collections::HashMap;

use map_wrapper::guarded_map;

#[guarded_map]
struct Interned<'a, 'b: 'a> {
    names: HashMap<&'a str, &'b str>,
    source: &'a str,
}

fn main() -> Result<(), map_wrapper::MapError> {
    let owned = String::from("alice");
    let interned = Interned::new();
    interned.names_insert(owned.as_str(), "A")?;
    assert_eq!(interned.names_get_cloned(owned.as_str())?, Some("A"));
    assert_eq!(interned.source, "");
    Ok(())
}
