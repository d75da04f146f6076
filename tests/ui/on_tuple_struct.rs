use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
struct Billing(HashMap<u64, String>);

fn main() {}
