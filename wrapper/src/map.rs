//! [`MapWrapper`]: the public operations.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::lock::RwLock;
use hashbrown::hash_table;

use crate::audit::MapAudit;
use crate::breaker::CircuitBreaker;
use crate::builder::{Builder, Config};
use crate::engine::WithContext;
use crate::entry::Entry;
#[cfg(feature = "serde")]
use crate::guard::ReadAll;
use crate::guard::Ref;
use crate::iter::{IntoIter, Iter};
use crate::shard::{Shard, Table};
use crate::stats::{Monitor, Stats};
use crate::{MapError, OpContext};

/// A sharded concurrent hash map whose every operation has a deadline, can be cancelled,
/// refuses to deadlock, and returns `Result` instead of blocking without bound.
///
/// Keys are spread over [`shard_count`](MapWrapper::shard_count) shards, each a
/// fair reader-writer lock (one FIFO queue for waiting threads and tasks) around a hash table. A key is hashed once per operation: the hash
/// picks the shard and is reused to find the slot inside it. Operations on one key lock one
/// shard; whole-map operations (`len`, `retain`, `clear`, `snapshot`, …) lock the shards one at
/// a time, so they see each shard consistently but not the whole map at one instant.
///
/// **Waiting.** An operation that finds its shard locked waits at most until its deadline
/// (500 ms by default; see [`Builder::timeout`] and [`OpContext`]), then returns
/// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout). A cancelled [`CancelToken`](crate::CancelToken) makes it return
/// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled), before it locks anything or, while it
/// waits, as soon as the token is cancelled (the waiter is woken). An uncontended operation does not read the clock.
///
/// **Re-entrancy.** A thread that holds a shard (a live [`Ref`] from [`get`](MapWrapper::get),
/// or a closure the map is running for [`update`](MapWrapper::update), [`view`](MapWrapper::view),
/// [`retain`](MapWrapper::retain), …) and asks for the same shard in a way that would hang gets
/// [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock) at once. Reading a shard it already reads is allowed.
///
/// **Lock cycles across threads.** A thread that holds a shard and must wait for another one
/// whose holder waits, directly or through other waiting threads, for the shard it holds (A
/// holds a guard on shard 1 and inserts into shard 2 while B holds shard 2 and inserts into
/// shard 1; also across maps) gets [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock) at once
/// instead of a timeout: the thread whose wait would close the cycle is refused, the others
/// go on once it lets go. The error names both shards ([`MapError::shard`],
/// [`MapError::held_shard`], [`MapError::held_map`]). Only threads that wait take part in the
/// check: an operation that does not wait pays nothing for it.
///
/// **Errors.** When a single-key operation returns an error, it changed nothing, except an
/// error of kind [`AppliedNotDurable`](crate::ErrorKind::AppliedNotDurable)
/// ([`MapError::applied`] is `true`; never retryable): on an audited map, the change was
/// applied but its record could not be enqueued or made durable. The
/// operations that visit every shard (`retain`, `clear`) check for a re-entrant would-deadlock
/// before they change anything, but a timeout, a cancellation or a lock cycle with other
/// threads on a later shard leaves the shards
/// already visited changed; [`extend`](MapWrapper::extend) keeps the pairs it inserted before
/// the error.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use map_wrapper::MapWrapper;
///
/// let map = Arc::new(MapWrapper::<u64, u64>::new());
/// let handles: Vec<_> = (0..4)
///     .map(|t| {
///         let map = Arc::clone(&map);
///         std::thread::spawn(move || {
///             for i in 0..100 {
///                 map.insert(t * 1000 + i, i)?;
///             }
///             Ok::<_, map_wrapper::MapError>(())
///         })
///     })
///     .collect();
/// for h in handles {
///     h.join().unwrap()?;
/// }
/// assert_eq!(map.len()?, 400);
/// assert_eq!(map.get_cloned(&3005)?, Some(5));
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
pub struct MapWrapper<K, V, S = RandomState> {
    pub(crate) shards: Box<[Shard<K, V>]>,
    /// log2 of the shard count.
    pub(crate) shard_bits: u32,
    pub(crate) hasher: S,
    pub(crate) name: Arc<str>,
    /// Unique in the process; tells this map's shards apart in the held-shard registry.
    pub(crate) id: u64,
    pub(crate) timeout: Duration,
    pub(crate) slow_threshold: Duration,
    /// The audit side (`None`: not audited, and the operations pay one `Option` check).
    pub(crate) audit: Option<Box<MapAudit<K, V>>>,
    /// Statistics and circuit breaker; `None` when both are off.
    pub(crate) monitor: Option<Box<Monitor>>,
    /// Whether every operation must take the full path (audited, bounded or auto-shrinking):
    /// one flag, so that the fast path checks one field whatever the policies.
    pub(crate) full_only: bool,
    /// The size bound and its entry count (`None`: unbounded).
    pub(crate) bound: Option<Box<Bound>>,
    /// Automatic shrink after removals (`None`: off).
    pub(crate) shrink: Option<AutoShrink>,
    /// The settings the map was built with (for `Clone` and `set_auditor`).
    pub(crate) config: Box<Config>,
}

