//! Tamper tests through the `map-wrapper-audit` binary: each kind of tampering is detected,
//! with the right exit status and the first bad seq and byte offset.

use std::path::Path;
use std::process::Command;

use map_wrapper::audit::{
    AuditEvent, Auditor, Chain, ChainKey, Encoded, EventFields, JsonLinesOptions, JsonLinesSink,
};
use map_wrapper::MapWrapper;

const HMAC_KEY: &[u8] = b"an audit key of thirty-two bytes";

/// Lower-case hex, the format of an `--hmac-key-file`.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A closed trail: header, `audit_start` (seq 1), inserts of 0..10 (seq 2..=11), `audit_stop`
/// (seq 12).
fn trail(dir: &Path, key: ChainKey, max_segment_bytes: u64) {
    let opts = JsonLinesOptions { chain_key: key, max_segment_bytes, ..Default::default() };
    let sink = JsonLinesSink::open(dir, opts).unwrap();
    let map: MapWrapper<u32, u32> =
        MapWrapper::builder().name("t").auditor(Auditor::new(sink)).build().unwrap();
    for i in 0..10 {
        map.insert(i, i).unwrap();
    }
}

fn seg(dir: &Path) -> std::path::PathBuf {
    dir.join("segment-000001.jsonl")
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(seg(dir)).unwrap().lines().map(|l| format!("{l}\n")).collect()
}

fn write(dir: &Path, lines: &[String]) {
    std::fs::write(seg(dir), lines.concat()).unwrap();
}

/// Byte offset of line `i` (0 = header).
fn offset(lines: &[String], i: usize) -> usize {
    lines[..i].iter().map(String::len).sum()
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_map-wrapper-audit")).args(args).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap())
}

fn verify(dir: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["verify", "--json"];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let (code, out) = run(&args);
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

fn first_bad(report: &serde_json::Value) -> (u64, usize) {
    let p = &report["problem"];
    (p["seq"].as_u64().unwrap(), p["offset"].as_u64().unwrap() as usize)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn an_untouched_trail_is_intact() {
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1 << 20);
    let (code, out) = run(&["verify", d.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("INTACT records=12 segments=1 seq=1..12"), "{out}");
}

#[test]
fn an_edited_field_is_caught_at_its_record() {
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1 << 20);
    let mut l = lines(d.path());
    // Line 5 is seq 5: the insert of 3.
    assert!(l[5].contains("\"seq\":5,") && l[5].contains("\"new\":{\"full\":3}"));
    l[5] = l[5].replace("\"new\":{\"full\":3}", "\"new\":{\"full\":4}");
    write(d.path(), &l);
    let (code, r) = verify(d.path(), &[]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(first_bad(&r), (5, offset(&l, 5)));
    assert!(r["problem"]["what"].as_str().unwrap().contains("hash"), "{r}");
}

#[test]
fn a_deleted_line_is_caught_at_the_next_record() {
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1 << 20);
    let mut l = lines(d.path());
    let at = offset(&l, 5);
    l.remove(5);
    write(d.path(), &l);
    let (code, r) = verify(d.path(), &[]);
    assert_eq!(code, 1);
    assert_eq!(first_bad(&r), (6, at));
}

#[test]
fn swapped_lines_are_caught_at_the_first_of_them() {
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1 << 20);
    let mut l = lines(d.path());
    let at = offset(&l, 5);
    l.swap(5, 6);
    write(d.path(), &l);
    let (code, r) = verify(d.path(), &[]);
    assert_eq!(code, 1);
    assert_eq!(first_bad(&r), (6, at));
}

#[test]
fn a_duplicated_line_is_caught_at_the_copy() {
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1 << 20);
    let mut l = lines(d.path());
    let copy = l[5].clone();
    l.insert(6, copy);
    write(d.path(), &l);
    let (code, r) = verify(d.path(), &[]);
    assert_eq!(code, 1);
    assert_eq!(first_bad(&r), (5, offset(&l, 6)));
}

