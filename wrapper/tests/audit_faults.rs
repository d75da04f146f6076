//! Fault injection: a segment writer that fails on the Nth write or fsync. Every operation
//! that returned Ok has its record; no `ok` record for an operation that did not happen;
//! mutations after the failure are refused; the trail continues after a reopen.

mod common;
use common::records;

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use map_wrapper::audit::{
    verify, AuditRecord, AuditSink, Auditor, Durability, FailMode, JsonLinesOptions, JsonLinesSink,
    SegmentWriter,
};
use map_wrapper::MapWrapper;

#[derive(Default)]
struct Faults {
    writes: AtomicUsize,
    syncs: AtomicUsize,
    fail_write_at: AtomicUsize,
    fail_sync_at: AtomicUsize,
    /// The failing write keeps every byte but the last (a record's newline) instead of half.
    cut_before_newline: std::sync::atomic::AtomicBool,
}

struct Failing {
    file: File,
    faults: Arc<Faults>,
}

impl SegmentWriter for Failing {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let n = self.faults.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.faults.fail_write_at.load(Ordering::SeqCst) {
            // Half the buffer reaches the file, as when a disk fills mid-write (or all of it
            // but the final newline).
            let keep = if self.faults.cut_before_newline.load(Ordering::SeqCst) {
                buf.len() - 1
            } else {
                buf.len() / 2
            };
            self.file.write_all(&buf[..keep])?;
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
            Err(e) if e.applied() => {
                assert_eq!(e.code(), "APPLIED_NOT_DURABLE", "{e}");
                assert!(!e.is_retryable(), "{e}");
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
    assert!(lost >= 14, "{lost}");
    auditor.reopen().unwrap();
    assert_eq!(auditor.lost_records(), 0);
    drop((map, auditor));
    sink.close().unwrap();
    let recs = records(dir.path());
    let refused = recs
        .iter()
        .find(|r| r.op == "sink_gap" && r.reason.as_deref().is_some_and(|s| s.contains("unavailable")))
        .expect("the auditor's sink_gap record");
    assert_eq!(
        refused.reason.as_deref().unwrap(),
        format!("{lost} records lost while the sink was unavailable")
    );
    assert_every_insert_is_recorded_or_counted(&recs, 20);
}

/// The number at the start of a `sink_gap` reason that counts lost records (either kind).
fn gap_count(r: &AuditRecord) -> u64 {
    let reason = r.reason.as_deref().unwrap_or_default();
    if r.op != "sink_gap"
        || !(reason.contains("records lost while") || reason.contains("records accepted but not written"))
    {
        return 0;
    }
    reason.split(' ').next().unwrap().parse().unwrap()
}

/// Every one of `n` acknowledged inserts has an `ok` record or is counted by a `sink_gap`.
fn assert_every_insert_is_recorded_or_counted(recs: &[AuditRecord], n: u64) {
    let recorded = recs.iter().filter(|r| r.op == "insert" && r.outcome == "ok").count() as u64;
    let counted: u64 = recs.iter().map(gap_count).sum();
    let gaps: Vec<_> = recs.iter().filter(|r| r.op == "sink_gap").map(|r| r.reason.clone()).collect();
    assert_eq!(recorded + counted, n, "{recorded} recorded + {counted} counted lost; gaps: {gaps:?}");
}

/// Buffered fail-open: the 2000 inserts all return Ok while the writer fails on its first
/// batch; the records queued or in that batch are counted by the sink, the refused ones by
/// the auditor, and nothing is counted twice.
#[test]
fn fail_open_buffered_counts_every_record_lost_in_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let sink = Arc::new(open(dir.path(), &faults));
    faults.fail_write_at.store(faults.writes.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    let auditor = Auditor::from_arc(sink.clone()).fail_mode(FailMode::FailOpen);
    let map: MapWrapper<u32, u32> = MapWrapper::builder().auditor(auditor.clone()).build().unwrap();
    let run = insert_all(&map, 2000);
    assert_eq!(run.acked.len(), 2000, "fail-open never refuses");
    // Let the writer fail (it is woken by the first record and fails on its first write).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sink.health().is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(sink.health().is_err(), "the injected write failure stopped the sink");
    auditor.reopen().unwrap();
    drop((map, auditor));
    sink.close().unwrap();
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
    let recs = records(dir.path());
    assert!(recs
        .iter()
        .any(|r| r.op == "sink_gap"
            && r.reason.as_deref().is_some_and(|s| s.contains("accepted but not written"))));
    assert_every_insert_is_recorded_or_counted(&recs, 2000);
}

/// Fail-closed Buffered: records queued when the writer failed are lost although their
/// inserts returned Ok; the reopened trail says how many and which seqs they had.
#[test]
fn a_reopened_fail_closed_trail_says_how_many_accepted_records_were_lost() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let sink = Arc::new(open(dir.path(), &faults));
    faults.fail_write_at.store(faults.writes.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    let auditor = Auditor::from_arc(sink.clone());
    let map: MapWrapper<u32, u32> = MapWrapper::builder().auditor(auditor.clone()).build().unwrap();
    let run = insert_all(&map, 500);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sink.health().is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    auditor.reopen().unwrap();
    drop((map, auditor));
    sink.close().unwrap();
    let recs = records(dir.path());
    let gap = recs
        .iter()
        .find(|r| r.op == "sink_gap")
        .unwrap_or_else(|| panic!("no sink_gap although {} inserts were acknowledged", run.acked.len()));
    let recorded = recs.iter().filter(|r| r.op == "insert" && r.outcome == "ok").count() as u64;
    // The sink's own gap (accepted but not written) and the auditor's (refused by the failed
    // sink after the change was applied: a race under load) together count every change.
    let counted: u64 = recs.iter().map(gap_count).sum();
    assert_eq!(recorded + counted, run.acked.len() as u64 + run.applied_unrecorded.len() as u64);
    let a = recs.iter().filter(|r| r.op != "sink_gap" && r.seq < gap.seq).map(|r| r.seq).max().unwrap() + 1;
    assert!(gap.reason.as_deref().unwrap().contains(&format!("(seq {a}..")), "{:?}", gap.reason);
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seq stays gap-free");
}

/// A write that fails after every byte of a record but its newline leaves a line that parses
/// but is torn: the reopened trail counts that record as lost in its `sink_gap`, continues at
/// its seq, and verifies; a reader that took the unterminated line for a record would count
/// it twice (this once made the test above overcount by one under load).
#[test]
fn a_record_cut_just_before_its_newline_is_torn_and_counted_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let sink = Arc::new(open(dir.path(), &faults));
    let auditor = Auditor::from_arc(sink.clone()).durability(Durability::Flushed);
    let map: MapWrapper<u32, u32> = MapWrapper::builder().auditor(auditor.clone()).build().unwrap();
    map.insert(1, 1).unwrap();
    faults.cut_before_newline.store(true, Ordering::SeqCst);
    faults.fail_write_at.store(faults.writes.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    let err = map.insert(2, 2).unwrap_err();
    assert!(err.to_string().contains("applied"), "{err}");
    let segment = map_wrapper::audit::list_segments(dir.path()).unwrap().pop().unwrap().1;
    let bytes = std::fs::read(&segment).unwrap();
    assert_ne!(bytes.last(), Some(&b'\n'), "the failed write left an unterminated line");
    let last =
        String::from_utf8_lossy(&bytes[bytes.iter().rposition(|&b| b == b'\n').unwrap() + 1..]).to_string();
    let torn: AuditRecord = serde_json::from_str(&last).expect("the cut line parses as a record");
    assert_eq!(torn.op, "insert");

    auditor.reopen().unwrap();
    drop((map, auditor));
    sink.close().unwrap();
    let recs = records(dir.path());
    let ok: Vec<u64> = recs
        .iter()
        .filter(|r| r.op == "insert" && r.outcome == "ok")
        .filter_map(|r| r.key.as_ref()?["full"].as_u64())
        .collect();
    assert_eq!(ok, vec![1], "only the first insert is in the trail");
    let gap = recs.iter().find(|r| r.op == "sink_gap").expect("a sink_gap record");
    assert_eq!(gap_count(gap), 1, "{:?}", gap.reason);
    assert_eq!(gap.seq, torn.seq, "the trail continues at the torn record's seq");
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
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

/// The trail's lock held for a moment by someone else — as by a child process another thread
/// is spawning, which shares the closed sink's lock until it starts its program — delays the
/// open instead of failing it.
#[cfg(unix)]
#[test]
fn a_lock_held_for_a_moment_elsewhere_delays_the_open_instead_of_refusing_it() {
    use std::os::unix::io::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    drop(JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap());
    let holder = std::fs::OpenOptions::new().write(true).open(dir.path().join(".lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns; it touches no memory.
    assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        drop(holder); // closing the descriptor releases the lock
    });
    let reopened = JsonLinesSink::open(dir.path(), JsonLinesOptions::default());
    release.join().unwrap();
    drop(reopened.expect("the open waited for the lock"));
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
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

#[test]
fn a_closed_sink_refuses_mutations_before_they_change_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap());
    let map: MapWrapper<u32, u32> =
        MapWrapper::builder().auditor(Auditor::from_arc(sink.clone())).build().unwrap();
    map.insert(1, 1).unwrap();
    sink.close().unwrap();
    assert!(sink.health().is_err(), "a closed sink is not healthy");
    let e = map.insert(2, 2).unwrap_err();
    assert_eq!(e.code(), "AUDIT_UNAVAILABLE");
    assert!(!e.to_string().contains("applied"), "refused before the change: {e}");
    assert_eq!(map.get_cloned(&2).unwrap(), None, "the refused insert changed nothing");
    assert_eq!(map.remove(&1).unwrap_err().code(), "AUDIT_UNAVAILABLE");
    assert_eq!(map.get_cloned(&1).unwrap(), Some(1));
    sink.close().unwrap(); // closing twice is harmless
}

#[test]
fn audit_stop_is_the_last_record_when_close_races_with_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).unwrap());
    let map: Arc<MapWrapper<u32, u32>> =
        Arc::new(MapWrapper::builder().auditor(Auditor::from_arc(sink.clone())).build().unwrap());
    let started = Arc::new(std::sync::Barrier::new(5));
    let workers: Vec<_> = (0..4u32)
        .map(|t| {
            let (map, started) = (Arc::clone(&map), Arc::clone(&started));
            std::thread::spawn(move || {
                started.wait();
                // Until the close refuses them (bounded: at most 200 000 inserts each).
                for i in 0..200_000 {
                    if map.insert(t * 1_000_000 + i, i).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    started.wait();
    std::thread::sleep(std::time::Duration::from_millis(20));
    sink.close().unwrap();
    workers.into_iter().for_each(|w| w.join().unwrap());
    let recs = records(dir.path());
    assert_eq!(recs.last().unwrap().op, "audit_stop", "{} records", recs.len());
    assert_eq!(recs.iter().filter(|r| r.op == "audit_stop").count(), 1);
}

/// A segment writer that panics on its `n`th append (a bug in user code the sink runs).
struct Panicking {
    file: File,
    appends: usize,
    panic_at: usize,
}

impl SegmentWriter for Panicking {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.appends += 1;
        if self.appends == self.panic_at {
            panic!("segment writer bug");
        }
        self.file.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[test]
fn a_panicking_writer_thread_fails_the_sink_and_wakes_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    // Appends: the header, the opening records, then the first batch panics.
    let opts = JsonLinesOptions {
        writer_hook: Some(Arc::new(|file| Box::new(Panicking { file, appends: 0, panic_at: 3 }))),
        ..Default::default()
    };
    let sink = Arc::new(JsonLinesSink::open(dir.path(), opts).unwrap());
    let auditor = Auditor::from_arc(sink.clone()).durability(Durability::Flushed);
    let map: Arc<MapWrapper<u32, u32>> = Arc::new(MapWrapper::builder().auditor(auditor).build().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let m = Arc::clone(&map);
    std::thread::spawn(move || {
        let _ = tx.send(m.insert(1, 1));
    });
    // Generous bound: the waiter is woken by the failure, not by a timeout of ours.
    let r = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the waiting insert returned");
    let e = r.unwrap_err();
    // The insert was applied before its record's durability wait failed: it says so, and is
    // not retryable.
    assert_eq!(e.code(), "APPLIED_NOT_DURABLE");
    assert!(e.applied() && !e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("panicked"), "{e}");
    assert_eq!(map.get_cloned(&1).unwrap(), Some(1), "applied means in the map");
    let health = sink.health().unwrap_err();
    assert!(health.to_string().contains("segment writer bug"), "{health}");
    // Fail-closed: later mutations are refused before they change anything.
    assert_eq!(map.insert(2, 2).unwrap_err().code(), "AUDIT_UNAVAILABLE");
    assert_eq!(map.get_cloned(&2).unwrap(), None);
}

#[test]
fn open_refuses_a_queue_of_zero_and_a_segment_too_small_for_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let e = JsonLinesSink::open(dir.path(), JsonLinesOptions { max_queue_bytes: 0, ..Default::default() })
        .unwrap_err();
    assert!(e.to_string().contains("max_queue_bytes"), "{e}");
    let tiny = JsonLinesOptions { max_segment_bytes: 100, ..Default::default() };
    let e = JsonLinesSink::open(dir.path(), tiny).unwrap_err();
    assert!(e.to_string().contains("max_segment_bytes"), "{e}");
    assert!(map_wrapper::audit::list_segments(dir.path()).unwrap_or_default().is_empty(), "nothing written");
    // The smallest accepted settings work.
    let opts = JsonLinesOptions {
        max_queue_bytes: 1,
        max_segment_bytes: map_wrapper::audit::MIN_SEGMENT_BYTES,
        ..Default::default()
    };
    let sink = JsonLinesSink::open(dir.path(), opts).unwrap();
    let map: MapWrapper<u32, u32> = MapWrapper::builder().auditor(Auditor::new(sink)).build().unwrap();
    for i in 0..50 {
        map.insert(i, i).unwrap();
    }
    drop(map);
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_eq!((report.verdict, report.records), (verify::Verdict::Intact, 52), "{}", report.human());
}

/// Counts the bytes appended to the current segment file and how many of them the last
/// successful sync covered.
struct SyncTracking {
    file: File,
    path_len: Arc<std::sync::atomic::AtomicU64>,
    synced_len: Arc<std::sync::atomic::AtomicU64>,
}

impl SegmentWriter for SyncTracking {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.path_len.fetch_add(buf.len() as u64, Ordering::SeqCst);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let len = self.path_len.load(Ordering::SeqCst);
        self.file.sync_data()?;
        self.synced_len.store(len, Ordering::SeqCst);
        Ok(())
    }
}

/// SIGKILL keeps the page cache, so the crash test cannot tell `Synced` from `Flushed`: here
/// the segment writer records how far each successful fsync reached, and every `Synced`
/// insert, when it returns, must have its record within that synced prefix.
#[test]
fn a_synced_insert_returns_only_after_an_fsync_covering_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let synced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (w, s) = (Arc::clone(&written), Arc::clone(&synced));
    let opts = JsonLinesOptions {
        writer_hook: Some(Arc::new(move |file| {
            // One segment in this test: the counters describe segment 1.
            Box::new(SyncTracking { file, path_len: Arc::clone(&w), synced_len: Arc::clone(&s) })
        })),
        ..Default::default()
    };
    let sink = JsonLinesSink::open(dir.path(), opts).unwrap();
    let auditor = Auditor::new(sink).durability(Durability::Synced);
    let map: Arc<MapWrapper<u32, u32>> = Arc::new(MapWrapper::builder().auditor(auditor).build().unwrap());
    let seg = dir.path().join("segment-000001.jsonl");
    let workers: Vec<_> = (0..4u32)
        .map(|t| {
            let (map, seg, synced) = (Arc::clone(&map), seg.clone(), Arc::clone(&synced));
            std::thread::spawn(move || {
                for i in 0..50 {
                    let k = t * 1000 + i;
                    map.insert(k, k).unwrap();
                    let covered = synced.load(Ordering::SeqCst) as usize;
                    let bytes = std::fs::read(&seg).unwrap();
                    let prefix = String::from_utf8_lossy(&bytes[..covered.min(bytes.len())]).into_owned();
                    assert!(
                        prefix.contains(&format!("\"key\":{{\"full\":{k}}}")),
                        "insert of {k} returned before an fsync covered its record"
                    );
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    assert!(written.load(Ordering::SeqCst) > 0);
}

#[test]
fn an_error_about_a_file_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    // The trail's directory is a regular file: creating it fails with "File exists".
    let not_a_dir = dir.path().join("trail");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let e = JsonLinesSink::open(&not_a_dir, JsonLinesOptions::default()).unwrap_err().to_string();
    assert!(e.contains(&not_a_dir.display().to_string()), "names the path: {e}");
    assert!(e.starts_with("cannot create the audit directory"), "{e}");
}