/// A map's size bound: at most `max` entries; `count` is the number of entries, kept by the
/// full path under the shard lock of each change (it can only run ahead of the true count,
/// never behind: an insert reserves its slot before it is made).
pub(crate) struct Bound {
    pub(crate) max: usize,
    pub(crate) count: AtomicUsize,
}

impl Bound {
    /// Reserves room for one entry; `false` at the bound.
    #[inline]
    pub(crate) fn try_reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    /// Settles the count after a change of a shard's length from `before` to `after`, one
    /// slot having been reserved or not.
    #[inline]
    pub(crate) fn settle(&self, before: usize, after: usize, reserved: bool) {
        let grew = after as isize - before as isize - isize::from(reserved);
        if grew > 0 {
            self.count.fetch_add(grew as usize, Ordering::AcqRel);
        } else if grew < 0 {
            self.count.fetch_sub(grew.unsigned_abs(), Ordering::AcqRel);
        }
    }
}

/// The automatic shrink rule: a shard whose table can hold more than `above` times its
/// entries is shrunk to fit them (a table grows only when full: the gap is the hysteresis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AutoShrink {
    pub(crate) above: usize,
}

impl AutoShrink {
    /// Shrinks `table` if it is oversized by the rule.
    #[inline]
    pub(crate) fn apply<K, V>(self, table: &mut Table<K, V>, hasher: impl Fn(&(K, V)) -> u64) {
        // The slots allocated (`capacity()` is less: it leaves out the slots that removals
        // left as tombstones), from the allocation: one slot and one control byte each.
        let slots = table.allocation_size() / (std::mem::size_of::<(K, V)>() + 1);
        let len = table.len();
        // A table uses at most 7/8 of its slots.
        if slots > 128 && slots / 8 * 7 > len.saturating_mul(self.above) {
            table.shrink_to(len, hasher);
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl<K, V> MapWrapper<K, V, RandomState> {
    /// An empty map with the default configuration: [`default_shards()`](crate::builder::default_shards)
    /// shards, a 500 ms timeout, std's `RandomState` hasher.
    pub fn new() -> Self {
        Self::from_config(Config::default(), RandomState::new())
    }

    /// A builder to configure name, shards, timeout and hasher; see [`Builder`].
    pub fn builder() -> Builder<K, V, RandomState> {
        Builder::new()
    }
}

impl<K, V, S> MapWrapper<K, V, S> {
    /// An empty map with the default configuration and the given hasher.
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// use map_wrapper::MapWrapper;
    ///
    /// let map: MapWrapper<u32, u32, RandomState> = MapWrapper::with_hasher(RandomState::new());
    /// assert!(map.is_empty()?);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn with_hasher(hasher: S) -> Self {
        Self::from_config(Config::default(), hasher)
    }

    pub(crate) fn from_config(config: Config, hasher: S) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let per_shard = config.capacity.div_ceil(config.shards);
        let shards =
            (0..config.shards).map(|_| Shard::new(RwLock::new(Table::with_capacity(per_shard)))).collect();
        let kept = Box::new(config.clone());
        let name: Arc<str> = Arc::from(config.name.unwrap_or_else(|| format!("map-{id}")));
        let observe = config.observe;
        let monitor = (observe.stats || observe.breaker.is_some()).then(|| {
            Box::new(Monitor::new(
                name.clone(),
                observe.clock.unwrap_or_default(),
                config.slow_threshold,
                observe.latency_sampling,
                observe.breaker.map(|b| (b, observe.listeners)),
            ))
        });
        MapWrapper {
            shards,
            shard_bits: config.shards.trailing_zeros(),
            hasher,
            name,
            id,
            timeout: config.timeout,
            slow_threshold: config.slow_threshold,
            audit: None,
            monitor,
            full_only: config.max_entries.is_some() || config.auto_shrink.is_some(),
            bound: config.max_entries.map(|max| Box::new(Bound { max, count: AtomicUsize::new(0) })),
            shrink: config.auto_shrink,
            config: kept,
        }
    }

    /// Gives the map its audit side (or takes it away), keeping the fast-path flag right.
    pub(crate) fn set_audit(&mut self, audit: Option<Box<MapAudit<K, V>>>) {
        self.audit = audit;
        self.full_only = self.audit.is_some() || self.bound.is_some() || self.shrink.is_some();
    }

    /// The size bound set with [`Builder::max_entries`], if any.
    pub fn max_entries(&self) -> Option<usize> {
        self.bound.as_ref().map(|b| b.max)
    }

    /// The map's name (the resource in errors and audit records).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of shards (a power of two).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The map's timeout: the longest any operation waits for a lock (a context can only
    /// shorten it).
    pub fn default_timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a completed operation may take before it counts as slow.
    pub fn slow_threshold(&self) -> Duration {
        self.slow_threshold
    }

    /// The map's hasher.
    pub fn hasher(&self) -> &S {
        &self.hasher
    }

    /// A snapshot of the map's statistics: operations by kind and outcome, latency,
    /// timeouts, cancellations, would-deadlocks, rejections, the breaker's state, and for an
    /// audited map the audit queue's depth, records written, syncs and lost records. The
    /// operation figures are zero when statistics are off ([`Builder::stats`]). Takes no shard
    /// lock.
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map = MapWrapper::<u8, u8>::new();
    /// map.insert(1, 1)?;
    /// assert_eq!(map.stats().op("insert").map(|s| s.ok), Some(1));
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let mut stats = match &self.monitor {
            Some(m) => m.snapshot(),
            None => Stats::empty(self.name.clone()),
        };
        stats.audit = self.audit.as_ref().map(|a| a.stats());
        stats
    }

