//! One shard: a reader-writer lock (the fair thread-and-task lock of `crate::lock`) around a
//! hash table.

use crate::lock::RwLock;
use crossbeam_utils::CachePadded;
use hashbrown::HashTable;

/// The table of one shard. Entries are stored without their hash: the hash is computed once
/// per operation and passed in, and recomputed only when the table grows.
pub(crate) type Table<K, V> = HashTable<(K, V)>;

/// One shard: a reader-writer lock around a table, alone on its cache line(s) so that two
/// shards locked by two cores do not share a line.
pub(crate) type Shard<K, V> = CachePadded<RwLock<Table<K, V>>>;
