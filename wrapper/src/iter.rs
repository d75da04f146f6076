//! Iterators: [`Iter`] over a snapshot, [`IntoIter`] over an owned map.

use std::fmt;
use std::hash::{BuildHasher, Hash};

use crate::engine::WithContext;
use crate::MapError;

use crate::shard::Shard;

/// An iterator over a snapshot of a [`MapWrapper`](crate::MapWrapper)'s entries; made by [`MapWrapper::iter`](crate::MapWrapper::iter).
/// It holds no lock.
#[derive(Debug, Clone)]
pub struct Iter<K, V> {
    entries: std::vec::IntoIter<(K, V)>,
}

impl<K, V> Iter<K, V> {
    pub(crate) fn new(entries: Vec<(K, V)>) -> Self {
        Iter { entries: entries.into_iter() }
    }
}

impl<K, V> Iterator for Iter<K, V> {
    type Item = (K, V);
    fn next(&mut self) -> Option<(K, V)> {
        self.entries.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl<K, V> ExactSizeIterator for Iter<K, V> {}

impl<K, V> std::iter::FusedIterator for Iter<K, V> {}

/// The entries of a [`MapWrapper`](crate::MapWrapper) consumed by `into_iter`, shard by shard
/// in no particular order. It holds no lock (the map is owned).
pub struct IntoIter<K, V> {
    shards: std::vec::IntoIter<Shard<K, V>>,
    current: Option<hashbrown::hash_table::IntoIter<(K, V)>>,
    /// Entries not yielded yet.
    left: usize,
}

impl<K, V> IntoIter<K, V> {
    pub(crate) fn new(shards: Box<[Shard<K, V>]>) -> Self {
        let mut shards = shards.into_vec();
        let left = shards.iter_mut().map(|s| s.get_mut().len()).sum();
        IntoIter { shards: shards.into_iter(), current: None, left }
    }
}

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, V);
    fn next(&mut self) -> Option<(K, V)> {
        loop {
            if let Some(e) = self.current.as_mut().and_then(Iterator::next) {
                self.left -= 1;
                return Some(e);
            }
            self.current = Some(self.shards.next()?.into_inner().into_inner().into_iter());
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<K, V> ExactSizeIterator for IntoIter<K, V> {}

impl<K, V> std::iter::FusedIterator for IntoIter<K, V> {}

impl<K, V> fmt::Debug for IntoIter<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoIter").field("left", &self.left).finish_non_exhaustive()
    }
}

/// An iteration that copies one shard at a time: the shard is read-locked only while its
/// entries are copied, and the loop body runs with no lock held. Made by
/// [`MapWrapper::iter_by_shard`](crate::MapWrapper::iter_by_shard) and by `for e in &map`.
///
/// **Consistency**: each shard's entries are a consistent copy of that shard at one instant;
/// different shards are copied at different instants, so an entry moved or changed during the
/// iteration may be seen in its old or new state (never torn), and an entry inserted during it
/// may be missed. Each shard's copy is its own operation with the map's deadline; an error
/// (timeout, cancellation, would-deadlock) is yielded once, then the iteration ends.
pub struct ShardIter<'m, 'c, K, V, S> {
    with: WithContext<'m, 'c, K, V, S>,
    next_shard: usize,
    current: std::vec::IntoIter<(K, V)>,
    done: bool,
}

impl<'m, 'c, K, V, S> ShardIter<'m, 'c, K, V, S> {
    pub(crate) fn new(with: WithContext<'m, 'c, K, V, S>) -> Self {
        ShardIter { with, next_shard: 0, current: Vec::new().into_iter(), done: false }
    }
}

impl<K, V, S> Iterator for ShardIter<'_, '_, K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    type Item = Result<(K, V), MapError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.current.next() {
                return Some(Ok(e));
            }
            if self.done || self.next_shard >= self.with.map.shards.len() {
                self.done = true;
                return None;
            }
            let idx = self.next_shard;
            self.next_shard += 1;
            let mut buffer = Vec::new();
            if let Err(e) = self.with.shard_copy(idx, &mut buffer) {
                self.done = true;
                return Some(Err(e));
            }
            self.current = buffer.into_iter();
        }
    }
}

impl<K, V, S> std::iter::FusedIterator for ShardIter<'_, '_, K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
}

impl<K, V, S> fmt::Debug for ShardIter<'_, '_, K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardIter")
            .field("map", &self.with.map.name())
            .field("next_shard", &self.next_shard)
            .finish_non_exhaustive()
    }
}
