// Values that are not `Serialize` are fine without an auditor; `with_auditor` says what is
// missing, and `#[guard(redact)]` is the way to audit such a map.
use std::collections::HashMap;
use map_wrapper::audit::{Auditor, MemorySink};
use map_wrapper::guarded_map;

struct Session;

#[guarded_map]
struct Sessions {
    live: HashMap<u64, Session>,
    #[guard(redact)]
    redacted: HashMap<u64, Session>,
}

fn main() {
    let plain = Sessions::new();
    plain.live_insert(1, Session).unwrap();
    let _ = Sessions::with_auditor(&Auditor::new(MemorySink::new()));
}
