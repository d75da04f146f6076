//! The engine under [`MapWrapper`](crate::MapWrapper)'s public methods: [`WithContext`], which
//! runs one operation under its contexts, and each operation's work under the shard lock,
//! written once and called by each way of taking the lock (the fast path's inline `try_*`,
//! the full path's bounded [`Waiter`]).

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::time::Instant;

use crate::lock::{RwLockReadGuard, RwLockWriteGuard};
use hashbrown::hash_table;

use crate::audit::{Change, Encoded, MapAudit, Outcome, Ticket, PANICKED_NO_CHANGE, PANICKED_RETAIN};
use crate::context::{self, Effective};
use crate::deadlock::HeldMark;
use crate::entry::{Entry, Upserted};
#[cfg(feature = "serde")]
use crate::guard::ReadAll;
use crate::guard::Ref;
use crate::iter::Iter;
use crate::pipeline::Waiter;
use crate::shard::Table;
use crate::stats::{count_ok, Counted};
use crate::{MapError, MapWrapper, Op, OpContext};

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
    pub(crate) out: Result<T, R::Caught>,
    /// Dropped after the unlock (a key or value whose `Drop` may use the map).
    pub(crate) drop_after: D,
    /// The audit record's ticket, or why the record could not be made.
    pub(crate) ticket: R::Ticket,
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
    pub(crate) fn refused(&self, shard: usize, key: Option<&K>, e: MapError) -> MapError {
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
pub(crate) fn fast_done<G, T, D>(
    counted: Option<Counted<'_>>,
    guard: G,
    done: Applied<T, D, RecordNothing>,
) -> T {
    drop(guard);
    drop(done.drop_after);
    count_ok(counted);
    match done.out {
        Ok(out) => out,
        Err(never) => match never {},
    }
}

/// A [`MapWrapper`](crate::MapWrapper) bound to an [`OpContext`] for the next operation; made by
/// [`MapWrapper::with`](crate::MapWrapper::with). It has the same operations, documented on [`MapWrapper`](crate::MapWrapper).
pub struct WithContext<'m, 'c, K, V, S = RandomState> {
    pub(crate) map: &'m MapWrapper<K, V, S>,
    pub(crate) ctx: Option<&'c OpContext>,
}

impl<'m, 'c, K, V, S> WithContext<'m, 'c, K, V, S> {
    pub(crate) fn new(map: &'m MapWrapper<K, V, S>, ctx: Option<&'c OpContext>) -> Self {
        WithContext { map, ctx }
    }
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
    pub(crate) waiter: Waiter<'m, 'c>,
    pub(crate) t0: Option<Instant>,
}

impl<'m, 'c, K, V, S> WithContext<'m, 'c, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    #[inline]
    pub(crate) fn locate<Q: Hash + ?Sized>(&self, key: &Q) -> (u64, usize) {
        let hash = self.map.hasher.hash_one(key);
        (hash, self.map.shard_of(hash))
    }

    /// Starts operation `op`: gathers its contexts; locks are taken through the result.
    /// Inlined so that `op` is a constant where the statistics turn it into a counter index.
    #[inline(always)]
    pub(crate) fn begin(&self, op: Op) -> Waiter<'m, 'c> {
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
    pub(crate) fn start(&self, op: Op) -> Result<FullOp<'m, 'c>, MapError> {
        let t0 = if op.is_mutation() { self.audit_begin(op)? } else { None };
        Ok(FullOp { waiter: self.begin(op), t0 })
    }

    /// The recorder of a full-path operation.
    #[inline]
    pub(crate) fn recorder<'r>(&'r self, op: &'r FullOp<'_, '_>) -> Recording<'r, K, V> {
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
    pub(crate) fn full_write(
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
    pub(crate) fn full_done<G, T, D, R>(&self, guard: G, done: Applied<T, D, R>) -> Result<T, MapError>
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
            || self.map.full_only
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
    pub(crate) fn fast_read(&self, op: Op, idx: usize) -> Option<Fast<'m, RwLockReadGuard<'m, Table<K, V>>>> {
        let shard = &self.map.shards[idx];
        self.fast(op, || shard.try_read())
    }

    /// [`fast`](Self::fast) for a write lock on shard `idx`.
    #[inline(always)]
    pub(crate) fn fast_write(
        &self,
        op: Op,
        idx: usize,
    ) -> Option<Fast<'m, RwLockWriteGuard<'m, Table<K, V>>>> {
        let shard = &self.map.shards[idx];
        self.fast(op, || shard.try_write())
    }

    fn rehasher(&self) -> impl Fn(&(K, V)) -> u64 + '_ {
        move |(k, _)| self.map.hasher.hash_one(k)
    }

    /// Audit, before a mutation: refuses it when the map is fail-closed and its sink is down,
    /// or when the audit queue has no room by the operation's deadline (nothing is locked or
    /// changed), else starts its latency clock.
    #[inline]
    fn audit_begin(&self, op: Op) -> Result<Option<Instant>, MapError> {
        match &self.map.audit {
            None => Ok(None),
            Some(a) => a.begin(&self.map.name, op, &Effective::new(self.ctx), self.map.timeout).map(Some),
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

    /// See [`MapWrapper::insert`](crate::MapWrapper::insert).
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
        let sizing = self.admit(&op, idx, &table, Some((hash, &key)))?;
        let done = self.put(&self.recorder(&op), idx, &mut table, hash, key, value);
        self.resized(sizing, &mut table);
        self.full_done(table, done)
    }

    /// The body of `insert` and of each pair of `extend`: stores `value` under `key` in a
    /// locked shard and records it. Hands back the old value and, when the key was already
    /// stored, the caller's `key`, for the caller to drop after unlocking (their `Drop` may
    /// use the map).
    #[inline(always)]
    pub(crate) fn put<Rec: Recorder<K, V>>(
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

    /// See [`MapWrapper::get`](crate::MapWrapper::get).
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
        Some(Ref::new(entry, HeldMark::guard(self.map.id, idx, false)))
    }

    /// See [`MapWrapper::view`](crate::MapWrapper::view).
    pub fn view<Q, R, F>(self, key: &Q, f: F) -> Result<Option<R>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        F: FnOnce(&V) -> R,
    {
        let (hash, idx) = self.locate(key);
        if let Some((_counted, table)) = self.fast_read(Op::View, idx) {
            return Ok(self.look(idx, &table, hash, key, f));
        }
        let mut op = self.start(Op::View)?;
        let table = op.waiter.read(idx, &self.map.shards[idx])?;
        Ok(self.look(idx, &table, hash, key, f))
    }

    /// The body of `view`: `f` of the value of `key` in a read-locked shard, `f` running with
    /// the shard marked as held (a write back into it is refused).
    #[inline(always)]
    pub(crate) fn look<Q, R, F>(&self, idx: usize, table: &Table<K, V>, hash: u64, key: &Q, f: F) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        F: FnOnce(&V) -> R,
    {
        table.find(hash, |(k, _)| k.borrow() == key).map(|(_, v)| {
            let _held = HeldMark::new(self.map.id, idx, false);
            f(v)
        })
    }

    /// See [`MapWrapper::get_cloned`](crate::MapWrapper::get_cloned).
    #[inline]
    pub fn get_cloned<Q>(self, key: &Q) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        self.read_op(Op::GetCloned, key, |found| found.map(|(_, v)| v.clone()))
    }

    /// See [`MapWrapper::contains_key`](crate::MapWrapper::contains_key).
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

    /// See [`MapWrapper::remove`](crate::MapWrapper::remove).
    #[inline]
    pub fn remove<Q>(self, key: &Q) -> Result<Option<V>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Ok(self.remove_entry_op(Op::Remove, key, None::<fn(&K, &V) -> bool>)?.map(|(_, v)| v))
    }

    /// See [`MapWrapper::remove_entry`](crate::MapWrapper::remove_entry).
    #[inline]
    pub fn remove_entry<Q>(self, key: &Q) -> Result<Option<(K, V)>, MapError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_entry_op(Op::RemoveEntry, key, None::<fn(&K, &V) -> bool>)
    }

    /// See [`MapWrapper::remove_if`](crate::MapWrapper::remove_if).
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
        let sizing = self.admit(&op, idx, &table, None)?;
        let done = self.take(&self.recorder(&op), idx, &mut table, hash, key, f);
        self.resized(sizing, &mut table);
        self.full_done(table, done)
    }

    /// The body of `remove`, `remove_entry` and `remove_if`: takes `key` out of a locked shard
    /// if `f` (when given) says so; `f` runs with the shard marked as held (a call back into
    /// the map from it is refused). The removed pair is the result, dropped by the caller
    /// after the unlock.
    #[inline(always)]
    pub(crate) fn take<Q, F, Rec: Recorder<K, V>>(
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

    /// See [`MapWrapper::update`](crate::MapWrapper::update).
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
    pub(crate) fn modify<Q, R, F, Rec: Recorder<K, V>>(
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

    /// See [`MapWrapper::alter`](crate::MapWrapper::alter).
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
        let sizing = self.admit(&op, idx, &table, Some((hash, &key)))?;
        let done = self.replace(&self.recorder(&op), idx, &mut table, hash, key, f);
        self.resized(sizing, &mut table);
        self.full_done(table, done)
    }

    /// The body of `alter`: sets the value of `key` in a locked shard to what `f` returns
    /// (`None` removes it), `f` running with the shard marked as held. The stored key of a
    /// removed entry is dropped after the unlock (its `Drop` may use the map).
    #[inline(always)]
    pub(crate) fn replace<F, Rec: Recorder<K, V>>(
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

    /// See [`MapWrapper::entry`](crate::MapWrapper::entry).
    pub fn entry(self, key: K) -> Entry<'m, 'c, K, V, S, fn(&mut V)> {
        Entry::new(self, key)
    }

    /// The body of an [`Entry`] upsert: in a locked shard, inserts what `make` returns if
    /// `key` is absent, else runs `modify` (when `modifies`), each with the shard marked as
    /// held. A present key without `modify` changes nothing and records nothing.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn upsert<Rec: Recorder<K, V>>(
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
            let shard = e.shard().unwrap_or(0);
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
            guards.push(ReadAll::new(table, HeldMark::guard(self.map.id, idx, false)));
        }
        Ok(guards)
    }

    /// See [`MapWrapper::retain`](crate::MapWrapper::retain).
    pub fn retain<F>(self, mut f: F) -> Result<usize, MapError>
    where
        F: FnMut(&K, &V) -> bool,
    {
        let id = self.map.id;
        let mut removed = 0;
        let mut panicked = None;
        let result = self.each_shard_mut(Op::Retain, |rec, idx, table| {
            retain_shard(id, &mut f, &mut removed, &mut panicked, rec, idx, table)
        });
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        result?;
        Ok(removed)
    }

    /// See [`MapWrapper::clear`](crate::MapWrapper::clear).
    pub fn clear(self) -> Result<usize, MapError> {
        let mut removed = 0;
        self.each_shard_mut(Op::Clear, |rec, idx, table| clear_shard(&mut removed, rec, idx, table))?;
        Ok(removed)
    }

    /// See [`MapWrapper::len`](crate::MapWrapper::len).
    pub fn len(self) -> Result<usize, MapError> {
        let mut n = 0;
        self.each_shard(Op::Len, |_, t| {
            n += t.len();
            true
        })?;
        Ok(n)
    }

    /// See [`MapWrapper::is_empty`](crate::MapWrapper::is_empty).
    pub fn is_empty(self) -> Result<bool, MapError> {
        let mut empty = true;
        self.each_shard(Op::IsEmpty, |_, t| {
            empty = t.is_empty();
            empty
        })?;
        Ok(empty)
    }

    /// See [`MapWrapper::for_each`](crate::MapWrapper::for_each).
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

    /// See [`MapWrapper::snapshot`](crate::MapWrapper::snapshot).
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

    /// See [`MapWrapper::iter`](crate::MapWrapper::iter).
    pub fn iter(self) -> Result<Iter<K, V>, MapError>
    where
        K: Clone,
        V: Clone,
    {
        Ok(Iter::new(self.snapshot()?))
    }

    /// See [`MapWrapper::extend`](crate::MapWrapper::extend).
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
        self.audit_settle(last)?;
        result.map(|()| n)
    }
}

