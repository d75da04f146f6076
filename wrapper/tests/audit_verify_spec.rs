//! The verifier against `docs/AUDIT_FORMAT.md`: one regression test per defect of issue #17,
//! and an adversarial corpus (tampered copies of real trails written by `JsonLinesSink`, each
//! with the verdict the spec requires).

use std::path::{Path, PathBuf};

use map_wrapper::audit::verify::{self, Report, Verdict, VerifyError, VerifyOptions};
use map_wrapper::audit::{Auditor, Chain, ChainKey, JsonLinesOptions, JsonLinesSink};
use map_wrapper::MapWrapper;

/// Lower-case hex, as a line's `hash` is written.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const KEY: &[u8] = b"an audit key of thirty-two bytes";

fn hmac() -> ChainKey {
    ChainKey::Hmac { id: "k1".into(), key: KEY.to_vec() }
}

/// A closed trail in `dir`: `audit_start`, 30 inserts with tags, a remove, `audit_stop`,
/// rotated into several segments when `max_segment_bytes` is small.
fn write_real_trail(dir: &Path, key: ChainKey, max_segment_bytes: u64) {
    let opts = JsonLinesOptions { chain_key: key, max_segment_bytes, ..Default::default() };
    let sink = JsonLinesSink::open(dir, opts).unwrap();
    let map: MapWrapper<u32, String> =
        MapWrapper::builder().name("t").auditor(Auditor::new(sink)).build().unwrap();
    for i in 0..30 {
        map.insert(i, format!("v{i}")).unwrap();
    }
    map.remove(&3).unwrap();
}

/// The trail's segments, each as its lines (with their `\n`).
fn read_trail(dir: &Path) -> Vec<Vec<String>> {
    map_wrapper::audit::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| std::fs::read_to_string(p).unwrap().split_inclusive('\n').map(str::to_string).collect())
        .collect()
}

fn seg_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(map_wrapper::audit::segment_file_name(n as u64))
}

fn write_trail(dir: &Path, segs: &[Vec<String>]) {
    for (i, lines) in segs.iter().enumerate() {
        std::fs::write(seg_path(dir, i + 1), lines.concat()).unwrap();
    }
}

fn opts_for(key: &ChainKey) -> VerifyOptions {
    match key {
        ChainKey::Hmac { key, .. } => VerifyOptions { hmac_key: Some(key.clone()), ..Default::default() },
        ChainKey::Sha256 => VerifyOptions::default(),
    }
}

fn check(dir: &Path, key: &ChainKey) -> Report {
    verify::verify_paths(&[dir.to_path_buf()], &opts_for(key)).unwrap()
}

/// The part of a line before `,"prev":` (the member every line has second to last).
fn pre(line: &str) -> &str {
    &line[..line.len() - 1 - 75 - 74]
}

/// Seals `pre` (a line before its `prev`) after a line whose hash is `prev`, as anyone can on a
/// SHA-256 chain (and a key holder on an HMAC one).
fn seal(pre: &str, prev: &str, key: &ChainKey) -> String {
    let head = format!("{pre},\"prev\":\"{prev}\"");
    let hash = to_hex(&key.seal(prev, format!("{head}}}").as_bytes()));
    format!("{head},\"hash\":\"{hash}\"}}\n")
}

fn hash_of(line: &str) -> &str {
    &line[line.len() - 1 - 66..line.len() - 3]
}

