//! The audit trail: one record per store and delete, tamper-evident, durable, fail-closed.
//!
//! - [`AuditRecord`] and its canonical, hash-chained encoding (`record.rs`; normative:
//!   `docs/AUDIT_FORMAT.md`);
//! - sinks: [`MemorySink`], [`TracingSink`], [`TeeSink`], [`JsonLinesSink`];
//! - [`Auditor`]: a sink plus the settings the maps that share it use (durability, fail mode,
//!   digest key, default actor); given to a map with
//!   [`Builder::auditor`](crate::Builder::auditor);
//! - [`verify`]: checks a trail (also the `map-wrapper-audit` binary).
//!
//! # What a map records
//!
//! Every mutation that changes the map writes one record per affected key, enqueued while
//! the key's shard is locked, so a key's records are in the order of its mutations:
//! `insert`, `remove`, `remove_entry`, `remove_if`, `update`, `alter`, `entry`, `extend`
//! (one record per pair), `retain` and `clear` (one record per removed key). A call that
//! changes nothing (removing an absent key, `update` of an absent key, `remove_if` whose
//! predicate keeps the value, `alter` of an absent key to `None`) writes no record. A mutation
//! refused by a policy writes a record whose `outcome` says why (`timeout`, `cancelled`,
//! `would_deadlock`, `circuit_open`); its `key` is `null` when the call only had a borrowed
//! form of the key (`remove`, `update`, …) or covered the whole map (`retain`, `clear`).
//!
//! The `actor` is, in order: the operation's [`OpContext`](crate::OpContext) actor, the
//! ambient context's, the auditor's [`default_actor`](Auditor::default_actor), and else
//! [`DEFAULT_ACTOR`] (`"unattributed"`): never empty.
//!
//! # When the sink fails
//!
//! Fail-closed (the default): once the sink reports a failure, every mutation is refused with
//! [`ErrorKind::AuditUnavailable`](crate::ErrorKind::AuditUnavailable) before it locks anything,
//! so the map is read-only until [`Auditor::reopen`] succeeds. Reads keep working. What the
//! map holds after the failure:
//!
//! - a mutation refused by the pre-check changed nothing;
//! - a mutation that was applied under the lock but whose record could not be enqueued (the
//!   sink failed in between) or not made durable at the auditor's [`Durability`] (`Flushed`
//!   or `Synced`: the write or the sync failed while the operation waited) **is in the map**
//!   and returns an error of kind
//!   [`ErrorKind::AppliedNotDurable`](crate::ErrorKind::AppliedNotDurable) (code
//!   `APPLIED_NOT_DURABLE`, [`MapError::applied`] `true`, never retryable: a retry would apply
//!   the change twice); its record may or may not be in the trail (it is if its line reached
//!   the file before the failure);
//! - with `Durability::Buffered` (an explicit choice; the default is `Flushed`), operations do
//!   not wait: records still queued when the sink failed, or when the process died, are lost
//!   although their operations returned `Ok`. Keep `Flushed` (the default) or use `Synced`
//!   when every acknowledged operation must have its record.
//!
//! Either way the loss is in the trail: when a [`JsonLinesSink`] is reopened after a failure,
//! it writes a `sink_gap` record `"N records accepted but not written before the failure (seq
//! a..b as issued)"` for every record it had accepted (given a seq) that did not reach the
//! file. The trail then continues at seq `a`, so `seq` stays gap-free and the gap record says
//! which seqs were given to records that are not there.
//!
//! Fail-open ([`FailMode::FailOpen`], an explicit opt-in): mutations go on while the sink is
//! down; every record the failed sink refused is counted ([`Auditor::lost_records`]), and
//! [`Auditor::reopen`] writes a second `sink_gap` record with that count (`"N records lost
//! while the sink was unavailable"`). The two counts never overlap: a record is either
//! accepted (the sink's count) or refused (the auditor's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::context::Effective;
use crate::{MapError, Op};

mod durable;
mod file;
mod gate;
mod record;
mod sink;
mod stats;
pub mod verify;

// Signed Merkle checkpoints (issue #14): tree, signed notes, checkpoints, anchors.
pub mod anchor;
pub mod checkpoint;
pub mod merkle;
pub mod note;
pub mod proof;
pub use anchor::{CheckpointAnchor, CheckpointState, DirAnchor, FileAnchor};
pub use checkpoint::{
    Checkpoint, CheckpointOptions, CheckpointPolicy, CheckpointVerdict, Checkpointer, SignedCheckpoint,
};
pub use note::{NoteSigner, NoteVerifier};