/// What a bulk mutation did on one shard: what to drop after its unlock, and its last ticket.
pub(crate) type ShardDone<K, V> = (Vec<(K, V)>, Result<Option<Ticket>, MapError>);

/// The body of `retain` on one write-locked shard: removes the pairs `f` rejects (with the
/// shard marked as held) and records each removal; a panic of `f` is kept in `panicked`, and
/// the shards after it are left untouched.
pub(crate) fn retain_shard<K, V, F: FnMut(&K, &V) -> bool>(
    id: u64,
    f: &mut F,
    removed: &mut usize,
    panicked: &mut Option<Box<dyn std::any::Any + Send>>,
    rec: &Recording<'_, K, V>,
    idx: usize,
    table: &mut Table<K, V>,
) -> ShardDone<K, V> {
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
                    *panicked = Some(panic);
                    false
                }
            }
        })
        .collect();
    drop(held);
    *removed += gone.len();
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
}

/// The body of `clear` on one write-locked shard: empties it and records each removal.
pub(crate) fn clear_shard<K, V>(
    removed: &mut usize,
    rec: &Recording<'_, K, V>,
    idx: usize,
    table: &mut Table<K, V>,
) -> ShardDone<K, V> {
    *removed += table.len();
    let gone: Vec<(K, V)> = std::mem::take(table).into_iter().collect();
    let recorded = rec.removed(idx, &gone);
    (gone, recorded)
}

