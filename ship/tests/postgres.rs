//! The PostgreSQL sink against a real server started by the test (tests/support).
#![cfg(feature = "postgres")]

mod support;

use map_wrapper::audit::verify::Verdict;
use map_wrapper_ship::postgres::PostgresSink;
use map_wrapper_ship::{export, Record, RemoteSink, Shipper, ShipperConfig, SinkError, Until};
use support::{local_records, verdict, write_trail, Postgres};

fn migrated(pg: &Postgres) -> PostgresSink {
    let mut sink = PostgresSink::new(pg.url());
    sink.migrate().expect("migrate");
    sink.migrate().expect("the migration runs twice without harm");
    sink
}

fn sql(pg: &Postgres, role: &str, q: &str) -> Result<(), postgres::Error> {
    let mut c = postgres::Client::connect(&pg.url_as(role), postgres::NoTls).expect("connect");
    c.batch_execute(q)
}

/// Ships a trail, then exports it: every record once, byte for byte, and INTACT.
fn ship_and_export(pg: &Postgres, trail: &str, records: u64) -> (tempfile::TempDir, tempfile::TempDir) {
    let local = tempfile::tempdir().unwrap();
    write_trail(local.path(), records, 4096, 0);
    let mut shipper = Shipper::new(ShipperConfig::new(trail, local.path()), migrated(pg)).unwrap();
    let s = shipper.run(Until::CaughtUp).unwrap();
    let want = local_records(local.path());
    assert_eq!(s.shipped, want.len() as u64);
    let out = tempfile::tempdir().unwrap();
    let x = export(shipper.sink_mut(), trail, out.path()).unwrap();
    assert_eq!(x.records, want.len() as u64);
    assert_eq!(
        local_records(out.path()),
        want,
        "the remote copy holds the local lines, in order, byte for byte"
    );
    (local, out)
}

#[test]
fn shipped_trail_exports_intact_and_byte_identical_across_rotations() {
    let pg = Postgres::start();
    let (local, out) = ship_and_export(&pg, "rot", 500);
    let report = verdict(out.path());
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.human());
    assert!(report.segments > 5, "the trail rotated ({} segments)", report.segments);
    // Segment files come back identical, headers included.
    for (n, path) in map_wrapper::audit::list_segments(local.path()).unwrap() {
        let back = out.path().join(map_wrapper::audit::segment_file_name(n));
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&back).unwrap(), "segment {n}");
    }
    // A second shipper run from the remote cursor sends nothing again.
    let mut again =
        Shipper::new(ShipperConfig::new("rot", local.path()), PostgresSink::new(pg.url())).unwrap();
    assert_eq!(again.run(Until::CaughtUp).unwrap().shipped, 0);
}

