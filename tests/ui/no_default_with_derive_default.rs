use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(no_default)]
#[derive(Default)]
struct Config {
    values: HashMap<String, String>,
}

#[guarded_map(no_new, no_default)]
struct Neither {
    values: HashMap<String, String>,
}

fn main() {
    // Stand-ins: the mistakes above are the only errors, not one more per call site.
    let _ = Config::new();
}
