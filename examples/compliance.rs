//! Compliance: a `#[guarded_map]` struct whose maps share one audit trail on disk (JSON lines,
//! SHA-256 hash chain, every record synced before its operation returns, signed Merkle
//! checkpoints written to the trail and to an anchor outside it), then the verifier run on
//! that trail, on a copy with one record edited, and on a copy whose last records were
//! deleted (with its own checkpoints): the chain alone cannot see that, the checkpoint held
//! by the anchor does. Prints the trail and the verdicts.
//!
//! Run: `cargo run --example compliance [DIR]` (the trail goes to DIR, else a temporary
//! directory; the anchor to DIR.anchor). Check it again with the CLI:
//! `cargo run -p map-wrapper-audit -- verify --pubkey DIR.anchor/payments.pub --checkpoint
//! DIR.anchor/payments.note DIR`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use map_wrapper::audit::anchor::APPEND_FILE;
use map_wrapper::audit::checkpoint::{CheckpointCheckOptions, CheckpointOptions};
use map_wrapper::audit::verify::{self, VerifyOptions};
use map_wrapper::audit::{
    AuditRecord, Auditor, Durability, FileAnchor, JsonLinesOptions, JsonLinesSink, NoteSigner,
};
use map_wrapper::{guarded_map, OpContext};

