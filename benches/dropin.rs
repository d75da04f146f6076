//! Drop-in figures (issue #13), printed side by side in one run:
//!
//! - `scan`: writers' p99 latency while a full scan of 1 M entries runs, over their p99
//!   without a scan: `MapWrapper::iter_by_shard` (one shard held for one copy at a time),
//!   `MapWrapper::iter` (a snapshot taken shard by shard) and dashmap's `iter` (each shard's
//!   read lock held while the caller walks it).
//! - `memory`: resident anonymous memory held after deleting 90 % of 1 M entries, over a fresh
//!   map of the remaining 100 k: without shrinking, after `shrink_to_fit`, with `auto_shrink`.
//!   Each figure is measured in a fresh process (the bench runs itself), after `malloc_trim`.
//!
//! `cargo bench --bench dropin` runs `scan` and `memory`; `cargo bench --bench dropin -- scan`
//! one of them. `DROPIN_SCAN_SECS` sets each scan phase's length (default 2).

use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use map_wrapper::MapWrapper;

const N: u64 = 1_000_000;

/// A full scan of the map (returns a checksum).
type Scan = Arc<dyn Fn() -> u64 + Send + Sync>;
/// One write of a key.
type Write = Arc<dyn Fn(u64) + Send + Sync>;

fn key(i: u64) -> u64 {
    // A bijection on u64 that scatters consecutive integers.
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
}

/// The writers' side of one phase: two threads write random keys until `stop`; latencies in ns.
fn writers(write: Write, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<u32>>> {
    (0..2u64)
        .map(|t| {
            let write = Arc::clone(&write);
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 22);
                let mut x = 0x1234_5678_9abc_def0u64 ^ t;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let t0 = Instant::now();
                    write(key(x % N));
                    lat.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                }
                lat
            })
        })
        .collect()
}

/// (p99, p99.9) in ns.
fn p99(mut all: Vec<u32>) -> (u32, u32) {
    all.sort_unstable();
    let n = all.len();
    let at = |per_mille: usize| all[(n * per_mille / 1000).min(n.saturating_sub(1))];
    (at(990), at(999))
}

/// One phase: writers for `secs`, with `scan` run in a loop on a third thread if given.
/// Returns (writers' p99 ns, p99.9 ns, scans completed).
fn phase(write: Write, scan: Option<Scan>, secs: f64) -> (u32, u32, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let scanner = scan.map(|scan| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut scans = 0;
            while !stop.load(Ordering::Relaxed) {
                black_box(scan());
                scans += 1;
            }
            scans
        })
    });
    let hs = writers(write, &stop);
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<u32> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let scans = scanner.map_or(0, |s| s.join().unwrap());
    let (p, p9) = p99(lat);
    (p, p9, scans)
}

fn row(name: &str, base: (u32, u32), with: (u32, u32), scans: usize) {
    let ratio = |a: u32, b: u32| b as f64 / a.max(1) as f64;
    println!(
        "| {name} | {} ns | {} ns | {:.2}× | {} ns | {} ns | {:.2}× | {scans} |",
        base.0,
        with.0,
        ratio(base.0, with.0),
        base.1,
        with.1,
        ratio(base.1, with.1)
    );
}

fn scan_bench() {
    let secs: f64 = std::env::var("DROPIN_SCAN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    println!("## Full scans of {N} entries while two writers run ({secs} s per phase)\n");
    println!(
        "| map, scan | writers' p99 without scan | with scans | p99 ratio (target < 2) | p99.9 without | with | \
         p99.9 ratio | scans done |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");

    let mw: Arc<MapWrapper<u64, u64>> = Arc::new((0..N).map(|i| (key(i), i)).collect());
    let m = Arc::clone(&mw);
    let write: Write = Arc::new(move |k| {
        m.insert(k, k).expect("insert");
    });
    let cases: Vec<(&str, Scan)> = vec![
        ("MapWrapper, iter_by_shard", {
            let m = Arc::clone(&mw);
            Arc::new(move || m.iter_by_shard().map(|e| e.expect("scan").1).fold(0, u64::wrapping_add))
        }),
        ("MapWrapper, iter (snapshot)", {
            let m = Arc::clone(&mw);
            Arc::new(move || m.iter().expect("scan").map(|e| e.1).fold(0, u64::wrapping_add))
        }),
    ];
    for (name, scan) in cases {
        let (base, base9, _) = phase(Arc::clone(&write), None, secs);
        let (with, with9, scans) = phase(Arc::clone(&write), Some(scan), secs);
        row(name, (base, base9), (with, with9), scans);
    }
    drop(mw);

    let dm: Arc<dashmap::DashMap<u64, u64>> = Arc::new((0..N).map(|i| (key(i), i)).collect());
    let m = Arc::clone(&dm);
    let write: Write = Arc::new(move |k| {
        m.insert(k, k);
    });
    let m = Arc::clone(&dm);
    let scan: Scan = Arc::new(move || m.iter().map(|e| *e.value()).fold(0, u64::wrapping_add));
    let (base, base9, _) = phase(Arc::clone(&write), None, secs);
    let (with, with9, scans) = phase(write, Some(scan), secs);
    row("dashmap, iter", (base, base9), (with, with9), scans);
    println!();
}

fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status (Linux only)"))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_allocator() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it takes no pointer and
    // is safe to call at any time from any thread (glibc documents it MT-Safe).
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_allocator() {}

/// In a child process: builds the case's map, prints the anonymous memory it holds.
fn memory_child(case: &str) {
    let base = status_bytes("RssAnon");
    let keep = N / 10;
    let map: MapWrapper<u64, u64> = match case {
        "fresh" => (0..keep).map(|i| (key(i), i)).collect(),
        "deleted" | "shrink_to_fit" | "auto_shrink" => {
            let map: MapWrapper<u64, u64> =
                MapWrapper::builder().auto_shrink(case == "auto_shrink").build().unwrap();
            for i in 0..N {
                map.insert(key(i), i).unwrap();
            }
            for i in keep..N {
                map.remove(&key(i)).unwrap();
            }
            if case == "shrink_to_fit" {
                map.shrink_to_fit().unwrap();
            }
            map
        }
        other => panic!("unknown memory case {other}"),
    };
    assert_eq!(map.len().unwrap(), keep as usize);
    trim_allocator();
    let held = status_bytes("RssAnon").saturating_sub(base);
    black_box(&map);
    println!("MEM {held}");
}

fn memory_of(case: &str) -> u64 {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe).args(["--mem-child", case]).output().expect("spawn memory child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("MEM "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("memory child {case}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn memory_bench() {
    println!("## Memory after deleting 90 % of {N} entries (RssAnon after malloc_trim, fresh processes)\n");
    let fresh = memory_of("fresh");
    println!("| map | bytes held | ÷ fresh map of {} entries (target ≤ 1.2) |", N / 10);
    println!("|---|---:|---:|");
    println!("| fresh, {} entries | {fresh} | 1.00 |", N / 10);
    for case in ["deleted", "shrink_to_fit", "auto_shrink"] {
        let held = memory_of(case);
        println!("| {case} | {held} | {:.2} |", held as f64 / fresh.max(1) as f64);
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.first().map(String::as_str) {
        Some("--mem-child") => memory_child(&args[1]),
        Some("scan") => scan_bench(),
        Some("memory") => memory_bench(),
        _ => {
            scan_bench();
            memory_bench();
        }
    }
}
