//! The trail's signed checkpoints travel with its records, and the remote copy is an anchor:
//! against real servers (tests/support), the same cases for PostgreSQL and NATS JetStream.
#![cfg(any(feature = "postgres", feature = "nats"))]

mod support;

use std::path::Path;
use std::time::Instant;

use map_wrapper::audit::anchor::{AnchorError, CheckpointAnchor, APPEND_FILE};
use map_wrapper::audit::checkpoint::{Checkpoint, CheckpointPolicy, Checkpointer};
use map_wrapper::audit::verify::Verdict;
use map_wrapper::audit::SignedCheckpoint;
use map_wrapper_ship::{
    export, Acked, Record, RemoteAnchor, RemoteSink, Shipper, ShipperConfig, SinkError, Until,
};
use support::{local_checkpoints, local_records, signer, verdict, verdict_with_checkpoints, ORIGIN};

/// A sink that checks, on every checkpoint it is handed, that the remote already holds the
/// records the checkpoint covers.
struct RecordsFirst<S>(S);

impl<S: RemoteSink> RemoteSink for RecordsFirst<S> {
    fn send(&mut self, trail: &str, batch: &[Record]) -> Result<Acked, SinkError> {
        self.0.send(trail, batch)
    }
    fn last_acked(&mut self, trail: &str) -> Result<Option<u64>, SinkError> {
        self.0.last_acked(trail)
    }
    fn read(&mut self, trail: &str, from_seq: u64, max: usize) -> Result<Vec<Record>, SinkError> {
        self.0.read(trail, from_seq, max)
    }
    fn send_checkpoint(&mut self, trail: &str, cp: &SignedCheckpoint) -> Result<(), SinkError> {
        let held = self.0.last_acked(trail)?.unwrap_or(0);
        assert!(
            cp.checkpoint().size() <= held,
            "a checkpoint of {} records shipped while the remote holds {held}",
            cp.checkpoint().size()
        );
        self.0.send_checkpoint(trail, cp)
    }
    fn read_checkpoints(
        &mut self,
        trail: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, SignedCheckpoint)>, SinkError> {
        self.0.read_checkpoints(trail, from, max)
    }
    fn latest_checkpoint(&mut self, trail: &str) -> Result<Option<SignedCheckpoint>, SinkError> {
        self.0.latest_checkpoint(trail)
    }
}

fn remote_checkpoints(sink: &mut impl RemoteSink, trail: &str) -> Vec<SignedCheckpoint> {
    let got = sink.read_checkpoints(trail, 1, 100_000).unwrap();
    let positions: Vec<u64> = got.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (1..=got.len() as u64).collect::<Vec<_>>(), "positions 1, 2, … in order");
    got.into_iter().map(|(_, cp)| cp).collect()
}

/// Every note of the trail's `checkpoints.notes` reaches the remote once, in order, after the
/// records it covers; a restarted shipper (a new one: its cursor is the remote's newest)
/// ships only the new ones; the export writes them back and `verify --pubkey` on the copy
/// checks its records against every one.
fn checkpoints_ship_once_in_order_survive_a_restart_and_export<S: RemoteSink>(sink: impl Fn() -> S) {
    let local = tempfile::tempdir().unwrap();
    // Opened and closed 4 times: a checkpoint at each opening and closing at least.
    for _ in 0..4 {
        support::write_checkpointed_trail(local.path(), 75, 4096, 40);
    }
    let want = local_checkpoints(local.path());
    assert!(want.len() >= 8, "{} checkpoints", want.len());
    let mut shipper = Shipper::new(ShipperConfig::new("ck", local.path()), RecordsFirst(sink())).unwrap();
    let first = shipper.run(Until::CaughtUp).unwrap();
    assert_eq!(first.checkpoints, want.len() as u64);
    assert_eq!(remote_checkpoints(shipper.sink_mut(), "ck"), want);

    // The trail goes on (reopened: more records, more checkpoints); a new shipper resumes.
    support::write_checkpointed_trail(local.path(), 200, 4096, 40);
    let want = local_checkpoints(local.path());
    assert!(want.len() as u64 >= first.checkpoints + 2);
    let mut again = Shipper::new(ShipperConfig::new("ck", local.path()), RecordsFirst(sink())).unwrap();
    let second = again.run(Until::CaughtUp).unwrap();
    assert_eq!(first.checkpoints + second.checkpoints, want.len() as u64, "only the new ones");
    assert_eq!(remote_checkpoints(again.sink_mut(), "ck"), want, "each once, in order");
    let mut third = Shipper::new(ShipperConfig::new("ck", local.path()), sink()).unwrap();
    assert_eq!(third.run(Until::CaughtUp).unwrap().checkpoints, 0);

    let out = tempfile::tempdir().unwrap();
    let x = export(third.sink_mut(), "ck", out.path()).unwrap();
    assert_eq!(x.checkpoints, want.len() as u64);
    assert_eq!(
        std::fs::read(out.path().join(APPEND_FILE)).unwrap(),
        std::fs::read(local.path().join(APPEND_FILE)).unwrap(),
        "the export's checkpoints.notes is the trail's, byte for byte"
    );
    let report = verdict_with_checkpoints(out.path(), &[]);
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.human());
    assert_eq!(report.checkpoints.as_ref().unwrap().checked, want.len());
}

