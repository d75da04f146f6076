//! Checkpoints: C2SP [`tlog-checkpoint`](https://c2sp.org/tlog-checkpoint) bodies signed as
//! [signed notes](super::note), and the [`Checkpointer`] a trail's writer drives.
//!
//! A checkpoint body is
//!
//! ```text
//! ORIGIN                              e.g. example.com/billing-audit
//! TREE SIZE (decimal)                 the number of records in the trail
//! ROOT HASH (standard base64)         the RFC 6962 root of those records (see `merkle`)
//! time 2026-12-02T12:00:00.123456Z    extension line: when it was made (UTC)
//! heartbeat-ms 60000                  extension line: the next one is due within this long
//! ```
//!
//! every line `\n`-terminated, then a blank line and the signature lines of the note.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use map_wrapper::audit::checkpoint::{CheckpointPolicy, Checkpointer, SignedCheckpoint};
//! use map_wrapper::audit::note::NoteSigner;
//!
//! let signer = NoteSigner::generate("example.com/billing-audit")?;
//! let verifier = signer.verifier();
//! let policy = CheckpointPolicy { every_records: 2, ..CheckpointPolicy::default() };
//! let mut cp = Checkpointer::new("example.com/billing-audit", signer, policy)?;
//! let t0 = Instant::now();
//! for line in [&b"{\"v\":1,\"seq\":1}"[..], b"{\"v\":1,\"seq\":2}"] {
//!     cp.on_record(line);
//! }
//! assert!(cp.due(t0));
//! let signed = cp.checkpoint(t0);
//! let back = SignedCheckpoint::open(signed.note().as_bytes(), &[verifier])?;
//! assert_eq!(back.checkpoint().size(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};

use super::anchor::{AnchorError, CheckpointState, Decision};
use super::merkle::{consistency_ranges, leaf_hash, CompactTree, Hash, StreamingProver};
use super::note::{self, NoteError, NoteSigner, NoteVerifier};

/// The extension line a checkpoint's time is written in: `time ` + RFC 3339 UTC, 6 fraction
/// digits, `Z`.
pub const TIME_EXTENSION: &str = "time ";

/// The extension line that says how often the writer promises a checkpoint while idle:
/// `heartbeat-ms ` + milliseconds in decimal.
pub const HEARTBEAT_EXTENSION: &str = "heartbeat-ms ";

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The body breaks a rule of the format; the text says which.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The note around it was refused (syntax, signature, untrusted key).
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// Whether `origin` is a valid origin line: non-empty, no control character, not starting
/// with `—` (so notes appended one after another can be told apart: see [`split_notes`]).
fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() {
        return Err(CheckpointError::Malformed("the origin is empty"));
    }
    if origin.chars().any(char::is_control) {
        return Err(CheckpointError::Malformed("the origin has a control character"));
    }
    if origin.starts_with('\u{2014}') {
        return Err(CheckpointError::Malformed("the origin starts with '—'"));
    }
    Ok(())
}

/// A checkpoint body: the trail's origin, tree size, root hash and extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
    extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: &str, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        check_origin(origin)?;
        Ok(Checkpoint { origin: origin.to_owned(), size, root, extensions: Vec::new() })
    }

    /// Adds an extension line (non-empty, no control character).
    pub fn with_extension(mut self, line: &str) -> Result<Self, CheckpointError> {
        if line.is_empty() || line.chars().any(char::is_control) {
            return Err(CheckpointError::Malformed("an extension line is empty or has a control character"));
        }
        self.extensions.push(line.to_owned());
        Ok(self)
    }

    /// Adds the `time` extension line.
    pub fn with_time(mut self, time: DateTime<Utc>) -> Self {
        self.extensions
            .push(format!("{TIME_EXTENSION}{}", time.to_rfc3339_opts(SecondsFormat::Micros, true)));
        self
    }

    /// The origin: names the trail (the log), e.g. `example.com/billing-audit`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The tree size: the number of records covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root hash of the first [`size`](Self::size) records.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The extension lines (without their `\n`).
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// The time of the first `time` extension line, if there is one and it parses.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        let t = self.extensions.iter().find_map(|l| l.strip_prefix(TIME_EXTENSION))?;
        DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The heartbeat interval of the first `heartbeat-ms` extension line, if any.
    pub fn heartbeat(&self) -> Option<Duration> {
        let ms = self.extensions.iter().find_map(|l| l.strip_prefix(HEARTBEAT_EXTENSION))?;
        if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        ms.parse().ok().map(Duration::from_millis)
    }

    /// Whether, at `now`, a newer checkpoint should exist: `now` is past this checkpoint's
    /// time plus its heartbeat interval plus `grace` (a trail that stopped being written, or
    /// whose newer checkpoints were removed). `false` when the checkpoint has no time or no
    /// heartbeat.
    pub fn is_stale(&self, now: DateTime<Utc>, grace: Duration) -> bool {
        let (Some(t), Some(hb)) = (self.time(), self.heartbeat()) else { return false };
        let Ok(limit) = chrono::Duration::from_std(hb + grace) else { return false };
        t.checked_add_signed(limit).is_some_and(|deadline| now > deadline)
    }

    /// The body text: `origin\nsize\nbase64(root)\n` and one line per extension.
    pub fn to_text(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a body: at least three `\n`-terminated lines; the size in canonical decimal
    /// (no sign, no leading zero); the root hash standard base64 of exactly 32 bytes;
    /// extension lines non-empty.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Malformed("the body does not end with a newline"))?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(CheckpointError::Malformed("fewer than three lines (origin, size, root)"));
        };
        check_origin(origin)?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(CheckpointError::Malformed("the tree size is not a canonical decimal number"));
        }
        let size: u64 =
            size.parse().map_err(|_| CheckpointError::Malformed("the tree size does not fit in 64 bits"))?;
        let root = B64
            .decode(root)
            .map_err(|_| CheckpointError::Malformed("the root hash is not standard base64"))?;
        let root: Hash =
            root.try_into().map_err(|_| CheckpointError::Malformed("the root hash is not 32 bytes"))?;
        let mut cp = Checkpoint::new(origin, size, root)?;
        for e in lines {
            cp = cp.with_extension(e)?;
        }
        Ok(cp)
    }
}

