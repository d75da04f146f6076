//! [`MapError`]: every way an operation on a [`MapWrapper`](crate::MapWrapper) can fail, and
//! [`BuildError`]: a bad builder setting.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::Op;

/// Why an operation on a [`MapWrapper`](crate::MapWrapper) failed.
///
/// Small (16 bytes: a kind and boxed details, as `std::io::Error`), so that every
/// `Result<_, MapError>` stays small. Match on [`kind`](MapError::kind); every kind has a
/// stable [`code`](MapError::code) for logs and dashboards, says whether a retry can help
/// ([`is_retryable`](MapError::is_retryable)) and how serious it is
/// ([`severity`](MapError::severity)). The details (map, operation, shard, time waited, …) are
/// accessors, so new ones can be added without breaking a caller.
///
/// **An error means the operation changed nothing**, with one exception, visible in the
/// error's structure: [`ErrorKind::AppliedNotDurable`] ([`applied`](MapError::applied) is
/// `true`): the change *was* applied, but its audit record could not be enqueued or made
/// durable. It is never retryable: retrying would apply the change twice. (For the bulk
/// operations `retain`, `clear` and `extend`, see [`MapWrapper`](crate::MapWrapper)'s
/// documentation for what an error midway leaves.)
///
/// # Examples
///
/// ```
/// use map_wrapper::{ErrorKind, MapError, MapWrapper};
///
/// let map: MapWrapper<u32, u32> = MapWrapper::new();
/// match map.insert(1, 10) {
///     Ok(_) => {}
///     Err(e) if e.applied() => eprintln!("applied, but not durably recorded: {e}"),
///     Err(e) if e.is_retryable() => eprintln!("nothing changed; try again later: {e}"),
///     Err(e) => match e.kind() {
///         ErrorKind::WouldDeadlock => eprintln!("drop your guard first: {e}"),
///         _ => eprintln!("giving up [{}]: {e}", e.code()),
///     },
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct MapError {
    kind: ErrorKind,
    details: Box<Details>,
}

/// What kind of [`MapError`] it is: match on it (keep a `_` arm: kinds may be added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The shard lock was not free before the operation's deadline. Nothing changed;
    /// retryable.
    Timeout,
    /// The operation's deadline ([`OpContext::deadline`](crate::OpContext::deadline)) had
    /// already passed when it was called, so it did not start. Nothing changed.
    DeadlineExceeded,
    /// The operation's [`CancelToken`](crate::CancelToken) was cancelled before it took the
    /// lock. Nothing changed.
    Cancelled,
    /// Waiting for the shard the operation needs would hang forever, so the operation is
    /// refused at once instead of timing out. Nothing changed; not retryable as is (the caller
    /// must let go of what it holds first). Two cases:
    ///
    /// - **Re-entrant:** this thread already holds a lock on that shard (for example a
    ///   [`Ref`](crate::Ref) from [`get`](crate::MapWrapper::get) is still alive, or the call
    ///   is made inside an [`update`](crate::MapWrapper::update) closure).
    ///   [`shard`](MapError::shard) and [`held_shard`](MapError::held_shard) are that shard.
    /// - **A cycle across threads** (and maps): this thread holds a shard (a guard, a closure in
    ///   progress) and would wait for one held by another thread that waits, directly or
    ///   through other waiting threads, for the shard this one holds: thread A holds shard 1 and
    ///   inserts into shard 2 while thread B holds shard 2 and inserts into shard 1. The thread
    ///   whose wait would close the cycle is refused (the others keep waiting, and go on once
    ///   it lets go); [`shard`](MapError::shard) is the shard it asked for,
    ///   [`held_shard`](MapError::held_shard) / [`held_map`](MapError::held_map) the shard of
    ///   its own that the cycle waits for, [`cycle_threads`](MapError::cycle_threads) how many
    ///   threads the cycle has. A cycle through shared (read) holds counts only when a writer
    ///   waits in it, as only then does it hang. The check runs when a thread starts to wait
    ///   (and every few milliseconds while a reader that holds shards keeps waiting, as it may
    ///   end up queued behind a writer that came later); a refusal is a cycle of waiting
    ///   threads at that moment, each blocked by a shard another one holds or by a writer
    ///   ahead of it in a shard's queue. Only the map's own locks are seen: a cycle through a
    ///   lock of yours (a `Mutex` held while calling the map) still ends in
    ///   [`Timeout`](ErrorKind::Timeout), and so does a cycle through an async operation's
    ///   wait (an `_async` method): the graph is of waiting threads, and a task's wait is not
    ///   published in it.
    WouldDeadlock,
    /// The map's circuit breaker is open because operations have been too slow or have failed;
    /// it fails fast instead of adding load. Nothing changed; retryable after
    /// [`retry_after`](MapError::retry_after).
    CircuitOpen,
    /// The map's audit sink cannot take records, and the map is fail-closed: the mutation was
    /// refused before it locked anything, so that no change goes unrecorded. Nothing changed;
    /// retryable once the sink recovers.
    AuditUnavailable,
    /// **The change was applied** (it is in the map), but its audit record could not be
    /// enqueued or made durable at the auditor's durability (the sink failed while the
    /// operation waited). Never retryable: a retry would apply the change twice. The map is
    /// read-only (fail-closed) until the sink is reopened.
    AppliedNotDurable,
    /// A setting is invalid (an auditor given to a map whose policies it cannot serve).
    InvalidConfig,
    /// The map holds its maximum number of entries
    /// ([`Builder::max_entries`](crate::builder::Builder::max_entries), or `max_entries = N` in
    /// `#[guarded_map(..)]` or a field's `#[guard(..)]`) and the operation would
    /// have added one. Nothing changed (an audited map records the refusal); not retryable as
    /// is: remove entries first, or raise the bound.
    CapacityExceeded,
}

