//! Checks a trail: every line against the exact schema of its kind, every hash, every link
//! (across segments), contiguous `seq`, segment headers. `docs/AUDIT_FORMAT.md` §6 is the
//! normative description of what is checked and of every verdict. Used by the
//! `map-wrapper-audit` binary; usable from code.
//!
//! ```
//! use map_wrapper::audit::{verify, Auditor, JsonLinesSink};
//! use map_wrapper::MapWrapper;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let sink = JsonLinesSink::open(dir.path(), Default::default()).unwrap();
//! let map: MapWrapper<u8, u8> = MapWrapper::builder().auditor(Auditor::new(sink)).build()?;
//! map.insert(1, 1)?;
//! drop(map); // closes the sink: an `audit_stop` record, synced
//! let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
//! assert_eq!(report.verdict, verify::Verdict::Intact);
//! assert_eq!(report.records, 3); // audit_start, insert, audit_stop
//! # Ok::<(), map_wrapper::MapError>(())
//! ```

mod line;

use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::file::{list_segments, parse_segment_file_name};
use super::record::{AuditRecord, DOMAIN};

/// The longest line a verifier accepts, `\n` excluded: 64 MiB (see the format spec). A longer
/// line is reported as tampering; the writer never writes one (values are capped at
/// [`MAX_VALUE_BYTES`](crate::audit::MAX_VALUE_BYTES)).
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// How to verify.
#[derive(Clone, Default)]
pub struct VerifyOptions {
    /// The HMAC key of an HMAC-chained trail. Without it such a trail cannot be verified
    /// (an error, not a verdict); with it, a trail that is not HMAC-chained is tampered.
    pub hmac_key: Option<Vec<u8>>,
    /// The trail does not start at its beginning (older segments were pruned on purpose):
    /// the `prev` the first line must carry, i.e. the hash of the last line before it, kept
    /// from the pruned part. Without it a trail must start at segment 1, `seq` 1, with
    /// `prev` = `GENESIS`: a trail whose oldest segments were removed is tampered.
    pub expect_prev: Option<String>,
    /// Called after each file is checked with (files checked, files in all): the
    /// `map-wrapper-audit` binary draws its progress bar with it.
    pub progress: Option<Progress>,
    /// Also check the trail's signed checkpoints (its `checkpoints.notes`, checkpoints kept
    /// elsewhere, a verifier state file) against its records, in the same pass: see
    /// [`CheckpointRun`](crate::audit::checkpoint::CheckpointRun). A checkpoint the trail does
    /// not hold makes it [`Verdict::Tampered`]; an overdue one [`Verdict::Stale`]. The
    /// checkpoints' signatures and the Merkle tree (leaf and node hashes) are checked on
    /// helper threads while the records are read, so on a second core the check costs little
    /// wall time. Unusable checkpoint inputs (an external checkpoint or a state file that is
    /// unreadable or untrusted) make the verification an error, as before any record is read;
    /// the records are still read (and progress reported) first.
    pub checkpoints: Option<crate::audit::checkpoint::CheckpointCheckOptions>,
}

/// A progress callback: (files checked, files in all).
pub type Progress = std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>;

/// Hides the HMAC key (its length only).
impl std::fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("hmac_key", &self.hmac_key.as_ref().map(|k| format!("<{} bytes>", k.len())))
            .field("expect_prev", &self.expect_prev)
            .field("progress", &self.progress.is_some())
            .field("checkpoints", &self.checkpoints)
            .finish()
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every line, hash, link and sequence number checks out.
    Intact,
    /// Intact except for a last line cut short (a crash during a write); the sink repairs
    /// it when it reopens the trail.
    TornTail,
    /// Something was changed, removed, reordered or added.
    Tampered,
    /// Intact, but its latest checkpoint is past its heartbeat and the trail does not end
    /// with `audit_stop`: the writer stopped checkpointing, or newer checkpoints were
    /// removed (only with [`VerifyOptions::checkpoints`]).
    Stale,
}

impl Verdict {
    /// The exit status of `map-wrapper-audit verify`: 0 intact, 1 tampered, 2 torn tail only,
    /// 4 stale.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Intact => 0,
            Verdict::Tampered => 1,
            Verdict::TornTail => 2,
            Verdict::Stale => 4,
        }
    }
}

/// Where and what the first problem is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file.
    pub file: String,
    /// Byte offset of the line in the file.
    pub offset: u64,
    /// Line number in the file (1-based).
    pub line: u64,
    /// The seq of the bad record (or the seq expected there when the line has none).
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

/// What verification found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// Segment files read.
    pub segments: u64,
    /// Records checked (headers not counted).
    pub records: u64,
    /// First and last seq seen.
    pub first_seq: Option<u64>,
    /// Last seq checked intact.
    pub last_seq: Option<u64>,
    /// Hash of the last intact line.
    pub last_hash: Option<String>,
    /// `sha256` or `hmac-sha256`.
    pub chain: String,
    /// The first problem (tampering), if any.
    pub problem: Option<Problem>,
    /// The torn last line, if any.
    pub torn_tail: Option<Problem>,
    /// Facts worth knowing that are not problems.
    pub notes: Vec<String>,
    /// What the checkpoint checks found (with [`VerifyOptions::checkpoints`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<crate::audit::checkpoint::CheckpointFindings>,
}

impl Report {
    /// One line a script can read: `INTACT …`, `TORN_TAIL …` or `TAMPERED …`.
    pub fn verdict_line(&self) -> String {
        if let (Verdict::Stale, Some(c)) = (&self.verdict, &self.checkpoints) {
            return format!(
                "STALE records={} last_seq={}: {}",
                self.records,
                self.last_seq.map_or_else(|| "-".into(), |s| s.to_string()),
                c.stale.as_deref().unwrap_or("")
            );
        }
        match (&self.verdict, &self.problem, &self.torn_tail) {
            (Verdict::Tampered, Some(p), _) => format!(
                "TAMPERED first_bad_seq={} file={} offset={} line={}: {}",
                p.seq.map_or_else(|| "-".into(), |s| s.to_string()),
                p.file,
                p.offset,
                p.line,
                p.what
            ),
            (Verdict::TornTail, _, Some(t)) => format!(
                "TORN_TAIL records={} last_seq={} file={} offset={}: {}",
                self.records,
                self.last_seq.map_or_else(|| "-".into(), |s| s.to_string()),
                t.file,
                t.offset,
                t.what
            ),
            _ => format!(
                "INTACT records={} segments={} seq={}..{} chain={}",
                self.records,
                self.segments,
                self.first_seq.map_or_else(|| "-".into(), |s| s.to_string()),
                self.last_seq.map_or_else(|| "-".into(), |s| s.to_string()),
                self.chain
            ),
        }
    }

    /// A report a person can read (several lines).
    pub fn human(&self) -> String {
        let mut s = self.verdict_line();
        s.push('\n');
        s.push_str(&format!(
            "  segments: {}\n  records:  {}\n  chain:    {}\n",
            self.segments, self.records, self.chain
        ));
        if let Some(h) = &self.last_hash {
            s.push_str(&format!("  last hash (intact): {h}\n"));
        }
        if let Some(p) = &self.problem {
            s.push_str(&format!(
                "  first problem: {} at byte {} (line {}), seq {}: {}\n",
                p.file,
                p.offset,
                p.line,
                p.seq.map_or_else(|| "-".into(), |s| s.to_string()),
                p.what
            ));
        }
        if let Some(t) = &self.torn_tail {
            s.push_str(&format!("  torn tail: {} at byte {}: {}\n", t.file, t.offset, t.what));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }
}

/// Why a trail could not be verified at all (exit status 3).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The request cannot be answered (no files, HMAC trail without a key, …).
    #[error("{0}")]
    Usage(String),
}

/// Bytes read from a file at a time; the buffer grows past this only for a longer line.
const READ_BUF: usize = 1 << 20;

/// The most of a file's first line read to find its segment header (headers are under
/// 1 KiB unless their key id is very long).
const MAX_HEADER_READ: u64 = 64 << 10;

