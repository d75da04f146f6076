//! `verify` throughput against the hashing bound of the same bytes, measured in one run.
//!
//! Builds trails with `JsonLinesSink` (through `MapWrapper` inserts): SHA-256 in 64 MiB
//! segments, the same with HMAC-SHA256, and SHA-256 in 64 KiB segments (thousands of files).
//! Then, page cache warm, prints for each: records/s of `verify_paths` (best of
//! `VERIFY_BENCH_RUNS`, wall clock and CPU time), and as ratios: `verify` against
//! SHA-256 of the same file bytes in one stream (the sha2 crate, same process), against the
//! per-line hashing alone (the same hashed bytes as the verifier, no parsing), against
//! `openssl dgst -sha256` of the same files; HMAC against SHA-256; small segments against
//! large, per record; `verify` against `openssl speed -evp sha256` (16 KiB blocks, CPU time)
//! for the same bytes. The first trail is written with signed checkpoints: `verify` with its
//! checkpoints checked (which rebuilds the Merkle tree of its records) against `verify`
//! without, alternately, wall clock (the goal) and CPU time. Peak RSS of a verification is
//! measured in a child process (this process also built the trails).
//!
//! `cargo bench --bench verify` (`VERIFY_BENCH_RECORDS`, default 1 500 000;
//! `VERIFY_BENCH_DIR`, where the trails go; `VERIFY_BENCH_RUNS`, default 3;
//! `VERIFY_BENCH_KEEP=1` keeps the trails, to time another verifier on them).
//! Not a test: it asserts nothing about speed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use map_wrapper::audit::anchor::APPEND_FILE;
use map_wrapper::audit::checkpoint::{CheckpointCheckOptions, CheckpointOptions};
use map_wrapper::audit::note::NoteSigner;
use map_wrapper::audit::{verify, Auditor, ChainKey, JsonLinesOptions, JsonLinesSink};

/// The domain string every hashed line starts with (`docs/AUDIT_FORMAT.md`, "Hashing").
const DOMAIN: &[u8] = b"map-wrapper/audit/v1\n";
use map_wrapper::MapWrapper;
use sha2::{Digest, Sha256};

const KEY: &[u8] = b"an audit key of thirty-two bytes";

/// CPU time (user + system) of this process so far.
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

/// Peak resident set of this process image, in KiB: `VmHWM` (getrusage's `ru_maxrss` would
/// include the parent's peak: it survives `execve` after a `vfork`).
fn max_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed("bench.example/verify", [7; 32]).unwrap()
}

/// Verification of the trail in `dir` with its checkpoints (its `checkpoints.notes`) checked.
fn with_checkpoints(dir: &Path) -> verify::VerifyOptions {
    let o = CheckpointCheckOptions {
        trusted: vec![signer().verifier()],
        trail_notes: vec![dir.join(APPEND_FILE)],
        ..Default::default()
    };
    verify::VerifyOptions { checkpoints: Some(o), ..Default::default() }
}

/// `openssl speed -evp sha256` on 16 KiB blocks: bytes per second of CPU time.
fn openssl_speed() -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-evp", "sha256", "-bytes", "16384", "-seconds", "1", "-mr"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("+F:")).and_then(|f| f.rsplit(':').next()?.trim().parse().ok())
}

fn build(dir: &Path, key: ChainKey, max_segment_bytes: u64, records: u64, checkpoints: bool) {
    let checkpoints = checkpoints.then(|| CheckpointOptions::new("bench.example/verify", signer()));
    let opts = JsonLinesOptions { chain_key: key, max_segment_bytes, checkpoints, ..Default::default() };
    let sink = JsonLinesSink::open(dir, opts).unwrap();
    let map: MapWrapper<u64, String> =
        MapWrapper::builder().name("accounts").auditor(Auditor::new(sink)).build().unwrap();
    for i in 0..records {
        map.insert(i % 100_000, format!("balance-{i}")).unwrap();
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    map_wrapper::audit::list_segments(dir).unwrap().into_iter().map(|(_, p)| p).collect()
}

/// Best (wall, cpu) of `runs` runs of `f`.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut out = None;
    let (mut wall, mut cpu) = (Duration::MAX, Duration::MAX);
    for _ in 0..runs {
        let (c0, t0) = (cpu_time(), Instant::now());
        let r = f();
        wall = wall.min(t0.elapsed());
        cpu = cpu.min(cpu_time() - c0);
        out = Some(r);
    }
    (wall, cpu, out.unwrap())
}