pub use file::{
    list_segments, parse_segment_file_name, segment_file_name, JsonLinesOptions, JsonLinesSink,
    JsonLinesStats, MIN_SEGMENT_BYTES,
};
pub use gate::AuditGate;
// Test support (feature `test-util`): wrap the sink's segment files, seal lines by hand.
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use file::{SegmentWriter, WriterHook};
pub(crate) use record::digest_hex;
#[cfg(test)]
pub(crate) use record::to_hex;
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use record::Chain;
pub use record::{
    AuditEvent, AuditRecord, ChainKey, Encoded, EventFields, DEFAULT_ACTOR, FORMAT_VERSION, OPS,
};
pub use sink::{
    AdmitError, AuditSink, Durability, MemorySink, SinkError, SinkFigures, TeeSink, Ticket, TracingSink,
    MEMORY_SINK_DEFAULT_LIMIT,
};
pub use stats::AuditStats;

/// How a map writes keys or values into its audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ValuePolicy {
    /// The value itself, serialized.
    #[default]
    Full,
    /// A keyed digest (HMAC-SHA256) of the serialized value, with the key's id: equal values
    /// can be matched without being revealed.
    Digest,
    /// Nothing but the fact that a value was there.
    Redacted,
}

/// What a map does when its audit sink fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Refuse mutations ([`ErrorKind::AuditUnavailable`](crate::ErrorKind::AuditUnavailable)) until the sink is reopened.
    #[default]
    FailClosed,
    /// Keep mutating, count the records lost, and write a `sink_gap` record on reopen.
    FailOpen,
}

/// The key of [`ValuePolicy::Digest`]: an id written next to every digest, and the secret.
#[derive(Clone)]
pub(crate) struct DigestKey {
    id: String,
    key: Vec<u8>,
}

/// A sink and the settings every map that uses it shares: durability, fail mode, digest key,
/// default actor. Cheap to clone; clones share the sink and the lost-record count.
///
/// ```
/// use map_wrapper::audit::{Auditor, Durability, FailMode, MemorySink, ValuePolicy};
/// use map_wrapper::MapWrapper;
///
/// let sink = MemorySink::new();
/// let auditor = Auditor::new(sink.clone())
///     .durability(Durability::Flushed)
///     .default_actor("billing-service")
///     .digest_key("k2026", b"a secret of at least 32 bytes....".to_vec());
/// let cards: MapWrapper<u32, String> = MapWrapper::builder()
///     .name("cards")
///     .value_policy(ValuePolicy::Digest)
///     .auditor(auditor)
///     .build()?;
/// cards.insert(7, "4111-1111".into())?;
/// let rec = &sink.records()[0];
/// assert_eq!(rec.actor, "billing-service");
/// assert!(!sink.text().contains("4111"));
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
#[derive(Clone)]
pub struct Auditor {
    sink: Arc<dyn AuditSink>,
    durability: Durability,
    fail_mode: FailMode,
    digest_key: Option<Arc<DigestKey>>,
    default_actor: Option<Arc<str>>,
    lost: Arc<AtomicU64>,
    gate: Option<Arc<dyn AuditGate>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("durability", &self.durability)
            .field("fail_mode", &self.fail_mode)
            .field("digest_key_id", &self.digest_key.as_ref().map(|k| k.id.as_str()))
            .field("default_actor", &self.default_actor)
            .field("lost", &self.lost_records())
            .field("gate", &self.gate.is_some())
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// An auditor writing to `sink`: [`Durability::Flushed`], fail-closed, no digest key,
    /// default actor [`DEFAULT_ACTOR`].
    pub fn new(sink: impl AuditSink + 'static) -> Self {
        Self::from_arc(Arc::new(sink))
    }

    /// An auditor writing to a shared sink.
    pub fn from_arc(sink: Arc<dyn AuditSink>) -> Self {
        Auditor {
            sink,
            durability: Durability::Flushed,
            fail_mode: FailMode::FailClosed,
            digest_key: None,
            default_actor: None,
            lost: Arc::new(AtomicU64::new(0)),
            gate: None,
        }
    }