/// A sink that runs `between` once, when `export` turns from one of its two reads (records,
/// checkpoints) to the other: there, a shipper still running stores more of the trail.
struct ShipsBetweenReads<S> {
    inner: S,
    last: Option<&'static str>,
    between: Option<Box<dyn FnOnce()>>,
}

impl<S> ShipsBetweenReads<S> {
    fn reading(&mut self, what: &'static str) {
        if self.last.is_some_and(|last| last != what) {
            if let Some(f) = self.between.take() {
                f();
            }
        }
        self.last = Some(what);
    }
}

impl<S: RemoteSink> RemoteSink for ShipsBetweenReads<S> {
    fn send(&mut self, trail: &str, batch: &[Record]) -> Result<Acked, SinkError> {
        self.inner.send(trail, batch)
    }
    fn last_acked(&mut self, trail: &str) -> Result<Option<u64>, SinkError> {
        self.inner.last_acked(trail)
    }
    fn read(&mut self, trail: &str, from_seq: u64, max: usize) -> Result<Vec<Record>, SinkError> {
        self.reading("records");
        self.inner.read(trail, from_seq, max)
    }
    fn send_checkpoint(&mut self, trail: &str, cp: &SignedCheckpoint) -> Result<(), SinkError> {
        self.inner.send_checkpoint(trail, cp)
    }
    fn read_checkpoints(
        &mut self,
        trail: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, SignedCheckpoint)>, SinkError> {
        self.reading("checkpoints");
        self.inner.read_checkpoints(trail, from, max)
    }
    fn latest_checkpoint(&mut self, trail: &str) -> Result<Option<SignedCheckpoint>, SinkError> {
        self.inner.latest_checkpoint(trail)
    }
}

/// An export taken while a shipper goes on is a consistent copy: every checkpoint in it is
/// covered by its records (read the other way round, a checkpoint shipped between the two
/// reads would cover records the copy lacks, and a healthy remote would verify as TAMPERED).
fn an_export_taken_while_a_shipper_goes_on_verifies_intact<S: RemoteSink + 'static>(
    sink: impl Fn() -> S + Clone + 'static,
) {
    let local = tempfile::tempdir().unwrap();
    support::write_checkpointed_trail(local.path(), 75, 4096, 40);
    Shipper::new(ShipperConfig::new("live", local.path()), sink()).unwrap().run(Until::CaughtUp).unwrap();
    let shipped_first = local_checkpoints(local.path()).len();
    // The trail goes on; its shipper catches up while the export is between its reads.
    support::write_checkpointed_trail(local.path(), 120, 4096, 40);
    let all = local_checkpoints(local.path()).len();
    assert!(all > shipped_first);
    let (dir, later) = (local.path().to_path_buf(), sink.clone());
    let between: Box<dyn FnOnce()> = Box::new(move || {
        let mut s = Shipper::new(ShipperConfig::new("live", &dir), later()).unwrap();
        assert!(s.run(Until::CaughtUp).unwrap().checkpoints > 0);
    });
    let mut racing = ShipsBetweenReads { inner: sink(), last: None, between: Some(between) };
    let out = tempfile::tempdir().unwrap();
    let x = export(&mut racing, "live", out.path()).unwrap();
    assert!(racing.between.is_none(), "the shipper ran between the export's two reads");
    assert!(x.checkpoints as usize >= shipped_first);
    let report = verdict_with_checkpoints(out.path(), &[]);
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.human());
}