/// Reads a 64-hex-digit hash as the format writes it (a `--expect-prev` value): exactly 64
/// hex digits, either case (returned in lowercase), nothing else.
///
/// ```
/// use map_wrapper::audit::verify::parse_hash;
/// assert!(parse_hash(&"Ab".repeat(32)).is_ok());
/// assert!(parse_hash("abc").is_err());
/// ```
pub fn parse_hash(s: &str) -> Result<String, VerifyError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(VerifyError::Usage(format!(
            "{s:?} is not a hash: a hash is exactly 64 hex digits (the \"hash\" of the last line before the kept part)"
        )))
    }
}

/// Reads the text of an HMAC key file: the key in hex (either case, an even number of digits,
/// at least one byte), surrounding ASCII whitespace ignored.
pub fn parse_hmac_key(text: &str) -> Result<Vec<u8>, VerifyError> {
    match super::record::from_hex(text.trim_matches(|c: char| c.is_ascii_whitespace())) {
        Some(key) if !key.is_empty() => Ok(key),
        _ => Err(VerifyError::Usage("the HMAC key file must hold the key in hex".into())),
    }
}

/// Expands directories into their segment files and puts the files in trail order.
///
/// When every file has a canonical segment name (`segment-NNNNNN.jsonl`), the files are
/// ordered by number, whatever the order given; two files with one number are a usage error.
/// When none has, they stay in the order given. A mix of both is a usage error.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VerifyError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let segs = list_segments(p).map_err(|source| VerifyError::Io { path: p.clone(), source })?;
            if segs.is_empty() {
                return Err(VerifyError::Usage(format!("{} holds no segment-*.jsonl file", p.display())));
            }
            files.extend(segs.into_iter().map(|(_, path)| path));
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        return Err(VerifyError::Usage("no file to verify".into()));
    }
    let named = files.iter().filter(|f| segment_of(f).is_some()).count();
    if named == files.len() {
        files.sort_by_key(|f| segment_of(f));
        if let Some(w) = files.windows(2).find(|w| segment_of(&w[0]) == segment_of(&w[1])) {
            return Err(VerifyError::Usage(format!(
                "two files for one segment: {} and {}",
                w[0].display(),
                w[1].display()
            )));
        }
    } else if named > 0 {
        return Err(VerifyError::Usage(
            "segment files (ordered by their number) and other files (taken in the order given) are mixed: give \
             one kind"
                .into(),
        ));
    }
    Ok(files)
}

/// Verifies the trail made of `paths` (files and directories of segments; see
/// [`collect_files`] for the order).
///
/// One pass (with [`VerifyOptions::checkpoints`], a helper thread checks them alongside):
/// every file is streamed through one buffer (1 MiB, more only for a
/// line longer than that, up to the line limit), so memory does not grow with the size or
/// the number of segments. A path that is not a regular file (a FIFO, a device, a directory
/// named like a segment) is never opened for reading: it is tampering at that file.
pub fn verify_paths(paths: &[PathBuf], opts: &VerifyOptions) -> Result<Report, VerifyError> {
    let files = collect_files(paths)?;
    run(&Sources::Paths(&files), opts, false)
}

/// Verifies a trail given as `(name, bytes)` pieces in the order given: segment files, or
/// the text of a [`MemorySink`](crate::audit::MemorySink). A trail whose first line is a
/// record is a *headerless* trail (a `MemorySink`'s: plain SHA-256, no segment header in
/// any piece); on disk, every segment starts with a header.
pub fn verify_bytes(files: &[(String, Vec<u8>)], opts: &VerifyOptions) -> Result<Report, VerifyError> {
    run(&Sources::Bytes(files), opts, true)
}

enum Sources<'a> {
    Paths(&'a [PathBuf]),
    Bytes(&'a [(String, Vec<u8>)]),
}

/// One file, opened.
enum Opened<'a> {
    File(std::fs::File, u64),
    Bytes(&'a [u8]),
    /// Not a regular file: what it is.
    NotRegular(&'static str),
}

impl Sources<'_> {
    fn len(&self) -> usize {
        match self {
            Sources::Paths(p) => p.len(),
            Sources::Bytes(b) => b.len(),
        }
    }

    fn name(&self, i: usize) -> String {
        match self {
            Sources::Paths(p) => p[i].display().to_string(),
            Sources::Bytes(b) => b[i].0.clone(),
        }
    }

    fn segment_number(&self, i: usize) -> Option<u64> {
        match self {
            Sources::Paths(p) => segment_of(&p[i]),
            Sources::Bytes(b) => parse_segment_file_name(Path::new(&b[i].0).file_name()?.to_str()?),
        }
    }

    fn open(&self, i: usize) -> Result<Opened<'_>, VerifyError> {
        match self {
            Sources::Bytes(b) => Ok(Opened::Bytes(&b[i].1)),
            Sources::Paths(p) => open_regular(&p[i]),
        }
    }
}

/// Reads the first line of an opened file (at most [`MAX_HEADER_READ`] bytes, `\n`
/// excluded) into `line`, without moving the file's position.
fn peek_first_line(opened: &Opened<'_>, line: &mut Vec<u8>) -> std::io::Result<()> {
    line.clear();
    match opened {
        Opened::Bytes(b) => {
            let b = &b[..b.len().min(MAX_HEADER_READ as usize)];
            line.extend_from_slice(&b[..memchr::memchr(b'\n', b).unwrap_or(b.len())]);
        }
        Opened::File(f, len) => {
            // Small reads first: a header is a few hundred bytes, a segment may be small.
            let mut chunk = [0u8; 4096];
            let mut at = 0u64;
            while at < (*len).min(MAX_HEADER_READ) {
                #[cfg(unix)]
                let n = std::os::unix::fs::FileExt::read_at(f, &mut chunk, at)?;
                #[cfg(not(unix))]
                let n = std::os::windows::fs::FileExt::seek_read(f, &mut chunk, at)?;
                if n == 0 {
                    break;
                }
                if let Some(e) = memchr::memchr(b'\n', &chunk[..n]) {
                    line.extend_from_slice(&chunk[..e]);
                    break;
                }
                line.extend_from_slice(&chunk[..n]);
                at += n as u64;
            }
        }
        Opened::NotRegular(_) => {}
    }
    Ok(())
}

/// Opens `path` for reading only if it is a regular file (after following symbolic links),
/// without blocking on a FIFO.
fn open_regular(path: &Path) -> Result<Opened<'static>, VerifyError> {
    let io = |source| VerifyError::Io { path: path.to_path_buf(), source };
    let what = |t: std::fs::FileType| -> Option<&'static str> {
        if t.is_file() {
            return None;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if t.is_fifo() {
                return Some("a FIFO");
            }
            if t.is_char_device() || t.is_block_device() {
                return Some("a device");
            }
            if t.is_socket() {
                return Some("a socket");
            }
        }
        Some(if t.is_dir() { "a directory" } else { "not a regular file" })
    };
    if let Some(w) = what(std::fs::metadata(path).map_err(io)?.file_type()) {
        return Ok(Opened::NotRegular(w));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Replaced by a FIFO between the check and the open: do not wait for a writer.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if let Some(w) = what(meta.file_type()) {
        return Ok(Opened::NotRegular(w));
    }
    Ok(Opened::File(file, meta.len()))
}

/// The chain's hash function, keyed once (an HMAC state is cloned per line, not re-keyed).
#[derive(Clone)]
enum Hasher {
    Sha256,
    Hmac(Box<Hmac<Sha256>>),
}

impl Hasher {
    fn hash(&self, prev: &[u8; 64], head: &[u8]) -> [u8; 32] {
        match self {
            Hasher::Sha256 => {
                let mut h = Sha256::new();
                h.update(DOMAIN);
                h.update(prev);
                h.update(b"\n");
                h.update(head);
                h.update(b"}");
                h.finalize().into()
            }
            Hasher::Hmac(keyed) => {
                let mut m = (**keyed).clone();
                m.update(DOMAIN);
                m.update(prev);
                m.update(b"\n");
                m.update(head);
                m.update(b"}");
                m.finalize().into_bytes().into()
            }
        }
    }
}

