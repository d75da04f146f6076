//! Anchors: places outside the trail's directory that keep its signed checkpoints, so that
//! deleting the trail's tail (or all of it) is seen; and the verifier's "latest checkpoint
//! seen" state.
//!
//! - [`CheckpointAnchor`]: one small trait; [`FileAnchor`] (one file, replaced atomically)
//!   and [`DirAnchor`] (a directory, e.g. on another disk: one file per tree size, or one
//!   append-only file). The remote sinks implement the same trait. Every anchor refuses to go
//!   backwards: a checkpoint of a smaller tree, or of the same size with another root, than
//!   the one it holds is an error ([`AnchorError::Backwards`], [`AnchorError::Fork`]).
//! - [`decide`] / [`CheckpointState`]: given the latest checkpoint seen, a newer one and the
//!   consistency proof between them, advance or report [`Decision::Tampered`] (as Go's
//!   sumdb client keeps its latest tree and refuses one that does not extend it).

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::checkpoint::{split_notes, Checkpoint, CheckpointError, SignedCheckpoint};
use super::merkle::{verify_consistency, Hash, MerkleError};
use super::note::NoteVerifier;

/// Why an anchor refused or failed to keep a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// Reading or writing the anchor failed.
    #[error("anchor {path}: {reason}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The checkpoint is of a smaller tree than the one the anchor holds.
    #[error("refused: the anchor holds a checkpoint of {held} records, this one has {offered}")]
    Backwards {
        /// The size held.
        held: u64,
        /// The size offered.
        offered: u64,
    },
    /// The checkpoint has the size of the one held and another root: two histories.
    #[error("refused: a checkpoint of {size} records with another root than the one held (a fork)")]
    Fork {
        /// The size.
        size: u64,
    },
    /// The checkpoint names another log.
    #[error("refused: the anchor holds checkpoints of {held:?}, this one is of {offered:?}")]
    OtherOrigin {
        /// The origin held.
        held: String,
        /// The origin offered.
        offered: String,
    },
    /// What the anchor holds is not a (trusted) checkpoint.
    #[error("anchor {path}: {error}")]
    Bad {
        /// The file.
        path: String,
        /// Why.
        error: CheckpointError,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AnchorError + '_ {
    move |e| AnchorError::Io { path: path.display().to_string(), reason: e.to_string() }
}

/// A place outside the trail that keeps its checkpoints.
pub trait CheckpointAnchor: Send + Sync {
    /// Keeps `checkpoint`, durably, before returning; refuses one that goes backwards from
    /// the latest held.
    fn publish(&self, checkpoint: &SignedCheckpoint) -> Result<(), AnchorError>;

    /// The latest checkpoint held, signatures not checked (the verifier opens its note with
    /// its trusted keys: [`SignedCheckpoint::open`]); `None` if none yet.
    fn latest(&self) -> Result<Option<SignedCheckpoint>, AnchorError>;
}