/// How serious a [`MapError`] is, for routing to logs and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// Expected in normal operation (a caller gave up).
    Info,
    /// The map is under pressure (slow or overloaded); retrying later is the answer.
    Warning,
    /// A mistake in the calling code or configuration; retrying will not help.
    Error,
    /// The map cannot keep its guarantees (no audit trail); needs an operator.
    Critical,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Details {
    map: Option<Arc<str>>,
    op: Option<Op>,
    shard: Option<usize>,
    waited: Option<Duration>,
    timeout: Option<Duration>,
    retry_after: Option<Duration>,
    reason: Option<Arc<str>>,
    field: Option<&'static str>,
    /// Would-deadlock: the map and shard this thread holds that the refused wait would block.
    held: Option<(Arc<str>, usize)>,
    /// Would-deadlock across threads: how many threads the cycle has.
    cycle: Option<usize>,
}

impl ErrorKind {
    /// The stable, UPPER_SNAKE code of this kind.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorKind::Cancelled => "CANCELLED",
            ErrorKind::WouldDeadlock => "WOULD_DEADLOCK",
            ErrorKind::CircuitOpen => "CIRCUIT_OPEN",
            ErrorKind::AuditUnavailable => "AUDIT_UNAVAILABLE",
            ErrorKind::AppliedNotDurable => "APPLIED_NOT_DURABLE",
            ErrorKind::InvalidConfig => "INVALID_CONFIG",
            ErrorKind::CapacityExceeded => "CAPACITY_EXCEEDED",
        }
    }
}

/// The reason of a [`ErrorKind::WouldDeadlock`] refused to an async operation (see
/// `MapError::would_deadlock_in_closure`).
const IN_CLOSURE: &str = "called from inside a closure the map runs under this shard's lock";

impl MapError {
    #[cold]
    fn new(kind: ErrorKind, details: Details) -> Self {
        MapError { kind, details: Box::new(details) }
    }

    #[cold]
    pub(crate) fn timed_out(
        map: &Arc<str>,
        op: Op,
        shard: usize,
        waited: Duration,
        timeout: Duration,
    ) -> Self {
        let d = Details {
            map: Some(map.clone()),
            op: Some(op),
            shard: Some(shard),
            waited: Some(waited),
            timeout: Some(timeout),
            ..Details::default()
        };
        Self::new(ErrorKind::Timeout, d)
    }

    /// A timeout waiting for room in the audit queue (back-pressure), before anything was
    /// locked or changed: no shard is named.
    #[cold]
    pub(crate) fn audit_queue_full(map: &Arc<str>, op: Op, waited: Duration, timeout: Duration) -> Self {
        let d = Details {
            map: Some(map.clone()),
            op: Some(op),
            waited: Some(waited),
            timeout: Some(timeout),
            ..Details::default()
        };
        Self::new(ErrorKind::Timeout, d)
    }