/// Lowercase hex of a digest, without allocating.
fn hex32(d: &[u8; 32]) -> [u8; 64] {
    // Arithmetic, not a table: the compiler does all 64 digits in vector registers.
    let digit = |n: u8| n + b'0' + (9u8.wrapping_sub(n) >> 7) * (b'a' - b'0' - 10);
    let mut out = [0u8; 64];
    for (o, b) in out.chunks_exact_mut(2).zip(d) {
        o[0] = digit(b >> 4);
        o[1] = digit(b & 15);
    }
    out
}

fn hex_str(h: &[u8; 64]) -> String {
    String::from_utf8_lossy(h).into_owned()
}

/// What a file's reader found next.
enum Next {
    /// A complete line: its range in the buffer (without `\n`).
    Line(std::ops::Range<usize>),
    /// No more bytes.
    End,
    /// Bytes with no `\n` after them, at the end: how many.
    Unterminated(u64),
    /// A line over the limit (ended or not).
    OverLimit(u64),
    /// A line too long for the buffer that is already known to be bad (its error), and
    /// whether a `\n` ends it.
    BadLong(line::LineError),
}

/// Streams one file's lines through a reused buffer.
struct LineReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes after `start` known to hold no `\n`.
    scanned: usize,
    eof: bool,
}

impl LineReader {
    fn new() -> Self {
        LineReader { buf: vec![0; READ_BUF], start: 0, end: 0, scanned: 0, eof: false }
    }

    fn reset(&mut self) {
        (self.start, self.end, self.scanned, self.eof) = (0, 0, 0, false);
        if self.buf.len() > READ_BUF {
            // A long line needed more: give it back.
            self.buf = vec![0; READ_BUF];
        }
    }

    fn next(&mut self, src: &mut dyn Read) -> std::io::Result<Next> {
        loop {
            let from = self.start + self.scanned;
            if let Some(p) = memchr::memchr(b'\n', &self.buf[from..self.end]) {
                let line = self.start..from + p;
                if line.len() > MAX_LINE_BYTES {
                    return Ok(Next::OverLimit(line.len() as u64));
                }
                self.start = from + p + 1;
                self.scanned = 0;
                return Ok(Next::Line(line));
            }
            let pending = self.end - self.start;
            self.scanned = pending;
            if pending > MAX_LINE_BYTES {
                return Ok(Next::OverLimit(pending as u64));
            }
            if self.eof {
                return Ok(if pending == 0 { Next::End } else { Next::Unterminated(pending as u64) });
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, pending);
            }
            if self.end == self.buf.len() {
                // A line longer than the buffer: if what is there already breaks the format,
                // do not keep it (a huge or endless bad line costs no memory); else grow.
                if let Err(e @ line::LineError::Bad(..)) = line::parse(&self.buf[..self.end], &mut None) {
                    return self.skip_bad_line(src, e);
                }
                let len = (self.buf.len() * 2).min(MAX_LINE_BYTES + 1);
                self.buf.resize(len, 0);
            }
            let n = src.read(&mut self.buf[self.end..])?;
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }

    /// Reads on to the end of a line known to be bad (without keeping it).
    fn skip_bad_line(&mut self, src: &mut dyn Read, e: line::LineError) -> std::io::Result<Next> {
        let mut len = (self.end - self.start) as u64;
        loop {
            let n = src.read(&mut self.buf)?;
            if n == 0 {
                return Ok(if len > MAX_LINE_BYTES as u64 {
                    Next::OverLimit(len)
                } else {
                    Next::Unterminated(len)
                });
            }
            let nl = memchr::memchr(b'\n', &self.buf[..n]);
            len += nl.unwrap_or(n) as u64;
            if len > MAX_LINE_BYTES as u64 {
                return Ok(Next::OverLimit(len));
            }
            if nl.is_some() {
                return Ok(Next::BadLong(e));
            }
        }
    }
}

/// The `seq` the next record must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextSeq {
    /// Not known yet: the trail's first record (1 unless the trail was pruned).
    Unknown,
    Want(u64),
    /// The last record had seq u64::MAX: nothing may follow.
    Exhausted,
}

/// Where a line is, for a report.
#[derive(Clone, Copy)]
struct At<'a> {
    file: &'a str,
    offset: u64,
    line: u64,
}

/// The state of the chain while the trail is read, line by line.
struct State<'o> {
    opts: &'o VerifyOptions,
    expect_prev: Option<[u8; 64]>,
    /// Bytes mode: a trail whose first line is a record is headerless.
    bytes_mode: bool,
    headerless: Option<bool>,
    hasher: Option<Hasher>,
    /// The first header's `chain` and raw `key_id`: every header must repeat them.
    chain_of_trail: Option<(&'static str, Vec<u8>)>,
    prev: Option<[u8; 64]>,
    next_seq: NextSeq,
    segment: Option<u64>,
    /// Records in the current file.
    file_records: u64,
    report: Report,
    /// With checkpoint checks: the record lines go to a helper thread in batches.
    leaves: Option<LeafFeed>,
}

/// Record lines on their way to the checkpoint checks, on a helper thread (the leaf hashes
/// cost as much as the chain's: in parallel, they cost little wall time). Batches go back
/// to be refilled: at most [`LEAF_BATCHES`] exist, so memory stays bounded.
struct LeafFeed {
    batch: Vec<u8>,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    /// Batches the helper is done with.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<Result<crate::audit::checkpoint::CheckpointRun, VerifyError>>,
}

/// Leaves kept while the checkpoints are being opened: 8 MiB (about 0.1 s of records).
const EARLY_LEAVES: usize = 1 << 18;

/// Leaf hashes computed before the checkpoints were opened, with the record lines that
/// matter to the checks: the first (its `seq`) and the last (`audit_stop` or not).
#[derive(Default)]
struct Early {
    leaves: Vec<crate::audit::merkle::Hash>,
    first: Vec<u8>,
    last: Vec<u8>,
}

impl Early {
    fn push(&mut self, line: &[u8], leaf: crate::audit::merkle::Hash) {
        if self.leaves.is_empty() {
            self.first = line.to_vec();
        }
        self.leaves.push(leaf);
        self.last.clear();
        self.last.extend_from_slice(line);
    }

    /// Hands the leaves over, in order, and frees them.
    fn flush(&mut self, run: &mut crate::audit::checkpoint::CheckpointRun) {
        let Early { leaves, first, last } = std::mem::take(self);
        let n = leaves.len();
        for (i, leaf) in leaves.into_iter().enumerate() {
            if i == 0 {
                run.push_line_with_leaf(&first, leaf);
            } else if i + 1 == n {
                run.push_line_with_leaf(&last, leaf);
            } else {
                run.push_leaf(leaf);
            }
        }
    }
}

/// Lines sent to the helper at once.
const LEAF_BATCH_BYTES: usize = 256 << 10;

/// Batches in all: one being filled, the rest queued or being hashed.
const LEAF_BATCHES: usize = 4;

