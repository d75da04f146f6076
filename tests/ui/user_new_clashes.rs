// A user's own `new` next to the generated one: rustc's duplicate-definition error points at
// the attribute; `#[guarded_map(no_new)]` (see user_new_with_no_new in pass/) is the fix.
use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
struct Config {
    values: HashMap<String, String>,
}

impl Config {
    fn new(_name: &str) -> Self {
        Self::default()
    }
}

fn main() {}
