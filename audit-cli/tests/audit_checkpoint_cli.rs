//! Signed checkpoints through the `map-wrapper-audit` binary: `keygen`, `verify --pubkey
//! --checkpoint --state` (truncation, forged notes, state rollback, staleness), `prove` /
//! `check-proof` for every record, `consistency` between checkpoints.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use map_wrapper::audit::anchor::{CheckpointAnchor, DirAnchor, DirLayout, FileAnchor};
use map_wrapper::audit::checkpoint::{CheckpointPolicy, Checkpointer, SignedCheckpoint};
use map_wrapper::audit::note::{NoteSigner, NoteVerifier};
use map_wrapper::audit::{list_segments, Auditor, JsonLinesOptions, JsonLinesSink};
use map_wrapper::MapWrapper;

const ORIGIN: &str = "example.com/billing-audit";

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_map-wrapper-audit")).args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A trail of several segments written by `JsonLinesSink` (audit_start, `n` inserts,
/// audit_stop), with no checkpoints.
fn write_trail(dir: &Path, n: u32) {
    let opts = JsonLinesOptions { max_segment_bytes: 4 << 10, ..Default::default() };
    let sink = std::sync::Arc::new(JsonLinesSink::open(dir, opts).unwrap());
    let map: MapWrapper<u32, String> =
        MapWrapper::builder().name("billing").auditor(Auditor::from_arc(sink.clone())).build().unwrap();
    for i in 0..n {
        map.insert(i % 17, format!("value {i}")).unwrap();
    }
    sink.close().unwrap();
}

/// The record lines of the trail in `dir`, in order (headers skipped).
fn records(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (_, p) in list_segments(dir).unwrap() {
        let text = std::fs::read(p).unwrap();
        out.extend(text.split(|&b| b == b'\n').skip(1).filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
    }
    out
}

/// A key pair on disk: the secret key file and the verifier key file (`keygen`'s output).
struct Keys {
    signer: NoteSigner,
    public: PathBuf,
}

fn keygen(dir: &Path) -> Keys {
    let secret = dir.join("audit.key");
    let (code, out, err) = run(&["keygen", "--name", ORIGIN, "--out", s(&secret)]);
    assert_eq!(code, 0, "{err}");
    let public = dir.join("audit.key.pub");
    assert_eq!(out.trim(), std::fs::read_to_string(&public).unwrap().trim());
    Keys { signer: NoteSigner::load(&secret).unwrap(), public }
}

/// What the writer does: a checkpoint after every `every` records (and of the whole trail),
/// each appended to the trail's own `checkpoints.notes` and published to `anchors`.
fn checkpoint_trail(
    dir: &Path,
    keys: &Keys,
    every: usize,
    anchors: &[&dyn CheckpointAnchor],
) -> Vec<SignedCheckpoint> {
    let mut c = Checkpointer::new(ORIGIN, keys.signer.clone(), CheckpointPolicy::default()).unwrap();
    let own = DirAnchor::new(dir, DirLayout::Append);
    let lines = records(dir);
    let mut made = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        c.on_record(l);
        if (i + 1) % every == 0 || i + 1 == lines.len() {
            let cp = c.checkpoint(Instant::now());
            own.publish(&cp).unwrap();
            for a in anchors {
                a.publish(&cp).unwrap();
            }
            made.push(cp);
        }
    }
    made
}

/// Removes the last `k` record lines of the trail (a segment left with only its header is
/// removed, as a careful attacker would).
fn cut_tail(dir: &Path, mut k: usize) {
    for (_, p) in list_segments(dir).unwrap().iter().rev() {
        if k == 0 {
            break;
        }
        let text = std::fs::read(p).unwrap();
        let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        let keep = (lines.len() - 1).saturating_sub(k);
        k -= lines.len() - 1 - keep;
        if keep == 0 {
            std::fs::remove_file(p).unwrap();
        } else {
            std::fs::write(p, lines[..=keep].concat()).unwrap();
        }
    }
}

fn verify_json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["verify", "--json"];
    a.extend_from_slice(args);
    let (code, out, err) = run(&a);
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}")))
}

