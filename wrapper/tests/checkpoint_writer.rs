//! The JSON-lines writer with checkpoints on: it writes signed checkpoints of the records on
//! disk to the trail's `checkpoints.notes` and its anchors (every N records, after T, on a
//! heartbeat while idle, on open and close); a trail whose tail is then deleted is caught;
//! reopening continues the same tree, and refuses a trail cut below its own checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use map_wrapper::audit::anchor::{CheckpointAnchor, DirAnchor, DirLayout, FileAnchor, APPEND_FILE};
use map_wrapper::audit::checkpoint::{
    check_checkpoints, tree_of_trail, CheckpointCheckOptions, CheckpointOptions, CheckpointPolicy,
    SignedCheckpoint,
};
use map_wrapper::audit::note::NoteSigner;
use map_wrapper::audit::proof::prove_consistency;
use map_wrapper::audit::{list_segments, Auditor, Durability, JsonLinesOptions, JsonLinesSink};
use map_wrapper::MapWrapper;

const ORIGIN: &str = "example.com/billing-audit";

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, [42; 32]).unwrap()
}

fn opts(cp: CheckpointOptions) -> JsonLinesOptions {
    JsonLinesOptions { max_segment_bytes: 8 << 10, checkpoints: Some(cp), ..Default::default() }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    list_segments(dir).unwrap().into_iter().map(|(_, p)| p).collect()
}

/// Every checkpoint of the trail's own `checkpoints.notes`, opened with the key.
fn own_checkpoints(dir: &Path) -> Vec<SignedCheckpoint> {
    DirAnchor::new(dir, DirLayout::Append)
        .all()
        .unwrap()
        .into_iter()
        .map(|c| SignedCheckpoint::open(c.unwrap().note().as_bytes(), &[signer().verifier()]).unwrap())
        .collect()
}

fn records(dir: &Path) -> u64 {
    tree_of_trail(dir).unwrap().size()
}

/// Writes `n` inserts through a map on `sink`, then closes it.
fn write(sink: &Arc<JsonLinesSink>, n: u32, durability: Durability) {
    let map: MapWrapper<u32, String> = MapWrapper::builder()
        .name("billing")
        .auditor(Auditor::from_arc(sink.clone()).durability(durability))
        .build()
        .unwrap();
    for i in 0..n {
        map.insert(i % 31, format!("value {i}")).unwrap();
    }
}

fn check(dir: &Path, external: &[PathBuf]) -> map_wrapper::audit::checkpoint::CheckpointFindings {
    let o = CheckpointCheckOptions {
        trusted: vec![signer().verifier()],
        trail_notes: vec![dir.join(APPEND_FILE)],
        external: external.to_vec(),
        ..Default::default()
    };
    check_checkpoints(&files(dir), &o).unwrap()
}