impl LeafFeed {
    /// Starts the helper, which first reads the checkpoints (`CheckpointRun::new`) and says
    /// on the returned channel whether they can be used.
    fn start(
        opts: crate::audit::checkpoint::CheckpointCheckOptions,
    ) -> Result<(Self, std::sync::mpsc::Receiver<Result<(), VerifyError>>), VerifyError> {
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(LEAF_BATCHES);
        let (back, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(LEAF_BATCHES);
        for _ in 1..LEAF_BATCHES {
            let _ = back.send(Vec::with_capacity(LEAF_BATCH_BYTES + 4096));
        }
        let thread = std::thread::Builder::new()
            .name("audit-verify-merkle".into())
            .spawn(move || {
                use crate::audit::checkpoint::CheckpointRun;
                let unusable = |e: crate::audit::anchor::AnchorError| VerifyError::Usage(e.to_string());
                // The checkpoints are opened (a signature check each, ~0.1 ms) on a thread of
                // their own: meanwhile the leaves are hashed and kept ([`EARLY_LEAVES`] at most),
                // so the verifier does not wait for the signatures.
                let open = move || {
                    let run = CheckpointRun::new(&opts);
                    let _ = ready_tx.send(run.as_ref().map(|_| ()).map_err(|e| unusable(e.clone())));
                    run.map_err(unusable)
                };
                let opening = std::thread::Builder::new().name("audit-verify-checkpoints".into()).spawn(open);
                let mut opening = match opening {
                    Ok(h) => Some(h),
                    Err(e) => {
                        return Err(VerifyError::Usage(format!("cannot start the checkpoint thread: {e}")))
                    }
                };
                let mut run: Option<CheckpointRun> = None;
                let mut early = Early::default();
                let opened = |opening: &mut Option<std::thread::JoinHandle<_>>,
                              early: &mut Early|
                 -> Result<CheckpointRun, VerifyError> {
                    let h: std::thread::JoinHandle<Result<CheckpointRun, VerifyError>> =
                        opening.take().expect("opened once");
                    let mut run = h
                        .join()
                        .map_err(|_| VerifyError::Usage("the checkpoint thread panicked".into()))??;
                    early.flush(&mut run);
                    Ok(run)
                };
                for mut batch in rx {
                    if run.is_none()
                        && (early.leaves.len() >= EARLY_LEAVES
                            || opening.as_ref().is_some_and(|h| h.is_finished()))
                    {
                        run = Some(opened(&mut opening, &mut early)?);
                    }
                    let mut start = 0;
                    for end in memchr::memchr_iter(b'\n', &batch) {
                        let line = &batch[start..end];
                        start = end + 1;
                        let leaf = crate::audit::merkle::leaf_hash(line);
                        match &mut run {
                            Some(run) => run.push_line_with_leaf(line, leaf),
                            None => early.push(line, leaf),
                        }
                    }
                    batch.clear();
                    // Refused only when the verifier is gone.
                    let _ = back.try_send(batch);
                }
                match run {
                    Some(run) => Ok(run),
                    None => opened(&mut opening, &mut early),
                }
            })
            .map_err(|e| VerifyError::Usage(format!("cannot start the checkpoint thread: {e}")))?;
        Ok((LeafFeed { batch: Vec::with_capacity(LEAF_BATCH_BYTES + 4096), tx, spare, thread }, ready))
    }

    fn push(&mut self, line: &[u8]) {
        self.batch.extend_from_slice(line);
        self.batch.push(b'\n');
        if self.batch.len() >= LEAF_BATCH_BYTES {
            // Waits for a batch the helper is done with: the helper keeps up or the verifier waits.
            let next = self.spare.recv().unwrap_or_default();
            let full = std::mem::replace(&mut self.batch, next);
            // The helper only ends when the sender is dropped; a send fails only if it panicked.
            let _ = self.tx.send(full);
        }
    }

    fn finish(self) -> Result<crate::audit::checkpoint::CheckpointFindings, VerifyError> {
        let LeafFeed { batch, tx, spare, thread } = self;
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        drop(tx);
        drop(spare);
        let run =
            thread.join().map_err(|_| VerifyError::Usage("the checkpoint thread panicked".into()))??;
        run.finish().map_err(|e| VerifyError::Usage(e.to_string()))
    }
}

/// A problem with a line: the seq to report and what is wrong.
type Bad = (Option<u64>, String);

type Check = Result<(), Bad>;

impl<'o> State<'o> {
    fn expected_seq(&self) -> Option<u64> {
        match self.next_seq {
            NextSeq::Want(s) => Some(s),
            NextSeq::Unknown if self.expect_prev.is_none() => Some(1),
            _ => None,
        }
    }

    fn problem(&mut self, at: At<'_>, seq: Option<u64>, what: String) {
        if self.report.problem.is_none() {
            self.report.problem =
                Some(Problem { file: at.file.to_string(), offset: at.offset, line: at.line, seq, what });
        }
    }

    /// Checks one complete line. `prev_file`: (bytes of the previous file that belong to
    /// the trail, its full length, its name) when this is the first line of a file after
    /// another.
    fn line(
        &mut self,
        raw: &[u8],
        at: At<'_>,
        segment_in_name: Option<u64>,
        prev_file: Option<(u64, u64, &str)>,
    ) -> Result<Check, VerifyError> {
        let mut seq_seen = None;
        let parsed = match line::parse(raw, &mut seq_seen) {
            Ok(l) => l,
            Err(line::LineError::Bad(what, col)) => {
                return Ok(Err((
                    seq_seen.or(self.expected_seq()),
                    format!("{what} (byte {col} of the line)"),
                )))
            }
            Err(line::LineError::Truncated) => {
                return Ok(Err((
                    seq_seen.or(self.expected_seq()),
                    "the line ends before its object does".into(),
                )))
            }
        };
        let first_in_file = at.line == 1;
        let seq = match parsed.kind {
            line::Kind::Header(h) => {
                if !first_in_file {
                    return Ok(Err((self.expected_seq(), "a segment header in the middle of a file".into())));
                }
                if self.headerless == Some(true) {
                    return Ok(Err((
                        self.expected_seq(),
                        "a segment header in a trail without headers".into(),
                    )));
                }
                self.headerless = Some(false);
                if let Err(e) = self.header(&h, at, segment_in_name, prev_file)? {
                    return Ok(Err(e));
                }
                None
            }
            line::Kind::Record { seq } => {
                if first_in_file {
                    let headerless_start = self.bytes_mode && self.headerless.is_none();
                    if !(headerless_start || self.headerless == Some(true)) {
                        return Ok(Err((
                            Some(seq),
                            format!("{} does not start with a segment header", at.file),
                        )));
                    }
                    if headerless_start {
                        if self.opts.hmac_key.is_some() {
                            return Ok(Err((
                                Some(seq),
                                format!(
                                    "{} has no segment header (an HMAC trail's segments all start with one)",
                                    at.file
                                ),
                            )));
                        }
                        self.headerless = Some(true);
                        self.hasher = Some(Hasher::Sha256);
                        self.report.chain = "sha256".into();
                    }
                }
                match self.next_seq {
                    NextSeq::Want(want) if seq != want => {
                        return Ok(Err((Some(seq), format!("seq {seq} where {want} was expected"))))
                    }
                    NextSeq::Unknown if seq != 1 && self.expect_prev.is_none() => {
                        return Ok(Err((Some(seq), format!("the trail starts at seq {seq}, not 1"))))
                    }
                    NextSeq::Exhausted => {
                        return Ok(Err((Some(seq), "seq overflow: no record can follow seq u64::MAX".into())))
                    }
                    _ => {}
                }
                Some(seq)
            }
        };
        let want_prev = self.prev.or(self.expect_prev).unwrap_or(GENESIS_BYTES);
        if *parsed.prev != want_prev {
            return Ok(Err((
                seq.or(self.expected_seq()),
                format!(
                    "\"prev\" is {}, but the previous line's hash is {}",
                    hex_str(parsed.prev),
                    hex_str(&want_prev)
                ),
            )));
        }
        let hasher = self.hasher.as_ref().expect("set by the header or the headerless start");
        let computed = hex32(&hasher.hash(parsed.prev, parsed.head));
        if computed != *parsed.hash {
            return Ok(Err((
                seq.or(self.expected_seq()),
                format!(
                    "the hash does not match the line's content (computed {}, stored {})",
                    hex_str(&computed),
                    hex_str(parsed.hash)
                ),
            )));
        }
        self.prev = Some(*parsed.hash);
        match seq {
            Some(seq) => {
                self.next_seq = seq.checked_add(1).map_or(NextSeq::Exhausted, NextSeq::Want);
                self.report.records += 1;
                self.report.first_seq.get_or_insert(seq);
                self.report.last_seq = Some(seq);
                self.file_records += 1;
                if let Some(f) = &mut self.leaves {
                    f.push(raw);
                }
            }
            None => {
                if let line::Kind::Header(h) = &parsed.kind {
                    self.next_seq = NextSeq::Want(h.first_seq);
                    self.segment = Some(h.segment);
                }
            }
        }
        Ok(Ok(()))
    }