/// A checkpoint and the signed note that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    checkpoint: Checkpoint,
    note: String,
}

impl SignedCheckpoint {
    /// Signs a checkpoint with one key (or more: [`sign_with`](Self::sign_with)).
    pub fn sign(checkpoint: Checkpoint, signer: &NoteSigner) -> Self {
        Self::sign_with(checkpoint, &[signer])
            .expect("a checkpoint body built by Checkpoint is a valid note text and a signer is given")
    }

    /// Signs a checkpoint with several keys (during a rotation).
    pub fn sign_with(checkpoint: Checkpoint, signers: &[&NoteSigner]) -> Result<Self, CheckpointError> {
        let note = note::sign(&checkpoint.to_text(), signers)?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// Opens a signed checkpoint: the note must be signed by a trusted key
    /// ([`note::open`]) and its text must be a valid checkpoint body.
    pub fn open(msg: &[u8], trusted: &[NoteVerifier]) -> Result<Self, CheckpointError> {
        let n = note::open(msg, trusted)?;
        let checkpoint = Checkpoint::parse(n.text())?;
        let note = String::from_utf8(msg.to_vec()).map_err(|_| CheckpointError::Malformed("not UTF-8"))?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// Parses a signed checkpoint **without checking its signatures** (only the syntax of the
    /// note and of the body): for an anchor comparing what it is given with what it holds.
    /// Anything that decides whether to trust a checkpoint uses [`open`](Self::open).
    pub fn parse_unverified(msg: &[u8]) -> Result<Self, CheckpointError> {
        let n = note::parse(msg)?;
        let checkpoint = Checkpoint::parse(n.text)?;
        let note = String::from_utf8(msg.to_vec()).map_err(|_| CheckpointError::Malformed("not UTF-8"))?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// The checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The whole note: body, blank line, signatures; what is written to files and anchors.
    pub fn note(&self) -> &str {
        &self.note
    }
}

/// Splits a file of notes written one after another (an append-only checkpoint file) into
/// the notes. A note ends after its signature block (the lines starting `— ` that follow its
/// blank line); the next line starts the next note (origins never start with `—`). A torn
/// last note (cut while written) is returned as it is: opening it fails.
pub fn split_notes(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    let mut in_sigs = false;
    while pos < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i + 1);
        let line = &bytes[pos..end];
        if in_sigs && !line.starts_with("\u{2014} ".as_bytes()) {
            out.push(&bytes[start..pos]);
            start = pos;
            in_sigs = false;
        }
        if !in_sigs && line == b"\n" {
            in_sigs = true;
        }
        pos = end;
    }
    if start < bytes.len() {
        out.push(&bytes[start..]);
    }
    out
}

/// When a [`Checkpointer`] is due: every `every_records` records, or `every` after the
/// first record not yet covered, whichever comes first; and every `heartbeat` while idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// A checkpoint is due after this many new records. Default 1000. (A trail's writer
    /// thread makes it in its next turn: records that `Flushed` operations write meanwhile
    /// are covered too; under `Flushed` load they leave it the turn once a checkpoint is
    /// 100 ms overdue.)
    pub every_records: u64,
    /// A checkpoint at the latest this long after the last one when records were added
    /// since. Default 1 s.
    pub every: Duration,
    /// A checkpoint (of the same size: a heartbeat) this long after the last one when no
    /// record was added: how long the trail was, at a known interval. Default 60 s.
    pub heartbeat: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_records: 1000,
            every: Duration::from_secs(1),
            heartbeat: Duration::from_secs(60),
        }
    }
}

/// The checkpoint engine a trail's writer drives: the Merkle tree's O(log n) state
/// ([`CompactTree`]), the signing key, and when the next checkpoint is due.
///
/// The writer calls [`on_record`](Self::on_record) once per record line written (headers
/// excluded), and on each flush tick `if cp.due(now) { let c = cp.checkpoint(now); … }`
/// to write `c` to the trail's checkpoint file and hand it to its anchors. A new
/// checkpointer is due at once (a checkpoint when the trail opens).
#[derive(Debug)]
pub struct Checkpointer {
    origin: String,
    signer: NoteSigner,
    policy: CheckpointPolicy,
    tree: CompactTree,
    last_size: u64,
    last_at: Option<Instant>,
}

