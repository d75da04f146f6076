//! [`JsonLinesSink`]: the durable trail. One JSON object a line, one writer thread (one total
//! order, one chain), group commit, size-based rotation, torn-tail repair on open, and an
//! fsync error that poisons the segment for good.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::anchor::{AnchorError, CheckpointAnchor, DirAnchor, DirLayout};
use super::checkpoint::{resume_tree, CheckpointOptions, CheckpointVerdict, Checkpointer, SignedCheckpoint};
use super::record::{encode_body, split_line, to_hex, AuditEvent, Chain, ChainKey, EventFields};
use super::sink::{AdmitError, AuditSink, Durability, SinkError, Ticket};

/// How long the writer lets records gather before writing them when nobody waits for them
/// (`Buffered`): the most a `Buffered` record waits before reaching the OS.
const BATCH_DELAY: Duration = Duration::from_millis(2);

/// The smallest `max_segment_bytes` accepted: room for a header and a typical record.
pub const MIN_SEGMENT_BYTES: u64 = 1024;

/// How many queued bytes wake the writer at once (without a waiter).
const BATCH_WAKE_BYTES: usize = 256 << 10;

/// A batch buffer that grew beyond this is given back after its batch (a burst of large
/// records must not pin its memory).
const KEEP_BUFFER_BYTES: usize = 4 << 20;

/// How long past due a checkpoint may wait for the writer thread to get the turn before
/// `Flushed` waiters stop taking it (see `wait`): the checkpoint's fsync then delays them
/// once, instead of every time one falls due.
const CHECKPOINT_PATIENCE: Duration = Duration::from_millis(100);

/// The file a segment is written through. [`File`] is the real one; tests wrap it to inject
/// write and sync failures.
pub trait SegmentWriter: Send {
    /// Writes all of `buf` (as [`Write::write_all`]).
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes what was written durable (as [`File::sync_data`]).
    fn sync(&mut self) -> io::Result<()>;
}

impl SegmentWriter for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// Wraps each newly opened segment file; see [`JsonLinesOptions::writer_hook`].
pub type WriterHook = Arc<dyn Fn(File) -> Box<dyn SegmentWriter> + Send + Sync>;

/// Settings of a [`JsonLinesSink`].
#[derive(Clone)]
pub struct JsonLinesOptions {
    /// A segment is closed and a new one started once it reaches this many bytes. Default:
    /// 64 MiB; at least [`MIN_SEGMENT_BYTES`].
    pub max_segment_bytes: u64,
    /// SHA-256 (default) or HMAC-SHA256 with a key.
    pub chain_key: ChainKey,
    /// How many bytes of encoded records may wait for the writer. A map waits for room
    /// before it changes anything ([`AuditSink::admit`]), until the operation's deadline, then
    /// fails with a timeout having changed nothing. Default: 64 MiB; at least 1. The bound is
    /// soft by the records of operations admitted at once (one each).
    pub max_queue_bytes: usize,
    /// Wraps every segment file the sink opens (fault injection in tests). Default: none.
    #[cfg(any(test, feature = "test-util"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub writer_hook: Option<WriterHook>,
    /// Signed Merkle checkpoints (see [`CheckpointOptions`]): the writer keeps the tree of
    /// the records, and every N records, T after records were written, and on a heartbeat
    /// while idle (and when the sink opens and closes) syncs the segment and writes a signed
    /// checkpoint of the records on disk to the trail's `checkpoints.notes` and every anchor.
    /// Opening a trail whose records no longer match the latest checkpoint in its
    /// `checkpoints.notes` (its tail was cut, a record changed) is refused; opening reads the
    /// trail once to rebuild the tree (O(n) time, O(log n) memory). Default: none.
    pub checkpoints: Option<CheckpointOptions>,
}

impl Default for JsonLinesOptions {
    fn default() -> Self {
        JsonLinesOptions {
            max_segment_bytes: 64 << 20,
            chain_key: ChainKey::Sha256,
            max_queue_bytes: 64 << 20,
            #[cfg(any(test, feature = "test-util"))]
            writer_hook: None,
            checkpoints: None,
        }
    }
}

impl std::fmt::Debug for JsonLinesOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesOptions")
            .field("max_segment_bytes", &self.max_segment_bytes)
            .field("chain_key", &self.chain_key)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("writer_hook", &writer_hook(self).is_some())
            .field("checkpoints", &self.checkpoints)
            .finish()
    }
}

/// The options' writer hook: none without the `test-util` feature.
fn writer_hook(opts: &JsonLinesOptions) -> Option<&WriterHook> {
    #[cfg(any(test, feature = "test-util"))]
    return opts.writer_hook.as_ref();
    #[cfg(not(any(test, feature = "test-util")))]
    {
        let _ = opts;
        None
    }
}

/// The file name of segment `n`: `segment-000001.jsonl`, …
pub fn segment_file_name(n: u64) -> String {
    format!("segment-{n:06}.jsonl")
}

/// The segment number in a segment file name: only the canonical form
/// [`segment_file_name`] writes (at least 6 digits, zero-padded, no sign), so one number has
/// one name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".jsonl")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    (segment_file_name(n) == name).then_some(n)
}

/// The segment files of `dir`, by number.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// What the end of a segment file holds.
#[derive(Debug)]
struct Tail {
    /// Bytes up to and including the last intact line.
    intact_len: u64,
    /// Bytes after it: a torn last line.
    torn: u64,
    /// The hash of the last intact line.
    last_hash: String,
    /// The seq of the last intact record (or `first_seq - 1` if the segment has only its
    /// header).
    last_seq: u64,
    chain: String,
    key_id: Option<String>,
    /// The `segment` of the header.
    segment: u64,
}