#[test]
fn keygen_writes_a_private_key_file_and_a_verifier_key_and_never_overwrites() {
    let d = tempfile::tempdir().unwrap();
    let keys = keygen(d.path());
    let v = NoteVerifier::load(&keys.public).unwrap();
    assert_eq!(v, keys.signer.verifier());
    assert_eq!(v.name(), ORIGIN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d.path().join("audit.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(d.path().join("audit.key")).unwrap();
    let (code, _, err) = run(&["keygen", "--name", ORIGIN, "--out", s(&d.path().join("audit.key"))]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(std::fs::read(d.path().join("audit.key")).unwrap(), before, "the key was not replaced");
    assert_eq!(run(&["keygen", "--name", "has space", "--out", s(&d.path().join("k2"))]).0, 3);
}

#[test]
fn cutting_the_tail_is_tampered_once_a_newer_checkpoint_is_held_elsewhere() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keygen(keys_dir.path());
    let elsewhere = tempfile::tempdir().unwrap();
    let anchor_file = elsewhere.path().join("latest.note");
    let ks: Vec<usize> = match std::env::var("CHECKPOINT_LONG_RUN") {
        Ok(_) => vec![1, 2, 3, 5, 10, 31, 100, 317, 1000, 3162, 10_000],
        Err(_) => vec![1, 2, 7, 40],
    };
    let n = (*ks.last().unwrap() as u32 + 10).max(60);
    let pristine = tempfile::tempdir().unwrap();
    write_trail(pristine.path(), n);
    let pk = s(&keys.public).to_string();
    for k in ks {
        let trail = tempfile::tempdir().unwrap();
        for (_, p) in list_segments(pristine.path()).unwrap() {
            std::fs::copy(&p, trail.path().join(p.file_name().unwrap())).unwrap();
        }
        let _ = std::fs::remove_file(&anchor_file);
        let made = checkpoint_trail(trail.path(), &keys, 25, &[&FileAnchor::new(&anchor_file)]);
        let (code, r) = verify_json(&["--pubkey", &pk, "--checkpoint", s(&anchor_file), s(trail.path())]);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["checkpoints"]["checked"].as_u64(), Some(made.len() as u64 + 1), "{r}");

        cut_tail(trail.path(), k);
        // The chain alone cannot see it: what is left still links.
        assert_eq!(verify_json(&[s(trail.path())]).0, 0, "k={k}");
        // The checkpoint held elsewhere does.
        let (code, r) = verify_json(&["--pubkey", &pk, "--checkpoint", s(&anchor_file), s(trail.path())]);
        assert_eq!(code, 1, "k={k}: {r}");
        let what = r["problem"]["what"].as_str().unwrap();
        assert!(what.contains("removed from its end"), "{what}");
        // So does the trail's own checkpoints.notes, unless the attacker also cut it.
        let (code, _) = verify_json(&["--pubkey", &pk, s(trail.path())]);
        assert_eq!(code, 1, "k={k}");
    }
}

#[test]
fn emptying_or_removing_segments_or_rolling_one_back_is_tampered() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keygen(keys_dir.path());
    let pk = s(&keys.public).to_string();
    let pristine = tempfile::tempdir().unwrap();
    write_trail(pristine.path(), 200);
    let n_segs = list_segments(pristine.path()).unwrap().len();
    assert!(n_segs >= 4, "{n_segs} segments");
    // Each case changes the trail's segments; the checkpoint of the whole trail, held in a
    // directory elsewhere, must catch every one.
    type Case = Box<dyn Fn(&[(u64, PathBuf)])>;
    let header_only = |p: &Path| {
        let text = std::fs::read_to_string(p).unwrap();
        std::fs::write(p, text.split_inclusive('\n').next().unwrap()).unwrap();
    };
    let cases: Vec<(&str, bool, Case)> = vec![
        (
            "last segment emptied to its header",
            true,
            Box::new(move |segs| header_only(&segs.last().unwrap().1)),
        ),
        (
            "last segment removed",
            true,
            Box::new(|segs| std::fs::remove_file(&segs.last().unwrap().1).unwrap()),
        ),
        (
            "last two segments removed",
            true,
            Box::new(|segs| segs[segs.len() - 2..].iter().for_each(|s| std::fs::remove_file(&s.1).unwrap())),
        ),
        (
            "last segment rolled back to an older copy",
            true,
            Box::new(|segs| {
                let p = &segs.last().unwrap().1;
                let text = std::fs::read_to_string(p).unwrap();
                let lines: Vec<&str> = text.split_inclusive('\n').collect();
                std::fs::write(p, lines[..lines.len() / 2].concat()).unwrap();
            }),
        ),
        ("a middle segment emptied", false, Box::new(move |segs| header_only(&segs[segs.len() / 2].1))),
        (
            "every segment removed",
            false,
            Box::new(|segs| segs.iter().for_each(|s| std::fs::remove_file(&s.1).unwrap())),
        ),
    ];
    for (what, chain_blind, cut) in cases {
        let trail = tempfile::tempdir().unwrap();
        for (_, p) in list_segments(pristine.path()).unwrap() {
            std::fs::copy(&p, trail.path().join(p.file_name().unwrap())).unwrap();
        }
        let anchor = tempfile::tempdir().unwrap();
        checkpoint_trail(trail.path(), &keys, 10, &[&DirAnchor::new(anchor.path(), DirLayout::FilePerSize)]);
        let n = records(trail.path()).len() as u64;
        let latest = anchor.path().join(map_wrapper::audit::anchor::checkpoint_file_name(n));
        assert!(latest.exists());
        cut(&list_segments(trail.path()).unwrap());
        if chain_blind {
            // Intact, or a torn tail (a segment of only its header): not tampering.
            let (code, r) = verify_json(&[s(trail.path())]);
            assert!(code == 0 || code == 2, "{what}: the chain alone does not see it: {r}");
        }
        let (code, r) = verify_json(&["--pubkey", &pk, "--checkpoint", s(&latest), s(trail.path())]);
        assert_eq!(code, 1, "{what}: {r}");
    }
}