#[test]
fn a_line_cut_mid_way_is_a_torn_tail_and_reopening_repairs_it_with_a_record() {
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1 << 20);
    let l = lines(d.path());
    let mut cut = l[..12].concat();
    let at = cut.len();
    cut.push_str(&l[12][..40]);
    std::fs::write(seg(d.path()), &cut).unwrap();
    let (code, r) = verify(d.path(), &[]);
    assert_eq!(code, 2, "{r}");
    assert_eq!(r["verdict"], "torn_tail");
    assert_eq!(r["torn_tail"]["offset"].as_u64().unwrap() as usize, at);
    assert_eq!(r["last_seq"], 11);

    drop(JsonLinesSink::open(d.path(), JsonLinesOptions::default()).unwrap());
    let (code, r) = verify(d.path(), &[]);
    assert_eq!(code, 0, "{r}");
    let text = std::fs::read_to_string(seg(d.path())).unwrap();
    let gap = text.lines().find(|l| l.contains("\"op\":\"sink_gap\"")).expect("a sink_gap record");
    assert!(gap.contains(&format!("40 bytes at offset {at}")), "{gap}");
    assert!(gap.contains("\"seq\":12,"), "the repair record takes the torn record's seq: {gap}");
}

/// The next record, sealed with a freshly computed SHA-256 as a forger would.
fn forge(l: &[String]) -> String {
    let last: serde_json::Value = serde_json::from_str(l.last().unwrap()).unwrap();
    let mut chain = Chain::resume(
        ChainKey::Sha256,
        last["seq"].as_u64().unwrap() + 1,
        last["hash"].as_str().unwrap().to_string(),
    );
    let event = AuditEvent::new(EventFields {
        map: Some("t"),
        shard: Some(0),
        op: "insert",
        key: Encoded::NONE,
        old: Encoded::NONE,
        new: Encoded::NONE,
        actor: "mallory",
        trace_id: None,
        tags: &[],
        outcome: "ok",
        reason: None,
        latency_ns: 1,
    });
    let mut line = String::new();
    chain.seal_event(&event, &mut line);
    line
}

#[test]
fn a_forged_line_with_a_recomputed_sha256_passes_a_plain_chain_but_not_an_hmac_one() {
    // Plain SHA-256: anyone can extend the chain (what HMAC is for).
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1 << 20);
    let mut l = lines(d.path());
    l.push(forge(&l));
    write(d.path(), &l);
    assert_eq!(verify(d.path(), &[]).0, 0);

    // HMAC: the forged line is caught.
    let d = tmp();
    trail(d.path(), ChainKey::Hmac { id: "k1".into(), key: HMAC_KEY.to_vec() }, 1 << 20);
    let key_file = d.path().join("key.hex");
    std::fs::write(&key_file, to_hex(HMAC_KEY) + "\n").unwrap();
    let key_arg = key_file.to_str().unwrap();
    assert_eq!(verify(d.path(), &["--hmac-key-file", key_arg]).0, 0);
    let mut l = lines(d.path());
    let at = offset(&l, l.len());
    l.push(forge(&l));
    write(d.path(), &l);
    let (code, r) = verify(d.path(), &["--hmac-key-file", key_arg]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(first_bad(&r), (13, at));

    // Without the key an HMAC trail cannot be judged; with a wrong key it does not verify.
    assert_eq!(verify(d.path(), &[]).0, 3);
    std::fs::write(&key_file, to_hex(b"another key")).unwrap();
    let (code, r) = verify(d.path(), &["--hmac-key-file", key_arg]);
    assert_eq!(code, 1);
    assert_eq!(first_bad(&r).0, 1, "the header already fails: {r}");
}

