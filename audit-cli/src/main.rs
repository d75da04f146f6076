//! `map-wrapper-audit`: verify a map-wrapper audit trail, show one key's history, and make
//! and check proofs over its signed checkpoints.
//!
//! Exit status of `verify`: 0 intact, 1 tampered, 2 only a torn last line, 3 usage or I/O
//! error, 4 intact but STALE (its latest checkpoint is past its heartbeat and the trail does
//! not end with `audit_stop`). The first line of the output is a one-line verdict a script
//! can read. `show` verifies first, prints only verified records, and exits with the same
//! status. When stderr is a terminal, `verify` draws a progress bar there (one step per
//! segment file).
//!
//! With `--pubkey`, `verify` also checks every signed checkpoint it finds (the trail's
//! `checkpoints.notes`, each `--checkpoint FILE`, the `--state FILE`) against the records:
//! a checkpoint of more records than the trail has, or of another root, is TAMPERED; the
//! state file then advances to the newest checkpoint (consistency-proved).
//!
//! `keygen` makes a signing key; `prove SEQ` prints an inclusion proof of one record (C2SP
//! `tlog-proof`), `consistency OLD NEW` a proof that checkpoint NEW extends OLD, and
//! `check-proof` checks either without the trail (exit 0 valid, 1 invalid, 3 usage or I/O).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use map_wrapper::audit::checkpoint::{check_checkpoints, split_notes, CheckpointCheckOptions};
use map_wrapper::audit::proof::{self, ConsistencyProof, InclusionProof, ProofError, CONSISTENCY_HEADER};
use map_wrapper::audit::{verify, DirAnchor, NoteSigner, NoteVerifier, SignedCheckpoint};

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
        #[command(flatten)]
        checkpoints: CheckpointArgs,
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
    /// Make a checkpoint signing key: the secret key file (mode 0600, never overwritten) and
    /// the verifier key file (FILE.pub) to give to auditors; prints the verifier key.
    Keygen {
        /// The key name (the log's origin is a good one: `example.com/billing-audit`).
        #[arg(long)]
        name: String,
        /// The secret key file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print an inclusion proof of record SEQ (C2SP tlog-proof: the record, its index, at most
    /// ⌈log₂ n⌉ hashes and the signed checkpoint), checkable without the trail.
    Prove {
        /// The record's seq.
        seq: u64,
        /// The verifier key file(s) the checkpoint must be signed by.
        #[arg(long, value_name = "FILE", required = true)]
        pubkey: Vec<PathBuf>,
        /// Prove against this checkpoint (a note file); default: the trail's latest.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Trail directory (or its segment files, in order).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print a proof that the trail at checkpoint NEW extends the trail at checkpoint OLD.
    Consistency {
        /// The older checkpoint: a tree size (a checkpoint of the trail's `checkpoints.notes`)
        /// or a note file.
        old: String,
        /// The newer checkpoint, likewise.
        new: String,
        /// The verifier key file(s) the checkpoints must be signed by.
        #[arg(long, value_name = "FILE", required = true)]
        pubkey: Vec<PathBuf>,
        /// Trail directory (or its segment files, in order).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check an inclusion or consistency proof without the trail (exit 0 valid, 1 invalid).
    CheckProof {
        /// The verifier key file(s) of the trail.
        #[arg(long, value_name = "FILE", required = true)]
        pubkey: Vec<PathBuf>,
        /// The proof file (`-` for standard input).
        proof: PathBuf,
    },
}

/// Checkpoint options of `verify`.
#[derive(clap::Args, Debug)]
struct CheckpointArgs {
    /// A verifier key file of the trail's checkpoints (repeat during a key rotation). With
    /// it, every checkpoint found is checked against the records.
    #[arg(long, value_name = "FILE")]
    pubkey: Vec<PathBuf>,
    /// A checkpoint kept outside the trail (a file of one or more signed notes; repeatable).
    #[arg(long, value_name = "FILE")]
    checkpoint: Vec<PathBuf>,
    /// The verifier's state file: the latest checkpoint seen; a trail that does not extend
    /// it is TAMPERED; advanced to the newest checkpoint found.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// How late past its heartbeat the latest checkpoint may be before the trail is STALE.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    grace_ms: u64,
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
        Command::Verify { paths, hmac_key_file, json, expect_prev, checkpoints } => {
            let opts = match options(hmac_key_file, expect_prev) {
                Ok(opts) => opts,
                Err(code) => return code,
            };
            let mut opts = opts;
            let bar = std::io::IsTerminal::is_terminal(&std::io::stderr());
            if bar {
                opts.progress = Some(std::sync::Arc::new(progress_bar));
            }
            opts.checkpoints = match checkpoint_options(&paths, &checkpoints) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let verified = verify::verify_paths(&paths, &opts);
            if bar {
                eprintln!();
            }
            let verified = match (verified, &opts.checkpoints) {
                // Every segment removed: with checkpoints to compare against, that is a trail
                // of no records (TAMPERED if any checkpoint covers one), not a usage error.
                (Err(e), Some(c)) if holds_no_segment(&paths) => empty_trail(&paths, c).ok_or(e),
                (v, _) => v,
            };
            match verified {
                Ok(mut report) => {
                    if opts.checkpoints.is_none() {
                        unchecked_notes(&paths, &mut report);
                    }
                    if json {
                        println!("{}", serde_json::to_string(&report).expect("a report serializes"));
                    } else {
                        print!("{}", report.human());
                        if let Some(c) = &report.checkpoints {
                            println!(
                                "  checkpoints: {} checked, latest of {} records",
                                c.checked,
                                c.latest_size.map_or_else(|| "-".into(), |s| s.to_string())
                            );
                            for n in &c.notes {
                                println!("  note: {n}");
                            }
                        }
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
        Command::Keygen { name, out } => keygen(&name, &out),
        Command::Prove { seq, pubkey, checkpoint, paths } => {
            prove(seq, &pubkey, checkpoint.as_deref(), &paths)
        }
        Command::Consistency { old, new, pubkey, paths } => consistency(&old, &new, &pubkey, &paths),
        Command::CheckProof { pubkey, proof } => check_proof(&pubkey, &proof),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ERROR {msg}");
    ExitCode::from(USAGE_OR_IO)
}

fn load_keys(files: &[PathBuf]) -> Result<Vec<NoteVerifier>, ExitCode> {
    files.iter().map(|f| NoteVerifier::load(f).map_err(|e| fail(format!("{}: {e}", f.display())))).collect()
}

/// The trail directories among `paths` (their `checkpoints.notes` is the trail's own).
fn trail_dirs(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths.iter().filter(|p| p.is_dir()).cloned().collect()
}

/// Whether every path is a directory without a segment file.
fn holds_no_segment(paths: &[PathBuf]) -> bool {
    paths.iter().all(|p| p.is_dir() && map_wrapper::audit::list_segments(p).is_ok_and(|s| s.is_empty()))
}

/// The report of a trail of no segment at all.
fn empty_report() -> verify::Report {
    verify::Report {
        verdict: verify::Verdict::Intact,
        segments: 0,
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        chain: "-".into(),
        problem: None,
        torn_tail: None,
        notes: vec!["the trail holds no segment file".into()],
        checkpoints: None,
    }
}

/// The checkpoint checks `verify` runs in its pass (with `--pubkey`): the trail
/// directories' own `checkpoints.notes`, `--checkpoint` files, the `--state` file.
fn checkpoint_options(
    paths: &[PathBuf],
    args: &CheckpointArgs,
) -> Result<Option<CheckpointCheckOptions>, String> {
    if args.pubkey.is_empty() {
        if !args.checkpoint.is_empty() || args.state.is_some() {
            return Err("--checkpoint and --state need --pubkey (the trail's verifier key)".into());
        }
        return Ok(None);
    }
    let trusted = args
        .pubkey
        .iter()
        .map(|f| NoteVerifier::load(f).map_err(|e| format!("{}: {e}", f.display())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(CheckpointCheckOptions {
        trusted,
        trail_notes: trail_dirs(paths)
            .iter()
            .map(|d| d.join(map_wrapper::audit::anchor::APPEND_FILE))
            .collect(),
        external: args.checkpoint.clone(),
        state: args.state.clone(),
        grace: std::time::Duration::from_millis(args.grace_ms),
        now: None,
    }))
}

/// Without `--pubkey`: says that the trail's checkpoints were not checked.
fn unchecked_notes(paths: &[PathBuf], report: &mut verify::Report) {
    for d in trail_dirs(paths) {
        let n = d.join(map_wrapper::audit::anchor::APPEND_FILE);
        if let Ok(b) = std::fs::read(&n) {
            report.notes.push(format!(
                "{}: {} checkpoint(s) not checked (give --pubkey)",
                n.display(),
                split_notes(&b).len()
            ));
        }
    }
}

/// A trail without any segment file, against its checkpoints: the report when one of them
/// covers records (TAMPERED), else `None`.
fn empty_trail(paths: &[PathBuf], opts: &CheckpointCheckOptions) -> Option<verify::Report> {
    let found = check_checkpoints(&[], opts).ok()?;
    let why = found.tampered.clone()?;
    let mut report = empty_report();
    report.verdict = verify::Verdict::Tampered;
    report.problem = Some(verify::Problem {
        file: paths.first().map(|p| p.display().to_string()).unwrap_or_default(),
        offset: 0,
        line: 0,
        seq: None,
        what: format!("checkpoint: {why}"),
    });
    report.checkpoints = Some(found);
    Some(report)
}

fn keygen(name: &str, out: &std::path::Path) -> ExitCode {
    let signer = match NoteSigner::generate(name) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut public = out.as_os_str().to_owned();
    public.push(".pub");
    let public = PathBuf::from(public);
    if public.exists() {
        return fail(format!("{} exists: a key file is never overwritten", public.display()));
    }
    if let Err(e) = signer.save(out) {
        return fail(e);
    }
    let vkey = signer.verifier().to_string();
    if let Err(e) = std::fs::write(&public, format!("{vkey}\n")) {
        return fail(format!("{}: {e}", public.display()));
    }
    println!("{vkey}");
    eprintln!(
        "secret key: {} (keep it for the writer only); verifier key: {}",
        out.display(),
        public.display()
    );
    ExitCode::SUCCESS
}

/// The trail's own checkpoints (its `checkpoints.notes`) that open with the trusted keys.
fn trail_checkpoints(paths: &[PathBuf], trusted: &[NoteVerifier]) -> Vec<SignedCheckpoint> {
    let mut out = Vec::new();
    for d in trail_dirs(paths) {
        let anchor = DirAnchor::new(d, map_wrapper::audit::anchor::DirLayout::Append);
        for c in anchor.all().unwrap_or_default().into_iter().flatten() {
            if let Ok(c) = SignedCheckpoint::open(c.note().as_bytes(), trusted) {
                out.push(c);
            }
        }
    }
    out
}

/// A checkpoint named on the command line: a tree size of the trail's own checkpoints, or
/// a note file.
fn named_checkpoint(
    arg: &str,
    paths: &[PathBuf],
    trusted: &[NoteVerifier],
) -> Result<SignedCheckpoint, ExitCode> {
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
        let size: u64 = arg.parse().map_err(|_| fail(format!("{arg}: not a tree size")))?;
        return trail_checkpoints(paths, trusted)
            .into_iter()
            .rfind(|c| c.checkpoint().size() == size)
            .ok_or_else(|| {
                fail(format!("the trail's checkpoints.notes holds no trusted checkpoint of {size} records"))
            });
    }
    let bytes = std::fs::read(arg).map_err(|e| fail(format!("{arg}: {e}")))?;
    SignedCheckpoint::open(&bytes, trusted).map_err(|e| fail(format!("{arg}: {e}")))
}

fn proof_failed(e: ProofError) -> ExitCode {
    match e {
        ProofError::Tampered(_) => {
            println!("{e}");
            ExitCode::from(1)
        }
        e => fail(e),
    }
}

fn prove(seq: u64, pubkey: &[PathBuf], checkpoint: Option<&std::path::Path>, paths: &[PathBuf]) -> ExitCode {
    let trusted = match load_keys(pubkey) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let cp = match checkpoint {
        Some(f) => match named_checkpoint(&f.to_string_lossy(), paths, &trusted) {
            Ok(c) => c,
            Err(code) => return code,
        },
        None => match trail_checkpoints(paths, &trusted).into_iter().max_by_key(|c| c.checkpoint().size()) {
            Some(c) => c,
            None => {
                return fail(
                    "the trail has no trusted checkpoint (checkpoints.notes); give --checkpoint FILE",
                )
            }
        },
    };
    let files = match verify::collect_files(paths) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    match proof::prove_inclusion(&files, seq, &cp) {
        Ok(p) => {
            print!("{}", p.to_text());
            ExitCode::SUCCESS
        }
        Err(e) => proof_failed(e),
    }
}

fn consistency(old: &str, new: &str, pubkey: &[PathBuf], paths: &[PathBuf]) -> ExitCode {
    let trusted = match load_keys(pubkey) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let (old, new) = match (named_checkpoint(old, paths, &trusted), named_checkpoint(new, paths, &trusted)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let files = match verify::collect_files(paths) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    match proof::prove_consistency(&files, &old, &new) {
        Ok(p) => {
            print!("{}", p.to_text());
            ExitCode::SUCCESS
        }
        Err(e) => proof_failed(e),
    }
}

fn check_proof(pubkey: &[PathBuf], file: &std::path::Path) -> ExitCode {
    let trusted = match load_keys(pubkey) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let bytes = if file.as_os_str() == "-" {
        let mut b = Vec::new();
        match std::io::Read::read_to_end(&mut std::io::stdin(), &mut b) {
            Ok(_) => b,
            Err(e) => return fail(format!("standard input: {e}")),
        }
    } else {
        match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => return fail(format!("{}: {e}", file.display())),
        }
    };
    let invalid = |e: ProofError| {
        println!("INVALID {e}");
        ExitCode::from(1)
    };
    if bytes.starts_with(CONSISTENCY_HEADER.as_bytes()) {
        let p = match ConsistencyProof::parse(&bytes, &trusted) {
            Ok(p) => p,
            Err(e) => return invalid(e),
        };
        if let Err(e) = p.verify() {
            return invalid(e);
        }
        let (o, n) = (p.old.checkpoint(), p.new.checkpoint());
        println!(
            "VALID consistency origin={} old={} new={}: the trail of {} records extends the trail of {}",
            n.origin(),
            o.size(),
            n.size(),
            n.size(),
            o.size()
        );
        return ExitCode::SUCCESS;
    }
    let p = match InclusionProof::parse(&bytes, &trusted) {
        Ok(p) => p,
        Err(e) => return invalid(e),
    };
    match p.verify() {
        Ok(r) => {
            println!("VALID inclusion origin={} seq={} size={}", r.origin, r.seq, r.size);
            println!("{}", r.record);
            ExitCode::SUCCESS
        }
        Err(e) => invalid(e),
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
        match std::fs::read_to_string(&f).map(|s| verify::parse_hmac_key(&s)) {
            Ok(Ok(key)) => opts.hmac_key = Some(key),
            Ok(Err(_)) => {
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
