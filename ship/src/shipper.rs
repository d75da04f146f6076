//! The shipper: tails a trail directory and delivers it to a [`RemoteSink`].

use std::collections::VecDeque;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use map_wrapper::audit::anchor::APPEND_FILE;
use map_wrapper::audit::checkpoint::split_notes;
use map_wrapper::audit::SignedCheckpoint;

use crate::sink::{check_trail_id, checkpoint_is_old, RemoteSink, SinkError};
use crate::tail::Tailer;
use crate::{Error, Record};

/// Settings of a [`Shipper`].
#[derive(Clone, Debug)]
pub struct ShipperConfig {
    /// The trail id the remote copy is keyed by (1–128 of `A-Z a-z 0-9 _ -`), e.g.
    /// `billing-host7`. One id per trail directory; two directories must never share one.
    pub trail: String,
    /// The trail directory (the one the `JsonLinesSink` writes).
    pub dir: PathBuf,
    /// Records per `send` at most (default 5000: a batch is one statement / one pipelined window
    /// of publishes, so bigger batches mean fewer round trips; see ship/README.md for figures).
    pub batch_records: usize,
    /// Records read ahead of the remote's acknowledgement (default 50 000): bounds memory while
    /// the remote is down, and how far the records lag can count.
    pub read_ahead: usize,
    /// How long to sleep when the trail has nothing new (default 2 ms).
    pub poll_interval: Duration,
    /// The longest wait between retries while the remote is unavailable (default 1 s; the
    /// first wait is 20 ms, doubling).
    pub max_backoff: Duration,
}

impl ShipperConfig {
    /// The defaults for `trail` read from `dir`.
    pub fn new(trail: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        ShipperConfig {
            trail: trail.into(),
            dir: dir.into(),
            batch_records: 5000,
            read_ahead: 50_000,
            poll_interval: Duration::from_millis(2),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// How far the remote copy is behind the local trail.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    /// Records read from the trail and not yet acknowledged by the remote.
    pub records: u64,
    /// Age of the oldest record not yet acknowledged (now − its `ts`), 0 when none waits.
    pub seconds: f64,
    /// The remote's last acknowledged `seq` (0 before the first).
    pub acked_seq: u64,
    /// The last `seq` read from the local trail.
    pub read_seq: u64,
    /// Whether the last exchange with the remote succeeded.
    pub remote_available: bool,
}

#[derive(Debug, Default)]
struct Shared {
    read_seq: AtomicU64,
    acked_seq: AtomicU64,
    /// `ts` of the oldest unacknowledged record, µs since the epoch; 0: none.
    oldest_unacked_us: AtomicI64,
    available: AtomicBool,
    stop: AtomicBool,
    /// A `run` has returned (or panicked) and no other has started since.
    exited: AtomicBool,
}

/// Sets `exited` when `run` returns or unwinds.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.available.store(false, Ordering::Release);
        self.0.exited.store(true, Ordering::Release);
    }
}

/// A handle on a running [`Shipper`] (cheap to clone, usable from any thread): its lag, and
/// a way to stop it.
///
/// This is the hook the map's stats and a fail-closed policy read (see the crate docs).
#[derive(Clone, Debug)]
pub struct ShipperHandle(Arc<Shared>);

impl ShipperHandle {
    /// The current lag.
    pub fn lag(&self) -> Lag {
        let s = &self.0;
        let read_seq = s.read_seq.load(Ordering::Acquire);
        let acked_seq = s.acked_seq.load(Ordering::Acquire);
        let oldest = s.oldest_unacked_us.load(Ordering::Acquire);
        let seconds = if oldest == 0 {
            0.0
        } else {
            ((chrono::Utc::now().timestamp_micros() - oldest).max(0) as f64) / 1e6
        };
        Lag {
            records: read_seq.saturating_sub(acked_seq),
            seconds,
            acked_seq,
            read_seq,
            remote_available: s.available.load(Ordering::Acquire),
        }
    }

    /// Whether [`Shipper::run`] has returned (an error, a stop, caught up) or panicked, and not
    /// been called again: nothing is being shipped.
    pub fn stopped(&self) -> bool {
        self.0.exited.load(Ordering::Acquire)
    }

