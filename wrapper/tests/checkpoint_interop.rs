//! Interoperability of the trail's Merkle proofs, signed notes and checkpoints with
//! implementations written by others: Cloudflare's `tlog_tiles` (a port of Go's
//! `golang.org/x/mod/sumdb/tlog`, and a C2SP `tlog-checkpoint` parser) and `signed_note` (a
//! port of Go's `sumdb/note`). Each side must accept what the other writes, and ours must
//! refuse their note signed with another key.

use std::time::Instant;

use map_wrapper::audit::checkpoint::{Checkpoint, CheckpointPolicy, Checkpointer, SignedCheckpoint};
use map_wrapper::audit::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion, CompactTree, Hash,
    MemoryTree,
};
use map_wrapper::audit::note::{self, NoteSigner, NoteVerifier};
use signed_note::{Note, Signer as _, StandardSigner, StandardVerifier, Verifier as _, VerifierList};
use tlog_tiles::{check_record, check_tree, prove_record, prove_tree, stored_hashes, tree_hash, HashReader};

/// Go tlog's stored-hash layout, filled by their own `stored_hashes` (as their tests do).
struct Storage(Vec<tlog_tiles::Hash>);

impl HashReader for Storage {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        Ok(indexes.iter().map(|&i| self.0[i as usize]).collect())
    }
}

/// Record-like lines, their storage on the other side, and our memory tree.
fn build(n: u64) -> (Vec<Vec<u8>>, Storage, MemoryTree) {
    let mut storage = Storage(Vec::new());
    let mut ours = MemoryTree::new();
    let mut lines = Vec::new();
    for i in 0..n {
        let line =
            format!("{{\"v\":1,\"seq\":{},\"op\":\"insert\",\"hash\":\"{i:064x}\"}}", i + 1).into_bytes();
        let more = stored_hashes(i, &line, &storage).unwrap();
        storage.0.extend(more);
        ours.push_line(&line);
        lines.push(line);
    }
    (lines, storage, ours)
}

fn theirs(h: &Hash) -> tlog_tiles::Hash {
    tlog_tiles::Hash(*h)
}

#[test]
fn roots_agree_with_go_tlog_for_every_size_up_to_200() {
    let (lines, storage, _) = build(200);
    let mut tree = CompactTree::new();
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(tlog_tiles::record_hash(line).0, leaf_hash(line), "leaf hash of record {n}");
        tree.push_line(line);
        assert_eq!(tree_hash(n as u64 + 1, &storage).unwrap().0, tree.root(), "root of {} records", n + 1);
    }
}

#[test]
fn inclusion_proofs_are_interchangeable_with_go_tlog() {
    let (lines, storage, ours) = build(70);
    for n in 1..=70u64 {
        let root = map_wrapper::audit::merkle::root(&ours, n).unwrap();
        for i in 0..n {
            let leaf = leaf_hash(&lines[i as usize]);
            let mine = inclusion_proof(&ours, i, n).unwrap();
            // Their verifier accepts our proof…
            let mine_t: Vec<_> = mine.iter().map(theirs).collect();
            check_record(&mine_t, n, theirs(&root), i, theirs(&leaf)).unwrap();
            // …ours accepts theirs, and both are the same hashes.
            let theirs_p: Vec<Hash> = prove_record(n, i, &storage).unwrap().iter().map(|h| h.0).collect();
            verify_inclusion(&leaf, i, n, &theirs_p, &root).unwrap();
            assert_eq!(mine, theirs_p, "proof of {i} in {n}");
            // A changed proof fails on both sides.
            if let Some(first) = mine_t.first() {
                let mut bad = mine_t.clone();
                bad[0] = tlog_tiles::Hash(leaf_hash(&first.0));
                assert!(check_record(&bad, n, theirs(&root), i, theirs(&leaf)).is_err());
            }
        }
    }
}

#[test]
fn consistency_proofs_are_interchangeable_with_go_tlog() {
    let (_, storage, ours) = build(48);
    let roots: Vec<Hash> = (0..=48).map(|n| map_wrapper::audit::merkle::root(&ours, n).unwrap()).collect();
    for new in 1..=48u64 {
        for old in 1..=new {
            let (ro, rn) = (&roots[old as usize], &roots[new as usize]);
            let mine = consistency_proof(&ours, old, new).unwrap();
            let mine_t: Vec<_> = mine.iter().map(theirs).collect();
            check_tree(&mine_t, new, theirs(rn), old, theirs(ro))
                .unwrap_or_else(|e| panic!("{old}→{new}: {e}"));
            let theirs_p: Vec<Hash> = prove_tree(new, old, &storage).unwrap().iter().map(|h| h.0).collect();
            verify_consistency(old, new, ro, rn, &theirs_p).unwrap();
            assert_eq!(mine, theirs_p, "proof {old}→{new}");
        }
    }
}

