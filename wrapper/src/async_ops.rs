//! The async twins of the operations that can wait.
//!
//! Each one is the same operation as its sync twin, through the same body under the lock
//! (`put`, `look`, `take`, `modify`, `replace`, `upsert`, `retain_shard`, `clear_shard`); only
//! the way the lock is taken differs. The third way to take the lock (after the fast path's
//! single `try_*` and the sync [`Waiter`](crate::pipeline::Waiter) wait) is the waiter's async
//! acquisition, which parks the *task* in the shard's FIFO queue, the queue waiting threads
//! use too.
//!
//! # Dropping a future
//!
//! A future may be dropped at any `.await`:
//! - while it waits for a shard: it leaves the queue (or releases a lock handed to it but not
//!   yet seen); nothing changed and nothing is recorded;
//! - after the change: the change and its audit record were made in one poll, under the lock
//!   (no `.await` lies between taking the lock and releasing it); a dropped wait for the
//!   record's durability only stops waiting for it.
//!
//! So a mutation either happened and has its record, or did not and has none (a refusal
//! record is written only when the operation itself ends with the refusal).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use crate::audit::Ticket;
use crate::engine::{
    clear_shard, retain_shard, Applied, FullOp, RecordNothing, Records, ShardDone, WithContext,
};
use crate::engine::{fast_done, Recording};
use crate::entry::{Entry, Upserted};
use crate::lock::RwLockWriteGuard;
use crate::shard::Table;
use crate::stats::count_ok;
use crate::{MapError, MapWrapper, Op};

