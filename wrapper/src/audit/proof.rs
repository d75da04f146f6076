//! Proofs an auditor can check without the trail: that one record is in it (an inclusion
//! proof, in the C2SP [`tlog-proof`](https://c2sp.org/tlog-proof) format), and that a later
//! checkpoint extends an earlier one (a consistency proof). Both carry the signed
//! checkpoints they lead to, so the auditor needs only the trail's verifier key.
//!
//! Proofs are made in one pass over the trail's segment files with O(log² n) memory
//! ([`StreamingProver`]); the same pass checks that the checkpoints match the trail, so a
//! proof is never made against a checkpoint the trail does not hold.
//!
//! An inclusion proof file (`.tlog-proof`):
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64 of the record line, without its \n>
//! index <leaf index = seq − 1>
//! <base64 hash>                 one per line, from the leaf's sibling up (≤ ⌈log₂ size⌉)
//!
//! <the signed checkpoint, verbatim>
//! ```
//!
//! A consistency proof file:
//!
//! ```text
//! map-wrapper/consistency-proof@v1
//! <base64 hash>                 one per line (RFC 9162 §2.1.4.1, ≤ ⌈log₂ new⌉ + 1)
//!
//! <the old signed checkpoint, verbatim><the new signed checkpoint, verbatim>
//! ```

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::checkpoint::{for_each_record_in, split_notes, CheckpointError, SignedCheckpoint, TrailCheck};
use super::merkle::{
    consistency_ranges, inclusion_ranges, leaf_hash, verify_consistency, verify_inclusion, Hash, MerkleError,
    StreamingProver,
};
use super::note::NoteVerifier;
use super::CheckpointVerdict;

/// The first line of an inclusion proof (C2SP `tlog-proof`).
pub const INCLUSION_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// The first line of a consistency proof.
pub const CONSISTENCY_HEADER: &str = "map-wrapper/consistency-proof@v1";

/// Why a proof could not be made, read, or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The proof text breaks a rule of its format; the text says which.
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    /// A checkpoint in the proof (or given to make one) was refused: syntax, signature, key.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The hashes do not lead to the checkpoint's root (or roots): the record, the proof or
    /// the checkpoint was changed.
    #[error("the proof does not verify: {0}")]
    Merkle(#[from] MerkleError),
    /// The record's own `seq` is not the one its leaf index says.
    #[error("the record says seq {found}, the proof is for seq {expected}")]
    SeqMismatch {
        /// `index + 1`.
        expected: u64,
        /// The record's `seq` (0 when it has none).
        found: u64,
    },
    /// The checkpoint does not cover the record (or the old checkpoint is newer).
    #[error("the checkpoint of {size} records does not cover {what}")]
    NotCovered {
        /// The checkpoint's size.
        size: u64,
        /// What was asked for.
        what: String,
    },
    /// The checkpoints are of different logs.
    #[error("the checkpoints are of different logs ({old:?} and {new:?})")]
    OtherLog {
        /// The old origin.
        old: String,
        /// The new origin.
        new: String,
    },
    /// The trail does not hold the checkpoint: it is shorter (records were removed) or its
    /// records have another root (they were changed). TAMPERED: no proof is made.
    #[error("TAMPERED: {0}")]
    Tampered(String),
    /// The trail could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ProofError + '_ {
    move |e| ProofError::Io { path: path.display().to_string(), reason: e.to_string() }
}

/// Describes a verdict that is not [`CheckpointVerdict::Matches`].
pub fn tamper_text(verdict: &CheckpointVerdict) -> Option<String> {
    match verdict {
        CheckpointVerdict::Matches => None,
        CheckpointVerdict::Truncated { claimed, records } => Some(format!(
            "a checkpoint covers {claimed} records, the trail has {records}: records were removed from its end"
        )),
        CheckpointVerdict::RootMismatch { size } => Some(format!(
            "the trail's first {size} records do not have the checkpoint's root: records were changed"
        )),
    }
}

/// An inclusion proof of one record in the tree of a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The record's line, without its `\n`.
    pub record: Vec<u8>,
    /// The leaf index: the record's `seq − 1`.
    pub index: u64,
    /// The proof's hashes, from the leaf's sibling up.
    pub hashes: Vec<Hash>,
    /// The checkpoint whose root the proof leads to.
    pub checkpoint: SignedCheckpoint,
}

/// What a verified inclusion proof shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvedRecord {
    /// The record's `seq`.
    pub seq: u64,
    /// The tree size of the checkpoint.
    pub size: u64,
    /// The log (the checkpoint's origin).
    pub origin: String,
    /// The record line.
    pub record: String,
}