/// SHA-256 of every file's bytes, one stream per file, through one reused buffer.
fn stream_hash(files: &[PathBuf]) -> u8 {
    let mut buf = vec![0u8; 1 << 20];
    let mut x = 0;
    for f in files {
        let mut file = std::fs::File::open(f).unwrap();
        let mut h = Sha256::new();
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        x ^= h.finalize()[0];
    }
    x
}

/// The verifier's hashing alone: per line, SHA-256 of the domain, the previous hash, `\n`
/// and the body, with no parsing and no comparison.
fn per_line_hash(files: &[PathBuf]) -> u8 {
    let mut x = 0;
    let mut prev = [b'0'; 64];
    let mut bytes = Vec::new();
    for f in files {
        bytes.clear();
        std::fs::File::open(f).unwrap().read_to_end(&mut bytes).unwrap();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &bytes) {
            let line = &bytes[start..end];
            start = end + 1;
            let mut h = Sha256::new();
            h.update(DOMAIN);
            h.update(prev);
            h.update(b"\n");
            h.update(&line[..line.len() - 75]);
            h.update(b"}");
            let d = h.finalize();
            prev[..32].copy_from_slice(&d);
            x ^= d[0];
        }
    }
    x
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--verify-child") {
        // Child mode: one verification, then its peak RSS.
        let dir = PathBuf::from(&args[i + 1]);
        let opts = if args.iter().any(|a| a == "--checkpoints") {
            with_checkpoints(&dir)
        } else {
            verify::VerifyOptions::default()
        };
        let r = verify::verify_paths(&[dir], &opts).unwrap();
        assert_eq!(r.verdict, verify::Verdict::Intact, "{}", r.human());
        println!("{}", max_rss_kib());
        return;
    }
    let records: u64 =
        std::env::var("VERIFY_BENCH_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_500_000);
    let runs: usize = std::env::var("VERIFY_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let base = match std::env::var_os("VERIFY_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let trails = [
        ("sha256, 64 MiB segments", ChainKey::Sha256, 64 << 20, records),
        (
            "hmac-sha256, 64 MiB segments",
            ChainKey::Hmac { id: "k".into(), key: KEY.to_vec() },
            64 << 20,
            records,
        ),
        ("sha256, 64 KiB segments", ChainKey::Sha256, 64 << 10, records / 3),
    ];
    let t0 = Instant::now();
    let mut dirs = Vec::new();
    for (i, (_, key, seg, n)) in trails.iter().enumerate() {
        let dir = base.path().join(format!("t{i}"));
        build(&dir, key.clone(), *seg, *n, i == 0);
        dirs.push(dir);
    }
    eprintln!("built 3 trails in {:.1} s", t0.elapsed().as_secs_f64());

    let mut per_record = Vec::new();
    println!(
        "{:<32} {:>9} {:>7} {:>8} {:>12} {:>12}",
        "trail", "records", "files", "MB", "rec/s wall", "rec/s cpu"
    );
    for ((name, key, _, _), dir) in trails.iter().zip(&dirs) {
        let fs = files(dir);
        let bytes: u64 = fs.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        stream_hash(&fs); // warm the page cache
        let opts = match key {
            ChainKey::Hmac { key, .. } => {
                verify::VerifyOptions { hmac_key: Some(key.clone()), ..Default::default() }
            }
            ChainKey::Sha256 => verify::VerifyOptions::default(),
        };
        let (wall, cpu, r) = best(runs, || verify::verify_paths(std::slice::from_ref(dir), &opts).unwrap());
        assert_eq!(r.verdict, verify::Verdict::Intact, "{}", r.human());
        let n = r.records as f64;
        println!(
            "{name:<32} {:>9} {:>7} {:>8.0} {:>12.0} {:>12.0}",
            r.records,
            fs.len(),
            bytes as f64 / 1e6,
            n / wall.as_secs_f64(),
            n / cpu.as_secs_f64()
        );
        per_record.push((wall.as_secs_f64() / n, cpu.as_secs_f64() / n));
    }

    // The hashing bounds, on the first trail's files, in this run.
    let fs = files(&dirs[0]);
    let n = trails[0].3 as f64 + 2.0;
    let (stream_wall, stream_cpu, _) = best(runs, || stream_hash(&fs));
    let (line_wall, line_cpu, _) = best(runs, || per_line_hash(&fs));
    let openssl = best(runs, || {
        std::process::Command::new("openssl")
            .arg("dgst")
            .arg("-sha256")
            .args(&fs)
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    // `openssl speed` alternately with `verify` of the first trail (the best of each: the
    // machine is shared, and a figure taken apart from the other may see another load).
    let mut speed: Option<f64> = None;
    let mut v_cpu_best = per_record[0].1;
    for _ in 0..runs {
        let (_, c, _) =
            best(1, || verify::verify_paths(std::slice::from_ref(&dirs[0]), &Default::default()).unwrap());
        v_cpu_best = v_cpu_best.min(c.as_secs_f64() / n);
        if let Some(bps) = openssl_speed() {
            speed = Some(speed.map_or(bps, |s| s.max(bps)));
        }
    }
    let (v_wall, v_cpu) = per_record[0];
    let rate = |d: Duration| n / d.as_secs_f64();
    println!();
    println!("Ratios are of CPU time (this process; wall clock in brackets: the machine is shared).");
    println!(
        "sha2 stream hash of the same bytes: {:.0} rec/s cpu [{:.0} wall]",
        rate(stream_cpu),
        rate(stream_wall)
    );
    println!(
        "per-line hashing alone (the hashed bytes of verify): {:.0} rec/s cpu [{:.0} wall]",
        rate(line_cpu),
        rate(line_wall)
    );
    println!(
        "verify / sha2 stream hash (goal <= 2): {:.2} [{:.2}]",
        v_cpu * n / stream_cpu.as_secs_f64(),
        v_wall * n / stream_wall.as_secs_f64()
    );
    println!(
        "verify / per-line hashing: {:.2} [{:.2}]",
        v_cpu * n / line_cpu.as_secs_f64(),
        v_wall * n / line_wall.as_secs_f64()
    );
    if let (w, _, Some(_)) = openssl {
        println!(
            "openssl dgst -sha256 of the same files (a child: wall only): {:.0} rec/s; verify / openssl, wall: {:.2}",
            rate(w),
            v_wall * n / w.as_secs_f64()
        );
    }
    if let Some(bps) = speed {
        let bytes: u64 = fs.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        let bound = bps / (bytes as f64 / n);
        println!(
            "openssl speed -evp sha256 (16 KiB blocks, cpu) for the same bytes: {bound:.0} rec/s; verify ({:.0} rec/s cpu, run alternately) / that bound (goal <= 2): {:.2}",
            1.0 / v_cpu_best,
            v_cpu_best * bound
        );
    }
    println!(
        "hmac / sha256 verify, per record (goal <= 1.2): {:.2} [{:.2}]",
        per_record[1].1 / v_cpu,
        per_record[1].0 / v_wall
    );
    println!(
        "64 KiB segments / 64 MiB segments, per record (goal <= 1): {:.2} [{:.2}]",
        per_record[2].1 / v_cpu,
        per_record[2].0 / v_wall
    );
    // Checkpoints checked versus not, on the first trail, alternately.
    let plain = verify::VerifyOptions::default();
    let cp = with_checkpoints(&dirs[0]);
    let (mut off, mut on) = ((Duration::MAX, Duration::MAX), (Duration::MAX, Duration::MAX));
    let mut checked = 0;
    for _ in 0..runs {
        let (w, c, _) = best(1, || verify::verify_paths(std::slice::from_ref(&dirs[0]), &plain).unwrap());
        off = (off.0.min(w), off.1.min(c));
        let (w, c, r) = best(1, || verify::verify_paths(std::slice::from_ref(&dirs[0]), &cp).unwrap());
        on = (on.0.min(w), on.1.min(c));
        let found = r.checkpoints.as_ref().expect("checkpoints were checked");
        assert!(r.verdict == verify::Verdict::Intact && found.tampered.is_none(), "{}", r.human());
        checked = found.checked;
    }
    println!(
        "verify with checkpoints ({checked} checked) / without, throughput, wall (goal >= 0.9): {:.2}; cpu: {:.2} ({:.0} vs {:.0} rec/s wall)",
        off.0.as_secs_f64() / on.0.as_secs_f64(),
        off.1.as_secs_f64() / on.1.as_secs_f64(),
        n / on.0.as_secs_f64(),
        n / off.0.as_secs_f64(),
    );
    for (i, what, flag) in [
        (0, "64 MiB segments", None),
        (0, "64 MiB segments, checkpoints checked", Some("--checkpoints")),
        (2, "64 KiB segments", None),
    ] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--verify-child")
            .arg(&dirs[i])
            .args(flag)
            .output()
            .unwrap();
        let kib: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(f64::NAN);
        println!("peak RSS of a verify process ({what}): {:.1} MiB (goal <= 32)", kib / 1024.0);
    }
    if std::env::var_os("VERIFY_BENCH_KEEP").is_some() {
        let _ = base.keep();
    }
}