/// Reads a segment back: where its intact lines end and what the last one was. A damaged
/// line that is not the last one is an error (the trail was tampered with: the sink will not
/// write after it).
///
/// It also checks the links between the segment's lines and the last line's hash under `key`
/// (when the segment is chained with `key`'s algorithm and key id): a writer given the wrong
/// HMAC secret, or a last segment edited, is refused instead of extended with lines no key
/// verifies.
fn scan_segment(path: &Path, key: &ChainKey) -> io::Result<Tail> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let bad =
        |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()));
    let mut tail = Tail {
        intact_len: 0,
        torn: 0,
        last_hash: String::new(),
        last_seq: 0,
        chain: String::new(),
        key_id: None,
        segment: 0,
    };
    let mut pos = 0usize;
    let mut last_line = 0..0;
    while pos < bytes.len() {
        let end = bytes[pos..].iter().position(|&b| b == b'\n').map(|i| pos + i);
        let line = &bytes[pos..end.unwrap_or(bytes.len())];
        let parsed = split_line(line).and_then(|(_, hash)| {
            let v: serde_json::Value = serde_json::from_slice(line).ok()?;
            Some((v, hash.to_string()))
        });
        match (parsed, end) {
            (Some((v, hash)), Some(end)) => {
                if pos == 0 {
                    if v.get("segment").is_none() {
                        return Err(bad("the first line is not a segment header".into()));
                    }
                    tail.chain = v["chain"].as_str().unwrap_or_default().to_string();
                    tail.key_id = v["key_id"].as_str().map(str::to_string);
                    tail.segment = v["segment"].as_u64().unwrap_or(0);
                    let named = path.file_name().and_then(|n| n.to_str()).and_then(parse_segment_file_name);
                    if named.is_some_and(|n| n != tail.segment) {
                        return Err(bad(format!(
                            "the header says segment {}, the file name another number (tampering)",
                            tail.segment
                        )));
                    }
                    tail.last_seq = v["first_seq"].as_u64().unwrap_or(1).saturating_sub(1);
                } else if let Some(seq) = v.get("seq").and_then(serde_json::Value::as_u64) {
                    tail.last_seq = seq;
                }
                if pos > 0 && v["prev"].as_str() != Some(tail.last_hash.as_str()) {
                    return Err(bad(format!(
                        "the line at byte {pos} does not link to the one before it (tampering); run \
                         `map-wrapper-audit verify` on the trail"
                    )));
                }
                last_line = pos..end;
                tail.last_hash = hash;
                pos = end + 1;
                tail.intact_len = pos as u64;
            }
            (_, end) => {
                // Not a valid line: acceptable only as an incomplete last one (a torn write: the
                // writer writes whole lines, so a crash never leaves a complete bad line).
                // A complete line that does not parse was edited: refuse to write after it, and
                // never cut it off as if a crash had left it.
                if end.is_some() {
                    return Err(bad(format!(
                        "damaged complete line at byte {pos} (tampering, not a crash); run \
                         `map-wrapper-audit verify` on the trail"
                    )));
                }
                tail.torn = (bytes.len() - pos) as u64;
                break;
            }
        }
    }
    if tail.intact_len == 0 {
        return Err(bad("no intact segment header".into()));
    }
    if tail.last_seq == u64::MAX {
        return Err(bad("the last seq is u64::MAX: no record can follow it (seq overflow)".into()));
    }
    if tail.chain == key.algorithm() && tail.key_id.as_deref() == key.key_id() {
        let line = &bytes[last_line.clone()];
        let (head, hash) = split_line(line).expect("checked in the loop");
        let prev: serde_json::Value = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
        let computed = to_hex(&key.seal_parts(prev["prev"].as_str().unwrap_or_default(), &[head, b"}"]));
        if computed != hash {
            return Err(bad(format!(
                "the last line (byte {}) does not verify with the given {} key: a wrong key (the \
                 same key id with another secret?) or a tampered segment",
                last_line.start,
                key.algorithm()
            )));
        }
    }
    Ok(tail)
}

/// Segment files by number.
type Segments = Vec<(u64, PathBuf)>;

/// The segments of `dir`, after removing a last segment file that holds no complete line: a
/// crash (or a failed write) interrupted its creation before its header was whole, so it
/// holds no record. Says what it removed.
fn segments_without_headerless_last(dir: &Path) -> Result<(Segments, Option<String>), SinkError> {
    let mut segments = list_segments(dir)
        .map_err(|e| err(&format!("cannot list the audit directory {}", dir.display()), e))?;
    let mut note = None;
    if let Some((n, path)) = segments.last() {
        let bytes = std::fs::read(path).map_err(|e| err(&format!("cannot read {}", path.display()), e))?;
        if !bytes.contains(&b'\n') {
            std::fs::remove_file(path).map_err(|e| err(&format!("cannot remove {}", path.display()), e))?;
            sync_dir(dir)
                .map_err(|e| err(&format!("cannot sync the audit directory {}", dir.display()), e))?;
            note = Some(format!(
                "removed {}: {} bytes of an incomplete segment header left by an interrupted segment creation",
                segment_file_name(*n),
                bytes.len()
            ));
            segments.pop();
        }
    }
    Ok((segments, note))
}

/// The name of the lock file in a trail directory.
pub(crate) const LOCK_FILE: &str = ".lock";

/// How long opening a trail waits for a lock that is taken before it reports the trail as
/// open by another sink.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes the trail's lock file: one sink per directory at a time, across processes. The lock
/// goes with the returned file (and with the process).
fn lock_dir(dir: &Path) -> Result<File, SinkError> {
    let file =
        OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE)).map_err(
            |e| err(&format!("cannot open the trail's lock file {}", dir.join(LOCK_FILE).display()), e),
        )?;
    {
        // A sink just closed in this process can still hold the lock for a moment: a child
        // process being spawned by another thread shares every open file description until it
        // starts its program, the lock's included. So a taken lock is tried again for a while
        // before the trail is reported as open elsewhere.
        let patience = std::time::Instant::now() + LOCK_PATIENCE;
        let locked = loop {
            // An exclusive advisory lock on the whole file (flock(LOCK_EX | LOCK_NB) on Unix,
            // LockFileEx on Windows), held until the file is closed.
            let locked = file.try_lock();
            match &locked {
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < patience => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => break locked,
            }
        };
        if let Err(e) = locked {
            return Err(match e {
                std::fs::TryLockError::WouldBlock => SinkError::new(format!(
                    "{} is already open by another audit sink (this or another process): one writer per \
                     trail",
                    dir.display()
                )),
                std::fs::TryLockError::Error(e) => {
                    err(&format!("cannot lock {}", dir.join(LOCK_FILE).display()), e)
                }
            });
        }
    }
    Ok(file)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn err(context: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::new(format!("{context}: {e}"))
}

