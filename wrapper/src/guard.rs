//! [`Ref`]: a read guard on one value, which marks its shard as held by this thread.

use std::fmt;
use std::ops::Deref;

use crate::lock::MappedRwLockReadGuard;
#[cfg(feature = "serde")]
use crate::lock::RwLockReadGuard;

use crate::deadlock::HeldMark;
#[cfg(feature = "serde")]
use crate::shard::Table;

/// One shard read-locked by `WithContext::read_all`, marked as held by this thread.
#[cfg(feature = "serde")]
pub(crate) struct ReadAll<'a, K, V> {
    pub(crate) table: RwLockReadGuard<'a, Table<K, V>>,
    _held: HeldMark,
}

#[cfg(feature = "serde")]
impl<'a, K, V> ReadAll<'a, K, V> {
    pub(crate) fn new(table: RwLockReadGuard<'a, Table<K, V>>, held: HeldMark) -> Self {
        ReadAll { table, _held: held }
    }
}

/// A read guard on one value of a [`MapWrapper`](crate::MapWrapper); made by [`MapWrapper::get`](crate::MapWrapper::get).
///
/// It holds the read lock of the value's shard until dropped: writers of that shard wait, and
/// this thread's own writes to it return [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock). It is not `Send`: the
/// lock belongs to the thread that took it.
pub struct Ref<'a, K, V> {
    entry: MappedRwLockReadGuard<'a, (K, V)>,
    // Dropped after `entry` (fields drop in order), so the shard is unlocked first.
    _held: HeldMark,
}

impl<'a, K, V> Ref<'a, K, V> {
    pub(crate) fn new(entry: MappedRwLockReadGuard<'a, (K, V)>, held: HeldMark) -> Self {
        Ref { entry, _held: held }
    }

    /// The key.
    pub fn key(&self) -> &K {
        &self.entry.0
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.entry.1
    }

    /// The key and the value.
    pub fn pair(&self) -> (&K, &V) {
        (&self.entry.0, &self.entry.1)
    }
}

impl<K, V> Deref for Ref<'_, K, V> {
    type Target = V;
    fn deref(&self) -> &V {
        self.value()
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for Ref<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ref").field("key", self.key()).field("value", self.value()).finish()
    }
}