/// A shard's length before a change of a bounded or auto-shrinking map, and whether the change
/// reserved a slot under the bound.
pub(crate) struct Sizing {
    before: usize,
    reserved: bool,
}

// The size policies (`Builder::max_entries`, `Builder::auto_shrink`): on the full path only
// (a map with either never takes the fast path), around each operation's body.
impl<'m, 'c, K, V, S> WithContext<'m, 'c, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// Before a change under the shard lock: `None` when the map has no size policy;
    /// otherwise the shard's length, and for a change that may add `adds` (its hash and key),
    /// a slot reserved under the bound. At the bound, a key not in the shard is refused
    /// (recorded as refused; nothing changed).
    #[inline]
    pub(crate) fn admit(
        &self,
        op: &FullOp<'m, 'c>,
        idx: usize,
        table: &Table<K, V>,
        adds: Option<(u64, &K)>,
    ) -> Result<Option<Sizing>, MapError> {
        let Some(mut sizing) = self.sizing(table) else {
            return Ok(None);
        };
        if let (Some(bound), Some((hash, key))) = (self.map.bound.as_deref(), adds) {
            sizing.reserved = bound.try_reserve();
            if !sizing.reserved && table.find(hash, |(k, _)| k == key).is_none() {
                let e = MapError::capacity_exceeded(&self.map.name, op.waiter.op, bound.max);
                return Err(self.recorder(op).refused(idx, Some(key), e));
            }
        }
        Ok(Some(sizing))
    }

    /// [`admit`](Self::admit) for a change that adds nothing.
    #[inline]
    pub(crate) fn sizing(&self, table: &Table<K, V>) -> Option<Sizing> {
        (self.map.bound.is_some() || self.map.shrink.is_some())
            .then(|| Sizing { before: table.len(), reserved: false })
    }

    /// After the change, still under the lock: settles the bound's count, and shrinks the
    /// table if it lost entries and the shrink rule says so.
    #[inline]
    pub(crate) fn resized(&self, sizing: Option<Sizing>, table: &mut Table<K, V>) {
        let Some(Sizing { before, reserved }) = sizing else {
            return;
        };
        let after = table.len();
        if let Some(bound) = self.map.bound.as_deref() {
            bound.settle(before, after, reserved);
        }
        if let Some(rule) = self.map.shrink {
            if after < before {
                rule.apply(table, self.rehasher());
            }
        }
    }
}