    /// The map's circuit breaker, if it has one ([`Builder::breaker`]).
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.monitor.as_ref().and_then(|m| m.breaker())
    }

    /// Runs the next operation under `ctx` (its timeout, deadline, cancel token and identity),
    /// on top of the ambient context of the thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// use map_wrapper::{MapWrapper, OpContext};
    ///
    /// let map: MapWrapper<&str, i32> = MapWrapper::new();
    /// let ctx = OpContext::new().timeout(Duration::from_millis(20)).actor("cron");
    /// map.with(&ctx).insert("jobs", 1)?;
    /// assert_eq!(map.with(&ctx).get_cloned("jobs")?, Some(1));
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn with<'m, 'c>(&'m self, ctx: &'c OpContext) -> WithContext<'m, 'c, K, V, S> {
        WithContext::new(self, Some(ctx))
    }

    pub(crate) fn plain(&self) -> WithContext<'_, 'static, K, V, S> {
        WithContext::new(self, None)
    }

    /// The shard a hash belongs to: the bits just below hashbrown's top 7 (which it uses for
    /// its control bytes), so that the bits that pick the shard are not the bits that pick the
    /// slot inside it.
    #[inline]
    pub(crate) fn shard_of(&self, hash: u64) -> usize {
        let mask = (1usize << self.shard_bits) - 1;
        (hash.rotate_left(7 + self.shard_bits) as usize) & mask
    }
}

#[cfg(feature = "serde")]
impl<K: Hash + Eq, V, S: BuildHasher> MapWrapper<K, V, S> {
    pub(crate) fn read_all_for_serde(&self) -> Result<Vec<ReadAll<'_, K, V>>, MapError> {
        self.plain().read_all(crate::Op::Serialize)
    }
}

impl<K, V, S> Default for MapWrapper<K, V, S>
where
    S: Default,
{
    fn default() -> Self {
        Self::with_hasher(S::default())
    }
}

