//! Audited insert/remove throughput of `MapWrapper` for each durability, at 1, 2, 16 and 64
//! threads, side by side with what a user would otherwise do: a `DashMap` plus one `tracing`
//! JSON event per write into a `tracing-appender` non-blocking file. Printed as ratios, in one
//! run. For `Synced` also the records per fsync and the fsync limit (threads ÷ the fdatasync
//! time measured in the same run); and `verify` records/s.
//!
//! First a table by records written (issue 17: fixed 1 Mi random operations, `AUDIT_BENCH_RECORDS_THREADS`,
//! default 1,2,64; `AUDIT_BENCH_PART=records` or `cells` runs one table only).
//!
//! `AUDIT_BENCH_PART=checkpoints` runs only the table of signed checkpoints on versus off.
//!
//! `cargo bench --bench audit` (each cell runs `AUDIT_BENCH_MS` milliseconds, default 500;
//! `AUDIT_BENCH_THREADS=1,64` picks thread counts; `AUDIT_BENCH_DIR` where files go).
//! Not a test: it asserts nothing about speed.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use map_wrapper::audit::{verify, AuditSink, Auditor, Durability, JsonLinesOptions, JsonLinesSink};
use map_wrapper::{MapWrapper, OpContext};

const THREADS: [usize; 4] = [1, 2, 16, 64];

fn cell() -> Duration {
    let ms = std::env::var("AUDIT_BENCH_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    Duration::from_millis(ms)
}

/// CPU time (user + system) the whole process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of the last `run`, per operation, in ns (a figure that load on a shared machine
/// disturbs less than wall-clock throughput).
static CPU_NS_PER_OP: AtomicU64 = AtomicU64::new(0);

/// Runs `op(thread, i)` on `threads` threads for about `dur` (each thread with the guard
/// `setup` returns); returns (operations, elapsed).
fn run<G>(
    threads: usize,
    dur: Duration,
    setup: impl Fn() -> G + Send + Sync + 'static,
    op: impl Fn(u64, u64) + Send + Sync + 'static,
) -> (u64, Duration) {
    let (setup, op) = (Arc::new(setup), Arc::new(op));
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (setup, op, stop, total, barrier) =
                (setup.clone(), op.clone(), stop.clone(), total.clone(), barrier.clone());
            std::thread::spawn(move || {
                let _guard = setup();
                barrier.wait();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..16 {
                        op(t as u64, i);
                        i += 1;
                    }
                }
                total.fetch_add(i, Ordering::Relaxed);
            })
        })
        .collect();
    barrier.wait();
    let (start, cpu) = (Instant::now(), cpu_time());
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let ops = total.load(Ordering::Relaxed);
    CPU_NS_PER_OP.store((cpu_time() - cpu).as_nanos() as u64 / ops.max(1), Ordering::Relaxed);
    (ops, start.elapsed())
}

/// Even `i`: insert; odd `i`: remove the same key.
fn key(t: u64, i: u64) -> u64 {
    (t << 40) | (i / 2)
}

struct Alt {
    per_sec: f64,
    lost_pct: f64,
    cpu_ns: u64,
}

fn tracing_alternative(threads: usize, dir: &Path) -> Alt {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("tracing.jsonl");
    let (writer, guard) = tracing_appender::non_blocking(File::create(&path).unwrap());
    let dispatch = tracing::Dispatch::new(tracing_subscriber::fmt().json().with_writer(writer).finish());
    let map: Arc<DashMap<u64, u64>> = Arc::new(DashMap::new());
    let (ops, elapsed) = run(
        threads,
        cell(),
        move || tracing::dispatcher::set_default(&dispatch),
        move |t, i| {
            let k = key(t, i);
            if i % 2 == 0 {
                let old = map.insert(k, i);
                tracing::info!(target: "audit", op = "insert", key = k, old = ?old, new = i, actor = "bench");
            } else {
                let old = map.remove(&k);
                tracing::info!(target: "audit", op = "remove", key = k, old = ?old.map(|p| p.1), actor = "bench");
            }
        },
    );
    let cpu_ns = CPU_NS_PER_OP.load(Ordering::Relaxed);
    drop(guard); // flushes what the appender still holds
    let lines = BufReader::new(File::open(&path).unwrap()).lines().count() as u64;
    Alt {
        per_sec: ops as f64 / elapsed.as_secs_f64(),
        lost_pct: 100.0 * (ops - lines.min(ops)) as f64 / ops as f64,
        cpu_ns,
    }
}