impl Checkpointer {
    /// A checkpointer for an empty trail.
    pub fn new(origin: &str, signer: NoteSigner, policy: CheckpointPolicy) -> Result<Self, CheckpointError> {
        Self::resume(origin, signer, policy, CompactTree::new())
    }

    /// A checkpointer for a trail that already has the records of `tree` (see
    /// [`tree_of_trail`] to rebuild it when the trail is reopened).
    pub fn resume(
        origin: &str,
        signer: NoteSigner,
        policy: CheckpointPolicy,
        tree: CompactTree,
    ) -> Result<Self, CheckpointError> {
        check_origin(origin)?;
        if policy.every_records == 0 {
            return Err(CheckpointError::Malformed("every_records must be at least 1"));
        }
        let last_size = tree.size();
        Ok(Checkpointer { origin: origin.to_owned(), signer, policy, tree, last_size, last_at: None })
    }

    /// Adds one record line to the tree (its trailing `\n`, if given, is not part of the
    /// leaf; a record line never contains another).
    pub fn on_record(&mut self, line: &[u8]) {
        self.tree.push_line(line.strip_suffix(b"\n").unwrap_or(line));
    }

    /// Adds every record line of `buf`, a run of complete `\n`-terminated lines as the writer
    /// wrote them (one write batch), skipping segment headers (lines starting
    /// `{"v":1,"segment":`, §4 of the format). Returns how many records were added. Bytes
    /// after the last `\n` (none, from a writer that writes whole lines) are ignored.
    pub fn on_lines(&mut self, buf: &[u8]) -> u64 {
        const HEADER: &[u8] = b"{\"v\":1,\"segment\":";
        let mut added = 0;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', buf) {
            let line = &buf[start..end];
            if !line.starts_with(HEADER) {
                self.tree.push_line(line);
                added += 1;
            }
            start = end + 1;
        }
        added
    }

    /// Whether a checkpoint is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        let Some(last) = self.last_at else { return true };
        let pending = self.tree.size() - self.last_size;
        let since = now.saturating_duration_since(last);
        pending >= self.policy.every_records
            || (pending > 0 && since >= self.policy.every)
            || since >= self.policy.heartbeat
    }

    /// When the next checkpoint falls due by time alone (the writer's longest sleep); `None`
    /// when one is due now.
    pub fn next_deadline(&self) -> Option<Instant> {
        let last = self.last_at?;
        let wait = if self.tree.size() > self.last_size { self.policy.every } else { self.policy.heartbeat };
        Some(last + wait)
    }

    /// Makes and signs the checkpoint of the records so far, stamped with the wall clock.
    pub fn checkpoint(&mut self, now: Instant) -> SignedCheckpoint {
        self.checkpoint_at(now, Utc::now())
    }

    /// [`checkpoint`](Self::checkpoint) with the wall-clock time given.
    pub fn checkpoint_at(&mut self, now: Instant, wall: DateTime<Utc>) -> SignedCheckpoint {
        let mut cp = Checkpoint {
            origin: self.origin.clone(),
            size: self.tree.size(),
            root: self.tree.root(),
            extensions: Vec::new(),
        }
        .with_time(wall);
        cp.extensions.push(format!("{HEARTBEAT_EXTENSION}{}", self.policy.heartbeat.as_millis()));
        self.last_size = self.tree.size();
        self.last_at = Some(now);
        SignedCheckpoint::sign(cp, &self.signer)
    }

    /// The tree so far.
    pub fn tree(&self) -> &CompactTree {
        &self.tree
    }

    /// The signer's public key.
    pub fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }
}

/// Rebuilds the tree of a trail's records from its segment files (headers skipped; a torn
/// last line, without its `\n`, is not a record). O(n) time, O(log n) memory.
pub fn tree_of_trail(dir: &Path) -> std::io::Result<CompactTree> {
    let mut tree = CompactTree::new();
    for_each_record(dir, |l| tree.push_line(l))?;
    Ok(tree)
}

/// What a trail's records say about one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointVerdict {
    /// The root of the trail's first `size` records is the checkpoint's root.
    Matches,
    /// The checkpoint covers more records than the trail has: records were removed from its
    /// end (or whole segments). TAMPERED.
    Truncated {
        /// The checkpoint's size.
        claimed: u64,
        /// The records in the trail.
        records: u64,
    },
    /// The trail's first `size` records have another root: they were changed. TAMPERED.
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
    },
}

/// Checks checkpoints against a trail's records in one pass, O(log n) memory plus the
/// checkpoints: feed every record line in order ([`push_line`](Self::push_line)), then
/// [`finish`](Self::finish). What `verify` runs for each checkpoint it finds.
#[derive(Debug, Clone)]
pub struct TrailCheck {
    tree: CompactTree,
    /// (size, root, index in the caller's list), by size.
    wanted: Vec<(u64, Hash, usize)>,
    next: usize,
    verdicts: Vec<Option<CheckpointVerdict>>,
}

