// A user's own `impl Default` next to the generated one: `#[guarded_map(no_default)]` is the fix.
use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map]
struct Config {
    values: HashMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

fn main() {}
