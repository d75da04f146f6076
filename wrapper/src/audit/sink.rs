//! [`AuditSink`]: where records go. [`MemorySink`] (tests, inspection), [`TracingSink`] (one
//! `tracing` event per record) and [`TeeSink`] (several sinks at once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::record::{AuditEvent, AuditRecord, Chain, ChainKey, EventFields};

/// How durable a record must be before the operation that made it returns.
///
/// The default is `Flushed`: every acknowledged change has its record in the kernel's hands
/// before the operation returns, so it survives a `kill -9` (or a panic that aborts) of the
/// process. Concurrent operations share one `write(2)`: the first waiter writes every record
/// queued so far, the others find theirs written. `Buffered` is faster still and loses what
/// is queued when the process dies: choose it explicitly.
///
/// `Flushed` and `Synced` mean something only for a sink that writes somewhere durable: the
/// sink's [`AuditSink::wait`] provides them. [`JsonLinesSink`](crate::audit::JsonLinesSink)
/// does; [`MemorySink`] and [`TracingSink`] return at once, so over them every level behaves as
/// `Buffered` (a `tracing` subscriber's own buffering decides when its output is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Durability {
    /// The record is queued to the sink's writer; the operation does not wait for it. The
    /// [`JsonLinesSink`](crate::audit::JsonLinesSink) writer hands queued records to the OS in
    /// batches, at the latest about 2 ms after they were queued. A crash of the process loses
    /// what is still queued.
    Buffered,
    /// The default. The record has been handed to the operating system (`write(2)` returned,
    /// one write shared by the records of concurrent operations): it survives a crash of the
    /// process, not of the machine.
    #[default]
    Flushed,
    /// The record is on disk (`fdatasync` returned); concurrent operations share one sync
    /// (group commit).
    Synced,
}

/// Why a sink cannot take records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct SinkError {
    reason: Arc<str>,
}

impl SinkError {
    /// An error with this explanation.
    pub fn new(reason: impl Into<Arc<str>>) -> Self {
        SinkError { reason: reason.into() }
    }

    /// The explanation.
    pub fn reason(&self) -> &Arc<str> {
        &self.reason
    }
}

/// Why a sink did not [`admit`](AuditSink::admit) a record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdmitError {
    /// The sink's queue stayed full until the deadline (back-pressure): the operation must
    /// fail with a timeout, having changed nothing.
    Full {
        /// How long the caller waited for room.
        waited: Duration,
        /// The queue's bound, in bytes.
        limit: usize,
    },
    /// The sink has failed or is closed.
    Failed(SinkError),
}

impl std::fmt::Display for AdmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdmitError::Full { waited, limit } => write!(
                f,
                "the audit queue stayed full ({limit} bytes) for {waited:?}, until the operation's deadline"
            ),
            AdmitError::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AdmitError {}

/// A claim on one appended record, to wait for its durability with [`AuditSink::wait`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ticket {
    /// The sink's id for the record (its `seq` for the built-in sinks).
    pub id: u64,
    /// The sink's epoch when the record was appended (bumped on reopen), so a ticket from
    /// before a failure is never taken for a record after it.
    pub epoch: u64,
    /// The tickets of the sinks under a [`TeeSink`], in order.
    pub parts: Vec<Ticket>,
}

impl Ticket {
    /// A ticket for record `id` in `epoch`.
    pub fn new(id: u64, epoch: u64) -> Self {
        Ticket { id, epoch, parts: Vec::new() }
    }
}

/// A destination for audit records.
///
/// The sink gives records one total order and one chain. [`append`](AuditSink::append) is
/// called while the map holds the key's shard lock (that is what keeps a key's records in the
/// order of its mutations), so it must be quick: queue the record, do not do I/O that can
/// block for long. [`wait`](AuditSink::wait) is called after the lock is released.
pub trait AuditSink: Send + Sync {
    /// Takes `event` into the sink's order. An error means the record was not taken.
    fn append(&self, event: AuditEvent) -> Result<Ticket, SinkError>;

    /// [`append`](AuditSink::append) of the record `fields` describe, time-stamped now. A
    /// sink may encode it straight into its queue (the [`JsonLinesSink`](crate::audit::JsonLinesSink)
    /// does, through a per-thread buffer); the default builds an [`AuditEvent`].
    fn append_fields(&self, fields: EventFields<'_>) -> Result<Ticket, SinkError> {
        self.append(AuditEvent::new(fields))
    }

