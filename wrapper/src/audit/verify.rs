//! Checks a trail: every line parses, every hash, every link (across segments), contiguous
//! `seq`, segment headers. Used by the `map-wrapper-audit` binary; usable from code.
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

use std::path::{Path, PathBuf};

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::file::{list_segments, parse_segment_file_name};
use super::record::{split_line, to_hex, AuditRecord, ChainKey, FORMAT_VERSION, GENESIS};

/// How to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The HMAC key of an HMAC-chained trail. Without it such a trail cannot be verified
    /// (an error, not a verdict); with it, a trail that is not HMAC-chained is tampered.
    pub hmac_key: Option<Vec<u8>>,
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
}

impl Verdict {
    /// The exit status of `map-wrapper-audit verify`: 0 intact, 1 tampered, 2 torn tail only.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Intact => 0,
            Verdict::Tampered => 1,
            Verdict::TornTail => 2,
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
}

impl Report {
    /// One line a script can read: `INTACT …`, `TORN_TAIL …` or `TAMPERED …`.
    pub fn verdict_line(&self) -> String {
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

/// Expands directories into their segment files (in segment order); files stay as given.
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
    Ok(files)
}

/// Verifies the trail made of `paths` (files and directories of segments), in order.
///
/// Files are checked in parallel (one thread per CPU, each reading one file at a time), then
/// the links between them are checked in order.
pub fn verify_paths(paths: &[PathBuf], opts: &VerifyOptions) -> Result<Report, VerifyError> {
    let files = collect_files(paths)?;
    let load = |i: usize| std::fs::read(&files[i]).map(Cow::Owned).map_err(io_error(&files[i]));
    let first_line = |i: usize| -> Result<Vec<u8>, VerifyError> {
        use std::io::BufRead;
        let file = std::fs::File::open(&files[i]).map_err(io_error(&files[i]))?;
        let mut line = Vec::new();
        std::io::BufReader::new(file).read_until(b'\n', &mut line).map_err(io_error(&files[i]))?;
        Ok(line)
    };
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    verify_sources(&names, &load, &first_line, opts)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Io { path: path.to_path_buf(), source }
}

/// Verifies a trail given as `(name, bytes)` pieces in order (segment files, or the text of a
/// [`MemorySink`](crate::audit::MemorySink), which has no headers).
pub fn verify_bytes(files: &[(String, Vec<u8>)], opts: &VerifyOptions) -> Result<Report, VerifyError> {
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let load = |i: usize| Ok(Cow::Borrowed(files[i].1.as_slice()));
    let first_line = |i: usize| {
        let bytes = &files[i].1;
        Ok(bytes[..bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |e| e + 1)].to_vec())
    };
    verify_sources(&names, &load, &first_line, opts)
}

/// What checking one file on its own found, for the merge.
struct FileOutcome<'o> {
    verifier: Verifier<'o>,
    /// Bytes of the file that belong to the trail (see `limit` in `check_file`).
    limit: usize,
    full_len: usize,
}

/// The first line of a file, as the merge needs it to link the file to the one before.
#[derive(Debug, Clone)]
struct FirstLine {
    prev: String,
    seq: Option<u64>,
    segment: Option<u64>,
    prev_len: Option<u64>,
}