/// Forwards documented `MapWrapper` methods to the same method on `self.plain()`.
macro_rules! forward {
    ($( $(#[$doc:meta])* fn $name:ident $(<$($g:ident),*>)? (&self $(, $arg:ident : $ty:ty)*) -> $ret:ty $(where { $($wc:tt)* })?; )*) => {
        $(
            $(#[$doc])*
            #[inline]
            pub fn $name $(<$($g),*>)? (&self $(, $arg: $ty)*) -> $ret $(where $($wc)*)? {
                self.plain().$name($($arg),*)
            }
        )*
    };
}

impl<K, V, S> MapWrapper<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    forward! {
        /// Inserts `value` under `key` and returns the value it replaced, as
        /// [`HashMap::insert`](std::collections::HashMap::insert) does.
        ///
        /// Locks: the key's shard, for writing.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout), [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled), [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock) (this
        /// thread holds the key's shard). On error the map is unchanged and `value` is dropped
        /// (except [`MapError::applied`]: the audit record of the applied insert failed).
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map = MapWrapper::<&str, u32>::new();
        /// assert_eq!(map.insert("a", 1)?, None);
        /// assert_eq!(map.insert("a", 2)?, Some(1));
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn insert(&self, key: K, value: V) -> Result<Option<V>, MapError>;

        /// A read guard on the value under `key`, or `None`.
        ///
        /// Locks: the key's shard, for reading, **for as long as the [`Ref`] lives**. While you
        /// hold it, writers of that shard wait (and time out), and a write from this thread to
        /// the same shard returns [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock). Keep it short; prefer
        /// [`get_cloned`](MapWrapper::get_cloned) or [`view`](MapWrapper::view).
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map = MapWrapper::<&str, String>::new();
        /// map.insert("k", "hello".to_string())?;
        /// let guard = map.get("k")?.expect("present");
        /// assert_eq!(guard.len(), 5); // derefs to the value
        /// // Writing the same shard while the guard lives would deadlock; it is refused.
        /// assert_eq!(map.insert("k", String::new()).unwrap_err().code(), "WOULD_DEADLOCK");
        /// drop(guard);
        /// map.insert("k", String::new())?;
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn get<Q>(&self, key: &Q) -> Result<Option<Ref<'_, K, V>>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized };

        /// A clone of the value under `key`, or `None`.
        ///
        /// Locks: the key's shard, for reading, while cloning.
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map = MapWrapper::<u8, Vec<u8>>::new();
        /// map.insert(1, vec![1, 2])?;
        /// assert_eq!(map.get_cloned(&1)?, Some(vec![1, 2]));
        /// assert_eq!(map.get_cloned(&2)?, None);
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn get_cloned<Q>(&self, key: &Q) -> Result<Option<V>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized, V: Clone };

        /// Calls `f` with the value under `key` and returns what it returns, or `None` when the
        /// key is absent.
        ///
        /// Locks: the key's shard, for reading, while `f` runs. Calls from `f` into this map
        /// that would write the same shard return [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock).
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map = MapWrapper::<u8, String>::new();
        /// map.insert(1, "abc".into())?;
        /// assert_eq!(map.view(&1, |s| s.len())?, Some(3));
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn view<Q, R, F>(&self, key: &Q, f: F) -> Result<Option<R>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized, F: FnOnce(&V) -> R };

        /// Whether `key` is present.
        ///
        /// Locks: the key's shard, for reading.
        fn contains_key<Q>(&self, key: &Q) -> Result<bool, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized };

        /// Removes `key` and returns its value, as
        /// [`HashMap::remove`](std::collections::HashMap::remove) does.
        ///
        /// Locks: the key's shard, for writing.
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map = MapWrapper::<u8, u8>::new();
        /// map.insert(1, 10)?;
        /// assert_eq!(map.remove(&1)?, Some(10));
        /// assert_eq!(map.remove(&1)?, None);
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn remove<Q>(&self, key: &Q) -> Result<Option<V>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized };

        /// Removes `key` and returns the stored key and value.
        ///
        /// Locks: the key's shard, for writing.
        fn remove_entry<Q>(&self, key: &Q) -> Result<Option<(K, V)>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized };

        /// Removes `key` if `f` says so, and returns the removed value.
        ///
        /// Locks: the key's shard, for writing, while `f` runs.
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map = MapWrapper::<u8, u8>::new();
        /// map.insert(1, 10)?;
        /// assert_eq!(map.remove_if(&1, |_, v| *v > 50)?, None);
        /// assert_eq!(map.remove_if(&1, |_, v| *v == 10)?, Some(10));
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn remove_if<Q, F>(&self, key: &Q, f: F) -> Result<Option<V>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized, F: FnOnce(&K, &V) -> bool };

        /// Changes the value under `key` in place with `f`; returns what `f` returns, or `None`
        /// when the key is absent (then `f` is not called).
        ///
        /// Locks: the key's shard, for writing, while `f` runs. A call from `f` into this map
        /// that needs the same shard returns [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock). If `f` panics, the
        /// lock is released and the value keeps whatever `f` did before panicking.
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map = MapWrapper::<&str, u64>::new();
        /// map.insert("hits", 1)?;
        /// assert_eq!(map.update("hits", |v| { *v += 1; *v })?, Some(2));
        /// assert_eq!(map.update("misses", |v| *v += 1)?, None);
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn update<Q, R, F>(&self, key: &Q, f: F) -> Result<Option<R>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized, F: FnOnce(&mut V) -> R };

        /// Sets the value under `key` to what `f` returns given the current one: `Some(v)`
        /// stores `v`, `None` removes the key. Returns the value that was replaced or removed.
        ///
        /// Locks: the key's shard, for writing, while `f` runs. If `f` panics, nothing changes.
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map = MapWrapper::<&str, u32>::new();
        /// map.alter("n", |old| Some(old.map_or(1, |v| v + 1)))?;
        /// map.alter("n", |old| Some(old.map_or(1, |v| v + 1)))?;
        /// assert_eq!(map.get_cloned("n")?, Some(2));
        /// assert_eq!(map.alter("n", |_| None)?, Some(2)); // removed
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn alter<F>(&self, key: K, f: F) -> Result<Option<V>, MapError>
            where { F: FnOnce(Option<&V>) -> Option<V> };

        /// Keeps only the entries for which `f` returns `true`; returns how many were removed.
        ///
        /// Locks: each shard in turn, for writing, while `f` runs over its entries. Shards are
        /// visited one at a time under one deadline for the whole call; if a later shard times
        /// out, the shards already visited stay filtered and the error is returned. Removed
        /// values are dropped after their shard is unlocked.
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map: MapWrapper<u32, u32> = (0..10).map(|i| (i, i)).collect();
        /// assert_eq!(map.retain(|_, v| v % 2 == 0)?, 5);
        /// assert_eq!(map.len()?, 5);
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn retain<F>(&self, f: F) -> Result<usize, MapError> where { F: FnMut(&K, &V) -> bool };

        /// Removes every entry; returns how many there were.
        ///
        /// Locks: each shard in turn, for writing (see [`retain`](MapWrapper::retain) for what
        /// an error midway means). Removed values are dropped after their shard is unlocked.
        fn clear(&self) -> Result<usize, MapError>;

        /// The number of entries.
        ///
        /// Locks: each shard in turn, for reading; concurrent writers may change the count
        /// while it is taken.
        fn len(&self) -> Result<usize, MapError>;

        /// Whether the map has no entries (see [`len`](MapWrapper::len)).
        fn is_empty(&self) -> Result<bool, MapError>;

        /// Calls `f` on every entry.
        ///
        /// Locks: each shard in turn, for reading, while `f` runs over its entries.
        fn for_each<F>(&self, f: F) -> Result<(), MapError> where { F: FnMut(&K, &V) };

        /// A copy of every entry, taken shard by shard (each shard consistent on its own).
        ///
        /// Locks: each shard in turn, for reading, while its entries are cloned.
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map: MapWrapper<u8, u8> = [(1, 1), (2, 4)].into_iter().collect();
        /// let mut all = map.snapshot()?;
        /// all.sort();
        /// assert_eq!(all, vec![(1, 1), (2, 4)]);
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn snapshot(&self) -> Result<Vec<(K, V)>, MapError> where { K: Clone, V: Clone };

        /// An iterator over a [`snapshot`](MapWrapper::snapshot): it holds no lock, so the
        /// loop body may use the map freely.
        ///
        /// ```
        /// use map_wrapper::MapWrapper;
        /// let map: MapWrapper<u8, u8> = [(1, 1), (2, 4)].into_iter().collect();
        /// for (k, v) in map.iter()? {
        ///     map.insert(k, v * 10)?; // no lock is held here
        /// }
        /// assert_eq!(map.get_cloned(&2)?, Some(40));
        /// # Ok::<(), map_wrapper::MapError>(())
        /// ```
        fn iter(&self) -> Result<Iter<K, V>, MapError> where { K: Clone, V: Clone };
    }

    /// Inserts every pair of `iter`, in order; returns how many were inserted.
    ///
    /// Locks: one shard at a time, for writing, per pair. All pairs share one deadline. If an
    /// insert fails, the pairs before it stay inserted, that pair and the rest of `iter` are
    /// not consumed further, and the error is returned: call again with the rest.
    ///
    /// `MapWrapper` does not implement [`std::iter::Extend`], whose `extend` cannot report
    /// a failure.
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map = MapWrapper::<u8, u8>::new();
    /// assert_eq!(map.extend([(1, 1), (2, 2)])?, 2);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn extend<I: IntoIterator<Item = (K, V)>>(&self, iter: I) -> Result<usize, MapError> {
        self.plain().extend(iter)
    }

    /// Starts an upsert of `key`: chain [`Entry::and_modify`] and finish with
    /// [`Entry::or_insert`], [`Entry::or_insert_with`] or [`Entry::or_default`]. The whole
    /// upsert runs in one write lock of the key's shard.
    ///
    /// ```
    /// use map_wrapper::{MapWrapper, Upserted};
    /// let map = MapWrapper::<&str, u32>::new();
    /// assert_eq!(map.entry("n").and_modify(|v| *v += 1).or_insert(1)?, Upserted::Inserted);
    /// assert_eq!(map.entry("n").and_modify(|v| *v += 1).or_insert(1)?, Upserted::Existing);
    /// assert_eq!(map.get_cloned("n")?, Some(2));
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn entry(&self, key: K) -> Entry<'_, 'static, K, V, S, fn(&mut V)> {
        self.plain().entry(key)
    }
}

