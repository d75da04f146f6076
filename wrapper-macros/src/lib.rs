//! Procedural macros of `map-wrapper`. Use them through the `map-wrapper` crate, which
//! re-exports them; this crate's paths are not a stable interface.
