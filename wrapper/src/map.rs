//! [`MapWrapper`]: the public operations.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::hash_table;
use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::audit::{Change, Encoded, MapAudit, Outcome, Ticket, PANICKED_NO_CHANGE, PANICKED_RETAIN};
use crate::builder::{Builder, Config};
use crate::context::{self, Effective};
use crate::deadlock::HeldMark;
use crate::shard::{Shard, Table, Waiter};
use crate::stats::{count_ok, Counted, Monitor, Stats};
use crate::{CircuitBreaker, MapError, Op, OpContext};

/// A sharded concurrent hash map whose every operation has a deadline, can be cancelled,
/// refuses to deadlock, and returns `Result` instead of blocking without bound.
///
/// Keys are spread over [`shard_count`](MapWrapper::shard_count) shards, each a
/// `parking_lot::RwLock` around a hash table. A key is hashed once per operation: the hash
/// picks the shard and is reused to find the slot inside it. Operations on one key lock one
/// shard; whole-map operations (`len`, `retain`, `clear`, `snapshot`, …) lock the shards one at
/// a time, so they see each shard consistently but not the whole map at one instant.
///
/// **Waiting.** An operation that finds its shard locked waits at most until its deadline
/// (500 ms by default; see [`Builder::timeout`] and [`OpContext`]), then returns
/// [`MapError::Timeout`]. A cancelled [`CancelToken`](crate::CancelToken) makes it return
/// [`MapError::Cancelled`], before it locks anything or within about a millisecond while it
/// waits. An uncontended operation does not read the clock.
///
/// **Re-entrancy.** A thread that holds a shard (a live [`Ref`] from [`get`](MapWrapper::get),
/// or a closure the map is running for [`update`](MapWrapper::update), [`view`](MapWrapper::view),
/// [`retain`](MapWrapper::retain), …) and asks for the same shard in a way that would hang gets
/// [`MapError::WouldDeadlock`] at once. Reading a shard it already reads is allowed.
///
/// **Errors.** When a single-key operation returns an error, it changed nothing. The
/// operations that visit every shard (`retain`, `clear`) check for a would-deadlock before
/// they change anything, but a timeout or cancellation on a later shard leaves the shards
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
    shards: Box<[Shard<K, V>]>,
    /// log2 of the shard count.
    shard_bits: u32,
    hasher: S,
    name: Arc<str>,
    /// Unique in the process; tells this map's shards apart in the held-shard registry.
    id: u64,
    timeout: Duration,
    slow_threshold: Duration,
    /// The audit side (`None`: not audited, and the operations pay one `Option` check).
    pub(crate) audit: Option<Box<MapAudit<K, V>>>,
    /// Statistics and circuit breaker; `None` when both are off.
    monitor: Option<Box<Monitor>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl<K, V> MapWrapper<K, V, RandomState> {
    /// An empty map with the default configuration: [`default_shards()`](crate::default_shards)
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
        let shards = (0..config.shards).map(|_| Shard::new(RwLock::new(Table::new()))).collect();
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
        }
    }

    /// The map's name (the resource in errors and audit records).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of shards (a power of two).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The timeout an operation gets when its context sets none.
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
        WithContext { map: self, ctx: Some(ctx) }
    }

    fn plain(&self) -> WithContext<'_, 'static, K, V, S> {
        WithContext { map: self, ctx: None }
    }

    /// The shard a hash belongs to: the bits just below hashbrown's top 7 (which it uses for
    /// its control bytes), so that the bits that pick the shard are not the bits that pick the
    /// slot inside it.
    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        let mask = (1usize << self.shard_bits) - 1;
        (hash.rotate_left(7 + self.shard_bits) as usize) & mask
    }
}

#[cfg(feature = "serde")]
impl<K: Hash + Eq, V, S: BuildHasher> MapWrapper<K, V, S> {
    pub(crate) fn read_all_for_serde(&self) -> Result<Vec<ReadAll<'_, K, V>>, MapError> {
        self.plain().read_all(Op::Serialize)
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
        /// [`MapError::Timeout`], [`MapError::Cancelled`], [`MapError::WouldDeadlock`] (this
        /// thread holds the key's shard). On error the map is unchanged and `value` is dropped.
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
        /// the same shard returns [`MapError::WouldDeadlock`]. Keep it short; prefer
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
        /// that would write the same shard return [`MapError::WouldDeadlock`].
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
        /// that needs the same shard returns [`MapError::WouldDeadlock`]. If `f` panics, the
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

/// An operation on the fast path: its count (if statistics are on) and its lock guard, in
/// the order they are to be bound (the guard is dropped first).
type Fast<'m, G> = (Option<Counted<'m>>, G);

/// What the work done under a shard lock hands back to the way the lock was taken: the
/// caller's result, what to drop only after unlocking, and the audit ticket to settle.
///
/// Each operation's work under the lock is written once, as a function generic over a
/// [`Recorder`], and called by each way of taking the lock: the fast path (an inline
/// `try_*` lock, [`RecordNothing`]), the full path (a [`Waiter`] that waits under the
/// deadline, [`Recording`]), and any later one (an async acquire hands its guard to the same
/// body). The recorder's types keep the fast path's `Applied` as small as its result: no
/// ticket (`()`), no caught panic (`Infallible`).
pub(crate) struct Applied<T, D, R: Records> {
    /// The result; `Err` when the caller's closure panicked and the panic was caught to record
    /// the change made before it (resumed once the lock is released).
    out: Result<T, R::Caught>,
    /// Dropped after the unlock (a key or value whose `Drop` may use the map).
    drop_after: D,
    /// The audit record's ticket, or why the record could not be made.
    ticket: R::Ticket,
}

impl<T, R: Records> Applied<T, (), R> {
    /// Nothing changed, nothing to record.
    #[inline(always)]
    fn unchanged(out: T) -> Self {
        Applied { out: Ok(out), drop_after: (), ticket: R::no_ticket() }
    }
}

