//! One small adapter per map under test, so the workload drives them all through the same four
//! calls. Each call does what a user of that crate would write for it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use map_wrapper::{MapError, MapWrapper};
use parking_lot::RwLock;

/// The four operations of the standard mixes, on u64 keys and values. Each returns whether the
/// key was found (read, remove, update) or was new (insert), so the harness can check that
/// every map did the work it was asked to do.
pub trait BenchMap: Send + Sync {
    fn read(&self, key: u64) -> bool;
    fn insert(&self, key: u64, value: u64) -> bool;
    fn remove(&self, key: u64) -> bool;
    fn update(&self, key: u64) -> bool;
}

/// `parking_lot::RwLock<std::collections::HashMap>`: the baseline a user writes by hand.
pub struct LockedHashMap<S>(pub RwLock<HashMap<u64, u64, S>>);

impl<S: BuildHasher> LockedHashMap<S> {
    pub fn new(hasher: S, capacity: usize) -> Self {
        LockedHashMap(RwLock::new(HashMap::with_capacity_and_hasher(capacity, hasher)))
    }
}

impl<S: BuildHasher + Send + Sync> BenchMap for LockedHashMap<S> {
    fn read(&self, key: u64) -> bool {
        self.0.read().get(&key).copied().is_some()
    }
    fn insert(&self, key: u64, value: u64) -> bool {
        self.0.write().insert(key, value).is_none()
    }
    fn remove(&self, key: u64) -> bool {
        self.0.write().remove(&key).is_some()
    }
    fn update(&self, key: u64) -> bool {
        self.0.write().get_mut(&key).map(|v| *v += 1).is_some()
    }
}

impl<S: BuildHasher + Clone + Send + Sync> BenchMap for dashmap::DashMap<u64, u64, S> {
    fn read(&self, key: u64) -> bool {
        self.get(&key).map(|r| *r).is_some()
    }
    fn insert(&self, key: u64, value: u64) -> bool {
        dashmap::DashMap::insert(self, key, value).is_none()
    }
    fn remove(&self, key: u64) -> bool {
        dashmap::DashMap::remove(self, &key).is_some()
    }
    fn update(&self, key: u64) -> bool {
        self.get_mut(&key).map(|mut r| *r += 1).is_some()
    }
}

impl<S: BuildHasher + Send + Sync> BenchMap for scc::HashMap<u64, u64, S> {
    fn read(&self, key: u64) -> bool {
        self.read_sync(&key, |_, v| *v).is_some()
    }
    fn insert(&self, key: u64, value: u64) -> bool {
        self.insert_sync(key, value).is_ok()
    }
    fn remove(&self, key: u64) -> bool {
        self.remove_sync(&key).is_some()
    }
    fn update(&self, key: u64) -> bool {
        self.update_sync(&key, |_, v| *v += 1).is_some()
    }
}

/// papaya is pinned once per operation, as its documentation shows for single operations.
impl<S: BuildHasher + Send + Sync> BenchMap for papaya::HashMap<u64, u64, S> {
    fn read(&self, key: u64) -> bool {
        self.pin().get(&key).copied().is_some()
    }
    fn insert(&self, key: u64, value: u64) -> bool {
        self.pin().insert(key, value).is_none()
    }
    fn remove(&self, key: u64) -> bool {
        self.pin().remove(&key).is_some()
    }
    fn update(&self, key: u64) -> bool {
        self.pin().update(key, |v| v + 1).is_some()
    }
}

/// Retryable errors (`Timeout`, `CircuitOpen`, `AuditUnavailable`) that `MapWrapper` rows
/// returned and the harness retried, as a user would; reported beside the figures. On a loaded
/// machine a thread can be descheduled while it holds a shard through a resize, and the other
/// thread's operation then times out after its 500 ms.
pub static RETRIED: AtomicU64 = AtomicU64::new(0);

/// The result of `first`, or, if it failed with a retryable error, of retrying `op` until it
/// succeeds. The retry loop is out of line: the common case is the one call a user writes
/// (`map.get_cloned(&k)?`), not a loop around it.
#[inline(always)]
fn retried<T>(what: &str, first: Result<T, MapError>, op: impl FnMut() -> Result<T, MapError>) -> T {
    match first {
        Ok(v) => v,
        Err(e) => retry(what, e, op),
    }
}

