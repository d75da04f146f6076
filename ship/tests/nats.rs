//! The NATS JetStream sink against a real `nats-server -js` started by the test.
#![cfg(feature = "nats")]

mod support;

use map_wrapper::audit::verify::Verdict;
use map_wrapper_ship::nats::NatsSink;
use map_wrapper_ship::{export, Record, RemoteSink, Shipper, ShipperConfig, SinkError, Until};
use support::{local_records, verdict, write_trail, Nats};

#[test]
fn shipped_trail_exports_intact_and_byte_identical_across_rotations() {
    let nats = Nats::start();
    let local = tempfile::tempdir().unwrap();
    write_trail(local.path(), 500, 4096, 0);
    let mut shipper =
        Shipper::new(ShipperConfig::new("rot", local.path()), NatsSink::new(nats.url()).unwrap()).unwrap();
    let want = local_records(local.path());
    assert_eq!(shipper.run(Until::CaughtUp).unwrap().shipped, want.len() as u64);
    let out = tempfile::tempdir().unwrap();
    export(shipper.sink_mut(), "rot", out.path()).unwrap();
    assert_eq!(local_records(out.path()), want);
    let report = verdict(out.path());
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.human());
    assert!(report.segments > 5);
    let mut again =
        Shipper::new(ShipperConfig::new("rot", local.path()), NatsSink::new(nats.url()).unwrap()).unwrap();
    assert_eq!(again.run(Until::CaughtUp).unwrap().shipped, 0, "resumes from the stream's last seq");
}

#[test]
fn the_server_keeps_an_identical_resend_once_and_refuses_a_fork_and_a_gap() {
    let nats = Nats::start();
    let mut sink = NatsSink::new(nats.url()).unwrap();
    let recs: Vec<Record> = (1..=3)
        .map(|s| Record::new(s, vec![], format!(r#"{{"v":1,"seq":{s},"x":1}}"#).into_bytes()))
        .collect();
    assert_eq!(sink.send("t", &recs).unwrap().last_seq, 3);
    // Inside the duplicate window (Nats-Msg-Id) and outside it alike: acknowledged, kept once.
    assert_eq!(sink.send("t", &recs[1..]).unwrap().last_seq, 3);
    assert_eq!(sink.read("t", 1, 100).unwrap(), recs);
    let forked = Record::new(2, vec![], br#"{"v":1,"seq":2,"x":2}"#.to_vec());
    assert!(matches!(sink.send("t", &[forked]), Err(SinkError::Fork { seq: 2, .. })));
    let gap = Record::new(5, vec![], br#"{"v":1,"seq":5}"#.to_vec());
    assert!(matches!(sink.send("t", &[gap]), Err(SinkError::Gap { sent: 5, last: 3, .. })));
    assert_eq!(sink.read("t", 1, 100).unwrap(), recs);
    assert_eq!(sink.last_acked("t").unwrap(), Some(3));
    assert_eq!(sink.last_acked("never").unwrap(), None);
}
