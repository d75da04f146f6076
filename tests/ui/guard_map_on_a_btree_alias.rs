// `#[guard(map)]` on an alias of a map type `MapWrapper` cannot stand for: the compiler says so
// at the field's type.
use std::collections::{BTreeMap, HashMap};
use map_wrapper::guarded_map;

type Ordered = BTreeMap<u8, u8>;

#[guarded_map]
struct Shapes {
    ok: HashMap<u8, u8>,
    #[guard(map)]
    ordered: Ordered,
}

fn main() {}
