//! The audit queue is bounded in bytes, with back-pressure under the operation's deadline
//! (issue 12, item 4): an operation the sink cannot take by its deadline fails with a timeout
//! having changed nothing; large records do not grow the process without bound; `MemorySink`
//! has a bound and `drain`; the default durability writes a record before its operation
//! returns.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use map_wrapper::audit::{
    verify, AuditSink, Auditor, Durability, JsonLinesOptions, JsonLinesSink, MemorySink, SegmentWriter,
};
use map_wrapper::{MapWrapper, OpContext};

/// A segment file whose writes wait while `hold` is set (a stalled disk), and that counts
/// the bytes written.
struct Stalled {
    file: File,
    hold: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
}

impl SegmentWriter for Stalled {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        // Bounded: the tests release the stall well within this.
        for _ in 0..2000 {
            if !self.hold.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.file.write_all(buf)?;
        self.written.fetch_add(buf.len() as u64, Ordering::SeqCst);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn stalled_sink(
    dir: &std::path::Path,
    max_queue_bytes: usize,
) -> (Arc<JsonLinesSink>, Arc<AtomicBool>, Arc<AtomicU64>) {
    let hold = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let (h, w) = (hold.clone(), written.clone());
    let opts = JsonLinesOptions {
        max_queue_bytes,
        writer_hook: Some(Arc::new(move |file| {
            Box::new(Stalled { file, hold: h.clone(), written: w.clone() }) as Box<dyn SegmentWriter>
        })),
        ..Default::default()
    };
    (Arc::new(JsonLinesSink::open(dir, opts).unwrap()), hold, written)
}

fn intact_records(dir: &std::path::Path) -> u64 {
    let report = verify::verify_paths(&[dir.to_path_buf()], &Default::default()).unwrap();
    assert_eq!(report.verdict, verify::Verdict::Intact, "{}", report.human());
    report.records
}

#[test]
fn an_operation_that_cannot_enqueue_by_its_deadline_times_out_having_changed_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, hold, _) = stalled_sink(dir.path(), 16 << 10);
    let auditor = Auditor::from_arc(sink.clone() as Arc<dyn AuditSink>).durability(Durability::Buffered);
    let map: MapWrapper<u32, String> = MapWrapper::builder().name("q").auditor(auditor).build().unwrap();
    hold.store(true, Ordering::SeqCst);
    let ctx = OpContext::new().timeout(Duration::from_millis(50));
    let value = "x".repeat(1024);
    let mut acked = 0u32;
    let refused = loop {
        assert!(acked < 1000, "16 KiB of 1 KiB records never filled the queue");
        match map.with(&ctx).insert(acked, value.clone()) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(refused.code(), "TIMEOUT", "{refused}");
    assert!(refused.is_retryable());
    // Nothing changed: the refused key is not in the map, and no record names it.
    assert_eq!(map.get_cloned(&acked).unwrap(), None);
    // The queue stayed near its bound: records of 1–2 KiB (value and other fields) fill
    // 16 KiB after 8 to 16 of them, and one admitted operation may go beyond it.
    assert!((8..=17).contains(&acked), "{acked} records of about 1.3 KiB admitted into a 16 KiB queue");
    hold.store(false, Ordering::SeqCst);
    // Room again once the writer drains the queue.
    map.insert(acked, value.clone()).unwrap();
    drop(map);
    sink.close().unwrap();
    // audit_start, the acknowledged inserts and the one after the stall, audit_stop.
    assert_eq!(intact_records(dir.path()), u64::from(acked) + 3);
}

#[test]
fn large_values_keep_the_queue_bounded_in_bytes_behind_a_slow_disk() {
    let dir = tempfile::tempdir().unwrap();
    const BOUND: usize = 1 << 20;
    let (sink, hold, _written) = stalled_sink(dir.path(), BOUND);
    let auditor = Auditor::from_arc(sink.clone() as Arc<dyn AuditSink>).durability(Durability::Buffered);
    let map: Arc<MapWrapper<u64, String>> = Arc::new(
        MapWrapper::builder()
            .name("big")
            .timeout(Duration::from_millis(100))
            .auditor(auditor)
            .build()
            .unwrap(),
    );
    hold.store(true, Ordering::SeqCst);
    let value = Arc::new("v".repeat(32 << 10));
    const THREADS: u64 = 4;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (map, value) = (map.clone(), value.clone());
            std::thread::spawn(move || {
                let (mut ok, mut timeouts) = (0u64, 0u64);
                for i in 0..200u64 {
                    match map.insert(t << 32 | i, (*value).clone()) {
                        Ok(_) => ok += 1,
                        Err(e) if e.code() == "TIMEOUT" => timeouts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (ok, timeouts)
            })
        })
        .collect();
    // While the disk is stalled, the records waiting (queued or in the stalled batch) stay
    // within the bound plus one record per thread.
    let record = 32 << 10;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(10));
        let queued = sink.figures().unwrap().queued as usize;
        assert!(
            queued * record <= BOUND + THREADS as usize * (record + 1024),
            "{queued} records of 32 KiB queued"
        );
    }
    hold.store(false, Ordering::SeqCst);
    let (mut ok, mut timeouts) = (0, 0);
    for h in handles {
        let (o, t) = h.join().unwrap();
        ok += o;
        timeouts += t;
    }
    assert!(timeouts > 0, "the stalled disk never pushed back");
    // Every acknowledged insert is in the map and in the trail; the refused ones are in
    // neither (a refusal while waiting for a shard lock has a record of its own, outcome
    // `timeout`).
    assert_eq!(map.len().unwrap() as u64, ok);
    drop(map);
    sink.close().unwrap();
    let refusals = intact_records(dir.path()) - ok - 2;
    let mut inserted = 0;
    for (_, path) in map_wrapper::audit::list_segments(dir.path()).unwrap() {
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            inserted += u64::from(v["op"] == "insert" && v["outcome"] == "ok");
        }
    }
    assert_eq!(inserted, ok, "{refusals} refusal records besides");
}