// HashMap-shaped extras: capacity, reserve, shrink, keys/values, a copy of one shard, a copy
// of every shard's table.
impl<'m, 'c, K, V, S> WithContext<'m, 'c, K, V, S>
where
    K: Hash + Eq,
    S: BuildHasher,
{
    /// See [`MapWrapper::capacity`](crate::MapWrapper::capacity).
    pub fn capacity(self) -> Result<usize, MapError> {
        let mut n = 0;
        self.each_shard(Op::Capacity, |_, t| {
            n += t.capacity();
            true
        })?;
        Ok(n)
    }

    /// See [`MapWrapper::reserve`](crate::MapWrapper::reserve).
    pub fn reserve(self, additional: usize) -> Result<(), MapError> {
        let per_shard = additional.div_ceil(self.map.shards.len());
        let hasher = &self.map.hasher;
        self.each_shard_mut(Op::Reserve, |_, _, table| {
            table.reserve(per_shard, |(k, _)| hasher.hash_one(k));
            ((), Ok(None))
        })
    }

    /// See [`MapWrapper::shrink_to_fit`](crate::MapWrapper::shrink_to_fit).
    pub fn shrink_to_fit(self) -> Result<(), MapError> {
        let hasher = &self.map.hasher;
        self.each_shard_mut(Op::ShrinkToFit, |_, _, table| {
            table.shrink_to_fit(|(k, _)| hasher.hash_one(k));
            ((), Ok(None))
        })
    }

    /// See [`MapWrapper::keys`](crate::MapWrapper::keys).
    pub fn keys(self) -> Result<std::vec::IntoIter<K>, MapError>
    where
        K: Clone,
    {
        let mut out = Vec::new();
        self.each_shard(Op::Snapshot, |_, t| {
            out.extend(t.iter().map(|(k, _)| k.clone()));
            true
        })?;
        Ok(out.into_iter())
    }

    /// See [`MapWrapper::values`](crate::MapWrapper::values).
    pub fn values(self) -> Result<std::vec::IntoIter<V>, MapError>
    where
        V: Clone,
    {
        let mut out = Vec::new();
        self.each_shard(Op::Snapshot, |_, t| {
            out.extend(t.iter().map(|(_, v)| v.clone()));
            true
        })?;
        Ok(out.into_iter())
    }

    /// See [`MapWrapper::iter_by_shard`](crate::MapWrapper::iter_by_shard).
    pub fn iter_by_shard(self) -> crate::iter::ShardIter<'m, 'c, K, V, S>
    where
        K: Clone,
        V: Clone,
    {
        crate::iter::ShardIter::new(self)
    }

    /// A copy of shard `idx`'s entries, read-locked for the copy only: one operation with its
    /// own deadline.
    pub(crate) fn shard_copy(self, idx: usize, into: &mut Vec<(K, V)>) -> Result<(), MapError>
    where
        K: Clone,
        V: Clone,
    {
        let mut waiter = self.begin(Op::Snapshot);
        let table = waiter.read(idx, &self.map.shards[idx])?;
        into.clear();
        into.extend(table.iter().cloned());
        Ok(())
    }

    /// A copy of every shard's table (same hasher, same shard count: the copy needs no
    /// rehash), each shard read-locked while it is copied.
    pub(crate) fn copy_tables(self) -> Result<Vec<Table<K, V>>, MapError>
    where
        K: Clone,
        V: Clone,
    {
        let mut out = Vec::with_capacity(self.map.shards.len());
        self.each_shard(Op::Snapshot, |_, t| {
            out.push(t.clone());
            true
        })?;
        Ok(out)
    }
}
