//! `Serialize` / `Deserialize` for [`MapWrapper`], behind the `serde` feature.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Error as _, Serialize, SerializeMap, Serializer};

use crate::MapWrapper;

impl<K, V, S> Serialize for MapWrapper<K, V, S>
where
    K: Serialize + Hash + Eq,
    V: Serialize,
    S: BuildHasher,
{
    /// Serializes the map as a map, consistently: every shard is read-locked (in order, under
    /// the map's default timeout) for the duration, so writers wait. A lock that cannot be
    /// taken in time is a serialization error carrying the [`MapError`](crate::MapError)
    /// message.
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let shards = self.read_all_for_serde().map_err(Ser::Error::custom)?;
        let len = shards.iter().map(|s| s.table.len()).sum();
        let mut map = serializer.serialize_map(Some(len))?;
        for (k, v) in shards.iter().flat_map(|s| s.table.iter()) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K, V, S> Deserialize<'de> for MapWrapper<K, V, S>
where
    K: Deserialize<'de> + Hash + Eq,
    V: Deserialize<'de>,
    S: BuildHasher + Default,
{
    /// Deserializes a map into a new `MapWrapper` with the default configuration (name,
    /// shards and timeout are not part of the serialized form).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Types only; `fn` keeps the visitor `Send`/`Sync` whatever K, V and S are.
        type Marker<K, V, S> = PhantomData<fn() -> (K, V, S)>;
        struct Pairs<K, V, S>(Marker<K, V, S>);
        impl<'de, K, V, S> Visitor<'de> for Pairs<K, V, S>
        where
            K: Deserialize<'de> + Hash + Eq,
            V: Deserialize<'de>,
            S: BuildHasher + Default,
        {
            type Value = MapWrapper<K, V, S>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::with_capacity(access.size_hint().unwrap_or(0).min(4096));
                while let Some(pair) = access.next_entry()? {
                    pairs.push(pair);
                }
                Ok(pairs.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Pairs(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use crate::MapWrapper;

    #[test]
    fn round_trips_through_json() {
        let m: MapWrapper<String, u32> = [("a".to_string(), 1), ("b".to_string(), 2)].into_iter().collect();
        let json = serde_json::to_string(&m).unwrap();
        let back: MapWrapper<String, u32> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.get_cloned("b").unwrap(), Some(2));
        assert_eq!(back.len().unwrap(), 2);
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<MapWrapper<String, u32>>("[1,2]").is_err());
        assert!(serde_json::from_str::<MapWrapper<String, u32>>("{\"a\": \"x\"}").is_err());
    }
}