/// Checks file `i` on its own (the chain inside it), detached from the files before it.
fn check_file<'o, 'b>(
    i: usize,
    names: &[String],
    load: &(dyn Fn(usize) -> Result<Cow<'b, [u8]>, VerifyError> + Sync),
    first_line: &(dyn Fn(usize) -> Result<Vec<u8>, VerifyError> + Sync),
    opts: &'o VerifyOptions,
) -> Result<FileOutcome<'o>, VerifyError> {
    let bytes = load(i)?;
    let mut verifier = Verifier::new(opts);
    verifier.detached = i > 0;
    // Where this file's lines end: its length, or less when the next segment's header
    // declares (recovered after a failure) that only a prefix was intact.
    let mut limit = bytes.len();
    if i + 1 < names.len() {
        let first = first_line(i + 1)?;
        if let Ok(h) = parse_line(first.strip_suffix(b"\n").unwrap_or(&first)) {
            if let Some(pl) = h.value.prev_len.and_then(|p| usize::try_from(p).ok()) {
                if h.value.recovered == Some(true) && pl < bytes.len() {
                    verifier.report.notes.push(format!(
                        "{}: {} bytes after offset {pl} were discarded when the sink recovered from a failure \
                         (declared by the next segment's header)",
                        names[i],
                        bytes.len() - pl
                    ));
                    limit = pl;
                }
            }
        }
    }
    let data = &bytes[..limit];
    // At least two pieces even on one CPU, so the piece-linking code is always exercised.
    let chunks = split_in_chunks(data, std::thread::available_parallelism().map_or(2, |n| n.get().max(2)));
    let last_file = i + 1 == names.len();
    // Pieces after the first do not see the header: they get its chain from here.
    let header_chain = memchr::memchr(b'\n', data)
        .and_then(|e| parse_line(&data[..e]).ok())
        .and_then(|h| h.value.chain.map(|c| c.into_owned()));
    let piece_key = match (header_chain.as_deref(), &opts.hmac_key) {
        (Some("hmac-sha256"), Some(k)) => Some(ChainKey::Hmac { id: String::new(), key: k.clone() }),
        _ => Some(ChainKey::Sha256),
    };
    let mut parts: Vec<Result<Verifier<'o>, VerifyError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(j, &(start, end))| {
                let notes = if j == 0 { std::mem::take(&mut verifier.report.notes) } else { Vec::new() };
                let (key, chain) = (piece_key.clone(), header_chain.clone());
                scope.spawn(move || {
                    let mut v = Verifier::new(opts);
                    v.report.notes = notes;
                    if j > 0 {
                        v.key = key;
                        v.report.chain = chain.unwrap_or_else(|| "sha256".into());
                    }
                    (v.detached, v.mid_file, v.base) = (i > 0 || j > 0, j > 0, start);
                    v.file(&names[i], &data[start..end], last_file && end == data.len())?;
                    Ok(v)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let mut parts = parts.drain(..);
    let mut file = parts.next().expect("one chunk at least")?;
    for (j, part) in parts.enumerate() {
        let mut part = part?;
        if file.report.problem.is_some() || file.report.torn_tail.is_some() {
            break;
        }
        // Chunks count their lines from 1: make them lines of the file.
        let start = chunks[j + 1].0;
        let lines_before = memchr::memchr_iter(b'\n', &data[..start]).count() as u64;
        for p in part.report.problem.iter_mut().chain(part.report.torn_tail.iter_mut()) {
            p.line += lines_before;
        }
        file.link(&names[i], &part, None, (start, lines_before + 1));
        if file.report.problem.is_none() {
            file.absorb(part, false);
        }
    }
    Ok(FileOutcome { verifier: file, limit, full_len: bytes.len() })
}

/// Splits `data` into up to `n` pieces of whole lines (at least 1 MiB each), as
/// `(start, end)` offsets.
fn split_in_chunks(data: &[u8], n: usize) -> Vec<(usize, usize)> {
    let size = (data.len() / n.max(1)).max(1 << 20);
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let mut end = (start + size).min(data.len());
        if end < data.len() {
            end = memchr::memchr(b'\n', &data[end..]).map_or(data.len(), |p| end + p + 1);
        }
        chunks.push((start, end));
        start = end;
    }
    if chunks.is_empty() {
        chunks.push((0, 0));
    }
    chunks
}

fn verify_sources<'b>(
    names: &[String],
    load: &(dyn Fn(usize) -> Result<Cow<'b, [u8]>, VerifyError> + Sync),
    first_line: &(dyn Fn(usize) -> Result<Vec<u8>, VerifyError> + Sync),
    opts: &VerifyOptions,
) -> Result<Report, VerifyError> {
    let first = check_file(0, names, load, first_line, opts)?;
    let mut merged = first.verifier;
    merged.report.segments = 1;
    let mut prev_limit = (first.limit, first.full_len);
    for i in 1..names.len() {
        if merged.report.problem.is_some() || merged.report.torn_tail.is_some() {
            break;
        }
        let outcome = check_file(i, names, load, first_line, opts)?;
        merged.link(&names[i], &outcome.verifier, Some((prev_limit, &names[i - 1])), (0, 1));
        if merged.report.problem.is_none() {
            merged.absorb(outcome.verifier, true);
        }
        prev_limit = (outcome.limit, outcome.full_len);
    }
    let mut report = merged.report;
    if report.problem.is_some() {
        report.verdict = Verdict::Tampered;
    } else if report.torn_tail.is_some() {
        report.verdict = Verdict::TornTail;
    }
    Ok(report)
}

/// A line of a trail (a segment header or a record), parsed once, borrowing the line: the
/// members of both kinds, each with its type (unknown or duplicate members are errors).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // some members are parsed only to check that they are there with their type
struct View<'a> {
    v: u64,
    seq: Option<u64>,
    #[serde(borrow)]
    ts: Option<Cow<'a, str>>,
    #[serde(borrow)]
    map: Option<Cow<'a, str>>,
    shard: Option<u64>,
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    key: Option<IgnoredAny>,
    old: Option<IgnoredAny>,
    new: Option<IgnoredAny>,
    #[serde(borrow)]
    actor: Option<Cow<'a, str>>,
    #[serde(borrow)]
    trace_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tags: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    #[serde(borrow)]
    outcome: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    latency_ns: Option<u64>,
    segment: Option<u64>,
    #[serde(borrow)]
    chain: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key_id: Option<Cow<'a, str>>,
    first_seq: Option<u64>,
    prev_len: Option<u64>,
    recovered: Option<bool>,
    #[serde(borrow)]
    prev: Cow<'a, str>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
}