#[test]
fn a_forged_or_foreign_note_in_the_trails_checkpoints_is_tampered_and_a_torn_last_one_is_not() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keygen(keys_dir.path());
    let pk = s(&keys.public).to_string();
    let trail = tempfile::tempdir().unwrap();
    write_trail(trail.path(), 50);
    checkpoint_trail(trail.path(), &keys, 10, &[]);
    let notes = trail.path().join("checkpoints.notes");
    let good = std::fs::read_to_string(&notes).unwrap();
    assert_eq!(verify_json(&["--pubkey", &pk, s(trail.path())]).0, 0);

    // Torn last note (a crash while appending): a note, not tampering.
    std::fs::write(&notes, &good[..good.len() - 30]).unwrap();
    let (code, r) = verify_json(&["--pubkey", &pk, s(trail.path())]);
    assert_eq!(code, 0, "{r}");
    assert!(r["checkpoints"]["notes"][0].as_str().unwrap().contains("torn last note"), "{r}");

    // A note whose size was changed (its signature no longer matches).
    let first_size = good.lines().nth(1).unwrap();
    std::fs::write(&notes, good.replacen(&format!("\n{first_size}\n"), "\n9\n", 1)).unwrap();
    let (code, r) = verify_json(&["--pubkey", &pk, s(trail.path())]);
    assert_eq!(code, 1, "{r}");
    assert!(r["problem"]["what"].as_str().unwrap().contains("does not open"), "{r}");

    // A note signed by another key under the same name.
    let mallory = NoteSigner::generate(ORIGIN).unwrap();
    let mut c = Checkpointer::new(ORIGIN, mallory, CheckpointPolicy::default()).unwrap();
    let forged = c.checkpoint(Instant::now());
    std::fs::write(&notes, format!("{good}{}", forged.note())).unwrap();
    assert_eq!(verify_json(&["--pubkey", &pk, s(trail.path())]).0, 1);

    // Without --pubkey the checkpoints are reported as not checked.
    std::fs::write(&notes, &good).unwrap();
    let (code, r) = verify_json(&[s(trail.path())]);
    assert_eq!(code, 0);
    assert!(r["notes"].to_string().contains("not checked (give --pubkey)"), "{r}");
    // --checkpoint without --pubkey is a usage error.
    assert_eq!(run(&["verify", "--checkpoint", s(&notes), s(trail.path())]).0, 3);
}

