//! Reliability of the audit path: faults injected at every Nth write or fsync across a range of
//! N (write error, fsync error, disk full, slow disk), panics in user closures, and a fuzz of
//! the verifier. Sizes grow with `MAPWRAPPER_LONG=1`; each test prints a `SUMMARY` line that
//! the long-run script collects.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use map_wrapper::audit::{
    list_segments, verify, AuditRecord, Auditor, ChainKey, Durability, JsonLinesOptions, JsonLinesSink,
    MemorySink, SegmentWriter,
};
use map_wrapper::{MapError, MapWrapper};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use suite::{scale, storm};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The Nth write fails after writing half its bytes.
    WriteError,
    /// The Nth fsync fails (EIO).
    SyncError,
    /// From the Nth write on, every write fails with ENOSPC after writing what fits (nothing).
    DiskFull,
    /// Every write takes a little longer from the Nth on; nothing fails.
    SlowDisk,
}

struct Injector {
    fault: Fault,
    /// The write or sync number (counted from the sink's creation) the fault starts at; armed
    /// after the sink has opened, so that N counts the map's own writes.
    at: AtomicUsize,
    writes: AtomicUsize,
    syncs: AtomicUsize,
}

struct FaultyFile {
    file: File,
    inj: Arc<Injector>,
}

impl SegmentWriter for FaultyFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let n = self.inj.writes.fetch_add(1, Ordering::SeqCst) + 1;
        match self.inj.fault {
            Fault::WriteError if n == self.inj.at.load(Ordering::SeqCst) => {
                self.file.write_all(&buf[..buf.len() / 2])?;
                Err(io::Error::other("injected write failure"))
            }
            Fault::DiskFull if n >= self.inj.at.load(Ordering::SeqCst) => {
                Err(io::Error::from_raw_os_error(28 /* ENOSPC */))
            }
            Fault::SlowDisk if n >= self.inj.at.load(Ordering::SeqCst) => {
                std::thread::sleep(Duration::from_micros(300));
                self.file.write_all(buf)
            }
            _ => self.file.write_all(buf),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        let n = self.inj.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        if self.inj.fault == Fault::SyncError && n == self.inj.at.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.file.sync_data()
    }
}

fn records(dir: &Path) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for (_, path) in list_segments(dir).unwrap() {
        // Newline-terminated lines only: an unterminated last line is a torn tail (counted as
        // lost by the sink) even if its bytes happen to parse.
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')) {
            if let Ok(r) = serde_json::from_str::<AuditRecord>(line) {
                out.push(r);
            }
        }
    }
    out
}

/// What one faulted run saw.
#[derive(Default, Debug)]
struct Tally {
    /// Acknowledged operations without an `ok` record (must stay 0).
    lost: usize,
    /// Runs in which the injected fault made the sink fail.
    faulted: usize,
    acked: usize,
    refused: usize,
    applied_unrecorded: usize,
}