impl TrailCheck {
    /// A check of these checkpoints (opened with trusted keys beforehand).
    pub fn new<'a>(checkpoints: impl IntoIterator<Item = &'a Checkpoint>) -> Self {
        let mut wanted: Vec<(u64, Hash, usize)> =
            checkpoints.into_iter().enumerate().map(|(i, c)| (c.size(), c.root, i)).collect();
        wanted.sort_by_key(|w| w.0);
        let mut t =
            TrailCheck { tree: CompactTree::new(), verdicts: vec![None; wanted.len()], wanted, next: 0 };
        t.settle();
        t
    }

    /// Decides every checkpoint of the current size.
    fn settle(&mut self) {
        while let Some(&(size, root, i)) = self.wanted.get(self.next) {
            if size != self.tree.size() {
                break;
            }
            self.verdicts[i] = Some(if self.tree.root() == root {
                CheckpointVerdict::Matches
            } else {
                CheckpointVerdict::RootMismatch { size }
            });
            self.next += 1;
        }
    }

    /// The next record line (without its `\n`).
    pub fn push_line(&mut self, line: &[u8]) {
        self.push_leaf(leaf_hash(line));
    }

    /// The next record's leaf hash (when the caller hashes the line for other uses too).
    pub fn push_leaf(&mut self, leaf: Hash) {
        self.tree.push(leaf);
        self.settle();
    }

    /// The verdict of every checkpoint, in the order given to [`new`](Self::new).
    pub fn finish(self) -> Vec<CheckpointVerdict> {
        let records = self.tree.size();
        self.verdicts
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.unwrap_or_else(|| {
                    let claimed = self.wanted.iter().find(|w| w.2 == i).map_or(0, |w| w.0);
                    CheckpointVerdict::Truncated { claimed, records }
                })
            })
            .collect()
    }
}

/// Reads a trail's record lines in order (headers skipped, a torn last line ignored).
fn for_each_record(dir: &Path, f: impl FnMut(&[u8])) -> std::io::Result<()> {
    let files: Vec<PathBuf> = super::list_segments(dir)?.into_iter().map(|(_, p)| p).collect();
    for_each_record_in(&files, f).map_err(|(_, e)| e)
}

/// Calls `f` with every record line (without its `\n`) of the segment files, in order: the
/// first line of each file (its header) is skipped, a torn last line (no `\n`) is not a
/// record. On a read error, the file and the error.
pub fn for_each_record_in(
    files: &[PathBuf],
    mut f: impl FnMut(&[u8]),
) -> Result<(), (PathBuf, std::io::Error)> {
    use std::io::BufRead as _;
    for path in files {
        let err = |e| (path.clone(), e);
        let mut r = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(path).map_err(err)?);
        let mut line = Vec::with_capacity(1024);
        let mut first = true;
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).map_err(err)? == 0 {
                break;
            }
            let Some(body) = line.strip_suffix(b"\n") else { break };
            if !std::mem::take(&mut first) {
                f(body);
            }
        }
    }
    Ok(())
}

/// Checks checkpoints against the trail in `dir` ([`TrailCheck`] over its segment files).
pub fn check_trail<'a>(
    dir: &Path,
    checkpoints: impl IntoIterator<Item = &'a Checkpoint>,
) -> std::io::Result<Vec<CheckpointVerdict>> {
    let mut check = TrailCheck::new(checkpoints);
    for_each_record(dir, |l| check.push_line(l))?;
    Ok(check.finish())
}

/// Turns on signed checkpoints in a [`JsonLinesSink`](super::JsonLinesSink)
/// ([`JsonLinesOptions::checkpoints`](super::JsonLinesOptions::checkpoints)): the writer keeps
/// the Merkle tree of the records it writes and, when the [`policy`](Self::policy) says so,
/// syncs the segment, signs a checkpoint of the records on disk, appends it to the trail's
/// `checkpoints.notes` and hands it to every anchor.
#[derive(Clone)]
pub struct CheckpointOptions {
    /// The trail's name in its checkpoints (`example.com/billing-audit`).
    pub origin: String,
    /// The signing key ([`NoteSigner::load`] from a key file made by
    /// `map-wrapper-audit keygen`).
    pub signer: NoteSigner,
    /// When to checkpoint.
    pub policy: CheckpointPolicy,
    /// Where else every checkpoint goes (outside the trail's directory). A failing anchor
    /// is logged (`tracing`, target `audit`) and counted
    /// ([`JsonLinesStats::anchor_failures`](super::JsonLinesStats::anchor_failures)); it
    /// does not stop the trail.
    pub anchors: Vec<std::sync::Arc<dyn super::anchor::CheckpointAnchor>>,
}

impl CheckpointOptions {
    /// Checkpoints of `origin` signed with `signer`, the default policy, no anchor besides
    /// the trail's own `checkpoints.notes`.
    pub fn new(origin: &str, signer: NoteSigner) -> Self {
        CheckpointOptions {
            origin: origin.to_owned(),
            signer,
            policy: CheckpointPolicy::default(),
            anchors: Vec::new(),
        }
    }

    /// Adds an anchor.
    #[must_use]
    pub fn anchor(mut self, anchor: impl super::anchor::CheckpointAnchor + 'static) -> Self {
        self.anchors.push(std::sync::Arc::new(anchor));
        self
    }

