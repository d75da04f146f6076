//! Crash test: a child process mutates an audited map (in the default durability on even
//! repetitions, `Flushed`, which must keep every acknowledged change through a SIGKILL of the
//! process; in `Synced` on odd ones) and reports each
//! acknowledged operation over a pipe; the parent SIGKILLs it mid-stream, then checks that the
//! trail verifies (intact, or only a torn last line) and holds every acknowledged operation,
//! and that reopening the trail repairs a torn tail with a record that says so.
//!
//! A custom harness (`harness = false`): the same binary is the child when
//! `MW_AUDIT_CRASH_CHILD` is set. `MW_AUDIT_CRASH_REPS` sets the repetitions (default 20).

mod common;
use common::records;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use map_wrapper::audit::{verify, Auditor, Durability, JsonLinesOptions, JsonLinesSink};
use map_wrapper::MapWrapper;

const CHILD_ENV: &str = "MW_AUDIT_CRASH_CHILD";
/// Set (to anything) for a child that uses `Synced` instead of the default durability.
const SYNCED_ENV: &str = "MW_AUDIT_CRASH_SYNCED";
const THREADS: usize = 4;

fn child(dir: &Path) {
    // Small segments so that kills also land around rotations.
    let opts = JsonLinesOptions { max_segment_bytes: 16 << 10, ..Default::default() };
    let sink = JsonLinesSink::open(dir, opts).expect("open the trail");
    let auditor = match std::env::var_os(SYNCED_ENV) {
        Some(_) => Auditor::new(sink).durability(Durability::Synced),
        None => Auditor::new(sink), // the default durability
    };
    let map: Arc<MapWrapper<String, u64>> =
        Arc::new(MapWrapper::builder().name("crash").auditor(auditor).build().expect("build"));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (map, out) = (Arc::clone(&map), Arc::clone(&out));
            std::thread::spawn(move || {
                // Bounded: the parent kills the child long before this ends.
                for i in 0..20_000u64 {
                    let key = format!("t{t}-{i}");
                    map.insert(key.clone(), i).expect("insert");
                    let mut out = out.lock().unwrap();
                    writeln!(out, "{key}").and_then(|()| out.flush()).expect("report an ack");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn run_once(rep: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    if rep % 2 == 1 {
        command.env(SYNCED_ENV, "1");
    }
    let mut child = command
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let kill_after = 40 + (rep * 53) % 300;
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut acked = HashSet::new();
    let mut line = String::new();
    while acked.len() < kill_after {
        line.clear();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err(format!("child ended after {} acks", acked.len()));
        }
        acked.insert(line.trim_end().to_string());
    }
    child.kill().map_err(|e| format!("kill: {e}"))?; // SIGKILL
    child.wait().map_err(|e| e.to_string())?;
    // Acks already in the pipe count too (a cut-off last line does not).
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).map_err(|e| e.to_string())?;
    let complete = rest.rsplit_once('\n').map_or("", |(done, _)| done);
    acked.extend(complete.lines().map(str::to_string));

    let report =
        verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).map_err(|e| e.to_string())?;
    if report.verdict == verify::Verdict::Tampered {
        return Err(format!("trail tampered after a crash:\n{}", report.human()));
    }
    let recorded: HashSet<String> = records(dir.path())
        .into_iter()
        .filter(|r| r.op == "insert" && r.outcome == "ok")
        .filter_map(|r| r.key.and_then(|k| k["full"].as_str().map(str::to_string)))
        .collect();
    if let Some(missing) = acked.iter().find(|k| !recorded.contains(*k)) {
        let mode = if rep % 2 == 1 { "Synced" } else { "the default durability" };
        return Err(format!("acknowledged op {missing} has no record ({} acked, {mode})", acked.len()));
    }
    // Reopening repairs a torn tail and says so. A last segment that holds only its header
    // (killed right after a rotation) is also a torn tail, but nothing is cut: the writer
    // continues that segment, with no sink_gap to write.
    let header_only = report.torn_tail.as_ref().is_some_and(|t| t.what.contains("holds only its header"));
    let torn = report.verdict == verify::Verdict::TornTail && !header_only;
    drop(JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).map_err(|e| e.to_string())?);
    let after =
        verify::verify_paths(&[dir.path().to_path_buf()], &Default::default()).map_err(|e| e.to_string())?;
    if after.verdict != verify::Verdict::Intact {
        return Err(format!("not intact after reopen:\n{}", after.human()));
    }
    // Each repair is said by a sink_gap record: a torn last line cut off, or a segment file
    // whose creation the kill interrupted before its header was whole.
    let gaps: Vec<String> =
        records(dir.path()).into_iter().filter(|r| r.op == "sink_gap").filter_map(|r| r.reason).collect();
    if torn && gaps.is_empty() {
        return Err("a torn tail was repaired without a sink_gap record".into());
    }
    if let Some(g) =
        gaps.iter().find(|g| !g.starts_with("torn tail repaired") && !g.starts_with("removed segment-"))
    {
        return Err(format!("unexpected sink_gap: {g}"));
    }
    Ok(())
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let reps: usize = std::env::var("MW_AUDIT_CRASH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut failed = 0;
    for rep in 0..reps {
        if let Err(e) = run_once(rep) {
            eprintln!("crash repetition {rep}: {e}");
            failed += 1;
        }
    }
    println!(
        "test every_acknowledged_op_survives_sigkill ({reps} repetitions) ... {}",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    println!("audit_crash: {} passed, {} failed", reps - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
