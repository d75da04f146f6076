// Values that are not `Clone` are fine: only `field_get_cloned` needs `Clone`.
use std::collections::HashMap;
use std::sync::Mutex;
use map_wrapper::guarded_map;

#[guarded_map]
struct Jobs {
    running: HashMap<u64, Mutex<String>>,
}

fn main() {
    let jobs = Jobs::new();
    jobs.running_insert(1, Mutex::new("backup".into())).unwrap();
    let _ = jobs.running_get_cloned(&1);
}