impl View<'_> {
    /// The members every record has (`map`, `shard`, `key`, `old`, `new`, `trace_id` and
    /// `reason` may be `null`).
    fn missing_record_member(&self) -> Option<&'static str> {
        [
            ("ts", self.ts.is_none()),
            ("op", self.op.is_none()),
            ("actor", self.actor.is_none()),
            ("tags", self.tags.is_none()),
            ("outcome", self.outcome.is_none()),
            ("latency_ns", self.latency_ns.is_none()),
        ]
        .into_iter()
        .find_map(|(name, missing)| missing.then_some(name))
    }
}

/// A line of a trail: its parsed members, the bytes before its `hash` member, its hash.
#[derive(Debug)]
struct Line<'a> {
    value: View<'a>,
    head: &'a [u8],
    hash: &'a str,
}

fn parse_line(bytes: &[u8]) -> Result<Line<'_>, String> {
    let (head, hash) = split_line(bytes).ok_or("the line does not end with a well-formed \"hash\" member")?;
    let value: View<'_> = serde_json::from_slice(bytes).map_err(|e| format!("not a v1 audit line: {e}"))?;
    if value.v != u64::from(FORMAT_VERSION) {
        return Err(format!("\"v\" is not {FORMAT_VERSION}"));
    }
    Ok(Line { value, head, hash })
}

struct Verifier<'o> {
    opts: &'o VerifyOptions,
    key: Option<ChainKey>,
    report: Report,
    prev_hash: Option<String>,
    next_seq: Option<u64>,
    segment: Option<u64>,
    /// Checking a file or a piece of one on its own: its first line's links are checked by
    /// the merge.
    detached: bool,
    /// Checking a piece of a file that does not start the file (a header there is misplaced).
    mid_file: bool,
    /// Offset of the piece in its file.
    base: usize,
    first: Option<FirstLine>,
}

