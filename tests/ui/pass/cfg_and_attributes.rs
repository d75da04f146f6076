use std::collections::HashMap;

use map_wrapper::guarded_map;

#[guarded_map]
#[derive(Debug)]
#[allow(non_camel_case_types)]
struct billing_state {
    #[cfg(any())]
    never: HashMap<u64, String>,
    #[cfg(any())]
    never_plain: a_crate_that_is_not_there::Type,
    #[cfg(all())]
    #[allow(unused)]
    always: HashMap<u64, String>,
    r#type: HashMap<u8, u8>,
    wrapped: map_wrapper::MapWrapper<u8, u8>,
}

fn main() {
    let b = billing_state::new();
    assert!(b.always_len().is_ok());
    assert!(b.type_insert(1, 1).is_ok());
    assert_eq!(b.wrapped().name(), "billing_state.wrapped");
    assert!(b.wrapped_insert(1, 1).is_ok());
    assert_eq!(b.always().name(), "billing_state.always");
    assert!(format!("{b:?}").starts_with("billing_state"));
}