/// Checkpoints of 0..=n records over leaves "r0", "r1", ….
fn made_checkpoints(n: usize) -> Vec<SignedCheckpoint> {
    let mut c = Checkpointer::new(ORIGIN, signer(), CheckpointPolicy::default()).unwrap();
    let t = Instant::now();
    let mut out = vec![c.checkpoint(t)];
    for i in 0..n {
        c.on_record(format!("r{i}").as_bytes());
        out.push(c.checkpoint(t));
    }
    out
}

fn sign(cp: Checkpoint) -> SignedCheckpoint {
    SignedCheckpoint::sign(cp, &signer())
}

/// The remote end keeps checkpoints forward only, as every anchor does: a smaller tree, a
/// fork (the same size, another root) or another log is refused; a redelivery is stored once;
/// a later heartbeat of the same tree is kept.
fn the_remote_refuses_a_backwards_forked_or_foreign_checkpoint<S: RemoteSink + Send>(sink: impl Fn() -> S) {
    let cps = made_checkpoints(5);
    let anchor = RemoteAnchor::new(sink(), "fw");
    assert_eq!(anchor.latest().unwrap(), None);
    for cp in &cps[..4] {
        anchor.publish(cp).unwrap();
    }
    anchor.publish(&cps[3]).unwrap(); // a redelivery
    anchor.publish(&cps[2]).unwrap_err(); // older than the newest held
    assert_eq!(anchor.publish(&cps[1]), Err(AnchorError::Backwards { held: 3, offered: 1 }));
    let fork = sign(Checkpoint::new(ORIGIN, 3, [9; 32]).unwrap());
    assert_eq!(anchor.publish(&fork), Err(AnchorError::Fork { size: 3 }));
    let foreign = sign(Checkpoint::new("example.com/other", 4, [9; 32]).unwrap());
    assert!(matches!(anchor.publish(&foreign), Err(AnchorError::OtherOrigin { .. })));
    // A second handle (another process) sees the same and refuses the same.
    let other = RemoteAnchor::new(sink(), "fw");
    assert_eq!(other.latest().unwrap().as_ref(), Some(&cps[3]));
    assert_eq!(other.publish(&cps[0]), Err(AnchorError::Backwards { held: 3, offered: 0 }));
    let mut s = sink();
    assert_eq!(remote_checkpoints(&mut s, "fw"), cps[..4].to_vec(), "each once, nothing refused stored");
    // A heartbeat: the same tree, later.
    let later = chrono::Utc::now() + chrono::Duration::seconds(60);
    let heartbeat = sign(Checkpoint::new(ORIGIN, 3, *cps[3].checkpoint().root()).unwrap().with_time(later));
    anchor.publish(&heartbeat).unwrap();
    anchor.publish(&cps[5]).unwrap();
    assert_eq!(anchor.latest().unwrap().as_ref(), Some(&cps[5]));
    let mut want = cps[..4].to_vec();
    want.extend([heartbeat, cps[5].clone()]);
    assert_eq!(remote_checkpoints(&mut s, "fw"), want);
}

/// A note the writer is still writing (torn) is not shipped until it is whole; then it is.
fn a_torn_last_note_is_shipped_once_it_is_whole<S: RemoteSink>(sink: impl Fn() -> S) {
    let local = tempfile::tempdir().unwrap();
    support::write_checkpointed_trail(local.path(), 60, 64 << 20, 20);
    let path = local.path().join(APPEND_FILE);
    let whole = std::fs::read(&path).unwrap();
    let notes = local_checkpoints(local.path());
    let last = notes.last().unwrap().note().len();
    std::fs::write(&path, &whole[..whole.len() - last / 2]).unwrap();
    let mut shipper = Shipper::new(ShipperConfig::new("torn", local.path()), sink()).unwrap();
    assert_eq!(shipper.run(Until::CaughtUp).unwrap().checkpoints, notes.len() as u64 - 1);
    assert_eq!(remote_checkpoints(shipper.sink_mut(), "torn"), notes[..notes.len() - 1]);
    std::fs::write(&path, &whole).unwrap();
    assert_eq!(shipper.run(Until::CaughtUp).unwrap().checkpoints, 1);
    assert_eq!(remote_checkpoints(shipper.sink_mut(), "torn"), notes);
}