/// The shared state of producers, waiters and the writer.
struct State {
    /// The encoded bodies of the queued records, back to back (the bytes are what the queue
    /// carries: no allocation per record).
    pending: String,
    /// Where each queued body ends in `pending`.
    ends: Vec<usize>,
    /// Bytes queued or in a batch being written: what `max_queue_bytes` bounds.
    queued_bytes: usize,
    /// Whether the writer thread has been woken for the queued records (it then writes them
    /// within `BATCH_DELAY`): producers wake it once per batch, not once per record.
    writer_armed: bool,
    /// Someone (the writer thread or a `Flushed` waiter) has the turn to write: it alone
    /// locks `Shared::writer`. Given back with a wake-up of `progress`.
    writing: bool,
    /// The seq the next appended record gets.
    next_seq: u64,
    epoch: u64,
    /// Highest seq handed to the operating system.
    written: u64,
    /// Highest seq on disk.
    synced: u64,
    /// Highest seq some waiter wants on disk.
    sync_wanted: u64,
    /// Operations waiting for a sync now.
    sync_waiters: usize,
    /// How many were waiting when the last sync ended, when it ended, and how long it took:
    /// the writer lets the next sync wait (at most as long as the last one took) for the
    /// waiters it released to come back with their next records, so that one sync serves
    /// every thread instead of every other one (group commit).
    last_sync: Option<(usize, Instant, Duration)>,
    failed: Option<SinkError>,
    stopping: bool,
    /// With checkpoints on: when the next one is due by time (now or earlier: due now).
    checkpoint_due: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    /// The segment being written and the chain, locked by whoever has the turn to write
    /// (`State::writing`): the writer thread, or a `Flushed` waiter that writes every queued
    /// record itself. Never contended; never locked while holding `state`.
    writer: Mutex<Option<Writer>>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes waiters and producers blocked on a full queue.
    progress: Condvar,
    failed: AtomicBool,
    /// Set by `close`: `health` then reports the sink closed.
    closed: AtomicBool,
    dir: PathBuf,
    opts: JsonLinesOptions,
    records: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    /// The checkpoint engine (tree, key, policy), with checkpoints on. Locked while holding
    /// `writer` (the tree takes each batch as it is written), never while holding `state`.
    checkpointer: Option<Mutex<Checkpointer>>,
    /// The trail's own `checkpoints.notes`.
    own_anchor: Option<DirAnchor>,
    checkpoints: AtomicU64,
    anchor_failures: AtomicU64,
    latest_checkpoint: Mutex<Option<SignedCheckpoint>>,
}

/// What a [`JsonLinesSink`]'s writer has done since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JsonLinesStats {
    /// Records written (lifecycle records included).
    pub records: u64,
    /// Batches handed to the OS (one `write` each, unless a rotation splits one).
    pub batches: u64,
    /// `fdatasync` calls made for waiters (group commits).
    pub syncs: u64,
    /// Signed checkpoints made (with [`JsonLinesOptions::checkpoints`]).
    pub checkpoints: u64,
    /// Times the trail's `checkpoints.notes` or an anchor failed to take a checkpoint.
    pub anchor_failures: u64,
}

/// The segment being written: owned by whoever writes a batch.
struct Writer {
    file: Box<dyn SegmentWriter>,
    segment: u64,
    segment_bytes: u64,
    chain: Chain,
    /// The lines of the batch being written (reused).
    lines: String,
    /// The bodies of the batch, swapped with the queue's (reused).
    bodies: String,
    ends: Vec<usize>,
}

/// An append-only, hash-chained trail of JSON lines in a directory of segment files.
///
/// - **Order**: every appended record gets the next `seq` under one lock, and one writer
///   thread seals them in that order: one total order, one chain.
/// - **Durability**: the writer hands each batch to the OS as soon as it has it;
///   [`wait`](AuditSink::wait) with [`Durability::Synced`] asks it for an `fdatasync`, and
///   every record written before that sync shares it (group commit).
/// - **Rotation**: when a segment reaches [`JsonLinesOptions::max_segment_bytes`] it is
///   synced and closed; the next one starts with a header carrying the previous segment's
///   length and last hash. The directory is synced when a segment is created.
/// - **Torn tail**: on open, a last line cut short by a crash is cut off, and a `sink_gap`
///   record says how many bytes at which offset.
/// - **One writer per trail**: the directory's `.lock` file is locked (`flock`) while the sink
///   is open; a second sink on the same directory, in this process or another, is refused.
/// - **Failure**: a write or sync error, or a panic in the writer thread (a user
///   `SegmentWriter`, say), stops the sink (every waiter and later append gets the error,
///   and [`health`](AuditSink::health) reports it). A sync error poisons the segment: it is never written or synced again;
///   [`reopen`](AuditSink::reopen) continues in a new segment.
///
/// See `docs/AUDIT_FORMAT.md` for the bytes on disk.
///
/// ```
/// use map_wrapper::audit::{AuditSink, Auditor, Durability, JsonLinesSink};
/// use map_wrapper::MapWrapper;
///
/// let dir = tempfile::tempdir().unwrap();
/// let sink = JsonLinesSink::open(dir.path(), Default::default()).unwrap();
/// let auditor = Auditor::new(sink).durability(Durability::Synced);
/// let map: MapWrapper<String, u32> = MapWrapper::builder().auditor(auditor).build()?;
/// map.insert("a".into(), 1)?; // returns once its record is on disk
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
pub struct JsonLinesSink {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Held open for the sink's life: the directory's lock (see `lock_dir`).
    _lock: File,
}

impl std::fmt::Debug for JsonLinesSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesSink").field("dir", &self.shared.dir).finish_non_exhaustive()
    }
}