/// Re-seals every line from (segment `s`, line `l`) on, each linked to the one before.
fn rechain(segs: &mut [Vec<String>], s: usize, l: usize, key: &ChainKey) {
    let mut prev = "0".repeat(64);
    for (si, seg) in segs.iter_mut().enumerate() {
        for (li, line) in seg.iter_mut().enumerate() {
            if (si, li) >= (s, l) {
                *line = seal(pre(line), &prev, key);
            }
            // A half-written line (no newline) is not part of the chain.
            if line.ends_with('\n') {
                prev = hash_of(line).to_string();
            }
        }
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------
// Defect 1: empty segments and trails with no records.

#[test]
fn emptied_segment_is_not_intact() {
    for key in [ChainKey::Sha256, hmac()] {
        // The only segment emptied: no line vouches for anything.
        let d = tmp();
        write_real_trail(d.path(), key.clone(), 1 << 20);
        std::fs::write(seg_path(d.path(), 1), b"").unwrap();
        let r = check(d.path(), &key);
        assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
        assert_eq!(r.records, 0);

        // Every segment of a 7-segment trail emptied: tampered at the first.
        let d = tmp();
        write_real_trail(d.path(), key.clone(), 1200);
        let n = read_trail(d.path()).len();
        assert!(n >= 5, "{n} segments");
        for i in 1..=n {
            std::fs::write(seg_path(d.path(), i), b"").unwrap();
        }
        let r = check(d.path(), &key);
        assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
        assert!(r.problem.unwrap().file.ends_with("segment-000001.jsonl"));
    }
}

#[test]
fn a_new_empty_last_segment_is_a_torn_tail_not_intact() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1 << 20);
    std::fs::write(seg_path(d.path(), 2), b"").unwrap();
    let r = check(d.path(), &ChainKey::Sha256);
    assert_eq!(r.verdict, Verdict::TornTail, "{}", r.human());
    assert!(r.torn_tail.unwrap().file.ends_with("segment-000002.jsonl"));
    // The writer treats it as an interrupted segment creation: removed on open, with a record.
    drop(JsonLinesSink::open(d.path(), Default::default()).unwrap());
    assert_eq!(check(d.path(), &ChainKey::Sha256).verdict, Verdict::Intact);
}

#[test]
fn an_emptied_middle_segment_is_tampered() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1200);
    std::fs::write(seg_path(d.path(), 2), b"").unwrap();
    let r = check(d.path(), &ChainKey::Sha256);
    assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
    assert!(r.problem.unwrap().file.ends_with("segment-000002.jsonl"));
}

#[test]
fn a_trail_whose_last_segment_holds_only_its_header_is_a_torn_tail() {
    for rotated in [false, true] {
        let d = tmp();
        write_real_trail(d.path(), ChainKey::Sha256, if rotated { 1200 } else { 1 << 20 });
        let mut segs = read_trail(d.path());
        let last = segs.len() - 1;
        segs[last].truncate(1);
        std::fs::remove_dir_all(d.path()).unwrap();
        std::fs::create_dir(d.path()).unwrap();
        write_trail(d.path(), &segs);
        let r = check(d.path(), &ChainKey::Sha256);
        assert_eq!(r.verdict, Verdict::TornTail, "{}", r.human());
    }
}

// ---------------------------------------------------------------------------------------
// Defect 2: non-regular files, bounded memory.

#[cfg(unix)]
#[test]
fn a_fifo_named_like_a_segment_is_refused_without_waiting() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1 << 20);
    let fifo = seg_path(d.path(), 2);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // If the verifier opened the FIFO it would wait for a writer forever: run it in a thread
    // and give it a bounded time.
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = d.path().to_path_buf();
    std::thread::spawn(move || tx.send(check(&dir, &ChainKey::Sha256)).unwrap());
    let r = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("verify returns");
    assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
    assert!(r.problem.unwrap().what.contains("a FIFO, not a regular file"));
}

#[cfg(unix)]
#[test]
fn a_link_to_dev_zero_and_a_directory_named_like_a_segment_are_refused() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1 << 20);
    std::os::unix::fs::symlink("/dev/zero", seg_path(d.path(), 2)).unwrap();
    let r = check(d.path(), &ChainKey::Sha256);
    assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
    assert!(r.problem.unwrap().what.contains("a device, not a regular file"));

    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1 << 20);
    std::fs::create_dir(seg_path(d.path(), 2)).unwrap();
    let r = check(d.path(), &ChainKey::Sha256);
    assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
    assert!(r.problem.unwrap().what.contains("a directory, not a regular file"));
}