    /// The checks of a segment header that depend on the trail (§6, rule 2).
    fn header(
        &mut self,
        h: &line::Header<'_>,
        at: At<'_>,
        segment_in_name: Option<u64>,
        prev_file: Option<(u64, u64, &str)>,
    ) -> Result<Check, VerifyError> {
        let trail_start = self.chain_of_trail.is_none();
        let seq_here = match self.next_seq {
            NextSeq::Unknown if self.expect_prev.is_some() => Some(h.first_seq),
            _ => self.expected_seq(),
        };
        let bad = |what: String| -> Result<Check, VerifyError> { Ok(Err((seq_here, what))) };
        let chain: &'static str = if h.chain == "sha256" { "sha256" } else { "hmac-sha256" };
        match &self.chain_of_trail {
            None => {
                match (chain, &self.opts.hmac_key) {
                    ("sha256", None) => self.hasher = Some(Hasher::Sha256),
                    ("hmac-sha256", Some(k)) => {
                        let keyed =
                            <Hmac<Sha256> as Mac>::new_from_slice(k).expect("HMAC takes any key length");
                        self.hasher = Some(Hasher::Hmac(Box::new(keyed)));
                    }
                    ("hmac-sha256", None) => {
                        return Err(VerifyError::Usage(format!(
                            "{} is HMAC-chained (key id {}): pass its key with --hmac-key-file",
                            at.file,
                            String::from_utf8_lossy(h.key_id)
                        )))
                    }
                    _ => return bad(
                        "an HMAC key was given but this segment claims a plain SHA-256 chain (a downgrade)"
                            .into(),
                    ),
                }
                self.chain_of_trail = Some((chain, h.key_id.to_vec()));
                self.report.chain = chain.into();
            }
            Some((c, id)) if *c != chain || id.as_slice() != h.key_id => {
                return bad(format!(
                    "the header switches the chain to {chain} (key id {}); the trail is {c} (key id {})",
                    String::from_utf8_lossy(h.key_id),
                    String::from_utf8_lossy(id)
                ))
            }
            Some(_) => {}
        }
        if segment_in_name.is_some_and(|n| n != h.segment) {
            return bad(format!("the header says segment {}, but the file is {}", h.segment, at.file));
        }
        match self.segment {
            Some(prev) if Some(h.segment) != prev.checked_add(1) => {
                return bad(format!("segment {} follows segment {prev}", h.segment))
            }
            None if trail_start && self.expect_prev.is_none() && h.segment != 1 => {
                let missing = if h.segment == 2 {
                    "segment 1 is missing".to_string()
                } else {
                    format!("segments 1 to {} are missing ({} segments)", h.segment - 1, h.segment - 1)
                };
                return Ok(Err((
                    Some(1),
                    format!(
                        "the trail starts at segment {}: {missing} (a trail pruned on purpose is verified with \
                         the hash it continues from: --expect-prev)",
                        h.segment
                    ),
                )));
            }
            _ => {}
        }
        match self.next_seq {
            NextSeq::Want(want) if want != h.first_seq => {
                return bad(format!("the header's first_seq is {}, expected {want}", h.first_seq))
            }
            NextSeq::Exhausted => {
                return bad("a segment after the record with seq u64::MAX: no record can follow it".into())
            }
            NextSeq::Unknown if self.expect_prev.is_none() && h.first_seq != 1 => {
                return bad(format!("the trail's first header has first_seq {}, not 1", h.first_seq))
            }
            _ => {}
        }
        match prev_file {
            Some((limit, full_len, prev_name)) => {
                let fits = h.prev_len == full_len || (h.recovered && h.prev_len == limit && limit < full_len);
                if !fits {
                    return bad(format!(
                        "the header says the previous segment is {} bytes long{}, but {prev_name} is {full_len} bytes",
                        h.prev_len,
                        if h.recovered { " (recovered)" } else { "" }
                    ));
                }
            }
            None if trail_start && self.expect_prev.is_none() && (h.prev_len != 0 || h.recovered) => {
                return bad("segment 1's header must have prev_len 0 and recovered false".into());
            }
            None => {}
        }
        if trail_start {
            if let Some(anchor) = &self.expect_prev {
                self.report.notes.push(format!(
                    "the trail starts at segment {} (seq {}), continuing from the given prev {}",
                    h.segment,
                    h.first_seq,
                    hex_str(anchor)
                ));
            }
        }
        Ok(Ok(()))
    }
}

const GENESIS_BYTES: [u8; 64] = [b'0'; 64];

fn run(sources: &Sources<'_>, opts: &VerifyOptions, bytes_mode: bool) -> Result<Report, VerifyError> {
    let expect_prev = match &opts.expect_prev {
        Some(h) => Some(<[u8; 64]>::try_from(parse_hash(h)?.as_bytes()).expect("64 bytes")),
        None => None,
    };
    // The checkpoints are read and their signatures checked on the helper thread while the
    // records are read here.
    let (leaves, ready) = match &opts.checkpoints {
        Some(c) => {
            let (feed, ready) = LeafFeed::start(c.clone())?;
            (Some(feed), Some(ready))
        }
        None => (None, None),
    };
    match (pass(sources, opts, bytes_mode, expect_prev, leaves), ready) {
        // Unusable checkpoint inputs are the error, whatever else went wrong (they were
        // read before the records once, and still come first).
        (Err(e), Some(ready)) => match ready.recv() {
            Ok(Err(unusable)) => Err(unusable),
            _ => Err(e),
        },
        (result, _) => result,
    }
}

/// The pass over the records (see [`run`]).
fn pass(
    sources: &Sources<'_>,
    opts: &VerifyOptions,
    bytes_mode: bool,
    expect_prev: Option<[u8; 64]>,
    leaves: Option<LeafFeed>,
) -> Result<Report, VerifyError> {
    // Pieces without segment names may be a headerless trail (a MemorySink's text).
    let bytes_mode = bytes_mode && (0..sources.len()).all(|i| sources.segment_number(i).is_none());
    let mut st = State {
        opts,
        expect_prev,
        bytes_mode,
        headerless: None,
        hasher: None,
        chain_of_trail: None,
        prev: None,
        next_seq: NextSeq::Unknown,
        segment: None,
        file_records: 0,
        report: Report {
            verdict: Verdict::Intact,
            segments: 0,
            records: 0,
            first_seq: None,
            last_seq: None,
            last_hash: None,
            chain: "sha256".into(),
            problem: None,
            torn_tail: None,
            notes: Vec::new(),
            checkpoints: None,
        },
        leaves,
    };
    let n = sources.len();
    let mut reader = LineReader::new();
    // (bytes of the previous file that belong to the trail, its length, its name)
    let mut prev_file: Option<(u64, u64, String)> = None;
    let mut last_file_lines = 0u64;
    // The next file, opened early to read its header (a recovered segment's header says
    // where this file's lines end), and its first line.
    let mut next_opened: Option<Opened<'_>> = None;
    let mut first = Vec::new();
    for i in 0..n {
        let name = sources.name(i);
        let last = i + 1 == n;
        let opened = match next_opened.take() {
            Some(o) => o,
            None => sources.open(i)?,
        };
        st.report.segments += 1;
        let (mut src, full_len): (Box<dyn Read + '_>, u64) = match opened {
            Opened::File(f, len) => (Box::new(f), len),
            Opened::Bytes(b) => (Box::new(b), b.len() as u64),
            Opened::NotRegular(what) => {
                let seq = st.expected_seq();
                st.problem(
                    At { file: &name, offset: 0, line: 1 },
                    seq,
                    format!("{name} is {what}, not a regular file"),
                );
                break;
            }
        };
        // Where this file's lines end: its length, or less when the next segment's header
        // declares (recovered after a failure) that only a prefix was intact.
        let mut limit = full_len;
        if !last {
            let next = sources.open(i + 1)?;
            peek_first_line(&next, &mut first)
                .map_err(|source| VerifyError::Io { path: PathBuf::from(sources.name(i + 1)), source })?;
            next_opened = Some(next);
            if let Ok(line::Line { kind: line::Kind::Header(h), .. }) = line::parse(&first, &mut None) {
                if h.recovered && h.prev_len < full_len {
                    st.report.notes.push(format!(
                        "{name}: {} bytes after offset {} were discarded when the sink recovered from a failure \
                         (declared by the next segment's header)",
                        full_len - h.prev_len,
                        h.prev_len
                    ));
                    limit = h.prev_len;
                }
            }
        }
        let mut src = Read::take(&mut src, limit);
        reader.reset();
        st.file_records = 0;
        let (mut offset, mut line_no) = (0u64, 0u64);
        let segment_in_name = sources.segment_number(i);
        let io = |source| VerifyError::Io { path: PathBuf::from(&name), source };
        loop {
            let next = reader.next(&mut src).map_err(io)?;
            let at = At { file: &name, offset, line: line_no + 1 };
            match next {
                Next::Line(range) => {
                    line_no += 1;
                    let pf = if line_no == 1 {
                        prev_file.as_ref().map(|(l, f, n)| (*l, *f, n.as_str()))
                    } else {
                        None
                    };
                    let len = range.len() as u64;
                    if let Err((seq, what)) = st.line(&reader.buf[range], at, segment_in_name, pf)? {
                        st.problem(at, seq, what);
                        break;
                    }
                    offset += len + 1;
                }
                Next::End => break,
                Next::OverLimit(len) => {
                    let seq = st.expected_seq();
                    st.problem(
                        at,
                        seq,
                        format!("a line of {len} bytes or more, over the format's limit of {MAX_LINE_BYTES}"),
                    );
                    break;
                }
                Next::BadLong(line::LineError::Bad(what, col)) => {
                    let seq = st.expected_seq();
                    st.problem(at, seq, format!("{what} (byte {col} of the line)"));
                    break;
                }
                Next::BadLong(line::LineError::Truncated) => unreachable!("only a bad line is skipped"),
                Next::Unterminated(len) => {
                    let seq = st.expected_seq();
                    if !last {
                        let what = if limit < full_len {
                            format!(
                                "the next segment's header declares the intact part ends at byte {limit}, inside a line"
                            )
                        } else {
                            format!(
                                "{len} bytes without a newline at the end of a segment that is not the last"
                            )
                        };
                        st.problem(at, seq, what);
                    } else if line_no == 0 && i == 0 && !st.bytes_mode {
                        st.problem(at, seq, format!("the trail holds no complete line ({len} bytes): segment 1's header is missing"));
                    } else {
                        let what = if line_no == 0 {
                            format!(
                                "{len} bytes and no complete line: a segment creation was interrupted (the writer \
                                 removes the file on open)"
                            )
                        } else {
                            format!("{len} bytes: the last line has no newline: it was cut short")
                        };
                        st.report.torn_tail =
                            Some(Problem { file: name.clone(), offset, line: line_no + 1, seq, what });
                    }
                    break;
                }
            }
        }
        if let Some(p) = &opts.progress {
            p(i + 1, n);
        }
        if st.report.problem.is_some() || st.report.torn_tail.is_some() {
            break;
        }
        if line_no == 0 && st.bytes_mode && st.headerless != Some(false) {
            // An empty piece of a headerless text: nothing to check.
            continue;
        }
        if line_no == 0 {
            let seq = st.expected_seq();
            let at = At { file: &name, offset: 0, line: 1 };
            if !last {
                st.problem(at, seq, format!("{name} is empty: its segment header and records are missing"));
            } else if i == 0 {
                st.problem(at, seq, "the trail holds no line: segment 1's header is missing".into());
            } else {
                st.report.torn_tail = Some(Problem {
                    file: name.clone(),
                    offset: 0,
                    line: 1,
                    seq,
                    what: "an empty segment file: a segment creation was interrupted (the writer removes the file on \
                           open)"
                        .into(),
                });
            }
            break;
        }
        last_file_lines = line_no;
        prev_file = Some((limit, full_len, name));
    }
    let expected_at_end = st.expected_seq();
    let leaves = st.leaves.take();
    let mut report = st.report;
    if st.headerless.is_none() && st.bytes_mode && report.problem.is_none() && report.torn_tail.is_none() {
        report
            .notes
            .push("no line: an empty text without headers (a MemorySink that recorded nothing)".into());
    } else if report.problem.is_none()
        && report.torn_tail.is_none()
        && st.file_records == 0
        && st.headerless != Some(true)
    {
        // The last segment holds only its header: the writer writes a record after every
        // header it writes, so a write was interrupted (or records were cut off).
        let (file, offset) = prev_file.map_or((String::new(), 0), |(_, len, n)| (n, len));
        report.torn_tail = Some(Problem {
            file,
            offset,
            line: last_file_lines + 1,
            seq: expected_at_end,
            what:
                "the last segment holds only its header: the write of its first record was interrupted (the \
                   writer continues it on open)"
                    .into(),
        });
    }
    report.last_hash = st.prev.as_ref().map(hex_str);
    if let Some(leaves) = leaves {
        let found = leaves.finish()?;
        if let (Some(why), None) = (&found.tampered, &report.problem) {
            report.problem = Some(Problem {
                file: if n > 0 { sources.name(n - 1) } else { String::new() },
                offset: 0,
                line: 0,
                seq: None,
                what: format!("checkpoint: {why}"),
            });
        }
        report.checkpoints = Some(found);
    }
    report.verdict = if report.problem.is_some() {
        Verdict::Tampered
    } else if report.torn_tail.is_some() {
        Verdict::TornTail
    } else if report.checkpoints.as_ref().is_some_and(|c| c.stale.is_some()) {
        Verdict::Stale
    } else {
        Verdict::Intact
    };
    Ok(report)
}

/// One key's history: the records of a trail that verified, and the verification report.
#[derive(Debug, Clone)]
pub struct History {
    /// The key's records, oldest first: only records the verifier checked.
    pub records: Vec<AuditRecord>,
    /// The verification of the trail. When it is not [`Verdict::Intact`], `records` stop at
    /// the last record checked intact.
    pub report: Report,
}

/// Every record of the trail at `paths` whose key is `key`: matched against a `Full` key as
/// JSON (so `42` matches the number 42 and `"a"` the string "a"), or as a plain string.
///
/// The trail is verified first (with `opts`), and only records the verifier checked are
/// returned: nothing after the first problem, nothing in a region abandoned after a sink
/// failure. Look at [`History::report`] before trusting a history.
pub fn history(paths: &[PathBuf], key: &str, opts: &VerifyOptions) -> Result<History, VerifyError> {
    let report = verify_paths(paths, opts)?;
    let as_json: Option<serde_json::Value> = serde_json::from_str(key).ok();
    let as_str = serde_json::Value::String(key.to_string());
    let mut records = Vec::new();
    // The verified records are seq first..=last, in file order, each the first line with its
    // seq that follows the one before: take exactly those.
    if let (Some(first), Some(last)) = (report.first_seq, report.last_seq) {
        let mut want = first;
        let mut reader = LineReader::new();
        'files: for f in collect_files(paths)? {
            let io = |source| VerifyError::Io { path: f.clone(), source };
            let Opened::File(file, _) = open_regular(&f)? else { break };
            let mut src = file;
            reader.reset();
            while let Next::Line(range) = reader.next(&mut src).map_err(io)? {
                let Ok(rec) = serde_json::from_slice::<AuditRecord>(&reader.buf[range]) else { continue };
                if rec.seq != want {
                    continue;
                }
                let full = rec.key.as_ref().and_then(|k| k.get("full"));
                if full.is_some_and(|k| Some(k) == as_json.as_ref() || *k == as_str) {
                    records.push(rec);
                }
                if want == last {
                    break 'files;
                }
                want += 1;
            }
        }
    }
    Ok(History { records, report })
}