/// Cuts the last `k` record lines off the trail (a segment left with its header only is
/// removed).
fn cut_tail(dir: &Path, mut k: usize) {
    for p in files(dir).iter().rev() {
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

#[test]
fn a_trail_written_with_checkpoints_on_has_its_tail_cut_caught_by_the_anchor() {
    let ks: Vec<usize> = match std::env::var("CHECKPOINT_LONG_RUN") {
        Ok(_) => vec![1, 2, 3, 10, 100, 1000, 10_000],
        Err(_) => vec![1, 2, 9, 150],
    };
    let n = (*ks.last().unwrap() as u32 + 50).max(300);
    for k in ks {
        let trail = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let anchor = elsewhere.path().join("billing.note");
        let cp = CheckpointOptions::new(ORIGIN, signer()).anchor(FileAnchor::new(&anchor));
        let sink = Arc::new(JsonLinesSink::open(trail.path(), opts(cp)).unwrap());
        write(&sink, n, Durability::Buffered);
        sink.close().unwrap();
        let stats = sink.stats();
        // At least the one made on close (Buffered records may all go in one batch with it).
        assert!(stats.checkpoints >= 1, "{stats:?}");
        assert_eq!(stats.anchor_failures, 0);
        // The last checkpoint covers every record, audit_stop included, in both places.
        let all = records(trail.path());
        let latest = sink.latest_checkpoint().unwrap();
        drop(sink); // releases the trail's lock
        assert_eq!(latest.checkpoint().size(), all);
        let held = FileAnchor::new(&anchor).latest().unwrap().unwrap();
        assert_eq!(held.note(), latest.note());
        assert_eq!(own_checkpoints(trail.path()).last().unwrap(), &latest);
        let f = check(trail.path(), std::slice::from_ref(&anchor));
        assert_eq!((f.tampered.as_deref(), f.records), (None, all), "{f:?}");

        cut_tail(trail.path(), k);
        let f = check(trail.path(), std::slice::from_ref(&anchor));
        let why = f.tampered.unwrap_or_else(|| panic!("k={k}: not caught"));
        assert!(why.contains("removed from its end"), "{why}");
        // The writer refuses to continue a trail cut below its own checkpoint.
        let cp = CheckpointOptions::new(ORIGIN, signer());
        let e = JsonLinesSink::open(trail.path(), opts(cp)).unwrap_err().to_string();
        assert!(e.contains("tampering"), "{e}");
    }
}

#[test]
fn an_idle_trail_gets_heartbeat_checkpoints_of_the_same_size() {
    let trail = tempfile::tempdir().unwrap();
    let policy = CheckpointPolicy {
        every_records: 1000,
        every: Duration::from_millis(20),
        heartbeat: Duration::from_millis(50),
    };
    let sink = Arc::new(
        JsonLinesSink::open(trail.path(), opts(CheckpointOptions::new(ORIGIN, signer()).policy(policy)))
            .unwrap(),
    );
    let map: MapWrapper<u32, u32> =
        MapWrapper::builder().name("m").auditor(Auditor::from_arc(sink.clone())).build().unwrap();
    map.insert(1, 1).unwrap();
    // Wait (bounded) until several heartbeats were written after the insert's checkpoint.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let size = records(trail.path());
    while own_checkpoints(trail.path()).iter().filter(|c| c.checkpoint().size() == size).count() < 5 {
        assert!(std::time::Instant::now() < deadline, "no heartbeats: {:?}", own_checkpoints(trail.path()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let cps = own_checkpoints(trail.path());
    let beats: Vec<_> = cps.iter().filter(|c| c.checkpoint().size() == size).collect();
    assert!(beats.windows(2).all(|w| w[0].checkpoint().root() == w[1].checkpoint().root()));
    assert!(beats.windows(2).all(|w| w[0].checkpoint().time() < w[1].checkpoint().time()), "later each time");
    assert_eq!(beats[0].checkpoint().heartbeat(), Some(Duration::from_millis(50)));
    // Heartbeats are what keeps an idle trail from being STALE: the latest is fresh.
    let now = chrono::Utc::now();
    assert!(!cps.last().unwrap().checkpoint().is_stale(now, Duration::from_secs(5)));
    drop(map);
    sink.close().unwrap();
}

#[test]
fn every_n_records_a_checkpoint_of_the_records_on_disk() {
    let trail = tempfile::tempdir().unwrap();
    let policy = CheckpointPolicy {
        every_records: 10,
        every: Duration::from_secs(3600),
        heartbeat: Duration::from_secs(3600),
    };
    let sink = Arc::new(
        JsonLinesSink::open(trail.path(), opts(CheckpointOptions::new(ORIGIN, signer()).policy(policy)))
            .unwrap(),
    );
    write(&sink, 200, Durability::Flushed);
    sink.close().unwrap();
    let cps = own_checkpoints(trail.path());
    let sizes: Vec<u64> = cps.iter().map(|c| c.checkpoint().size()).collect();
    // Due every 10 records; the writer thread makes it in its next turn (Flushed waiters
    // leave it the turn once a checkpoint is 100 ms overdue), so records written meanwhile
    // are covered too: on a loaded machine fewer than 200 / 10.
    assert!(sizes.len() >= 2, "{sizes:?}");
    assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    assert_eq!(*sizes.last().unwrap(), records(trail.path()));
    // Each one is of the trail's own records.
    let f = check(trail.path(), &[]);
    assert_eq!((f.tampered, f.checked), (None, cps.len()));
    // Consistency between every pair of them.
    for (i, a) in cps.iter().enumerate() {
        for b in &cps[i..] {
            prove_consistency(&files(trail.path()), a, b).unwrap();
        }
    }
}

#[test]
fn reopening_continues_the_tree() {
    let trail = tempfile::tempdir().unwrap();
    let anchor_dir = tempfile::tempdir().unwrap();
    let first = {
        let cp = CheckpointOptions::new(ORIGIN, signer())
            .anchor(DirAnchor::new(anchor_dir.path(), DirLayout::FilePerSize));
        let sink = Arc::new(JsonLinesSink::open(trail.path(), opts(cp)).unwrap());
        write(&sink, 120, Durability::Flushed);
        sink.close().unwrap();
        sink.latest_checkpoint().unwrap()
    };
    let cp = CheckpointOptions::new(ORIGIN, signer())
        .anchor(DirAnchor::new(anchor_dir.path(), DirLayout::FilePerSize));
    let sink = Arc::new(JsonLinesSink::open(trail.path(), opts(cp)).unwrap());
    write(&sink, 80, Durability::Synced);
    sink.close().unwrap();
    let second = sink.latest_checkpoint().unwrap();
    assert!(second.checkpoint().size() > first.checkpoint().size() + 80);
    assert_eq!(*second.checkpoint().root(), tree_of_trail(trail.path()).unwrap().root());
    prove_consistency(&files(trail.path()), &first, &second).unwrap();
    // The anchor took both sessions' checkpoints without a refusal (never backwards).
    assert_eq!(sink.stats().anchor_failures, 0);
    let f = check(trail.path(), &[]);
    assert_eq!(f.tampered, None, "{f:?}");
}

/// Waits for the checkpoint a sink makes on opening (its writer thread makes it when it gets
/// the turn: 50 fast Flushed writes and a close can come first, and the one made on closing
/// then covers everything, so a test that counts checkpoints waits for it).
fn opening_checkpoint(sink: &JsonLinesSink) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.stats().checkpoints == 0 {
        assert!(Instant::now() < deadline, "no checkpoint on opening");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An anchor that always fails.
struct Broken;
impl CheckpointAnchor for Broken {
    fn publish(&self, _: &SignedCheckpoint) -> Result<(), map_wrapper::audit::anchor::AnchorError> {
        Err(map_wrapper::audit::anchor::AnchorError::Io { path: "nowhere".into(), reason: "down".into() })
    }
    fn latest(&self) -> Result<Option<SignedCheckpoint>, map_wrapper::audit::anchor::AnchorError> {
        Ok(None)
    }
}

#[test]
fn a_failing_anchor_is_counted_and_does_not_stop_the_trail() {
    let trail = tempfile::tempdir().unwrap();
    let sink = Arc::new(
        JsonLinesSink::open(trail.path(), opts(CheckpointOptions::new(ORIGIN, signer()).anchor(Broken)))
            .unwrap(),
    );
    opening_checkpoint(&sink);
    write(&sink, 50, Durability::Flushed);
    sink.close().unwrap();
    let s = sink.stats();
    assert!(s.anchor_failures >= 2 && s.anchor_failures == s.checkpoints, "{s:?}");
    assert_eq!(own_checkpoints(trail.path()).last().unwrap().checkpoint().size(), records(trail.path()));
}

/// An anchor whose `publish` panics (a bug in a user's anchor).
struct Panicky;
impl CheckpointAnchor for Panicky {
    fn publish(&self, _: &SignedCheckpoint) -> Result<(), map_wrapper::audit::anchor::AnchorError> {
        panic!("a bug in the anchor")
    }
    fn latest(&self) -> Result<Option<SignedCheckpoint>, map_wrapper::audit::anchor::AnchorError> {
        Ok(None)
    }
}

#[test]
fn a_panicking_anchor_is_counted_as_failed_and_does_not_fail_the_trail() {
    let trail = tempfile::tempdir().unwrap();
    let sink = Arc::new(
        JsonLinesSink::open(trail.path(), opts(CheckpointOptions::new(ORIGIN, signer()).anchor(Panicky)))
            .unwrap(),
    );
    opening_checkpoint(&sink);
    // Flushed waiters hold the turn while the writer thread publishes: before, the panic
    // reached the writer thread's catch, which failed the sink under a waiter's turn.
    write(&sink, 50, Durability::Flushed);
    sink.close().unwrap();
    let s = sink.stats();
    assert!(s.anchor_failures >= 2 && s.anchor_failures == s.checkpoints, "{s:?}");
    assert_eq!(own_checkpoints(trail.path()).last().unwrap().checkpoint().size(), records(trail.path()));
}

#[test]
fn verify_checks_the_checkpoints_in_its_pass() {
    use map_wrapper::audit::verify::{verify_paths, Verdict, VerifyOptions};
    let trail = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let anchor = elsewhere.path().join("billing.note");
    let cp = CheckpointOptions::new(ORIGIN, signer()).anchor(FileAnchor::new(&anchor));
    let sink = Arc::new(JsonLinesSink::open(trail.path(), opts(cp)).unwrap());
    write(&sink, 400, Durability::Buffered);
    sink.close().unwrap();
    let vo = VerifyOptions {
        checkpoints: Some(CheckpointCheckOptions {
            trusted: vec![signer().verifier()],
            trail_notes: vec![trail.path().join(APPEND_FILE)],
            external: vec![anchor.clone()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let paths = [trail.path().to_path_buf()];
    let r = verify_paths(&paths, &vo).unwrap();
    assert_eq!(r.verdict, Verdict::Intact, "{r:?}");
    let c = r.checkpoints.unwrap();
    assert!(c.checked >= 2 && c.tampered.is_none(), "{c:?}");
    assert_eq!(c.records, r.records);
    cut_tail(trail.path(), 3);
    std::fs::remove_file(trail.path().join(APPEND_FILE)).unwrap(); // the attacker cuts those too
    let r = verify_paths(&paths, &vo).unwrap();
    assert_eq!(r.verdict, Verdict::Tampered, "{r:?}");
    assert!(r.problem.unwrap().what.contains("removed from its end"));
}