#[test]
fn their_note_and_checkpoint_parsers_accept_our_signed_checkpoints() {
    let signer = NoteSigner::generate("example.com/billing-audit").unwrap();
    let vkey = signer.verifier().to_string();
    let mut c = Checkpointer::new("example.com/billing-audit", signer, CheckpointPolicy::default()).unwrap();
    let (lines, _, _) = build(10);
    for l in &lines {
        c.on_record(l);
    }
    let sc = c.checkpoint(Instant::now());
    // Their verifier, built from our verifier key text, accepts our note.
    let v = StandardVerifier::new(&vkey).unwrap();
    assert_eq!((v.name(), v.key_id()), ("example.com/billing-audit", c.verifier().key_id()));
    let n = Note::from_bytes(sc.note().as_bytes()).unwrap();
    let (verified, unverified) = n.verify(&VerifierList::new(vec![Box::new(v)])).unwrap();
    assert_eq!((verified.len(), unverified.len()), (1, 0));
    // Their checkpoint parser reads the same origin, size, root and extension.
    let cp = tlog_tiles::Checkpoint::from_bytes(n.text()).unwrap();
    assert_eq!(cp.origin(), "example.com/billing-audit");
    assert_eq!(cp.size(), 10);
    assert_eq!(&cp.hash().0, sc.checkpoint().root());
    let ours: String = sc.checkpoint().extensions().iter().map(|e| format!("{e}\n")).collect();
    assert_eq!(cp.extension(), ours);
    assert!(ours.starts_with("time ") && ours.ends_with("\nheartbeat-ms 60000\n"), "{ours:?}");
}

#[test]
fn our_verifier_accepts_their_signed_checkpoint_and_refuses_their_other_key() {
    let (_, _, ours) = build(33);
    let root = ours.root();
    // Go's reference signer key, loaded by their parser; a checkpoint made by their code.
    let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    let their_signer = StandardSigner::new(skey).unwrap();
    let body =
        tlog_tiles::Checkpoint::new("example.com/billing-audit", 33, tlog_tiles::Hash(root), "").unwrap();
    let mut n = Note::new(&body.to_bytes(), &[]).unwrap();
    n.add_sigs(&[&their_signer]).unwrap();
    let msg = n.to_bytes();
    let sc = SignedCheckpoint::open(&msg, &[NoteVerifier::parse(vkey).unwrap()]).unwrap();
    assert_eq!((sc.checkpoint().size(), sc.checkpoint().root()), (33, &root));
    assert_eq!(sc.checkpoint(), &Checkpoint::new("example.com/billing-audit", 33, root).unwrap());

    // Their note, signed with another key (same name, a key they generated from another
    // seed): refused by a verifier that trusts only ours.
    let ours_key = NoteSigner::from_seed("PeterNeumann", [5; 32]).unwrap();
    let other = NoteSigner::from_seed("PeterNeumann", [6; 32]).unwrap();
    let their_other = StandardSigner::new(&other.to_key_string()).unwrap();
    assert_eq!(their_other.key_id(), other.key_id(), "they derive the same key id from our key file");
    let mut n = Note::new(&body.to_bytes(), &[]).unwrap();
    n.add_sigs(&[&their_other]).unwrap();
    let e = SignedCheckpoint::open(&n.to_bytes(), &[ours_key.verifier()]).unwrap_err();
    assert!(e.to_string().contains("no trusted key"), "{e}");
    // The same signature relabelled with our key's id: a bad signature, not a trusted note.
    let sig = their_other.sign(&body.to_bytes()).unwrap();
    let relabelled = signed_note::Signature::new("PeterNeumann".into(), ours_key.key_id(), sig).unwrap();
    let forged = Note::new(&body.to_bytes(), &[relabelled]).unwrap().to_bytes();
    assert!(matches!(
        SignedCheckpoint::open(&forged, &[ours_key.verifier()]),
        Err(map_wrapper::audit::checkpoint::CheckpointError::Note(note::NoteError::InvalidSignature { .. }))
    ));
}

#[test]
fn verifier_keys_written_by_either_side_are_read_by_the_other() {
    let s = NoteSigner::from_seed("example.com/audit", [11; 32]).unwrap();
    let theirs_text = signed_note::new_ed25519_verifier_key("example.com/audit", s.verifier().public_key());
    assert_eq!(theirs_text, s.verifier().to_string());
    assert_eq!(NoteVerifier::parse(&theirs_text).unwrap(), s.verifier());
    // A note they sign with our key file opens with our verifier, and ours with theirs.
    let their_signer = StandardSigner::new(&s.to_key_string()).unwrap();
    let mut n = Note::new(b"hello\n", &[]).unwrap();
    n.add_sigs(&[&their_signer]).unwrap();
    assert_eq!(n.to_bytes(), s.sign("hello\n").unwrap().into_bytes(), "byte-identical notes");
    assert!(note::open(&n.to_bytes(), &[s.verifier()]).is_ok());
}
