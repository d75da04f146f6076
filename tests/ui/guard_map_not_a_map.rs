use std::collections::{BTreeMap, HashMap};
use map_wrapper::guarded_map;

type Ordered = BTreeMap<u8, u8>;

#[guarded_map]
struct Shapes {
    ok: HashMap<u8, u8>,
    // An alias of something that is not a `HashMap`: the compiler says so at the type.
    #[guard(map)]
    ordered: Ordered,
    // Not an alias: the macro says what it is.
    #[guard(redact)]
    tree: BTreeMap<u8, u8>,
    #[guard(digest)]
    maybe: Option<HashMap<u8, u8>>,
    #[guard(map)]
    pair: (u8, u8),
}

fn main() {}