    /// Asks the shipper to return from [`Shipper::run`] after its current step.
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::Release);
    }
}

/// When [`Shipper::run`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Follow the trail until [`ShipperHandle::stop`].
    Stopped,
    /// Return once every complete record on disk is acknowledged (or on stop).
    CaughtUp,
}

/// What a [`Shipper::run`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records acknowledged by the remote during this run.
    pub shipped: u64,
    /// The remote's last `seq` when the run ended.
    pub last_seq: u64,
    /// Sends or resumes that failed with a retryable error and were retried.
    pub retries: u64,
    /// Checkpoints (notes of the trail's `checkpoints.notes`) the remote acknowledged during
    /// this run.
    pub checkpoints: u64,
}

/// Where the shipping of the trail's checkpoints stands (re-read from the remote after a
/// resume or a failed exchange).
#[derive(Debug)]
struct CheckpointCursor {
    /// Bytes of `checkpoints.notes` consumed: notes shipped, or known to be on the remote.
    offset: u64,
    /// The newest checkpoint on the remote.
    remote: Option<SignedCheckpoint>,
    /// Whether the next read is the first of the file (to find the remote's newest in it).
    first_read: bool,
    /// The remote's newest is not in the local file: skip local notes of smaller trees.
    skip_smaller: bool,
}

/// Bytes of `checkpoints.notes` read at a time (a note is a few hundred bytes).
const NOTES_CHUNK: u64 = 1 << 20;

/// Where the last copy of `note` in the first `len` bytes of `file` ends, searched from the
/// end in chunks of [`NOTES_CHUNK`] (overlapping by less than a note): memory stays bounded
/// and a note found near the end costs one read.
fn find_last(file: &mut std::fs::File, len: u64, note: &[u8]) -> std::io::Result<Option<u64>> {
    let n = note.len() as u64;
    if n == 0 || n > len {
        return Ok(None);
    }
    let window = NOTES_CHUNK.max(2 * n);
    let mut end = len;
    let mut buf = Vec::new();
    loop {
        let start = end.saturating_sub(window);
        buf.resize((end - start) as usize, 0);
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf)?;
        if let Some(i) = memchr::memmem::rfind(&buf, note) {
            return Ok(Some(start + i as u64 + n));
        }
        if start == 0 {
            return Ok(None);
        }
        // A copy that begins before `start` ends before `start + n`.
        end = start + n - 1;
    }
}

/// Delivers a trail directory to a [`RemoteSink`] at least once, in order.
///
/// **Cursor.** The remote's own last `seq` ([`RemoteSink::last_acked`]) is the cursor: it is
/// read on start and after every failed exchange, and shipping resumes at the next record.
/// It is the strongest cursor there is — it cannot be ahead of what the remote holds (a local
/// cursor file written after the ack can lag it, and one restored from a backup can be
/// ahead of a remote restored from an older one), and there is no second state to keep
/// consistent. Where the remote's last record sits in the local trail is found from the
/// segment headers' `first_seq` (one header read per segment), then one segment is scanned.
/// Before going on, the shipper checks that the remote's last record is byte for byte the
/// local one ([`Error::Sink`] with [`SinkError::Fork`] otherwise).
///
/// A record can be sent twice (a send whose acknowledgement was lost): the receiver keeps
/// the first copy and checks the second is identical (see [`RemoteSink`]).
///
/// **Checkpoints.** The notes the trail's writer appends to `checkpoints.notes` in the trail
/// directory are shipped too ([`RemoteSink::send_checkpoint`]), in file order, each once the
/// remote has acknowledged the records it covers (a checkpoint of `n` records after record
/// `seq` `n`), so the remote copy never holds a checkpoint of records it does not hold. Their
/// cursor is the remote's newest checkpoint, found in the local file on start: the notes
/// after it are shipped (if it is not there, the notes of smaller trees are skipped). A
/// redelivered note is acknowledged without being stored twice; a note that goes backwards
/// from the remote's newest is refused by the remote and ends the run
/// ([`SinkError::Checkpoint`]): the local trail and its remote copy disagree.
pub struct Shipper<S> {
    cfg: ShipperConfig,
    sink: S,
    shared: Arc<Shared>,
}