    #[cold]
    pub(crate) fn deadline_exceeded(map: &Arc<str>, op: Op) -> Self {
        Self::new(
            ErrorKind::DeadlineExceeded,
            Details { map: Some(map.clone()), op: Some(op), ..Details::default() },
        )
    }

    #[cold]
    pub(crate) fn cancelled(map: &Arc<str>, op: Op) -> Self {
        Self::new(
            ErrorKind::Cancelled,
            Details { map: Some(map.clone()), op: Some(op), ..Details::default() },
        )
    }

    #[cold]
    pub(crate) fn would_deadlock(map: &Arc<str>, op: Op, shard: usize) -> Self {
        let d = Details {
            map: Some(map.clone()),
            op: Some(op),
            shard: Some(shard),
            held: Some((map.clone(), shard)),
            ..Details::default()
        };
        Self::new(ErrorKind::WouldDeadlock, d)
    }

    /// A wait for `shard` of `map` refused because it would close a cycle of `threads` waiting
    /// threads through `held_shard` of `held_map`, which this thread holds.
    #[cold]
    pub(crate) fn would_deadlock_cycle(
        map: &Arc<str>,
        op: Op,
        shard: usize,
        held_map: Arc<str>,
        held_shard: usize,
        threads: usize,
    ) -> Self {
        let d = Details {
            map: Some(map.clone()),
            op: Some(op),
            shard: Some(shard),
            held: Some((held_map, held_shard)),
            cycle: Some(threads),
            ..Details::default()
        };
        Self::new(ErrorKind::WouldDeadlock, d)
    }

    /// An async operation called from inside a closure the map is running on `shard` (it
    /// would wait for the operation that called it). Its message names that holder instead of
    /// "this thread": a guard held by another task on the same thread is waited for.
    #[cold]
    pub(crate) fn would_deadlock_in_closure(map: &Arc<str>, op: Op, shard: usize) -> Self {
        let d = Details {
            map: Some(map.clone()),
            op: Some(op),
            shard: Some(shard),
            reason: Some(IN_CLOSURE.into()),
            ..Details::default()
        };
        Self::new(ErrorKind::WouldDeadlock, d)
    }

    #[cold]
    pub(crate) fn circuit_open(map: &Arc<str>, op: Op, retry_after: Duration) -> Self {
        let d = Details {
            map: Some(map.clone()),
            op: Some(op),
            retry_after: Some(retry_after),
            ..Details::default()
        };
        Self::new(ErrorKind::CircuitOpen, d)
    }

    #[cold]
    pub(crate) fn audit_unavailable(map: &Arc<str>, reason: Arc<str>) -> Self {
        let d = Details { map: Some(map.clone()), reason: Some(reason), ..Details::default() };
        Self::new(ErrorKind::AuditUnavailable, d)
    }

    #[cold]
    pub(crate) fn applied_not_durable(map: &Arc<str>, reason: Arc<str>) -> Self {
        let d = Details { map: Some(map.clone()), reason: Some(reason), ..Details::default() };
        Self::new(ErrorKind::AppliedNotDurable, d)
    }

    /// An insert refused by the map's size bound of `max` entries.
    #[cold]
    pub(crate) fn capacity_exceeded(map: &Arc<str>, op: Op, max: usize) -> Self {
        let d = Details {
            map: Some(map.clone()),
            op: Some(op),
            field: Some("max_entries"),
            reason: Some(Arc::from(max.to_string())),
            ..Details::default()
        };
        Self::new(ErrorKind::CapacityExceeded, d)
    }

    #[cold]
    pub(crate) fn invalid_config(field: &'static str, reason: String) -> Self {
        let d = Details { field: Some(field), reason: Some(reason.into()), ..Details::default() };
        Self::new(ErrorKind::InvalidConfig, d)
    }