/// Removes the last `k` lines of the trail's only segment.
fn cut_tail(dir: &Path, k: usize) {
    let segments = map_wrapper::audit::list_segments(dir).unwrap();
    assert_eq!(segments.len(), 1);
    let path = &segments[0].1;
    let bytes = std::fs::read(path).unwrap();
    let mut keep = bytes.len();
    for _ in 0..k {
        keep = bytes[..keep - 1].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    }
    std::fs::write(path, &bytes[..keep]).unwrap();
}

/// A local trail whose tail is cut (with its own `checkpoints.notes`) after its checkpoint was
/// shipped: the chain alone still verifies, the remote's newest checkpoint makes it TAMPERED.
/// `remote`: the binary's arguments naming the remote (`--postgres URL`): the note is written
/// by `map-wrapper-ship checkpoint --out FILE` when the binary is built.
fn a_trail_cut_after_shipping_is_tampered_against_the_remote_checkpoint<S: RemoteSink + Send>(
    sink: impl Fn() -> S,
    remote: [&str; 2],
) {
    let local = tempfile::tempdir().unwrap();
    support::write_checkpointed_trail(local.path(), 120, 64 << 20, 25);
    Shipper::new(ShipperConfig::new("cut", local.path()), sink()).unwrap().run(Until::CaughtUp).unwrap();
    let remote_args = remote;
    let remote = RemoteAnchor::new(sink(), "cut").latest().unwrap().expect("shipped");
    assert_eq!(remote.checkpoint().size(), local_records(local.path()).len() as u64);
    let held = tempfile::tempdir().unwrap();
    let note = held.path().join("remote.note");
    write_remote_note(&note, &remote_args, &remote);
    let report = verdict_with_checkpoints(local.path(), std::slice::from_ref(&note));
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.human());

    cut_tail(local.path(), 5);
    std::fs::remove_file(local.path().join(APPEND_FILE)).unwrap();
    assert_eq!(verdict(local.path()).verdict, Verdict::Intact, "the chain alone cannot see a cut tail");
    let report = verdict_with_checkpoints(local.path(), std::slice::from_ref(&note));
    assert_eq!(report.verdict, Verdict::Tampered, "{}", report.human());
    assert!(report.human().contains("TAMPERED"), "{}", report.human());
}

/// `map-wrapper-ship checkpoint --trail cut REMOTE --out FILE`, checked to write `want`.
#[cfg(feature = "cli")]
fn write_remote_note(file: &Path, remote: &[&str; 2], want: &SignedCheckpoint) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_map-wrapper-ship"))
        .args(["checkpoint", "--trail", "cut", remote[0], remote[1], "--out"])
        .arg(file)
        .output()
        .expect("run map-wrapper-ship");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(file).unwrap(), want.note());
    let none = std::process::Command::new(env!("CARGO_BIN_EXE_map-wrapper-ship"))
        .args(["checkpoint", "--trail", "never-shipped", remote[0], remote[1]])
        .output()
        .expect("run map-wrapper-ship");
    assert_eq!(none.status.code(), Some(1), "no checkpoint: exit 1");
}

/// Without the binary: the note the anchor gives.
#[cfg(not(feature = "cli"))]
fn write_remote_note(file: &Path, _remote: &[&str; 2], want: &SignedCheckpoint) {
    std::fs::write(file, want.note()).unwrap();
}