    /// How durable a record must be before its operation returns. Default: `Flushed` (every
    /// acknowledged change survives a `kill -9` of the process; concurrent operations share
    /// one `write(2)`); `Buffered` is the faster explicit choice that does not.
    /// The sink provides it (see [`Durability`]): over a sink without durable storage
    /// (`MemorySink`, `TracingSink`) `Flushed` and `Synced` behave as `Buffered`.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// What maps do when the sink fails. Default: [`FailMode::FailClosed`].
    #[must_use]
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// The HMAC-SHA256 key of [`ValuePolicy::Digest`], and its id (written with each digest
    /// so a later key rotation stays readable). Required by maps that use `Digest`.
    #[must_use]
    pub fn digest_key(mut self, id: impl Into<String>, key: impl Into<Vec<u8>>) -> Self {
        self.digest_key = Some(Arc::new(DigestKey { id: id.into(), key: key.into() }));
        self
    }

    /// The actor recorded when an operation's context names none (a service name, say).
    #[must_use]
    pub fn default_actor(mut self, actor: impl Into<Arc<str>>) -> Self {
        self.default_actor = Some(actor.into());
        self
    }

    /// A gate every audited mutation passes before it locks anything, and whose lag goes
    /// into the map's stats (see [`AuditGate`]; e.g. a shipper's lag bound). Default: none.
    #[must_use]
    pub fn gate(mut self, gate: Arc<dyn AuditGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The gate, if any.
    pub fn get_gate(&self) -> Option<&Arc<dyn AuditGate>> {
        self.gate.as_ref()
    }

    /// The sink.
    pub fn sink(&self) -> &Arc<dyn AuditSink> {
        &self.sink
    }

    /// The durability setting.
    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    /// How many records maps could not hand to the sink (the sink refused the append: it had
    /// failed) since the last reopen: in fail-open mode every such record, in fail-closed mode
    /// the records of changes already applied when the sink failed under them. Records the sink accepted but lost in the
    /// failure are not counted here: the sink itself counts them and writes them as a
    /// `sink_gap` record when it is reopened (see [`JsonLinesSink`]).
    pub fn lost_records(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Reopens a failed sink; fail-closed maps take mutations again. In fail-open mode, and in
    /// fail-closed mode when the failed sink refused the record of a change already applied
    /// (a race between the sink failing and a mutation), also writes a `sink_gap` record with
    /// the number of records refused by the failed sink
    /// ([`lost_records`](Self::lost_records)); the count is reset only once that record is
    /// written, so a failed attempt loses no count.
    pub fn reopen(&self) -> Result<(), SinkError> {
        self.sink.reopen()?;
        if self.fail_mode == FailMode::FailOpen || self.lost.load(Ordering::Relaxed) > 0 {
            let lost = self.lost.load(Ordering::Relaxed);
            let reason = format!("{lost} records lost while the sink was unavailable");
            let t = self.sink.append(AuditEvent::new(EventFields::lifecycle("sink_gap", Some(&reason))))?;
            self.sink.wait(&t, self.durability)?;
            self.lost.fetch_sub(lost, Ordering::Relaxed);
        }
        Ok(())
    }

    pub(crate) fn has_digest_key(&self) -> bool {
        self.digest_key.is_some()
    }
}

/// The longest `Full` encoding of a key or value written to the trail: 16 MiB. A longer one is
/// recorded as `{"unencodable":"too large: N bytes of JSON, …"}`, so that a record (key, old
/// and new) stays under the verifier's line limit.
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// Encodes a `T` per a policy; made once per map at `build()`.
pub(crate) type Encoder<T> = Box<dyn Fn(&T) -> Encoded + Send + Sync>;

/// Makes an encoder for `T` (monomorphized where `T: Serialize` is known).
pub(crate) type EncoderFactory<T> = fn(ValuePolicy, Option<Arc<DigestKey>>) -> Encoder<T>;

pub(crate) fn encoder<T: Serialize + 'static>(
    policy: ValuePolicy,
    key: Option<Arc<DigestKey>>,
) -> Encoder<T> {
    let encode = raw_encoder::<T>(policy, key);
    // A `Serialize` impl that panics must not cost the record of a change already made: the
    // record says the value could not be encoded.
    Box::new(move |v: &T| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encode(v))).unwrap_or_else(|_| {
            Encoded(Some("{\"unencodable\":\"the Serialize implementation panicked\"}".into()))
        })
    })
}