    /// Sets the policy.
    #[must_use]
    pub fn policy(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = policy;
        self
    }
}

impl std::fmt::Debug for CheckpointOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointOptions")
            .field("origin", &self.origin)
            .field("signer", &self.signer)
            .field("policy", &self.policy)
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

/// Rebuilds the tree of a trail's records and checks them against `held` (the latest
/// checkpoint the trail's own `checkpoints.notes` holds), in one pass: what a writer does
/// before it continues a trail. The verdict is `None` when nothing is held.
pub fn resume_tree(
    dir: &Path,
    held: Option<&Checkpoint>,
) -> std::io::Result<(CompactTree, Option<CheckpointVerdict>)> {
    let mut tree = CompactTree::new();
    let mut check = TrailCheck::new(held);
    for_each_record(dir, |l| {
        let leaf = leaf_hash(l);
        tree.push(leaf);
        check.push_leaf(leaf);
    })?;
    Ok((tree, held.map(|_| check.finish().remove(0))))
}

/// What [`check_checkpoints`] is given: the trusted keys and where the checkpoints are.
#[derive(Debug, Clone, Default)]
pub struct CheckpointCheckOptions {
    /// The trail's verifier keys (several during a rotation).
    pub trusted: Vec<NoteVerifier>,
    /// The trail's own append files of notes (`checkpoints.notes` in its directory): a note
    /// in them that does not open with a trusted key is TAMPERED (a torn last one is
    /// ignored, with a note).
    pub trail_notes: Vec<PathBuf>,
    /// Checkpoints kept elsewhere (`--checkpoint FILE`): files of one or more notes, each
    /// of which must open with a trusted key (else an error: the input is bad).
    pub external: Vec<PathBuf>,
    /// The verifier's state file (`--state FILE`): the latest checkpoint seen; checked
    /// against the trail, then advanced to the newest checkpoint that matches it.
    pub state: Option<PathBuf>,
    /// How late past its heartbeat a checkpoint may be before the trail is STALE.
    pub grace: Duration,
    /// The time to judge staleness at (default: now).
    pub now: Option<DateTime<Utc>>,
}

/// What [`check_checkpoints`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointFindings {
    /// Checkpoints checked against the trail (every one found).
    pub checked: usize,
    /// Records in the trail.
    pub records: u64,
    /// The size of the largest checkpoint found.
    pub latest_size: Option<u64>,
    /// Why the trail is TAMPERED, if it is: a checkpoint it does not hold, a checkpoint of
    /// the trail's own that does not open, a state it does not extend.
    pub tampered: Option<String>,
    /// Why the trail is STALE, if it is: its latest checkpoint's heartbeat promise is
    /// broken and the trail does not end with `audit_stop`.
    pub stale: Option<String>,
    /// Facts worth knowing (state advanced, torn last note, …).
    pub notes: Vec<String>,
}

/// A checkpoint and where it was found.
struct Found {
    source: String,
    cp: SignedCheckpoint,
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, AnchorError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AnchorError::Io { path: path.display().to_string(), reason: e.to_string() }),
    }
}

/// Checks a trail (its segment files, in order) against every checkpoint found for it, in
/// one pass over its records ([`CheckpointRun`] over [`for_each_record_in`]).
pub fn check_checkpoints(
    files: &[PathBuf],
    opts: &CheckpointCheckOptions,
) -> Result<CheckpointFindings, AnchorError> {
    let mut run = CheckpointRun::new(opts)?;
    for_each_record_in(files, |line| run.push_line(line))
        .map_err(|(path, e)| AnchorError::Io { path: path.display().to_string(), reason: e.to_string() })?;
    run.finish()
}

/// The checkpoint checks of one verification (§ "What a verifier concludes" of
/// `docs/AUDIT_FORMAT.md`), fed the trail's record lines in order: every checkpoint found
/// must open with a trusted key, be of one origin, cover no more records than the trail has,
/// and have the root of the records it covers; the state file, if given, must be extended
/// by the trail (a consistency proof from it to the newest checkpoint), and is then
/// advanced; a trail whose latest checkpoint is past its heartbeat (plus the grace) and that
/// does not end with `audit_stop` is STALE. O(log² n) memory besides the checkpoints.
pub struct CheckpointRun {
    trusted: Vec<NoteVerifier>,
    grace: Duration,
    now: Option<DateTime<Utc>>,
    found: Vec<Found>,
    state: Option<CheckpointState>,
    seen: Option<SignedCheckpoint>,
    newest: Option<SignedCheckpoint>,
    check: TrailCheck,
    prover: StreamingProver,
    first_seq: Option<u64>,
    last: Vec<u8>,
    out: CheckpointFindings,
}

impl std::fmt::Debug for CheckpointRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointRun").field("checkpoints", &self.found.len()).finish_non_exhaustive()
    }
}