impl<'o> Verifier<'o> {
    fn new(opts: &'o VerifyOptions) -> Self {
        Verifier {
            opts,
            key: None,
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
            },
            prev_hash: None,
            next_seq: None,
            segment: None,
            detached: false,
            mid_file: false,
            base: 0,
            first: None,
        }
    }

    /// Checks that `next` (a file checked on its own) continues this trail: its first line
    /// links to our last one, and a segment header's number, `first_seq` and `prev_len` fit.
    /// `prev_file`: when `next` is the next file, this file's (limit, length) and name;
    /// `at`: where `next` starts (offset, line) in its file.
    fn link(
        &mut self,
        name: &str,
        next: &Verifier<'_>,
        prev_file: Option<((usize, usize), &str)>,
        at: (usize, u64),
    ) {
        let Some(first) = &next.first else { return };
        let want_prev = self.prev_hash.as_deref().unwrap_or(GENESIS);
        let problem = if let (Some(seg), Some(prev)) = (first.segment, self.segment) {
            (seg != prev + 1).then(|| format!("segment {seg} follows segment {prev}"))
        } else {
            None
        };
        let problem = problem
            .or_else(|| match (first.seq, self.next_seq) {
                (Some(got), Some(want)) if got != want => Some(if first.segment.is_some() {
                    format!("the header's first_seq is {got}, expected {want}")
                } else {
                    format!("seq {got} where {want} was expected")
                }),
                _ => None,
            })
            .or_else(|| match (first.prev_len, prev_file) {
                (Some(pl), Some(((limit, full_len), prev_name))) if pl != limit as u64 => Some(format!(
                    "the header says the previous segment is {pl} bytes long, but {prev_name} is {full_len} bytes"
                )),
                _ => None,
            })
            .or_else(|| {
                (first.prev != want_prev)
                    .then(|| format!("\"prev\" is {}, but the previous line's hash is {want_prev}", first.prev))
            });
        if let Some(what) = problem {
            let seq = if first.segment.is_some() { self.next_seq } else { first.seq };
            self.tamper(name, at.0, at.1, seq, what);
        }
    }

    /// Adds what `next` (the following file, checked on its own and linked) found.
    fn absorb(&mut self, next: Verifier<'_>, new_file: bool) {
        let r = next.report;
        self.report.segments += u64::from(new_file);
        self.report.records += r.records;
        self.report.first_seq = self.report.first_seq.or(r.first_seq);
        self.report.last_seq = r.last_seq.or(self.report.last_seq);
        self.report.last_hash = r.last_hash.or(self.report.last_hash.take());
        self.report.chain = r.chain;
        self.report.problem = self.report.problem.take().or(r.problem);
        self.report.torn_tail = self.report.torn_tail.take().or(r.torn_tail);
        self.report.notes.extend(r.notes);
        self.prev_hash = next.prev_hash.or(self.prev_hash.take());
        self.next_seq = next.next_seq.or(self.next_seq);
        self.segment = next.segment.or(self.segment);
    }

    fn tamper(&mut self, file: &str, offset: usize, line: u64, seq: Option<u64>, what: String) {
        if self.report.problem.is_none() {
            self.report.problem =
                Some(Problem { file: file.to_string(), offset: offset as u64, line, seq, what });
        }
    }

    /// Checks one file; `false` once a problem was found.
    fn file(&mut self, name: &str, bytes: &[u8], last_file: bool) -> Result<bool, VerifyError> {
        let mut pos = 0usize;
        let mut line_no = 0u64;
        while pos < bytes.len() {
            line_no += 1;
            let nl = memchr::memchr(b'\n', &bytes[pos..]).map(|i| pos + i);
            let end = nl.unwrap_or(bytes.len());
            let raw = &bytes[pos..end];
            let is_last_line = nl.map_or(true, |e| e + 1 == bytes.len());
            let parsed = match nl {
                None => Err("the last line has no newline: it was cut short".to_string()),
                Some(_) => parse_line(raw),
            };
            let line = match parsed {
                Ok(l) => l,
                Err(what) => {
                    if last_file && is_last_line {
                        self.report.torn_tail = Some(Problem {
                            file: name.to_string(),
                            offset: (self.base + pos) as u64,
                            line: line_no,
                            seq: self.next_seq,
                            what: format!("{} bytes: {what}", bytes.len() - pos),
                        });
                    } else {
                        self.tamper(name, self.base + pos, line_no, self.next_seq, what);
                    }
                    return Ok(false);
                }
            };
            if let Err((seq, what)) = self.check(&line, name, pos)? {
                self.tamper(name, self.base + pos, line_no, seq, what);
                return Ok(false);
            }
            pos = end + 1;
        }
        Ok(true)
    }

    /// Checks one parsed line against the state of the chain.
    #[allow(clippy::type_complexity)]
    fn check(
        &mut self,
        line: &Line<'_>,
        name: &str,
        pos: usize,
    ) -> Result<Result<(), (Option<u64>, String)>, VerifyError> {
        let v = &line.value;
        let seq = v.seq;
        if let Some(segment) = v.segment {
            if pos != 0 || self.mid_file {
                return Ok(Err((self.next_seq, "a segment header in the middle of a file".into())));
            }
            let chain = v.chain.as_deref().unwrap_or_default();
            match (chain, &self.opts.hmac_key) {
                ("sha256", None) => self.key = Some(ChainKey::Sha256),
                ("hmac-sha256", Some(k)) => {
                    let id = v.key_id.as_deref().unwrap_or_default();
                    self.key = Some(ChainKey::Hmac { id: id.into(), key: k.clone() });
                }
                ("hmac-sha256", None) => {
                    return Err(VerifyError::Usage(format!(
                        "{name} is HMAC-chained (key id {:?}): pass its key with --hmac-key-file",
                        v.key_id.as_deref().unwrap_or_default()
                    )))
                }
                ("sha256", Some(_)) => {
                    return Ok(Err((
                        self.next_seq,
                        "an HMAC key was given but this segment claims a plain SHA-256 chain".into(),
                    )))
                }
                (other, _) => return Ok(Err((self.next_seq, format!("unknown chain {other:?}")))),
            }
            self.report.chain = chain.to_string();
            match self.segment {
                Some(prev) if segment != prev + 1 => {
                    return Ok(Err((self.next_seq, format!("segment {segment} follows segment {prev}"))));
                }
                None if segment != 1 && !self.detached => self.report.notes.push(format!(
                    "the trail starts at segment {segment}: the link to earlier segments was not checked"
                )),
                _ => {}
            }
            self.segment = Some(segment);
            let first_seq = v.first_seq;
            match (self.next_seq, first_seq) {
                (Some(want), Some(got)) if want != got => {
                    return Ok(Err((
                        Some(want),
                        format!("the header's first_seq is {got}, expected {want}"),
                    )));
                }
                (None, Some(got)) => self.next_seq = Some(got),
                (_, None) => return Ok(Err((self.next_seq, "the header has no first_seq".into()))),
                _ => {}
            }
        } else {
            let Some(seq) = seq else {
                return Ok(Err((self.next_seq, "a record without seq".into())));
            };
            if let Some(member) = v.missing_record_member() {
                return Ok(Err((Some(seq), format!("the record has no \"{member}\""))));
            }
            if self.key.is_none() {
                // A trail without headers (a MemorySink's text) is plain SHA-256.
                if self.opts.hmac_key.is_some() {
                    return Err(VerifyError::Usage(format!(
                        "{name} has no segment header: it cannot be checked with an HMAC key"
                    )));
                }
                self.key = Some(ChainKey::Sha256);
            }
            match self.next_seq {
                Some(want) if seq != want => {
                    return Ok(Err((Some(seq), format!("seq {seq} where {want} was expected"))));
                }
                _ => {}
            }
            self.next_seq = Some(seq + 1);
            self.report.records += 1;
            self.report.first_seq.get_or_insert(seq);
            self.report.last_seq = Some(seq);
        }
        let prev: &str = &v.prev;
        let expected_prev = match &self.prev_hash {
            Some(h) => Some(h.as_str()),
            // The very first line of a trail links to the genesis value, unless the trail
            // handed to us starts at a later segment.
            None if !self.detached && self.segment.map_or(true, |s| s == 1) => Some(GENESIS),
            None => None,
        };
        if self.first.is_none() {
            self.first = Some(FirstLine {
                prev: prev.to_string(),
                seq: seq.or(v.first_seq),
                segment: v.segment,
                prev_len: v.prev_len,
            });
        }
        if let Some(want) = expected_prev {
            if prev != want {
                return Ok(Err((
                    seq.or(self.next_seq),
                    format!("\"prev\" is {prev}, but the previous line's hash is {want}"),
                )));
            }
        }
        let key = self.key.as_ref().expect("set above");
        let computed = to_hex(&key.seal_parts(prev, &[line.head, b"}"]));
        if computed != line.hash {
            return Ok(Err((
                seq.or(self.next_seq),
                format!(
                    "the hash does not match the line's content (computed {computed}, stored {})",
                    line.hash
                ),
            )));
        }
        self.prev_hash = Some(line.hash.to_string());
        self.report.last_hash = Some(line.hash.to_string());
        Ok(Ok(()))
    }
}