impl JsonLinesSink {
    /// Opens (or creates) the trail in `dir` and starts its writer: continues the last
    /// segment after repairing a torn tail, or starts segment 1. Writes an `audit_start`
    /// record.
    ///
    /// # Errors
    ///
    /// I/O errors; a last segment damaged before its end; a trail chained with another
    /// algorithm or key id than `opts.chain_key`, or whose last line does not verify with it;
    /// `queue_capacity` 0 or `max_segment_bytes` below [`MIN_SEGMENT_BYTES`]; the trail open
    /// by another sink, in this process or another (after waiting up to half a second for its
    /// lock: a child process being spawned holds a just-closed sink's lock until it starts).
    pub fn open(dir: impl AsRef<Path>, opts: JsonLinesOptions) -> Result<Self, SinkError> {
        let dir = dir.as_ref().to_path_buf();
        if opts.max_queue_bytes == 0 {
            // With no room, every admission would wait until its deadline.
            return Err(SinkError::new("JsonLinesOptions::max_queue_bytes must be at least 1"));
        }
        if opts.max_segment_bytes < MIN_SEGMENT_BYTES {
            return Err(SinkError::new(format!(
                "JsonLinesOptions::max_segment_bytes must be at least {MIN_SEGMENT_BYTES} (a header and a record)"
            )));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| err(&format!("cannot create the audit directory {}", dir.display()), e))?;
        let lock = lock_dir(&dir)?;
        let (segments, removed) = segments_without_headerless_last(&dir)?;
        let (writer, note) = match segments.last() {
            None => (Self::new_segment(&dir, &opts, Chain::new(opts.chain_key.clone()), 1, 0, false)?, None),
            Some((n, path)) => {
                let tail = scan_segment(path, &opts.chain_key)
                    .map_err(|e| err(&format!("cannot reopen the trail at {}", path.display()), e))?;
                if tail.chain != opts.chain_key.algorithm()
                    || tail.key_id.as_deref() != opts.chain_key.key_id()
                {
                    return Err(SinkError::new(format!(
                        "{} is chained with {} (key id {:?}), not {} (key id {:?})",
                        path.display(),
                        tail.chain,
                        tail.key_id,
                        opts.chain_key.algorithm(),
                        opts.chain_key.key_id()
                    )));
                }
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| err(&format!("cannot open the last segment {}", path.display()), e))?;
                let mut note = None;
                if tail.torn > 0 {
                    file.set_len(tail.intact_len)
                        .map_err(|e| err(&format!("cannot cut the torn tail of {}", path.display()), e))?;
                    file.sync_all().map_err(|e| {
                        err(&format!("cannot sync the repaired segment {}", path.display()), e)
                    })?;
                    note = Some(format!(
                        "torn tail repaired: {} bytes at offset {} of {} removed on open",
                        tail.torn,
                        tail.intact_len,
                        segment_file_name(*n)
                    ));
                }
                std::io::Seek::seek(&mut file, io::SeekFrom::End(0))
                    .map_err(|e| err(&format!("cannot seek to the end of {}", path.display()), e))?;
                let chain = Chain::resume(opts.chain_key.clone(), tail.last_seq + 1, tail.last_hash);
                let file: Box<dyn SegmentWriter> = match writer_hook(&opts) {
                    Some(hook) => hook(file),
                    None => Box::new(file),
                };
                (Writer::new(file, *n, tail.intact_len, chain), note)
            }
        };
        let gaps: Vec<String> = removed.into_iter().chain(note).collect();
        let checkpointer = match &opts.checkpoints {
            Some(c) => Some(resume_checkpointer(&dir, c)?),
            None => None,
        };
        Self::start(dir, opts, writer, &gaps, "opened", lock, checkpointer)
    }

    /// Creates segment `n` with its header, syncs it and the directory.
    fn new_segment(
        dir: &Path,
        opts: &JsonLinesOptions,
        mut chain: Chain,
        n: u64,
        prev_len: u64,
        recovered: bool,
    ) -> Result<Writer, SinkError> {
        let path = dir.join(segment_file_name(n));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| err(&format!("cannot create {}", path.display()), e))?;
        sync_dir(dir).map_err(|e| err(&format!("cannot sync the audit directory {}", dir.display()), e))?;
        let mut file: Box<dyn SegmentWriter> = match writer_hook(opts) {
            Some(hook) => hook(file),
            None => Box::new(file),
        };
        let mut header = String::new();
        chain.seal_header(n, prev_len, recovered, &mut header);
        file.append(header.as_bytes())
            .map_err(|e| err(&format!("cannot write the header of {}", path.display()), e))?;
        file.sync().map_err(|e| err(&format!("cannot sync the header of {}", path.display()), e))?;
        Ok(Writer::new(file, n, header.len() as u64, chain))
    }

    /// Writes the opening records synchronously, then hands the writer to its thread.
    fn start(
        dir: PathBuf,
        opts: JsonLinesOptions,
        mut writer: Writer,
        gaps: &[String],
        why: &str,
        lock: File,
        mut checkpointer: Option<Checkpointer>,
    ) -> Result<Self, SinkError> {
        let mut lines = String::new();
        for gap in gaps {
            writer
                .chain
                .seal_event(&AuditEvent::new(EventFields::lifecycle("sink_gap", Some(gap))), &mut lines);
        }
        writer
            .chain
            .seal_event(&AuditEvent::new(EventFields::lifecycle("audit_start", Some(why))), &mut lines);
        writer.file.append(lines.as_bytes()).map_err(|e| {
            err(&format!("cannot write to {}", dir.join(segment_file_name(writer.segment)).display()), e)
        })?;
        writer.file.sync().map_err(|e| {
            err(&format!("cannot sync {}", dir.join(segment_file_name(writer.segment)).display()), e)
        })?;
        writer.segment_bytes += lines.len() as u64;
        if let Some(c) = &mut checkpointer {
            c.on_lines(lines.as_bytes());
        }
        let last = writer.chain.next_seq() - 1;
        let own_anchor = checkpointer.as_ref().map(|_| DirAnchor::new(&dir, DirLayout::Append));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: String::new(),
                ends: Vec::new(),
                queued_bytes: 0,
                writer_armed: false,
                writing: false,
                next_seq: last + 1,
                epoch: 0,
                written: last,
                synced: last,
                sync_wanted: 0,
                sync_waiters: 0,
                last_sync: None,
                failed: None,
                stopping: false,
                // Due at once: the checkpoint of the trail as opened.
                checkpoint_due: checkpointer.as_ref().map(|_| Instant::now()),
            }),
            writer: Mutex::new(None),
            work: Condvar::new(),
            progress: Condvar::new(),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dir,
            opts,
            records: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            checkpointer: checkpointer.map(Mutex::new),
            own_anchor,
            checkpoints: AtomicU64::new(0),
            anchor_failures: AtomicU64::new(0),
            latest_checkpoint: Mutex::new(None),
        });
        *shared.writer.lock() = Some(writer);
        let thread = spawn_writer(Arc::clone(&shared))?;
        Ok(JsonLinesSink { shared, thread: Mutex::new(Some(thread)), _lock: lock })
    }

    /// The directory of the trail.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What the writer has done so far (records, batches, group-commit syncs).
    pub fn stats(&self) -> JsonLinesStats {
        JsonLinesStats {
            records: self.shared.records.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            checkpoints: self.shared.checkpoints.load(Ordering::Relaxed),
            anchor_failures: self.shared.anchor_failures.load(Ordering::Relaxed),
        }
    }

    /// The latest signed checkpoint the writer made (with [`JsonLinesOptions::checkpoints`]).
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.shared.latest_checkpoint.lock().clone()
    }

    /// Writes an `audit_stop` record, syncs, and stops the writer. From then on
    /// [`health`](AuditSink::health) reports the sink closed (fail-closed maps refuse
    /// mutations before they change anything) and appends fail. Closing twice is harmless.
    ///
    /// # Errors
    ///
    /// The sink's failure, if it had failed.
    pub fn close(&self) -> Result<(), SinkError> {
        let Some(thread) = self.thread.lock().take() else {
            return self.shared.state.lock().failed.clone().map_or(Ok(()), Err);
        };
        {
            // The `audit_stop` record and `stopping` in one critical section: no append can
            // come between them, so `audit_stop` is the last record.
            let mut st = self.shared.state.lock();
            if st.failed.is_none() && !st.stopping {
                st.next_seq += 1;
                let event = AuditEvent::new(EventFields::lifecycle("audit_stop", None));
                st.push_body(event.body());
            }
            st.stopping = true;
            self.shared.closed.store(true, Ordering::Release);
            self.shared.work.notify_all();
            self.shared.progress.notify_all();
        }
        let _ = thread.join();
        self.shared.state.lock().failed.clone().map_or(Ok(()), Err)
    }
}