/// One run: 4 threads insert unique keys through a map audited into a faulty sink in
/// `durability`; then the invariants are checked, the sink reopened, service checked, the trail
/// verified.
fn faulted_run(fault: Fault, at: usize, durability: Durability) -> Tally {
    let dir = tempfile::tempdir().unwrap();
    let inj = Arc::new(Injector {
        fault,
        at: AtomicUsize::new(usize::MAX),
        writes: AtomicUsize::new(0),
        syncs: AtomicUsize::new(0),
    });
    let hook_inj = Arc::clone(&inj);
    let opts = JsonLinesOptions {
        writer_hook: Some(Arc::new(move |file| Box::new(FaultyFile { file, inj: Arc::clone(&hook_inj) }))),
        ..Default::default()
    };
    let sink = Arc::new(JsonLinesSink::open(dir.path(), opts).unwrap());
    let base = match fault {
        Fault::SyncError => inj.syncs.load(Ordering::SeqCst),
        _ => inj.writes.load(Ordering::SeqCst),
    };
    inj.at.store(base + at, Ordering::SeqCst);
    let auditor = Auditor::from_arc(sink.clone()).durability(durability);
    let map: Arc<MapWrapper<u64, u64>> =
        Arc::new(MapWrapper::builder().name("faulty").auditor(auditor.clone()).build().unwrap());

    const THREADS: usize = 4;
    const PER_THREAD: u64 = 40;
    let m = Arc::clone(&map);
    // Per thread: (acked keys, refused keys, applied-but-unrecorded keys).
    let outcomes = storm(THREADS, move |t| {
        let (mut acked, mut refused, mut applied) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..PER_THREAD {
            let key = t as u64 * 1_000 + i;
            match m.insert(key, i) {
                Ok(_) => acked.push(key),
                Err(MapError::AuditUnavailable { reason, .. }) if reason.contains("applied") => {
                    applied.push(key)
                }
                Err(e) => {
                    assert_eq!(e.code(), "AUDIT_UNAVAILABLE", "{e}");
                    refused.push(key);
                }
            }
        }
        (acked, refused, applied)
    });

    let mut tally = Tally::default();
    let ok_keys = |dir: &Path| -> HashSet<u64> {
        records(dir)
            .iter()
            .filter(|r| r.outcome == "ok" && r.op == "insert")
            .filter_map(|r| r.key.as_ref().and_then(|k| k["full"].as_u64()))
            .collect()
    };
    let recorded = ok_keys(dir.path());
    let failed = outcomes.iter().any(|(_, r, a)| !r.is_empty() || !a.is_empty());
    for (acked, refused, applied) in &outcomes {
        tally.acked += acked.len();
        tally.refused += refused.len();
        tally.applied_unrecorded += applied.len();
        for k in acked {
            if !recorded.contains(k) {
                eprintln!("{fault:?}@{at}: acknowledged insert {k} has no record");
                tally.lost += 1;
            }
            assert!(map.get_cloned(k).unwrap().is_some());
        }
        for k in refused {
            assert!(!recorded.contains(k), "{fault:?}@{at}: refused insert {k} has an ok record");
            assert_eq!(
                map.get_cloned(k).unwrap(),
                None,
                "{fault:?}@{at}: refused insert {k} changed the map"
            );
        }
    }
    if failed {
        tally.faulted = 1;
        // Read-only until the sink is reopened.
        assert_eq!(map.insert(u64::MAX, 0).unwrap_err().code(), "AUDIT_UNAVAILABLE");
        if fault == Fault::DiskFull {
            // Still full: reopening cannot work until an operator frees space.
            assert!(auditor.reopen().is_err(), "{fault:?}@{at}: reopen on a full disk must fail");
        }
    }
    // The disk is healthy again (space freed, the bad sector behind us). When the run made
    // fewer writes than N, the fault never fired: such runs are not counted as faulted.
    inj.at.store(usize::MAX, Ordering::SeqCst);
    if failed {
        auditor.reopen().unwrap();
    }
    // Service is back (after a reopen if there was a failure).
    map.insert(u64::MAX - 1, 1).unwrap();
    drop(map);
    drop(auditor);
    let _ = sink.close();
    let report = verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).unwrap();
    assert_ne!(report.verdict, verify::Verdict::Tampered, "{fault:?}@{at}: {}", report.human());
    if fault != Fault::DiskFull {
        assert!(
            ok_keys(dir.path()).contains(&(u64::MAX - 1)),
            "{fault:?}@{at}: the op after reopen is recorded"
        );
    }
    tally
}

#[test]
fn faults_at_every_nth_write_lose_no_acknowledged_record() {
    let max_n = scale(12, 120);
    let mut runs = 0;
    let mut total = Tally::default();
    for fault in [Fault::WriteError, Fault::SyncError, Fault::DiskFull, Fault::SlowDisk] {
        for n in (1..=max_n).step_by(if fault == Fault::SlowDisk { 4 } else { 1 }) {
            for durability in [Durability::Flushed, Durability::Synced] {
                let t = faulted_run(fault, n, durability);
                runs += 1;
                total.lost += t.lost;
                total.faulted += t.faulted;
                total.acked += t.acked;
                total.refused += t.refused;
                total.applied_unrecorded += t.applied_unrecorded;
            }
        }
    }
    eprintln!(
        "SUMMARY faults runs={runs} faulted={} acked={} refused={} applied_unrecorded={} records_lost={}",
        total.faulted, total.acked, total.refused, total.applied_unrecorded, total.lost
    );
    assert_eq!(total.lost, 0, "acknowledged operations without their record");
}

// ---------------------------------------------------------------------------------------------
// Panics in user code.
// ---------------------------------------------------------------------------------------------