struct Audited {
    per_sec: f64,
    /// CPU ns per op, the writer thread's share included (the `run` ends before `close`).
    cpu_ns: u64,
    lost: i64,
    records_per_sync: f64,
    verify_per_sec: f64,
}

fn audited(threads: usize, durability: Durability, dir: &Path, check: bool) -> Audited {
    audited_with(threads, durability, dir, check, JsonLinesOptions::default())
}

fn audited_with(
    threads: usize,
    durability: Durability,
    dir: &Path,
    check: bool,
    opts: JsonLinesOptions,
) -> Audited {
    let sink = Arc::new(JsonLinesSink::open(dir, opts).unwrap());
    let auditor = Auditor::from_arc(sink.clone() as Arc<dyn AuditSink>).durability(durability);
    let map: Arc<MapWrapper<u64, u64>> = Arc::new(
        MapWrapper::builder()
            .name("bench")
            .timeout(Duration::from_secs(30))
            .auditor(auditor)
            .build()
            .unwrap(),
    );
    let m = Arc::clone(&map);
    let (ops, elapsed) = run(
        threads,
        cell(),
        || (),
        move |t, i| {
            let k = key(t, i);
            if i % 2 == 0 {
                m.insert(k, i).unwrap();
            } else {
                m.remove(&k).unwrap();
            }
        },
    );
    let cpu_ns = CPU_NS_PER_OP.load(Ordering::Relaxed);
    drop(map);
    sink.close().unwrap();
    let stats = sink.stats();
    // The writer counts audit_stop (audit_start is written by open) besides the operations.
    let lost = ops as i64 + 1 - stats.records as i64;
    let mut verify_per_sec = 0.0;
    if check {
        let start = Instant::now();
        let report = verify::verify_paths(&[dir.to_path_buf()], &Default::default()).unwrap();
        verify_per_sec = report.records as f64 / start.elapsed().as_secs_f64();
        assert_eq!(report.verdict, verify::Verdict::Intact);
    }
    Audited {
        per_sec: ops as f64 / elapsed.as_secs_f64(),
        cpu_ns,
        lost,
        records_per_sync: stats.records as f64 / stats.syncs.max(1) as f64,
        verify_per_sec,
    }
}

/// The workload of issue 17 ("by records"): `RECORDS_OPS` operations in all, 50/50 insert and
/// remove of random keys in a 2^20 key space filled half, an actor and a trace id per
/// operation. Returns records (or events) written per second.
/// `AUDIT_BENCH_RECORDS_OPS` overrides it (a loaded machine).
static RECORDS_OPS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    std::env::var("AUDIT_BENCH_RECORDS_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(1 << 20)
});
const KEY_SPACE: u64 = 1 << 20;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Runs `op(thread, key, insert?)` for `RECORDS_OPS / threads` random operations per thread;
/// returns the elapsed time (and leaves the process CPU time it took in `RUN_CPU_NS`).
fn run_fixed(threads: usize, ops: u64, op: impl Fn(usize, u64, bool) + Send + Sync + 'static) -> Duration {
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let per = ops / threads as u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1).wrapping_mul(0xff51afd7ed558ccd);
                barrier.wait();
                for _ in 0..per {
                    let r = xorshift(&mut s);
                    op(t, r % KEY_SPACE, r >> 63 == 0);
                }
            })
        })
        .collect();
    barrier.wait();
    let (start, cpu) = (Instant::now(), cpu_time());
    for h in handles {
        h.join().unwrap();
    }
    RUN_CPU_NS.store((cpu_time() - cpu).as_nanos() as u64, Ordering::Relaxed);
    start.elapsed()
}

/// CPU time of the last `run_fixed` (all threads, the writer's included), in ns.
static RUN_CPU_NS: AtomicU64 = AtomicU64::new(0);

/// Records (or events) per second, and CPU ns per record.
#[derive(Clone, Copy, Default)]
struct Rate {
    per_sec: f64,
    cpu_ns: f64,
}

impl Rate {
    fn of(records: u64, elapsed: Duration) -> Rate {
        Rate {
            per_sec: records as f64 / elapsed.as_secs_f64(),
            cpu_ns: RUN_CPU_NS.load(Ordering::Relaxed) as f64 / records.max(1) as f64,
        }
    }
}