/// The segment number in a path's file name, if it is a segment file.
pub fn segment_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str().and_then(parse_segment_file_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::GENESIS;
    use crate::audit::{AuditSink, Auditor, ChainKey, MemorySink};
    use crate::MapWrapper;

    /// A headerless trail of `n` inserts, big enough to be checked in several pieces.
    fn trail(n: u32) -> String {
        let sink = MemorySink::new();
        let map: MapWrapper<u32, String> =
            MapWrapper::builder().name("big").auditor(Auditor::new(sink.clone())).build().unwrap();
        for i in 0..n {
            map.insert(i, "x".repeat(100)).unwrap();
        }
        sink.flush().unwrap();
        sink.text()
    }

    fn check(text: &str) -> Report {
        verify_bytes(&[("t".into(), text.as_bytes().to_vec())], &Default::default()).unwrap()
    }

    /// Re-hashes the first line of a trail after an edit, as anyone can on a SHA-256 chain.
    fn reseal(line: &str) -> String {
        let head = &line[..line.len() - crate::audit::record::HASH_SUFFIX_LEN];
        let hash = crate::audit::to_hex(&ChainKey::Sha256.seal(GENESIS, format!("{head}}}").as_bytes()));
        format!("{head},\"hash\":\"{hash}\"}}\n")
    }

    #[test]
    fn a_record_that_breaks_the_record_rules_is_tampered_even_with_a_correct_hash() {
        let sink = MemorySink::new();
        let map: MapWrapper<u32, u32> =
            MapWrapper::builder().name("m").auditor(Auditor::new(sink.clone())).build().unwrap();
        map.insert(1, 1).unwrap();
        let line = sink.text().trim_end().to_string();
        assert_eq!(check(&reseal(&line)).verdict, Verdict::Intact, "resealing alone changes nothing");
        let ts_at = line.find("\"ts\":\"").unwrap() + 6;
        let bad_ts = format!("{}yesterday{}", &line[..ts_at], &line[ts_at + 27..]);
        for (what, edited, says) in [
            ("no key", line.replace("\"key\":{\"full\":1},", ""), "expected ,\"key\":"),
            ("no old", line.replace("\"old\":null,", ""), "expected ,\"old\":"),
            ("no map", line.replace("\"map\":\"m\",", ""), "expected ,\"map\":"),
            ("no reason", line.replace("\"reason\":null,", ""), "expected ,\"reason\":"),
            ("empty actor", line.replace("\"actor\":\"unattributed\"", "\"actor\":\"\""), "empty"),
            ("ts not RFC 3339", bad_ts, "\"ts\""),
            ("ts without Z", line.replacen("Z\",", "+00:00\",", 1), "\"ts\""),
            ("unknown op", line.replace("\"op\":\"insert\"", "\"op\":\"frobnicate\""), "unknown \"op\""),
            ("outcome not a code", line.replace("\"outcome\":\"ok\"", "\"outcome\":\"OK!\""), "outcome"),
            ("map not a string", line.replace("\"map\":\"m\"", "\"map\":7"), "expected a string"),
        ] {
            assert_ne!(edited, line, "{what}: the edit applies");
            let r = check(&reseal(&edited));
            assert_eq!(r.verdict, Verdict::Tampered, "{what}: {}", r.human());
            let p = r.problem.unwrap();
            assert!(p.what.contains(says), "{what}: {}", p.what);
        }
    }

    #[test]
    fn a_pruned_trail_may_end_at_seq_u64_max_but_nothing_may_follow_it() {
        use crate::audit::{AuditEvent, Chain, EventFields};
        let mut chain = Chain::resume(ChainKey::Sha256, u64::MAX - 1, GENESIS.to_string());
        let mut text = String::new();
        for _ in 0..2 {
            chain.seal_event(&AuditEvent::new(EventFields::lifecycle("audit_start", None)), &mut text);
        }
        // Records u64::MAX - 1 and u64::MAX (anchored, so their start is accepted): a trail
        // that ends at u64::MAX is intact; a record after it is a verdict (seq overflow), not a
        // panic.
        let opts = VerifyOptions { expect_prev: Some(GENESIS.into()), ..Default::default() };
        let r = verify_bytes(&[("t".into(), text.clone().into_bytes())], &opts).unwrap();
        assert_eq!((r.verdict, r.last_seq), (Verdict::Intact, Some(u64::MAX)), "{}", r.human());
        chain.seal_event(&AuditEvent::new(EventFields::lifecycle("audit_start", None)), &mut text);
        let r = verify_bytes(&[("t".into(), text.clone().into_bytes())], &opts).unwrap();
        let p = r.problem.expect("u64::MAX is followed by a repeated seq");
        assert!(p.what.contains("overflow"), "{}", p.what);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_tampered_even_with_a_correct_hash() {
        let sink = MemorySink::new();
        let map: MapWrapper<u32, u32> =
            MapWrapper::builder().name("m").auditor(Auditor::new(sink.clone())).build().unwrap();
        map.insert(1, 1).unwrap();
        let line = sink.text().trim_end().replace("\"actor\":\"unattributed\"", "\"actor\":\"\u{e9}\"");
        assert_eq!(check(&reseal(&line)).verdict, Verdict::Intact, "UTF-8 is fine");
        let mut bytes = line.into_bytes();
        let at = bytes.iter().position(|&b| b == 0xc3).unwrap();
        bytes[at + 1] = b'X'; // 0xC3 then 'X': not UTF-8
        let cut = bytes.len() - crate::audit::record::HASH_SUFFIX_LEN;
        let mut body = bytes[..cut].to_vec();
        body.push(b'}');
        let hash = crate::audit::to_hex(&ChainKey::Sha256.seal(GENESIS, &body));
        bytes.truncate(cut);
        bytes.extend_from_slice(format!(",\"hash\":\"{hash}\"}}\n").as_bytes());
        let r = verify_bytes(&[("t".into(), bytes)], &Default::default()).unwrap();
        assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
        assert!(r.problem.unwrap().what.contains("not UTF-8"));
    }

    #[test]
    fn a_line_over_the_limit_is_tampering_whether_or_not_it_ends() {
        let mut text = trail(3);
        let start = text.len();
        text.push_str(&"x".repeat(MAX_LINE_BYTES + 1));
        let r = check(&text);
        assert_eq!(r.verdict, Verdict::Tampered, "no newline: still not a torn tail");
        let p = r.problem.unwrap();
        assert_eq!((p.offset as usize, p.line, p.seq), (start, 4, Some(4)));
        assert!(p.what.contains("over the format's limit"), "{}", p.what);
        text.push('\n');
        assert_eq!(check(&text).verdict, Verdict::Tampered);
    }

    #[test]
    fn a_value_over_the_size_limit_is_recorded_as_too_large_and_the_trail_verifies() {
        let sink = MemorySink::new();
        let map: MapWrapper<u32, String> =
            MapWrapper::builder().auditor(Auditor::new(sink.clone())).build().unwrap();
        map.insert(1, "v".repeat(crate::audit::MAX_VALUE_BYTES)).unwrap();
        let text = sink.text();
        assert!(text.len() < 4096, "the value is not in the trail");
        assert!(text.contains("{\"unencodable\":\"too large: 16777218 bytes of JSON"), "{text}");
        assert_eq!(check(&text).verdict, Verdict::Intact);
    }

    #[test]
    fn only_canonical_segment_file_names_are_segments() {
        use crate::audit::{parse_segment_file_name, segment_file_name};
        assert_eq!(parse_segment_file_name("segment-000001.jsonl"), Some(1));
        assert_eq!(parse_segment_file_name("segment-1234567.jsonl"), Some(1_234_567));
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        for bad in
            ["segment-1.jsonl", "segment-+00001.jsonl", "segment-0000001.jsonl", "segment-00000a.jsonl"]
        {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_segment_renamed_to_another_number_is_tampered() {
        use crate::audit::JsonLinesSink;
        let dir = tempfile::tempdir().unwrap();
        let sink = JsonLinesSink::open(dir.path(), Default::default()).unwrap();
        drop(MapWrapper::<u8, u8>::builder().auditor(Auditor::new(sink)).build().unwrap());
        let other = tempfile::tempdir().unwrap();
        let renamed = other.path().join("segment-000007.jsonl");
        std::fs::copy(dir.path().join("segment-000001.jsonl"), &renamed).unwrap();
        let opts = VerifyOptions { expect_prev: Some(GENESIS.into()), ..Default::default() };
        let r = verify_paths(&[renamed], &opts).unwrap();
        assert_eq!(r.verdict, Verdict::Tampered);
        assert!(r.problem.unwrap().what.contains("header says segment 1"));
        // The sink refuses to continue it, too.
        std::fs::rename(dir.path().join("segment-000001.jsonl"), dir.path().join("segment-000003.jsonl"))
            .unwrap();
        let e = JsonLinesSink::open(dir.path(), Default::default()).unwrap_err();
        assert!(e.to_string().contains("header says segment 1"), "{e}");
    }

    #[test]
    fn progress_is_reported_once_per_file_in_order() {
        use crate::audit::{JsonLinesOptions, JsonLinesSink};
        let dir = tempfile::tempdir().unwrap();
        let opts = JsonLinesOptions { max_segment_bytes: 2048, ..Default::default() };
        let map: MapWrapper<u32, u32> = MapWrapper::builder()
            .auditor(Auditor::new(JsonLinesSink::open(dir.path(), opts).unwrap()))
            .build()
            .unwrap();
        for i in 0..60 {
            map.insert(i, i).unwrap();
        }
        drop(map);
        let files = collect_files(&[dir.path().to_path_buf()]).unwrap().len();
        assert!(files >= 3, "{files}");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = std::sync::Arc::clone(&seen);
        let opts = VerifyOptions {
            progress: Some(std::sync::Arc::new(move |done, total| s.lock().unwrap().push((done, total)))),
            ..Default::default()
        };
        assert_eq!(verify_paths(&[dir.path().to_path_buf()], &opts).unwrap().verdict, Verdict::Intact);
        let want: Vec<_> = (1..=files).map(|d| (d, files)).collect();
        assert_eq!(*seen.lock().unwrap(), want);
    }

    /// The checkpoints are read on the helper thread while the records are read: unusable
    /// checkpoint inputs are still the error, even when the trail cannot be verified either.
    #[test]
    fn unusable_checkpoint_inputs_are_the_error_whatever_the_trail() {
        use crate::audit::checkpoint::CheckpointCheckOptions;
        use crate::audit::{JsonLinesOptions, JsonLinesSink};
        let dir = tempfile::tempdir().unwrap();
        let opts = JsonLinesOptions {
            chain_key: ChainKey::Hmac { id: "k".into(), key: b"key".to_vec() },
            ..Default::default()
        };
        let map: MapWrapper<u32, u32> = MapWrapper::builder()
            .auditor(Auditor::new(JsonLinesSink::open(dir.path(), opts).unwrap()))
            .build()
            .unwrap();
        map.insert(1, 1).unwrap();
        drop(map);
        let missing = dir.path().join("no-such.note");
        let checkpoints = CheckpointCheckOptions { external: vec![missing.clone()], ..Default::default() };
        let paths = [dir.path().to_path_buf()];
        for key in [None, Some(b"key".to_vec())] {
            let opts = VerifyOptions {
                hmac_key: key.clone(),
                checkpoints: Some(checkpoints.clone()),
                ..Default::default()
            };
            let e = verify_paths(&paths, &opts).unwrap_err().to_string();
            assert!(e.contains("no-such.note"), "key given: {}: {e}", key.is_some());
        }
        // Without checkpoints, the trail's own error.
        let e = verify_paths(&paths, &Default::default()).unwrap_err().to_string();
        assert!(e.contains("HMAC-chained"), "{e}");
    }

    #[test]
    fn hex32_is_lowercase_hex() {
        let d: [u8; 32] = std::array::from_fn(|i| (i * 8 + 7) as u8 ^ 0xa5);
        let want: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex_str(&hex32(&d)), want);
        assert_eq!(hex_str(&hex32(&[0xff; 32])), "f".repeat(64));
        assert_eq!(hex_str(&hex32(&[0x09; 32])), "09".repeat(32));
        assert_eq!(hex_str(&hex32(&[0xa0; 32])), "a0".repeat(32));
    }

    /// Leaves hashed before the checkpoints were opened and handed over afterwards give the
    /// same findings as lines pushed one by one, wherever the hand-over falls: the first
    /// line's `seq` and the last line's `op` (an `audit_stop`, or a trail gone STALE) count.
    #[test]
    fn leaves_kept_while_the_checkpoints_open_give_the_same_findings() {
        use crate::audit::anchor::APPEND_FILE;
        use crate::audit::checkpoint::{
            for_each_record_in, CheckpointCheckOptions, CheckpointOptions, CheckpointPolicy, CheckpointRun,
        };
        use crate::audit::note::NoteSigner;
        use crate::audit::{JsonLinesOptions, JsonLinesSink};
        let dir = tempfile::tempdir().unwrap();
        let signer = NoteSigner::from_seed("example.com/verify", [3; 32]).unwrap();
        let policy = CheckpointPolicy { every_records: 7, ..CheckpointPolicy::default() };
        let cp = CheckpointOptions::new("example.com/verify", signer.clone()).policy(policy);
        let opts = JsonLinesOptions { checkpoints: Some(cp), ..Default::default() };
        let map: MapWrapper<u32, u32> = MapWrapper::builder()
            .auditor(Auditor::new(JsonLinesSink::open(dir.path(), opts).unwrap()))
            .build()
            .unwrap();
        for i in 0..40 {
            map.insert(i, i).unwrap();
        }
        drop(map); // ends with audit_stop
        let files = collect_files(&[dir.path().to_path_buf()]).unwrap();
        let mut lines = Vec::new();
        for_each_record_in(&files, |l| lines.push(l.to_vec())).unwrap();
        let check = CheckpointCheckOptions {
            trusted: vec![signer.verifier()],
            trail_notes: vec![dir.path().join(APPEND_FILE)],
            // Far ahead: a trail that does not end with audit_stop is STALE.
            now: Some(chrono::Utc::now() + chrono::Duration::days(365)),
            ..Default::default()
        };
        // The whole trail, and its first 30 records (no audit_stop).
        for n in [lines.len(), 30] {
            let mut one_by_one = CheckpointRun::new(&check).unwrap();
            lines[..n].iter().for_each(|l| one_by_one.push_line(l));
            let want = one_by_one.finish().unwrap();
            // Cut short: the later checkpoints are not held (TAMPERED), and it is STALE.
            let whole = n == lines.len();
            assert!(
                want.checked > 0 && want.tampered.is_none() == whole && want.stale.is_none() == whole,
                "{want:?}"
            );
            for k in [0, 1, 2, n / 2, n - 1, n] {
                let mut early = Early::default();
                lines[..k].iter().for_each(|l| early.push(l, crate::audit::merkle::leaf_hash(l)));
                let mut run = CheckpointRun::new(&check).unwrap();
                early.flush(&mut run);
                lines[k..n]
                    .iter()
                    .for_each(|l| run.push_line_with_leaf(l, crate::audit::merkle::leaf_hash(l)));
                assert_eq!(run.finish().unwrap(), want, "{k} of {n} lines kept early");
            }
        }
    }

    #[test]
    fn verify_options_debug_does_not_print_the_hmac_key() {
        let o = VerifyOptions { hmac_key: Some(b"secret".to_vec()), ..Default::default() };
        let s = format!("{o:?}");
        assert!(!s.contains("115, 101, 99") && !s.contains("secret"), "{s}");
        assert!(s.contains("<6 bytes>"), "{s}");
    }

    #[test]
    fn a_big_hmac_segment_is_checked_in_pieces_with_its_key() {
        use crate::audit::{ChainKey, JsonLinesOptions, JsonLinesSink};
        let dir = tempfile::tempdir().unwrap();
        let opts = JsonLinesOptions {
            chain_key: ChainKey::Hmac { id: "k".into(), key: b"key".to_vec() },
            ..Default::default()
        };
        let sink = JsonLinesSink::open(dir.path(), opts).unwrap();
        let map: MapWrapper<u32, String> = MapWrapper::builder().auditor(Auditor::new(sink)).build().unwrap();
        for i in 0..9000 {
            map.insert(i, "x".repeat(100)).unwrap();
        }
        drop(map);
        let files = collect_files(&[dir.path().to_path_buf()]).unwrap();
        assert!(std::fs::metadata(&files[0]).unwrap().len() > 2 << 20, "big enough to be split");
        let key = VerifyOptions { hmac_key: Some(b"key".to_vec()), ..Default::default() };
        let report = verify_paths(&[dir.path().to_path_buf()], &key).unwrap();
        assert_eq!(
            (report.verdict, report.records, report.chain.as_str()),
            (Verdict::Intact, 9002, "hmac-sha256")
        );
        let wrong = VerifyOptions { hmac_key: Some(b"other".to_vec()), ..Default::default() };
        assert_eq!(verify_paths(&[dir.path().to_path_buf()], &wrong).unwrap().verdict, Verdict::Tampered);
    }
}