fn hash_line(h: &Hash) -> String {
    let mut s = B64.encode(h);
    s.push('\n');
    s
}

fn parse_hash(line: &str) -> Result<Hash, ProofError> {
    let bytes = B64.decode(line).map_err(|_| ProofError::Malformed("a hash line is not standard base64"))?;
    bytes.try_into().map_err(|_| ProofError::Malformed("a hash line is not 32 bytes"))
}

/// The `seq` field of a record line (0 if it has none).
fn seq_of(line: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .unwrap_or(0)
}

impl InclusionProof {
    /// The proof file's text (see the module docs).
    pub fn to_text(&self) -> String {
        let mut s = format!("{INCLUSION_HEADER}\nextra {}\nindex {}\n", B64.encode(&self.record), self.index);
        for h in &self.hashes {
            s.push_str(&hash_line(h));
        }
        s.push('\n');
        s.push_str(self.checkpoint.note());
        s
    }

    /// Parses a proof file; the checkpoint is opened with the trusted keys.
    pub fn parse(text: &[u8], trusted: &[NoteVerifier]) -> Result<Self, ProofError> {
        let text = std::str::from_utf8(text).map_err(|_| ProofError::Malformed("not UTF-8"))?;
        let (head, note) =
            text.split_once("\n\n").ok_or(ProofError::Malformed("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(INCLUSION_HEADER) {
            return Err(ProofError::Malformed("the first line is not c2sp.org/tlog-proof@v1"));
        }
        let mut line = lines.next();
        let record = match line.and_then(|l| l.strip_prefix("extra ")) {
            Some(b64) => {
                line = lines.next();
                B64.decode(b64).map_err(|_| ProofError::Malformed("the extra line is not standard base64"))?
            }
            None => return Err(ProofError::Malformed("no extra line: the proof does not carry its record")),
        };
        let index = line
            .and_then(|l| l.strip_prefix("index "))
            .filter(|d| {
                !d.is_empty()
                    && d.bytes().all(|b| b.is_ascii_digit())
                    && (d.len() == 1 || !d.starts_with('0'))
            })
            .ok_or(ProofError::Malformed("no 'index N' line (decimal, no leading zero)"))?
            .parse()
            .map_err(|_| ProofError::Malformed("the index does not fit in 64 bits"))?;
        let hashes = lines.map(parse_hash).collect::<Result<Vec<_>, _>>()?;
        let checkpoint = SignedCheckpoint::open(note.as_bytes(), trusted)?;
        Ok(InclusionProof { record, index, hashes, checkpoint })
    }

    /// Checks the proof: the record's leaf, at its index, leads to the checkpoint's root, and
    /// the record's `seq` is its index + 1. (The checkpoint's signature was checked by
    /// [`parse`](Self::parse).)
    pub fn verify(&self) -> Result<ProvedRecord, ProofError> {
        let cp = self.checkpoint.checkpoint();
        let seq = self.index + 1;
        let found = seq_of(&self.record);
        if found != seq {
            return Err(ProofError::SeqMismatch { expected: seq, found });
        }
        if self.record.contains(&b'\n') {
            return Err(ProofError::Malformed("the record holds a newline"));
        }
        verify_inclusion(&leaf_hash(&self.record), self.index, cp.size(), &self.hashes, cp.root())?;
        Ok(ProvedRecord {
            seq,
            size: cp.size(),
            origin: cp.origin().to_owned(),
            record: String::from_utf8_lossy(&self.record).into_owned(),
        })
    }
}

/// A consistency proof: the tree of `new` extends the tree of `old`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older checkpoint.
    pub old: SignedCheckpoint,
    /// The newer checkpoint.
    pub new: SignedCheckpoint,
    /// The proof's hashes.
    pub hashes: Vec<Hash>,
}

impl ConsistencyProof {
    /// The proof file's text (see the module docs).
    pub fn to_text(&self) -> String {
        let mut s = format!("{CONSISTENCY_HEADER}\n");
        for h in &self.hashes {
            s.push_str(&hash_line(h));
        }
        s.push('\n');
        s.push_str(self.old.note());
        s.push_str(self.new.note());
        s
    }