    /// What kind of error it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// A stable, UPPER_SNAKE identifier for the kind of error, suitable for logs and metrics.
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map = MapWrapper::<u8, u8>::new();
    /// map.insert(1, 1)?;
    /// let guard = map.get(&1)?.unwrap();
    /// assert_eq!(map.insert(1, 2).unwrap_err().code(), "WOULD_DEADLOCK");
    /// drop(guard);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// Whether the same call may succeed if tried again later, having changed nothing.
    ///
    /// Timeouts, an open breaker and an unavailable audit sink are transient; a cancellation,
    /// an expired deadline, a would-deadlock and a bad configuration are not (the caller must
    /// change something); and an [`applied`](MapError::applied) change never is.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout | ErrorKind::CircuitOpen | ErrorKind::AuditUnavailable)
    }

    /// Whether the operation's change was applied despite the error
    /// ([`ErrorKind::AppliedNotDurable`]): the map holds it, its audit record may be missing.
    /// Every other error means the operation changed nothing.
    pub fn applied(&self) -> bool {
        self.kind == ErrorKind::AppliedNotDurable
    }

    /// How serious the error is.
    pub fn severity(&self) -> Severity {
        match self.kind {
            ErrorKind::Cancelled | ErrorKind::DeadlineExceeded => Severity::Info,
            ErrorKind::Timeout | ErrorKind::CircuitOpen => Severity::Warning,
            ErrorKind::WouldDeadlock | ErrorKind::InvalidConfig | ErrorKind::CapacityExceeded => {
                Severity::Error
            }
            ErrorKind::AuditUnavailable | ErrorKind::AppliedNotDurable => Severity::Critical,
        }
    }

    /// The name of the map the operation ran on.
    pub fn map(&self) -> Option<&str> {
        self.details.map.as_deref()
    }

    /// The operation that failed, when it is known.
    pub fn op(&self) -> Option<Op> {
        self.details.op
    }

    /// The shard involved: the one that could not be locked (timeout), or the one the
    /// operation asked for (would-deadlock; for a re-entrant call, also the one this thread
    /// holds).
    pub fn shard(&self) -> Option<usize> {
        self.details.shard
    }

    /// For [`ErrorKind::WouldDeadlock`]: the shard this thread holds that the refused wait
    /// would have deadlocked on: the same shard as [`shard`](MapError::shard) for a re-entrant
    /// call; for a cycle across threads, the shard of this thread's that another thread of the
    /// cycle waits for (of the map [`held_map`](MapError::held_map), which is not
    /// [`map`](MapError::map) when the cycle spans two maps).
    ///
    /// ```
    /// use map_wrapper::MapWrapper;
    /// let map = MapWrapper::<u8, u8>::new();
    /// map.insert(1, 1)?;
    /// let guard = map.get(&1)?.unwrap();
    /// let e = map.insert(1, 2).unwrap_err();
    /// assert_eq!(e.held_shard(), e.shard());
    /// assert_eq!(e.cycle_threads(), None); // this thread alone: a re-entrant call
    /// drop(guard);
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn held_shard(&self) -> Option<usize> {
        self.details.held.as_ref().map(|(_, s)| *s)
    }

    /// For [`ErrorKind::WouldDeadlock`]: the name of the map of
    /// [`held_shard`](MapError::held_shard).
    pub fn held_map(&self) -> Option<&str> {
        self.details.held.as_ref().map(|(m, _)| &**m)
    }

    /// For [`ErrorKind::WouldDeadlock`] refused because of a cycle across threads: how many
    /// threads the cycle has, this one included (2 for A waits for B, B waits for A). `None`
    /// for a re-entrant call (this thread alone).
    pub fn cycle_threads(&self) -> Option<usize> {
        self.details.cycle
    }

    /// How long a timed-out operation waited for its shard before giving up.
    pub fn waited(&self) -> Option<Duration> {
        self.details.waited
    }

    /// The time a timed-out operation was allowed: from its first wait for a single-key
    /// operation, from its start for one that visits many shards.
    pub fn timeout(&self) -> Option<Duration> {
        self.details.timeout
    }

    /// When an open breaker will next let a probe through.
    pub fn retry_after(&self) -> Option<Duration> {
        self.details.retry_after
    }

    /// What went wrong with the audit sink, or with a setting.
    pub fn reason(&self) -> Option<&str> {
        self.details.reason.as_deref()
    }

    /// The setting at fault, for [`ErrorKind::InvalidConfig`].
    pub fn field(&self) -> Option<&'static str> {
        self.details.field
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &*self.details;
        let map = d.map.as_deref().unwrap_or("?");
        let op = d.op.map_or("operation", Op::as_str);
        let reason = d.reason.as_deref().unwrap_or("unknown");
        let dur = |x: Option<Duration>| x.unwrap_or_default();
        match self.kind {
            ErrorKind::Timeout if d.shard.is_none() => write!(
                f,
                "`{op}` on map `{map}` timed out after waiting {:?} for room in its audit queue, which \
                 was full (the operation's time limit is {:?}); nothing was changed: retry, raise the \
                 timeout, or give the sink more room (JsonLinesOptions::max_queue_bytes) or a faster disk",
                dur(d.waited),
                dur(d.timeout)
            ),
            ErrorKind::Timeout => write!(
                f,
                "`{op}` on map `{map}` timed out after waiting {:?} for shard {}, which another thread or task \
                 held (the operation's time limit is {:?}): retry, raise the timeout (OpContext::timeout \
                 or the builder's timeout), or shorten what runs under the lock",
                dur(d.waited),
                d.shard.unwrap_or_default(),
                dur(d.timeout)
            ),
            ErrorKind::DeadlineExceeded => write!(
                f,
                "`{op}` on map `{map}` was not started: its deadline had already passed; stop the work \
                 this deadline belongs to, or give it a later deadline"
            ),
            ErrorKind::Cancelled => write!(
                f,
                "`{op}` on map `{map}` was cancelled by its caller before it could take the lock it needed"
            ),
            ErrorKind::WouldDeadlock if d.cycle.is_some() => {
                let (held_map, held_shard) = d.held.as_ref().map_or(("?", 0), |(m, s)| (&**m, *s));
                write!(
                    f,
                    "`{op}` on map `{map}` would deadlock: waiting for shard {} would close a cycle of \
                     {} threads (this thread holds shard {held_shard} of map `{held_map}`, which another \
                     thread of the cycle waits for, while the shard it asked for is held by a thread of \
                     the cycle); drop guards before calling into another shard, or take shards in one \
                     order everywhere",
                    d.shard.unwrap_or_default(),
                    d.cycle.unwrap_or_default()
                )
            }
            ErrorKind::WouldDeadlock if d.reason.as_deref() == Some(IN_CLOSURE) => write!(
                f,
                "`{op}` on map `{map}` would deadlock: it was called from inside a closure that the \
                 map is running on shard {} for another operation of the same call chain (an async \
                 operation waits for guards of other tasks, never for its own caller); move the \
                 call out of the closure",
                d.shard.unwrap_or_default()
            ),
            ErrorKind::WouldDeadlock => write!(
                f,
                "`{op}` on map `{map}` would deadlock: this thread already holds shard {} (a live guard \
                 from `get`, or a call from inside a closure the map is running); drop the guard first, \
                 or copy the value out with `get_cloned`",
                d.shard.unwrap_or_default()
            ),
            ErrorKind::CircuitOpen => write!(
                f,
                "map `{map}` is refusing work because its circuit breaker is open (operations were too \
                 slow or failing); retry after {:?}",
                dur(d.retry_after)
            ),
            ErrorKind::AuditUnavailable => write!(
                f,
                "map `{map}` refused a mutation because its audit sink is unavailable ({reason}); the \
                 map is read-only until the sink is reopened"
            ),
            ErrorKind::AppliedNotDurable => write!(
                f,
                "map `{map}` applied a mutation, but its audit record could not be made durable \
                 ({reason}); do not retry it (the change is in the map); the map is read-only until \
                 the sink is reopened"
            ),
            ErrorKind::CapacityExceeded => write!(
                f,
                "`{op}` on map `{map}` was refused: the map holds its maximum of {reason} entries \
                 (max_entries) and this would add one; nothing was changed: remove entries first, or \
                 raise the bound (Builder::max_entries, or `max_entries = N` in #[guarded_map(..)] or a \
                 field's #[guard(..)])"
            ),
            ErrorKind::InvalidConfig => {
                write!(f, "invalid map configuration: `{}` {reason}", d.field.unwrap_or("?"))
            }
        }
    }
}