/// A panic caught under the lock, to resume after the unlock.
pub(crate) trait Caught {
    /// Resumes the panic.
    fn resume(self) -> !;
}

impl Caught for std::convert::Infallible {
    #[inline(always)]
    fn resume(self) -> ! {
        match self {}
    }
}

impl Caught for Box<dyn std::any::Any + Send> {
    fn resume(self) -> ! {
        std::panic::resume_unwind(self)
    }
}

/// The types a [`Recorder`] hands back through [`Applied`].
pub(crate) trait Records {
    /// A panic it caught (`Infallible` when it catches none).
    type Caught: Caught;
    /// The record's ticket (`()` when it records nothing).
    type Ticket;
    /// The ticket of a call that recorded nothing.
    fn no_ticket() -> Self::Ticket;
}

/// What an operation records while it holds its shard lock: nothing on the fast path
/// ([`RecordNothing`], zero-sized: every call folds away), its audit record on the full path
/// ([`Recording`]).
pub(crate) trait Recorder<K, V>: Records {
    /// Builds and enqueues the record of one change or refusal on shard `shard`; `what`
    /// encodes key and values and runs only when the map is audited. Called under the shard
    /// lock for a change, so a key's records follow the order of its mutations.
    fn record(
        &self,
        shard: Option<usize>,
        outcome: Outcome<'_>,
        what: impl FnOnce(&MapAudit<K, V>) -> Change,
    ) -> Self::Ticket;

    /// The encoded value before an in-place change (when audited).
    fn old(&self, v: &V) -> Encoded;

    /// Runs a closure that changes a value in place; when audited, a panic is caught so that
    /// the change made before it is recorded before the panic goes on.
    fn guarded<R>(&self, f: impl FnOnce() -> R) -> Result<R, Self::Caught>;
}

/// The fast path's recorder: nothing to record (the fast path never runs on an audited map).
#[derive(Clone, Copy)]
pub(crate) struct RecordNothing;

impl Records for RecordNothing {
    type Caught = std::convert::Infallible;
    type Ticket = ();
    #[inline(always)]
    fn no_ticket() {}
}

impl<K, V> Recorder<K, V> for RecordNothing {
    #[inline(always)]
    fn record(&self, _: Option<usize>, _: Outcome<'_>, _: impl FnOnce(&MapAudit<K, V>) -> Change) {}

    #[inline(always)]
    fn old(&self, _: &V) -> Encoded {
        Encoded::NONE
    }

    #[inline(always)]
    fn guarded<R>(&self, f: impl FnOnce() -> R) -> Result<R, std::convert::Infallible> {
        Ok(f())
    }
}

/// The full path's recorder: the audit side of one operation (its name, contexts and start),
/// independent of how its lock was taken.
pub(crate) struct Recording<'r, K, V> {
    /// `Some` when the map is audited and this operation is a mutation that started its clock.
    audit: Option<(&'r MapAudit<K, V>, Instant)>,
    map_name: &'r Arc<str>,
    map_id: u64,
    op: Op,
    eff: &'r Effective<'r>,
}

impl<K, V> Records for Recording<'_, K, V> {
    type Caught = Box<dyn std::any::Any + Send>;
    type Ticket = Result<Option<Ticket>, MapError>;
    #[inline(always)]
    fn no_ticket() -> Self::Ticket {
        Ok(None)
    }
}

impl<K, V> Recorder<K, V> for Recording<'_, K, V> {
    #[inline]
    fn record(
        &self,
        shard: Option<usize>,
        outcome: Outcome<'_>,
        what: impl FnOnce(&MapAudit<K, V>) -> Change,
    ) -> Result<Option<Ticket>, MapError> {
        match self.audit {
            Some((a, t0)) => {
                // The encoders run the user's `Serialize`: a call back into the map from there
                // is refused instead of deadlocking on the shard we hold.
                let held = shard.map(|idx| HeldMark::new(self.map_id, idx, true));
                let change = what(a);
                drop(held);
                a.record(self.map_name, shard, self.op, self.eff, t0, outcome, change)
            }
            None => Ok(None),
        }
    }

    #[inline]
    fn old(&self, v: &V) -> Encoded {
        self.audit.map_or(Encoded::NONE, |(a, _)| a.value(v))
    }

    #[inline]
    fn guarded<R>(&self, f: impl FnOnce() -> R) -> std::thread::Result<R> {
        if self.audit.is_some() {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        } else {
            Ok(f())
        }
    }
}

impl<K, V> Recording<'_, K, V> {
    /// Records that a policy refused the operation and hands the error back.
    #[cold]
    fn refused(&self, shard: usize, key: Option<&K>, e: MapError) -> MapError {
        let _ = self.record(Some(shard), Outcome::Refused(&e), |a| Change {
            key: key.map_or(Encoded::NONE, |k| a.key(k)),
            old: Encoded::NONE,
            new: Encoded::NONE,
        });
        e
    }

    /// Records the removal of each of `gone` (under the shard lock); the last ticket.
    fn removed(&self, idx: usize, gone: &[(K, V)]) -> Result<Option<Ticket>, MapError> {
        let mut last = None;
        if self.audit.is_some() {
            for (k, v) in gone {
                let t = self.record(Some(idx), Outcome::Ok, |a| Change {
                    key: a.key(k),
                    old: a.value(v),
                    new: Encoded::NONE,
                })?;
                last = t.or(last);
            }
        }
        Ok(last)
    }
}

/// Ends an operation that ran on the fast path: unlocks (drops `guard`), drops what must be
/// dropped after the unlock, counts the operation as ok, and hands back its result. (Its
/// recorder recorded nothing and caught no panic: a panic unwinds through, and dropping the
/// count counts it as panicked.)
#[inline(always)]
fn fast_done<G, T, D>(counted: Option<Counted<'_>>, guard: G, done: Applied<T, D, RecordNothing>) -> T {
    drop(guard);
    drop(done.drop_after);
    count_ok(counted);
    match done.out {
        Ok(out) => out,
        Err(never) => match never {},
    }
}