/// Refuses `offered` if it goes backwards from `held`.
pub fn check_forward(held: &Checkpoint, offered: &Checkpoint) -> Result<(), AnchorError> {
    if held.origin() != offered.origin() {
        return Err(AnchorError::OtherOrigin {
            held: held.origin().into(),
            offered: offered.origin().into(),
        });
    }
    if offered.size() < held.size() {
        return Err(AnchorError::Backwards { held: held.size(), offered: offered.size() });
    }
    if offered.size() == held.size() && offered.root() != held.root() {
        return Err(AnchorError::Fork { size: held.size() });
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced,
/// renamed over `path`, the directory synced.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), AnchorError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), AnchorError> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn read_checkpoint(path: &Path) -> Result<Option<SignedCheckpoint>, AnchorError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    SignedCheckpoint::parse_unverified(&bytes)
        .map(Some)
        .map_err(|error| AnchorError::Bad { path: path.display().to_string(), error })
}

/// An anchor that is one file (elsewhere than the trail: another path, a mounted share),
/// replaced atomically by each newer checkpoint.
#[derive(Debug)]
pub struct FileAnchor {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileAnchor {
    /// The anchor at `path` (the file need not exist yet; its directory must).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileAnchor { path: path.into(), lock: Mutex::new(()) }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl CheckpointAnchor for FileAnchor {
    fn publish(&self, checkpoint: &SignedCheckpoint) -> Result<(), AnchorError> {
        let _g = self.lock.lock();
        if let Some(held) = read_checkpoint(&self.path)? {
            check_forward(held.checkpoint(), checkpoint.checkpoint())?;
        }
        replace_file(&self.path, checkpoint.note().as_bytes())
    }

    fn latest(&self) -> Result<Option<SignedCheckpoint>, AnchorError> {
        let _g = self.lock.lock();
        read_checkpoint(&self.path)
    }
}

/// How a [`DirAnchor`] lays out its checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirLayout {
    /// One file per tree size, `checkpoint-<size, 20 digits>.note`; a heartbeat (same size,
    /// same root) replaces the file of its size.
    FilePerSize,
    /// One append-only file, `checkpoints.notes`: every checkpoint, notes one after another
    /// (see [`split_notes`]), synced after each.
    Append,
}

/// The name of a [`DirLayout::FilePerSize`] checkpoint file.
pub fn checkpoint_file_name(size: u64) -> String {
    format!("checkpoint-{size:020}.note")
}

/// The append file of [`DirLayout::Append`].
pub const APPEND_FILE: &str = "checkpoints.notes";

/// An anchor that is a directory (on another disk, say).
#[derive(Debug)]
pub struct DirAnchor {
    dir: PathBuf,
    layout: DirLayout,
    /// The latest checkpoint held, once read.
    latest: Mutex<Option<Option<SignedCheckpoint>>>,
}

impl DirAnchor {
    /// The anchor in `dir` (which must exist).
    pub fn new(dir: impl Into<PathBuf>, layout: DirLayout) -> Self {
        DirAnchor { dir: dir.into(), layout, latest: Mutex::new(None) }
    }

    /// Every checkpoint the directory holds, oldest first, signatures not checked; a piece
    /// that does not parse (a torn last note) is an error in its place.
    pub fn all(&self) -> Result<Vec<Result<SignedCheckpoint, AnchorError>>, AnchorError> {
        match self.layout {
            DirLayout::FilePerSize => {
                let mut names = Vec::new();
                for e in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
                    let e = e.map_err(io_err(&self.dir))?;
                    if let Some(size) = e.file_name().to_str().and_then(parse_checkpoint_file_name) {
                        names.push((size, e.path()));
                    }
                }
                names.sort();
                Ok(names.into_iter().filter_map(|(_, p)| read_checkpoint(&p).transpose()).collect())
            }
            DirLayout::Append => {
                let path = self.dir.join(APPEND_FILE);
                let bytes = match std::fs::read(&path) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(io_err(&path)(e)),
                };
                Ok(split_notes(&bytes)
                    .into_iter()
                    .map(|n| {
                        SignedCheckpoint::parse_unverified(n)
                            .map_err(|error| AnchorError::Bad { path: path.display().to_string(), error })
                    })
                    .collect())
            }
        }
    }

    fn read_latest(&self) -> Result<Option<SignedCheckpoint>, AnchorError> {
        match self.layout {
            DirLayout::FilePerSize => {
                let mut best: Option<(u64, PathBuf)> = None;
                for e in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
                    let e = e.map_err(io_err(&self.dir))?;
                    if let Some(size) = e.file_name().to_str().and_then(parse_checkpoint_file_name) {
                        if best.as_ref().is_none_or(|(b, _)| size > *b) {
                            best = Some((size, e.path()));
                        }
                    }
                }
                best.map_or(Ok(None), |(_, p)| read_checkpoint(&p))
            }
            // The last note that parses (a torn last one is cut off by the next publish).
            DirLayout::Append => Ok(self.all()?.into_iter().rev().find_map(Result::ok)),
        }
    }

    /// Cuts a torn last note off the append file, so the next note starts cleanly.
    fn cut_torn_tail(&self, path: &Path) -> Result<(), AnchorError> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(io_err(path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(path)(e)),
        };
        let mut good = 0usize;
        for n in split_notes(&bytes) {
            if SignedCheckpoint::parse_unverified(n).is_err() {
                break;
            }
            good += n.len();
        }
        if good < bytes.len() {
            let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
            f.set_len(good as u64).and_then(|()| f.sync_all()).map_err(io_err(path))?;
        }
        Ok(())
    }
}

/// The size in a [`checkpoint_file_name`], if `name` is one.
pub fn parse_checkpoint_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("checkpoint-")?.strip_suffix(".note")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

