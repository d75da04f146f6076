//! [`Op`]: the name of every operation a map runs, in one place. Statistics count by it, errors
//! and audit records name it; its [`as_str`](Op::as_str) is the string on disk in an audit
//! record's `op` field and the label in [`Stats`](crate::stats::Stats).

use std::fmt;

/// An operation of a [`MapWrapper`](crate::MapWrapper): what [`MapError::op`](crate::MapError::op)
/// names, what [`Stats`](crate::stats::Stats) counts by, and (for the operations that change the
/// map) the `op` of an audit record.
///
/// ```
/// use map_wrapper::{MapWrapper, Op};
///
/// let map = MapWrapper::<u8, u8>::new();
/// map.insert(1, 1)?;
/// assert_eq!(Op::Insert.as_str(), "insert");
/// assert_eq!(map.stats().op(Op::Insert.as_str()).map(|s| s.ok), Some(1));
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Op {
    /// [`MapWrapper::insert`](crate::MapWrapper::insert).
    Insert,
    /// [`MapWrapper::get`](crate::MapWrapper::get).
    Get,
    /// [`MapWrapper::get_cloned`](crate::MapWrapper::get_cloned).
    GetCloned,
    /// [`MapWrapper::view`](crate::MapWrapper::view).
    View,
    /// [`MapWrapper::contains_key`](crate::MapWrapper::contains_key).
    ContainsKey,
    /// [`MapWrapper::remove`](crate::MapWrapper::remove).
    Remove,
    /// [`MapWrapper::remove_entry`](crate::MapWrapper::remove_entry).
    RemoveEntry,
    /// [`MapWrapper::remove_if`](crate::MapWrapper::remove_if).
    RemoveIf,
    /// [`MapWrapper::update`](crate::MapWrapper::update).
    Update,
    /// [`MapWrapper::alter`](crate::MapWrapper::alter).
    Alter,
    /// [`MapWrapper::entry`](crate::MapWrapper::entry) and its `or_*` methods.
    Entry,
    /// [`MapWrapper::retain`](crate::MapWrapper::retain).
    Retain,
    /// [`MapWrapper::clear`](crate::MapWrapper::clear).
    Clear,
    /// [`MapWrapper::len`](crate::MapWrapper::len).
    Len,
    /// [`MapWrapper::is_empty`](crate::MapWrapper::is_empty).
    IsEmpty,
    /// [`MapWrapper::for_each`](crate::MapWrapper::for_each).
    ForEach,
    /// [`MapWrapper::snapshot`](crate::MapWrapper::snapshot) and
    /// [`MapWrapper::iter`](crate::MapWrapper::iter).
    Snapshot,
    /// [`MapWrapper::extend`](crate::MapWrapper::extend).
    Extend,
    /// Serializing the whole map (the `serde` feature).
    Serialize,
    /// [`MapWrapper::capacity`](crate::MapWrapper::capacity).
    Capacity,
    /// [`MapWrapper::reserve`](crate::MapWrapper::reserve).
    Reserve,
    /// [`MapWrapper::shrink_to_fit`](crate::MapWrapper::shrink_to_fit).
    ShrinkToFit,
}

impl Op {
    /// Every operation, in the order of their discriminants.
    pub const ALL: [Op; 22] = [
        Op::Insert,
        Op::Get,
        Op::GetCloned,
        Op::View,
        Op::ContainsKey,
        Op::Remove,
        Op::RemoveEntry,
        Op::RemoveIf,
        Op::Update,
        Op::Alter,
        Op::Entry,
        Op::Retain,
        Op::Clear,
        Op::Len,
        Op::IsEmpty,
        Op::ForEach,
        Op::Snapshot,
        Op::Extend,
        Op::Serialize,
        Op::Capacity,
        Op::Reserve,
        Op::ShrinkToFit,
    ];

    /// The operations that change the map, and so write audit records (in the order of the
    /// audit format's list of operations, `docs/AUDIT_FORMAT.md`).
    pub const MUTATIONS: [Op; 10] = [
        Op::Insert,
        Op::Remove,
        Op::RemoveEntry,
        Op::RemoveIf,
        Op::Update,
        Op::Alter,
        Op::Entry,
        Op::Extend,
        Op::Retain,
        Op::Clear,
    ];

    /// The stable name: the method's name (`"insert"`, `"get_cloned"`, …), as written in audit
    /// records and statistics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Get => "get",
            Op::GetCloned => "get_cloned",
            Op::View => "view",
            Op::ContainsKey => "contains_key",
            Op::Remove => "remove",
            Op::RemoveEntry => "remove_entry",
            Op::RemoveIf => "remove_if",
            Op::Update => "update",
            Op::Alter => "alter",
            Op::Entry => "entry",
            Op::Retain => "retain",
            Op::Clear => "clear",
            Op::Len => "len",
            Op::IsEmpty => "is_empty",
            Op::ForEach => "for_each",
            Op::Snapshot => "snapshot",
            Op::Extend => "extend",
            Op::Serialize => "serialize",
            Op::Capacity => "capacity",
            Op::Reserve => "reserve",
            Op::ShrinkToFit => "shrink_to_fit",
        }
    }

    /// Whether the operation can change the map (it is audited).
    pub const fn is_mutation(self) -> bool {
        matches!(
            self,
            Op::Insert
                | Op::Remove
                | Op::RemoveEntry
                | Op::RemoveIf
                | Op::Update
                | Op::Alter
                | Op::Entry
                | Op::Extend
                | Op::Retain
                | Op::Clear
        )
    }

    /// The operation whose [`as_str`](Op::as_str) is `name`.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// Position in [`Op::ALL`] (a counter row in the statistics).
    #[inline(always)]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_discriminant_order_and_names_are_distinct() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i, "{op:?}");
            assert_eq!(Op::from_name(op.as_str()), Some(op));
        }
        let mut names: Vec<_> = Op::ALL.iter().map(|o| o.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Op::ALL.len());
        assert_eq!(Op::from_name("nonsense"), None);
    }

    #[test]
    fn mutations_are_exactly_the_ops_that_say_so() {
        let listed: Vec<Op> = Op::MUTATIONS.to_vec();
        let flagged: Vec<Op> = Op::ALL.into_iter().filter(|o| o.is_mutation()).collect();
        let mut a = listed.clone();
        a.sort();
        assert_eq!(a, flagged);
    }
}
