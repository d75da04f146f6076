//! Iterators: [`Iter`] over a snapshot, [`IntoIter`] over an owned map.

use std::fmt;

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