impl CheckpointAnchor for DirAnchor {
    fn publish(&self, checkpoint: &SignedCheckpoint) -> Result<(), AnchorError> {
        let mut latest = self.latest.lock();
        if latest.is_none() {
            *latest = Some(self.read_latest()?);
        }
        if let Some(Some(held)) = latest.as_ref() {
            check_forward(held.checkpoint(), checkpoint.checkpoint())?;
        }
        match self.layout {
            DirLayout::FilePerSize => {
                let path = self.dir.join(checkpoint_file_name(checkpoint.checkpoint().size()));
                replace_file(&path, checkpoint.note().as_bytes())?;
            }
            DirLayout::Append => {
                let path = self.dir.join(APPEND_FILE);
                self.cut_torn_tail(&path)?;
                let existed = path.exists();
                let mut f =
                    OpenOptions::new().append(true).create(true).open(&path).map_err(io_err(&path))?;
                f.write_all(checkpoint.note().as_bytes())
                    .and_then(|()| f.sync_data())
                    .map_err(io_err(&path))?;
                if !existed {
                    sync_dir(&self.dir)?;
                }
            }
        }
        *latest = Some(Some(checkpoint.clone()));
        Ok(())
    }

    fn latest(&self) -> Result<Option<SignedCheckpoint>, AnchorError> {
        let mut latest = self.latest.lock();
        if latest.is_none() {
            *latest = Some(self.read_latest()?);
        }
        Ok(latest.clone().flatten())
    }
}

/// Why a newer checkpoint is refused: the log was tampered with (or forked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Tamper {
    /// The log now claims fewer records than a checkpoint already seen: records were deleted
    /// (or the trail rolled back).
    #[error("TAMPERED: a checkpoint of {seen} records was seen, the log now has {now}")]
    Shorter {
        /// The size seen.
        seen: u64,
        /// The size now.
        now: u64,
    },
    /// Same size, another root: the history was rewritten.
    #[error("TAMPERED: two checkpoints of {size} records with different roots")]
    Fork {
        /// The size.
        size: u64,
    },
    /// The consistency proof between the two does not verify: the new tree does not extend
    /// the old one.
    #[error("TAMPERED: the checkpoint of {new} records does not extend the one of {old} seen ({reason})")]
    Inconsistent {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
        /// Why the proof failed.
        reason: MerkleError,
    },
    /// The checkpoints are of two different logs (origins).
    #[error("TAMPERED: the state is of log {seen:?}, the checkpoint of {now:?}")]
    OtherLog {
        /// The origin seen.
        seen: String,
        /// The origin now.
        now: String,
    },
}

/// What a verifier does with a new checkpoint given the latest it has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Nothing seen before: keep this one.
    First,
    /// The new one extends the old one (the proof verifies): keep the new one.
    Advance,
    /// The same tree (a heartbeat): keep the newer of the two.
    Same,
    /// The new one does not extend the old one.
    Tampered(Tamper),
}

/// Decides between the latest checkpoint seen (`old`) and a new one, given the consistency
/// proof from `old.size()` to `new.size()` (ignored when the sizes are equal or `old` is
/// `None`). Both must already be opened with trusted keys. Going backwards is tampering:
/// a trail's checkpoints only grow (unlike Go's sumdb client, which keeps the newer of
/// two consistent trees, a log that now reports fewer records has lost some).
pub fn decide(old: Option<&Checkpoint>, new: &Checkpoint, proof: &[Hash]) -> Decision {
    let Some(old) = old else { return Decision::First };
    if old.origin() != new.origin() {
        return Decision::Tampered(Tamper::OtherLog { seen: old.origin().into(), now: new.origin().into() });
    }
    if new.size() < old.size() {
        return Decision::Tampered(Tamper::Shorter { seen: old.size(), now: new.size() });
    }
    if new.size() == old.size() {
        return if new.root() == old.root() {
            Decision::Same
        } else {
            Decision::Tampered(Tamper::Fork { size: new.size() })
        };
    }
    match verify_consistency(old.size(), new.size(), old.root(), new.root(), proof) {
        Ok(()) => Decision::Advance,
        Err(reason) => Decision::Tampered(Tamper::Inconsistent { old: old.size(), new: new.size(), reason }),
    }
}

/// The verifier's state file: the latest checkpoint it has seen of one trail (a signed
/// note, as written by the trail), kept across runs so a trail cut back below it is caught.
#[derive(Debug, Clone)]
pub struct CheckpointState {
    path: PathBuf,
}