#[guarded_map(audit = "payments", timeout_ms = 100)]
struct Payments {
    /// Balance per account, in cents: recorded in full.
    accounts: HashMap<String, i64>,
    /// Card token per account: the trail shows that a value changed, never the value.
    #[guard(redact)]
    cards: HashMap<String, String>,
    /// Tax id per account: recorded as a keyed digest (equal ids match, none is revealed).
    #[guard(digest)]
    tax_ids: HashMap<String, String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (temp, temp_anchor);
    // The trail's directory, and an anchor directory outside it (another disk, another host).
    let (dir, anchor_dir): (PathBuf, PathBuf) = match std::env::args_os().nth(1) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let anchor = PathBuf::from(format!("{}.anchor", dir.display()));
            (dir, anchor)
        }
        None => {
            (temp, temp_anchor) = (tempfile::tempdir()?, tempfile::tempdir()?);
            (temp.path().to_path_buf(), temp_anchor.path().to_path_buf())
        }
    };
    std::fs::create_dir_all(&anchor_dir)?;
    // The checkpoint signing key (in production: `map-wrapper-audit keygen`, a file only the
    // writer reads); its verifier key goes to the auditors.
    let signer = NoteSigner::generate("example.com/payments-audit")?;
    std::fs::write(anchor_dir.join("payments.pub"), format!("{}\n", signer.verifier()))?;
    let anchor = anchor_dir.join("payments.note");
    let checkpoints =
        CheckpointOptions::new("example.com/payments-audit", signer.clone()).anchor(FileAnchor::new(&anchor));
    let opts = JsonLinesOptions { checkpoints: Some(checkpoints), ..Default::default() };
    let sink = Arc::new(JsonLinesSink::open(&dir, opts)?);
    let auditor = Auditor::from_arc(sink.clone())
        .durability(Durability::Synced)
        .default_actor("payments-service")
        .digest_key("tax-2026", b"example key: keep the real one in a secret store".to_vec());
    let payments = Arc::new(Payments::with_auditor(&auditor)?);
    println!("== trail: {}", dir.display());

    // Three tellers work at once, each as itself (the actor of its records).
    let tellers: Vec<_> = ["alice", "bob", "carol"]
        .into_iter()
        .enumerate()
        .map(|(i, teller)| {
            let payments = Arc::clone(&payments);
            thread::spawn(move || -> Result<(), map_wrapper::MapError> {
                let _as = OpContext::new().actor(teller).trace_id(format!("req-{i}")).enter();
                let account = format!("acct-{i}");
                payments.accounts_insert(account.clone(), 10_000)?;
                payments.cards_insert(account.clone(), format!("tok_live_{i}{i}{i}"))?;
                payments.tax_ids_insert(account.clone(), format!("TAX-{}", 1000 + i))?;
                payments.accounts_update(&account, |cents| *cents -= 2_500)?;
                Ok(())
            })
        })
        .collect();
    for t in tellers {
        t.join().expect("teller thread")?;
    }
    // A card is replaced, then an account closed (no actor: the auditor's default actor).
    payments.cards_insert("acct-1".into(), "tok_live_999".into())?;
    payments.accounts_remove("acct-2")?;

    // A refused mutation is recorded too: a report holds acct-0 past the 100 ms deadline.
    let (held, release) = (mpsc::channel(), mpsc::channel::<()>());
    let report = {
        let payments = Arc::clone(&payments);
        thread::spawn(move || {
            let guard = payments.accounts_get("acct-0").expect("readable");
            held.0.send(()).expect("main waits");
            let _ = release.1.recv_timeout(Duration::from_secs(5));
            drop(guard);
        })
    };
    held.1.recv()?;
    let refused = payments.accounts_insert("acct-0".into(), 0);
    release.0.send(())?;
    report.join().expect("report thread");
    println!("== a write while a report held the shard: {}", refused.err().map_or("accepted", |e| e.code()));

    drop(payments);
    sink.close()?;

    let files: Vec<PathBuf> = verify::collect_files(std::slice::from_ref(&dir))?;
    let text: String = files.iter().map(std::fs::read_to_string).collect::<Result<_, _>>()?;
    println!(
        "\n== the trail: {} lines in {} segment file(s); a record in full:",
        text.lines().count(),
        files.len()
    );
    if let Some(first) = text.lines().find(|l| l.contains("\"payments.")) {
        println!("{first}");
    }
    println!();
    for line in text.lines() {
        if let Ok(r) = serde_json::from_str::<AuditRecord>(line) {
            println!("{}", summary(&r));
        }
    }

    let opts = VerifyOptions::default();
    println!(
        "\n== verify {}:\n{}",
        dir.display(),
        verify::verify_paths(std::slice::from_ref(&dir), &opts)?.human()
    );

    // Someone edits one amount in a copy of the trail: the verifier names the record.
    let forged = tempfile::tempdir()?;
    let edited = forge(&files, forged.path())?;
    let report = verify::verify_paths(&[forged.path().to_path_buf()], &opts)?;
    println!("== verify a copy with {edited}:\n{}", report.human());
    println!("exit status of `map-wrapper-audit verify` on it: {}", report.verdict.exit_code());

    // Someone deletes the trail's last three records, and its checkpoints.notes with them.
    // What is left still links: the chain alone says INTACT. The checkpoint the anchor holds
    // (signed, of every record) says how long the trail was: TAMPERED.
    let cut = tempfile::tempdir()?;
    delete_tail(&files, cut.path(), 3)?;
    let cut_dir = [cut.path().to_path_buf()];
    let chain_only = verify::verify_paths(&cut_dir, &opts)?;
    println!("== a copy with its last 3 records deleted, the chain alone:\n{}", chain_only.verdict_line());
    let with_anchor = VerifyOptions {
        checkpoints: Some(CheckpointCheckOptions {
            trusted: vec![signer.verifier()],
            trail_notes: vec![cut.path().join(APPEND_FILE)],
            external: vec![anchor.clone()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let report = verify::verify_paths(&cut_dir, &with_anchor)?;
    println!(
        "== the same copy against the anchor's checkpoint (`verify --pubkey {} --checkpoint {}`):\n{}",
        anchor_dir.join("payments.pub").display(),
        anchor.display(),
        report.verdict_line()
    );
    println!("exit status: {}", report.verdict.exit_code());
    Ok(())
}

/// Copies the trail's segment files into `to` without its last `k` records (and without its
/// `checkpoints.notes`).
fn delete_tail(files: &[PathBuf], to: &Path, mut k: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut texts: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for f in files {
        let lines = std::fs::read_to_string(f)?.lines().map(|l| format!("{l}\n")).collect();
        texts.push((f.clone(), lines));
    }
    for (_, lines) in texts.iter_mut().rev() {
        while k > 0 && lines.len() > 1 {
            lines.pop();
            k -= 1;
        }
    }
    for (f, lines) in texts {
        if lines.len() > 1 {
            std::fs::write(to.join(f.file_name().ok_or("a segment file has a name")?), lines.concat())?;
        }
    }
    Ok(())
}

/// One record on one line, for a person.
fn summary(r: &AuditRecord) -> String {
    let show =
        |v: &Option<serde_json::Value>| v.as_ref().map_or("-".to_string(), |v| shorten(&v.to_string(), 24));
    format!(
        "#{:<3} {:<17} {:<13} key={:<9} old={:<24} new={:<24} actor={:<16} {}{}",
        r.seq,
        r.map.as_deref().unwrap_or("(trail)"),
        r.op,
        show(&r.key),
        show(&r.old),
        show(&r.new),
        r.actor,
        r.outcome,
        r.reason.as_deref().map(|why| format!(" ({})", shorten(why, 60))).unwrap_or_default()
    )
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Copies the trail into `to`, with the first `accounts` insert's amount changed.
fn forge(files: &[PathBuf], to: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let mut what = String::from("no record edited");
    for file in files {
        let text = std::fs::read_to_string(file)?;
        let mut done = false;
        let forged: Vec<String> = text
            .lines()
            .map(|line| {
                if !done && line.contains("\"payments.accounts\"") && line.contains("{\"full\":10000}") {
                    done = true;
                    what = "one balance raised from 10000 to 99999".to_string();
                    line.replacen("{\"full\":10000}", "{\"full\":99999}", 1)
                } else {
                    line.to_string()
                }
            })
            .collect();
        let name = file.file_name().ok_or("a segment file has a name")?;
        std::fs::write(to.join(name), forged.join("\n") + "\n")?;
    }
    Ok(what)
}