fn raw_encoder<T: Serialize + 'static>(policy: ValuePolicy, key: Option<Arc<DigestKey>>) -> Encoder<T> {
    match policy {
        ValuePolicy::Full => Box::new(|v: &T| {
            let mut buf = Vec::with_capacity(48);
            buf.extend_from_slice(b"{\"full\":");
            Encoded(Some(match serde_json::to_writer(&mut buf, v) {
                // Keeps every line under the verifier's limit (`verify::MAX_LINE_BYTES`).
                Ok(()) if buf.len() > MAX_VALUE_BYTES => format!(
                    "{{\"unencodable\":\"too large: {} bytes of JSON, over the limit of {MAX_VALUE_BYTES}\"}}",
                    buf.len() - 8
                ),
                Ok(()) => {
                    buf.push(b'}');
                    String::from_utf8(buf).expect("serde_json writes UTF-8")
                }
                Err(e) => unencodable(&e),
            }))
        }),
        ValuePolicy::Digest => {
            let key = key.expect("validated at build(): Digest needs a digest key");
            Box::new(move |v: &T| {
                Encoded(Some(match serde_json::to_vec(v) {
                    Ok(bytes) => {
                        let mut s = String::with_capacity(100);
                        s.push_str("{\"digest\":\"");
                        s.push_str(&digest_hex(&key.key, &bytes));
                        s.push_str("\",\"key_id\":");
                        record::push_json_str(&mut s, &key.id);
                        s.push('}');
                        s
                    }
                    // Never the error's text: a `Serialize` error may quote the value.
                    Err(e) => unencodable_withheld(&e),
                }))
            })
        }
        ValuePolicy::Redacted => redacted(),
    }
}

fn redacted<T>() -> Encoder<T> {
    Box::new(|_: &T| Encoded(Some("{\"redacted\":true}".to_string())))
}

/// A value serde cannot encode is still recorded: as the error, never silently dropped.
fn unencodable(e: &serde_json::Error) -> String {
    let mut s = String::from("{\"unencodable\":");
    record::push_json_str(&mut s, &e.to_string());
    s.push('}');
    s
}

/// Under `Digest`, a value serde cannot encode is recorded without the serializer's error
/// text (which may quote the value): only the error's category.
fn unencodable_withheld(e: &serde_json::Error) -> String {
    let category = match e.classify() {
        serde_json::error::Category::Io => "io",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Eof => "eof",
    };
    format!("{{\"unencodable\":\"{category} error (text withheld: digested value)\"}}")
}

/// What the builder keeps until `build()`: the auditor and how to make the encoders.
pub(crate) struct AuditSetup<K, V> {
    pub(crate) auditor: Auditor,
    pub(crate) key: EncoderFactory<K>,
    /// `None`: values are always redacted (`auditor_redacted`).
    pub(crate) value: Option<EncoderFactory<V>>,
}

/// A map's audit side: its auditor and its key and value encoders.
pub(crate) struct MapAudit<K, V> {
    auditor: Auditor,
    key: Encoder<K>,
    value: Encoder<V>,
}

impl<K, V> MapAudit<K, V> {
    /// The audit figures of the map's stats: the sink's, and the records the auditor lost.
    pub(crate) fn stats(&self) -> AuditStats {
        let lag = self.auditor.gate.as_ref().map(|g| g.lag());
        AuditStats {
            sink: self.auditor.sink.figures(),
            lost_records: self.auditor.lost_records(),
            ship_lag_records: lag.map(|l| l.0),
            ship_lag_seconds: lag.map(|l| l.1),
        }
    }
}

/// How an audited operation ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome<'e> {
    /// It happened.
    Ok,
    /// A policy refused it; nothing changed.
    Refused(&'e MapError),
    /// A user closure panicked; the text says what the map holds after it.
    Panicked(&'static str),
}

/// The reason recorded when a closure that changes a value in place panics.
pub(crate) const PANICKED_IN_PLACE: &str =
    "the closure panicked; the value keeps what it did before the panic";
/// The reason recorded when a closure panics before the map changed anything.
pub(crate) const PANICKED_NO_CHANGE: &str = "the closure panicked; nothing changed";
/// The reason recorded when a `retain` predicate panics.
pub(crate) const PANICKED_RETAIN: &str =
    "the predicate panicked; entries it removed before the panic are recorded as removed, the rest is unchanged";

impl Outcome<'_> {
    /// The outcome of a closure that changed a value in place: ok, or panicked (`Err`: the
    /// panic caught to record the change first).
    #[inline(always)]
    pub(crate) fn of<R, C>(r: &Result<R, C>) -> Self {
        if r.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Panicked(PANICKED_IN_PLACE)
        }
    }
}