    /// Waits (until `deadline` at the latest) for room in the sink's queue for one more
    /// record: back-pressure. Maps call it before an operation locks or changes anything,
    /// so that an operation the sink cannot take fails by its deadline having changed
    /// nothing, while [`append`](AuditSink::append), under the shard lock, never waits for
    /// room. The bound is soft by the records admitted concurrently (at most one per
    /// operation in flight). The default admits at once.
    fn admit(&self, deadline: Instant) -> Result<(), AdmitError> {
        let _ = deadline;
        Ok(())
    }

    /// Returns once the record of `ticket` is at least as durable as `level`, or the error
    /// that keeps it from being so.
    ///
    /// Contract: `Ok` for a ticket means every earlier ticket of this sink (appended before
    /// it) is at least as durable too. Maps rely on it: an operation with several records
    /// (`clear`, `retain`, `extend`) waits only for its last one.
    ///
    /// The default returns `Ok` at once: a sink without durable storage (memory, tracing)
    /// treats `Flushed` and `Synced` as `Buffered`. Only [`JsonLinesSink`](crate::audit::JsonLinesSink)
    /// provides them among the built-in sinks.
    fn wait(&self, ticket: &Ticket, level: Durability) -> Result<(), SinkError> {
        let _ = (ticket, level);
        Ok(())
    }

    /// `Ok` while the sink takes records; the error that stopped it otherwise. Cheap: called
    /// before every mutation of a fail-closed map.
    fn health(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Makes a failed sink take records again (a new segment for a file sink).
    fn reopen(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Makes every record appended so far durable (synced for a file sink).
    fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// What the sink has done so far, for [`MapWrapper::stats`](crate::MapWrapper::stats);
    /// `None` for a sink that keeps no figures.
    fn figures(&self) -> Option<SinkFigures> {
        None
    }
}

/// What an audit sink has done since it was opened; shown in
/// [`Stats::audit`](crate::Stats::audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SinkFigures {
    /// Records taken but not yet handed to the operating system (the queue's depth).
    pub queued: u64,
    /// Records written (lifecycle records included).
    pub written: u64,
    /// `fdatasync` calls made (group commits).
    pub syncs: u64,
}

impl SinkFigures {
    /// A sink's figures.
    pub fn new(queued: u64, written: u64, syncs: u64) -> Self {
        SinkFigures { queued, written, syncs }
    }

    /// Records written per `fdatasync` (0 when there was no sync).
    pub fn records_per_sync(&self) -> f64 {
        if self.syncs == 0 {
            0.0
        } else {
            self.written as f64 / self.syncs as f64
        }
    }
}

impl<T: AuditSink + ?Sized> AuditSink for Arc<T> {
    fn append(&self, event: AuditEvent) -> Result<Ticket, SinkError> {
        (**self).append(event)
    }
    fn append_fields(&self, fields: EventFields<'_>) -> Result<Ticket, SinkError> {
        (**self).append_fields(fields)
    }
    fn admit(&self, deadline: Instant) -> Result<(), AdmitError> {
        (**self).admit(deadline)
    }
    fn wait(&self, ticket: &Ticket, level: Durability) -> Result<(), SinkError> {
        (**self).wait(ticket, level)
    }
    fn health(&self) -> Result<(), SinkError> {
        (**self).health()
    }
    fn reopen(&self) -> Result<(), SinkError> {
        (**self).reopen()
    }
    fn flush(&self) -> Result<(), SinkError> {
        (**self).flush()
    }
    fn figures(&self) -> Option<SinkFigures> {
        (**self).figures()
    }
}

/// Keeps every record in memory, chained like a file trail: for tests and inspection.
///
/// ```
/// use map_wrapper::audit::{Auditor, MemorySink};
/// use map_wrapper::MapWrapper;
///
/// let sink = MemorySink::new();
/// let map: MapWrapper<String, u32> =
///     MapWrapper::builder().name("m").auditor(Auditor::new(sink.clone())).build()?;
/// map.insert("a".into(), 1)?;
/// let records = sink.records();
/// assert_eq!(records[0].op, "insert");
/// assert_eq!(records[0].new, Some(serde_json::json!({"full": 1})));
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MemorySink {
    inner: Arc<MemoryShared>,
}

#[derive(Debug)]
struct MemoryShared {
    state: Mutex<MemoryInner>,
    /// Woken by `drain`: admissions waiting for room.
    room: Condvar,
}

#[derive(Debug)]
struct MemoryInner {
    chain: Chain,
    text: String,
    /// Most bytes `text` may hold before admissions wait (see [`MemorySink::limit`]).
    limit: usize,
}

/// The default bound of a [`MemorySink`]: 64 MiB of lines.
pub const MEMORY_SINK_DEFAULT_LIMIT: usize = 64 << 20;

impl Default for MemorySink {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySink {
    /// An empty SHA-256-chained memory sink.
    pub fn new() -> Self {
        Self::with_key(ChainKey::Sha256)
    }

