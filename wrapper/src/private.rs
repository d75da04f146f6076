//! Not public API: the names that `#[guarded_map]` and `#[derive(GuardedMap)]` expansions
//! use, reached by absolute path (`::map_wrapper::__private::…`) so that a user's own
//! `Result`, `Ok`, `Default` or `mod core` cannot change what generated code means (as
//! thiserror's `__private`). May change in any release.

pub use core::borrow::Borrow;
pub use core::clone::Clone;
pub use core::cmp::{Eq, PartialEq};
pub use core::default::Default;
pub use core::fmt::{Debug, Formatter, Result as FmtResult};
pub use core::hash::{BuildHasher, Hash};
pub use core::iter::IntoIterator;
pub use core::marker::{PhantomData, Sized};
pub use core::ops::{FnMut, FnOnce};
pub use core::option::Option;
pub use core::result::Result;
pub use core::time::Duration;
pub use std::collections::hash_map::RandomState;
pub use std::vec::IntoIter as VecIntoIter;

pub use serde::{Deserialize, Deserializer, Serialize};

pub use crate::audit::{Auditor, ValuePolicy};
pub use crate::breaker::{BreakerConfig, OpenWait, SlidingWindow};
pub use crate::{BuildError, Entry, Iter, MapError, MapWrapper, OpContext, Ref};

use core::fmt;
use std::collections::HashMap;

/// The key, value and hasher types of a map type, for a field marked `#[guard(map)]` whose
/// type the macro cannot take apart (a type alias, `use HashMap as Map`).
#[diagnostic::on_unimplemented(
    message = "`#[guard(map)]` needs a `HashMap<K, V, S>` or `MapWrapper<K, V, S>`, and `{Self}` is neither",
    label = "not a `HashMap` or `MapWrapper`",
    note = "remove `#[guard(map)]` to leave this field as it is"
)]
pub trait MapParts {
    /// `K`.
    type Key;
    /// `V`.
    type Value;
    /// `S`.
    type Hasher;
}

impl<K, V, S> MapParts for HashMap<K, V, S> {
    type Key = K;
    type Value = V;
    type Hasher = S;
}

impl<K, V, S> MapParts for MapWrapper<K, V, S> {
    type Key = K;
    type Value = V;
    type Hasher = S;
}

/// The bound of the generated `<field>_get_mut`, which no type meets: a call is a compile error
/// that says what to write instead (HashMap's `get_mut` hands out a `&mut V`, which would
/// outlive the map's lock and escape its audit trail).
#[diagnostic::on_unimplemented(
    message = "a guarded map has no `get_mut`: a `&mut V` would outlive the map's lock and escape its audit trail",
    label = "no `&mut V` out of a guarded map",
    note = "change the value in place with `<field>_update(&key, |v| ...)?`, or insert or change it with `<field>_entry(key).or_insert_then(default, |v| ...)?` (one lock, one audit record)"
)]
pub trait NoGetMut {}

/// The bound of the generated `<field>_iter_mut`, which no type meets (see [`NoGetMut`]).
#[diagnostic::on_unimplemented(
    message = "a guarded map has no `iter_mut`: a `&mut V` would outlive the map's lock and escape its audit trail",
    label = "no `&mut V` out of a guarded map",
    note = "to change every value: `for k in <field>_keys()? {{ <field>_update(&k, |v| ...)?; }}`; to drop entries: `<field>_retain(|k, v| ...)?`"
)]
pub trait NoIterMut {}

/// The bound of the generated `<field>_values_mut`, which no type meets (see [`NoGetMut`]).
#[diagnostic::on_unimplemented(
    message = "a guarded map has no `values_mut`: a `&mut V` would outlive the map's lock and escape its audit trail",
    label = "no `&mut V` out of a guarded map",
    note = "to change every value: `for k in <field>_keys()? {{ <field>_update(&k, |v| ...)?; }}`; to drop entries: `<field>_retain(|k, v| ...)?`"
)]
pub trait NoValuesMut {}

/// HashMap's iterators of `&mut V`, the declared return types of the refused accessors (so
/// that the code around a refused call type-checks, and the refusal is its only error).
pub use std::collections::hash_map::{IterMut, ValuesMut};

