//! Checkpoints against a real trail written by `JsonLinesSink`: cutting records off its end,
//! emptying or removing segments, is caught by every checkpoint newer than the cut (and only
//! by those); a changed record is caught by every checkpoint that covers it.

use std::path::Path;
use std::time::Instant;

use map_wrapper::audit::anchor::{CheckpointAnchor, FileAnchor};
use map_wrapper::audit::checkpoint::{
    check_trail, tree_of_trail, CheckpointPolicy, CheckpointVerdict, Checkpointer, SignedCheckpoint,
};
use map_wrapper::audit::note::NoteSigner;
use map_wrapper::audit::{list_segments, Auditor, JsonLinesOptions, JsonLinesSink};
use map_wrapper::MapWrapper;

/// Writes a trail of several segments; returns its record lines in order.
fn write_trail(dir: &Path) -> Vec<Vec<u8>> {
    let opts = JsonLinesOptions { max_segment_bytes: 8 << 10, ..Default::default() };
    let sink = std::sync::Arc::new(JsonLinesSink::open(dir, opts).unwrap());
    let map: MapWrapper<u32, String> =
        MapWrapper::builder().name("billing").auditor(Auditor::from_arc(sink.clone())).build().unwrap();
    for i in 0..200u32 {
        map.insert(i % 50, format!("value {i}")).unwrap();
    }
    sink.close().unwrap();
    let mut lines = Vec::new();
    for (_, p) in list_segments(dir).unwrap() {
        let text = std::fs::read(p).unwrap();
        lines.extend(text.split(|&b| b == b'\n').skip(1).filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
    }
    lines
}

/// Removes the last record line of the trail (the last segment's last line; a segment left
/// with only its header is removed). Returns false when no record is left.
fn cut_last_record(dir: &Path) -> bool {
    let segs = list_segments(dir).unwrap();
    for (_, p) in segs.iter().rev() {
        let text = std::fs::read(p).unwrap();
        let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        if lines.len() <= 1 {
            std::fs::remove_file(p).unwrap();
            continue;
        }
        std::fs::write(p, lines[..lines.len() - 1].concat()).unwrap();
        if lines.len() == 2 {
            std::fs::remove_file(p).unwrap(); // the segment is now only its header: remove it
        }
        return true;
    }
    false
}

#[test]
fn cutting_any_number_of_records_off_the_end_is_caught_by_every_newer_checkpoint() {
    let trail = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let lines = write_trail(trail.path());
    let n = lines.len() as u64;
    assert!(list_segments(trail.path()).unwrap().len() >= 3, "several segments");
    assert_eq!(tree_of_trail(trail.path()).unwrap().size(), n);

    // A checkpoint every 10 records (and one of the whole trail), each handed to an anchor
    // outside the trail's directory.
    let signer = NoteSigner::from_seed("example.com/billing-audit", [42; 32]).unwrap();
    let trusted = [signer.verifier()];
    let policy = CheckpointPolicy { every_records: 10, ..CheckpointPolicy::default() };
    let mut cp = Checkpointer::new("example.com/billing-audit", signer, policy).unwrap();
    let anchor = FileAnchor::new(elsewhere.path().join("billing.checkpoint"));
    let t = Instant::now();
    let mut checkpoints = vec![cp.checkpoint(t)];
    for l in &lines {
        cp.on_record(l);
        if cp.due(t) {
            checkpoints.push(cp.checkpoint(t));
        }
    }
    checkpoints.push(cp.checkpoint(t));
    for c in &checkpoints {
        anchor.publish(c).unwrap();
    }
    let held = anchor.latest().unwrap().unwrap();
    let held = SignedCheckpoint::open(held.note().as_bytes(), &trusted).unwrap();
    assert_eq!(held.checkpoint().size(), n);
    let bodies: Vec<_> = checkpoints.iter().map(|c| c.checkpoint().clone()).collect();
    assert!(check_trail(trail.path(), &bodies).unwrap().iter().all(|v| *v == CheckpointVerdict::Matches));

    // Cut 1, 2, …, n records: every checkpoint newer than the cut says Truncated, every
    // other one still matches; the anchor's checkpoint catches every cut.
    let mut left = n;
    let mut caught = 0;
    while cut_last_record(trail.path()) {
        left -= 1;
        let verdicts = check_trail(trail.path(), &bodies).unwrap();
        for (c, v) in bodies.iter().zip(&verdicts) {
            if c.size() > left {
                assert_eq!(
                    *v,
                    CheckpointVerdict::Truncated { claimed: c.size(), records: left },
                    "cut to {left}"
                );
            } else {
                assert_eq!(
                    *v,
                    CheckpointVerdict::Matches,
                    "checkpoint of {} after a cut to {left}",
                    c.size()
                );
            }
        }
        let v = &check_trail(trail.path(), [held.checkpoint()]).unwrap()[0];
        caught += usize::from(matches!(v, CheckpointVerdict::Truncated { .. }));
    }
    assert_eq!(left, 0);
    assert_eq!(caught as u64, n, "every one of the {n} cuts (down to no segment at all) was caught");
}

#[test]
fn a_changed_record_is_caught_by_every_checkpoint_that_covers_it() {
    let trail = tempfile::tempdir().unwrap();
    let lines = write_trail(trail.path());
    let signer = NoteSigner::from_seed("o", [1; 32]).unwrap();
    let mut cp = Checkpointer::new("o", signer, CheckpointPolicy::default()).unwrap();
    let t = Instant::now();
    let mut bodies = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        cp.on_record(l);
        if i % 25 == 24 {
            bodies.push(cp.checkpoint(t).checkpoint().clone());
        }
    }
    // Change one byte of record 60 (a value), in whichever segment holds it.
    let target = &lines[60];
    for (_, p) in list_segments(trail.path()).unwrap() {
        let text = std::fs::read(&p).unwrap();
        if let Some(at) = text.windows(target.len()).position(|w| w == &target[..]) {
            let mut changed = text.clone();
            let v = at + target.windows(5).position(|w| w == b"value").unwrap();
            changed[v] = b'V';
            std::fs::write(&p, changed).unwrap();
        }
    }
    for (c, v) in bodies.iter().zip(check_trail(trail.path(), &bodies).unwrap()) {
        if c.size() > 60 {
            assert_eq!(v, CheckpointVerdict::RootMismatch { size: c.size() });
        } else {
            assert_eq!(v, CheckpointVerdict::Matches);
        }
    }
}
