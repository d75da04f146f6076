use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(no_new, audit = "cfg")]
struct Config {
    values: HashMap<String, String>,
}

impl Config {
    fn new(name: &str) -> Self {
        let c = Self::default();
        c.values_insert("name".to_string(), name.to_string()).unwrap();
        c
    }
}

fn main() {
    let c = Config::new("x");
    assert_eq!(c.values().name(), "cfg.values");
    assert_eq!(c.values_get_cloned("name").unwrap().as_deref(), Some("x"));
}