/// Deserializes a map's entries (as serde's map form, what `MapWrapper`'s `Serialize` writes)
/// into `map`, which the generated code built with the field's declared settings: a guarded
/// struct's maps come back from serde named and configured as declared, not with the default
/// configuration. Does not need the `serde` feature.
pub fn deserialize_into<'de, D, K, V, S>(
    deserializer: D,
    map: MapWrapper<K, V, S>,
) -> Result<MapWrapper<K, V, S>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Hash + Eq,
    V: Deserialize<'de>,
    S: BuildHasher,
{
    // Loaded as the owner of the new map: no lock, no deadline, no ambient context, no record.
    serde::de::DeserializeSeed::deserialize(crate::builder::Loader(map), deserializer)
}

/// Gives `map` the audit side of `audited` (a map built from the same declaration with an
/// auditor): `map` keeps its entries, and records every change from now on.
pub fn attach_audit<K, V, S>(map: &mut MapWrapper<K, V, S>, mut audited: MapWrapper<K, V, S>) {
    map.set_audit(audited.audit.take());
}

/// A map's contents for `Debug`, as a `HashMap` shows them (`{k: v, …}`), bounded and never
/// waiting: each shard is read only if its lock is free at once (one attempt, no wait); the
/// output says how many entries it leaves out, and how many shards were held for writing.
pub struct DebugContents<'a, K, V, S>(pub &'a MapWrapper<K, V, S>);

/// The most entries `DebugContents` shows.
pub const DEBUG_MAX_ENTRIES: usize = 64;

impl<K, V, S> fmt::Debug for DebugContents<'_, K, V, S>
where
    K: fmt::Debug + Hash + Eq,
    V: fmt::Debug,
    S: BuildHasher,
{
    /// Shard by shard, each read only if its lock is free at once (never waiting); stops
    /// after `DEBUG_MAX_ENTRIES` entries; a shard held for writing shows as `<locked>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.0;
        let mut out = f.debug_map();
        let (mut shown, mut more, mut locked) = (0usize, 0usize, 0usize);
        for (idx, shard) in map.shards.iter().enumerate() {
            let Some(table) = shard.try_read_recursive() else {
                locked += 1;
                continue;
            };
            if shown >= DEBUG_MAX_ENTRIES {
                more += table.len();
                continue;
            }
            // A `Debug` of a key or value that calls back into the map is refused, not hung.
            let _held = crate::deadlock::HeldMark::new(map.id, idx, false);
            for (k, v) in table.iter() {
                if shown < DEBUG_MAX_ENTRIES {
                    out.entry(k, v);
                    shown += 1;
                } else {
                    more += 1;
                }
            }
        }
        if more > 0 {
            out.key(&format_args!("..")).value(&format_args!("{more} more"));
        }
        if locked > 0 {
            out.key(&format_args!("<locked>")).value(&format_args!("{locked} shard(s) held for writing"));
        }
        out.finish()
    }
}

/// `into` (a new map built from the same declaration) filled with a consistent copy of
/// `from`'s entries: the generated `try_clone`.
pub fn clone_contents<K, V, S>(
    from: &MapWrapper<K, V, S>,
    into: MapWrapper<K, V, S>,
) -> Result<MapWrapper<K, V, S>, MapError>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    into.extend(from.snapshot()?)?;
    Ok(into)
}

/// The generated `Clone::clone`: `try_clone`'s copy, or a panic naming why it could not read.
#[track_caller]
pub fn cloned<T>(copy: Result<T, MapError>) -> T {
    match copy {
        Ok(copy) => copy,
        Err(e) => panic!("cannot clone a #[guarded_map] struct: {e} (try_clone returns this error instead)"),
    }
}

/// Whether two maps hold the same entries (the generated `PartialEq`).
///
/// # Panics
///
/// When a map cannot be read by its timeout, or is write-held by this thread (`WouldDeadlock`).
#[track_caller]
pub fn same_contents<K, V, S>(a: &MapWrapper<K, V, S>, b: &MapWrapper<K, V, S>) -> bool
where
    K: Hash + Eq,
    V: PartialEq,
    S: BuildHasher,
{
    match a.try_eq(b) {
        Ok(equal) => equal,
        Err(e) => panic!("cannot compare #[guarded_map] structs: {e}"),
    }
}

/// The map a generated constructor built from settings the macro checked.
///
/// The `Err` arm cannot be reached from user input: the macro passes `build()` only literal
/// settings it has checked at compile time against the same rules `Builder::config` applies
/// (name 1 to `MAX_NAME_LEN` bytes without control characters, shards a power of two up to
/// `MAX_SHARDS`, any timeout (0: never wait), a given slow threshold from 1 ms to below a
/// non-zero timeout), and leaves the rest to defaults that are always valid (`default_shards()`, the
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