    /// An empty memory sink chained with `key`.
    pub fn with_key(key: ChainKey) -> Self {
        MemorySink {
            inner: Arc::new(MemoryShared {
                state: Mutex::new(MemoryInner {
                    chain: Chain::new(key),
                    text: String::new(),
                    limit: MEMORY_SINK_DEFAULT_LIMIT,
                }),
                room: Condvar::new(),
            }),
        }
    }

    /// Bounds the lines held to about `bytes` (default [`MEMORY_SINK_DEFAULT_LIMIT`]). Once
    /// the sink holds that much, a map's next mutation waits for room
    /// ([`admit`](AuditSink::admit)) until its deadline, then fails with a timeout having
    /// changed nothing, until [`drain`](Self::drain) makes room. The bound is soft by the
    /// records of operations admitted at once; an [`append`](AuditSink::append) that would
    /// take the sink beyond twice the bound (a producer that never asked for room) is refused.
    #[must_use]
    pub fn limit(self, bytes: usize) -> Self {
        self.inner.state.lock().limit = bytes;
        self
    }

    /// Takes the lines held so far (the chain goes on: the next line links to the last one
    /// taken), leaving the sink empty of lines and with room again.
    ///
    /// ```
    /// use map_wrapper::audit::{AuditSink, EventFields, MemorySink};
    ///
    /// let sink = MemorySink::new().limit(4096);
    /// sink.append_fields(EventFields::lifecycle("audit_start", None)).unwrap();
    /// let lines = sink.drain();
    /// assert_eq!(lines.lines().count(), 1);
    /// assert!(sink.text().is_empty());
    /// ```
    pub fn drain(&self) -> String {
        let text = std::mem::take(&mut self.inner.state.lock().text);
        self.inner.room.notify_all();
        text
    }

    /// The trail so far, exactly as a [`JsonLinesSink`](crate::audit::JsonLinesSink) would
    /// write it (without segment headers): one line per record.
    pub fn text(&self) -> String {
        self.inner.state.lock().text.clone()
    }

    /// The records so far, parsed back.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.inner
            .state
            .lock()
            .text
            .lines()
            .map(|l| serde_json::from_str(l).expect("MemorySink writes valid records"))
            .collect()
    }

