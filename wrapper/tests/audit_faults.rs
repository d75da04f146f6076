//! Fault injection: a segment writer that fails on the Nth write or fsync. Every operation
//! that returned Ok has its record; no `ok` record for an operation that did not happen;
//! mutations after the failure are refused; the trail continues after a reopen.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use map_wrapper::audit::{
    verify, AuditRecord, Auditor, Durability, FailMode, JsonLinesOptions, JsonLinesSink, SegmentWriter,
};
use map_wrapper::{MapError, MapWrapper};

#[derive(Default)]
struct Faults {
    writes: AtomicUsize,
    syncs: AtomicUsize,
    fail_write_at: AtomicUsize,
    fail_sync_at: AtomicUsize,
}

struct Failing {
    file: File,
    faults: Arc<Faults>,
}

impl SegmentWriter for Failing {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let n = self.faults.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.faults.fail_write_at.load(Ordering::SeqCst) {
            // Half the buffer reaches the file, as when a disk fills mid-write.
            self.file.write_all(&buf[..buf.len() / 2])?;
            return Err(io::Error::other("injected write failure (no space left)"));
        }
        self.file.write_all(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        let n = self.faults.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.faults.fail_sync_at.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure (EIO)"));
        }
        self.file.sync_data()
    }
}

fn open(dir: &Path, faults: &Arc<Faults>) -> JsonLinesSink {
    let faults = Arc::clone(faults);
    let opts = JsonLinesOptions {
        writer_hook: Some(Arc::new(move |file| Box::new(Failing { file, faults: Arc::clone(&faults) }))),
        ..Default::default()
    };
    JsonLinesSink::open(dir, opts).unwrap()
}

fn records(dir: &Path) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for (_, path) in map_wrapper::audit::list_segments(dir).unwrap() {
        for line in std::fs::read_to_string(path).unwrap().lines() {
            if let Ok(r) = serde_json::from_str::<AuditRecord>(line) {
                out.push(r);
            }
        }
    }
    out
}

fn ok_keys(dir: &Path) -> HashSet<u32> {
    records(dir)
        .iter()
        .filter(|r| r.outcome == "ok")
        .filter_map(|r| r.key.as_ref().and_then(|k| k["full"].as_u64()).map(|k| k as u32))
        .collect()
}

struct Run {
    acked: Vec<u32>,
    applied_unrecorded: Vec<u32>,
    refused: Vec<u32>,
}

/// Inserts 0..n one by one and sorts the outcomes.
fn insert_all(map: &MapWrapper<u32, u32>, n: u32) -> Run {
    let mut run = Run { acked: vec![], applied_unrecorded: vec![], refused: vec![] };
    for i in 0..n {
        match map.insert(i, i) {
            Ok(_) => run.acked.push(i),
            Err(MapError::AuditUnavailable { reason, .. }) if reason.contains("applied") => {
                run.applied_unrecorded.push(i)
            }
            Err(e) => {
                assert_eq!(e.code(), "AUDIT_UNAVAILABLE", "{e}");
                run.refused.push(i);
            }
        }
    }
    run
}

fn check_after_failure(dir: &Path, map: &MapWrapper<u32, u32>, run: &Run) {
    assert!(!run.acked.is_empty() && !run.refused.is_empty(), "the failure happened mid-run");
    let recorded = ok_keys(dir);
    for k in &run.acked {
        assert!(recorded.contains(k), "acknowledged insert of {k} has no record");
        assert_eq!(map.get_cloned(k).unwrap(), Some(*k));
    }
    for k in &run.refused {
        assert!(!recorded.contains(k), "refused insert of {k} has an ok record");
        assert_eq!(map.get_cloned(k).unwrap(), None, "refused insert of {k} changed the map");
    }
    // As documented: an op that failed after it was applied is in the map.
    for k in &run.applied_unrecorded {
        assert_eq!(map.get_cloned(k).unwrap(), Some(*k));
    }
    // Read-only until reopened: every kind of mutation is refused.
    assert_eq!(map.remove(&run.acked[0]).unwrap_err().code(), "AUDIT_UNAVAILABLE");
    assert_eq!(map.clear().unwrap_err().code(), "AUDIT_UNAVAILABLE");
    assert_eq!(map.get_cloned(&run.acked[0]).unwrap(), Some(run.acked[0]));
}

#[test]
fn an_fsync_failure_poisons_the_segment_and_makes_the_map_read_only_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let sink = Arc::new(open(dir.path(), &faults));
    faults.fail_sync_at.store(faults.syncs.load(Ordering::SeqCst) + 15, Ordering::SeqCst);
    let auditor = Auditor::from_arc(sink.clone()).durability(Durability::Synced);
    let map: MapWrapper<u32, u32> = MapWrapper::builder().auditor(auditor.clone()).build().unwrap();

    let run = insert_all(&map, 60);
    assert_eq!(run.applied_unrecorded.len(), 1, "the op whose sync failed");
    check_after_failure(dir.path(), &map, &run);
    let syncs = faults.syncs.load(Ordering::SeqCst);

    auditor.reopen().unwrap();
    map.insert(1000, 1).unwrap();
    assert!(faults.syncs.load(Ordering::SeqCst) > syncs);
    drop(map);
    drop(auditor);
    sink.close().unwrap();
    let segs = map_wrapper::audit::list_segments(dir.path()).unwrap();
    assert_eq!(segs.len(), 2, "the poisoned segment is never written again");
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
    let recs = records(dir.path());
    assert!(recs.iter().any(|r| r.op == "audit_start"
        && r.reason.as_deref().is_some_and(|s| s.contains("reopened after failure: fsync"))));
    assert!(ok_keys(dir.path()).contains(&1000));
}