impl<S: RemoteSink> Shipper<S> {
    /// A shipper for `cfg.dir` to `sink`. Nothing happens until [`run`](Shipper::run).
    pub fn new(cfg: ShipperConfig, sink: S) -> Result<Self, Error> {
        check_trail_id(&cfg.trail)?;
        if cfg.batch_records == 0 || cfg.read_ahead < cfg.batch_records {
            return Err(Error::Config("batch_records must be ≥ 1 and read_ahead ≥ batch_records".into()));
        }
        Ok(Shipper { cfg, sink, shared: Arc::default() })
    }

    /// A handle for the lag and for stopping.
    pub fn handle(&self) -> ShipperHandle {
        ShipperHandle(self.shared.clone())
    }

    /// The sink (e.g. to read from it after a run).
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Ships until `until`. Retryable remote errors are retried (with backoff) for as long as
    /// it takes; other errors end the run.
    pub fn run(&mut self, until: Until) -> Result<Summary, Error> {
        self.shared.exited.store(false, Ordering::Release);
        let shared = self.shared.clone();
        let _exit = ExitGuard(&shared);
        let mut summary = Summary::default();
        let mut tailer: Option<Tailer> = None;
        let mut pending: VecDeque<Record> = VecDeque::new();
        let mut fresh: Vec<Record> = Vec::new();
        let mut backoff = Duration::from_millis(20);
        let mut checkpoints: Option<CheckpointCursor> = None;
        // Checkpoints retry on their own backoff: a checkpoint the remote cannot take now
        // (its stream cannot be made, a permission) must not hold back the records.
        let mut checkpoint_backoff = Duration::from_millis(20);
        let mut checkpoint_retry: Option<Instant> = None;
        let trail = self.cfg.trail.clone();
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let Some(t) = tailer.as_mut() else {
                match self.resume() {
                    Ok(t) => {
                        tailer = Some(t);
                        checkpoints = None;
                        pending.clear();
                        backoff = Duration::from_millis(20);
                    }
                    Err(Error::Sink(e)) if e.is_retryable() => {
                        self.unavailable(&mut summary, &mut backoff);
                    }
                    Err(e) => return Err(e),
                }
                continue;
            };
            if pending.len() < self.cfg.read_ahead {
                fresh.clear();
                t.poll(self.cfg.read_ahead - pending.len(), &mut fresh)?;
                if let Some(last) = fresh.last() {
                    self.shared.read_seq.store(last.seq, Ordering::Release);
                }
                pending.extend(fresh.drain(..));
                self.note_oldest(&pending);
            }
            let acked = self.shared.acked_seq.load(Ordering::Acquire);
            if checkpoint_retry.is_none_or(|at| Instant::now() >= at) {
                match self.ship_checkpoints(&mut checkpoints, acked, &mut summary) {
                    Ok(()) => {
                        checkpoint_backoff = Duration::from_millis(20);
                        checkpoint_retry = None;
                    }
                    Err(Error::Sink(e)) if e.is_retryable() => {
                        tracing::warn!(target: "audit", trail = %trail, error = %e,
                            "a checkpoint could not be shipped; records go on, the checkpoint is retried");
                        checkpoints = None;
                        checkpoint_retry = Some(Instant::now() + checkpoint_backoff);
                        checkpoint_backoff = (checkpoint_backoff * 2).min(self.cfg.max_backoff);
                    }
                    Err(e) => return Err(e),
                }
            }
            if pending.is_empty() {
                if until == Until::CaughtUp {
                    break;
                }
                std::thread::sleep(self.cfg.poll_interval);
                continue;
            }
            let n = pending.len().min(self.cfg.batch_records);
            let result = self.sink.send(&trail, &pending.make_contiguous()[..n]);
            match result {
                Ok(acked) => {
                    backoff = Duration::from_millis(20);
                    self.shared.available.store(true, Ordering::Release);
                    let before = pending.len();
                    while pending.front().is_some_and(|r| r.seq <= acked.last_seq) {
                        pending.pop_front();
                    }
                    summary.shipped += (before - pending.len()) as u64;
                    summary.last_seq = acked.last_seq;
                    self.shared.acked_seq.store(acked.last_seq, Ordering::Release);
                    self.note_oldest(&pending);
                }
                // Unavailable: retry. Gap: the remote is behind what this shipper believed
                // it acknowledged (restored from a backup, or a broker that lost unsynced
                // messages): nothing was stored; ship again from the remote's real last seq.
                Err(e) if e.is_retryable() || matches!(e, SinkError::Gap { .. }) => {
                    self.unavailable(&mut summary, &mut backoff);
                    // Ask the remote what it has; resume from there.
                    match self.sink.last_acked(&trail) {
                        Ok(last) => {
                            let last = last.unwrap_or(0);
                            while pending.front().is_some_and(|r| r.seq <= last) {
                                pending.pop_front();
                            }
                            let acked = self.shared.acked_seq.load(Ordering::Acquire);
                            let contiguous = pending
                                .front()
                                .map_or(last == self.shared.read_seq.load(Ordering::Acquire), |r| {
                                    r.seq == last + 1
                                });
                            if !contiguous || last < acked {
                                // The remote went back (restored?) or moved on by itself:
                                // find the place again from scratch.
                                tailer = None;
                            } else {
                                self.shared.acked_seq.store(last, Ordering::Release);
                                summary.last_seq = last;
                            }
                            self.note_oldest(&pending);
                        }
                        Err(e) if e.is_retryable() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(summary)
    }

    /// Ships the notes of `checkpoints.notes` not yet on the remote that cover at most
    /// `acked` records.
    fn ship_checkpoints(
        &mut self,
        cursor: &mut Option<CheckpointCursor>,
        acked: u64,
        summary: &mut Summary,
    ) -> Result<(), Error> {
        let path = self.cfg.dir.join(APPEND_FILE);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        if cursor.is_none() {
            let remote = self.sink.latest_checkpoint(&self.cfg.trail)?;
            *cursor = Some(CheckpointCursor { offset: 0, remote, first_read: true, skip_smaller: false });
        }
        let c = cursor.as_mut().expect("set");
        if len < c.offset {
            // The file was cut (a torn last note removed, or worse): read it again; the
            // remote's newest decides what is new.
            c.offset = 0;
            c.first_read = true;
        }
        let mut f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        if std::mem::take(&mut c.first_read) {
            // Resume after the remote's newest note, found from the end of the file (the
            // file grows for as long as the trail lives: never read it whole).
            c.offset = 0;
            c.skip_smaller = true;
            if let Some(r) = &c.remote {
                if let Some(end) =
                    find_last(&mut f, len, r.note().as_bytes()).map_err(|e| Error::io(&path, e))?
                {
                    c.offset = end;
                    c.skip_smaller = false;
                }
            }
        }
        if len == c.offset {
            return Ok(());
        }
        // At most NOTES_CHUNK at a time: memory stays bounded however far behind this is.
        let take = (len - c.offset).min(NOTES_CHUNK);
        let at_end = c.offset + take == len;
        let mut bytes = vec![0; take as usize];
        f.seek(SeekFrom::Start(c.offset))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| Error::io(&path, e))?;
        let notes = split_notes(&bytes);
        let mut consumed = 0usize;
        if !at_end && notes.len() == 1 {
            // No note ends in a whole chunk: not a note (notes are a few hundred bytes).
            tracing::warn!(target: "audit", file = %path.display(), offset = c.offset,
                "{NOTES_CHUNK} bytes of checkpoints.notes without a note boundary are skipped");
            c.offset += take;
            return Ok(());
        }
        let count = notes.len();
        for (i, piece) in notes.into_iter().enumerate() {
            let last = i + 1 == count;
            if last && !at_end {
                break; // its end is in the next chunk (its signature lines may go on)
            }
            let parsed = SignedCheckpoint::parse_unverified(piece).ok().filter(|_| piece.ends_with(b"\n"));
            let Some(cp) = parsed else {
                if last {
                    break; // being written: wait for the rest
                }
                tracing::warn!(target: "audit", file = %path.display(),
                    "a note of checkpoints.notes that is not a checkpoint is not shipped");
                consumed += piece.len();
                continue;
            };
            if cp.checkpoint().size() > acked {
                break;
            }
            let skip = c.skip_smaller
                && c.remote.as_ref().is_some_and(|r| {
                    cp.checkpoint().size() < r.checkpoint().size()
                        || checkpoint_is_old(Some(r), &cp).unwrap_or(false)
                });
            if !skip {
                self.sink.send_checkpoint(&self.cfg.trail, &cp)?;
                summary.checkpoints += 1;
                c.remote = Some(cp);
            }
            consumed += piece.len();
        }
        c.offset += consumed as u64;
        Ok(())
    }

    fn unavailable(&self, summary: &mut Summary, backoff: &mut Duration) {
        self.shared.available.store(false, Ordering::Release);
        summary.retries += 1;
        std::thread::sleep(*backoff);
        *backoff = (*backoff * 2).min(self.cfg.max_backoff);
    }

    fn note_oldest(&self, pending: &VecDeque<Record>) {
        let us = pending.front().and_then(Record::ts).map_or(0, |t| t.timestamp_micros().max(1));
        self.shared.oldest_unacked_us.store(us, Ordering::Release);
    }

    /// Reads the remote's cursor, checks its last record against the local one, and returns
    /// a tailer positioned after it.
    fn resume(&mut self) -> Result<Tailer, Error> {
        let trail = self.cfg.trail.clone();
        let last = self.sink.last_acked(&trail)?.unwrap_or(0);
        self.shared.available.store(true, Ordering::Release);
        if last == 0 {
            self.shared.acked_seq.store(0, Ordering::Release);
            return Tailer::open(&self.cfg.dir, 0);
        }
        let remote = self.sink.read(&trail, last, 1)?;
        let remote = remote.into_iter().next().filter(|r| r.seq == last).ok_or_else(|| {
            Error::Sink(SinkError::Refused(format!(
                "the remote says its last seq is {last} but does not return it"
            )))
        })?;
        let mut tailer = Tailer::open(&self.cfg.dir, last - 1)?;
        let mut local = Vec::new();
        tailer.poll(1, &mut local)?;
        let Some(local) = local.pop() else {
            return Err(Error::RemoteAhead { trail, remote_last: last });
        };
        if local != remote {
            return Err(Error::Sink(SinkError::Fork { trail, seq: last }));
        }
        self.shared.acked_seq.store(last, Ordering::Release);
        self.shared.read_seq.fetch_max(last, Ordering::AcqRel);
        Ok(tailer)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::{find_last, NOTES_CHUNK};

    /// A file of `len` filler bytes with `note` written at each of `at`.
    fn file_with(len: usize, note: &[u8], at: &[usize]) -> std::fs::File {
        let mut bytes = vec![b'.'; len];
        for &a in at {
            bytes[a..a + note.len()].copy_from_slice(note);
        }
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        f
    }

    #[test]
    fn find_last_finds_the_last_copy_anywhere_even_across_a_chunk_boundary() {
        let note = b"origin\n42\nroot\n\n\xe2\x80\x94 key sig\n";
        let chunk = NOTES_CHUNK as usize;
        let len = 3 * chunk + 123;
        // Positions: at the start, in the middle, across the start of each backwards window
        // (window k starts at len - k * chunk + (k - 1) * (n - 1)), at the very end.
        let n = note.len();
        let mut places = vec![0, chunk / 2, len - n];
        for k in 1..=3 {
            let window_start = len - k * chunk + (k - 1) * (n - 1);
            for back in [1, n / 2, n - 1] {
                places.push(window_start - back);
            }
        }
        for &at in &places {
            let mut f = file_with(len, note, &[at]);
            assert_eq!(
                find_last(&mut f, len as u64, note).unwrap(),
                Some((at + note.len()) as u64),
                "at {at}"
            );
            // With an earlier copy too, the last one is found.
            if at > note.len() {
                let mut f = file_with(len, note, &[0, at]);
                assert_eq!(find_last(&mut f, len as u64, note).unwrap(), Some((at + note.len()) as u64));
            }
        }
        let mut f = file_with(len, note, &[]);
        assert_eq!(find_last(&mut f, len as u64, note).unwrap(), None, "absent");
        let mut f = file_with(10, b"", &[]);
        assert_eq!(find_last(&mut f, 10, note).unwrap(), None, "longer than the file");
        // Only the first `len` bytes count (a copy beyond them is not there yet).
        let mut f = file_with(len, note, &[len - note.len()]);
        assert_eq!(find_last(&mut f, (len - 1) as u64, note).unwrap(), None);
    }
}
