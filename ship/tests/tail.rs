//! The tailer on hand-made trails: torn last lines, rotation, recovered segments. (The
//! tailer does not check hashes — the verifier does — so the lines here carry none.)

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use map_wrapper::audit::segment_file_name;
use map_wrapper_ship::{Error, Record, Tailer};

fn header(segment: u64, first_seq: u64, prev_len: u64, recovered: bool) -> String {
    format!(
        r#"{{"v":1,"segment":{segment},"ts":"2026-12-02T12:00:00.000000Z","chain":"sha256","key_id":null,"first_seq":{first_seq},"prev_len":{prev_len},"recovered":{recovered},"prev":"p","hash":"h"}}"#
    ) + "\n"
}

fn rec(seq: u64) -> String {
    format!(r#"{{"v":1,"seq":{seq},"ts":"2026-12-02T12:00:00.000000Z","op":"insert"}}"#) + "\n"
}

fn append(dir: &Path, seg: u64, text: &str) {
    let mut f = OpenOptions::new().create(true).append(true).open(dir.join(segment_file_name(seg))).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn seqs(out: &[Record]) -> Vec<u64> {
    out.iter().map(|r| r.seq).collect()
}

#[test]
fn a_torn_last_line_is_taken_only_once_its_newline_arrives() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), 1, &(header(1, 1, 0, false) + &rec(1)));
    let mut t = Tailer::open(dir.path(), 0).unwrap();
    let mut out = Vec::new();
    assert_eq!(t.poll(100, &mut out).unwrap(), 1);
    assert_eq!(
        out[0].header,
        header(1, 1, 0, false).into_bytes(),
        "the segment header travels with record 1"
    );
    let line2 = rec(2);
    let (a, b) = line2.split_at(20);
    append(dir.path(), 1, a);
    assert_eq!(t.poll(100, &mut out).unwrap(), 0, "half a line is not a record");
    append(dir.path(), 1, b);
    assert_eq!(t.poll(100, &mut out).unwrap(), 1);
    assert_eq!(out[1].line, line2.trim_end().as_bytes());
}

#[test]
fn a_torn_line_cut_off_by_a_reopening_writer_is_never_shipped() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), 1, &(header(1, 1, 0, false) + &rec(1)));
    let good_len = std::fs::metadata(dir.path().join(segment_file_name(1))).unwrap().len();
    append(dir.path(), 1, r#"{"v":1,"seq":2,"ts":"torn"#);
    let mut t = Tailer::open(dir.path(), 0).unwrap();
    let mut out = Vec::new();
    assert_eq!(t.poll(100, &mut out).unwrap(), 1);
    // The writer reopens: cuts the torn bytes, writes its sink_gap record as seq 2.
    let f = OpenOptions::new().write(true).open(dir.path().join(segment_file_name(1))).unwrap();
    f.set_len(good_len).unwrap();
    append(dir.path(), 1, &rec(2));
    assert_eq!(t.poll(100, &mut out).unwrap(), 1);
    assert_eq!(out[1].line, rec(2).trim_end().as_bytes());
}

#[test]
fn rotation_is_followed_and_a_resumed_tailer_starts_after_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut seg1 = header(1, 1, 0, false);
    for s in 1..=3 {
        seg1 += &rec(s);
    }
    append(dir.path(), 1, &seg1);
    let mut t = Tailer::open(dir.path(), 0).unwrap();
    let mut out = Vec::new();
    t.poll(100, &mut out).unwrap();
    append(dir.path(), 2, &(header(2, 4, seg1.len() as u64, false) + &rec(4) + &rec(5)));
    t.poll(100, &mut out).unwrap();
    assert_eq!(seqs(&out), [1, 2, 3, 4, 5]);
    assert_eq!(out[3].header, header(2, 4, seg1.len() as u64, false).into_bytes());
    // Resume after seq 3: segment 2 only, with its header attached to record 4.
    let mut r = Tailer::open(dir.path(), 3).unwrap();
    let mut again = Vec::new();
    r.poll(100, &mut again).unwrap();
    assert_eq!(again, out[3..]);
}

#[test]
fn the_abandoned_tail_of_a_segment_before_a_recovered_segment_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let seg1 = header(1, 1, 0, false) + &rec(1);
    append(dir.path(), 1, &seg1);
    append(dir.path(), 1, r#"{"v":1,"seq":2,"half"#); // a write that failed half way
    let mut t = Tailer::open(dir.path(), 0).unwrap();
    let mut out = Vec::new();
    t.poll(100, &mut out).unwrap();
    // The writer goes on in a recovered segment whose prev_len ends before the torn bytes.
    append(dir.path(), 2, &(header(2, 2, seg1.len() as u64, true) + &rec(2)));
    t.poll(100, &mut out).unwrap();
    assert_eq!(seqs(&out), [1, 2]);
    assert_eq!(out[1].line, rec(2).trim_end().as_bytes());
}

#[test]
fn lines_already_read_past_a_recovered_segments_prev_len_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let seg1 = header(1, 1, 0, false) + &rec(1);
    append(dir.path(), 1, &(seg1.clone() + &rec(2)));
    let mut t = Tailer::open(dir.path(), 0).unwrap();
    let mut out = Vec::new();
    t.poll(100, &mut out).unwrap();
    append(dir.path(), 2, &(header(2, 2, seg1.len() as u64, true) + &rec(2)));
    assert!(matches!(t.poll(100, &mut out), Err(Error::Abandoned { segment: 1, .. })));
}

#[test]
fn a_local_sequence_gap_is_an_error_not_a_silent_skip() {
    let dir = tempfile::tempdir().unwrap();
    append(dir.path(), 1, &(header(1, 1, 0, false) + &rec(1) + &rec(3)));
    let mut t = Tailer::open(dir.path(), 0).unwrap();
    let mut out = Vec::new();
    assert!(matches!(t.poll(100, &mut out), Err(Error::LocalGap { expected: 2, found: 3, .. })));
}

#[test]
fn a_new_segment_whose_header_is_not_written_yet_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let seg1 = header(1, 1, 0, false) + &rec(1);
    append(dir.path(), 1, &seg1);
    append(dir.path(), 2, ""); // created, header not written yet
    let mut t = Tailer::open(dir.path(), 0).unwrap();
    let mut out = Vec::new();
    assert_eq!(t.poll(100, &mut out).unwrap(), 1);
    let h = header(2, 2, seg1.len() as u64, false);
    append(dir.path(), 2, &h[..10]);
    assert_eq!(t.poll(100, &mut out).unwrap(), 0);
    append(dir.path(), 2, &(h[10..].to_string() + &rec(2)));
    assert_eq!(t.poll(100, &mut out).unwrap(), 1);
    assert_eq!(seqs(&out), [1, 2]);
}