#[test]
fn links_are_checked_across_segments() {
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1200);
    let segs = map_wrapper::audit::list_segments(d.path()).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    let (code, r) = verify(d.path(), &[]);
    assert_eq!((code, r["records"].as_u64()), (0, Some(12)), "{r}");

    // Removing a whole middle segment breaks the link.
    std::fs::remove_file(&segs[1].1).unwrap();
    let (code, r) = verify(d.path(), &[]);
    assert_eq!(code, 1, "{r}");
    assert!(r["problem"]["file"].as_str().unwrap().ends_with(&format!("segment-{:06}.jsonl", segs[2].0)));
}

#[test]
fn usage_and_io_errors_exit_with_3() {
    assert_eq!(run(&["verify"]).0, 3);
    assert_eq!(run(&["verify", "/nonexistent/trail"]).0, 3);
    assert_eq!(run(&["frobnicate"]).0, 3);
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1 << 20);
    let bad_key = d.path().join("k");
    std::fs::write(&bad_key, "not hex").unwrap();
    assert_eq!(
        run(&["verify", "--hmac-key-file", bad_key.to_str().unwrap(), d.path().to_str().unwrap()]).0,
        3
    );
}

#[test]
fn show_prints_one_keys_history() {
    let d = tmp();
    let sink = JsonLinesSink::open(d.path(), JsonLinesOptions::default()).unwrap();
    let map: MapWrapper<String, u32> =
        MapWrapper::builder().name("m").auditor(Auditor::new(sink)).build().unwrap();
    map.insert("alice".into(), 1).unwrap();
    map.insert("bob".into(), 5).unwrap();
    map.update("alice", |v| *v += 1).unwrap();
    map.remove("alice").unwrap();
    drop(map);
    let (code, out) = run(&["show", "--key", "alice", d.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    let ops: Vec<&str> = out.lines().map(|l| l.split(' ').nth(3).unwrap()).collect();
    assert_eq!(ops, ["insert", "update", "remove"], "{out}");
    assert!(out.lines().nth(1).unwrap().contains("old={\"full\":1} new={\"full\":2}"), "{out}");
}

#[test]
fn show_with_map_keeps_only_that_maps_records_of_the_key() {
    let d = tmp();
    let sink = JsonLinesSink::open(d.path(), JsonLinesOptions::default()).unwrap();
    let auditor = Auditor::new(sink);
    let tenants: MapWrapper<String, u32> =
        MapWrapper::builder().name("tenants").auditor(auditor.clone()).build().unwrap();
    let quotas: MapWrapper<String, u32> =
        MapWrapper::builder().name("quotas").auditor(auditor).build().unwrap();
    tenants.insert("acme".into(), 1).unwrap();
    quotas.insert("acme".into(), 100).unwrap();
    tenants.remove("acme").unwrap();
    drop((tenants, quotas));
    let path = d.path().to_str().unwrap();
    let (code, out) = run(&["show", "--key", "acme", path]);
    assert_eq!((code, out.lines().count()), (0, 3), "both maps without --map: {out}");
    let (code, out) = run(&["show", "--key", "acme", "--map", "quotas", path]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(" quotas insert ") && out.contains("new={\"full\":100}"), "{out}");
    let (code, out) = run(&["show", "--key", "acme", "--map", "nosuch", path]);
    assert_eq!((code, out.lines().count()), (0, 0), "{out}");
}

#[test]
fn the_last_line_of_a_segment_removed_is_caught_at_the_next_header() {
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1200);
    let segs = map_wrapper::audit::list_segments(d.path()).unwrap();
    let text = std::fs::read_to_string(&segs[0].1).unwrap();
    let mut l: Vec<String> = text.lines().map(|l| format!("{l}\n")).collect();
    let removed: serde_json::Value = serde_json::from_str(&l.pop().unwrap()).unwrap();
    std::fs::write(&segs[0].1, l.concat()).unwrap();
    let (code, r) = verify(d.path(), &[]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(first_bad(&r), (removed["seq"].as_u64().unwrap(), 0));
    assert!(r["problem"]["file"].as_str().unwrap().ends_with("segment-000002.jsonl"), "{r}");
}

#[test]
fn deleting_the_oldest_segments_is_tampering_unless_the_prune_point_is_given() {
    for key in [ChainKey::Sha256, ChainKey::Hmac { id: "k".into(), key: HMAC_KEY.to_vec() }] {
        let d = tmp();
        trail(d.path(), key.clone(), 1200);
        let key_file = d.path().join("key.hex");
        std::fs::write(&key_file, to_hex(HMAC_KEY)).unwrap();
        let key_args: Vec<&str> = match key {
            ChainKey::Hmac { .. } => vec!["--hmac-key-file", key_file.to_str().unwrap()],
            ChainKey::Sha256 => vec![],
        };
        let segs = map_wrapper::audit::list_segments(d.path()).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");
        // The hash the second segment continues from: the last line of the first.
        let first = std::fs::read_to_string(&segs[0].1).unwrap();
        let last: serde_json::Value = serde_json::from_str(first.lines().last().unwrap()).unwrap();
        let anchor = last["hash"].as_str().unwrap().to_string();
        std::fs::remove_file(&segs[0].1).unwrap();

        let (code, r) = verify(d.path(), &key_args);
        assert_eq!(code, 1, "{r}");
        assert!(r["problem"]["what"].as_str().unwrap().contains("starts at segment 2"), "{r}");

        // Pruned on purpose: the caller names the hash the trail continues from.
        let mut args = key_args.clone();
        args.extend(["--expect-prev", &anchor]);
        let (code, r) = verify(d.path(), &args);
        assert_eq!(code, 0, "{r}");
        assert!(r["notes"][0].as_str().unwrap().contains("starts at segment 2"), "{r}");
        // A wrong anchor is caught.
        let mut args = key_args.clone();
        let wrong = "1".repeat(64);
        args.extend(["--expect-prev", &wrong]);
        assert_eq!(verify(d.path(), &args).0, 1);
    }
}

#[test]
fn an_edited_complete_last_line_is_tampering_and_open_refuses_to_cut_it() {
    let key = ChainKey::Hmac { id: "k".into(), key: HMAC_KEY.to_vec() };
    let d = tmp();
    trail(d.path(), key.clone(), 1 << 20);
    let key_file = d.path().join("key.hex");
    std::fs::write(&key_file, to_hex(HMAC_KEY)).unwrap();
    let mut l = lines(d.path());
    // Drop audit_stop (undetectable: truncation at a line boundary), then upper-case one hex
    // digit of the last insert's hash: a complete line that no longer parses.
    l.pop();
    let last = l.pop().unwrap();
    assert!(last.contains("\"op\":\"insert\""));
    let i = last.len() - 4;
    let mut b = last.into_bytes();
    b[i] = b[i].to_ascii_uppercase().max(b'A');
    l.push(String::from_utf8(b).unwrap());
    write(d.path(), &l);
    let before = std::fs::read(seg(d.path())).unwrap();

    let (code, r) = verify(d.path(), &["--hmac-key-file", key_file.to_str().unwrap()]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(first_bad(&r), (11, offset(&l, 11)), "{r}");

    let opened = JsonLinesSink::open(d.path(), JsonLinesOptions { chain_key: key, ..Default::default() });
    assert!(opened.unwrap_err().to_string().contains("tampering"));
    assert_eq!(std::fs::read(seg(d.path())).unwrap(), before, "nothing was cut off");
}

#[test]
fn opening_an_hmac_trail_with_the_wrong_secret_is_refused_and_writes_nothing() {
    let d = tmp();
    trail(d.path(), ChainKey::Hmac { id: "k".into(), key: HMAC_KEY.to_vec() }, 1 << 20);
    let before = std::fs::read(seg(d.path())).unwrap();
    let wrong = ChainKey::Hmac { id: "k".into(), key: b"the same id, another secret".to_vec() };
    let opened = JsonLinesSink::open(d.path(), JsonLinesOptions { chain_key: wrong, ..Default::default() });
    let e = opened.unwrap_err().to_string();
    assert!(e.contains("wrong key"), "{e}");
    assert_eq!(std::fs::read(seg(d.path())).unwrap(), before, "nothing was appended");
    assert_eq!(map_wrapper::audit::list_segments(d.path()).unwrap().len(), 1);
    // The right key still opens it.
    let right = ChainKey::Hmac { id: "k".into(), key: HMAC_KEY.to_vec() };
    drop(JsonLinesSink::open(d.path(), JsonLinesOptions { chain_key: right, ..Default::default() }).unwrap());
    let key_file = d.path().join("key.hex");
    std::fs::write(&key_file, to_hex(HMAC_KEY)).unwrap();
    assert_eq!(verify(d.path(), &["--hmac-key-file", key_file.to_str().unwrap()]).0, 0);
}

#[test]
fn a_removed_segment_header_in_an_hmac_trail_is_tampering_not_a_usage_error() {
    let d = tmp();
    trail(d.path(), ChainKey::Hmac { id: "k".into(), key: HMAC_KEY.to_vec() }, 1200);
    let key_file = d.path().join("key.hex");
    std::fs::write(&key_file, to_hex(HMAC_KEY)).unwrap();
    let segs = map_wrapper::audit::list_segments(d.path()).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    let text = std::fs::read_to_string(&segs[1].1).unwrap();
    std::fs::write(&segs[1].1, text.split_once('\n').unwrap().1).unwrap();
    let (code, r) = verify(d.path(), &["--hmac-key-file", key_file.to_str().unwrap()]);
    assert_eq!(code, 1, "{r}");
    assert!(r["problem"]["file"].as_str().unwrap().ends_with("segment-000002.jsonl"), "{r}");
    assert_eq!(r["problem"]["line"].as_u64(), Some(1), "{r}");
    // Without the key, an HMAC trail still cannot be checked at all: a usage error.
    assert_eq!(verify(d.path(), &[]).0, 3);
}

#[test]
fn show_prints_only_verified_records_and_fails_on_a_tampered_trail() {
    let d = tmp();
    let sink = JsonLinesSink::open(d.path(), JsonLinesOptions::default()).unwrap();
    let map: MapWrapper<String, u32> =
        MapWrapper::builder().name("m").auditor(Auditor::new(sink)).build().unwrap();
    map.insert("alice".into(), 1).unwrap();
    map.insert("alice".into(), 2).unwrap();
    map.insert("alice".into(), 3).unwrap();
    drop(map);
    let path = d.path().to_str().unwrap();
    let (code, out) = run(&["show", "--key", "alice", path]);
    assert_eq!((code, out.lines().count()), (0, 3), "{out}");
    // Edit the second insert (seq 3): only the first is shown, and the status says tampered.
    let mut l = lines(d.path());
    assert!(l[3].contains("\"seq\":3,"), "{}", l[3]);
    l[3] = l[3].replace("\"new\":{\"full\":2}", "\"new\":{\"full\":9}");
    write(d.path(), &l);
    let (code, out) = run(&["show", "--key", "alice", path]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("new={\"full\":1}") && !out.contains("\"full\":9"), "{out}");
}

#[test]
fn a_malformed_expect_prev_is_a_usage_error_exit_3() {
    let d = tmp();
    trail(d.path(), ChainKey::Sha256, 1 << 20);
    for bad in ["abc", &"g".repeat(64), &"0".repeat(63), &format!(" {}", "0".repeat(64))] {
        let (code, _) = run(&["verify", "--expect-prev", bad, d.path().to_str().unwrap()]);
        assert_eq!(code, 3, "{bad:?}");
    }
}