/// HashMap-shaped extras: capacity, keys and values, per-shard iteration, copies, equality.
impl<K, V, S> MapWrapper<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// How many entries the map can hold without reallocating: the sum of its shards'
    /// capacities (each shard grows on its own, so one shard may grow before this is reached).
    ///
    /// Locks: each shard in turn, for reading.
    pub fn capacity(&self) -> Result<usize, MapError> {
        self.plain().capacity()
    }

    /// Makes room for at least `additional` more entries, spread evenly over the shards, as
    /// [`HashMap::reserve`](std::collections::HashMap::reserve).
    ///
    /// Locks: each shard in turn, for writing.
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map = MapWrapper::<u32, u32>::new();
    /// map.reserve(1000)?;
    /// assert!(map.capacity()? >= 1000);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn reserve(&self, additional: usize) -> Result<(), MapError> {
        self.plain().reserve(additional)
    }

    /// Gives back the memory the map does not need for its entries, as
    /// [`HashMap::shrink_to_fit`](std::collections::HashMap::shrink_to_fit). See also
    /// [`Builder::auto_shrink`].
    ///
    /// Locks: each shard in turn, for writing, while its table is rebuilt.
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map: MapWrapper<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
    /// let big = map.capacity()?;
    /// map.retain(|k, _| *k < 100)?;
    /// map.shrink_to_fit()?;
    /// assert!(map.capacity()? < big / 10);
    /// assert_eq!(map.len()?, 100);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn shrink_to_fit(&self) -> Result<(), MapError> {
        self.plain().shrink_to_fit()
    }

    /// A copy of every key (taken as [`snapshot`](MapWrapper::snapshot) is), as an iterator
    /// that holds no lock.
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map: MapWrapper<u8, &str> = [(1, "a"), (2, "b")].into_iter().collect();
    /// let mut keys: Vec<u8> = map.keys()?.collect();
    /// keys.sort();
    /// assert_eq!(keys, [1, 2]);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn keys(&self) -> Result<std::vec::IntoIter<K>, MapError>
    where
        K: Clone,
    {
        self.plain().keys()
    }

    /// A copy of every value (taken as [`snapshot`](MapWrapper::snapshot) is), as an
    /// iterator that holds no lock.
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map: MapWrapper<u8, u32> = [(1, 10), (2, 20)].into_iter().collect();
    /// assert_eq!(map.values()?.sum::<u32>(), 30);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn values(&self) -> Result<std::vec::IntoIter<V>, MapError>
    where
        V: Clone,
    {
        self.plain().values()
    }

    /// Iterates over the entries one shard at a time, holding each shard's read lock only
    /// while its entries are copied (never during the loop body, and never two shards at
    /// once), so a scan of a large map delays each writer by at most one shard's copy. Each
    /// item is a `Result`: a shard that cannot be read by the deadline yields its error once
    /// and the iteration ends. `for entry in &map` does the same. See [`ShardIter`](crate::ShardIter)
    /// for what it guarantees about concurrent changes.
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map: MapWrapper<u32, u32> = (0..100).map(|i| (i, i)).collect();
    /// let mut sum = 0;
    /// for entry in &map {
    ///     let (k, v) = entry?;
    ///     map.insert(k, v + 1)?; // no lock is held here
    ///     sum += v;
    /// }
    /// assert_eq!(sum, 4950);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn iter_by_shard(&self) -> crate::iter::ShardIter<'_, 'static, K, V, S>
    where
        K: Clone,
        V: Clone,
    {
        self.plain().iter_by_shard()
    }

    /// A copy of the map: the same settings (name, shards, timeout, policies, size bound,
    /// hasher) and entries, but no auditor (give it one with
    /// [`set_auditor`](MapWrapper::set_auditor)) and fresh statistics. Each shard is copied
    /// as it is at one instant, without rehashing.
    ///
    /// Locks: each shard in turn, for reading, while its table is copied.
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map: MapWrapper<u8, u8> = MapWrapper::builder().name("orders").build()?;
    /// map.insert(1, 1)?;
    /// let copy = map.try_clone()?;
    /// assert_eq!(copy.name(), "orders");
    /// assert_eq!(copy.get_cloned(&1)?, Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_clone(&self) -> Result<Self, MapError>
    where
        K: Clone,
        V: Clone,
        S: Clone,
    {
        let tables = self.plain().copy_tables()?;
        let mut copy = Self::from_config((*self.config).clone(), self.hasher.clone());
        let mut total = 0;
        for (shard, table) in copy.shards.iter_mut().zip(tables) {
            total += table.len();
            *shard.get_mut() = table;
        }
        if let Some(bound) = &copy.bound {
            bound.count.store(total, Ordering::Release);
        }
        Ok(copy)
    }

    /// Whether the two maps hold the same entries (`PartialEq` without the panic).
    ///
    /// Locks: each shard of `self` in turn, for reading, and while it is read, the shard of
    /// `other` each key belongs to.
    pub fn try_eq(&self, other: &Self) -> Result<bool, MapError>
    where
        V: PartialEq,
    {
        if std::ptr::eq(self, other) {
            return Ok(true);
        }
        if self.len()? != other.len()? {
            return Ok(false);
        }
        let (mut equal, mut failed) = (true, None);
        self.for_each(|k, v| {
            if equal && failed.is_none() {
                match other.view(k, |w| w == v) {
                    Ok(found) => equal = found == Some(true),
                    Err(e) => failed = Some(e),
                }
            }
        })?;
        failed.map_or(Ok(equal), Err)
    }
}