    /// How many records it holds (taken by [`drain`](Self::drain) or not: the records
    /// sealed so far).
    pub fn len(&self) -> usize {
        self.inner.state.lock().chain.next_seq() as usize - 1
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AuditSink for MemorySink {
    fn append(&self, event: AuditEvent) -> Result<Ticket, SinkError> {
        let mut inner = self.inner.state.lock();
        let MemoryInner { chain, text, limit } = &mut *inner;
        // A line is its body plus under 300 bytes of seq, prev and hash.
        if text.len() + event.body().len() + 300 > limit.saturating_mul(2) {
            return Err(SinkError::new(format!(
                "the memory sink is full ({} bytes held, twice its limit of {limit}): drain it",
                text.len()
            )));
        }
        Ok(Ticket::new(chain.seal_event(&event, text), 0))
    }

    fn admit(&self, deadline: Instant) -> Result<(), AdmitError> {
        let start = Instant::now();
        let mut inner = self.inner.state.lock();
        while inner.text.len() >= inner.limit {
            if self.inner.room.wait_until(&mut inner, deadline).timed_out() && inner.text.len() >= inner.limit
            {
                return Err(AdmitError::Full { waited: start.elapsed(), limit: inner.limit });
            }
        }
        Ok(())
    }
}

/// Emits one `tracing` event per record, at target `audit`, level INFO, with every field of
/// the record as a structured field (`seq`, `ts`, `map`, `shard`, `op`, `key`, `old`, `new`,
/// `actor`, `trace_id`, `tags`, `outcome`, `reason`, `latency_ns`, `prev`, `hash`; values that
/// are JSON are given as their JSON text). Chained like the other sinks, so a collector that
/// keeps the events keeps a verifiable trail.
///
/// Durability is the subscriber's: `wait` returns at once.
#[derive(Debug, Clone)]
pub struct TracingSink {
    chain: Arc<Mutex<Chain>>,
}

impl Default for TracingSink {
    fn default() -> Self {
        Self::new()
    }
}

impl TracingSink {
    /// A SHA-256-chained tracing sink.
    pub fn new() -> Self {
        TracingSink { chain: Arc::new(Mutex::new(Chain::new(ChainKey::Sha256))) }
    }
}

fn json_text(v: &Option<serde_json::Value>) -> String {
    v.as_ref().map_or_else(|| "null".to_string(), |v| v.to_string())
}

impl AuditSink for TracingSink {
    fn append(&self, event: AuditEvent) -> Result<Ticket, SinkError> {
        let mut line = String::new();
        // Sealed and emitted under the lock: events leave in chain order.
        let mut chain = self.chain.lock();
        let seq = chain.seal_event(&event, &mut line);
        let r: AuditRecord = serde_json::from_str(line.trim_end())
            .map_err(|e| SinkError::new(format!("record does not parse back: {e}")))?;
        let tags = serde_json::to_string(&r.tags).unwrap_or_default();
        tracing::info!(
            target: "audit",
            seq = r.seq,
            ts = %r.ts,
            map = r.map.as_deref(),
            shard = r.shard,
            op = %r.op,
            key = %json_text(&r.key),
            old = %json_text(&r.old),
            new = %json_text(&r.new),
            actor = %r.actor,
            trace_id = r.trace_id.as_deref(),
            tags = %tags,
            outcome = %r.outcome,
            reason = r.reason.as_deref(),
            latency_ns = r.latency_ns,
            prev = %r.prev,
            hash = %r.hash,
            "audit record"
        );
        Ok(Ticket::new(seq, 0))
    }
}

/// Sends every record to several sinks, in order; each keeps its own order and chain. Fails
/// if any of them fails (a record that one sink lost is a lost record); the sinks before the
/// failing one keep the record they took.
#[derive(Clone)]
pub struct TeeSink {
    sinks: Vec<Arc<dyn AuditSink>>,
}

impl std::fmt::Debug for TeeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeSink").field("sinks", &self.sinks.len()).finish()
    }
}

impl TeeSink {
    /// A tee over `sinks`, written in this order.
    pub fn new(sinks: Vec<Arc<dyn AuditSink>>) -> Self {
        TeeSink { sinks }
    }
}

impl AuditSink for TeeSink {
    fn append(&self, event: AuditEvent) -> Result<Ticket, SinkError> {
        let mut parts = Vec::with_capacity(self.sinks.len());
        for sink in &self.sinks {
            parts.push(sink.append(event.clone())?);
        }
        Ok(Ticket { id: 0, epoch: 0, parts })
    }

    fn admit(&self, deadline: Instant) -> Result<(), AdmitError> {
        self.sinks.iter().try_for_each(|s| s.admit(deadline))
    }

    fn wait(&self, ticket: &Ticket, level: Durability) -> Result<(), SinkError> {
        for (sink, t) in self.sinks.iter().zip(&ticket.parts) {
            sink.wait(t, level)?;
        }
        Ok(())
    }

    fn health(&self) -> Result<(), SinkError> {
        self.sinks.iter().try_for_each(|s| s.health())
    }

    fn reopen(&self) -> Result<(), SinkError> {
        for s in &self.sinks {
            if s.health().is_err() {
                s.reopen()?;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), SinkError> {
        self.sinks.iter().try_for_each(|s| s.flush())
    }
}