#[test]
fn panicking_closures_release_the_lock_keep_the_map_consistent_and_are_audited_as_failed() {
    let sink = MemorySink::new();
    let map: MapWrapper<u32, u32> = MapWrapper::builder()
        .shards(1)
        .timeout(Duration::from_millis(200))
        .auditor(Auditor::new(sink.clone()))
        .build()
        .unwrap();
    map.extend((0..10).map(|i| (i, i))).unwrap();
    let before = sink.len();

    let panics = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
    assert!(panics(&|| {
        let _ = map.update(&1, |_| panic!("update bug"));
    }));
    assert!(panics(&|| {
        let _ = map.alter(2, |_| panic!("alter bug"));
    }));
    assert!(panics(&|| {
        let _ = map.retain(|k, _| if *k == 5 { panic!("retain bug") } else { true });
    }));
    assert!(panics(&|| {
        let _ = map.entry(3).and_modify(|_| panic!("entry bug")).or_insert(0);
    }));
    assert!(panics(&|| {
        let _ = map.entry(99).or_insert_with(|| panic!("constructor bug"));
    }));

    // The lock is free (no timeout), the thread holds no shard (no would-deadlock), and the
    // values the panicking closures never changed are intact.
    map.insert(100, 100).unwrap();
    let mut all = map.snapshot().unwrap();
    all.sort_unstable();
    let expected: Vec<(u32, u32)> = (0..10).map(|i| (i, i)).chain([(100, 100)]).collect();
    assert_eq!(all, expected, "no entry lost or half-written");

    let after: Vec<AuditRecord> = sink.records().into_iter().skip(before).collect();
    let failed: Vec<&str> = after.iter().filter(|r| r.outcome != "ok").map(|r| r.op.as_str()).collect();
    for op in ["update", "alter", "retain", "entry"] {
        assert!(failed.contains(&op), "a panicking {op} is in the trail as failed: {failed:?}");
    }
    assert!(
        !after
            .iter()
            .any(|r| r.outcome == "ok" && r.key.as_ref().and_then(|k| k["full"].as_u64()) == Some(99)),
        "no ok record for the insert whose constructor panicked"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input for the verifier.
// ---------------------------------------------------------------------------------------------

const KEY: &[u8] = b"reliability-suite-hmac-key";

/// A real HMAC-chained trail of `n` mutations, as files (name, bytes).
fn hmac_trail(n: u64) -> Vec<(String, Vec<u8>)> {
    hmac_trail_in_segments(n, JsonLinesOptions::default().max_segment_bytes)
}

/// The same, rotating into a new segment every `max_segment_bytes`.
fn hmac_trail_in_segments(n: u64, max_segment_bytes: u64) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let opts = JsonLinesOptions {
        chain_key: ChainKey::Hmac { id: "k1".into(), key: KEY.to_vec() },
        max_segment_bytes,
        ..Default::default()
    };
    let sink = Arc::new(JsonLinesSink::open(dir.path(), opts).unwrap());
    let map: MapWrapper<u64, String> =
        MapWrapper::builder().name("fuzz").auditor(Auditor::from_arc(sink.clone())).build().unwrap();
    for i in 0..n {
        map.insert(i % 7, format!("value-{i}")).unwrap();
        if i % 3 == 0 {
            map.remove(&(i % 5)).unwrap();
        }
    }
    drop(map);
    sink.close().unwrap();
    list_segments(dir.path())
        .unwrap()
        .into_iter()
        .map(|(_, p)| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

/// The verifier's answer with the suite's HMAC key: a report, or an error with a reason.
fn verify_result(files: &[(String, Vec<u8>)]) -> Result<verify::Report, verify::VerifyError> {
    let opts = verify::VerifyOptions { hmac_key: Some(KEY.to_vec()), ..Default::default() };
    verify::verify_bytes(files, &opts)
}

/// The report for a trail that must get a verdict (a real trail, changed or not): an error
/// (exit 3, "could not check") is a failure of the test, not a detection.
fn verify(files: &[(String, Vec<u8>)]) -> verify::Report {
    verify_result(files).unwrap_or_else(|e| panic!("no verdict for a real trail: {e}"))
}

#[derive(Debug, Clone)]
enum Tamper {
    /// Change one byte of one whole line (not the trailing newline) to another value.
    Byte { line: usize, pos: usize, to: u8 },
    /// Remove one line that is not the last.
    Delete { line: usize },
    /// Swap two distinct lines.
    Swap { a: usize, b: usize },
    /// Duplicate one line in place.
    Duplicate { line: usize },
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(line, pos, to)| Tamper::Byte {
            line,
            pos,
            to
        }),
        any::<usize>().prop_map(|line| Tamper::Delete { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Tamper::Swap { a, b }),
        any::<usize>().prop_map(|line| Tamper::Duplicate { line }),
    ]
}

/// Applies `t` to the lines of the (single) segment; `None` when it would change nothing.
fn apply(bytes: &[u8], t: &Tamper) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(bytes).unwrap();
    let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    let n = lines.len();
    match *t {
        Tamper::Byte { line, pos, to } => {
            let l = &mut lines[line % n];
            let p = pos % l.len();
            if l[p] == to {
                return None;
            }
            l[p] = to;
        }
        Tamper::Delete { line } => {
            // Not the last line: removing a trail's last records is truncation, which a hash
            // chain alone cannot tell from a trail that simply ended there.
            lines.remove(line % (n - 1));
        }
        Tamper::Swap { a, b } => {
            let (a, b) = (a % n, b % n);
            if lines[a] == lines[b] {
                return None;
            }
            lines.swap(a, b);
        }
        Tamper::Duplicate { line } => {
            let l = lines[line % n].clone();
            lines.insert(line % n, l);
        }
    }
    let mut out = lines.join(&b'\n');
    out.push(b'\n');
    Some(out)
}

/// Every single-record tampering of a real HMAC trail is detected; garbage never panics.
#[test]
fn the_verifier_catches_every_single_record_tampering_and_never_panics() {
    let cases = scale(3_000, 1_000_000) as u32;
    let trail = hmac_trail(40);
    assert_eq!(trail.len(), 1, "one segment");
    assert_eq!(verify(&trail).verdict, verify::Verdict::Intact);
    let persistence = FileFailurePersistence::Direct("tests/proptest-regressions/reliability_audit.txt");
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(persistence)),
        ..Config::default()
    });
    let (name, bytes) = trail[0].clone();
    let missed = AtomicUsize::new(0);
    runner
        .run(&tamper(), |t| {
            if let Some(changed) = apply(&bytes, &t) {
                let report = verify(&[(name.clone(), changed)]);
                if report.verdict != verify::Verdict::Tampered {
                    missed.fetch_add(1, Ordering::Relaxed);
                }
                // Every tampering leaves complete lines: it is TAMPERED, never a torn tail.
                prop_assert_eq!(
                    report.verdict,
                    verify::Verdict::Tampered,
                    "missed tampering {:?}: {}",
                    t,
                    report.verdict_line()
                );
            }
            Ok(())
        })
        .unwrap();

    // Random bytes, truncations and a huge line: an answer, never a panic.
    let garbage = scale(2_000, 200_000) as u32;
    let mut runner =
        TestRunner::new(Config { cases: garbage, failure_persistence: None, ..Config::default() });
    runner
        .run(&(proptest::collection::vec(any::<u8>(), 0..600), any::<usize>()), |(junk, cut)| {
            let _ = verify_result(&[(name.clone(), junk.clone())]);
            let mut spliced = bytes[..cut % bytes.len()].to_vec();
            spliced.extend_from_slice(&junk);
            let _ = verify_result(&[(name.clone(), spliced)]);
            // A truncation keeps a correct beginning (AUDIT_FORMAT.md §6, "Verdicts"): intact
            // when cut at a line boundary after a record, a torn tail when cut inside a line or
            // right after the header (the writer writes a record after every header), and
            // tampered when not even the header is whole (nothing vouches for the trail).
            let kept = &bytes[..cut % bytes.len()];
            let r = verify(&[(name.clone(), kept.to_vec())]);
            let lines = kept.iter().filter(|&&b| b == b'\n').count();
            let want = if lines == 0 {
                verify::Verdict::Tampered
            } else if kept.ends_with(b"\n") && lines > 1 {
                verify::Verdict::Intact
            } else {
                verify::Verdict::TornTail
            };
            prop_assert_eq!(r.verdict, want, "cut at {}: {}", cut % bytes.len(), r.verdict_line());
            Ok(())
        })
        .unwrap();
    let mut huge = bytes.clone();
    huge.extend(std::iter::repeat_n(b'x', 8 << 20));
    assert_ne!(verify_result(&[(name.clone(), huge)]).unwrap().verdict, verify::Verdict::Intact);

    eprintln!(
        "SUMMARY fuzz tamperings={cases} garbage={} missed={}",
        garbage * 3 + 1,
        missed.load(Ordering::Relaxed)
    );
}