#[test]
fn a_failed_write_leaves_a_torn_segment_that_the_reopened_trail_declares() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let sink = Arc::new(open(dir.path(), &faults));
    faults.fail_write_at.store(faults.writes.load(Ordering::SeqCst) + 10, Ordering::SeqCst);
    let auditor = Auditor::from_arc(sink.clone()).durability(Durability::Flushed);
    let map: MapWrapper<u32, u32> = MapWrapper::builder().auditor(auditor.clone()).build().unwrap();

    let run = insert_all(&map, 40);
    check_after_failure(dir.path(), &map, &run);
    auditor.reopen().unwrap();
    map.insert(1000, 1).unwrap();
    drop((map, auditor));
    sink.close().unwrap();
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
    assert!(report.notes.iter().any(|n| n.contains("discarded")), "{}", report.human());
    // The half-written record does not count: seq stays gap-free across the failure.
    let seqs: Vec<u64> = records(dir.path()).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn fail_open_keeps_mutating_counts_lost_records_and_writes_a_sink_gap_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let sink = Arc::new(open(dir.path(), &faults));
    faults.fail_write_at.store(faults.writes.load(Ordering::SeqCst) + 5, Ordering::SeqCst);
    let auditor =
        Auditor::from_arc(sink.clone()).durability(Durability::Flushed).fail_mode(FailMode::FailOpen);
    let map: MapWrapper<u32, u32> = MapWrapper::builder().auditor(auditor.clone()).build().unwrap();
    let run = insert_all(&map, 20);
    assert_eq!(run.acked.len(), 20, "fail-open never refuses");
    let lost = auditor.lost_records();
    assert!(lost >= 15, "{lost}");
    auditor.reopen().unwrap();
    assert_eq!(auditor.lost_records(), 0);
    drop((map, auditor));
    sink.close().unwrap();
    let gap = records(dir.path()).into_iter().find(|r| r.op == "sink_gap").expect("a sink_gap record");
    assert_eq!(gap.reason.unwrap(), format!("{lost} records lost while the sink was unavailable"));
}

const DISK_FULL_CHILD: &str = "MW_AUDIT_DISK_FULL_CHILD";

/// The child side of the disk-full test: a 64 KiB file-size limit, then inserts until refused.
fn disk_full_child(dir: &Path) {
    let limit = libc::rlimit { rlim_cur: 64 << 10, rlim_max: 64 << 10 };
    // SAFETY: plain libc calls on this (child) process with valid arguments: ignore SIGXFSZ so
    // a write past the limit fails with EFBIG instead of killing the process, then set the
    // limit.
    unsafe {
        assert_ne!(libc::signal(libc::SIGXFSZ, libc::SIG_IGN), libc::SIG_ERR);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    let sink = JsonLinesSink::open(dir, JsonLinesOptions::default()).unwrap();
    let map: MapWrapper<u32, String> =
        MapWrapper::builder().auditor(Auditor::new(sink).durability(Durability::Synced)).build().unwrap();
    let mut out = io::stdout().lock();
    for i in 0..100_000u32 {
        match map.insert(i, "x".repeat(100)) {
            Ok(_) => writeln!(out, "ack {i}").unwrap(),
            Err(e) => {
                writeln!(out, "err {i} {}", e.code()).unwrap();
                let after = map.insert(i + 1, String::new()).unwrap_err();
                writeln!(out, "after {}", after.code()).unwrap();
                return;
            }
        }
    }
}

#[test]
fn a_full_disk_refuses_mutations_and_keeps_every_acknowledged_record() {
    if let Some(dir) = std::env::var_os(DISK_FULL_CHILD) {
        return disk_full_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_full_disk_refuses_mutations_and_keeps_every_acknowledged_record", "--nocapture"])
        .env(DISK_FULL_CHILD, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let acked: Vec<u32> =
        stdout.lines().filter_map(|l| l.strip_prefix("ack ")).map(|k| k.parse().unwrap()).collect();
    assert!(acked.len() > 100, "{stdout}");
    assert!(stdout.contains("AUDIT_UNAVAILABLE") && stdout.contains("after AUDIT_UNAVAILABLE"), "{stdout}");
    let recorded = ok_keys(dir.path());
    assert!(acked.iter().all(|k| recorded.contains(k)), "an acknowledged insert has no record");
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_ne!(report.verdict, verify::Verdict::Tampered, "{}", report.human());
    // The next process repairs the tail and goes on.
    drop(JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap());
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
}

#[test]
fn a_segment_file_left_without_its_header_is_removed_on_open_with_a_record() {
    for leftover in [&b""[..], &b"{\"v\":1,\"segment\":2,\"ts\""[..]] {
        let dir = tempfile::tempdir().unwrap();
        drop(JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap());
        // A crash between creating segment 2 and writing its whole header.
        std::fs::write(dir.path().join("segment-000002.jsonl"), leftover).unwrap();
        let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
        assert_ne!(report.verdict, verify::Verdict::Tampered, "{}", report.human());

        let sink = JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap();
        let map: MapWrapper<u32, u32> = MapWrapper::builder().auditor(Auditor::new(sink)).build().unwrap();
        map.insert(1, 1).unwrap();
        drop(map);
        let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
        assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
        let gap = records(dir.path()).into_iter().find(|r| r.op == "sink_gap").expect("a sink_gap record");
        assert_eq!(
            gap.reason.unwrap(),
            format!(
                "removed segment-000002.jsonl: {} bytes of an incomplete segment header left by an interrupted \
                 segment creation",
                leftover.len()
            )
        );
        assert!(ok_keys(dir.path()).contains(&1));
    }
}

#[test]
fn a_trail_directory_takes_one_sink_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap();
    let second = JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap_err();
    assert!(second.reason().contains("already open"), "{second}");
    drop(first);
    let again = JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap();
    drop(again);
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
}
