//! Not public API: the names that `#[guarded_map]` and `#[derive(GuardedMap)]` expansions
//! use, reached by absolute path (`::map_wrapper::__private::…`) so that a user's own
//! `Result`, `Ok`, `Default` or `mod core` cannot change what generated code means (as
//! thiserror's `__private`). May change in any release.

pub use core::borrow::Borrow;
pub use core::clone::Clone;
pub use core::cmp::Eq;
pub use core::default::Default;
pub use core::hash::{BuildHasher, Hash};
pub use core::marker::{PhantomData, Sized};
pub use core::ops::FnOnce;
pub use core::option::Option;
pub use core::result::Result;
pub use core::time::Duration;

pub use serde::Serialize;

pub use crate::audit::{Auditor, ValuePolicy};
pub use crate::{BuildError, MapError, MapWrapper, Ref};

/// The map a generated constructor built from settings the macro checked.
///
/// The `Err` arm cannot be reached from user input: the macro passes `build()` only literal
/// settings it has checked at compile time against the same rules `Builder::config` applies
/// (name 1 to `MAX_NAME_LEN` bytes without control characters, shards a power of two up to
/// `MAX_SHARDS`, timeout at least 1 ms, a given slow threshold from 1 ms to below the
/// timeout), and leaves the rest to defaults that are always valid (`default_shards()`, the
/// slow threshold derived from the timeout). Reaching it would mean the macro and the builder
/// disagree, a bug in this crate, which `tests/macro_behaviour.rs` and the UI pass cases at
/// the limits guard against.
#[inline]
pub fn built_checked<K, V, S>(built: Result<MapWrapper<K, V, S>, BuildError>) -> MapWrapper<K, V, S> {
    match built {
        Ok(map) => map,
        Err(e) => unreachable!("map-wrapper bug: #[guarded_map] accepted settings that build() refuses: {e}"),
    }
}

/// The shard lock, reachable by the benchmarks (`benches/lock.rs`) and doctests.
pub mod lock {
    pub use crate::lock::*;
}