/// Whether the records table runs column `name` (`AUDIT_BENCH_RECORDS_ONLY=default`, say,
/// for a profile of one column).
fn column(name: &str) -> bool {
    std::env::var("AUDIT_BENCH_RECORDS_ONLY").map_or(true, |only| only == name)
}

fn tracing_records(threads: usize, dir: &Path) -> Rate {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("tracing.jsonl");
    let (writer, guard) = tracing_appender::non_blocking(File::create(&path).unwrap());
    let dispatch = tracing::Dispatch::new(tracing_subscriber::fmt().json().with_writer(writer).finish());
    let map: Arc<DashMap<u64, u64>> = Arc::new(DashMap::new());
    for k in (0..KEY_SPACE).step_by(2) {
        map.insert(k, k);
    }
    let actors: Arc<Vec<String>> = Arc::new((0..threads).map(|t| format!("user-{t}")).collect());
    let d = dispatch.clone();
    let elapsed = run_fixed(threads, *RECORDS_OPS, move |t, k, insert| {
        tracing::dispatcher::with_default(&d, || {
            let trace = format!("{t:08x}{k:016x}");
            if insert {
                let old = map.insert(k, k);
                tracing::info!(target: "audit", op = "insert", key = k, old = ?old, new = k, actor = %actors[t], trace_id = %trace);
            } else {
                let old = map.remove(&k);
                tracing::info!(target: "audit", op = "remove", key = k, old = ?old.map(|p| p.1), actor = %actors[t], trace_id = %trace);
            }
        })
    });
    drop(guard);
    let lines = BufReader::new(File::open(&path).unwrap()).lines().count() as u64;
    Rate::of(lines, elapsed)
}

fn audited_records(threads: usize, durability: Option<Durability>, dir: &Path) -> Rate {
    let sink = Arc::new(JsonLinesSink::open(dir, JsonLinesOptions::default()).unwrap());
    let mut auditor = Auditor::from_arc(sink.clone() as Arc<dyn AuditSink>);
    if let Some(d) = durability {
        auditor = auditor.durability(d);
    }
    let map: Arc<MapWrapper<u64, u64>> = Arc::new(
        MapWrapper::builder()
            .name("bench")
            .timeout(Duration::from_secs(30))
            .auditor(auditor)
            .build()
            .unwrap(),
    );
    map.extend((0..KEY_SPACE).step_by(2).map(|k| (k, k))).unwrap();
    let before = sink.stats().records;
    let ctxs: Arc<Vec<OpContext>> =
        Arc::new((0..threads).map(|t| OpContext::new().actor(format!("user-{t}"))).collect());
    let m = Arc::clone(&map);
    // Synced waits for a disk flush per group: fewer operations (2,000 per thread).
    let ops = if durability == Some(Durability::Synced) {
        (2000 * threads as u64).min(*RECORDS_OPS)
    } else {
        *RECORDS_OPS
    };
    let elapsed = run_fixed(threads, ops, move |t, k, insert| {
        let ctx = ctxs[t].clone().trace_id(format!("{t:08x}{k:016x}"));
        if insert {
            m.with(&ctx).insert(k, k).unwrap();
        } else {
            m.with(&ctx).remove(&k).unwrap();
        }
    });
    let records = sink.stats().records - before;
    drop(map);
    sink.close().unwrap();
    Rate::of(records, elapsed)
}