/// The encoded key and values of one change.
pub(crate) struct Change {
    pub(crate) key: Encoded,
    pub(crate) old: Encoded,
    pub(crate) new: Encoded,
}

impl<K, V> MapAudit<K, V> {
    /// Checks the policies against the auditor and makes the encoders.
    pub(crate) fn build(
        setup: AuditSetup<K, V>,
        key_policy: ValuePolicy,
        value_policy: ValuePolicy,
    ) -> Result<Self, crate::BuildError> {
        let value_policy = if setup.value.is_some() { value_policy } else { ValuePolicy::Redacted };
        for (field, policy) in [("key_policy", key_policy), ("value_policy", value_policy)] {
            if policy == ValuePolicy::Digest && !setup.auditor.has_digest_key() {
                return Err(crate::BuildError::new(
                    field,
                    "is Digest but the auditor has no digest key: call Auditor::digest_key",
                ));
            }
        }
        let dk = setup.auditor.digest_key.clone();
        Ok(MapAudit {
            key: (setup.key)(key_policy, dk.clone()),
            value: match setup.value {
                Some(make) => make(value_policy, dk),
                None => redacted(),
            },
            auditor: setup.auditor,
        })
    }

    /// The encoded key.
    pub(crate) fn key(&self, k: &K) -> Encoded {
        (self.key)(k)
    }

    /// The encoded value.
    pub(crate) fn value(&self, v: &V) -> Encoded {
        (self.value)(v)
    }

    /// The encoded value, or `null`.
    pub(crate) fn value_opt(&self, v: Option<&V>) -> Encoded {
        v.map_or(Encoded::NONE, |v| (self.value)(v))
    }

    /// Before a mutation `op` locks or changes anything: refuses it when the auditor's
    /// [`AuditGate`] refuses, or when the map is fail-closed and the sink is down; waits for room in the sink's queue until the
    /// operation's deadline (back-pressure: [`AuditSink::admit`]), and refuses it with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if there is none by then; otherwise starts the latency clock.
    pub(crate) fn begin(
        &self,
        map: &Arc<str>,
        op: Op,
        eff: &Effective<'_>,
        default_timeout: std::time::Duration,
    ) -> Result<Instant, MapError> {
        if let Some(gate) = &self.auditor.gate {
            if let Some(reason) = gate.refusal() {
                return Err(MapError::audit_unavailable(map, reason));
            }
        }
        if self.auditor.fail_mode == FailMode::FailClosed {
            if let Err(e) = self.auditor.sink.health() {
                return Err(MapError::audit_unavailable(map, e.reason().clone()));
            }
        }
        let now = Instant::now();
        let deadline = eff.deadline_from(now, default_timeout);
        self.admitted(map, op, now, deadline, self.auditor.sink.admit(deadline))
    }

    /// [`begin`](Self::begin) for an async operation: a full queue is waited for on the
    /// library's helper thread (see `durable.rs`), not on the task's thread.
    pub(crate) async fn begin_async(
        &self,
        map: &Arc<str>,
        op: Op,
        eff: &Effective<'_>,
        default_timeout: std::time::Duration,
    ) -> Result<Instant, MapError> {
        if self.auditor.fail_mode == FailMode::FailClosed {
            if let Err(e) = self.auditor.sink.health() {
                return Err(MapError::audit_unavailable(map, e.reason().clone()));
            }
        }
        let now = Instant::now();
        let deadline = eff.deadline_from(now, default_timeout);
        let admitted = durable::admit(&self.auditor.sink, deadline).await;
        self.admitted(map, op, now, deadline, admitted)
    }

