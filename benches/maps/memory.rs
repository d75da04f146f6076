//! Resident memory of one map, measured in a fresh process: the bench binary runs itself with
//! `--mem-child TABLE MAP N`, fills the map with N u64 → u64 entries and prints what
//! `/proc/self/status` says before and after.
//!
//! The figures are anonymous memory (`RssAnon`: heap and stacks), not the whole resident set:
//! the file-backed part is the binary's code as it pages in, a fixed cost shared between
//! processes that moved by 65–460 kB between two runs of the same map (up to 0.5 B per entry
//! at 0.9 M entries, more than the differences between the maps).

use std::hint::black_box;
use std::process::Command;

use crate::adapters::BenchMap;
use crate::workload::key_of;

/// What one child measured, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct MemFigures {
    pub entries: u64,
    /// Resident anonymous memory before the map was made.
    pub base: u64,
    /// Resident anonymous memory with the map full.
    pub rss: u64,
    /// The same after the allocator gave free pages back.
    pub rss_trimmed: u64,
    /// The highest resident anonymous memory of the process (reached while the map grew).
    pub peak: u64,
}

impl MemFigures {
    pub fn per_entry(&self, bytes: u64) -> f64 {
        bytes.saturating_sub(self.base) as f64 / self.entries as f64
    }
}

/// A field of `/proc/self/status` in bytes (the file gives kB).
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

/// In the child: make the map, fill it, print the figures on one line for the parent.
pub fn fill_and_report<M: BenchMap>(build: impl FnOnce() -> M, n: u64) {
    let base = status_bytes("RssAnon");
    let map = build();
    for i in 0..n {
        assert!(map.insert(key_of(0, i), i), "key {i} inserted twice");
    }
    let rss = status_bytes("RssAnon");
    // The kernel keeps no high-water mark of anonymous memory alone: the peak of the whole
    // resident set less the file pages resident now (which only grow) is at most the true
    // anonymous peak, and above it by no more than the file pages that came in after it.
    let peak = status_bytes("VmHWM").saturating_sub(status_bytes("RssFile"));
    trim_allocator();
    let rss_trimmed = status_bytes("RssAnon");
    black_box(&map);
    println!("MEM {n} {base} {rss} {rss_trimmed} {peak}");
}

/// In the parent: run a child for `map` of table `table` with `n` entries.
pub fn measure(table: &str, map: &str, n: u64) -> Result<MemFigures, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .args(["--mem-child", table, map, &n.to_string()])
        .output()
        .map_err(|e| format!("spawn memory child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("MEM ")).ok_or_else(|| {
        format!("memory child for {map} gave no figures: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    Ok(MemFigures { entries: f[0], base: f[1], rss: f[2], rss_trimmed: f[3], peak: f[4] })
}