#[test]
fn receiver_keeps_an_identical_resend_once_and_refuses_a_fork_and_a_gap() {
    let pg = Postgres::start();
    let mut sink = migrated(&pg);
    let recs: Vec<Record> = (1..=3)
        .map(|s| Record::new(s, vec![], format!(r#"{{"v":1,"seq":{s},"x":1}}"#).into_bytes()))
        .collect();
    assert_eq!(sink.send("t", &recs).unwrap().last_seq, 3);
    // At-least-once: the same batch again is acknowledged and stored once.
    assert_eq!(sink.send("t", &recs[1..]).unwrap().last_seq, 3);
    assert_eq!(sink.read("t", 1, 100).unwrap(), recs);
    // A different line under seq 2: a fork, refused, nothing changed.
    let forked = Record::new(2, vec![], br#"{"v":1,"seq":2,"x":2}"#.to_vec());
    assert!(matches!(sink.send("t", &[forked]), Err(SinkError::Fork { seq: 2, .. })));
    // seq 5 after 3: a gap, refused by the server's trigger.
    let gap = Record::new(5, vec![], br#"{"v":1,"seq":5}"#.to_vec());
    assert!(matches!(sink.send("t", &[gap]), Err(SinkError::Gap { sent: 5, last: 3, .. })));
    // A trail starts at seq 1.
    let late = Record::new(2, vec![], br#"{"v":1,"seq":2}"#.to_vec());
    assert!(matches!(sink.send("other", &[late]), Err(SinkError::Gap { sent: 2, last: 0, .. })));
    assert_eq!(sink.read("t", 1, 100).unwrap(), recs);
    assert_eq!(sink.last_acked("t").unwrap(), Some(3));
}

#[test]
fn a_role_without_owner_rights_cannot_update_or_delete_and_the_trigger_stops_the_owner() {
    let pg = Postgres::start();
    ship_and_export(&pg, "locked", 20);
    sql(&pg, "owner", "CREATE ROLE shipper LOGIN; GRANT SELECT, INSERT ON map_wrapper_audit TO shipper;")
        .unwrap();
    // The shipper's role: reads and appends, nothing else.
    let mut shipper_sink = PostgresSink::new(pg.url_as("shipper"));
    assert!(shipper_sink.last_acked("locked").unwrap().unwrap() > 10);
    for q in [
        "UPDATE map_wrapper_audit SET line = 'x' WHERE seq = 3",
        "DELETE FROM map_wrapper_audit WHERE seq = 3",
        "TRUNCATE map_wrapper_audit",
        "ALTER TABLE map_wrapper_audit DISABLE TRIGGER USER",
    ] {
        let e = sql(&pg, "shipper", q).expect_err(q);
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{q}: permission denied, got {e}");
    }
    // The owner is stopped by the trigger.
    for q in [
        "UPDATE map_wrapper_audit SET line = 'x' WHERE seq = 3",
        "DELETE FROM map_wrapper_audit WHERE seq = 3",
        "TRUNCATE map_wrapper_audit",
    ] {
        let e = sql(&pg, "owner", q).expect_err(q);
        assert_eq!(e.code().map(|c| c.code()), Some("MW002"), "{q}: append-only trigger, got {e}");
    }
    let mut owner = PostgresSink::new(pg.url());
    assert_eq!(
        owner.read("locked", 3, 1).unwrap()[0].line,
        shipper_sink.read("locked", 3, 1).unwrap()[0].line
    );
}

/// Someone who can drop the trigger (a superuser) edits the remote copy: the export of the
/// edited copy is TAMPERED at the record touched.
#[test]
fn a_remote_copy_with_a_record_edited_deleted_or_reordered_exports_tampered() {
    let pg = Postgres::start();
    let tamper = |q: &str| {
        sql(&pg, "owner", &format!("ALTER TABLE map_wrapper_audit DISABLE TRIGGER USER; {q}; ALTER TABLE map_wrapper_audit ENABLE TRIGGER USER;"))
            .unwrap()
    };
    let cases = [
        ("edited", 7, "UPDATE map_wrapper_audit SET line = convert_to(replace(convert_from(line, 'UTF8'), 'value-', 'VALUE-'), 'UTF8') WHERE trail = 'edited' AND seq = 7"),
        ("deleted", 8, "DELETE FROM map_wrapper_audit WHERE trail = 'deleted' AND seq = 7"),
        (
            "reordered",
            8,
            "UPDATE map_wrapper_audit a SET line = b.line, header = b.header FROM map_wrapper_audit b \
             WHERE a.trail = 'reordered' AND b.trail = 'reordered' AND ((a.seq = 7 AND b.seq = 8) OR (a.seq = 8 AND b.seq = 7))",
        ),
    ];
    // `bad`: the seq the verifier names (the record found where seq 7 was expected).
    for (trail, bad, q) in cases {
        let (_local, out) = ship_and_export(&pg, trail, 30);
        assert_eq!(verdict(out.path()).verdict, Verdict::Intact);
        tamper(q);
        let again = tempfile::tempdir().unwrap();
        export(&mut PostgresSink::new(pg.url()), trail, again.path()).unwrap();
        let report = verdict(again.path());
        assert_eq!(report.verdict, Verdict::Tampered, "{trail}: {}", report.human());
        assert_eq!(report.problem.as_ref().and_then(|p| p.seq), Some(bad), "{trail}: {}", report.human());
    }
}

/// The remote loses its newest rows (restored from an older backup) while the shipper runs:
/// the next send is refused as a gap, the shipper asks the remote where it really is and
/// ships the missing records again from the local trail.
#[test]
fn a_remote_that_went_back_is_refilled_from_the_local_trail() {
    let pg = Postgres::start();
    let local = tempfile::tempdir().unwrap();
    write_trail(local.path(), 50, 4096, 0);
    let mut shipper = Shipper::new(ShipperConfig::new("restored", local.path()), migrated(&pg)).unwrap();
    let handle = shipper.handle();
    let run = std::thread::spawn(move || shipper.run(Until::Stopped));
    let wait_for = |seq: u64| {
        let start = std::time::Instant::now();
        while PostgresSink::new(pg.url()).last_acked("restored").unwrap() != Some(seq) {
            assert!(start.elapsed() < std::time::Duration::from_secs(60), "remote never reached seq {seq}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_for(52);
    sql(
        &pg,
        "owner",
        "ALTER TABLE map_wrapper_audit DISABLE TRIGGER USER; DELETE FROM map_wrapper_audit WHERE seq > 40; \
         ALTER TABLE map_wrapper_audit ENABLE TRIGGER USER;",
    )
    .unwrap();
    write_trail(local.path(), 50, 4096, 0); // the trail goes on (reopened: audit_start … audit_stop)
    let want = local_records(local.path());
    wait_for(want.len() as u64);
    handle.stop();
    run.join().unwrap().unwrap();
    let out = tempfile::tempdir().unwrap();
    export(&mut PostgresSink::new(pg.url()), "restored", out.path()).unwrap();
    assert_eq!(local_records(out.path()), want);
    assert_eq!(verdict(out.path()).verdict, Verdict::Intact);
}

/// The gap trigger checks a whole statement at once (contiguous seqs, the lowest one's
/// predecessor held): a statement that inserts a contiguous run after the last seq passes, one
/// with a hole inside, or not starting after the last, is refused (MW001) and names the seq.
#[test]
fn the_gap_trigger_refuses_a_hole_inside_one_statement_and_a_run_that_does_not_follow() {
    let pg = Postgres::start();
    PostgresSink::new(pg.url()).migrate().unwrap();
    let ins = |seqs: &str| {
        sql(
            &pg,
            "owner",
            &format!(
                "INSERT INTO map_wrapper_audit (trail, seq, line) SELECT 'g', s, 'x'::bytea FROM unnest('{{{seqs}}}'::bigint[]) s"
            ),
        )
    };
    ins("1,2,3").unwrap();
    for (bad, named) in [("4,6", "seq 6 without seq 5"), ("5,6", "seq 5 without seq 4")] {
        let e = ins(bad).expect_err(bad);
        assert_eq!(e.code().map(|c| c.code()), Some("MW001"), "{bad}: {e}");
        let msg = e.as_db_error().unwrap().message().to_owned();
        assert!(msg.contains(named), "{bad}: {msg}");
    }
    ins("4,5,6").unwrap();
    assert_eq!(PostgresSink::new(pg.url()).last_acked("g").unwrap(), Some(6));
}