#[test]
fn a_bounded_memory_sink_pushes_back_until_drained_and_its_chain_continues() {
    let sink = MemorySink::new().limit(4096);
    let map: MapWrapper<u32, String> = MapWrapper::builder()
        .name("m")
        .timeout(Duration::from_millis(20))
        .auditor(Auditor::new(sink.clone()))
        .build()
        .unwrap();
    let mut acked = 0;
    let refused = loop {
        assert!(acked < 100, "the memory sink never pushed back");
        match map.insert(acked, "y".repeat(200)) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(refused.code(), "TIMEOUT", "{refused}");
    assert_eq!(map.get_cloned(&acked).unwrap(), None, "a refused insert changed nothing");
    let first = sink.drain();
    assert_eq!(first.lines().count(), acked as usize);
    assert!(sink.text().is_empty());
    map.insert(acked, "z".into()).unwrap();
    let second = sink.text();
    // The chain goes on across the drain: the new line links to the last drained one.
    let last: serde_json::Value = serde_json::from_str(first.lines().last().unwrap()).unwrap();
    let next: serde_json::Value = serde_json::from_str(second.lines().next().unwrap()).unwrap();
    assert_eq!(next["prev"], last["hash"]);
    assert_eq!(next["seq"].as_u64(), Some(u64::from(acked) + 1));
}

#[test]
fn the_default_durability_writes_each_record_before_its_operation_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, _hold, written) = stalled_sink(dir.path(), 64 << 20);
    let auditor = Auditor::from_arc(sink.clone() as Arc<dyn AuditSink>);
    assert_eq!(auditor.get_durability(), Durability::Flushed);
    let map: MapWrapper<u32, u32> = MapWrapper::builder().name("d").auditor(auditor).build().unwrap();
    for i in 0..50 {
        let before = written.load(Ordering::SeqCst);
        map.insert(i, i).unwrap();
        // Handed to the OS (a write of at least this record's line) before `insert` returned.
        assert!(written.load(Ordering::SeqCst) > before, "insert {i} returned before its record was written");
    }
}