#[test]
fn the_state_file_advances_with_the_trail_and_catches_a_rollback_without_any_anchor() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keygen(keys_dir.path());
    let pk = s(&keys.public).to_string();
    let trail = tempfile::tempdir().unwrap();
    write_trail(trail.path(), 40);
    checkpoint_trail(trail.path(), &keys, 7, &[]);
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("billing.state");
    let n = records(trail.path()).len() as u64;

    let (code, r) = verify_json(&["--pubkey", &pk, "--state", s(&state), s(trail.path())]);
    assert_eq!(code, 0, "{r}");
    assert!(
        r["checkpoints"]["notes"].to_string().contains(&format!("kept the checkpoint of {n} records")),
        "{r}"
    );
    let held = SignedCheckpoint::open(&std::fs::read(&state).unwrap(), &[keys.signer.verifier()]).unwrap();
    assert_eq!(held.checkpoint().size(), n);

    // The attacker rolls the trail back and rewrites checkpoints.notes to match: the trail
    // is self-consistent, but shorter than what the verifier saw.
    cut_tail(trail.path(), 5);
    std::fs::remove_file(trail.path().join("checkpoints.notes")).unwrap();
    checkpoint_trail(trail.path(), &keys, 7, &[]);
    assert_eq!(verify_json(&["--pubkey", &pk, s(trail.path())]).0, 0, "consistent on its own");
    let (code, r) = verify_json(&["--pubkey", &pk, "--state", s(&state), s(trail.path())]);
    assert_eq!(code, 1, "{r}");
    assert!(r["problem"]["what"].as_str().unwrap().contains("state"), "{r}");
    let still = SignedCheckpoint::open(&std::fs::read(&state).unwrap(), &[keys.signer.verifier()]).unwrap();
    assert_eq!(still, held, "a tampered trail does not move the state");
}

#[test]
fn an_idle_trail_without_audit_stop_is_stale_past_its_heartbeat() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keygen(keys_dir.path());
    let pk = s(&keys.public).to_string();
    let trail = tempfile::tempdir().unwrap();
    write_trail(trail.path(), 20);
    let policy = CheckpointPolicy { heartbeat: Duration::from_millis(1000), ..CheckpointPolicy::default() };
    // Checkpoints made an hour ago with a 1 s heartbeat.
    let checkpoint_at = |trail: &Path| {
        let mut c = Checkpointer::new(ORIGIN, keys.signer.clone(), policy).unwrap();
        for l in records(trail) {
            c.on_record(&l);
        }
        let cp = c.checkpoint_at(Instant::now(), chrono::Utc::now() - chrono::Duration::hours(1));
        DirAnchor::new(trail, DirLayout::Append).publish(&cp).unwrap();
    };
    checkpoint_at(trail.path());
    // Closed cleanly (ends with audit_stop): not stale.
    let (code, r) = verify_json(&["--pubkey", &pk, s(trail.path())]);
    assert_eq!(code, 0, "{r}");
    // Without audit_stop (the writer died or stopped checkpointing): STALE, exit 4.
    cut_tail(trail.path(), 1);
    std::fs::remove_file(trail.path().join("checkpoints.notes")).unwrap();
    checkpoint_at(trail.path());
    let (code, r) = verify_json(&["--pubkey", &pk, s(trail.path())]);
    assert_eq!(code, 4, "{r}");
    assert_eq!(r["verdict"], "stale");
    let (code, out, _) = run(&["verify", "--pubkey", &pk, s(trail.path())]);
    assert_eq!(code, 4);
    assert!(out.starts_with("STALE "), "{out}");
    // A generous grace covers the hour.
    let (code, _) = verify_json(&["--pubkey", &pk, "--grace-ms", "7200000", s(trail.path())]);
    assert_eq!(code, 0);
}

#[test]
fn every_record_proves_and_the_proof_checks_without_the_trail() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keygen(keys_dir.path());
    let pk = s(&keys.public).to_string();
    let trail = tempfile::tempdir().unwrap();
    write_trail(trail.path(), 70);
    checkpoint_trail(trail.path(), &keys, 16, &[]);
    let lines = records(trail.path());
    let n = lines.len();
    let log2 = 64 - (n as u64 - 1).leading_zeros() as usize;
    let out_dir = tempfile::tempdir().unwrap();
    for seq in 1..=n {
        let (code, proof, err) = run(&["prove", &seq.to_string(), "--pubkey", &pk, s(trail.path())]);
        assert_eq!(code, 0, "{err}");
        assert!(proof.starts_with("c2sp.org/tlog-proof@v1\nextra "), "{proof}");
        let hashes = proof.split("\n\n").next().unwrap().lines().skip(3).count();
        assert!(hashes * 32 <= 32 * log2, "{hashes} hashes for {n} records");
        let f = out_dir.path().join(format!("{seq}.tlog-proof"));
        std::fs::write(&f, &proof).unwrap();
        // The auditor has the proof and the verifier key, not the trail.
        let (code, out, _) = run(&["check-proof", "--pubkey", &pk, s(&f)]);
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with(&format!("VALID inclusion origin={ORIGIN} seq={seq} size={n}\n")), "{out}");
        assert_eq!(out.lines().nth(1).unwrap().as_bytes(), &lines[seq - 1][..]);
    }
    // One bit flipped anywhere in a hash: invalid.
    let proof = std::fs::read_to_string(out_dir.path().join("5.tlog-proof")).unwrap();
    let hash_line = proof.lines().nth(3).unwrap();
    let mut raw = base64_decode(hash_line);
    raw[0] ^= 0x01;
    let bad = out_dir.path().join("bad");
    std::fs::write(&bad, proof.replacen(hash_line, &base64_encode(&raw), 1)).unwrap();
    let (code, out, _) = run(&["check-proof", "--pubkey", &pk, s(&bad)]);
    assert_eq!((code, out.starts_with("INVALID")), (1, true), "{out}");
    // Another key: invalid.
    let other = tempfile::tempdir().unwrap();
    let other_keys = keygen(other.path());
    let good = out_dir.path().join("5.tlog-proof");
    assert_eq!(run(&["check-proof", "--pubkey", s(&other_keys.public), s(&good)]).0, 1);
    // Beyond the checkpoint: refused.
    assert_eq!(run(&["prove", &(n + 1).to_string(), "--pubkey", &pk, s(trail.path())]).0, 3);
}

