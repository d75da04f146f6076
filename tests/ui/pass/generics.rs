use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasherDefault, Hash};

use map_wrapper::{guarded_map, GuardedMap, MapWrapper};

// Type parameters, bounds in a where clause, a const parameter, and parameters named like the
// accessors' own (Q, R, F).
#[guarded_map(timeout_ms = 100)]
struct Cache<Q, R: Clone, F, const N: usize>
where
    Q: Hash + Eq,
{
    by_key: HashMap<Q, R>,
    extra: F,
    fixed: [u8; N],
}

// A map with its own hasher keeps it.
#[guarded_map]
struct Hashed {
    ids: HashMap<u64, u64, BuildHasherDefault<DefaultHasher>>,
}

#[derive(GuardedMap)]
struct Index<K: Hash + Eq + Clone, V: Default> {
    entries: MapWrapper<K, V>,
    fallback: V,
}

fn main() -> Result<(), map_wrapper::MapError> {
    let cache: Cache<String, Vec<u8>, u32, 4> = Cache::new();
    cache.by_key_insert("a".into(), vec![1])?;
    assert_eq!(cache.by_key_get_cloned("a")?, Some(vec![1]));
    assert_eq!(cache.by_key_update("a", |v| v.len())?, Some(1));
    assert_eq!((cache.extra, cache.fixed), (0, [0; 4]));

    let index: Index<u64, String> = Index::default();
    index.entries_insert(1, "one".into())?;
    assert_eq!(index.entries_get_cloned(&1)?.as_deref(), Some("one"));
    assert_eq!(index.fallback, "");

    let hashed = Hashed::new();
    hashed.ids_insert(1, 2)?;
    let _: &BuildHasherDefault<DefaultHasher> = hashed.ids().hasher();
    assert_eq!(hashed.ids_get_cloned(&1)?, Some(2));
    Ok(())
}