impl<K, V, S> MapWrapper<K, V, S> {
    /// Gives the map an auditor, as [`Builder::auditor`] does, keeping its entries: every
    /// change from now on is recorded (the entries already there are not). Replaces an
    /// auditor it had. Takes `&mut self`: no operation can run meanwhile.
    ///
    /// # Errors
    ///
    /// As [`Builder::build`] with this auditor (a digest policy and no digest key).
    ///
    /// ```
    /// use map_wrapper::audit::{Auditor, MemorySink};
    /// use map_wrapper::MapWrapper;
    /// let mut map: MapWrapper<String, u32> = MapWrapper::new();
    /// map.insert("before".into(), 1)?;
    /// let sink = MemorySink::new();
    /// map.set_auditor(Auditor::new(sink.clone()))?;
    /// map.insert("after".into(), 2)?;
    /// assert_eq!(sink.records().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_auditor(&mut self, auditor: crate::audit::Auditor) -> Result<(), crate::BuildError>
    where
        K: serde::Serialize + 'static,
        V: serde::Serialize + 'static,
    {
        let setup = crate::audit::AuditSetup {
            auditor,
            key: crate::audit::encoder::<K>,
            value: Some(crate::audit::encoder::<V>),
        };
        let audit = MapAudit::build(setup, self.config.key_policy, self.config.value_policy)?;
        self.set_audit(Some(Box::new(audit)));
        Ok(())
    }