/// Median time of `write` + `fdatasync` of one small record (median: the disk is shared).
fn fdatasync_time(dir: &Path) -> Duration {
    let mut f = File::create(dir.join("fsync-probe")).unwrap();
    let mut times: Vec<Duration> = (0..101)
        .map(|_| {
            let start = Instant::now();
            f.write_all(&[b'x'; 200]).unwrap();
            f.sync_data().unwrap();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn records_table(base: &Path, threads_list: &[usize]) {
    println!(
        "by records: {} ops, 50/50 insert/remove, 2^20 keys half full, actor + trace id per op",
        *RECORDS_OPS
    );
    println!("(rec/s, the ratio to tracing events/s, and CPU ns per record of the whole process)");
    println!(
        "{:>7} | {:>20} | {:>28} | {:>28} | {:>28}",
        "threads", "tracing ev/s", "Buffered rec/s", "default (Flushed) rec/s", "Synced rec/s"
    );
    for &threads in threads_list {
        let fresh = || tempfile::tempdir_in(base).unwrap();
        let run = |name: &str, f: &dyn Fn() -> Rate| if column(name) { f() } else { Rate::default() };
        let t = run("tracing", &|| tracing_records(threads, fresh().path()));
        let b = run("buffered", &|| audited_records(threads, Some(Durability::Buffered), fresh().path()));
        let d = run("default", &|| audited_records(threads, None, fresh().path()));
        let fsync = fdatasync_time(fresh().path());
        let s = run("synced", &|| audited_records(threads, Some(Durability::Synced), fresh().path()));
        let cell = |r: Rate| {
            format!("{:>7.3} M/s {:>5.2}x {:>5.0} ns", r.per_sec / 1e6, r.per_sec / t.per_sec, r.cpu_ns)
        };
        println!(
            "{threads:>7} | {:>7.3} M/s {:>6.0} ns | {} | {} | {}",
            t.per_sec / 1e6,
            t.cpu_ns,
            cell(b),
            cell(d),
            cell(s)
        );
        println!(
            "{:>7} | default/Buffered: {:.2}x time, {:.2}x CPU per record; Synced {:.2}x of threads/fsync ({:.3} ms)",
            "",
            b.per_sec / d.per_sec,
            d.cpu_ns / b.cpu_ns,
            s.per_sec / (threads as f64 / fsync.as_secs_f64()),
            fsync.as_secs_f64() * 1e3
        );
    }
}

/// Signed checkpoints (issue 14) on versus off, side by side: `Buffered` and `Flushed`
/// throughput with the default policy (every 1000 records or 1 s, heartbeat 60 s) and the
/// trail's own `checkpoints.notes` plus a `FileAnchor`; `verify` of the same trail with its
/// checkpoints checked versus without. Each pair runs alternately `AUDIT_BENCH_REPEAT` times
/// (default 3); medians are printed.
fn checkpoints_table(base: &Path) {
    use map_wrapper::audit::anchor::{FileAnchor, APPEND_FILE};
    use map_wrapper::audit::checkpoint::{CheckpointCheckOptions, CheckpointOptions};
    use map_wrapper::audit::note::NoteSigner;
    let repeat: usize = std::env::var("AUDIT_BENCH_REPEAT").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let signer = NoteSigner::from_seed("bench.example/audit", [7; 32]).unwrap();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("checkpoints on vs off (default policy; median of {repeat} alternate runs each)");
    println!("{:>7} | {:>10} | {:>22} | {:>22} | {:>10}", "threads", "durability", "off", "on", "on/off");
    let threads_list: Vec<usize> = std::env::var("AUDIT_BENCH_THREADS")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 16]);
    for &threads in &threads_list {
        for durability in [Durability::Buffered, Durability::Flushed] {
            let (mut off, mut on) = (Vec::new(), Vec::new());
            for _ in 0..repeat {
                let d = tempfile::tempdir_in(base).unwrap();
                off.push(
                    audited_with(threads, durability, d.path(), false, JsonLinesOptions::default()).per_sec,
                );
                let d = tempfile::tempdir_in(base).unwrap();
                let a = tempfile::tempdir_in(base).unwrap();
                let cp = CheckpointOptions::new("bench.example/audit", signer.clone())
                    .anchor(FileAnchor::new(a.path().join("latest.note")));
                let opts = JsonLinesOptions { checkpoints: Some(cp), ..Default::default() };
                on.push(audited_with(threads, durability, d.path(), false, opts).per_sec);
            }
            let (off, on) = (median(off), median(on));
            println!(
                "{threads:>7} | {:>10} | {:>16.3} M op/s | {:>16.3} M op/s | {:>9.3}x",
                format!("{durability:?}"),
                off / 1e6,
                on / 1e6,
                on / off
            );
        }
    }
    // verify of one trail written with checkpoints: chain only, versus chain + checkpoints.
    let d = tempfile::tempdir_in(base).unwrap();
    let cp = CheckpointOptions::new("bench.example/audit", signer.clone());
    let opts = JsonLinesOptions { checkpoints: Some(cp), ..Default::default() };
    audited_with(2, Durability::Buffered, d.path(), false, opts);
    let paths = [d.path().to_path_buf()];
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    let mut records = 0;
    for _ in 0..repeat.max(3) {
        let start = Instant::now();
        let r = verify::verify_paths(&paths, &Default::default()).unwrap();
        plain.push(r.records as f64 / start.elapsed().as_secs_f64());
        records = r.records;
        let o = CheckpointCheckOptions {
            trusted: vec![signer.verifier()],
            trail_notes: vec![d.path().join(APPEND_FILE)],
            ..Default::default()
        };
        let opts = verify::VerifyOptions { checkpoints: Some(o), ..Default::default() };
        let start = Instant::now();
        let r = verify::verify_paths(&paths, &opts).unwrap();
        with.push(r.records as f64 / start.elapsed().as_secs_f64());
        let found = r.checkpoints.unwrap();
        assert!(found.tampered.is_none() && found.checked > 0, "{found:?}");
    }
    let (plain, with) = (median(plain), median(with));
    println!(
        "verify ({records} records): {:.2} M rec/s without checkpoints, {:.2} M rec/s with: {:.3}x",
        plain / 1e6,
        with / 1e6,
        with / plain
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; this one has nothing to list
    }
    let base = tempfile::tempdir_in(std::env::var("AUDIT_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    if std::env::var("AUDIT_BENCH_PART").as_deref() == Ok("checkpoints") {
        checkpoints_table(base.path());
        return;
    }
    if std::env::var("AUDIT_BENCH_PART").as_deref() != Ok("cells") {
        let threads: Vec<usize> = std::env::var("AUDIT_BENCH_RECORDS_THREADS")
            .ok()
            .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 2, 64]);
        records_table(base.path(), &threads);
        if std::env::var("AUDIT_BENCH_PART").as_deref() == Ok("records") {
            return;
        }
    }
    println!("fdatasync: median of 101 appends of 200 bytes, measured before each Synced cell");
    println!(
        "{:>7} | {:>18} | {:>18} | {:>18} | {:>34}",
        "threads", "dashmap+tracing", "Buffered", "Flushed", "Synced"
    );
    let mut buffered = Vec::new();
    let mut verify_rate = 0.0;
    let threads_list: Vec<usize> = std::env::var("AUDIT_BENCH_THREADS")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| THREADS.to_vec());
    for &threads in &threads_list {
        // Each cell in a fresh directory, removed (and the disk synced) before the next, so
        // that one cell's dirty pages do not slow the next cell's fsyncs.
        let fresh = || {
            let _ = std::process::Command::new("sync").status();
            tempfile::tempdir_in(base.path()).unwrap()
        };
        let alt = tracing_alternative(threads, fresh().path());
        let b = audited(threads, Durability::Buffered, fresh().path(), threads == 2);
        if threads == 2 {
            verify_rate = b.verify_per_sec;
        }
        let f = audited(threads, Durability::Flushed, fresh().path(), false);
        let fsync = fdatasync_time(fresh().path());
        let s = audited(threads, Durability::Synced, fresh().path(), false);
        let limit = threads as f64 / fsync.as_secs_f64();
        println!(
            "{threads:>7} | {:>6.3} M/s lost {:>4.1}% | {:>6.3} M/s {:>5.2}x | {:>6.3} M/s {:>5.2}x | {:>7.0}/s {:>5.1} rec/fsync {:>4.2}x limit (fsync {:.2} ms)",
            alt.per_sec / 1e6,
            alt.lost_pct,
            b.per_sec / 1e6,
            b.per_sec / alt.per_sec,
            f.per_sec / 1e6,
            f.per_sec / alt.per_sec,
            s.per_sec,
            s.records_per_sync,
            s.per_sec / limit,
            fsync.as_secs_f64() * 1e3,
        );
        println!(
            "{:>7} | CPU/op {:>6} ns      | {:>6} ns {:>5.2}x   | {:>6} ns            | {:>6} ns",
            "",
            alt.cpu_ns,
            b.cpu_ns,
            alt.cpu_ns as f64 / b.cpu_ns.max(1) as f64,
            f.cpu_ns,
            s.cpu_ns
        );
        assert_eq!((b.lost, f.lost, s.lost), (0, 0, 0), "an audited map lost records");
        buffered.push(b.per_sec);
    }
    if buffered.len() == THREADS.len() {
        println!("Buffered at 64 threads / at 2 threads: {:.2}x", buffered[3] / buffered[1]);
    }
    println!("verify: {:.2} M records/s", verify_rate / 1e6);
}