impl Drop for JsonLinesSink {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Writer {
    fn new(file: Box<dyn SegmentWriter>, segment: u64, segment_bytes: u64, chain: Chain) -> Self {
        Writer {
            file,
            segment,
            segment_bytes,
            chain,
            lines: String::with_capacity(1 << 16),
            bodies: String::new(),
            ends: Vec::new(),
        }
    }
}

impl JsonLinesSink {
    /// Gives `body` the next seq and queues it; wakes the writer thread once per batch.
    fn enqueue(&self, body: &str) -> Result<Ticket, SinkError> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        loop {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.stopping {
                return Err(SinkError::new("the audit sink is closed"));
            }
            // Maps wait for room in `admit`, before they lock anything; this waits (under the
            // caller's locks) only for producers that never asked, at twice the bound.
            if st.queued_bytes < shared.opts.max_queue_bytes.saturating_mul(2) {
                break;
            }
            shared.progress.wait(&mut st);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let before = st.pending.len();
        st.push_body(body);
        let crossed = before < BATCH_WAKE_BYTES && st.pending.len() >= BATCH_WAKE_BYTES;
        if !st.writer_armed || crossed {
            st.writer_armed = true;
            shared.work.notify_one();
        }
        Ok(Ticket::new(seq, st.epoch))
    }
}

impl State {
    /// Queues one encoded body (its seq was taken by the caller).
    fn push_body(&mut self, body: &str) {
        self.pending.push_str(body);
        self.ends.push(self.pending.len());
        self.queued_bytes += body.len();
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".into())
}

fn spawn_writer(shared: Arc<Shared>) -> Result<JoinHandle<()>, SinkError> {
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            // A panic in the writer (a user `SegmentWriter` or `WriterHook`, or a bug) must not
            // leave a sink that looks healthy with nobody writing: it fails the sink, which
            // wakes every waiter and blocked producer with the error.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_writer(&shared)));
            if let Err(panic) = run {
                let what = panic_text(&*panic);
                fail(&shared, SinkError::new(format!("the audit writer thread panicked: {what}")));
            }
        })
        .map_err(|e| err("cannot start the audit writer thread", e))
}

/// The writer thread: writes what `Buffered` operations queued (within `BATCH_DELAY`), syncs
/// for `Synced` waiters (group commit), and writes the last records on close. `Flushed`
/// waiters write their batches themselves (see `wait`); the thread and they take turns
/// (`State::writing`).
fn run_writer(shared: &Shared) {
    loop {
        let stopping = {
            let mut st = shared.state.lock();
            // Without a waiter, let a batch build up for up to BATCH_DELAY (or
            // BATCH_WAKE_BYTES): one wake-up and one write for many records instead of one each.
            let mut since: Option<Instant> = None;
            loop {
                if st.failed.is_some() {
                    return;
                }
                if st.writing {
                    // A waiter is writing; it wakes `progress` when done.
                    shared.progress.wait_for(&mut st, BATCH_DELAY);
                    continue;
                }
                if st.sync_wanted > st.synced && !st.stopping {
                    if let Some((target, end, took)) = st.last_sync {
                        let left = took.saturating_sub(end.elapsed());
                        if st.sync_waiters < target && !left.is_zero() {
                            shared.work.wait_for(&mut st, left);
                            continue;
                        }
                    }
                    break;
                }
                if st.stopping || st.pending.len() >= BATCH_WAKE_BYTES {
                    break;
                }
                if st.checkpoint_due.is_some_and(|due| Instant::now() >= due) {
                    // Flushed waiters leave the turn to this thread while a checkpoint is due.
                    break;
                }
                if st.ends.is_empty() {
                    st.writer_armed = false;
                    since = None;
                    match st.checkpoint_due {
                        // A checkpoint is due (by time, or by records written by a waiter).
                        Some(due) if Instant::now() >= due => break,
                        Some(due) => {
                            shared.work.wait_until(&mut st, due);
                        }
                        None => shared.work.wait(&mut st),
                    }
                    continue;
                }
                let start = *since.get_or_insert_with(Instant::now);
                let Some(left) = BATCH_DELAY.checked_sub(start.elapsed()) else { break };
                shared.work.wait_for(&mut st, left);
            }
            st.writing = true;
            st.stopping
        };
        let result = (|| {
            let mut guard = shared.writer.lock();
            let w = guard.as_mut().ok_or_else(|| SinkError::new("the audit writer is gone"))?;
            write_queued(shared, w)?;
            let (sync, last) = {
                let st = shared.state.lock();
                (stopping || st.sync_wanted > st.synced, st.written)
            };
            if sync && last > shared.state.lock().synced {
                let start = Instant::now();
                // Never sync this file again after a failure: after a failed fsync the kernel
                // may have dropped the dirty pages, and a second fsync would report success
                // for data that is gone. The segment is poisoned; reopen() starts a new one.
                w.file
                    .sync()
                    .map_err(|e| err(&format!("fsync of {} failed", segment_file_name(w.segment)), e))?;
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                let mut st = shared.state.lock();
                st.synced = last;
                st.last_sync = Some((st.sync_waiters, Instant::now(), start.elapsed()));
            }
            make_checkpoint(shared, w, stopping)
        })();
        // On a failure the turn is handed back by `fail`, in the same critical section that
        // marks the sink failed: giving it back first would let a waiter take it and append
        // its batch after the torn bytes of the failed write.
        let signed = match result {
            Ok(signed) => {
                end_turn(shared);
                signed
            }
            Err(e) => return fail(shared, e),
        };
        // Anchors are written outside the turn: waiters keep writing meanwhile.
        if let Some(signed) = signed {
            publish(shared, &signed);
        }
        if stopping {
            return;
        }
    }
}