/// Tampering across segments: a single-record change in any segment (headers included), or a
/// whole segment file removed (any but the last: removing the end is truncation), is
/// TAMPERED, never INTACT, TORN_TAIL or an error.
#[test]
fn the_verifier_catches_tampering_in_any_segment_of_a_rotated_trail() {
    let cases = scale(1_000, 200_000) as u32;
    let trail = hmac_trail_in_segments(40, 2048);
    assert!(trail.len() >= 4, "several segments: {}", trail.len());
    assert_eq!(verify(&trail).verdict, verify::Verdict::Intact);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&(any::<usize>(), proptest::option::weighted(0.9, tamper())), |(file, t)| {
            let f = file % trail.len();
            let mut changed = trail.clone();
            match &t {
                Some(t) => match apply(&trail[f].1, t) {
                    Some(bytes) => changed[f].1 = bytes,
                    None => return Ok(()),
                },
                None if f + 1 == trail.len() => return Ok(()),
                None => {
                    changed.remove(f);
                }
            }
            let report = verify(&changed);
            prop_assert_eq!(
                report.verdict,
                verify::Verdict::Tampered,
                "missed {:?} in file {}: {}",
                t,
                f,
                report.verdict_line()
            );
            Ok(())
        })
        .unwrap();
    eprintln!("SUMMARY fuzz-segments rotated_cases={cases} rotated_segments={}", trail.len());
}