#[test]
fn a_3_gb_sparse_segment_is_refused_as_a_line_over_the_limit() {
    for prefix in [&b""[..], b"{\"v\":1,\"seq\":1,\"ts\":\""] {
        let d = tmp();
        write_real_trail(d.path(), ChainKey::Sha256, 1 << 20);
        let path = seg_path(d.path(), 2);
        let f = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &f, prefix).unwrap();
        f.set_len(3 << 30).unwrap();
        let r = check(d.path(), &ChainKey::Sha256);
        assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
        let p = r.problem.unwrap();
        assert!(p.file.ends_with("segment-000002.jsonl"), "{p:?}");
        // Not a line: known bad after the first buffer, then read on (not kept) to the limit.
        assert!(p.what.contains("over the format's limit"), "{}", p.what);
    }
}

// ---------------------------------------------------------------------------------------
// Defect 3: a header that switches the chain.

#[test]
fn a_header_switching_the_chain_is_tampered_not_a_usage_error() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1 << 20);
    let segs = read_trail(d.path());
    let len = segs[0].concat().len() as u64;
    let last = hash_of(segs[0].last().unwrap()).to_string();
    // Segment 2 written by an HMAC chain continuing segment 1.
    let mut chain = Chain::resume(hmac(), 34, last);
    let mut text = String::new();
    chain.seal_header(2, len, false, &mut text);
    chain.seal_event(
        &map_wrapper::audit::AuditEvent::new(map_wrapper::audit::EventFields::lifecycle("audit_start", None)),
        &mut text,
    );
    std::fs::write(seg_path(d.path(), 2), text).unwrap();
    for key in [ChainKey::Sha256, hmac()] {
        let r = check(d.path(), &key);
        assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
    }
    let p = check(d.path(), &ChainKey::Sha256).problem.unwrap();
    assert!(p.what.contains("switches the chain"), "{}", p.what);
    assert_eq!((p.seq, p.line), (Some(34), 1));
}

// ---------------------------------------------------------------------------------------
// Defect 4: exact schemas (and the corpus below).

#[test]
fn a_segment_file_without_any_header_is_tampered() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1 << 20);
    let mut segs = read_trail(d.path());
    segs[0].remove(0);
    rechain(&mut segs, 0, 0, &ChainKey::Sha256);
    write_trail(d.path(), &segs);
    let r = check(d.path(), &ChainKey::Sha256);
    assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
    assert!(r.problem.unwrap().what.contains("does not start with a segment header"));
}

#[test]
fn a_header_missing_prev_len_is_tampered() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1200);
    let mut segs = read_trail(d.path());
    let p = pre(&segs[1][0]);
    let at = p.find(",\"prev_len\":").unwrap();
    let end = at + p[at + 1..].find(',').unwrap() + 1;
    segs[1][0] = format!("{}{}{}", &p[..at], &p[end..], &segs[1][0][p.len()..]);
    rechain(&mut segs, 1, 0, &ChainKey::Sha256);
    write_trail(d.path(), &segs);
    let r = check(d.path(), &ChainKey::Sha256);
    assert_eq!(r.verdict, Verdict::Tampered, "{}", r.human());
    let p = r.problem.unwrap();
    assert!(p.file.ends_with("segment-000002.jsonl") && p.line == 1, "{p:?}");
    assert!(p.seq.is_some(), "a header problem reports the seq expected there: {p:?}");
}

// ---------------------------------------------------------------------------------------
// Defect 5: reporting.

#[test]
fn explicit_segment_files_are_verified_in_number_order() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1200);
    let mut files: Vec<PathBuf> =
        map_wrapper::audit::list_segments(d.path()).unwrap().into_iter().map(|(_, p)| p).collect();
    files.reverse();
    let r = verify::verify_paths(&files, &Default::default()).unwrap();
    assert_eq!((r.verdict, r.segments), (Verdict::Intact, files.len() as u64), "{}", r.human());
    // The same segment twice is a usage error, not a verdict.
    files.push(files[0].clone());
    assert!(matches!(verify::verify_paths(&files, &Default::default()), Err(VerifyError::Usage(_))));
}

