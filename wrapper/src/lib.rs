//! # map-wrapper
//!
//! A concurrent hash map for production: [`MapWrapper<K, V>`](MapWrapper) spreads keys over
//! shard locks, gives every operation a deadline and a cancel token, refuses waits that would
//! deadlock (a re-entrant call, or a lock cycle across threads and maps), and returns a [`MapError`] with a stable code instead of blocking
//! without bound or panicking.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use map_wrapper::{CancelToken, MapWrapper, OpContext};
//!
//! let accounts: Arc<MapWrapper<String, i64>> = Arc::new(
//!     MapWrapper::builder().name("accounts").timeout(Duration::from_millis(200)).build()?,
//! );
//!
//! accounts.insert("alice".to_string(), 100)?;
//! accounts.update("alice", |balance| *balance -= 30)?;
//! assert_eq!(accounts.get_cloned("alice")?, Some(70));
//!
//! // Per-call policy: a tighter timeout, an actor, a cancel token.
//! let token = CancelToken::new();
//! let ctx = OpContext::new()
//!     .timeout(Duration::from_millis(10))
//!     .actor("payments")
//!     .cancel_token(token.clone());
//! accounts.with(&ctx).insert("bob".to_string(), 5)?;
//!
//! // A re-entrant write would deadlock: it is refused instead.
//! let inner = accounts.update("alice", |_| accounts.insert("alice".into(), 0))?.unwrap();
//! assert_eq!(inner.unwrap_err().code(), "WOULD_DEADLOCK");
//! # Ok::<(), map_wrapper::MapError>(())
//! ```
//!
//! ## Porting `HashMap` code
//!
//! Each `HashMap` method or idiom and its `MapWrapper` call, or why there is none and what to
//! write instead (the same table as in the README):
//!
#![doc = include_str!("doc/hashmap.md")]
//!
//! ## What locks, and when an operation can fail
//!
//! Each method's documentation says which lock it takes. Any operation can return
//! [`ErrorKind::Timeout`] (its shard stayed locked past the deadline),
//! [`ErrorKind::Cancelled`] (its token was cancelled) or [`ErrorKind::WouldDeadlock`] (this
//! thread already holds the shard, or its wait would close a lock cycle with other threads);
//! on a map with a circuit breaker, also
//! [`ErrorKind::CircuitOpen`] (refused before taking any lock). A single-key operation that
//! returns an error changed nothing, with one exception visible in the error's structure:
//! on an audited map, [`ErrorKind::AppliedNotDurable`] ([`MapError::applied`] is `true`, and
//! it is never retryable) means the change was applied but its audit record could not be
//! enqueued or made durable. Retry only what [`MapError::is_retryable`] allows. What a bulk
//! operation (`retain`, `clear`, `extend`) leaves after an error is documented on it.
//!
//! ## Audit trail
//!
//! Give a map an [`audit::Auditor`] and every store and delete is recorded, one
//! [`audit::AuditRecord`] per affected key, hash-chained, in the order of each key's
//! mutations; see [`audit`] for what is recorded and what happens when the sink fails, and
//! `docs/AUDIT_FORMAT.md` for the bytes on disk. The `map-wrapper-audit` command (its own
//! package) verifies a trail.
//!
//! ```
//! use map_wrapper::audit::{Auditor, Durability, JsonLinesSink};
//! use map_wrapper::MapWrapper;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let sink = JsonLinesSink::open(dir.path(), Default::default()).unwrap();
//! let map: MapWrapper<String, u64> = MapWrapper::builder()
//!     .name("orders")
//!     .auditor(Auditor::new(sink).durability(Durability::Synced).default_actor("order-svc"))
//!     .build()?;
//! map.insert("o-1".into(), 300)?; // returns once its record is on disk
//! # Ok::<(), map_wrapper::MapError>(())
//! ```
//!
//! ## One attribute on your own struct
//!
//! [`#[guarded_map]`](macro@guarded_map) turns the `HashMap` fields of a struct into
//! `MapWrapper`s named `"Struct.field"`, with a constructor that cannot fail, accessors per
//! field, and `with_auditor` to audit them all into one trail;
//! [`#[derive(GuardedMap)]`](derive@GuardedMap) does the same for fields already declared
//! `MapWrapper`. Mistakes are compile errors at the offending token.
//!
//! ## Circuit breaker and statistics
//!
//! Every operation ends *ok*, *slow* (above [`Builder::slow_threshold`]), *failed* (timed out
//! or would have deadlocked) or *ignored* (cancelled, or the caller's closure panicked).
//! [`MapWrapper::stats`] counts them by operation, with a latency histogram. A map built with
//! [`Builder::breaker`] also has a [`CircuitBreaker`](breaker::CircuitBreaker): when too many recent calls were slow or
//! failed it opens, and operations fail fast with [`ErrorKind::CircuitOpen`] until probe calls
//! show the map has recovered. See [`BreakerConfig`](breaker::BreakerConfig) for the rule and
//! [`Builder::on_breaker_event`] for its events.
//!
//! ```
//! use std::time::Duration;
//! use map_wrapper::breaker::{BreakerConfig, BreakerState, SlidingWindow};
//! use map_wrapper::MapWrapper;
//!
//! let map: MapWrapper<u32, u32> = MapWrapper::builder()
//!     .slow_threshold(Duration::from_millis(20))
//!     .breaker(BreakerConfig::new().window(SlidingWindow::count(50)).minimum_calls(10))
//!     .on_breaker_event(|e| eprintln!("breaker: {:?}", e.kind))
//!     .build()?;
//! map.insert(1, 1)?;
//! let stats = map.stats();
//! assert_eq!(stats.total.ok, 1);
//! assert_eq!(stats.breaker.unwrap().state, BreakerState::Closed);
//! # Ok::<(), map_wrapper::MapError>(())
//! ```
//!
//! ## What an operation costs
//!
//! An operation on one key hashes the key once (the same hash picks the shard and the slot in
//! it) and, in the common case, runs on a fast path: no context given (neither
//! [`MapWrapper::with`] nor an [`OpContext::enter`] scope), the map not audited, the breaker
//! (if any) closed, disabled or metrics-only, and the thread holding no shard of any map.
//! Then it *tries* the shard lock once and, if it gets it, does its work and counts itself in
//! a per-thread stripe of the statistics (one relaxed atomic add). Everything else — a lock
//! that is taken, a context, an audited map, a sampled operation (one in
//! [`Builder::latency_sampling`] of a thread on the map is timed), an open breaker — goes the
//! full way: a wait in the shard's fair queue, bounded by the deadline and woken by the
//! cancel token, timing, auditing.
//! Both paths give the same results, errors and counts.
//!
//! The fast path exists because on a table far larger than the caches an operation costs its
//! cache misses, and the processor overlaps the misses of consecutive operations only when few
//! instructions lie between them: the full path is ~200 instructions longer, and made
//! operations 2–4× slower on such a table. `cargo bench --bench maps` compares `MapWrapper`
//! with dashmap, scc, papaya and a hand-written sharded lock; `README.md` has the figures.
//!
//! ## Feature flags
//!
//! None is on by default.
//!
//! - `serde`: `Serialize` and `Deserialize` for [`MapWrapper`] (as a map), through serde.
//!   (serde and serde_json themselves are always used, to encode audit records.)
//! - `tokio-util`: [`OpContext::scope_with_cancellation`], which lets a
//!   `tokio_util::sync::CancellationToken` cancel the map operations of a scope.
//! - `metrics`: [`Stats::publish_metrics`] and a breaker-state gauge, through the `metrics`
//!   facade crate (any exporter: Prometheus, StatsD, …).
//! - `test-util`: test support: `clock::TestClock` (a clock that moves only when a test moves
//!   it, for the breaker's and the statistics' time); `audit::SegmentWriter`, `audit::WriterHook`
//!   and `JsonLinesOptions::writer_hook` (wrap the audit sink's segment files, to inject
//!   faults); `audit::Chain` (seal trail lines by hand). Not for production builds.
//!
//! The command-line verifier is the separate `map-wrapper-audit` package
//! (`cargo run -p map-wrapper-audit -- verify DIR`), so no library user builds its
//! dependencies.
//!
// The method exists only with `metrics`: without it the link goes to `Stats`.
#![cfg_attr(feature = "metrics", doc = "[`Stats::publish_metrics`]: stats::Stats::publish_metrics")]
#![cfg_attr(
    feature = "tokio-util",
    doc = "[`OpContext::scope_with_cancellation`]: OpContext::scope_with_cancellation"
)]
#![cfg_attr(not(feature = "tokio-util"), doc = "[`OpContext::scope_with_cancellation`]: OpContext")]
#![cfg_attr(not(feature = "metrics"), doc = "[`Stats::publish_metrics`]: stats::Stats")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Unsafe code only in the shard lock (`lock`: the lock_api trait impls and guard hand-offs,
// each with its `// SAFETY:` comment); everywhere else it is refused.
#![deny(unsafe_code)]

