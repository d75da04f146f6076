use map_wrapper::{GuardedMap, MapWrapper};

#[derive(GuardedMap, Clone, PartialEq)]
struct Book {
    bids: MapWrapper<u32, u64>,
}

fn main() {}
