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
use crate::shard::{self, HeldMark, Shard, Table, Waiter};
use crate::stats::{count_ok, Counted, Monitor, Stats};
use crate::{CircuitBreaker, MapError, OpContext};

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
        self.plain().read_all("serialize")
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

/// Ends an operation that ran on the fast path: unlocks (drops `guard`), then counts it as
/// ok, and hands back its result.
#[inline(always)]
fn fast_ok<G, R>(counted: Option<Counted<'_>>, guard: G, r: R) -> R {
    drop(guard);
    count_ok(counted);
    r
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
    fn begin(&self, op: &'static str) -> Waiter<'m, 'c> {
        Waiter::new(
            &self.map.name,
            self.map.id,
            op,
            Effective::new(self.ctx),
            self.map.timeout,
            self.map.monitor.as_deref(),
        )
    }

    /// The fast path: when operation `op` has nothing to check (no context, explicit or
    /// ambient; no audit; this thread holds no shard, so it cannot deadlock on this one; the
    /// breaker, if any, closed, disabled or metrics-only; statistics do not sample it for
    /// timing), tries `lock` once and returns the operation's count with the guard. Bind them
    /// in this order, so that the guard is dropped first; then end with [`fast_ok`] on a
    /// normal return (dropped instead, it counts the operation as ok or, while the thread
    /// panics, as panicked). `None`: the operation goes the full way (a [`Waiter`], which
    /// waits for a taken lock under the deadline, times, audits).
    ///
    /// Why a separate path: on a table far larger than the caches an operation's cost is its
    /// cache misses, and the CPU overlaps the misses of consecutive operations only when few
    /// instructions lie between them. The full path (a 21-word `Waiter`, the context and
    /// policy checks, an 80-byte `Result` moved through it) made operations 2–4× slower than
    /// the lock and table alone in `benches/maps`, for ~200 more instructions.
    #[inline(always)]
    fn fast<G>(&self, op: &'static str, lock: impl FnOnce() -> Option<G>) -> Option<Fast<'m, G>> {
        if self.ctx.is_some() || self.map.audit.is_some() || !shard::holds_nothing() || !context::no_ambient()
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
    fn fast_read(&self, op: &'static str, idx: usize) -> Option<Fast<'m, RwLockReadGuard<'m, Table<K, V>>>> {
        let shard = &self.map.shards[idx];
        self.fast(op, || shard.try_read())
    }

    /// [`fast`](Self::fast) for a write lock on shard `idx`.
    #[inline(always)]
    fn fast_write(
        &self,
        op: &'static str,
        idx: usize,
    ) -> Option<Fast<'m, RwLockWriteGuard<'m, Table<K, V>>>> {
        let shard = &self.map.shards[idx];
        self.fast(op, || shard.try_write())
    }

    fn rehasher(&self) -> impl Fn(&(K, V)) -> u64 + '_ {
        move |(k, _)| self.map.hasher.hash_one(k)
    }

    /// Audit, before a mutation: refuses it when the map is fail-closed and its sink is down
    /// (nothing is locked or changed), else starts its latency clock.
    #[inline]
    fn audit_begin(&self, op: &'static str) -> Result<Option<Instant>, MapError> {
        match &self.map.audit {
            None => Ok(None),
            Some(a) => a.begin(&self.map.name, op, &Effective::new(self.ctx), self.map.timeout).map(Some),
        }
    }

    /// Audit: builds and enqueues the record of one change or refusal; called under the shard
    /// lock for a change, so a key's records follow the order of its mutations. `what`
    /// encodes key and values and runs only when the map is audited.
    #[inline]
    fn audit(
        &self,
        op: &Waiter<'_, '_>,
        t0: Option<Instant>,
        shard: Option<usize>,
        outcome: Outcome<'_>,
        what: impl FnOnce(&MapAudit<K, V>) -> Change,
    ) -> Result<Option<Ticket>, MapError> {
        match (&self.map.audit, t0) {
            (Some(a), Some(t0)) => {
                // The encoders run the user's `Serialize`: a call back into the map from there
                // is refused instead of deadlocking on the shard we hold.
                let held = shard.map(|idx| HeldMark::new(self.map.id, idx, true));
                let change = what(a);
                drop(held);
                a.record(&self.map.name, shard, op.op, &op.eff, t0, outcome, change)
            }
            _ => Ok(None),
        }
    }

    /// Audit: records that a policy refused the operation and hands the error back.
    #[cold]
    fn audit_refused(
        &self,
        op: &Waiter<'_, '_>,
        t0: Option<Instant>,
        shard: usize,
        key: Option<&K>,
        e: MapError,
    ) -> MapError {
        let key = |a: &MapAudit<K, V>| key.map_or(Encoded::NONE, |k| a.key(k));
        let _ = self.audit(op, t0, Some(shard), Outcome::Refused(&e), |a| Change {
            key: key(a),
            old: Encoded::NONE,
            new: Encoded::NONE,
        });
        e
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

    /// Runs a closure that changes a value in place; on an audited map a panic is caught, so
    /// that the change made before it is recorded before the panic goes on.
    #[inline]
    fn guarded<R>(&self, f: impl FnOnce() -> R) -> std::thread::Result<R> {
        if self.map.audit.is_some() {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        } else {
            Ok(f())
        }
    }

    /// The encoded value before an in-place change, when audited.
    fn audit_old(&self, v: &V) -> Encoded {
        self.map.audit.as_ref().map_or(Encoded::NONE, |a| a.value(v))
    }

    /// See [`MapWrapper::insert`].
    #[inline]
    pub fn insert(self, key: K, value: V) -> Result<Option<V>, MapError> {
        let (hash, idx) = self.locate(&key);
        if let Some((counted, mut table)) = self.fast_write("insert", idx) {
            let old = match table.entry(hash, |(k, _)| *k == key, self.rehasher()) {
                hash_table::Entry::Occupied(mut o) => Some(std::mem::replace(&mut o.get_mut().1, value)),
                hash_table::Entry::Vacant(v) => {
                    v.insert((key, value));
                    None
                }
            };
            return Ok(fast_ok(counted, table, old));
        }
        self.insert_full(hash, idx, key, value)
    }

    /// `insert` with every policy: contexts, statistics, audit, a bounded wait.
    #[inline(never)]
    fn insert_full(self, hash: u64, idx: usize, key: K, value: V) -> Result<Option<V>, MapError> {
        let t0 = self.audit_begin("insert")?;
        let mut op = self.begin("insert");
        let mut table = op
            .write(idx, &self.map.shards[idx])
            .map_err(|e| self.audit_refused(&op, t0, idx, Some(&key), e))?;
        let (old, unstored, ticket) = self.put(&op, t0, idx, &mut table, hash, key, value);
        drop(table);
        drop(unstored);
        self.audit_settle(ticket?)?;
        Ok(old)
    }

    /// Stores `value` under `key` in a locked shard and records it: the body of `insert` and
    /// of each pair of `extend`. Hands back the old value and, when the key was already
    /// stored, the caller's `key`, for the caller to drop after unlocking (their `Drop` may
    /// use the map).
    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        op: &Waiter<'_, '_>,
        t0: Option<Instant>,
        idx: usize,
        table: &mut Table<K, V>,
        hash: u64,
        key: K,
        value: V,
    ) -> (Option<V>, Option<K>, Result<Option<Ticket>, MapError>) {
        match table.entry(hash, |(k, _)| *k == key, self.rehasher()) {
            hash_table::Entry::Occupied(mut o) => {
                let old = std::mem::replace(&mut o.get_mut().1, value);
                let (k, new) = o.get();
                let t = self.audit(op, t0, Some(idx), Outcome::Ok, |a| Change {
                    key: a.key(k),
                    old: a.value(&old),
                    new: a.value(new),
                });
                (Some(old), Some(key), t)
            }
            hash_table::Entry::Vacant(v) => {
                let o = v.insert((key, value));
                let (k, new) = o.get();
                let t = self.audit(op, t0, Some(idx), Outcome::Ok, |a| Change {
                    key: a.key(k),
                    old: Encoded::NONE,
                    new: a.value(new),
                });
                (None, None, t)
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
        if let Some((_counted, guard)) = self.fast_read("get", idx) {
            return Ok(self.found_ref(guard, idx, hash, key));
        }
        let mut op = self.begin("get");
        let guard = op.read(idx, &self.map.shards[idx])?;
        Ok(self.found_ref(guard, idx, hash, key))
    }

    /// The guard of `get`, narrowed to the entry of `key` and marking its shard as held, or
    /// `None` (and the shard unlocked) if `key` is absent.
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
        let run = |table: &Table<K, V>| {
            table.find(hash, |(k, _)| k.borrow() == key).map(|(_, v)| {
                let _held = HeldMark::new(self.map.id, idx, false);
                f(v)
            })
        };
        if let Some((_counted, table)) = self.fast_read("view", idx) {
            return Ok(run(&table));
        }
        let mut op = self.begin("view");
        let table = op.read(idx, &self.map.shards[idx])?;
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
        self.read_op("get_cloned", key, |found| found.map(|(_, v)| v.clone()))
    }

    /// See [`MapWrapper::contains_key`].
    #[inline]
    pub fn contains_key<Q>(self, key: &Q) -> Result<bool, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read_op("contains_key", key, |found| found.is_some())
    }

    /// A lookup whose result is computed under the read lock by crate code (no user closure).
    #[inline]
    fn read_op<Q, R>(
        self,
        op: &'static str,
        key: &Q,
        f: impl FnOnce(Option<&(K, V)>) -> R,
    ) -> Result<R, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, idx) = self.locate(key);
        if let Some((counted, table)) = self.fast_read(op, idx) {
            let r = f(table.find(hash, |(k, _)| k.borrow() == key));
            return Ok(fast_ok(counted, table, r));
        }
        self.read_op_full(op, hash, idx, key, f)
    }

    /// `read_op` with every policy.
    #[inline(never)]
    fn read_op_full<Q, R>(
        self,
        op: &'static str,
        hash: u64,
        idx: usize,
        key: &Q,
        f: impl FnOnce(Option<&(K, V)>) -> R,
    ) -> Result<R, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut op = self.begin(op);
        let table = op.read(idx, &self.map.shards[idx])?;
        Ok(f(table.find(hash, |(k, _)| k.borrow() == key)))
    }

    /// See [`MapWrapper::remove`].
    #[inline]
    pub fn remove<Q>(self, key: &Q) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Ok(self.remove_entry_op("remove", key, None::<fn(&K, &V) -> bool>)?.map(|(_, v)| v))
    }

    /// See [`MapWrapper::remove_entry`].
    #[inline]
    pub fn remove_entry<Q>(self, key: &Q) -> Result<Option<(K, V)>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_entry_op("remove_entry", key, None::<fn(&K, &V) -> bool>)
    }

    /// See [`MapWrapper::remove_if`].
    #[inline]
    pub fn remove_if<Q, F>(self, key: &Q, f: F) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&K, &V) -> bool,
    {
        Ok(self.remove_entry_op("remove_if", key, Some(f))?.map(|(_, v)| v))
    }

    /// Removes `key` if `f` (when given) says so; `f` runs under the write lock with the shard
    /// marked as held (a call back into the map from it is refused).
    #[inline]
    fn remove_entry_op<Q, F>(
        self,
        op: &'static str,
        key: &Q,
        f: Option<F>,
    ) -> Result<Option<(K, V)>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&K, &V) -> bool,
    {
        let (hash, idx) = self.locate(key);
        if let Some((counted, mut table)) = self.fast_write(op, idx) {
            let Ok(entry) = table.find_entry(hash, |(k, _)| k.borrow() == key) else {
                return Ok(None);
            };
            if f.is_some_and(|f| {
                let _held = HeldMark::new(self.map.id, idx, true);
                let (k, v) = entry.get();
                !f(k, v)
            }) {
                return Ok(None);
            }
            let removed = entry.remove().0;
            return Ok(fast_ok(counted, table, Some(removed)));
        }
        self.remove_entry_full(op, hash, idx, key, f)
    }

    /// `remove_entry_op` with every policy.
    #[inline(never)]
    fn remove_entry_full<Q, F>(
        self,
        op: &'static str,
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
        let t0 = self.audit_begin(op)?;
        let mut op = self.begin(op);
        let mut table =
            op.write(idx, &self.map.shards[idx]).map_err(|e| self.audit_refused(&op, t0, idx, None, e))?;
        let Ok(entry) = table.find_entry(hash, |(k, _)| k.borrow() == key) else {
            return Ok(None);
        };
        if f.is_some_and(|f| {
            let _held = HeldMark::new(self.map.id, idx, true);
            let (k, v) = entry.get();
            !f(k, v)
        }) {
            return Ok(None);
        }
        let (k, v) = entry.remove().0;
        let ticket = self.audit(&op, t0, Some(idx), Outcome::Ok, |a| Change {
            key: a.key(&k),
            old: a.value(&v),
            new: Encoded::NONE,
        });
        drop(table);
        self.audit_settle(ticket?)?;
        Ok(Some((k, v)))
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
        if let Some((counted, mut table)) = self.fast_write("update", idx) {
            let r = table.find_mut(hash, |(k, _)| k.borrow() == key).map(|(_, v)| {
                let _held = HeldMark::new(self.map.id, idx, true);
                f(v)
            });
            return Ok(fast_ok(counted, table, r));
        }
        self.update_full(hash, idx, key, f)
    }

    /// `update` with every policy.
    #[inline(never)]
    fn update_full<Q, R, F>(self, hash: u64, idx: usize, key: &Q, f: F) -> Result<Option<R>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&mut V) -> R,
    {
        let t0 = self.audit_begin("update")?;
        let mut op = self.begin("update");
        let mut table =
            op.write(idx, &self.map.shards[idx]).map_err(|e| self.audit_refused(&op, t0, idx, None, e))?;
        let Some((k, v)) = table.find_mut(hash, |(k, _)| k.borrow() == key) else {
            return Ok(None);
        };
        let old = self.audit_old(v);
        let r = self.guarded(|| {
            let _held = HeldMark::new(self.map.id, idx, true);
            f(v)
        });
        let ticket = self.audit(&op, t0, Some(idx), Outcome::of(&r), |a| Change {
            key: a.key(k),
            old,
            new: a.value(v),
        });
        drop(table);
        let settled = ticket.and_then(|t| self.audit_settle(t));
        let r = r.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        settled.map(|()| Some(r))
    }

    /// See [`MapWrapper::alter`].
    pub fn alter<F>(self, key: K, f: F) -> Result<Option<V>, MapError>
    where
        F: FnOnce(Option<&V>) -> Option<V>,
    {
        let t0 = self.audit_begin("alter")?;
        let (hash, idx) = self.locate(&key);
        let mut op = self.begin("alter");
        let mut table = op
            .write(idx, &self.map.shards[idx])
            .map_err(|e| self.audit_refused(&op, t0, idx, Some(&key), e))?;
        let held = HeldMark::new(self.map.id, idx, true);
        let record = |outcome: Outcome<'_>, k: &K, old: Option<&V>, new: Option<&V>| {
            self.audit(&op, t0, Some(idx), outcome, |a| Change {
                key: a.key(k),
                old: a.value_opt(old),
                new: a.value_opt(new),
            })
        };
        let no_change = Outcome::Panicked(PANICKED_NO_CHANGE);
        let mut panicked = None;
        let mut removed_key = None;
        let (old, ticket) = match table.entry(hash, |(k, _)| *k == key, self.rehasher()) {
            hash_table::Entry::Occupied(mut o) => {
                let new = self.guarded(|| f(Some(&o.get().1)));
                drop(held);
                match new {
                    Err(panic) => {
                        panicked = Some(panic);
                        let (k, v) = o.get();
                        (None, record(no_change, k, Some(v), Some(v)))
                    }
                    Ok(Some(v)) => {
                        let old = std::mem::replace(&mut o.get_mut().1, v);
                        let (k, new) = o.get();
                        let t = record(Outcome::Ok, k, Some(&old), Some(new));
                        (Some(old), t)
                    }
                    Ok(None) => {
                        let (k, old) = o.remove().0;
                        let t = record(Outcome::Ok, &k, Some(&old), None);
                        // The stored key is dropped after unlocking: its `Drop` may use the map.
                        removed_key = Some(k);
                        (Some(old), t)
                    }
                }
            }
            hash_table::Entry::Vacant(slot) => {
                let new = self.guarded(|| f(None));
                drop(held);
                match new {
                    Err(panic) => {
                        panicked = Some(panic);
                        (None, record(no_change, &key, None, None))
                    }
                    Ok(Some(v)) => {
                        let o = slot.insert((key, v));
                        let (k, new) = o.get();
                        (None, record(Outcome::Ok, k, None, Some(new)))
                    }
                    Ok(None) => (None, Ok(None)),
                }
            }
        };
        drop(table);
        drop(removed_key);
        let settled = ticket.and_then(|t| self.audit_settle(t));
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        settled?;
        Ok(old)
    }

    /// See [`MapWrapper::entry`].
    pub fn entry(self, key: K) -> Entry<'m, 'c, K, V, S, fn(&mut V)> {
        Entry { with: self, key, modify: |_| {}, modifies: false }
    }

    /// Runs `f` on each shard in turn under a write lock, all under one deadline; drops what
    /// `f` hands back only after the shard is unlocked (a value's `Drop` may use the map).
    /// `f` also returns whether recording what it did succeeded; the first failure stops the
    /// walk. Waits for the durability of the last record before returning (error or not).
    fn each_shard_mut<D>(
        self,
        op: &'static str,
        mut f: impl FnMut(
            &Waiter<'_, '_>,
            Option<Instant>,
            usize,
            &mut Table<K, V>,
        ) -> (D, Result<Option<Ticket>, MapError>),
    ) -> Result<(), MapError> {
        let t0 = self.audit_begin(op)?;
        let mut waiter = self.begin(op);
        if let Err(e) = waiter.refuse_if_holding_any() {
            let shard = if let MapError::WouldDeadlock { shard, .. } = e { shard } else { 0 };
            return Err(self.audit_refused(&waiter, t0, shard, None, e));
        }
        waiter.start_clock();
        let mut last = None;
        let mut result = Ok(());
        for (idx, shard) in self.map.shards.iter().enumerate() {
            let mut table = match waiter.write(idx, shard) {
                Ok(t) => t,
                Err(e) => {
                    result = Err(self.audit_refused(&waiter, t0, idx, None, e));
                    break;
                }
            };
            let (garbage, recorded) = f(&waiter, t0, idx, &mut table);
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

    /// Records the removal of each of `gone` (under the shard lock); the last ticket.
    fn audit_removed(
        &self,
        op: &Waiter<'_, '_>,
        t0: Option<Instant>,
        idx: usize,
        gone: &[(K, V)],
    ) -> Result<Option<Ticket>, MapError> {
        let mut last = None;
        if t0.is_some() {
            for (k, v) in gone {
                let t = self.audit(op, t0, Some(idx), Outcome::Ok, |a| Change {
                    key: a.key(k),
                    old: a.value(v),
                    new: Encoded::NONE,
                })?;
                last = t.or(last);
            }
        }
        Ok(last)
    }

    /// Runs `f` on each shard in turn under a read lock, all under one deadline, until it
    /// returns `false`.
    fn each_shard(
        self,
        op: &'static str,
        mut f: impl FnMut(usize, &Table<K, V>) -> bool,
    ) -> Result<(), MapError> {
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
    pub(crate) fn read_all(self, op: &'static str) -> Result<Vec<ReadAll<'m, K, V>>, MapError> {
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
        let result =
            self.each_shard_mut("retain", |op, t0, idx, table| {
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
                        match self.guarded(|| !f(k, v)) {
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
                let mut recorded = self.audit_removed(op, t0, idx, &gone);
                if panicked.is_some() {
                    let failed = self.audit(op, t0, Some(idx), Outcome::Panicked(PANICKED_RETAIN), |_| {
                        Change { key: Encoded::NONE, old: Encoded::NONE, new: Encoded::NONE }
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
        self.each_shard_mut("clear", |op, t0, idx, table| {
            removed += table.len();
            let gone: Vec<(K, V)> = std::mem::take(table).into_iter().collect();
            let recorded = self.audit_removed(op, t0, idx, &gone);
            (gone, recorded)
        })?;
        Ok(removed)
    }

    /// See [`MapWrapper::len`].
    pub fn len(self) -> Result<usize, MapError> {
        let mut n = 0;
        self.each_shard("len", |_, t| {
            n += t.len();
            true
        })?;
        Ok(n)
    }

    /// See [`MapWrapper::is_empty`].
    pub fn is_empty(self) -> Result<bool, MapError> {
        let mut empty = true;
        self.each_shard("is_empty", |_, t| {
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
        self.each_shard("for_each", |idx, t| {
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
        self.each_shard("snapshot", |_, t| {
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
        let t0 = self.audit_begin("extend")?;
        let mut waiter = self.begin("extend");
        waiter.start_clock();
        let mut n = 0;
        let (mut last, mut result) = (None, Ok(()));
        for (key, value) in iter {
            let (hash, idx) = self.locate(&key);
            let mut table = match waiter.write(idx, &self.map.shards[idx]) {
                Ok(t) => t,
                Err(e) => {
                    result = Err(self.audit_refused(&waiter, t0, idx, Some(&key), e));
                    break;
                }
            };
            let (old, unstored, recorded) = self.put(&waiter, t0, idx, &mut table, hash, key, value);
            drop(table);
            drop((old, unstored));
            n += 1;
            match recorded {
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
        if let Some((_counted, mut table)) = with.fast_write("entry", idx) {
            let _held = HeldMark::new(with.map.id, idx, true);
            return Ok(match table.entry(hash, |(k, _)| *k == key, with.rehasher()) {
                hash_table::Entry::Occupied(_) if !modifies => Upserted::Existing,
                hash_table::Entry::Occupied(mut o) => {
                    modify(&mut o.get_mut().1);
                    Upserted::Existing
                }
                hash_table::Entry::Vacant(slot) => {
                    // `make` first: if it panics, `key` is dropped after the unlock.
                    let value = make();
                    slot.insert((key, value));
                    Upserted::Inserted
                }
            });
        }
        let t0 = with.audit_begin("entry")?;
        let mut op = with.begin("entry");
        let mut table = op
            .write(idx, &with.map.shards[idx])
            .map_err(|e| with.audit_refused(&op, t0, idx, Some(&key), e))?;
        let held = HeldMark::new(with.map.id, idx, true);
        let (upserted, ticket, panicked) = match table.entry(hash, |(k, _)| *k == key, with.rehasher()) {
            // Nothing to modify: the call changes nothing, so it writes no record.
            hash_table::Entry::Occupied(_) if !modifies => {
                drop(held);
                (Upserted::Existing, Ok(None), None)
            }
            hash_table::Entry::Occupied(mut o) => {
                let old = with.audit_old(&o.get().1);
                let r = with.guarded(|| modify(&mut o.get_mut().1));
                drop(held);
                let (k, new) = o.get();
                let t = with.audit(&op, t0, Some(idx), Outcome::of(&r), |a| Change {
                    key: a.key(k),
                    old,
                    new: a.value(new),
                });
                (Upserted::Existing, t, r.err())
            }
            hash_table::Entry::Vacant(slot) => {
                let value = make();
                drop(held);
                let o = slot.insert((key, value));
                let (k, new) = o.get();
                let t = with.audit(&op, t0, Some(idx), Outcome::Ok, |a| Change {
                    key: a.key(k),
                    old: Encoded::NONE,
                    new: a.value(new),
                });
                (Upserted::Inserted, t, None)
            }
        };
        drop(table);
        let settled = ticket.and_then(|t| with.audit_settle(t));
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        settled.map(|()| upserted)
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