/// Gives back the turn to write and wakes waiters and admissions.
fn end_turn(shared: &Shared) {
    let mut st = shared.state.lock();
    st.writing = false;
    drop(st);
    shared.progress.notify_all();
}

/// Takes every queued record, seals them and writes them in one `write(2)` (two around a
/// rotation); `written` is then their last seq. Called by the holder of the turn to write
/// (`State::writing`), with `Shared::writer` locked. Returns without writing if the sink has
/// failed.
fn write_queued(shared: &Shared, w: &mut Writer) -> Result<(), SinkError> {
    {
        let mut st = shared.state.lock();
        if st.failed.is_some() || st.ends.is_empty() {
            return Ok(());
        }
        std::mem::swap(&mut w.bodies, &mut st.pending);
        std::mem::swap(&mut w.ends, &mut st.ends);
    }
    let bytes = w.bodies.len();
    let count = w.ends.len() as u64;
    w.lines.clear();
    let mut from = 0;
    for i in 0..w.ends.len() {
        let to = w.ends[i];
        if w.segment_bytes + w.lines.len() as u64 >= shared.opts.max_segment_bytes {
            rotate(shared, w)?;
        }
        // The single place where each line of the trail passes, in order, before it is
        // written: `w.lines[line_start..]` after the seal.
        w.chain.seal_body(&w.bodies[from..to], &mut w.lines);
        from = to;
    }
    flush_lines(shared, w)?;
    w.bodies.clear();
    w.ends.clear();
    if w.bodies.capacity() > KEEP_BUFFER_BYTES {
        w.bodies = String::new();
        w.ends = Vec::new();
    }
    if w.lines.capacity() > KEEP_BUFFER_BYTES {
        w.lines = String::with_capacity(1 << 16);
    }
    shared.records.fetch_add(count, Ordering::Relaxed);
    shared.batches.fetch_add(1, Ordering::Relaxed);
    let due = shared.checkpointer.as_ref().map(|c| checkpoint_deadline(&c.lock()));
    let mut st = shared.state.lock();
    st.written = w.chain.next_seq() - 1;
    st.queued_bytes -= bytes;
    if let Some(due) = due {
        st.checkpoint_due = Some(due);
        if due <= Instant::now() {
            // N records reached (perhaps in a waiter's turn): the writer thread checkpoints.
            shared.work.notify_one();
        }
    }
    Ok(())
}

/// When the checkpointer is next due by time (now when it is due already).
fn checkpoint_deadline(c: &Checkpointer) -> Instant {
    let now = Instant::now();
    if c.due(now) {
        now
    } else {
        c.next_deadline().unwrap_or(now)
    }
}

/// In the writer thread's turn: when a checkpoint is due (or the sink is stopping), makes the
/// records written durable and signs the checkpoint of them. Publishing is left to the
/// caller, outside the turn.
fn make_checkpoint(
    shared: &Shared,
    w: &mut Writer,
    stopping: bool,
) -> Result<Option<SignedCheckpoint>, SinkError> {
    let Some(c) = &shared.checkpointer else { return Ok(None) };
    let mut c = c.lock();
    let now = Instant::now();
    let signed = if stopping || c.due(now) {
        // Only records on disk are checkpointed: a crash of the machine must not leave a
        // checkpoint of records that are gone (the trail would look truncated).
        let (written, synced) = {
            let st = shared.state.lock();
            (st.written, st.synced)
        };
        if written > synced {
            w.file
                .sync()
                .map_err(|e| err(&format!("fsync of {} failed", segment_file_name(w.segment)), e))?;
            shared.state.lock().synced = written;
        }
        Some(c.checkpoint(now))
    } else {
        None
    };
    let due = checkpoint_deadline(&c);
    drop(c);
    shared.state.lock().checkpoint_due = Some(due);
    Ok(signed)
}

/// Hands a checkpoint to the trail's `checkpoints.notes` and every anchor; a failure is
/// logged and counted, and does not stop the trail.
fn publish(shared: &Shared, signed: &SignedCheckpoint) {
    shared.checkpoints.fetch_add(1, Ordering::Relaxed);
    *shared.latest_checkpoint.lock() = Some(signed.clone());
    let own = shared.own_anchor.iter().map(|a| a as &dyn CheckpointAnchor);
    let others = shared.opts.checkpoints.iter().flat_map(|c| c.anchors.iter().map(|a| &**a));
    for (i, anchor) in own.chain(others).enumerate() {
        // A user anchor that panics is a failed anchor, like one that errs: the panic must not
        // reach the writer thread's catch, whose `fail` would take the turn from a waiter
        // that holds it (this runs outside the turn).
        let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| anchor.publish(signed)))
            .unwrap_or_else(|panic| {
                Err(AnchorError::Io {
                    path: format!("anchor {i}"),
                    reason: format!("the anchor panicked: {}", panic_text(&*panic)),
                })
            });
        if let Err(e) = kept {
            shared.anchor_failures.fetch_add(1, Ordering::Relaxed);
            let which =
                if i == 0 { "the trail's checkpoints.notes".to_string() } else { format!("anchor {i}") };
            tracing::warn!(target: "audit", error = %e, anchor = %which, size = signed.checkpoint().size(),
                "a checkpoint could not be kept");
        }
    }
}