/// Every record of the trail at `paths` whose key is `key`: matched against a `Full` key as
/// JSON (so `42` matches the number 42 and `"a"` the string "a"), or as a plain string.
/// Lines that do not parse are skipped (run [`verify_paths`] to find them).
pub fn history(paths: &[PathBuf], key: &str) -> Result<Vec<AuditRecord>, VerifyError> {
    let as_json: Option<serde_json::Value> = serde_json::from_str(key).ok();
    let as_str = serde_json::Value::String(key.to_string());
    let mut out = Vec::new();
    for f in collect_files(paths)? {
        let text = std::fs::read(&f).map_err(|source| VerifyError::Io { path: f.clone(), source })?;
        for line in text.split(|&b| b == b'\n') {
            let Ok(rec) = serde_json::from_slice::<AuditRecord>(line) else { continue };
            let full = rec.key.as_ref().and_then(|k| k.get("full"));
            if full.is_some_and(|k| Some(k) == as_json.as_ref() || *k == as_str) {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// The segment number in a path's file name, if it is a segment file.
pub fn segment_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str().and_then(parse_segment_file_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditSink, Auditor, MemorySink};
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
        let key = VerifyOptions { hmac_key: Some(b"key".to_vec()) };
        let report = verify_paths(&[dir.path().to_path_buf()], &key).unwrap();
        assert_eq!(
            (report.verdict, report.records, report.chain.as_str()),
            (Verdict::Intact, 9002, "hmac-sha256")
        );
        let wrong = VerifyOptions { hmac_key: Some(b"other".to_vec()) };
        assert_eq!(verify_paths(&[dir.path().to_path_buf()], &wrong).unwrap().verdict, Verdict::Tampered);
    }

    #[test]
    fn a_big_trail_is_checked_in_pieces_and_reports_file_positions() {
        let text = trail(9000);
        let chunks = split_in_chunks(text.as_bytes(), 2);
        assert_eq!(chunks.len(), 2, "the trail is big enough to be split");
        let report = check(&text);
        assert_eq!((report.verdict, report.records), (Verdict::Intact, 9000));

        // An edit deep in the second piece: reported with its line and offset in the file.
        let lines: Vec<&str> = text.lines().collect();
        let target = 8000;
        let offset: usize = lines[..target - 1].iter().map(|l| l.len() + 1).sum();
        let edited = text.replacen(&format!("\"seq\":{target},"), &format!("\"seq\":{target} ,"), 1);
        let p = check(&edited).problem.unwrap();
        assert_eq!((p.line, p.offset as usize, p.seq), (target as u64, offset, Some(target as u64)));

        // The line that starts the second piece deleted: caught by the link between pieces.
        let start = chunks[1].0;
        let line_no = text[..start].matches('\n').count() + 1;
        let end = start + text[start..].find('\n').unwrap() + 1;
        let deleted = format!("{}{}", &text[..start], &text[end..]);
        let p = check(&deleted).problem.unwrap();
        assert_eq!((p.line, p.offset as usize), (line_no as u64, start));
        assert_eq!(p.seq, Some(line_no as u64 + 1), "{}", p.what);
    }
}
