//! A hung server (SIGSTOP: connections stay open, nothing answers) does not hang the shipper:
//! each exchange gives up after the sink's timeout with `Unavailable`, the connection is
//! dropped, and once the server goes on (SIGCONT) the shipper reconnects, resumes from the
//! remote's last seq, and the remote copy is complete and INTACT.

mod support;

#[cfg(any(feature = "postgres", feature = "nats"))]
mod hung {
    use std::time::{Duration, Instant};

    use map_wrapper::audit::verify::Verdict;
    use map_wrapper_ship::{export, Record, RemoteSink, Shipper, ShipperConfig, SinkError, Until};

    use super::support::{local_records, verdict, write_trail};

    /// The sinks' timeout in these tests.
    pub const TIMEOUT: Duration = Duration::from_secs(1);

    pub trait Server {
        fn pause(&self);
        fn resume(&self);
        /// A sink with [`TIMEOUT`].
        fn sink(&self) -> Box<dyn RemoteSink + Send>;
    }

    pub fn run(server: &dyn Server) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("trail");
        write_trail(&dir, 20_000, 1 << 20, 0);
        let want = local_records(&dir);

        // A direct exchange with the hung server returns Unavailable after the timeout.
        let mut probe = server.sink();
        let first = Record::new(1, vec![], want[0].clone());
        assert!(probe.last_acked("probe").is_ok());
        server.pause();
        let t = Instant::now();
        let r = probe.send("probe", std::slice::from_ref(&first));
        let took = t.elapsed();
        server.resume();
        assert!(matches!(r, Err(SinkError::Unavailable(_))), "{r:?}");
        // Bounded by the timeout (generous slack for a loaded machine), not by the server.
        assert!(took < TIMEOUT + Duration::from_secs(4), "a hung send took {took:?}");
        // After the server goes on, the same sink reconnects and works.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match probe.send("probe", std::slice::from_ref(&first)) {
                Ok(a) => {
                    assert_eq!(a.last_seq, 1);
                    break;
                }
                Err(e) => assert!(e.is_retryable() && Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }

        // The shipper through a hang of 3 × the timeout, mid-trail.
        let mut cfg = ShipperConfig::new("hung", &dir);
        cfg.max_backoff = Duration::from_millis(200);
        let mut shipper = Shipper::new(cfg, server.sink()).unwrap();
        let handle = shipper.handle();
        let ship = std::thread::spawn(move || shipper.run(Until::Stopped));
        while handle.lag().acked_seq < 2_000 {
            assert!(!ship.is_finished());
            std::thread::sleep(Duration::from_millis(1));
        }
        server.pause();
        std::thread::sleep(TIMEOUT * 3);
        let stuck_at = handle.lag();
        server.resume();
        assert!(!stuck_at.remote_available, "the shipper saw the hang: {stuck_at:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while handle.lag().acked_seq < want.len() as u64 {
            assert!(Instant::now() < deadline, "no catch-up after the hang: {:?}", handle.lag());
            std::thread::sleep(Duration::from_millis(5));
        }
        handle.stop();
        let summary = ship.join().unwrap().unwrap();
        assert!(summary.retries > 0, "{summary:?}");
        let out = tmp.path().join("x");
        let x = export(&mut server.sink(), "hung", &out).unwrap();
        assert_eq!(x.records, want.len() as u64, "0 lost, 0 duplicated");
        assert!(local_records(&out) == want, "every record once, in order, byte for byte");
        let report = verdict(&out);
        assert_eq!(report.verdict, Verdict::Intact, "{}", report.human());
        eprintln!("hung server: a send gave up after {took:?} (timeout {TIMEOUT:?}); {summary:?}");
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_hung_server_times_out_then_the_shipper_reconnects_and_completes_the_copy() {
    use map_wrapper_ship::postgres::PostgresSink;
    struct Pg(support::Postgres);
    impl hung::Server for Pg {
        fn pause(&self) {
            self.0.pause()
        }
        fn resume(&self) {
            self.0.resume()
        }
        fn sink(&self) -> Box<dyn map_wrapper_ship::RemoteSink + Send> {
            Box::new(PostgresSink::new(self.0.url()).timeout(hung::TIMEOUT))
        }
    }
    let pg = support::Postgres::start();
    PostgresSink::new(pg.url()).migrate().unwrap();
    hung::run(&Pg(pg));
}

#[cfg(feature = "nats")]
#[test]
fn nats_hung_server_times_out_then_the_shipper_reconnects_and_completes_the_copy() {
    use map_wrapper_ship::nats::NatsSink;
    struct N(support::Nats);
    impl hung::Server for N {
        fn pause(&self) {
            self.0.pause()
        }
        fn resume(&self) {
            self.0.resume()
        }
        fn sink(&self) -> Box<dyn map_wrapper_ship::RemoteSink + Send> {
            Box::new(NatsSink::new(self.0.url()).unwrap().timeout(hung::TIMEOUT))
        }
    }
    hung::run(&N(support::Nats::start()));
}