/// The checkpointer of a trail being (re)opened: its tree rebuilt from the records, checked
/// against the latest checkpoint of its own `checkpoints.notes`.
fn resume_checkpointer(dir: &Path, c: &CheckpointOptions) -> Result<Checkpointer, SinkError> {
    let held = DirAnchor::new(dir, DirLayout::Append)
        .latest()
        .map_err(|e| err("cannot read checkpoints.notes", e))?;
    let (tree, verdict) = resume_tree(dir, held.as_ref().map(SignedCheckpoint::checkpoint))
        .map_err(|e| err("cannot read the trail to rebuild its Merkle tree", e))?;
    if let Some(v @ (CheckpointVerdict::Truncated { .. } | CheckpointVerdict::RootMismatch { .. })) = verdict
    {
        return Err(SinkError::new(format!(
            "{}: tampering: {}; the trail is not continued (check it with `map-wrapper-audit verify --pubkey`)",
            dir.display(),
            super::proof::tamper_text(&v).unwrap_or_default()
        )));
    }
    Checkpointer::resume(&c.origin, c.signer.clone(), c.policy, tree)
        .map_err(|e| err("bad checkpoint options", e))
}

fn flush_lines(shared: &Shared, w: &mut Writer) -> Result<(), SinkError> {
    if !w.lines.is_empty() {
        w.file
            .append(w.lines.as_bytes())
            .map_err(|e| err(&format!("write to {} failed", segment_file_name(w.segment)), e))?;
        if let Some(c) = &shared.checkpointer {
            // Record lines only (headers are written by `new_segment`), as written.
            c.lock().on_lines(w.lines.as_bytes());
        }
        w.segment_bytes += w.lines.len() as u64;
        w.lines.clear();
    }
    Ok(())
}

/// Finishes the current segment (written and synced) and starts the next one.
fn rotate(shared: &Shared, w: &mut Writer) -> Result<(), SinkError> {
    flush_lines(shared, w)?;
    w.file.sync().map_err(|e| err(&format!("fsync of {} failed", segment_file_name(w.segment)), e))?;
    let mut next = JsonLinesSink::new_segment(
        &shared.dir,
        &shared.opts,
        w.chain.clone(),
        w.segment + 1,
        w.segment_bytes,
        false,
    )?;
    std::mem::swap(&mut next.lines, &mut w.lines);
    std::mem::swap(&mut next.bodies, &mut w.bodies);
    std::mem::swap(&mut next.ends, &mut w.ends);
    *w = next;
    Ok(())
}

fn fail(shared: &Shared, e: SinkError) {
    tracing::error!(target: "audit", error = %e, "audit sink failed; fail-closed maps are now read-only");
    let mut st = shared.state.lock();
    st.pending.clear();
    st.ends.clear();
    st.queued_bytes = 0;
    // The turn of whoever failed (a panicking writer thread cannot give it back itself).
    st.writing = false;
    st.failed = Some(e);
    shared.failed.store(true, Ordering::Release);
    shared.progress.notify_all();
}

impl AuditSink for JsonLinesSink {
    fn figures(&self) -> Option<super::sink::SinkFigures> {
        let queued = {
            let st = self.shared.state.lock();
            st.next_seq.saturating_sub(st.written + 1)
        };
        let s = self.stats();
        Some(super::sink::SinkFigures::new(queued, s.records, s.syncs))
    }

    fn append(&self, event: AuditEvent) -> Result<Ticket, SinkError> {
        self.enqueue(event.body())
    }

    fn append_fields(&self, fields: EventFields<'_>) -> Result<Ticket, SinkError> {
        use std::cell::RefCell;
        thread_local! {
            /// The body being encoded: reused, so a record costs no allocation.
            static BODY: RefCell<String> = const { RefCell::new(String::new()) };
        }
        BODY.with(|b| {
            let mut body = b.borrow_mut();
            body.clear();
            encode_body(&fields, &mut body);
            let r = self.enqueue(&body);
            if body.capacity() > KEEP_BUFFER_BYTES {
                *body = String::new();
            }
            r
        })
    }

    /// Waits until the queue holds less than [`JsonLinesOptions::max_queue_bytes`], or the
    /// deadline.
    fn admit(&self, deadline: Instant) -> Result<(), AdmitError> {
        let limit = self.shared.opts.max_queue_bytes;
        let mut st = self.shared.state.lock();
        let start = Instant::now();
        loop {
            if let Some(e) = &st.failed {
                return Err(AdmitError::Failed(e.clone()));
            }
            if st.stopping {
                return Err(AdmitError::Failed(SinkError::new("the audit sink is closed")));
            }
            if st.queued_bytes < limit {
                return Ok(());
            }
            if self.shared.progress.wait_until(&mut st, deadline).timed_out() && st.queued_bytes >= limit {
                return Err(AdmitError::Full { waited: start.elapsed(), limit });
            }
        }
    }

