// Values that are not `Clone` and fields that are not `Default`: the struct compiles, and
// every accessor that does not need those traits works.
use std::collections::HashMap;
use std::sync::Mutex;

use map_wrapper::{guarded_map, MapWrapper};

struct Clock(u64);

#[guarded_map]
struct Jobs {
    running: HashMap<u64, Mutex<String>>,
    clock: Clock,
}

fn main() -> Result<(), map_wrapper::MapError> {
    // No `new()` without `Clock: Default`: build it by hand.
    let jobs = Jobs { running: MapWrapper::new(), clock: Clock(7) };
    jobs.running_insert(1, Mutex::new("backup".into()))?;
    let guard = jobs.running_get(&1)?.expect("present");
    assert_eq!(*guard.lock().unwrap(), "backup");
    drop(guard);
    assert_eq!(jobs.running_update(&1, |m| m.get_mut().unwrap().push('!'))?, Some(()));
    assert!(jobs.running_remove(&1)?.is_some());
    assert_eq!(jobs.clock.0, 7);
    Ok(())
}