#[test]
fn missing_first_segments_are_counted_right() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1200);
    let n = read_trail(d.path()).len();
    assert!(n >= 5);
    for i in 1..=3 {
        std::fs::remove_file(seg_path(d.path(), i)).unwrap();
    }
    let r = check(d.path(), &ChainKey::Sha256);
    let p = r.problem.unwrap();
    assert!(p.what.contains("starts at segment 4: segments 1 to 3 are missing (3 segments)"), "{}", p.what);
    assert_eq!(p.seq, Some(1));
}

#[test]
fn a_malformed_expect_prev_is_a_usage_error() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1 << 20);
    for bad in ["abc", &"g".repeat(64), &"0".repeat(63), &format!(" {}", "0".repeat(64))] {
        let opts = VerifyOptions { expect_prev: Some(bad.to_string()), ..Default::default() };
        let e = verify::verify_paths(&[d.path().to_path_buf()], &opts).unwrap_err();
        assert!(matches!(e, VerifyError::Usage(_)), "{bad:?}: {e}");
    }
    assert!(verify::parse_hash(&"AB".repeat(32)).is_ok_and(|h| h == "ab".repeat(32)));
}

#[test]
fn a_header_problem_reports_the_seq_expected_there() {
    let d = tmp();
    write_real_trail(d.path(), ChainKey::Sha256, 1 << 20);
    let mut segs = read_trail(d.path());
    segs[0][0] = segs[0][0].replace("\"chain\":\"sha256\"", "\"chain\":\"sha512\"");
    write_trail(d.path(), &segs);
    let r = check(d.path(), &ChainKey::Sha256);
    assert!(r.verdict_line().starts_with("TAMPERED first_bad_seq=1 "), "{}", r.verdict_line());
}