impl CheckpointState {
    /// The state kept at `path` (created on the first [`observe`](Self::observe)).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CheckpointState { path: path.into() }
    }

    /// The latest checkpoint seen, opened with the trusted keys; `None` if none yet.
    pub fn load(&self, trusted: &[NoteVerifier]) -> Result<Option<SignedCheckpoint>, AnchorError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        SignedCheckpoint::open(&bytes, trusted)
            .map(Some)
            .map_err(|error| AnchorError::Bad { path: self.path.display().to_string(), error })
    }

    /// Opens `new` with the trusted keys, [`decide`]s against the state, and stores `new`
    /// when it is the first, advances, or is a later heartbeat of the same tree. A
    /// [`Decision::Tampered`] leaves the state as it was.
    pub fn observe(
        &self,
        new: &[u8],
        proof: &[Hash],
        trusted: &[NoteVerifier],
    ) -> Result<Decision, AnchorError> {
        let new = SignedCheckpoint::open(new, trusted)
            .map_err(|error| AnchorError::Bad { path: "<new checkpoint>".into(), error })?;
        let old = self.load(trusted)?;
        let d = decide(old.as_ref().map(SignedCheckpoint::checkpoint), new.checkpoint(), proof);
        let store = match &d {
            Decision::First | Decision::Advance => true,
            Decision::Same => {
                let (o, n) = (old.as_ref().and_then(|o| o.checkpoint().time()), new.checkpoint().time());
                n.is_some() && (o.is_none() || n > o)
            }
            Decision::Tampered(_) => false,
        };
        if store {
            replace_file(&self.path, new.note().as_bytes())?;
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::{CheckpointPolicy, Checkpointer};
    use crate::audit::merkle::{consistency_proof, leaf_hash};
    use crate::audit::note::NoteSigner;
    use std::time::{Duration, Instant};

    fn engine() -> (Checkpointer, NoteVerifier) {
        let s = NoteSigner::from_seed("example.com/audit", [3; 32]).unwrap();
        let v = s.verifier();
        (Checkpointer::new("example.com/audit", s, CheckpointPolicy::default()).unwrap(), v)
    }

    /// Checkpoints of 0, 1, …, n records over leaves "r0", "r1", ….
    fn checkpoints(n: usize) -> (Vec<SignedCheckpoint>, Vec<Hash>, NoteVerifier) {
        let (mut c, v) = engine();
        let t = Instant::now();
        let mut out = vec![c.checkpoint(t)];
        let mut leaves = Vec::new();
        for i in 0..n {
            let line = format!("r{i}");
            leaves.push(leaf_hash(line.as_bytes()));
            c.on_record(line.as_bytes());
            out.push(c.checkpoint(t));
        }
        (out, leaves, v)
    }

    fn forked(size: usize) -> SignedCheckpoint {
        let (mut c, _) = engine();
        for i in 0..size {
            c.on_record(format!("other {i}").as_bytes());
        }
        c.checkpoint(Instant::now())
    }

    fn anchors(dir: &Path) -> Vec<Box<dyn CheckpointAnchor>> {
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        vec![
            Box::new(FileAnchor::new(dir.join("latest.note"))),
            Box::new(DirAnchor::new(a, DirLayout::FilePerSize)),
            Box::new(DirAnchor::new(b, DirLayout::Append)),
        ]
    }

    #[test]
    fn every_anchor_keeps_the_latest_and_refuses_to_go_backwards_or_fork() {
        let dir = tempfile::tempdir().unwrap();
        let (cps, _, v) = checkpoints(5);
        for a in anchors(dir.path()) {
            assert_eq!(a.latest().unwrap(), None);
            for cp in &cps[..4] {
                a.publish(cp).unwrap();
            }
            a.publish(&cps[3]).unwrap(); // a heartbeat: same size, same root
            let latest = a.latest().unwrap().unwrap();
            assert_eq!(latest, cps[3]);
            assert!(SignedCheckpoint::open(latest.note().as_bytes(), std::slice::from_ref(&v)).is_ok());
            assert_eq!(a.publish(&cps[2]), Err(AnchorError::Backwards { held: 3, offered: 2 }));
            assert_eq!(a.publish(&forked(3)), Err(AnchorError::Fork { size: 3 }));
            a.publish(&cps[5]).unwrap();
            assert_eq!(a.latest().unwrap().unwrap().checkpoint().size(), 5);
        }
        // A second handle on the same directories reads what the first wrote.
        let d = DirAnchor::new(dir.path().join("b"), DirLayout::Append);
        assert_eq!(d.latest().unwrap().unwrap(), cps[5]);
        assert_eq!(d.all().unwrap().len(), 6, "checkpoints 0..=3, the heartbeat, 5");
        let d = DirAnchor::new(dir.path().join("a"), DirLayout::FilePerSize);
        assert_eq!(d.latest().unwrap().unwrap(), cps[5]);
        assert_eq!(FileAnchor::new(dir.path().join("latest.note")).latest().unwrap().unwrap(), cps[5]);
        let fresh = DirAnchor::new(dir.path().join("a"), DirLayout::FilePerSize);
        assert_eq!(fresh.publish(&cps[1]), Err(AnchorError::Backwards { held: 5, offered: 1 }));
    }

    #[test]
    fn append_anchor_cuts_a_torn_last_note_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (cps, _, _) = checkpoints(3);
        let a = DirAnchor::new(dir.path(), DirLayout::Append);
        a.publish(&cps[1]).unwrap();
        // A crash in the middle of writing the next note.
        let path = dir.path().join(APPEND_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&cps[2].note().as_bytes()[..20]).unwrap();
        drop(f);
        let a = DirAnchor::new(dir.path(), DirLayout::Append);
        assert_eq!(a.latest().unwrap().unwrap(), cps[1]);
        a.publish(&cps[3]).unwrap();
        let all = a.all().unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(Result::is_ok));
    }

    #[test]
    fn decide_advances_on_consistent_growth_and_reports_every_kind_of_tampering() {
        let (cps, leaves, _) = checkpoints(20);
        let cp = |i: usize| cps[i].checkpoint();
        assert_eq!(decide(None, cp(3), &[]), Decision::First);
        for old in 0..=20u64 {
            for new in old..=20u64 {
                let proof = consistency_proof(&leaves[..], old, new).unwrap();
                let d = decide(Some(cp(old as usize)), cp(new as usize), &proof);
                assert_eq!(d, if old == new { Decision::Same } else { Decision::Advance }, "{old}→{new}");
                if old < new {
                    assert!(matches!(
                        decide(Some(cp(new as usize)), cp(old as usize), &proof),
                        Decision::Tampered(Tamper::Shorter { .. })
                    ));
                }
            }
        }
        // A fork: the same size with another history; a longer tree with another history.
        assert_eq!(
            decide(Some(cp(7)), forked(7).checkpoint(), &[]),
            Decision::Tampered(Tamper::Fork { size: 7 })
        );
        let f12 = forked(12);
        let proof = consistency_proof(&leaves[..], 7, 12).unwrap();
        assert!(matches!(
            decide(Some(cp(7)), f12.checkpoint(), &proof),
            Decision::Tampered(Tamper::Inconsistent { .. })
        ));
        let other = Checkpoint::new("example.org/other", 9, *cp(9).root()).unwrap();
        assert!(matches!(decide(Some(cp(7)), &other, &[]), Decision::Tampered(Tamper::OtherLog { .. })));
    }

    #[test]
    fn state_file_advances_keeps_later_heartbeats_and_never_moves_on_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, v) = engine();
        let t = Instant::now();
        let state = CheckpointState::new(dir.path().join("state.note"));
        let mut leaves = Vec::new();
        for i in 0..5 {
            let l = format!("r{i}");
            leaves.push(leaf_hash(l.as_bytes()));
            c.on_record(l.as_bytes());
        }
        let c5 = c.checkpoint(t);
        assert_eq!(
            state.observe(c5.note().as_bytes(), &[], std::slice::from_ref(&v)).unwrap(),
            Decision::First
        );
        for i in 5..9 {
            let l = format!("r{i}");
            leaves.push(leaf_hash(l.as_bytes()));
            c.on_record(l.as_bytes());
        }
        let c9 = c.checkpoint(t);
        let p = consistency_proof(&leaves[..], 5, 9).unwrap();
        assert_eq!(
            state.observe(c9.note().as_bytes(), &p, std::slice::from_ref(&v)).unwrap(),
            Decision::Advance
        );
        assert_eq!(state.load(std::slice::from_ref(&v)).unwrap().unwrap(), c9);
        // A later heartbeat of the same tree replaces it; the old one (c5) is tampering.
        let hb =
            c.checkpoint_at(t + Duration::from_secs(60), chrono::Utc::now() + chrono::Duration::seconds(60));
        assert_eq!(
            state.observe(hb.note().as_bytes(), &[], std::slice::from_ref(&v)).unwrap(),
            Decision::Same
        );
        assert_eq!(state.load(std::slice::from_ref(&v)).unwrap().unwrap(), hb);
        assert!(matches!(
            state.observe(c5.note().as_bytes(), &[], std::slice::from_ref(&v)).unwrap(),
            Decision::Tampered(Tamper::Shorter { seen: 9, now: 5 })
        ));
        assert_eq!(
            state.load(std::slice::from_ref(&v)).unwrap().unwrap(),
            hb,
            "unchanged by a refused checkpoint"
        );
        // A checkpoint signed by an untrusted key is refused before any decision.
        let stranger = NoteSigner::from_seed("example.com/audit", [4; 32]).unwrap();
        let mut sc = Checkpointer::new("example.com/audit", stranger, CheckpointPolicy::default()).unwrap();
        assert!(state.observe(sc.checkpoint(t).note().as_bytes(), &[], &[v]).is_err());
    }
}