    /// [`set_auditor`](MapWrapper::set_auditor) with values always redacted, as
    /// [`Builder::auditor_redacted`].
    pub fn set_auditor_redacted(&mut self, auditor: crate::audit::Auditor) -> Result<(), crate::BuildError>
    where
        K: serde::Serialize + 'static,
    {
        let setup = crate::audit::AuditSetup { auditor, key: crate::audit::encoder::<K>, value: None };
        let audit = MapAudit::build(setup, self.config.key_policy, self.config.value_policy)?;
        self.set_audit(Some(Box::new(audit)));
        Ok(())
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> MapWrapper<K, V, S> {
    /// Inserts `key` → `value` into a map this caller owns (`&mut self`: no other thread can
    /// hold a lock, so no wait, no timeout, no ambient context). Not recorded: it is for
    /// loading a map before it is shared (the builder's `DeserializeSeed`). `Err` gives the
    /// pair back when it would pass the size bound.
    pub(crate) fn load(&mut self, key: K, value: V) -> Result<Option<V>, (K, V)> {
        let hash = self.hasher.hash_one(&key);
        let idx = self.shard_of(hash);
        let hasher = &self.hasher;
        let table = self.shards[idx].get_mut();
        match table.entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            hash_table::Entry::Occupied(mut o) => Ok(Some(std::mem::replace(&mut o.get_mut().1, value))),
            hash_table::Entry::Vacant(slot) => {
                if let Some(bound) = &self.bound {
                    if !bound.try_reserve() {
                        return Err((key, value));
                    }
                }
                slot.insert((key, value));
                Ok(None)
            }
        }
    }
}

impl<K, V> MapWrapper<K, V, RandomState> {
    /// An empty map with room for `capacity` entries, as
    /// [`HashMap::with_capacity`](std::collections::HashMap::with_capacity); otherwise the
    /// default configuration.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::from_config(Config { capacity, ..Config::default() }, RandomState::new())
    }
}

impl<K, V, S> Clone for MapWrapper<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    /// [`try_clone`](MapWrapper::try_clone).
    ///
    /// # Panics
    ///
    /// When a shard cannot be read by the map's timeout, or this thread write-holds one
    /// (call `try_clone` to get the error instead).
    #[track_caller]
    fn clone(&self) -> Self {
        match self.try_clone() {
            Ok(copy) => copy,
            Err(e) => panic!("cannot clone map-wrapper map: {e} (try_clone returns this error instead)"),
        }
    }
}

impl<K, V, S> PartialEq for MapWrapper<K, V, S>
where
    K: Hash + Eq,
    V: PartialEq,
    S: BuildHasher,
{
    /// [`try_eq`](MapWrapper::try_eq): equal contents, as `HashMap`'s `==`.
    ///
    /// # Panics
    ///
    /// When a map cannot be read by its timeout, or this thread write-holds one of its
    /// shards (call `try_eq` to get the error instead).
    #[track_caller]
    fn eq(&self, other: &Self) -> bool {
        match self.try_eq(other) {
            Ok(equal) => equal,
            Err(e) => panic!("cannot compare map-wrapper maps: {e} (try_eq returns this error instead)"),
        }
    }
}

impl<K: Hash + Eq, V: Eq, S: BuildHasher> Eq for MapWrapper<K, V, S> {}

impl<'a, K, V, S> IntoIterator for &'a MapWrapper<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    type Item = Result<(K, V), MapError>;
    type IntoIter = crate::iter::ShardIter<'a, 'static, K, V, S>;

    /// [`iter_by_shard`](MapWrapper::iter_by_shard): `for entry in &map { let (k, v) = entry?; … }`.
    fn into_iter(self) -> Self::IntoIter {
        self.iter_by_shard()
    }
}

