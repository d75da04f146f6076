//! [`MapError`]: every way an operation on a [`MapWrapper`](crate::MapWrapper) can be refused.

use std::sync::Arc;
use std::time::Duration;

/// Why an operation on a [`MapWrapper`](crate::MapWrapper) did not happen.
///
/// Every variant has a stable [`code`](MapError::code) for logs and dashboards, says whether a
/// retry can help ([`is_retryable`](MapError::is_retryable)) and how serious it is
/// ([`severity`](MapError::severity)). When a single-key operation returns an error, the map is
/// exactly as it was before the call: no error leaves a half-applied mutation behind (for the
/// bulk operations see [`MapWrapper`](crate::MapWrapper)'s documentation).
///
/// The enum is `#[non_exhaustive]`: match on [`code`](MapError::code) or keep a `_` arm.
///
/// # Examples
///
/// ```
/// use map_wrapper::{MapError, MapWrapper};
///
/// let map: MapWrapper<u32, u32> = MapWrapper::new();
/// match map.insert(1, 10) {
///     Ok(_) => {}
///     Err(e) if e.is_retryable() => eprintln!("try again later: {e}"),
///     Err(e) => eprintln!("giving up [{}]: {e}", e.code()),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The shard lock was not free before the operation's deadline.
    #[error(
        "`{op}` on map `{map}` timed out after waiting {waited:?} for shard {shard}, which \
         another thread held (the operation's time limit is {timeout:?}): retry, raise the \
         timeout (OpContext::timeout or the builder's timeout), or shorten what runs under the lock"
    )]
    Timeout {
        /// The map's name.
        map: Arc<str>,
        /// The operation that timed out (`insert`, `get`, …).
        op: &'static str,
        /// The shard that could not be locked.
        shard: usize,
        /// How long the operation waited for this shard before giving up.
        waited: Duration,
        /// The time the operation was allowed: from its first wait for a single-key operation,
        /// from its start for one that visits many shards.
        timeout: Duration,
    },
    /// The operation's deadline ([`OpContext::deadline`](crate::OpContext::deadline)) had
    /// already passed when it was called, so it did not start.
    #[error(
        "`{op}` on map `{map}` was not started: its deadline had already passed; stop the work \
         this deadline belongs to, or give it a later deadline"
    )]
    DeadlineExceeded {
        /// The map's name.
        map: Arc<str>,
        /// The operation that was not started.
        op: &'static str,
    },
    /// The operation's [`CancelToken`](crate::CancelToken) was cancelled before it took the lock.
    #[error("`{op}` on map `{map}` was cancelled by its caller before it could take the lock it needed")]
    Cancelled {
        /// The map's name.
        map: Arc<str>,
        /// The operation that was cancelled.
        op: &'static str,
    },
    /// This thread already holds a lock on the shard the operation needs (for example a
    /// [`Ref`](crate::Ref) from [`get`](crate::MapWrapper::get) is still alive, or the call is
    /// made inside an [`update`](crate::MapWrapper::update) closure). Waiting would hang forever,
    /// so the operation is refused at once.
    #[error(
        "`{op}` on map `{map}` would deadlock: this thread already holds shard {shard} \
         (a live guard from `get`, or a call from inside a closure the map is running); drop \
         the guard first, or copy the value out with `get_cloned`"
    )]
    WouldDeadlock {
        /// The map's name.
        map: Arc<str>,
        /// The operation that was refused.
        op: &'static str,
        /// The shard this thread already holds.
        shard: usize,
    },
    /// The map's circuit breaker is open because operations have been too slow or have failed;
    /// it fails fast instead of adding load.
    #[error(
        "map `{map}` is refusing work because its circuit breaker is open (operations were too \
         slow or failing); retry after {retry_after:?}"
    )]
    CircuitOpen {
        /// The map's name.
        map: Arc<str>,
        /// When the breaker will next let a probe through.
        retry_after: Duration,
    },
    /// The map's audit sink cannot take records, and the map is fail-closed: mutations are
    /// refused until the sink recovers, so that no change goes unrecorded.
    #[error(
        "map `{map}` refused a mutation because its audit sink is unavailable ({reason}); the \
         map is read-only until the sink is reopened"
    )]
    AuditUnavailable {
        /// The map's name.
        map: Arc<str>,
        /// What went wrong with the sink.
        reason: Arc<str>,
    },
    /// A builder setting is invalid; `build()` refuses it instead of panicking.
    #[error("invalid map configuration: `{field}` {reason}")]
    InvalidConfig {
        /// The builder setting at fault.
        field: &'static str,
        /// What is wrong with it and what is accepted.
        reason: String,
    },
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

impl MapError {
    /// A stable, UPPER_SNAKE identifier for the kind of error, suitable for logs and metrics.
    ///
    /// ```
    /// # use map_wrapper::MapError;
    /// let e = MapError::InvalidConfig { field: "shards", reason: "must be a power of two".into() };
    /// assert_eq!(e.code(), "INVALID_CONFIG");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            MapError::Timeout { .. } => "TIMEOUT",
            MapError::DeadlineExceeded { .. } => "DEADLINE_EXCEEDED",
            MapError::Cancelled { .. } => "CANCELLED",
            MapError::WouldDeadlock { .. } => "WOULD_DEADLOCK",
            MapError::CircuitOpen { .. } => "CIRCUIT_OPEN",
            MapError::AuditUnavailable { .. } => "AUDIT_UNAVAILABLE",
            MapError::InvalidConfig { .. } => "INVALID_CONFIG",
        }
    }

    /// Whether the same call may succeed if tried again later.
    ///
    /// Timeouts, an open breaker and an unavailable audit sink are transient; a cancellation,
    /// an expired deadline, a would-deadlock and a bad configuration are not (the caller must
    /// change something).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MapError::Timeout { .. } | MapError::CircuitOpen { .. } | MapError::AuditUnavailable { .. }
        )
    }

    /// How serious the error is.
    pub fn severity(&self) -> Severity {
        match self {
            MapError::Cancelled { .. } | MapError::DeadlineExceeded { .. } => Severity::Info,
            MapError::Timeout { .. } | MapError::CircuitOpen { .. } => Severity::Warning,
            MapError::WouldDeadlock { .. } | MapError::InvalidConfig { .. } => Severity::Error,
            MapError::AuditUnavailable { .. } => Severity::Critical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<MapError> {
        let map: Arc<str> = Arc::from("m");
        vec![
            MapError::Timeout {
                map: map.clone(),
                op: "insert",
                shard: 3,
                waited: Duration::from_millis(5),
                timeout: Duration::from_millis(5),
            },
            MapError::Cancelled { map: map.clone(), op: "get" },
            MapError::DeadlineExceeded { map: map.clone(), op: "get" },
            MapError::WouldDeadlock { map: map.clone(), op: "insert", shard: 1 },
            MapError::CircuitOpen { map: map.clone(), retry_after: Duration::from_secs(1) },
            MapError::AuditUnavailable { map, reason: Arc::from("disk full") },
            MapError::InvalidConfig { field: "shards", reason: "must be a power of two".into() },
        ]
    }

    #[test]
    fn codes_are_distinct_upper_snake() {
        let codes: Vec<_> = all().iter().map(MapError::code).collect();
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
            if !matches!(e, MapError::InvalidConfig { .. }) {
                assert!(msg.contains("`m`"), "{msg}");
            }
        }
        let t = &all()[0];
        assert!(t.to_string().contains("retry"));
        assert!(t.is_retryable());
        assert_eq!(all()[3].severity(), Severity::Error);
        assert!(!all()[2].is_retryable());
        assert!(!all()[1].is_retryable());
    }
}