impl CheckpointRun {
    /// Reads every checkpoint the options name. `Err` when an input cannot be used (an
    /// external checkpoint or state file that is unreadable or not trusted).
    pub fn new(opts: &CheckpointCheckOptions) -> Result<Self, AnchorError> {
        let trusted = &opts.trusted;
        let mut out = CheckpointFindings::default();
        let mut found: Vec<Found> = Vec::new();
        for path in &opts.trail_notes {
            let Some(bytes) = read_opt(path)? else { continue };
            let pieces = split_notes(&bytes);
            for (i, piece) in pieces.iter().enumerate() {
                match SignedCheckpoint::open(piece, trusted) {
                    Ok(cp) => {
                        found.push(Found { source: format!("{} (note {})", path.display(), i + 1), cp })
                    }
                    Err(_) if i + 1 == pieces.len() && SignedCheckpoint::parse_unverified(piece).is_err() => {
                        out.notes.push(format!(
                            "{}: a torn last note ({} bytes) is ignored",
                            path.display(),
                            piece.len()
                        ))
                    }
                    Err(e) => {
                        out.tampered.get_or_insert(format!(
                            "{} (note {}) does not open: {e}",
                            path.display(),
                            i + 1
                        ));
                    }
                }
            }
        }
        for path in &opts.external {
            let bytes = read_opt(path)?.ok_or_else(|| AnchorError::Io {
                path: path.display().to_string(),
                reason: "no such file".into(),
            })?;
            for (i, piece) in split_notes(&bytes).into_iter().enumerate() {
                let cp = SignedCheckpoint::open(piece, trusted)
                    .map_err(|error| AnchorError::Bad { path: path.display().to_string(), error })?;
                found.push(Found { source: format!("{} (note {})", path.display(), i + 1), cp });
            }
        }
        let state = opts.state.as_ref().map(CheckpointState::new);
        let seen = match &state {
            Some(s) => s.load(trusted)?,
            None => None,
        };
        if let Some(cp) = &seen {
            let path = opts.state.as_ref().map_or_else(String::new, |p| p.display().to_string());
            found.push(Found { source: format!("{path} (state)"), cp: cp.clone() });
        }
        if let Some(first) = found.first() {
            if let Some(other) =
                found.iter().find(|f| f.cp.checkpoint().origin() != first.cp.checkpoint().origin())
            {
                out.tampered.get_or_insert(format!(
                    "checkpoints of two logs: {:?} in {} and {:?} in {}",
                    first.cp.checkpoint().origin(),
                    first.source,
                    other.cp.checkpoint().origin(),
                    other.source
                ));
            }
        }
        let newest = found
            .iter()
            .map(|f| &f.cp)
            .max_by_key(|c| (c.checkpoint().size(), c.checkpoint().time()))
            .cloned();
        out.latest_size = newest.as_ref().map(|c| c.checkpoint().size());
        out.checked = found.len();
        let ranges = match (&seen, &newest) {
            (Some(old), Some(new)) if old.checkpoint().size() <= new.checkpoint().size() => {
                consistency_ranges(old.checkpoint().size(), new.checkpoint().size()).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let check = TrailCheck::new(found.iter().map(|f| f.cp.checkpoint()));
        Ok(CheckpointRun {
            trusted: opts.trusted.clone(),
            grace: opts.grace,
            now: opts.now,
            found,
            state,
            seen,
            newest,
            check,
            prover: StreamingProver::new(ranges),
            first_seq: None,
            last: Vec::new(),
            out,
        })
    }

    /// The next record line (without its `\n`).
    pub fn push_line(&mut self, line: &[u8]) {
        self.push_line_with_leaf(line, leaf_hash(line));
    }

    /// The next record line (without its `\n`) with its leaf hash (its
    /// [`leaf_hash`]), for a caller that computed it.
    pub fn push_line_with_leaf(&mut self, line: &[u8], leaf: Hash) {
        self.push_leaf(leaf);
        if self.first_seq.is_none() {
            self.first_seq = Some(record_field(line, "seq").and_then(|v| v.as_u64()).unwrap_or(0));
        }
        self.last.clear();
        self.last.extend_from_slice(line);
    }

    /// The next record's leaf hash alone: for a caller that gives the first and the last
    /// record lines (their `seq` and `op` are checked) to
    /// [`push_line_with_leaf`](Self::push_line_with_leaf), and the others' leaves here.
    pub(crate) fn push_leaf(&mut self, leaf: Hash) {
        self.prover.push(leaf);
        self.check.push_leaf(leaf);
    }

    /// The findings; advances the state file when the trail holds every checkpoint.
    pub fn finish(self) -> Result<CheckpointFindings, AnchorError> {
        let CheckpointRun {
            trusted,
            grace,
            now,
            found,
            state,
            seen,
            newest,
            check,
            prover,
            first_seq,
            last,
            mut out,
        } = self;
        out.records = check.tree.size();
        if first_seq.is_some_and(|s| s != 1) {
            out.notes.push(format!(
                "the trail starts at seq {}: checkpoints cover a trail from seq 1 and were not checked",
                first_seq.unwrap_or(0)
            ));
            out.checked = 0;
            return Ok(out);
        }
        for (f, v) in found.iter().zip(check.finish()) {
            if let Some(t) = super::proof::tamper_text(&v) {
                out.tampered.get_or_insert(format!("{}: {t}", f.source));
            }
        }
        if let (Some(state), Some(new), None) = (&state, &newest, &out.tampered) {
            let proof = prover.finish().unwrap_or_default();
            match state.observe(new.note().as_bytes(), &proof, &trusted)? {
                Decision::Tampered(t) => out.tampered = Some(format!("state file: {t}")),
                Decision::First => out
                    .notes
                    .push(format!("state: kept the checkpoint of {} records", new.checkpoint().size())),
                Decision::Advance => out.notes.push(format!(
                    "state: advanced from {} to {} records (consistent)",
                    seen.as_ref().map_or(0, |s| s.checkpoint().size()),
                    new.checkpoint().size()
                )),
                Decision::Same => out
                    .notes
                    .push(format!("state: the trail still holds its {} records", new.checkpoint().size())),
            }
        }
        let latest_in_time = found
            .iter()
            .map(|f| &f.cp)
            .filter(|c| c.checkpoint().time().is_some())
            .max_by_key(|c| c.checkpoint().time());
        if let Some(c) = latest_in_time {
            let now = now.unwrap_or_else(Utc::now);
            let stopped = record_field(&last, "op").is_some_and(|op| op == "audit_stop");
            if !stopped && c.checkpoint().is_stale(now, grace) {
                out.stale = Some(format!(
                    "the latest checkpoint ({} records, {}) promised the next within {} ms and none followed: the \
                     trail stopped being checkpointed without audit_stop, or its newer checkpoints were removed",
                    c.checkpoint().size(),
                    c.checkpoint().time().map_or_else(String::new, |t| t.to_rfc3339_opts(SecondsFormat::Micros, true)),
                    c.checkpoint().heartbeat().map_or(0, |h| h.as_millis()),
                ));
            }
        }
        Ok(out)
    }
}

/// One top-level field of a record line.
fn record_field(line: &[u8], name: &str) -> Option<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(line).ok()?.get_mut(name).map(serde_json::Value::take)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::leaf_hash;
    use proptest::prelude::*;

    fn signer() -> NoteSigner {
        NoteSigner::from_seed("example.com/audit", [9; 32]).unwrap()
    }

    #[test]
    fn body_round_trips_and_matches_the_c2sp_layout() {
        let root = leaf_hash(b"x");
        let cp = Checkpoint::new("example.com/audit", 42, root).unwrap().with_extension("time 2026").unwrap();
        assert_eq!(cp.to_text(), format!("example.com/audit\n42\n{}\ntime 2026\n", B64.encode(root)));
        assert_eq!(Checkpoint::parse(&cp.to_text()).unwrap(), cp);
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_rule_they_break() {
        let r = B64.encode([0u8; 32]);
        for (text, why) in [
            (format!("o\n1\n{r}"), "end with a newline"),
            ("o\n1\n".to_string(), "fewer than three"),
            (format!("\n1\n{r}\n"), "origin is empty"),
            (format!("o\n01\n{r}\n"), "canonical decimal"),
            (format!("o\n+1\n{r}\n"), "canonical decimal"),
            (format!("o\n99999999999999999999\n{r}\n"), "64 bits"),
            ("o\n1\nAAAA\n".to_string(), "not 32 bytes"),
            ("o\n1\n!!\n".to_string(), "not standard base64"),
            (format!("o\n1\n{r}\n\n"), "extension line is empty"),
            (format!("\u{2014} o\n1\n{r}\n"), "starts with"),
        ] {
            let e = Checkpoint::parse(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn signed_checkpoint_opens_with_its_key_only_and_any_change_fails() {
        let s = signer();
        let t = DateTime::parse_from_rfc3339("2026-12-02T12:00:00.5Z").unwrap().with_timezone(&Utc);
        let cp = Checkpoint::new("example.com/audit", 7, leaf_hash(b"r")).unwrap().with_time(t);
        let sc = SignedCheckpoint::sign(cp.clone(), &s);
        assert!(sc.note().contains("\ntime 2026-12-02T12:00:00.500000Z\n\n\u{2014} example.com/audit "));
        let back = SignedCheckpoint::open(sc.note().as_bytes(), &[s.verifier()]).unwrap();
        assert_eq!(back.checkpoint(), &cp);
        assert_eq!(back.checkpoint().time(), Some(t));
        let other = NoteSigner::from_seed("example.com/audit", [8; 32]).unwrap();
        assert!(SignedCheckpoint::open(sc.note().as_bytes(), &[other.verifier()]).is_err());
        let bigger = sc.note().replacen("\n7\n", "\n8\n", 1);
        assert!(matches!(
            SignedCheckpoint::open(bigger.as_bytes(), &[s.verifier()]),
            Err(CheckpointError::Note(NoteError::InvalidSignature { .. }))
        ));
        assert_eq!(SignedCheckpoint::parse_unverified(bigger.as_bytes()).unwrap().checkpoint().size(), 8);
    }

    #[test]
    fn checkpointer_is_due_every_n_records_every_t_and_on_heartbeat() {
        let policy = CheckpointPolicy {
            every_records: 3,
            every: Duration::from_millis(100),
            heartbeat: Duration::from_secs(10),
        };
        let mut c = Checkpointer::new("o", signer(), policy).unwrap();
        let t0 = Instant::now();
        assert!(c.due(t0), "due at once: the checkpoint of the trail's opening");
        assert_eq!(c.checkpoint(t0).checkpoint().size(), 0);
        assert!(!c.due(t0));
        c.on_record(b"a\n");
        c.on_record(b"b");
        assert!(!c.due(t0 + Duration::from_millis(99)), "2 records, 99 ms: not yet");
        assert!(c.due(t0 + Duration::from_millis(100)), "records pending for T");
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_millis(100)));
        c.on_record(b"c");
        assert!(c.due(t0), "N records");
        let sc = c.checkpoint(t0);
        assert_eq!(sc.checkpoint().size(), 3);
        let lines: [&[u8]; 3] = [b"a", b"b", b"c"];
        assert_eq!(*sc.checkpoint().root(), CompactTree::from_leaves(&lines.map(leaf_hash)).root());
        // Idle: no checkpoint until the heartbeat, then one of the same size.
        assert!(!c.due(t0 + Duration::from_secs(9)));
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert!(c.due(t0 + Duration::from_secs(10)));
        let wall = DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z").unwrap().with_timezone(&Utc);
        let hb = c.checkpoint_at(t0 + Duration::from_secs(10), wall);
        assert_eq!((hb.checkpoint().size(), hb.checkpoint().root()), (3, sc.checkpoint().root()));
        // The heartbeat promise is in the signed body: stale once it is broken.
        let body = hb.checkpoint();
        assert_eq!(body.heartbeat(), Some(Duration::from_secs(10)));
        let grace = Duration::from_secs(1);
        assert!(!body.is_stale(wall + chrono::Duration::seconds(11), grace));
        assert!(body.is_stale(wall + chrono::Duration::milliseconds(11_001), grace));
        assert!(Checkpointer::new("o", signer(), CheckpointPolicy { every_records: 0, ..policy }).is_err());
        assert!(Checkpointer::new("", signer(), policy).is_err());
    }

    #[test]
    fn tree_of_trail_matches_the_tree_kept_while_writing() {
        let dir = tempfile::tempdir().unwrap();
        // Two segments, each with a header line; a torn last line.
        std::fs::write(dir.path().join("segment-000001.jsonl"), "{\"v\":1,\"segment\":1}\nr1\nr2\n").unwrap();
        std::fs::write(dir.path().join("segment-000002.jsonl"), "{\"v\":1,\"segment\":2}\nr3\nr4-torn")
            .unwrap();
        let t = tree_of_trail(dir.path()).unwrap();
        let lines: [&[u8]; 3] = [b"r1", b"r2", b"r3"];
        assert_eq!(t, CompactTree::from_leaves(&lines.map(leaf_hash)));
        let mut c = Checkpointer::resume("o", signer(), CheckpointPolicy::default(), t).unwrap();
        c.on_record(b"r4");
        let lines: [&[u8]; 4] = [b"r1", b"r2", b"r3", b"r4"];
        assert_eq!(c.tree().root(), CompactTree::from_leaves(&lines.map(leaf_hash)).root());
    }

    #[test]
    fn on_lines_adds_the_records_of_a_write_batch_and_skips_headers() {
        let mut batch = Checkpointer::new("o", signer(), CheckpointPolicy::default()).unwrap();
        let mut one = Checkpointer::new("o", signer(), CheckpointPolicy::default()).unwrap();
        let buf = b"{\"v\":1,\"seq\":1}\n{\"v\":1,\"segment\":2,\"ts\":\"x\"}\n{\"v\":1,\"seq\":2}\n";
        assert_eq!(batch.on_lines(buf), 2);
        one.on_record(b"{\"v\":1,\"seq\":1}\n");
        one.on_record(b"{\"v\":1,\"seq\":2}");
        assert_eq!(batch.tree(), one.tree());
        assert_eq!(batch.on_lines(b"no newline yet"), 0);
    }

    #[test]
    fn split_notes_finds_each_note_of_an_append_file() {
        let s = signer();
        let mut c = Checkpointer::new("o", s.clone(), CheckpointPolicy::default()).unwrap();
        let t = Instant::now();
        let mut file = String::new();
        let mut made = Vec::new();
        for i in 0..4 {
            c.on_record(format!("r{i}").as_bytes());
            let sc = c.checkpoint(t);
            file.push_str(sc.note());
            made.push(sc);
        }
        let notes = split_notes(file.as_bytes());
        assert_eq!(notes.len(), 4);
        for (n, sc) in notes.iter().zip(&made) {
            assert_eq!(&SignedCheckpoint::open(n, &[s.verifier()]).unwrap(), sc);
        }
        // A torn last note is its own (unopenable) piece.
        let torn = &file.as_bytes()[..file.len() - 10];
        let notes = split_notes(torn);
        assert_eq!(notes.len(), 4);
        assert!(SignedCheckpoint::open(notes[3], &[s.verifier()]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Checkpoint::parse(&String::from_utf8_lossy(&bytes));
            let _ = SignedCheckpoint::open(&bytes, &[signer().verifier()]);
            let _ = SignedCheckpoint::parse_unverified(&bytes);
            let pieces = split_notes(&bytes);
            prop_assert_eq!(pieces.concat(), bytes);
        }
    }
}