    /// The start of a mutation once the sink answered its admission.
    fn admitted(
        &self,
        map: &Arc<str>,
        op: Op,
        now: Instant,
        deadline: Instant,
        admitted: Result<(), AdmitError>,
    ) -> Result<Instant, MapError> {
        match admitted {
            Ok(()) => Ok(now),
            Err(AdmitError::Full { waited, .. }) => {
                Err(MapError::audit_queue_full(map, op, waited, deadline.saturating_duration_since(now)))
            }
            Err(AdmitError::Failed(e)) if self.auditor.fail_mode == FailMode::FailClosed => {
                Err(MapError::audit_unavailable(map, e.reason().clone()))
            }
            // Fail-open: the record will be refused by `append` and counted as lost.
            Err(_) => Ok(now),
        }
    }

    /// Enqueues the record of one change (or refusal). Called under the shard lock for a
    /// change. `outcome` is `Ok` for a change, the refusal otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        map: &Arc<str>,
        shard: Option<usize>,
        op: crate::Op,
        eff: &Effective<'_>,
        start: Instant,
        outcome: Outcome<'_>,
        change: Change,
    ) -> Result<Option<Ticket>, MapError> {
        debug_assert!(op.is_mutation(), "{op:?} is not a mutation: it has no audit record");
        let op = op.as_str();
        let tags = eff.tags();
        let (outcome, reason): (std::borrow::Cow<'_, str>, _) = match outcome {
            Outcome::Ok => ("ok".into(), None),
            Outcome::Refused(e) => (e.code().to_ascii_lowercase().into(), Some(e.to_string())),
            Outcome::Panicked(why) => ("panicked".into(), Some(why.to_string())),
        };
        let fields = EventFields {
            map: Some(map),
            shard,
            op,
            key: change.key,
            old: change.old,
            new: change.new,
            actor: eff.actor().or(self.auditor.default_actor.as_deref()).unwrap_or(DEFAULT_ACTOR),
            trace_id: eff.trace_id(),
            tags: &tags,
            outcome: &outcome,
            reason: reason.as_deref(),
            latency_ns: u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        };
        match self.auditor.sink.append_fields(fields) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                // The sink refused the record (it failed between the health check and now):
                // the change is applied and its record is nowhere, so it is counted in both
                // fail modes, and `Auditor::reopen` writes the count into the trail.
                self.auditor.lost.fetch_add(1, Ordering::Relaxed);
                self.lost(map, &e, "applied but not recorded").map(|()| None)
            }
        }
    }

    /// After the lock is released: waits until the record is as durable as the auditor
    /// requires.
    pub(crate) fn settle(&self, map: &Arc<str>, ticket: Option<Ticket>) -> Result<(), MapError> {
        match ticket {
            Some(t) if self.auditor.durability != Durability::Buffered => {
                match self.auditor.sink.wait(&t, self.auditor.durability) {
                    Ok(()) => Ok(()),
                    // Fail-open: not counted here; the sink accepted the record and counts it
                    // in its own `sink_gap` on reopen if it did not reach the file.
                    Err(_) if self.auditor.fail_mode == FailMode::FailOpen => Ok(()),
                    Err(e) => self.lost(map, &e, "applied, but its record may not be durable"),
                }
            }
            _ => Ok(()),
        }
    }

    /// [`settle`](Self::settle) for an async operation: awaits the durability wait on the
    /// library's durability thread (see `durable.rs`) instead of blocking the task's thread.
    pub(crate) async fn settle_async(&self, map: &Arc<str>, ticket: Option<Ticket>) -> Result<(), MapError> {
        match ticket {
            Some(t) if self.auditor.durability != Durability::Buffered => {
                match durable::wait(&self.auditor.sink, t, self.auditor.durability).await {
                    Ok(()) => Ok(()),
                    Err(_) if self.auditor.fail_mode == FailMode::FailOpen => Ok(()),
                    Err(e) => self.lost(map, &e, "applied, but its record may not be durable"),
                }
            }
            _ => Ok(()),
        }
    }

    /// A record that could not be written: ignored (fail-open) or an error (fail-closed).
    fn lost(&self, map: &Arc<str>, e: &SinkError, what: &str) -> Result<(), MapError> {
        match self.auditor.fail_mode {
            FailMode::FailOpen => Ok(()),
            // The change is in the map: an error that says so, and is never retryable.
            FailMode::FailClosed => {
                Err(MapError::applied_not_durable(map, format!("{e}; this change was {what}").into()))
            }
        }
    }
}