#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use map_wrapper_ship::postgres::PostgresSink;
    use support::Postgres;

    fn sinks(pg: &Postgres) -> impl Fn() -> PostgresSink + '_ {
        PostgresSink::new(pg.url()).migrate().expect("migrate");
        PostgresSink::new(pg.url()).migrate().expect("the migration runs twice without harm");
        || PostgresSink::new(pg.url())
    }

    fn sql(pg: &Postgres, q: &str) -> Result<(), postgres::Error> {
        postgres::Client::connect(&pg.url(), postgres::NoTls).expect("connect").batch_execute(q)
    }

    #[test]
    fn checkpoints_ship_once_in_order_survive_a_restart_and_export() {
        let pg = Postgres::start();
        super::checkpoints_ship_once_in_order_survive_a_restart_and_export(sinks(&pg));
    }

    /// The refusals come from the server: its trigger refuses a backwards row inserted by
    /// hand, and the table is append-only like the records'.
    #[test]
    fn the_remote_refuses_a_backwards_forked_or_foreign_checkpoint() {
        let pg = Postgres::start();
        super::the_remote_refuses_a_backwards_forked_or_foreign_checkpoint(sinks(&pg));
        let cp = &made_checkpoints(1)[1];
        let root = cp.note().split('\n').nth(2).unwrap();
        let e = sql(
            &pg,
            &format!(
                "INSERT INTO map_wrapper_audit_checkpoints (trail, pos, origin, size, root, note) \
                 VALUES ('fw', 0, '{ORIGIN}', 1, '{root}', $${}$$)",
                cp.note()
            ),
        )
        .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("MW003"), "{e}");
        sql(
            &pg,
            "CREATE ROLE shipper LOGIN; GRANT SELECT, INSERT ON map_wrapper_audit_checkpoints TO shipper;",
        )
        .unwrap();
        let mut as_shipper = postgres::Client::connect(&pg.url_as("shipper"), postgres::NoTls).unwrap();
        for q in [
            "UPDATE map_wrapper_audit_checkpoints SET size = 1 WHERE pos = 2",
            "DELETE FROM map_wrapper_audit_checkpoints WHERE pos = 6",
            "TRUNCATE map_wrapper_audit_checkpoints",
        ] {
            let e = sql(&pg, q).unwrap_err();
            assert_eq!(e.code().map(|c| c.code()), Some("MW002"), "the owner, {q}: {e}");
            let e = as_shipper.batch_execute(q).unwrap_err();
            assert_eq!(e.code().map(|c| c.code()), Some("42501"), "the shipper's role, {q}: {e}");
        }
        // The shipper's role reads and appends through the sink.
        let anchor = map_wrapper_ship::postgres::PgAnchor::new(PostgresSink::new(pg.url_as("shipper")), "fw");
        assert_eq!(anchor.latest().unwrap().unwrap().checkpoint().size(), 5);
        anchor.publish(&made_checkpoints(6)[6]).unwrap();
    }

    #[test]
    fn a_torn_last_note_is_shipped_once_it_is_whole() {
        let pg = Postgres::start();
        super::a_torn_last_note_is_shipped_once_it_is_whole(sinks(&pg));
    }

    #[test]
    fn an_export_taken_while_a_shipper_goes_on_verifies_intact() {
        let pg = Postgres::start();
        let _ = sinks(&pg);
        let url = pg.url();
        super::an_export_taken_while_a_shipper_goes_on_verifies_intact(move || {
            PostgresSink::new(url.clone())
        });
    }

    #[test]
    fn a_trail_cut_after_shipping_is_tampered_against_the_remote_checkpoint() {
        let pg = Postgres::start();
        super::a_trail_cut_after_shipping_is_tampered_against_the_remote_checkpoint(
            sinks(&pg),
            ["--postgres", &pg.url()],
        );
    }
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use map_wrapper_ship::nats::NatsSink;
    use support::Nats;

    fn sinks(n: &Nats) -> impl Fn() -> NatsSink + '_ {
        || NatsSink::new(n.url()).unwrap()
    }

    #[test]
    fn checkpoints_ship_once_in_order_survive_a_restart_and_export() {
        let n = Nats::start();
        super::checkpoints_ship_once_in_order_survive_a_restart_and_export(sinks(&n));
    }

    #[test]
    fn the_remote_refuses_a_backwards_forked_or_foreign_checkpoint() {
        let n = Nats::start();
        super::the_remote_refuses_a_backwards_forked_or_foreign_checkpoint(sinks(&n));
    }

    #[test]
    fn a_torn_last_note_is_shipped_once_it_is_whole() {
        let n = Nats::start();
        super::a_torn_last_note_is_shipped_once_it_is_whole(sinks(&n));
    }

    #[test]
    fn an_export_taken_while_a_shipper_goes_on_verifies_intact() {
        let n = Nats::start();
        let url = n.url();
        super::an_export_taken_while_a_shipper_goes_on_verifies_intact(move || {
            NatsSink::new(url.clone()).unwrap()
        });
    }

    #[test]
    fn a_trail_cut_after_shipping_is_tampered_against_the_remote_checkpoint() {
        let n = Nats::start();
        super::a_trail_cut_after_shipping_is_tampered_against_the_remote_checkpoint(
            sinks(&n),
            ["--nats", &n.url()],
        );
    }
}
