use std::collections::HashMap;
use map_wrapper::guarded_map;

#[guarded_map(breaker(failure_rate = 0, window = 10, open_ms = 0, colour = 1))]
struct Service {
    a: HashMap<u8, u8>,
    #[guard(breaker(slow_rate = 101, min_calls = 200))]
    b: HashMap<u8, u8>,
    #[guard(breaker = 5)]
    c: HashMap<u8, u8>,
    #[guard(breaker(window = 0, min_calls = 0))]
    d: HashMap<u8, u8>,
}

fn main() {
    let s = Service::new();
    let _ = s.a();
}