/// A [`MapWrapper`] bound to an [`OpContext`] for the next operation; made by
/// [`MapWrapper::with`]. It has the same operations, documented on [`MapWrapper`].
pub struct WithContext<'m, 'c, K, V, S = RandomState> {
    map: &'m MapWrapper<K, V, S>,
    ctx: Option<&'c OpContext>,
}

impl<K, V, S> Clone for WithContext<'_, '_, K, V, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V, S> Copy for WithContext<'_, '_, K, V, S> {}

impl<K, V, S> fmt::Debug for WithContext<'_, '_, K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithContext").field("map", &self.map.name).field("ctx", &self.ctx).finish()
    }
}

/// One operation on the full path: its [`Waiter`] (contexts, bounded lock acquisition,
/// statistics) and, for a mutation of an audited map, the start of its audit clock.
pub(crate) struct FullOp<'m, 'c> {
    waiter: Waiter<'m, 'c>,
    t0: Option<Instant>,
}

impl<'m, 'c, K, V, S> WithContext<'m, 'c, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    #[inline]
    fn locate<Q: Hash + ?Sized>(&self, key: &Q) -> (u64, usize) {
        let hash = self.map.hasher.hash_one(key);
        (hash, self.map.shard_of(hash))
    }

    /// Starts operation `op`: gathers its contexts; locks are taken through the result.
    /// Inlined so that `op` is a constant where the statistics turn it into a counter index.
    #[inline(always)]
    fn begin(&self, op: Op) -> Waiter<'m, 'c> {
        Waiter::new(
            &self.map.name,
            self.map.id,
            op,
            Effective::new(self.ctx),
            self.map.timeout,
            self.map.monitor.as_deref(),
        )
    }

    /// Starts operation `op` on the full path: a mutation of a fail-closed audited map whose
    /// sink is down is refused first (nothing locked or changed), then its contexts are
    /// gathered.
    #[inline(always)]
    fn start(&self, op: Op) -> Result<FullOp<'m, 'c>, MapError> {
        let t0 = if op.is_mutation() { self.audit_begin()? } else { None };
        Ok(FullOp { waiter: self.begin(op), t0 })
    }

    /// The recorder of a full-path operation.
    #[inline]
    fn recorder<'r>(&'r self, op: &'r FullOp<'_, '_>) -> Recording<'r, K, V> {
        Recording {
            audit: self.map.audit.as_deref().zip(op.t0),
            map_name: &self.map.name,
            map_id: self.map.id,
            op: op.waiter.op,
            eff: &op.waiter.eff,
        }
    }

    /// The full path's write lock on shard `idx`: waits under the deadline; a refusal is
    /// recorded (with `key`, when the call owns one) and returned.
    #[inline]
    fn full_write(
        &self,
        op: &mut FullOp<'m, 'c>,
        idx: usize,
        key: Option<&K>,
    ) -> Result<RwLockWriteGuard<'m, Table<K, V>>, MapError> {
        let shard = &self.map.shards[idx];
        match op.waiter.write(idx, shard) {
            Ok(table) => Ok(table),
            Err(e) => Err(self.recorder(op).refused(idx, key, e)),
        }
    }

    /// Ends an operation that ran on the full path: unlocks, drops what must be dropped
    /// after the unlock, waits for its record's durability, resumes a caught panic, and hands
    /// back its result. The operation is counted when `op` drops (after this returns).
    #[inline]
    fn full_done<G, T, D, R>(&self, guard: G, done: Applied<T, D, R>) -> Result<T, MapError>
    where
        R: Records<Ticket = Result<Option<Ticket>, MapError>>,
    {
        drop(guard);
        drop(done.drop_after);
        let settled = done.ticket.and_then(|t| self.audit_settle(t));
        let out = done.out.unwrap_or_else(|caught| caught.resume());
        settled.map(|()| out)
    }

    /// The fast path: when operation `op` has nothing to check (no context, explicit or
    /// ambient; no audit; this thread holds no shard, so it cannot deadlock on this one; the
    /// breaker, if any, closed, disabled or metrics-only; statistics do not sample it for
    /// timing), tries `lock` once and returns the operation's count with the guard. Bind them
    /// in this order, so that the guard is dropped first; then end with [`fast_done`] on a
    /// normal return (dropped instead, it counts the operation as ok or, while the thread
    /// panics, as panicked). `None`: the operation goes the full way (a [`Waiter`], which
    /// waits for a taken lock under the deadline, times, audits).
    ///
    /// Why a separate way to take the lock: on a table far larger than the caches an
    /// operation's cost is its cache misses, and the CPU overlaps the misses of consecutive
    /// operations only when few instructions lie between them. The full path (a 21-word
    /// `Waiter`, the context and policy checks, a `Result` moved through it) made operations
    /// 2–4× slower than the lock and table alone in `benches/maps`, for ~200 more instructions.
    #[inline(always)]
    fn fast<G>(&self, op: Op, lock: impl FnOnce() -> Option<G>) -> Option<Fast<'m, G>> {
        if self.ctx.is_some()
            || self.map.audit.is_some()
            || !crate::deadlock::holds_nothing()
            || !context::no_ambient()
        {
            return None;
        }
        let counted = match self.map.monitor.as_deref() {
            None => None,
            Some(m) => Some(m.quick(op)?),
        };
        match lock() {
            Some(guard) => Some((counted, guard)),
            None => {
                // Taken: the full path waits for it and counts the operation itself.
                if let (Some(c), Some(m)) = (counted, self.map.monitor.as_deref()) {
                    m.discard(c);
                }
                None
            }
        }
    }

    /// [`fast`](Self::fast) for a read lock on shard `idx`.
    #[inline(always)]
    fn fast_read(&self, op: Op, idx: usize) -> Option<Fast<'m, RwLockReadGuard<'m, Table<K, V>>>> {
        let shard = &self.map.shards[idx];
        self.fast(op, || shard.try_read())
    }

    /// [`fast`](Self::fast) for a write lock on shard `idx`.
    #[inline(always)]
    fn fast_write(&self, op: Op, idx: usize) -> Option<Fast<'m, RwLockWriteGuard<'m, Table<K, V>>>> {
        let shard = &self.map.shards[idx];
        self.fast(op, || shard.try_write())
    }

    fn rehasher(&self) -> impl Fn(&(K, V)) -> u64 + '_ {
        move |(k, _)| self.map.hasher.hash_one(k)
    }

    /// Audit, before a mutation: refuses it when the map is fail-closed and its sink is down
    /// (nothing is locked or changed), else starts its latency clock.
    #[inline]
    fn audit_begin(&self) -> Result<Option<Instant>, MapError> {
        match &self.map.audit {
            None => Ok(None),
            Some(a) => a.begin(&self.map.name).map(Some),
        }
    }

    /// Audit, after the lock is released: waits until the record is as durable as the
    /// auditor requires.
    #[inline]
    fn audit_settle(&self, ticket: Option<Ticket>) -> Result<(), MapError> {
        match (&self.map.audit, ticket) {
            (Some(a), Some(t)) => a.settle(&self.map.name, Some(t)),
            _ => Ok(()),
        }
    }

    /// See [`MapWrapper::insert`].
    #[inline]
    pub fn insert(self, key: K, value: V) -> Result<Option<V>, MapError> {
        let (hash, idx) = self.locate(&key);
        if let Some((counted, mut table)) = self.fast_write(Op::Insert, idx) {
            let done = self.put(&RecordNothing, idx, &mut table, hash, key, value);
            return Ok(fast_done(counted, table, done));
        }
        self.insert_full(hash, idx, key, value)
    }

    /// `insert` on the full path.
    #[inline(never)]
    fn insert_full(self, hash: u64, idx: usize, key: K, value: V) -> Result<Option<V>, MapError> {
        let mut op = self.start(Op::Insert)?;
        let mut table = self.full_write(&mut op, idx, Some(&key))?;
        let done = self.put(&self.recorder(&op), idx, &mut table, hash, key, value);
        self.full_done(table, done)
    }

    /// The body of `insert` and of each pair of `extend`: stores `value` under `key` in a
    /// locked shard and records it. Hands back the old value and, when the key was already
    /// stored, the caller's `key`, for the caller to drop after unlocking (their `Drop` may
    /// use the map).
    #[inline(always)]
    fn put<Rec: Recorder<K, V>>(
        &self,
        rec: &Rec,
        idx: usize,
        table: &mut Table<K, V>,
        hash: u64,
        key: K,
        value: V,
    ) -> Applied<Option<V>, Option<K>, Rec> {
        match table.entry(hash, |(k, _)| *k == key, self.rehasher()) {
            hash_table::Entry::Occupied(mut o) => {
                let old = std::mem::replace(&mut o.get_mut().1, value);
                let (k, new) = o.get();
                let ticket = rec.record(Some(idx), Outcome::Ok, |a| Change {
                    key: a.key(k),
                    old: a.value(&old),
                    new: a.value(new),
                });
                Applied { out: Ok(Some(old)), drop_after: Some(key), ticket }
            }
            hash_table::Entry::Vacant(v) => {
                let o = v.insert((key, value));
                let (k, new) = o.get();
                let ticket = rec.record(Some(idx), Outcome::Ok, |a| Change {
                    key: a.key(k),
                    old: Encoded::NONE,
                    new: a.value(new),
                });
                Applied { out: Ok(None), drop_after: None, ticket }
            }
        }
    }

    /// See [`MapWrapper::get`].
    pub fn get<Q>(self, key: &Q) -> Result<Option<Ref<'m, K, V>>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, idx) = self.locate(key);
        if let Some((_counted, guard)) = self.fast_read(Op::Get, idx) {
            return Ok(self.found_ref(guard, idx, hash, key));
        }
        let mut op = self.start(Op::Get)?;
        let guard = op.waiter.read(idx, &self.map.shards[idx])?;
        Ok(self.found_ref(guard, idx, hash, key))
    }

    /// The body of `get`: the guard narrowed to the entry of `key` and marking its shard as
    /// held, or `None` (and the shard unlocked) if `key` is absent.
    #[inline]
    fn found_ref<Q>(
        &self,
        guard: RwLockReadGuard<'m, Table<K, V>>,
        idx: usize,
        hash: u64,
        key: &Q,
    ) -> Option<Ref<'m, K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let entry = RwLockReadGuard::try_map(guard, |t| t.find(hash, |(k, _)| k.borrow() == key)).ok()?;
        Some(Ref { entry, _held: HeldMark::new(self.map.id, idx, false) })
    }

    /// See [`MapWrapper::view`].
    pub fn view<Q, R, F>(self, key: &Q, f: F) -> Result<Option<R>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&V) -> R,
    {
        let (hash, idx) = self.locate(key);
        let id = self.map.id;
        // The body: `f` runs with the shard marked as held (a write back into it is refused).
        let run = |table: &Table<K, V>| {
            table.find(hash, |(k, _)| k.borrow() == key).map(|(_, v)| {
                let _held = HeldMark::new(id, idx, false);
                f(v)
            })
        };
        if let Some((_counted, table)) = self.fast_read(Op::View, idx) {
            return Ok(run(&table));
        }
        let mut op = self.start(Op::View)?;
        let table = op.waiter.read(idx, &self.map.shards[idx])?;
        Ok(run(&table))
    }

    /// See [`MapWrapper::get_cloned`].
    #[inline]
    pub fn get_cloned<Q>(self, key: &Q) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        self.read_op(Op::GetCloned, key, |found| found.map(|(_, v)| v.clone()))
    }

    /// See [`MapWrapper::contains_key`].
    #[inline]
    pub fn contains_key<Q>(self, key: &Q) -> Result<bool, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read_op(Op::ContainsKey, key, |found| found.is_some())
    }

    /// A lookup whose result is computed under the read lock by crate code (no user closure):
    /// the body is `f` of the entry found.
    #[inline]
    fn read_op<Q, R>(self, op: Op, key: &Q, f: impl FnOnce(Option<&(K, V)>) -> R) -> Result<R, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, idx) = self.locate(key);
        if let Some((counted, table)) = self.fast_read(op, idx) {
            let r = f(table.find(hash, |(k, _)| k.borrow() == key));
            drop(table);
            count_ok(counted);
            return Ok(r);
        }
        self.read_op_full(op, hash, idx, key, f)
    }

    /// `read_op` on the full path.
    #[inline(never)]
    fn read_op_full<Q, R>(
        self,
        op: Op,
        hash: u64,
        idx: usize,
        key: &Q,
        f: impl FnOnce(Option<&(K, V)>) -> R,
    ) -> Result<R, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut op = self.start(op)?;
        let table = op.waiter.read(idx, &self.map.shards[idx])?;
        Ok(f(table.find(hash, |(k, _)| k.borrow() == key)))
    }

    /// See [`MapWrapper::remove`].
    #[inline]
    pub fn remove<Q>(self, key: &Q) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Ok(self.remove_entry_op(Op::Remove, key, None::<fn(&K, &V) -> bool>)?.map(|(_, v)| v))
    }

    /// See [`MapWrapper::remove_entry`].
    #[inline]
    pub fn remove_entry<Q>(self, key: &Q) -> Result<Option<(K, V)>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_entry_op(Op::RemoveEntry, key, None::<fn(&K, &V) -> bool>)
    }

    /// See [`MapWrapper::remove_if`].
    #[inline]
    pub fn remove_if<Q, F>(self, key: &Q, f: F) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&K, &V) -> bool,
    {
        Ok(self.remove_entry_op(Op::RemoveIf, key, Some(f))?.map(|(_, v)| v))
    }

    /// Removes `key` if `f` (when given) says so.
    #[inline]
    fn remove_entry_op<Q, F>(self, op: Op, key: &Q, f: Option<F>) -> Result<Option<(K, V)>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&K, &V) -> bool,
    {
        let (hash, idx) = self.locate(key);
        if let Some((counted, mut table)) = self.fast_write(op, idx) {
            let done = self.take(&RecordNothing, idx, &mut table, hash, key, f);
            return Ok(fast_done(counted, table, done));
        }
        self.remove_entry_full(op, hash, idx, key, f)
    }

    /// `remove_entry_op` on the full path.
    #[inline(never)]
    fn remove_entry_full<Q, F>(
        self,
        op: Op,
        hash: u64,
        idx: usize,
        key: &Q,
        f: Option<F>,
    ) -> Result<Option<(K, V)>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&K, &V) -> bool,
    {
        let mut op = self.start(op)?;
        let mut table = self.full_write(&mut op, idx, None)?;
        let done = self.take(&self.recorder(&op), idx, &mut table, hash, key, f);
        self.full_done(table, done)
    }

    /// The body of `remove`, `remove_entry` and `remove_if`: takes `key` out of a locked shard
    /// if `f` (when given) says so; `f` runs with the shard marked as held (a call back into
    /// the map from it is refused). The removed pair is the result, dropped by the caller
    /// after the unlock.
    #[inline(always)]
    fn take<Q, F, Rec: Recorder<K, V>>(
        &self,
        rec: &Rec,
        idx: usize,
        table: &mut Table<K, V>,
        hash: u64,
        key: &Q,
        f: Option<F>,
    ) -> Applied<Option<(K, V)>, (), Rec>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        F: FnOnce(&K, &V) -> bool,
    {
        let Ok(entry) = table.find_entry(hash, |(k, _)| k.borrow() == key) else {
            return Applied::unchanged(None);
        };
        if f.is_some_and(|f| {
            let _held = HeldMark::new(self.map.id, idx, true);
            let (k, v) = entry.get();
            !f(k, v)
        }) {
            return Applied::unchanged(None);
        }
        let (k, v) = entry.remove().0;
        let ticket = rec.record(Some(idx), Outcome::Ok, |a| Change {
            key: a.key(&k),
            old: a.value(&v),
            new: Encoded::NONE,
        });
        Applied { out: Ok(Some((k, v))), drop_after: (), ticket }
    }

    /// See [`MapWrapper::update`].
    #[inline]
    pub fn update<Q, R, F>(self, key: &Q, f: F) -> Result<Option<R>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&mut V) -> R,
    {
        let (hash, idx) = self.locate(key);
        if let Some((counted, mut table)) = self.fast_write(Op::Update, idx) {
            let done = self.modify(&RecordNothing, idx, &mut table, hash, key, f);
            return Ok(fast_done(counted, table, done));
        }
        self.update_full(hash, idx, key, f)
    }

    /// `update` on the full path.
    #[inline(never)]
    fn update_full<Q, R, F>(self, hash: u64, idx: usize, key: &Q, f: F) -> Result<Option<R>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&mut V) -> R,
    {
        let mut op = self.start(Op::Update)?;
        let mut table = self.full_write(&mut op, idx, None)?;
        let done = self.modify(&self.recorder(&op), idx, &mut table, hash, key, f);
        self.full_done(table, done)
    }

    /// The body of `update`: runs `f` on the value of `key` in a locked shard, with the shard
    /// marked as held, and records the change.
    #[inline(always)]
    fn modify<Q, R, F, Rec: Recorder<K, V>>(
        &self,
        rec: &Rec,
        idx: usize,
        table: &mut Table<K, V>,
        hash: u64,
        key: &Q,
        f: F,
    ) -> Applied<Option<R>, (), Rec>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        F: FnOnce(&mut V) -> R,
    {
        let Some((k, v)) = table.find_mut(hash, |(k, _)| k.borrow() == key) else {
            return Applied::unchanged(None);
        };
        let old = rec.old(v);
        let r = rec.guarded(|| {
            let _held = HeldMark::new(self.map.id, idx, true);
            f(v)
        });
        let ticket =
            rec.record(Some(idx), Outcome::of(&r), |a| Change { key: a.key(k), old, new: a.value(v) });
        Applied { out: r.map(Some), drop_after: (), ticket }
    }

    /// See [`MapWrapper::alter`].
    pub fn alter<F>(self, key: K, f: F) -> Result<Option<V>, MapError>
    where
        F: FnOnce(Option<&V>) -> Option<V>,
    {
        let (hash, idx) = self.locate(&key);
        if let Some((counted, mut table)) = self.fast_write(Op::Alter, idx) {
            let done = self.replace(&RecordNothing, idx, &mut table, hash, key, f);
            return Ok(fast_done(counted, table, done));
        }
        let mut op = self.start(Op::Alter)?;
        let mut table = self.full_write(&mut op, idx, Some(&key))?;
        let done = self.replace(&self.recorder(&op), idx, &mut table, hash, key, f);
        self.full_done(table, done)
    }

    /// The body of `alter`: sets the value of `key` in a locked shard to what `f` returns
    /// (`None` removes it), `f` running with the shard marked as held. The stored key of a
    /// removed entry is dropped after the unlock (its `Drop` may use the map).
    #[inline(always)]
    fn replace<F, Rec: Recorder<K, V>>(
        &self,
        rec: &Rec,
        idx: usize,
        table: &mut Table<K, V>,
        hash: u64,
        key: K,
        f: F,
    ) -> Applied<Option<V>, Option<K>, Rec>
    where
        F: FnOnce(Option<&V>) -> Option<V>,
    {
        let held = HeldMark::new(self.map.id, idx, true);
        let record = |outcome: Outcome<'_>, k: &K, old: Option<&V>, new: Option<&V>| {
            rec.record(Some(idx), outcome, |a| Change {
                key: a.key(k),
                old: a.value_opt(old),
                new: a.value_opt(new),
            })
        };
        let no_change = Outcome::Panicked(PANICKED_NO_CHANGE);
        match table.entry(hash, |(k, _)| *k == key, self.rehasher()) {
            hash_table::Entry::Occupied(mut o) => {
                let new = rec.guarded(|| f(Some(&o.get().1)));
                drop(held);
                match new {
                    Err(panic) => {
                        let (k, v) = o.get();
                        let ticket = record(no_change, k, Some(v), Some(v));
                        Applied { out: Err(panic), drop_after: None, ticket }
                    }
                    Ok(Some(v)) => {
                        let old = std::mem::replace(&mut o.get_mut().1, v);
                        let (k, new) = o.get();
                        let ticket = record(Outcome::Ok, k, Some(&old), Some(new));
                        Applied { out: Ok(Some(old)), drop_after: Some(key), ticket }
                    }
                    Ok(None) => {
                        let (k, old) = o.remove().0;
                        let ticket = record(Outcome::Ok, &k, Some(&old), None);
                        Applied { out: Ok(Some(old)), drop_after: Some(k), ticket }
                    }
                }
            }
            hash_table::Entry::Vacant(slot) => {
                let new = rec.guarded(|| f(None));
                drop(held);
                match new {
                    Err(panic) => {
                        let ticket = record(no_change, &key, None, None);
                        Applied { out: Err(panic), drop_after: Some(key), ticket }
                    }
                    Ok(Some(v)) => {
                        let o = slot.insert((key, v));
                        let (k, new) = o.get();
                        let ticket = record(Outcome::Ok, k, None, Some(new));
                        Applied { out: Ok(None), drop_after: None, ticket }
                    }
                    Ok(None) => Applied { out: Ok(None), drop_after: Some(key), ticket: Rec::no_ticket() },
                }
            }
        }
    }

    /// See [`MapWrapper::entry`].
    pub fn entry(self, key: K) -> Entry<'m, 'c, K, V, S, fn(&mut V)> {
        Entry { with: self, key, modify: |_| {}, modifies: false }
    }

    /// The body of an [`Entry`] upsert: in a locked shard, inserts what `make` returns if
    /// `key` is absent, else runs `modify` (when `modifies`), each with the shard marked as
    /// held. A present key without `modify` changes nothing and records nothing.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn upsert<Rec: Recorder<K, V>>(
        &self,
        rec: &Rec,
        idx: usize,
        table: &mut Table<K, V>,
        hash: u64,
        key: K,
        make: impl FnOnce() -> V,
        modify: impl FnOnce(&mut V),
        modifies: bool,
    ) -> Applied<Upserted, Option<K>, Rec> {
        let held = HeldMark::new(self.map.id, idx, true);
        match table.entry(hash, |(k, _)| *k == key, self.rehasher()) {
            hash_table::Entry::Occupied(_) if !modifies => {
                drop(held);
                Applied { out: Ok(Upserted::Existing), drop_after: Some(key), ticket: Rec::no_ticket() }
            }
            hash_table::Entry::Occupied(mut o) => {
                let old = rec.old(&o.get().1);
                let r = rec.guarded(|| modify(&mut o.get_mut().1));
                drop(held);
                let (k, new) = o.get();
                let ticket = rec.record(Some(idx), Outcome::of(&r), |a| Change {
                    key: a.key(k),
                    old,
                    new: a.value(new),
                });
                Applied { out: r.map(|()| Upserted::Existing), drop_after: Some(key), ticket }
            }
            hash_table::Entry::Vacant(slot) => {
                // `make` first: if it panics, `key` is dropped after the unlock.
                let value = make();
                drop(held);
                let o = slot.insert((key, value));
                let (k, new) = o.get();
                let ticket = rec.record(Some(idx), Outcome::Ok, |a| Change {
                    key: a.key(k),
                    old: Encoded::NONE,
                    new: a.value(new),
                });
                Applied { out: Ok(Upserted::Inserted), drop_after: None, ticket }
            }
        }
    }

    /// Runs `f` on each shard in turn under a write lock, all under one deadline; drops what
    /// `f` hands back only after the shard is unlocked (a value's `Drop` may use the map).
    /// `f` also returns whether recording what it did succeeded; the first failure stops the
    /// walk. Waits for the durability of the last record before returning (error or not).
    fn each_shard_mut<D>(
        self,
        op: Op,
        mut f: impl FnMut(&Recording<'_, K, V>, usize, &mut Table<K, V>) -> (D, Result<Option<Ticket>, MapError>),
    ) -> Result<(), MapError> {
        let mut op = self.start(op)?;
        if let Err(e) = op.waiter.refuse_if_holding_any() {
            let shard = if let MapError::WouldDeadlock { shard, .. } = e { shard } else { 0 };
            return Err(self.recorder(&op).refused(shard, None, e));
        }
        op.waiter.start_clock();
        let mut last = None;
        let mut result = Ok(());
        for idx in 0..self.map.shards.len() {
            let mut table = match self.full_write(&mut op, idx, None) {
                Ok(t) => t,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let (garbage, recorded) = f(&self.recorder(&op), idx, &mut table);
            drop(table);
            drop(garbage);
            match recorded {
                Ok(t) => last = t.or(last),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.audit_settle(last)?;
        result
    }

    /// Runs `f` on each shard in turn under a read lock, all under one deadline, until it
    /// returns `false`.
    fn each_shard(self, op: Op, mut f: impl FnMut(usize, &Table<K, V>) -> bool) -> Result<(), MapError> {
        let mut waiter = self.begin(op);
        waiter.start_clock();
        for (idx, shard) in self.map.shards.iter().enumerate() {
            let table = waiter.read(idx, shard)?;
            if !f(idx, &table) {
                break;
            }
        }
        Ok(())
    }

    /// Read-locks every shard at once, in index order, under one deadline: a consistent view of
    /// the whole map (used to serialize it). Writers of any shard wait until the guards drop.
    #[cfg(feature = "serde")]
    pub(crate) fn read_all(self, op: Op) -> Result<Vec<ReadAll<'m, K, V>>, MapError> {
        let mut waiter = self.begin(op);
        waiter.start_clock();
        let mut guards = Vec::with_capacity(self.map.shards.len());
        for (idx, shard) in self.map.shards.iter().enumerate() {
            let table = waiter.read(idx, shard)?;
            guards.push(ReadAll { table, _held: HeldMark::new(self.map.id, idx, false) });
        }
        Ok(guards)
    }

    /// See [`MapWrapper::retain`].
    pub fn retain<F>(self, mut f: F) -> Result<usize, MapError>
    where
        F: FnMut(&K, &V) -> bool,
    {
        let id = self.map.id;
        let mut removed = 0;
        let mut panicked = None;
        let result = self.each_shard_mut(Op::Retain, |rec, idx, table| {
            if panicked.is_some() {
                // After a panic the walk goes on without touching anything, to unlock cleanly.
                return (Vec::new(), Ok(None));
            }
            let held = HeldMark::new(id, idx, true);
            let gone: Vec<(K, V)> = table
                .extract_if(|(k, v)| {
                    if panicked.is_some() {
                        return false;
                    }
                    match rec.guarded(|| !f(k, v)) {
                        Ok(remove) => remove,
                        Err(panic) => {
                            panicked = Some(panic);
                            false
                        }
                    }
                })
                .collect();
            drop(held);
            removed += gone.len();
            let mut recorded = rec.removed(idx, &gone);
            if panicked.is_some() {
                let failed = rec.record(Some(idx), Outcome::Panicked(PANICKED_RETAIN), |_| Change {
                    key: Encoded::NONE,
                    old: Encoded::NONE,
                    new: Encoded::NONE,
                });
                recorded = recorded.and_then(|last| Ok(failed?.or(last)));
            }
            (gone, recorded)
        });
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        result?;
        Ok(removed)
    }

    /// See [`MapWrapper::clear`].
    pub fn clear(self) -> Result<usize, MapError> {
        let mut removed = 0;
        self.each_shard_mut(Op::Clear, |rec, idx, table| {
            removed += table.len();
            let gone: Vec<(K, V)> = std::mem::take(table).into_iter().collect();
            let recorded = rec.removed(idx, &gone);
            (gone, recorded)
        })?;
        Ok(removed)
    }

    /// See [`MapWrapper::len`].
    pub fn len(self) -> Result<usize, MapError> {
        let mut n = 0;
        self.each_shard(Op::Len, |_, t| {
            n += t.len();
            true
        })?;
        Ok(n)
    }

    /// See [`MapWrapper::is_empty`].
    pub fn is_empty(self) -> Result<bool, MapError> {
        let mut empty = true;
        self.each_shard(Op::IsEmpty, |_, t| {
            empty = t.is_empty();
            empty
        })?;
        Ok(empty)
    }

    /// See [`MapWrapper::for_each`].
    pub fn for_each<F>(self, mut f: F) -> Result<(), MapError>
    where
        F: FnMut(&K, &V),
    {
        let id = self.map.id;
        self.each_shard(Op::ForEach, |idx, t| {
            let _held = HeldMark::new(id, idx, false);
            t.iter().for_each(|(k, v)| f(k, v));
            true
        })
    }

    /// See [`MapWrapper::snapshot`].
    pub fn snapshot(self) -> Result<Vec<(K, V)>, MapError>
    where
        K: Clone,
        V: Clone,
    {
        let mut out = Vec::new();
        self.each_shard(Op::Snapshot, |_, t| {
            out.extend(t.iter().cloned());
            true
        })?;
        Ok(out)
    }

    /// See [`MapWrapper::iter`].
    pub fn iter(self) -> Result<Iter<K, V>, MapError>
    where
        K: Clone,
        V: Clone,
    {
        Ok(Iter { entries: self.snapshot()?.into_iter() })
    }

    /// See [`MapWrapper::extend`].
    pub fn extend<I: IntoIterator<Item = (K, V)>>(self, iter: I) -> Result<usize, MapError> {
        let mut op = self.start(Op::Extend)?;
        op.waiter.start_clock();
        let mut n = 0;
        let (mut last, mut result) = (None, Ok(()));
        for (key, value) in iter {
            let (hash, idx) = self.locate(&key);
            let mut table = match self.full_write(&mut op, idx, Some(&key)) {
                Ok(t) => t,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let Applied { out, drop_after, ticket } =
                self.put(&self.recorder(&op), idx, &mut table, hash, key, value);
            drop(table);
            drop((out, drop_after));
            n += 1;
            match ticket {
                Ok(t) => last = t.or(last),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.audit_settle(last)?;
        result.map(|()| n)
    }
}

/// An iterator over a snapshot of a [`MapWrapper`]'s entries; made by [`MapWrapper::iter`].
/// It holds no lock.
#[derive(Debug, Clone)]
pub struct Iter<K, V> {
    entries: std::vec::IntoIter<(K, V)>,
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

/// A pending upsert of one key; made by [`MapWrapper::entry`]. Nothing happens until one of
/// the `or_*` methods runs it.
#[must_use = "an entry does nothing until `or_insert`, `or_insert_with` or `or_default` runs it"]
pub struct Entry<'m, 'c, K, V, S, M> {
    with: WithContext<'m, 'c, K, V, S>,
    key: K,
    modify: M,
    /// Whether `and_modify` was called: without it, an upsert on a present key changes
    /// nothing and writes no audit record.
    modifies: bool,
}

/// What an upsert through [`Entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upserted {
    /// The key was absent; the new value was inserted.
    Inserted,
    /// The key was present; the `and_modify` closures (if any) ran on its value.
    Existing,
}

impl<'m, 'c, K, V, S, M> Entry<'m, 'c, K, V, S, M>
where
    K: Hash + Eq,
    S: BuildHasher,
    M: FnOnce(&mut V),
{
    /// Runs `f` on the value if the key is present (after any earlier `and_modify`).
    pub fn and_modify<F: FnOnce(&mut V)>(self, f: F) -> Entry<'m, 'c, K, V, S, impl FnOnce(&mut V)> {
        let first = self.modify;
        Entry {
            with: self.with,
            key: self.key,
            modify: move |v: &mut V| {
                first(v);
                f(v);
            },
            modifies: true,
        }
    }

    /// Inserts `value` if the key is absent, otherwise runs the `and_modify` closures.
    ///
    /// Locks: the key's shard, for writing, for the whole upsert.
    pub fn or_insert(self, value: V) -> Result<Upserted, MapError> {
        self.or_insert_with(|| value)
    }

    /// Inserts `V::default()` if the key is absent, otherwise runs the `and_modify` closures.
    pub fn or_default(self) -> Result<Upserted, MapError>
    where
        V: Default,
    {
        self.or_insert_with(V::default)
    }

    /// Inserts what `make` returns if the key is absent, otherwise runs the `and_modify`
    /// closures. `make` runs under the lock. On a present key without `and_modify` nothing
    /// changes, and an audited map writes no record.
    pub fn or_insert_with<F: FnOnce() -> V>(self, make: F) -> Result<Upserted, MapError> {
        let Entry { with, key, modify, modifies } = self;
        let (hash, idx) = with.locate(&key);
        if let Some((counted, mut table)) = with.fast_write(Op::Entry, idx) {
            let done = with.upsert(&RecordNothing, idx, &mut table, hash, key, make, modify, modifies);
            return Ok(fast_done(counted, table, done));
        }
        let mut op = with.start(Op::Entry)?;
        let mut table = with.full_write(&mut op, idx, Some(&key))?;
        let done = with.upsert(&with.recorder(&op), idx, &mut table, hash, key, make, modify, modifies);
        with.full_done(table, done)
    }
}

impl<K: fmt::Debug, V, S, M> fmt::Debug for Entry<'_, '_, K, V, S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("map", &self.with.map.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// One shard read-locked by `WithContext::read_all`, marked as held by this thread.
#[cfg(feature = "serde")]
pub(crate) struct ReadAll<'a, K, V> {
    pub(crate) table: RwLockReadGuard<'a, Table<K, V>>,
    _held: HeldMark,
}

/// A read guard on one value of a [`MapWrapper`]; made by [`MapWrapper::get`].
///
/// It holds the read lock of the value's shard until dropped: writers of that shard wait, and
/// this thread's own writes to it return [`MapError::WouldDeadlock`]. It is not `Send`: the
/// lock belongs to the thread that took it.
pub struct Ref<'a, K, V> {
    entry: MappedRwLockReadGuard<'a, (K, V)>,
    // Dropped after `entry` (fields drop in order), so the shard is unlocked first.
    _held: HeldMark,
}

impl<K, V> Ref<'_, K, V> {
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
    type IntoIter = std::iter::FlatMap<
        std::vec::IntoIter<Shard<K, V>>,
        hash_table::IntoIter<(K, V)>,
        fn(Shard<K, V>) -> hash_table::IntoIter<(K, V)>,
    >;

    /// Consumes the map and yields every entry; takes no lock (the map is owned).
    fn into_iter(self) -> Self::IntoIter {
        fn drain<K, V>(shard: Shard<K, V>) -> hash_table::IntoIter<(K, V)> {
            shard.into_inner().into_inner().into_iter()
        }
        self.shards.into_vec().into_iter().flat_map(drain as fn(_) -> _)
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

    #[test]
    fn into_iter_yields_everything() {
        let m: MapWrapper<u32, u32> = (0..100).map(|i| (i, i * 2)).collect();
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_unstable();
        assert_eq!(v.len(), 100);
        assert_eq!(v[7], (7, 14));
    }
}