#[cold]
#[inline(never)]
fn retry<T>(what: &str, mut e: MapError, mut op: impl FnMut() -> Result<T, MapError>) -> T {
    loop {
        if !e.is_retryable() {
            failed(what, e)
        }
        RETRIED.fetch_add(1, Ordering::Relaxed);
        match op() {
            Ok(v) => return v,
            Err(next) => e = next,
        }
    }
}

#[cold]
#[inline(never)]
fn failed(what: &str, e: MapError) -> ! {
    panic!("{what}: {e}")
}

/// `MapWrapper` as configured by its row (policies on or off). A retryable error is retried;
/// any other would be a bug in the run, so it stops the bench with the error's message.
impl<S: BuildHasher + Send + Sync> BenchMap for MapWrapper<u64, u64, S> {
    fn read(&self, key: u64) -> bool {
        retried("MapWrapper::get_cloned", self.get_cloned(&key), || self.get_cloned(&key)).is_some()
    }
    fn insert(&self, key: u64, value: u64) -> bool {
        retried("MapWrapper::insert", MapWrapper::insert(self, key, value), || {
            MapWrapper::insert(self, key, value)
        })
        .is_none()
    }
    fn remove(&self, key: u64) -> bool {
        retried("MapWrapper::remove", MapWrapper::remove(self, &key), || MapWrapper::remove(self, &key))
            .is_some()
    }
    fn update(&self, key: u64) -> bool {
        retried("MapWrapper::update", MapWrapper::update(self, &key, |v| *v += 1), || {
            MapWrapper::update(self, &key, |v| *v += 1)
        })
        .is_some()
    }
}

/// A map whose audit trail lives in a temporary directory, removed after the map (and its
/// sink's writer) is dropped.
pub struct InTempDir<M> {
    pub map: M,
    pub _dir: tempfile::TempDir,
}

impl<M: BenchMap> BenchMap for InTempDir<M> {
    fn read(&self, key: u64) -> bool {
        self.map.read(key)
    }
    fn insert(&self, key: u64, value: u64) -> bool {
        self.map.insert(key, value)
    }
    fn remove(&self, key: u64) -> bool {
        self.map.remove(key)
    }
    fn update(&self, key: u64) -> bool {
        self.map.update(key)
    }
}

type Shard = crossbeam_utils::CachePadded<RwLock<hashbrown::HashTable<(u64, u64)>>>;

/// The bare design under `MapWrapper`, written by hand: cache-padded shards, each a
/// `parking_lot::RwLock<hashbrown::HashTable>`, the key hashed once for shard and slot (the
/// shard taken from the same bits `MapWrapper` uses). No deadline, no cancellation, no
/// deadlock refusal, no statistics: `MapWrapper (policies off)` against this row is what the
/// policies cost.
pub struct Sharded<S> {
    shards: Box<[Shard]>,
    hasher: S,
    bits: u32,
}
impl<S: BuildHasher> Sharded<S> {
    pub fn new(hasher: S, n: usize) -> Self {
        Sharded { shards: (0..n).map(|_| Default::default()).collect(), hasher, bits: n.trailing_zeros() }
    }
    #[inline]
    fn at(&self, key: u64) -> (u64, usize) {
        let h = self.hasher.hash_one(key);
        (h, (h.rotate_left(7 + self.bits) as usize) & ((1 << self.bits) - 1))
    }
}
impl<S: BuildHasher + Send + Sync> BenchMap for Sharded<S> {
    fn read(&self, key: u64) -> bool {
        let (h, i) = self.at(key);
        self.shards[i].read().find(h, |e| e.0 == key).map(|e| e.1).is_some()
    }
    fn insert(&self, key: u64, value: u64) -> bool {
        let (h, i) = self.at(key);
        let mut t = self.shards[i].write();
        match t.entry(h, |e| e.0 == key, |e| self.hasher.hash_one(e.0)) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                o.get_mut().1 = value;
                false
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert((key, value));
                true
            }
        }
    }
    fn remove(&self, key: u64) -> bool {
        let (h, i) = self.at(key);
        let mut t = self.shards[i].write();
        match t.find_entry(h, |e| e.0 == key) {
            Ok(o) => {
                o.remove();
                true
            }
            Err(_) => false,
        }
    }
    fn update(&self, key: u64) -> bool {
        let (h, i) = self.at(key);
        self.shards[i].write().find_mut(h, |e| e.0 == key).map(|e| e.1 += 1).is_some()
    }
}
