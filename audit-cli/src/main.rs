//! `map-wrapper-audit`: verify a map-wrapper audit trail, or show one key's history.
//!
//! Exit status of `verify`: 0 intact, 1 tampered, 2 only a torn last line, 3 usage or I/O
//! error. The first line of the output is a one-line verdict a script can read. `show`
//! verifies first, prints only verified records, and exits with the same status. When stderr
//! is a terminal, `verify` draws a progress bar there (one step per segment file).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use map_wrapper::audit::verify;

#[derive(Parser, Debug)]
#[command(name = "map-wrapper-audit", version, about = "Verify and inspect map-wrapper audit trails")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check every line, hash, link and sequence number of a trail (files, or directories of
    /// segment files, in order).
    Verify {
        /// Segment files or trail directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// A file holding the trail's HMAC key in hex (for HMAC-chained trails).
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
        /// Print the report as one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// For a trail whose oldest segments were pruned on purpose: the hash (64 hex
        /// digits) of the last line before the first segment given; its header's `prev` must
        /// be this. Without it the trail must start at segment 1.
        #[arg(long, value_name = "HASH")]
        expect_prev: Option<String>,
    },
    /// Print every record of one key (a key recorded in full), oldest first. The trail is
    /// verified first; only verified records are printed, and the exit status is that of
    /// `verify` (0 only when the whole trail is intact).
    Show {
        /// The key: JSON (`42`, `"a"`) or a plain string.
        #[arg(long)]
        key: String,
        /// Only the records of this map (the `map` field: the name given to the builder or
        /// `#[guarded_map]`). Without it, the key's records of every map in the trail.
        #[arg(long, value_name = "NAME")]
        map: Option<String>,
        /// Print the records as JSON lines.
        #[arg(long)]
        json: bool,
        /// A file holding the trail's HMAC key in hex (for HMAC-chained trails).
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
        /// For a pruned trail: the hash its first line continues from (see `verify`).
        #[arg(long, value_name = "HASH")]
        expect_prev: Option<String>,
        /// Segment files or trail directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

const USAGE_OR_IO: u8 = 3;

/// Bytes from hex (either case); `None` if `s` is not hex of whole bytes. The key file's
/// format; kept here so the command depends only on the library's `verify` API.
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { USAGE_OR_IO } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Verify { paths, hmac_key_file, json, expect_prev } => {
            let opts = match options(hmac_key_file, expect_prev) {
                Ok(opts) => opts,
                Err(code) => return code,
            };
            let mut opts = opts;
            let bar = std::io::IsTerminal::is_terminal(&std::io::stderr());
            if bar {
                opts.progress = Some(std::sync::Arc::new(progress_bar));
            }
            let verified = verify::verify_paths(&paths, &opts);
            if bar {
                eprintln!();
            }
            match verified {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string(&report).expect("a report serializes"));
                    } else {
                        print!("{}", report.human());
                    }
                    ExitCode::from(report.verdict.exit_code() as u8)
                }
                Err(e) => {
                    if json {
                        println!("{}", serde_json::json!({ "verdict": "error", "error": e.to_string() }));
                    } else {
                        println!("ERROR {e}");
                    }
                    ExitCode::from(USAGE_OR_IO)
                }
            }
        }
        Command::Show { key, map, json, paths, hmac_key_file, expect_prev } => {
            let opts = match options(hmac_key_file, expect_prev) {
                Ok(opts) => opts,
                Err(code) => return code,
            };
            show(&paths, &key, map.as_deref(), json, &opts)
        }
    }
}

/// Draws `[#####.....] done/total segments` on stderr (only when stderr is a terminal).
fn progress_bar(done: usize, total: usize) {
    const WIDTH: usize = 30;
    let filled = done * WIDTH / total.max(1);
    eprint!(
        "\rverifying [{}{}] {done}/{total} segment files",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled)
    );
}

/// The verification options from the command line, or the exit status of a bad key file.
fn options(
    hmac_key_file: Option<PathBuf>,
    expect_prev: Option<String>,
) -> Result<verify::VerifyOptions, ExitCode> {
    let mut opts = verify::VerifyOptions { expect_prev, ..Default::default() };
    if let Some(f) = hmac_key_file {
        match std::fs::read_to_string(&f).map(|s| from_hex(s.trim())) {
            Ok(Some(key)) if !key.is_empty() => opts.hmac_key = Some(key),
            Ok(_) => {
                eprintln!("ERROR {}: the HMAC key file must hold the key in hex", f.display());
                return Err(ExitCode::from(USAGE_OR_IO));
            }
            Err(e) => {
                eprintln!("ERROR cannot read {}: {e}", f.display());
                return Err(ExitCode::from(USAGE_OR_IO));
            }
        }
    }
    Ok(opts)
}

fn show(
    paths: &[PathBuf],
    key: &str,
    map: Option<&str>,
    json: bool,
    opts: &verify::VerifyOptions,
) -> ExitCode {
    match verify::history(paths, key, opts) {
        Ok(verify::History { mut records, report }) => {
            if let Some(map) = map {
                records.retain(|r| r.map.as_deref() == Some(map));
            }
            if report.verdict != verify::Verdict::Intact {
                eprintln!(
                    "WARNING the trail is not intact; only records before the problem are shown: {}",
                    report.verdict_line()
                );
            }
            for r in &records {
                if json {
                    println!("{}", serde_json::to_string(r).expect("a record serializes"));
                } else {
                    let show =
                        |v: &Option<serde_json::Value>| v.as_ref().map_or("-".into(), |v| v.to_string());
                    println!(
                        "seq={} {} {} {} actor={} outcome={} old={} new={}",
                        r.seq,
                        r.ts,
                        r.map.as_deref().unwrap_or("-"),
                        r.op,
                        r.actor,
                        r.outcome,
                        show(&r.old),
                        show(&r.new)
                    );
                }
            }
            if !json {
                match map {
                    Some(map) => eprintln!("{} record(s) for key {key} in map {map}", records.len()),
                    None => eprintln!("{} record(s) for key {key}", records.len()),
                }
            }
            ExitCode::from(report.verdict.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("ERROR {e}");
            ExitCode::from(USAGE_OR_IO)
        }
    }
}
