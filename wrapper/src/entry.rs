//! [`Entry`]: an upsert of one key, run in one write lock of its shard.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hash};

use crate::engine::{fast_done, RecordNothing, WithContext};
use crate::{MapError, Op};

/// A pending upsert of one key; made by [`MapWrapper::entry`](crate::MapWrapper::entry). Nothing happens until one of
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

impl<'m, 'c, K, V, S> Entry<'m, 'c, K, V, S, fn(&mut V)> {
    pub(crate) fn new(with: WithContext<'m, 'c, K, V, S>, key: K) -> Self {
        Entry { with, key, modify: |_| {}, modifies: false }
    }
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

    /// Gets the value of the key, inserting `value` first if it is absent, and runs `f` on it:
    /// the audited form of HashMap's `*map.entry(k).or_insert(v) += 1` (a `&mut V` cannot
    /// leave the lock, so the change is a closure). Returns what `f` returns. The whole upsert
    /// runs in one write lock of the key's shard, and an audited map records one change with
    /// the value before (none when inserted) and after `f`. Any `and_modify` closures run
    /// first on a present key.
    ///
    /// Locks: the key's shard, for writing, while `f` runs (a call from `f` into the same
    /// shard is refused with [`ErrorKind::WouldDeadlock`](crate::ErrorKind::WouldDeadlock)).
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let words = MapWrapper::<&str, u32>::new();
    /// for w in ["a", "b", "a"] {
    ///     // HashMap: *words.entry(w).or_insert(0) += 1;
    ///     words.entry(w).or_insert_then(0, |n| *n += 1)?;
    /// }
    /// assert_eq!(words.get_cloned("a")?, Some(2));
    /// assert_eq!(words.entry("b").or_insert_then(0, |n| *n)?, 1);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn or_insert_then<R, F: FnOnce(&mut V) -> R>(self, value: V, f: F) -> Result<R, MapError> {
        self.or_insert_with_then(|| value, f)
    }

    /// [`or_insert_then`](Entry::or_insert_then) with `V::default()`.
    pub fn or_default_then<R, F: FnOnce(&mut V) -> R>(self, f: F) -> Result<R, MapError>
    where
        V: Default,
    {
        self.or_insert_with_then(V::default, f)
    }

    /// [`or_insert_then`](Entry::or_insert_then) with the value made by `make` (run under the
    /// lock, only when the key is absent).
    pub fn or_insert_with_then<R, F, G>(self, make: G, f: F) -> Result<R, MapError>
    where
        F: FnOnce(&mut V) -> R,
        G: FnOnce() -> V,
    {
        // Exactly one of the two closures below runs, and it runs `f` once; the cells let
        // both own a claim on `f` and hand its result out.
        let f = Cell::new(Some(f));
        let out = Cell::new(None);
        let run = |v: &mut V| {
            if let Some(f) = f.take() {
                out.set(Some(f(v)));
            }
        };
        let Entry { with, key, modify, .. } = self;
        let upsert = Entry {
            with,
            key,
            modify: |v: &mut V| {
                modify(v);
                run(v);
            },
            modifies: true,
        };
        upsert.or_insert_with(|| {
            let mut v = make();
            run(&mut v);
            v
        })?;
        // `Ok` means one of the closures ran to its end (a panic would have unwound).
        out.into_inner().ok_or_else(|| unreachable!("an upsert that returned Ok ran neither closure"))
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
        let sizing = with.admit(&op, idx, &table, Some((hash, &key)))?;
        let done = with.upsert(&with.recorder(&op), idx, &mut table, hash, key, make, modify, modifies);
        with.resized(sizing, &mut table);
        with.full_done(table, done)
    }
}

impl<'m, 'c, K, V, S, M> Entry<'m, 'c, K, V, S, M> {
    /// The parts of the pending upsert (for its async twin).
    pub(crate) fn into_parts(self) -> (WithContext<'m, 'c, K, V, S>, K, M, bool) {
        (self.with, self.key, self.modify, self.modifies)
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