impl<'m, 'c, K, V, S> WithContext<'m, 'c, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// [`start`](WithContext::start) for an async operation: a mutation of an audited map
    /// awaits room in the sink's queue (back-pressure) without blocking the thread.
    pub(crate) async fn start_async(&self, op: Op) -> Result<FullOp<'m, 'c>, MapError> {
        let t0 = match &self.map.audit {
            Some(a) if op.is_mutation() => {
                let eff = crate::context::Effective::new(self.ctx);
                Some(a.begin_async(&self.map.name, op, &eff, self.map.timeout).await?)
            }
            _ => None,
        };
        Ok(FullOp { waiter: self.begin(op), t0 })
    }

    /// The async way to the write lock of shard `idx` on the full path; a refusal is recorded
    /// (with `key`, when the call owns one) and returned.
    pub(crate) async fn full_write_async(
        &self,
        op: &mut FullOp<'m, 'c>,
        idx: usize,
        key: Option<&K>,
    ) -> Result<RwLockWriteGuard<'m, Table<K, V>>, MapError> {
        let shard = &self.map.shards[idx];
        match op.waiter.write_async(idx, shard).await {
            Ok(table) => Ok(table),
            Err(e) => Err(self.recorder(op).refused(idx, key, e)),
        }
    }

    /// Ends an async operation on the full path (its lock already released): drops what must
    /// be dropped after the unlock, awaits its record's durability, resumes a caught panic.
    pub(crate) async fn full_done_async<T, D, R>(&self, done: Applied<T, D, R>) -> Result<T, MapError>
    where
        R: Records<Ticket = Result<Option<Ticket>, MapError>>,
    {
        let Applied { out, drop_after, ticket } = done;
        drop(drop_after);
        let settled = match ticket {
            Ok(t) => self.audit_settle_async(t).await,
            Err(e) => Err(e),
        };
        let out = out.unwrap_or_else(|caught| crate::engine::Caught::resume(caught));
        settled.map(|()| out)
    }

    async fn audit_settle_async(&self, ticket: Option<Ticket>) -> Result<(), MapError> {
        match (&self.map.audit, ticket) {
            (Some(a), Some(t)) => a.settle_async(&self.map.name, Some(t)).await,
            _ => Ok(()),
        }
    }

    /// See [`MapWrapper::insert_async`].
    pub async fn insert_async(self, key: K, value: V) -> Result<Option<V>, MapError> {
        let (hash, idx) = self.locate(&key);
        if let Some((counted, mut table)) = self.fast_write(Op::Insert, idx) {
            let done = self.put(&RecordNothing, idx, &mut table, hash, key, value);
            return Ok(fast_done(counted, table, done));
        }
        let mut op = self.start_async(Op::Insert).await?;
        // The guard lives in this block only: no `.await` while it is held.
        let done = {
            let mut table = self.full_write_async(&mut op, idx, Some(&key)).await?;
            let sizing = self.admit(&op, idx, &table, Some((hash, &key)))?;
            let done = self.put(&self.recorder(&op), idx, &mut table, hash, key, value);
            self.resized(sizing, &mut table);
            done
        };
        self.full_done_async(done).await
    }

    /// A lookup computed under the read lock by crate code (`get_cloned`, `contains_key`).
    async fn read_op_async<Q, R>(
        self,
        op: Op,
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
            drop(table);
            count_ok(counted);
            return Ok(r);
        }
        let mut op = self.start_async(op).await?;
        let table = op.waiter.read_async(idx, &self.map.shards[idx]).await?;
        Ok(f(table.find(hash, |(k, _)| k.borrow() == key)))
    }

    /// See [`MapWrapper::get_cloned_async`].
    pub async fn get_cloned_async<Q>(self, key: &Q) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        self.read_op_async(Op::GetCloned, key, |found| found.map(|(_, v)| v.clone())).await
    }

    /// See [`MapWrapper::contains_key_async`].
    pub async fn contains_key_async<Q>(self, key: &Q) -> Result<bool, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read_op_async(Op::ContainsKey, key, |found| found.is_some()).await
    }

    /// See [`MapWrapper::view_async`].
    pub async fn view_async<Q, R, F>(self, key: &Q, f: F) -> Result<Option<R>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&V) -> R,
    {
        let (hash, idx) = self.locate(key);
        if let Some((_counted, table)) = self.fast_read(Op::View, idx) {
            return Ok(self.look(idx, &table, hash, key, f));
        }
        let mut op = self.start_async(Op::View).await?;
        let table = op.waiter.read_async(idx, &self.map.shards[idx]).await?;
        Ok(self.look(idx, &table, hash, key, f))
    }

    /// Removes `key` if `f` (when given) says so.
    async fn remove_entry_op_async<Q, F>(
        self,
        op: Op,
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
            let done = self.take(&RecordNothing, idx, &mut table, hash, key, f);
            return Ok(fast_done(counted, table, done));
        }
        let mut op = self.start_async(op).await?;
        // The guard lives in this block only: no `.await` while it is held.
        let done = {
            let mut table = self.full_write_async(&mut op, idx, None).await?;
            let sizing = self.admit(&op, idx, &table, None)?;
            let done = self.take(&self.recorder(&op), idx, &mut table, hash, key, f);
            self.resized(sizing, &mut table);
            done
        };
        self.full_done_async(done).await
    }

    /// See [`MapWrapper::remove_async`].
    pub async fn remove_async<Q>(self, key: &Q) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.remove_entry_op_async(Op::Remove, key, None::<fn(&K, &V) -> bool>).await?;
        Ok(removed.map(|(_, v)| v))
    }

    /// See [`MapWrapper::remove_entry_async`].
    pub async fn remove_entry_async<Q>(self, key: &Q) -> Result<Option<(K, V)>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_entry_op_async(Op::RemoveEntry, key, None::<fn(&K, &V) -> bool>).await
    }

    /// See [`MapWrapper::remove_if_async`].
    pub async fn remove_if_async<Q, F>(self, key: &Q, f: F) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&K, &V) -> bool,
    {
        Ok(self.remove_entry_op_async(Op::RemoveIf, key, Some(f)).await?.map(|(_, v)| v))
    }

    /// See [`MapWrapper::update_async`].
    pub async fn update_async<Q, R, F>(self, key: &Q, f: F) -> Result<Option<R>, MapError>
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
        let mut op = self.start_async(Op::Update).await?;
        // The guard lives in this block only: no `.await` while it is held.
        let done = {
            let mut table = self.full_write_async(&mut op, idx, None).await?;
            self.modify(&self.recorder(&op), idx, &mut table, hash, key, f)
        };
        self.full_done_async(done).await
    }

    /// See [`MapWrapper::alter_async`].
    pub async fn alter_async<F>(self, key: K, f: F) -> Result<Option<V>, MapError>
    where
        F: FnOnce(Option<&V>) -> Option<V>,
    {
        let (hash, idx) = self.locate(&key);
        if let Some((counted, mut table)) = self.fast_write(Op::Alter, idx) {
            let done = self.replace(&RecordNothing, idx, &mut table, hash, key, f);
            return Ok(fast_done(counted, table, done));
        }
        let mut op = self.start_async(Op::Alter).await?;
        // The guard lives in this block only: no `.await` while it is held.
        let done = {
            let mut table = self.full_write_async(&mut op, idx, Some(&key)).await?;
            let sizing = self.admit(&op, idx, &table, Some((hash, &key)))?;
            let done = self.replace(&self.recorder(&op), idx, &mut table, hash, key, f);
            self.resized(sizing, &mut table);
            done
        };
        self.full_done_async(done).await
    }

    /// Runs `f` on each shard in turn under a write lock, all under one deadline (the async
    /// twin of the sync walk): each shard's change and records are made in one poll; the wait
    /// for the next shard is an `.await`. Awaits the durability of the last record.
    async fn each_shard_mut_async(
        self,
        op: Op,
        mut f: impl FnMut(&Recording<'_, K, V>, usize, &mut Table<K, V>) -> ShardDone<K, V>,
    ) -> Result<(), MapError> {
        let mut op = self.start_async(op).await?;
        if let Err(e) = op.waiter.refuse_if_in_closure() {
            let shard = e.shard().unwrap_or(0);
            return Err(self.recorder(&op).refused(shard, None, e));
        }
        op.waiter.start_clock();
        let mut last = None;
        let mut result = Ok(());
        for idx in 0..self.map.shards.len() {
            let mut table = match self.full_write_async(&mut op, idx, None).await {
                Ok(t) => t,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let sizing = self.sizing(&table);
            let (garbage, recorded) = f(&self.recorder(&op), idx, &mut table);
            self.resized(sizing, &mut table);
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
        self.audit_settle_async(last).await?;
        result
    }

    /// See [`MapWrapper::retain_async`].
    pub async fn retain_async<F>(self, mut f: F) -> Result<usize, MapError>
    where
        F: FnMut(&K, &V) -> bool,
    {
        let id = self.map.id;
        let mut removed = 0;
        let mut panicked = None;
        let result = self
            .each_shard_mut_async(Op::Retain, |rec, idx, table| {
                retain_shard(id, &mut f, &mut removed, &mut panicked, rec, idx, table)
            })
            .await;
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        result?;
        Ok(removed)
    }

    /// See [`MapWrapper::clear_async`].
    pub async fn clear_async(self) -> Result<usize, MapError> {
        let mut removed = 0;
        self.each_shard_mut_async(Op::Clear, |rec, idx, table| clear_shard(&mut removed, rec, idx, table))
            .await?;
        Ok(removed)
    }

    /// See [`MapWrapper::extend_async`].
    pub async fn extend_async<I: IntoIterator<Item = (K, V)>>(self, iter: I) -> Result<usize, MapError> {
        let mut op = self.start_async(Op::Extend).await?;
        op.waiter.start_clock();
        let mut n = 0;
        let (mut last, mut result) = (None, Ok(()));
        for (key, value) in iter {
            let (hash, idx) = self.locate(&key);
            let mut table = match self.full_write_async(&mut op, idx, Some(&key)).await {
                Ok(t) => t,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let sizing = match self.admit(&op, idx, &table, Some((hash, &key))) {
                Ok(sizing) => sizing,
                Err(e) => {
                    drop(table);
                    result = Err(e);
                    break;
                }
            };
            let Applied { out, drop_after, ticket } =
                self.put(&self.recorder(&op), idx, &mut table, hash, key, value);
            self.resized(sizing, &mut table);
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
        self.audit_settle_async(last).await?;
        result.map(|()| n)
    }

    /// Reads each shard in turn, all under one deadline, until `f` returns `false`.
    async fn each_shard_async(
        self,
        op: Op,
        mut f: impl FnMut(usize, &Table<K, V>) -> bool,
    ) -> Result<(), MapError> {
        let mut waiter = self.begin(op);
        waiter.start_clock();
        for (idx, shard) in self.map.shards.iter().enumerate() {
            let table = waiter.read_async(idx, shard).await?;
            if !f(idx, &table) {
                break;
            }
        }
        Ok(())
    }

    /// See [`MapWrapper::len_async`].
    pub async fn len_async(self) -> Result<usize, MapError> {
        let mut n = 0;
        self.each_shard_async(Op::Len, |_, t| {
            n += t.len();
            true
        })
        .await?;
        Ok(n)
    }

    /// See [`MapWrapper::is_empty_async`].
    pub async fn is_empty_async(self) -> Result<bool, MapError> {
        let mut empty = true;
        self.each_shard_async(Op::IsEmpty, |_, t| {
            empty = t.is_empty();
            empty
        })
        .await?;
        Ok(empty)
    }
}

impl<K, V, S, M> Entry<'_, '_, K, V, S, M>
where
    K: Hash + Eq,
    S: BuildHasher,
    M: FnOnce(&mut V),
{
    /// [`or_insert`](Entry::or_insert), waiting for the shard without blocking the thread.
    pub async fn or_insert_async(self, value: V) -> Result<Upserted, MapError> {
        self.or_insert_with_async(|| value).await
    }

    /// [`or_default`](Entry::or_default), waiting for the shard without blocking the thread.
    pub async fn or_default_async(self) -> Result<Upserted, MapError>
    where
        V: Default,
    {
        self.or_insert_with_async(V::default).await
    }

    /// [`or_insert_with`](Entry::or_insert_with), waiting for the shard without blocking
    /// the thread (`make` and the `and_modify` closures run under the lock, in one poll).
    pub async fn or_insert_with_async<F: FnOnce() -> V>(self, make: F) -> Result<Upserted, MapError> {
        let (with, key, modify, modifies) = self.into_parts();
        let (hash, idx) = with.locate(&key);
        if let Some((counted, mut table)) = with.fast_write(Op::Entry, idx) {
            let done = with.upsert(&RecordNothing, idx, &mut table, hash, key, make, modify, modifies);
            return Ok(fast_done(counted, table, done));
        }
        let mut op = with.start_async(Op::Entry).await?;
        // The guard lives in this block only: no `.await` while it is held.
        let done = {
            let mut table = with.full_write_async(&mut op, idx, Some(&key)).await?;
            let sizing = with.admit(&op, idx, &table, Some((hash, &key)))?;
            let done = with.upsert(&with.recorder(&op), idx, &mut table, hash, key, make, modify, modifies);
            with.resized(sizing, &mut table);
            done
        };
        with.full_done_async(done).await
    }
}

/// Forwards documented `MapWrapper` async methods to the same method on `self.plain()`.
macro_rules! forward_async {
    ($( $(#[$doc:meta])* fn $name:ident $(<$($g:ident),*>)? (&self $(, $arg:ident : $ty:ty)*) -> $ret:ty $(where { $($wc:tt)* })?; )*) => {
        $(
            $(#[$doc])*
            pub async fn $name $(<$($g),*>)? (&self $(, $arg: $ty)*) -> $ret $(where $($wc)*)? {
                self.plain().$name($($arg),*).await
            }
        )*
    };
}

/// # Async operations
///
/// Each operation that can wait for a shard has an async twin, named with `_async`: the same
/// operation, results, errors, statistics and audit records, but a wait for a taken shard
/// parks the task instead of the thread, in the same fair queue threads wait in. The
/// deadline (the map's timeout, the context's; the earliest wins) and the cancel token are
/// honoured while waiting, exactly as on the sync path. The futures need no particular
/// runtime.
///
/// They take closures, not guards: nothing is held across an `.await`. Dropping a future is
/// safe at any point: a mutation either happened (with its audit record) or did not (with
/// none). With `Durability::Flushed` or `Synced` the future awaits the group commit
/// without blocking its thread. For a per-task context (actor, trace id, deadline, token)
/// use [`OpContext::scope`](crate::OpContext::scope) or [`with`](MapWrapper::with).
///
/// Deadlock refusal is per operation: an async call from inside a closure the map is running
/// for the same call chain is refused with `WOULD_DEADLOCK`; a guard ([`Ref`](crate::Ref))
/// held by another task on the same thread is waited for instead.
impl<K, V, S> MapWrapper<K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    forward_async! {
        /// [`insert`](MapWrapper::insert), waiting without blocking the thread.
        ///
        /// ```
        /// # use map_wrapper::MapWrapper;
        /// # let map = MapWrapper::<&str, u32>::new();
        /// # let fut = async {
        /// assert_eq!(map.insert_async("a", 1).await?, None);
        /// # Ok::<(), map_wrapper::MapError>(()) };
        /// # drop(fut);
        /// ```
        fn insert_async(&self, key: K, value: V) -> Result<Option<V>, MapError>;

        /// [`get_cloned`](MapWrapper::get_cloned), waiting without blocking the thread.
        fn get_cloned_async<Q>(&self, key: &Q) -> Result<Option<V>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized, V: Clone };

        /// [`contains_key`](MapWrapper::contains_key), waiting without blocking the thread.
        fn contains_key_async<Q>(&self, key: &Q) -> Result<bool, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized };

        /// [`view`](MapWrapper::view), waiting without blocking the thread; `f` runs under the
        /// read lock, within one poll.
        fn view_async<Q, R, F>(&self, key: &Q, f: F) -> Result<Option<R>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized, F: FnOnce(&V) -> R };

        /// [`remove`](MapWrapper::remove), waiting without blocking the thread.
        fn remove_async<Q>(&self, key: &Q) -> Result<Option<V>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized };

        /// [`remove_entry`](MapWrapper::remove_entry), waiting without blocking the thread.
        fn remove_entry_async<Q>(&self, key: &Q) -> Result<Option<(K, V)>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized };

        /// [`remove_if`](MapWrapper::remove_if), waiting without blocking the thread.
        fn remove_if_async<Q, F>(&self, key: &Q, f: F) -> Result<Option<V>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized, F: FnOnce(&K, &V) -> bool };

        /// [`update`](MapWrapper::update), waiting without blocking the thread; `f` runs under
        /// the write lock, within one poll.
        fn update_async<Q, R, F>(&self, key: &Q, f: F) -> Result<Option<R>, MapError>
            where { K: Borrow<Q>, Q: Hash + Eq + ?Sized, F: FnOnce(&mut V) -> R };

        /// [`alter`](MapWrapper::alter), waiting without blocking the thread.
        fn alter_async<F>(&self, key: K, f: F) -> Result<Option<V>, MapError>
            where { F: FnOnce(Option<&V>) -> Option<V> };

        /// [`retain`](MapWrapper::retain), waiting for each shard without blocking the thread.
        /// Dropped between shards, the shards already visited stay filtered (as after an
        /// error of the sync `retain`), each removal with its record.
        fn retain_async<F>(&self, f: F) -> Result<usize, MapError>
            where { F: FnMut(&K, &V) -> bool };

        /// [`clear`](MapWrapper::clear), waiting for each shard without blocking the thread;
        /// dropped between shards, the shards already visited stay cleared.
        fn clear_async(&self) -> Result<usize, MapError>;

        /// [`extend`](MapWrapper::extend), waiting for each pair's shard without blocking the
        /// thread; dropped midway, the pairs already stored stay stored.
        fn extend_async<I>(&self, iter: I) -> Result<usize, MapError>
            where { I: IntoIterator<Item = (K, V)> };

        /// [`len`](MapWrapper::len), waiting for each shard without blocking the thread.
        fn len_async(&self) -> Result<usize, MapError>;

        /// [`is_empty`](MapWrapper::is_empty), waiting without blocking the thread.
        fn is_empty_async(&self) -> Result<bool, MapError>;
    }
}