#[test]
fn prove_refuses_a_checkpoint_the_trail_no_longer_holds() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keygen(keys_dir.path());
    let pk = s(&keys.public).to_string();
    let trail = tempfile::tempdir().unwrap();
    write_trail(trail.path(), 30);
    let anchor = tempfile::tempdir().unwrap();
    let held = anchor.path().join("latest.note");
    checkpoint_trail(trail.path(), &keys, 8, &[&FileAnchor::new(&held)]);
    cut_tail(trail.path(), 3);
    let (code, out, _) = run(&["prove", "2", "--pubkey", &pk, "--checkpoint", s(&held), s(trail.path())]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("TAMPERED"), "{out}");
}

#[test]
fn consistency_proves_that_a_newer_checkpoint_extends_an_older_one_and_a_fork_fails() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keygen(keys_dir.path());
    let pk = s(&keys.public).to_string();
    let trail = tempfile::tempdir().unwrap();
    write_trail(trail.path(), 60);
    let made = checkpoint_trail(trail.path(), &keys, 9, &[]);
    let sizes: Vec<u64> = made.iter().map(|c| c.checkpoint().size()).collect();
    let work = tempfile::tempdir().unwrap();
    for (i, old) in sizes.iter().enumerate() {
        for new in &sizes[i..] {
            let (code, proof, err) =
                run(&["consistency", &old.to_string(), &new.to_string(), "--pubkey", &pk, s(trail.path())]);
            assert_eq!(code, 0, "{old}->{new}: {err}");
            let f = work.path().join("c.proof");
            std::fs::write(&f, &proof).unwrap();
            let (code, out, _) = run(&["check-proof", "--pubkey", &pk, s(&f)]);
            assert_eq!(code, 0, "{out}");
            assert!(
                out.starts_with(&format!("VALID consistency origin={ORIGIN} old={old} new={new}")),
                "{out}"
            );
        }
    }
    // A fork: a checkpoint of the same size as the newest over other records, signed with
    // the right key. The trail does not hold it (prove refuses), and a proof file that pairs
    // it with a real old checkpoint does not check.
    let mut c = Checkpointer::new(ORIGIN, keys.signer.clone(), CheckpointPolicy::default()).unwrap();
    let n = *sizes.last().unwrap();
    for i in 0..n {
        c.on_record(format!("{{\"seq\":{}}}", i + 1).as_bytes());
    }
    let fork = c.checkpoint(Instant::now());
    let fork_file = work.path().join("fork.note");
    std::fs::write(&fork_file, fork.note()).unwrap();
    let (code, out, _) =
        run(&["consistency", &sizes[1].to_string(), s(&fork_file), "--pubkey", &pk, s(trail.path())]);
    assert_eq!(code, 1, "{out}");
    let (_, real, _) =
        run(&["consistency", &sizes[1].to_string(), &n.to_string(), "--pubkey", &pk, s(trail.path())]);
    let forged = real.replace(made.last().unwrap().note(), fork.note());
    let f = work.path().join("forged.proof");
    std::fs::write(&f, forged).unwrap();
    let (code, out, _) = run(&["check-proof", "--pubkey", &pk, s(&f)]);
    assert_eq!(code, 1, "{out}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