impl fmt::Debug for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &*self.details;
        let mut s = f.debug_struct("MapError");
        s.field("kind", &self.kind);
        if let Some(m) = &d.map {
            s.field("map", m);
        }
        if let Some(op) = d.op {
            s.field("op", &op);
        }
        if let Some(x) = d.shard {
            s.field("shard", &x);
        }
        if let Some(x) = d.waited {
            s.field("waited", &x);
        }
        if let Some(x) = d.timeout {
            s.field("timeout", &x);
        }
        if let Some(x) = d.retry_after {
            s.field("retry_after", &x);
        }
        if let Some(x) = &d.reason {
            s.field("reason", x);
        }
        if let Some(x) = d.field {
            s.field("field", &x);
        }
        s.finish()
    }
}

impl std::error::Error for MapError {}

/// A builder setting that [`Builder::build`](crate::Builder::build) refuses (instead of
/// panicking): which setting, and what is accepted.
///
/// ```
/// use map_wrapper::MapWrapper;
/// let e = MapWrapper::<u8, u8>::builder().shards(3).build().unwrap_err();
/// assert_eq!(e.field(), "shards");
/// assert_eq!(e.code(), "INVALID_CONFIG");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    inner: Box<(&'static str, String)>,
}

impl BuildError {
    #[cold]
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        BuildError { inner: Box::new((field, reason.into())) }
    }

    /// The builder setting at fault (`"shards"`, `"name"`, …).
    pub fn field(&self) -> &'static str {
        self.inner.0
    }

    /// What is wrong with it and what is accepted.
    pub fn reason(&self) -> &str {
        &self.inner.1
    }

    /// The stable code, `"INVALID_CONFIG"` (as the [`MapError`] it converts into).
    pub fn code(&self) -> &'static str {
        ErrorKind::InvalidConfig.code()
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid map configuration: `{}` {}", self.field(), self.reason())
    }
}