#[test]
fn the_hmac_key_file_and_hash_formats_are_parsed_as_the_spec_says() {
    assert_eq!(verify::parse_hmac_key("  0aFF\n").unwrap(), vec![0x0a, 0xff]);
    for bad in ["", "abc", "zz", "0a 0b"] {
        assert!(verify::parse_hmac_key(bad).is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The adversarial corpus.

/// One tampered copy of a trail and the verdict the spec requires.
struct Case {
    what: String,
    segs: Vec<Vec<String>>,
    want: Verdict,
    /// (segment index, line index) where the first problem must be reported.
    at: Option<(usize, usize)>,
}

/// Schema violations of a record's text before its `prev` (each must be TAMPERED even when
/// the line is re-sealed with a correct hash).
fn record_violations(p: &str) -> Vec<(&'static str, String)> {
    let seq_at = p.find("\"seq\":").unwrap() + 6;
    let seq_end = seq_at + p[seq_at..].find(',').unwrap();
    let seq = &p[seq_at..seq_end];
    let ts_at = p.find("\"ts\":\"").unwrap() + 6;
    let with_ts = |f: &dyn Fn(&str) -> String| {
        format!("{}{}{}", &p[..ts_at], f(&p[ts_at..ts_at + 27]), &p[ts_at + 27..])
    };
    let key_at = p.find(",\"key\":").unwrap() + 7;
    let key_end = p.find(",\"old\":").unwrap();
    let with_key = |k: &str| format!("{}{k}{}", &p[..key_at], &p[key_end..]);
    let tags_at = p.find("\"tags\":{").unwrap() + 7;
    let tags_end = p.find(",\"outcome\":").unwrap();
    let with_tags = |t: &str| format!("{}{t}{}", &p[..tags_at], &p[tags_end..]);
    vec![
        ("a header member in a record", p.replacen(",\"ts\":", ",\"segment\":1,\"ts\":", 1)),
        ("first_seq in a record", format!("{p},\"first_seq\":1")),
        ("an unknown member", format!("{p},\"extra\":1")),
        ("seq as 5.0", format!("{}{seq}.0{}", &p[..seq_at], &p[seq_end..])),
        ("seq as 5e0", format!("{}{seq}e0{}", &p[..seq_at], &p[seq_end..])),
        ("seq with a leading zero", format!("{}0{seq}{}", &p[..seq_at], &p[seq_end..])),
        ("seq spaced", format!("{} {seq}{}", &p[..seq_at], &p[seq_end..])),
        ("no reason", p.replacen(",\"reason\":null", "", 1)),
        ("reason twice", format!("{p},\"reason\":null")),
        ("no trace_id", p.replacen(",\"trace_id\":null", "", 1)),
        ("shard over u64", p.replacen("\"shard\":", "\"shard\":18446744073709551616", 1)),
        ("shard negative", p.replacen("\"shard\":", "\"shard\":-", 1)),
        ("ts with a signed year", with_ts(&|t| format!("+{}", &t[1..]))),
        ("ts with a space-padded year", with_ts(&|t| format!(" {}", &t[1..]))),
        ("ts at second 60", with_ts(&|t| format!("{}60{}", &t[..17], &t[19..]))),
        ("ts on February 30", with_ts(&|t| format!("2026-02-30{}", &t[10..]))),
        ("ts without Z", with_ts(&|t| format!("{}+", &t[..26]))),
        ("duplicate tag names", with_tags("{\"a\":\"1\",\"a\":\"2\"}")),
        ("unsorted tags", with_tags("{\"b\":\"1\",\"a\":\"2\"}")),
        ("a tag value not a string", with_tags("{\"a\":1}")),
        ("key with two full members", with_key("{\"full\":1,\"full\":1}")),
        ("key with a repeated name deep inside", with_key("{\"full\":[{\"a\":1,\"a\":2}]}")),
        ("key digest not hex", with_key("{\"digest\":\"zz\",\"key_id\":\"k\"}")),
        ("key redacted false", with_key("{\"redacted\":false}")),
        ("key a bare number", with_key("7")),
        ("key NaN", with_key("{\"full\":NaN}")),
        ("key with a lone surrogate", with_key("{\"full\":\"\\ud800\"}")),
        ("key with a raw carriage return", with_key("{\"full\":\"a\rb\"}")),
        ("key with a space", with_key("{\"full\":1 }")),
        ("key with an escaped slash", with_key("{\"full\":\"a\\/b\"}")),
        ("empty actor", p.replacen("\"actor\":\"unattributed\"", "\"actor\":\"\"", 1)),
        ("unknown op", p.replacen("\"op\":\"insert\"", "\"op\":\"frobnicate\"", 1)),
        ("outcome not a code", p.replacen("\"outcome\":\"ok\"", "\"outcome\":\"OK\"", 1)),
        ("v 2", p.replacen("\"v\":1", "\"v\":2", 1)),
        ("members reordered", format!("{{\"seq\":{seq},\"v\":1,{}", &p[seq_end + 1..])),
    ]
    .into_iter()
    .filter(|(_, v)| v != p)
    .collect()
}

/// Violations of a segment header's text before its `prev`.
fn header_violations(p: &str) -> Vec<(&'static str, String)> {
    let field = |name: &str| {
        let at = p.find(&format!(",\"{name}\":")).unwrap();
        let end = at + 1 + p[at + 1..].find(',').unwrap_or(p.len() - at - 1);
        (at, end)
    };
    let without = |name: &str| {
        let (at, end) = field(name);
        format!("{}{}", &p[..at], &p[end..])
    };
    vec![
        ("no prev_len", without("prev_len")),
        ("no first_seq", without("first_seq")),
        ("no recovered", without("recovered")),
        ("no key_id", without("key_id")),
        ("a record member in a header", format!("{p},\"seq\":1")),
        ("an actor in a header", p.replacen(",\"chain\":", ",\"actor\":\"x\",\"chain\":", 1)),
        ("prev_len as 5.0", p.replacen(",\"recovered\":", ".0,\"recovered\":", 1)),
        ("recovered as 1", p.replacen("\"recovered\":false", "\"recovered\":1", 1)),
        ("an unknown chain", p.replacen("\"chain\":\"sha256\"", "\"chain\":\"sha512\"", 1)),
        ("a sha256 key_id", p.replacen("\"key_id\":null", "\"key_id\":\"k\"", 1)),
        ("segment with a leading zero", p.replacen("\"segment\":", "\"segment\":0", 1)),
    ]
    .into_iter()
    .filter(|(_, v)| v != p)
    .collect()
}

fn corpus(key: &ChainKey, base: &[Vec<String>]) -> Vec<Case> {
    let sha = matches!(key, ChainKey::Sha256);
    let mut cases = Vec::new();
    let nseg = base.len();
    let last = nseg - 1;
    let case = |what: String, segs: Vec<Vec<String>>, want, at| Case { what, segs, want, at };
    cases.push(case("untouched".into(), base.to_vec(), Verdict::Intact, None));
    for s in 0..nseg {
        for l in 0..base[s].len() {
            let is_trail_end = s == last && l == base[s].len() - 1;
            // A byte edited (never into or out of a newline).
            let mut segs = base.to_vec();
            let line = &segs[s][l];
            let i = (l * 37 + 11) % (line.len() - 1);
            let b = line.as_bytes()[i];
            let nb = if b == b'0' {
                '1'
            } else if b.is_ascii_alphanumeric() {
                '0'
            } else {
                'x'
            };
            segs[s][l] = format!("{}{nb}{}", &line[..i], &line[i + 1..]);
            cases.push(case(
                format!("byte {i} of line {l} of segment {s} edited"),
                segs,
                Verdict::Tampered,
                Some((s, l)),
            ));
            // The line duplicated.
            let mut segs = base.to_vec();
            let copy = segs[s][l].clone();
            segs[s].insert(l + 1, copy);
            cases.push(case(
                format!("line {l} of segment {s} duplicated"),
                segs,
                Verdict::Tampered,
                Some((s, l + 1)),
            ));
            // The line removed.
            if !is_trail_end {
                let mut segs = base.to_vec();
                segs[s].remove(l);
                let at = if l < segs[s].len() { (s, l) } else { (s + 1, 0) };
                cases.push(case(
                    format!("line {l} of segment {s} removed"),
                    segs,
                    Verdict::Tampered,
                    Some(at),
                ));
            }
            // Swapped with the next line of its segment.
            if l + 1 < base[s].len() {
                let mut segs = base.to_vec();
                segs[s].swap(l, l + 1);
                cases.push(case(
                    format!("lines {l} and {} of segment {s} swapped", l + 1),
                    segs,
                    Verdict::Tampered,
                    Some((s, l)),
                ));
            }
            // Cut inside the line.
            let mut segs = base.to_vec();
            let cut = segs[s][l].len() / 2;
            segs[s][l].truncate(cut);
            segs.truncate(s + 1);
            segs[s].truncate(l + 1);
            let (want, at) =
                if s == 0 && l == 0 { (Verdict::Tampered, Some((0, 0))) } else { (Verdict::TornTail, None) };
            cases.push(case(format!("trail cut inside line {l} of segment {s}"), segs, want, at));
            // Cut after the line (the end of a trail is not protected by its chain).
            let mut segs = base.to_vec();
            segs.truncate(s + 1);
            segs[s].truncate(l + 1);
            let want = if l == 0 { Verdict::TornTail } else { Verdict::Intact };
            cases.push(case(format!("trail cut after line {l} of segment {s}"), segs, want, None));
            // Schema violations, re-sealed (and everything after them re-chained).
            if s == last || !sha {
                let p = pre(&base[s][l]).to_string();
                let violations = if l == 0 { header_violations(&p) } else { record_violations(&p) };
                for (what, bad) in violations {
                    let mut segs = base.to_vec();
                    segs[s][l] = format!("{bad}{}", &base[s][l][p.len()..]);
                    if sha {
                        rechain(&mut segs, s, l, key);
                    }
                    cases.push(case(
                        format!("{what} (line {l} of segment {s})"),
                        segs,
                        Verdict::Tampered,
                        Some((s, l)),
                    ));
                }
            }
        }
        // Whole segments.
        let mut segs = base.to_vec();
        segs[s].clear();
        let want = if s == last { Verdict::TornTail } else { Verdict::Tampered };
        cases.push(case(format!("segment {s} emptied"), segs, want, (s != last).then_some((s, 0))));
        if s < last {
            let mut segs = base.to_vec();
            segs.swap(s, s + 1);
            cases.push(case(
                format!("segments {s} and {} swapped", s + 1),
                segs,
                Verdict::Tampered,
                Some((s, 0)),
            ));
        }
    }
    // A legal rewrite of the last record's value: undetectable on SHA-256 (anyone can
    // re-seal), caught with the key on HMAC (the forger re-seals with SHA-256).
    let mut segs = base.to_vec();
    let l = segs[last].len() - 2;
    segs[last][l] = segs[last][l].replace("\"outcome\":\"ok\"", "\"outcome\":\"timeout\"");
    rechain(&mut segs, last, l, &ChainKey::Sha256);
    let want = if sha { Verdict::Intact } else { Verdict::Tampered };
    cases.push(case("a record re-sealed with SHA-256".into(), segs, want, (!sha).then_some((last, l))));
    if sha {
        // Year 0000 is a real (proleptic Gregorian, leap) year.
        let mut segs = base.to_vec();
        let ts_at = segs[last][1].find("\"ts\":\"").unwrap() + 6;
        segs[last][1].replace_range(ts_at..ts_at + 10, "0000-02-29");
        rechain(&mut segs, last, 1, key);
        cases.push(case("a record of 0000-02-29".into(), segs, Verdict::Intact, None));
        // A header marking its segment recovered after a failure that left half a line at
        // the end of the previous segment: the region after `prev_len` is discarded with a
        // note; a `prev_len` inside a line is tampering.
        if nseg >= 2 {
            let mut segs = base.to_vec();
            let prev_len: usize = segs[last - 1].iter().map(String::len).sum();
            segs[last - 1].push("{\"v\":1,\"seq\":99,\"ts\":\"2026-".into());
            let h = pre(&segs[last][0]).replace("\"recovered\":false", "\"recovered\":true");
            let prev = hash_of(&base[last - 1][base[last - 1].len() - 1]).to_string();
            segs[last][0] = seal(&h, &prev, key);
            rechain(&mut segs, last, 1, key);
            cases.push(case(
                "a recovered segment after half a line".into(),
                segs.clone(),
                Verdict::Intact,
                None,
            ));
            let h2 =
                h.replace(&format!("\"prev_len\":{prev_len}"), &format!("\"prev_len\":{}", prev_len - 1));
            segs[last][0] = seal(&h2, &prev, key);
            rechain(&mut segs, last, 1, key);
            let at = Some((last - 1, base[last - 1].len() - 1));
            cases.push(case("a recovered header cutting inside a line".into(), segs, Verdict::Tampered, at));
        }
    }
    cases
}

fn run_corpus(key: ChainKey) -> usize {
    let d = tmp();
    write_real_trail(d.path(), key.clone(), 1400);
    let base = read_trail(d.path());
    assert!(base.len() >= 3, "{} segments", base.len());
    let cases = corpus(&key, &base);
    let mut failures = Vec::new();
    for c in &cases {
        let dir = tmp();
        write_trail(dir.path(), &c.segs);
        let r = check(dir.path(), &key);
        let at = r
            .problem
            .as_ref()
            .map(|p| (verify::segment_of(Path::new(&p.file)).unwrap() as usize - 1, p.line as usize - 1));
        if r.verdict != c.want || (c.at.is_some() && at != c.at) {
            failures.push(format!("{}: want {:?} at {:?}, got {}", c.what, c.want, c.at, r.verdict_line()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
    cases.len()
}

#[test]
fn the_corpus_of_tampered_sha256_trails_gets_the_verdicts_of_the_spec() {
    let n = run_corpus(ChainKey::Sha256);
    assert!(n > 200, "{n} cases");
}

#[test]
fn the_corpus_of_tampered_hmac_trails_gets_the_verdicts_of_the_spec() {
    let n = run_corpus(hmac());
    assert!(n > 200, "{n} cases");
}
