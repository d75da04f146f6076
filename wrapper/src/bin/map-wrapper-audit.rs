//! `map-wrapper-audit`: verify a map-wrapper audit trail, or show one key's history.
//!
//! Exit status of `verify`: 0 intact, 1 tampered, 2 only a torn last line, 3 usage or I/O
//! error. The first line of the output is a one-line verdict a script can read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use map_wrapper::audit::{from_hex, verify};

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
    },
    /// Print every record of one key (a key recorded in full), oldest first.
    Show {
        /// The key: JSON (`42`, `"a"`) or a plain string.
        #[arg(long)]
        key: String,
        /// Print the records as JSON lines.
        #[arg(long)]
        json: bool,
        /// Segment files or trail directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

const USAGE_OR_IO: u8 = 3;

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
        Command::Verify { paths, hmac_key_file, json } => {
            let mut opts = verify::VerifyOptions::default();
            if let Some(f) = hmac_key_file {
                match std::fs::read_to_string(&f).map(|s| from_hex(s.trim())) {
                    Ok(Some(key)) if !key.is_empty() => opts.hmac_key = Some(key),
                    Ok(_) => {
                        eprintln!("ERROR {}: the HMAC key file must hold the key in hex", f.display());
                        return ExitCode::from(USAGE_OR_IO);
                    }
                    Err(e) => {
                        eprintln!("ERROR cannot read {}: {e}", f.display());
                        return ExitCode::from(USAGE_OR_IO);
                    }
                }
            }
            match verify::verify_paths(&paths, &opts) {
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
        Command::Show { key, json, paths } => match verify::history(&paths, &key) {
            Ok(records) => {
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
                    eprintln!("{} record(s) for key {key}", records.len());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ERROR {e}");
                ExitCode::from(USAGE_OR_IO)
            }
        },
    }
}