impl std::error::Error for BuildError {}

impl From<BuildError> for MapError {
    /// An [`ErrorKind::InvalidConfig`] naming the same setting: so that `build()?` works in a
    /// function that returns `MapError`.
    fn from(e: BuildError) -> Self {
        let (field, reason) = *e.inner;
        MapError::invalid_config(field, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<MapError> {
        let map: Arc<str> = Arc::from("m");
        vec![
            MapError::timed_out(&map, Op::Insert, 3, Duration::from_millis(5), Duration::from_millis(5)),
            MapError::cancelled(&map, Op::Get),
            MapError::deadline_exceeded(&map, Op::Get),
            MapError::would_deadlock(&map, Op::Insert, 1),
            MapError::would_deadlock_cycle(&map, Op::Insert, 2, Arc::from("other"), 1, 2),
            MapError::circuit_open(&map, Op::Insert, Duration::from_secs(1)),
            MapError::audit_unavailable(&map, Arc::from("disk full")),
            MapError::applied_not_durable(&map, Arc::from("disk full")),
            MapError::capacity_exceeded(&map, Op::Insert, 10),
            BuildError::new("shards", "must be a power of two").into(),
        ]
    }

    #[test]
    fn the_error_is_at_most_16_bytes() {
        assert!(std::mem::size_of::<MapError>() <= 16, "{}", std::mem::size_of::<MapError>());
        assert!(std::mem::size_of::<Result<(), MapError>>() <= 16);
        assert!(std::mem::size_of::<BuildError>() <= 16);
    }

    #[test]
    fn codes_are_distinct_upper_snake() {
        // One code per kind (the two would-deadlock errors share theirs).
        let mut kinds: Vec<ErrorKind> = all().iter().map(MapError::kind).collect();
        kinds.dedup();
        let codes: Vec<_> = kinds.iter().map(|k| k.code()).collect();
        for c in &codes {
            assert!(c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'), "{c}");
        }
        let mut dedup = codes.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), codes.len());
    }

    #[test]
    fn messages_name_the_map_and_a_remedy() {
        for e in all() {
            let msg = e.to_string();
            if e.kind() != ErrorKind::InvalidConfig {
                assert!(msg.contains("`m`"), "{msg}");
            }
        }
        let t = &all()[0];
        assert!(t.to_string().contains("retry"));
        assert!(t.is_retryable());
        assert_eq!(t.waited(), Some(Duration::from_millis(5)));
        assert_eq!(t.op(), Some(Op::Insert));
        assert_eq!(t.shard(), Some(3));
        assert_eq!(all()[3].severity(), Severity::Error);
        assert!(!all()[2].is_retryable());
        assert!(!all()[1].is_retryable());
    }

    #[test]
    fn only_an_applied_change_says_applied_and_it_is_never_retryable() {
        for e in all() {
            assert_eq!(e.applied(), e.kind() == ErrorKind::AppliedNotDurable, "{e:?}");
            if e.applied() {
                assert!(!e.is_retryable());
                assert_eq!(e.code(), "APPLIED_NOT_DURABLE");
                assert_eq!(e.severity(), Severity::Critical);
                assert!(e.to_string().contains("do not retry"), "{e}");
            }
        }
        assert!(all()[5].is_retryable(), "a refused mutation (nothing applied) may be retried");
    }
}