    fn wait(&self, ticket: &Ticket, level: Durability) -> Result<(), SinkError> {
        if level == Durability::Buffered {
            return Ok(());
        }
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        if level == Durability::Synced {
            // Counted, so that the writer can gather the waiters of one round into one sync.
            st.sync_waiters += 1;
            let r = loop {
                if st.epoch != ticket.epoch {
                    break Err(SinkError::new("the record was lost in a sink failure before the reopen"));
                }
                if st.synced >= ticket.id {
                    break Ok(());
                }
                if let Some(e) = &st.failed {
                    break Err(e.clone());
                }
                if st.sync_wanted < ticket.id {
                    st.sync_wanted = ticket.id;
                    shared.work.notify_one();
                }
                shared.progress.wait(&mut st);
            };
            st.sync_waiters -= 1;
            return r;
        }
        loop {
            if st.epoch != ticket.epoch {
                return Err(SinkError::new("the record was lost in a sink failure before the reopen"));
            }
            if st.written >= ticket.id {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            if st.checkpoint_due.is_some_and(|due| Instant::now() >= due + CHECKPOINT_PATIENCE) {
                // A checkpoint is overdue: the writer thread did not get the turn (Flushed
                // waiters kept it). Leave it the turn: it writes this record in the turn where
                // it checkpoints, so checkpoints slip at most this long under Flushed load.
                shared.work.notify_one();
            } else if !st.writing {
                // `Flushed`: take the turn and write every queued record (this one and those
                // of concurrent operations) in one write(2); whoever has the turn, others wait.
                st.writing = true;
                drop(st);
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    match shared.writer.lock().as_mut() {
                        Some(w) => write_queued(shared, w),
                        None => Ok(()),
                    }
                }));
                // `fail` gives the turn back itself, with the sink already marked failed (see
                // `run_writer`): nobody may write after a failed write.
                match r {
                    Ok(Ok(())) => end_turn(shared),
                    Ok(Err(e)) => fail(shared, e),
                    Err(panic) => {
                        let what = panic_text(&*panic);
                        fail(shared, SinkError::new(format!("the audit segment writer panicked: {what}")));
                    }
                }
                st = shared.state.lock();
                continue;
            }
            shared.progress.wait(&mut st);
        }
    }

    fn health(&self) -> Result<(), SinkError> {
        if !self.shared.failed.load(Ordering::Acquire) && !self.shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let st = self.shared.state.lock();
        match &st.failed {
            Some(e) => Err(e.clone()),
            None if st.stopping => Err(SinkError::new("the audit sink is closed")),
            None => Ok(()),
        }
    }

    /// Continues a failed trail in a new segment. The failed segment is never written or
    /// synced again; the new one's header records how many of its bytes were intact
    /// (`prev_len`) and `"recovered": true`. A `sink_gap` record then counts the records the
    /// sink had accepted (given a seq) that are not in the failed segment, with the seqs they
    /// had been given (the trail continues at the first of them), and an `audit_start` record
    /// gives the failure. A closed sink cannot be reopened.
    ///
    /// Limitation: the intact part of the failed segment is read back through the page cache.
    /// After an fsync failure some of those pages may never reach the disk; if the machine
    /// then crashes, the failed segment can be shorter than the new header says, and the
    /// verifier reports the trail as tampered at that header.
    fn reopen(&self) -> Result<(), SinkError> {
        let mut thread = self.thread.lock();
        let reason = match &self.shared.state.lock() {
            st if st.stopping => return Err(SinkError::new("the audit sink is closed")),
            st => match &st.failed {
                Some(e) => e.clone(),
                None => return Ok(()),
            },
        };
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
        // Waits for a waiter still in its turn (it finds the sink failed and writes nothing).
        let mut writer = self.shared.writer.lock();
        let dir = &self.shared.dir;
        let (mut segments, removed) = segments_without_headerless_last(dir)?;
        let (n, path) = segments.pop().ok_or_else(|| SinkError::new("the audit directory has no segment"))?;
        let tail = scan_segment(&path, &self.shared.opts.chain_key)
            .map_err(|e| err(&format!("cannot read the failed segment {}", path.display()), e))?;
        let chain = Chain::resume(self.shared.opts.chain_key.clone(), tail.last_seq + 1, tail.last_hash);
        let mut w = JsonLinesSink::new_segment(dir, &self.shared.opts, chain, n + 1, tail.intact_len, true)?;
        let mut lines = String::new();
        // Every record that was given a seq but is not on disk (queued, or in the batch whose
        // write failed) is lost: say how many, and which seqs they had been given. The trail
        // continues at the first of them, so its seq stays gap-free; this record is the gap.
        let issued_last = self.shared.state.lock().next_seq - 1;
        let lost = issued_last.saturating_sub(tail.last_seq);
        if lost > 0 {
            let gap = format!(
                "{lost} records accepted but not written before the failure (seq {}..{} as issued)",
                tail.last_seq + 1,
                issued_last
            );
            w.chain.seal_event(&AuditEvent::new(EventFields::lifecycle("sink_gap", Some(&gap))), &mut lines);
        }
        let mut why = format!("reopened after failure: {}", reason.reason());
        if let Some(removed) = removed {
            why.push_str("; ");
            why.push_str(&removed);
        }
        w.chain.seal_event(&AuditEvent::new(EventFields::lifecycle("audit_start", Some(&why))), &mut lines);
        w.file.append(lines.as_bytes()).map_err(|e| {
            err(
                &format!("cannot write to the new segment {}", dir.join(segment_file_name(n + 1)).display()),
                e,
            )
        })?;
        w.file.sync().map_err(|e| {
            err(&format!("cannot sync the new segment {}", dir.join(segment_file_name(n + 1)).display()), e)
        })?;
        w.segment_bytes += lines.len() as u64;
        let last = w.chain.next_seq() - 1;
        if let (Some(c), Some(opts)) = (&self.shared.checkpointer, &self.shared.opts.checkpoints) {
            // The tree of what is on disk now (a failed write may have left part of a batch).
            *c.lock() = resume_checkpointer(dir, opts)?;
        }
        *writer = Some(w);
        drop(writer);
        {
            let mut st = self.shared.state.lock();
            st.pending.clear();
            st.ends.clear();
            st.queued_bytes = 0;
            st.writer_armed = false;
            st.next_seq = last + 1;
            st.written = last;
            st.synced = last;
            st.sync_wanted = 0;
            st.epoch += 1;
            st.failed = None;
            st.checkpoint_due = self.shared.checkpointer.as_ref().map(|_| Instant::now());
            self.shared.failed.store(false, Ordering::Release);
        }
        *thread = Some(spawn_writer(Arc::clone(&self.shared))?);
        Ok(())
    }

    fn flush(&self) -> Result<(), SinkError> {
        let last = {
            let st = self.shared.state.lock();
            Ticket::new(st.next_seq - 1, st.epoch)
        };
        self.wait(&last, Durability::Synced)
    }
}