    /// Parses a proof file; both checkpoints are opened with the trusted keys.
    pub fn parse(text: &[u8], trusted: &[NoteVerifier]) -> Result<Self, ProofError> {
        let text = std::str::from_utf8(text).map_err(|_| ProofError::Malformed("not UTF-8"))?;
        let (head, notes) =
            text.split_once("\n\n").ok_or(ProofError::Malformed("no blank line before the checkpoints"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(CONSISTENCY_HEADER) {
            return Err(ProofError::Malformed("the first line is not map-wrapper/consistency-proof@v1"));
        }
        let hashes = lines.map(parse_hash).collect::<Result<Vec<_>, _>>()?;
        let pieces = split_notes(notes.as_bytes());
        let [old, new] = pieces.as_slice() else {
            return Err(ProofError::Malformed("the proof must end with exactly two checkpoints (old, new)"));
        };
        Ok(ConsistencyProof {
            old: SignedCheckpoint::open(old, trusted)?,
            new: SignedCheckpoint::open(new, trusted)?,
            hashes,
        })
    }

    /// Checks the proof (RFC 9162 §2.1.4.2) between the two checkpoints' sizes and roots.
    /// (Their signatures were checked by [`parse`](Self::parse).)
    pub fn verify(&self) -> Result<(), ProofError> {
        let (o, n) = (self.old.checkpoint(), self.new.checkpoint());
        if o.origin() != n.origin() {
            return Err(ProofError::OtherLog { old: o.origin().into(), new: n.origin().into() });
        }
        if o.size() > n.size() {
            return Err(ProofError::NotCovered {
                size: n.size(),
                what: format!("the {} of the old one", o.size()),
            });
        }
        Ok(verify_consistency(o.size(), n.size(), o.root(), n.root(), &self.hashes)?)
    }
}

/// Reads the trail's files once, feeding a prover for `ranges` and checking `checkpoints`;
/// returns the proof and the line of leaf `want` if asked; TAMPERED if the trail does not
/// hold every checkpoint.
fn one_pass(
    files: &[PathBuf],
    ranges: Vec<(u64, u64)>,
    checkpoints: &[&SignedCheckpoint],
    want: Option<u64>,
) -> Result<(Vec<Hash>, Option<Vec<u8>>), ProofError> {
    let mut prover = StreamingProver::new(ranges);
    let mut check = TrailCheck::new(checkpoints.iter().map(|c| c.checkpoint()));
    let mut index = 0u64;
    let mut found = None;
    for_each_record_in(files, |line| {
        let leaf = leaf_hash(line);
        prover.push(leaf);
        check.push_leaf(leaf);
        if want == Some(index) {
            found = Some(line.to_vec());
        }
        index += 1;
    })
    .map_err(|(path, e)| io_err(&path)(e))?;
    for v in check.finish() {
        if let Some(t) = tamper_text(&v) {
            return Err(ProofError::Tampered(t));
        }
    }
    Ok((prover.finish()?, found))
}

/// Proves that record `seq` is in the tree of `checkpoint`, reading the trail's segment
/// files (in order) once. Refuses when the trail does not hold the checkpoint
/// ([`ProofError::Tampered`]) or the checkpoint does not cover `seq`.
pub fn prove_inclusion(
    files: &[PathBuf],
    seq: u64,
    checkpoint: &SignedCheckpoint,
) -> Result<InclusionProof, ProofError> {
    let size = checkpoint.checkpoint().size();
    if seq == 0 || seq > size {
        return Err(ProofError::NotCovered { size, what: format!("seq {seq}") });
    }
    let index = seq - 1;
    let (hashes, found) = one_pass(files, inclusion_ranges(index, size)?, &[checkpoint], Some(index))?;
    let record = found.ok_or(ProofError::NotCovered { size, what: format!("seq {seq}") })?;
    let found = seq_of(&record);
    if found != seq {
        return Err(ProofError::SeqMismatch { expected: seq, found });
    }
    Ok(InclusionProof { record, index, hashes, checkpoint: checkpoint.clone() })
}

/// Proves that the tree of `new` extends the tree of `old`, reading the trail once; both
/// must be held by the trail.
pub fn prove_consistency(
    files: &[PathBuf],
    old: &SignedCheckpoint,
    new: &SignedCheckpoint,
) -> Result<ConsistencyProof, ProofError> {
    let (o, n) = (old.checkpoint(), new.checkpoint());
    if o.origin() != n.origin() {
        return Err(ProofError::OtherLog { old: o.origin().into(), new: n.origin().into() });
    }
    if o.size() > n.size() {
        return Err(ProofError::NotCovered {
            size: n.size(),
            what: format!("the {} of the old one", o.size()),
        });
    }
    let (hashes, _) = one_pass(files, consistency_ranges(o.size(), n.size())?, &[old, new], None)?;
    let proof = ConsistencyProof { old: old.clone(), new: new.clone(), hashes };
    proof.verify()?;
    Ok(proof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::{CheckpointPolicy, Checkpointer};
    use crate::audit::note::NoteSigner;
    use std::time::Instant;

    /// A one-segment trail of `n` records `{"seq":i,...}` and checkpoints at every size.
    fn trail(dir: &Path, n: u64) -> (Vec<PathBuf>, Vec<SignedCheckpoint>, NoteVerifier) {
        let s = NoteSigner::from_seed("example.com/audit", [5; 32]).unwrap();
        let v = s.verifier();
        let mut c = Checkpointer::new("example.com/audit", s, CheckpointPolicy::default()).unwrap();
        let mut text = String::from("{\"v\":1,\"segment\":1}\n");
        let mut cps = vec![c.checkpoint(Instant::now())];
        for seq in 1..=n {
            let line = format!("{{\"v\":1,\"seq\":{seq},\"op\":\"insert\"}}");
            c.on_record(line.as_bytes());
            text.push_str(&line);
            text.push('\n');
            cps.push(c.checkpoint(Instant::now()));
        }
        let f = dir.join("segment-000001.jsonl");
        std::fs::write(&f, text).unwrap();
        (vec![f], cps, v)
    }

    #[test]
    fn every_record_proves_against_every_covering_checkpoint_and_round_trips_as_text() {
        let d = tempfile::tempdir().unwrap();
        let (files, cps, v) = trail(d.path(), 13);
        for size in 1..=13u64 {
            for seq in 1..=size {
                let p = prove_inclusion(&files, seq, &cps[size as usize]).unwrap();
                let back = InclusionProof::parse(p.to_text().as_bytes(), std::slice::from_ref(&v)).unwrap();
                assert_eq!(back, p);
                let shown = back.verify().unwrap();
                assert_eq!((shown.seq, shown.size), (seq, size));
                assert!(p.hashes.len() <= 64 - (size - 1).leading_zeros() as usize);
            }
        }
        assert!(matches!(prove_inclusion(&files, 14, &cps[13]), Err(ProofError::NotCovered { .. })));
        assert!(matches!(prove_inclusion(&files, 0, &cps[13]), Err(ProofError::NotCovered { .. })));
    }

    #[test]
    fn a_changed_record_hash_index_or_checkpoint_fails() {
        let d = tempfile::tempdir().unwrap();
        let (files, cps, v) = trail(d.path(), 9);
        let p = prove_inclusion(&files, 4, &cps[9]).unwrap();
        let mut r = p.clone();
        r.record = r.record.iter().map(|&b| if b == b'i' { b'I' } else { b }).collect();
        assert!(matches!(r.verify(), Err(ProofError::Merkle(_))));
        let mut h = p.clone();
        h.hashes[1][7] ^= 1;
        assert!(matches!(h.verify(), Err(ProofError::Merkle(_))));
        let mut i = p.clone();
        i.index = 4;
        assert!(matches!(i.verify(), Err(ProofError::SeqMismatch { expected: 5, found: 4 })));
        let mut c = p.clone();
        c.checkpoint = cps[8].clone();
        assert!(c.verify().is_err());
        let other = NoteSigner::from_seed("example.com/audit", [6; 32]).unwrap().verifier();
        assert!(InclusionProof::parse(p.to_text().as_bytes(), &[other]).is_err());
        let forged = p.to_text().replacen("\n9\n", "\n10\n", 1);
        assert!(InclusionProof::parse(forged.as_bytes(), &[v]).is_err());
    }

    #[test]
    fn consistency_proves_between_every_pair_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let (files, cps, v) = trail(d.path(), 11);
        for old in 0..=11 {
            for new in old..=11 {
                let p = prove_consistency(&files, &cps[old], &cps[new]).unwrap();
                let back = ConsistencyProof::parse(p.to_text().as_bytes(), std::slice::from_ref(&v)).unwrap();
                assert_eq!(back, p);
                back.verify().unwrap();
            }
        }
        assert!(matches!(prove_consistency(&files, &cps[5], &cps[4]), Err(ProofError::NotCovered { .. })));
    }

    #[test]
    fn no_proof_is_made_against_a_checkpoint_the_trail_does_not_hold() {
        let d = tempfile::tempdir().unwrap();
        let (files, cps, _) = trail(d.path(), 8);
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let cut: Vec<&str> = text.split_inclusive('\n').collect();
        std::fs::write(&files[0], cut[..cut.len() - 2].concat()).unwrap();
        let e = prove_inclusion(&files, 2, &cps[8]).unwrap_err();
        assert!(e.to_string().contains("TAMPERED") && e.to_string().contains("removed"), "{e}");
        assert!(prove_inclusion(&files, 2, &cps[6]).is_ok());
        std::fs::write(&files[0], text.replacen("insert", "remove", 1)).unwrap();
        let e = prove_consistency(&files, &cps[2], &cps[8]).unwrap_err();
        assert!(e.to_string().contains("changed"), "{e}");
    }
}