mod async_ops;
pub mod audit;
pub mod breaker;
pub mod builder;
mod cancel;
pub mod clock;
mod context;
mod deadlock;
mod engine;
mod entry;
mod error;
mod guard;
mod iter;
#[allow(unsafe_code)]
mod lock;
mod map;
mod op;
mod pipeline;
mod shard;
pub mod stats;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

#[cfg(feature = "serde")]
mod serde_impl;

#[cfg(feature = "tokio-util")]
mod tokio_bridge;

pub use builder::Builder;
pub use cancel::CancelToken;
pub use context::{ContextGuard, OpContext, Scoped};
pub use engine::WithContext;
pub use entry::{Entry, Upserted};
pub use error::{BuildError, ErrorKind, MapError, Severity};
pub use guard::Ref;
pub use iter::{IntoIter, Iter, ShardIter};
pub use map::MapWrapper;
pub use map_wrapper_macros::{guarded_map, GuardedMap};
pub use op::Op;
#[cfg(feature = "tokio-util")]
pub use tokio_bridge::CancellableScope;

/// `MapWrapper` can be shared between threads when its keys and values can.
#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<MapWrapper<String, Vec<u8>>>();
    is::<OpContext>();
    is::<CancelToken>();
    is::<MapError>();
}

/// The README's Rust blocks, compiled (and run, unless marked `no_run`) as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