impl<K, V, S> fmt::Debug for MapWrapper<K, V, S> {
    /// Shows name, shards, timeout and the number of entries; never blocks: a shard that is
    /// locked for writing at that moment makes the count show as unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut len = Some(0usize);
        for shard in self.shards.iter() {
            match (len, shard.try_read_recursive()) {
                (Some(n), Some(t)) => len = Some(n + t.len()),
                _ => len = None,
            }
        }
        let mut d = f.debug_struct("MapWrapper");
        d.field("name", &self.name).field("shards", &self.shards.len()).field("timeout", &self.timeout);
        match len {
            Some(n) => d.field("len", &n),
            None => d.field("len", &format_args!("<busy>")),
        };
        d.finish_non_exhaustive()
    }
}

impl<K, V, S> FromIterator<(K, V)> for MapWrapper<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher + Default,
{
    /// Builds a map with the default configuration. Later pairs replace earlier ones with the
    /// same key, as in `HashMap`.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::with_hasher(S::default());
        for (key, value) in iter {
            let hash = map.hasher.hash_one(&key);
            let idx = map.shard_of(hash);
            let hasher = &map.hasher;
            // We own the map: no other thread can hold a lock, so `get_mut` needs none.
            let table = map.shards[idx].get_mut();
            match table.entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
                hash_table::Entry::Occupied(mut o) => o.get_mut().1 = value,
                hash_table::Entry::Vacant(v) => {
                    v.insert((key, value));
                }
            }
        }
        map
    }
}

impl<K, V, S> IntoIterator for MapWrapper<K, V, S> {
    type Item = (K, V);
    type IntoIter = IntoIter<K, V>;

    /// Consumes the map and yields every entry; takes no lock (the map is owned).
    fn into_iter(self) -> IntoIter<K, V> {
        IntoIter::new(self.shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_index_uses_bits_below_the_control_byte() {
        let m: MapWrapper<u8, u8> = MapWrapper::builder().shards(8).build().unwrap();
        // Top 7 bits set, the next 3 bits = 0b101.
        let hash = (0x7Fu64 << 57) | (0b101u64 << 54);
        assert_eq!(m.shard_of(hash), 0b101);
        let one: MapWrapper<u8, u8> = MapWrapper::builder().shards(1).build().unwrap();
        assert_eq!(one.shard_of(u64::MAX), 0);
    }

    #[test]
    fn keys_spread_over_all_shards() {
        let m: MapWrapper<u32, ()> = MapWrapper::builder().shards(16).build().unwrap();
        let mut seen = [0usize; 16];
        for i in 0..10_000u32 {
            seen[m.shard_of(m.hasher.hash_one(i))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 400), "{seen:?}");
    }

    #[test]
    fn debug_does_not_block_on_a_held_shard() {
        let m: MapWrapper<u8, u8> = MapWrapper::builder().name("dbg").shards(1).build().unwrap();
        m.insert(1, 1).unwrap();
        assert!(format!("{m:?}").contains("len: 1"));
        let _w = m.shards[0].write();
        assert!(format!("{m:?}").contains("len: <busy>"));
    }

    /// Bytes allocated by the map's tables.
    fn allocated<K, V, S>(m: &MapWrapper<K, V, S>) -> usize {
        m.shards.iter().map(|s| s.read().allocation_size()).sum()
    }

    #[test]
    fn auto_shrink_gives_memory_back_after_removals_and_does_not_thrash() {
        let build = |auto| -> MapWrapper<u64, u64> {
            let m: MapWrapper<u64, u64> = MapWrapper::builder().shards(4).auto_shrink(auto).build().unwrap();
            m.extend((0..100_000).map(|i| (i, i))).unwrap();
            for i in 10_000..100_000 {
                m.remove(&i).unwrap();
            }
            m
        };
        let (plain, auto) = (build(false), build(true));
        let fresh: MapWrapper<u64, u64> = MapWrapper::builder().shards(4).build().unwrap();
        fresh.extend((0..10_000).map(|i| (i, i))).unwrap();
        // The rule keeps at most 4× the slots the entries need (then shrinks to fit).
        assert!(allocated(&auto) * 3 < allocated(&plain), "{} vs {}", allocated(&auto), allocated(&plain));
        assert!(
            allocated(&auto) <= allocated(&fresh) * 4,
            "{} vs fresh {}",
            allocated(&auto),
            allocated(&fresh)
        );
        // Inserting and removing around the same size does not reallocate each time.
        let before = allocated(&auto);
        for i in 0..100 {
            auto.insert(1_000_000 + i, i).unwrap();
            auto.remove(&(1_000_000 + i)).unwrap();
        }
        assert_eq!(allocated(&auto), before);
        assert_eq!(auto.len().unwrap(), 10_000);
    }

    #[test]
    fn the_readme_holds_the_same_porting_table_as_the_crate_docs() {
        assert!(include_str!("../README.md").contains(include_str!("doc/hashmap.md")));
    }

    #[test]
    fn into_iter_yields_everything() {
        let m: MapWrapper<u32, u32> = (0..100).map(|i| (i, i * 2)).collect();
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_unstable();
        assert_eq!(v.len(), 100);
        assert_eq!(v[7], (7, 14));
    }
}
