//! The lag bound with a real server stopped for a while (`MW_SHIP_OUTAGE_SECS`, default 5 s in
//! CI; the long run is `MW_SHIP_OUTAGE_SECS=60`), a map writing all along:
//!
//! - fail-closed: once the oldest unshipped record is older than the bound, every mutation is
//!   refused with `AuditUnavailable` (nothing changed, no record) until the server is back and
//!   the copy has caught up; then mutations are accepted again;
//! - alert: mutations go on, the alert fires (over, then back under), the lag is in
//!   `map.stats()`; after the outage the remote copy holds every record once, in order, and
//!   its export verifies INTACT.

mod support;

#[cfg(any(feature = "postgres", feature = "nats"))]
mod outage {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use map_wrapper::audit::verify::Verdict;
    use map_wrapper::audit::{Auditor, JsonLinesSink};
    use map_wrapper::{ErrorKind, MapWrapper};
    use map_wrapper_ship::{
        export, LagAlert, LagBound, LagGate, Reaction, RemoteSink, Shipper, ShipperConfig, Until,
    };

    use super::support::{local_records, verdict};

    pub trait Server {
        fn kill(&mut self);
        fn restart(&mut self);
        fn sink(&self) -> Box<dyn RemoteSink + Send>;
    }

    /// The bound of these tests.
    const BOUND: Duration = Duration::from_secs(1);

    fn outage() -> Duration {
        Duration::from_secs(
            std::env::var("MW_SHIP_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5),
        )
    }

    /// Waits (bounded) until `f` holds.
    fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The remote copy, exported, is the local trail record for record, and INTACT.
    fn check_copy(server: &dyn Server, trail: &str, dir: &std::path::Path) {
        let want = local_records(dir);
        let out = tempfile::tempdir().unwrap();
        let x = export(&mut server.sink(), trail, &out.path().join("x")).unwrap();
        let got = local_records(&out.path().join("x"));
        assert_eq!(x.records, want.len() as u64, "0 lost, 0 duplicated");
        assert!(got == want, "every record once, in order, byte for byte");
        let report = verdict(&out.path().join("x"));
        assert_eq!(report.verdict, Verdict::Intact, "{}", report.human());
    }

    pub fn fail_closed(server: &mut dyn Server) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("trail");
        let trail = Arc::new(JsonLinesSink::open(&dir, Default::default()).unwrap());
        let mut shipper = Shipper::new(ShipperConfig::new("closed", &dir), server.sink()).unwrap();
        let handle = shipper.handle();
        let gate = LagGate::new(handle.clone(), LagBound::seconds(BOUND), Reaction::FailClosed)
            .with_sink(trail.clone())
            .start();
        let ship = std::thread::spawn(move || shipper.run(Until::Stopped));
        let map: MapWrapper<u64, u64> = MapWrapper::builder()
            .name("closed")
            .auditor(Auditor::from_arc(trail.clone()).gate(gate.clone()))
            .build()
            .unwrap();
        for i in 0..100 {
            map.insert(i, i).unwrap();
        }
        wait_for("first records shipped", Duration::from_secs(30), || handle.lag().acked_seq >= 101);

        server.kill();
        let cut = Instant::now();
        let mut accepted_during = 0u64;
        let mut first_refusal: Option<Duration> = None;
        let mut refused = 0u64;
        let mut i = 1000u64;
        while cut.elapsed() < outage() {
            match map.insert(i, i) {
                Ok(_) => {
                    assert!(
                        first_refusal.is_none(),
                        "a mutation accepted after the gate closed, the server still down"
                    );
                    accepted_during += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::AuditUnavailable, "{e}");
                    assert_eq!(map.get_cloned(&i).unwrap(), None, "a refused insert changed nothing");
                    first_refusal.get_or_insert(cut.elapsed());
                    refused += 1;
                }
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        let first_refusal = first_refusal.expect("mutations refused while the remote is down");
        // The guarantee: refused once the oldest unshipped record is older than the bound (a
        // tick of 10 ms later); generous slack for a loaded machine.
        assert!(
            first_refusal < BOUND + Duration::from_secs(3),
            "first refusal {first_refusal:?} after the cut, bound {BOUND:?}"
        );
        let stats = map.stats().audit.unwrap();
        assert!(stats.ship_lag_seconds.unwrap() > BOUND.as_secs_f64(), "{stats:?}");
        assert!(stats.ship_lag_records.unwrap() >= accepted_during.min(1), "{stats:?}");
        let records_before = local_records(&dir).len();

        server.restart();
        // Back under the bound once the copy caught up: mutations accepted again.
        wait_for("mutations accepted again", Duration::from_secs(60), || map.insert(i, i).is_ok());
        assert_eq!(local_records(&dir).len(), records_before + 1, "refused mutations wrote no record");
        assert_eq!(
            map.len().unwrap(),
            100 + accepted_during as usize + 1,
            "refused mutations changed nothing"
        );
        drop(map);
        trail.close().unwrap();
        let last = local_records(&dir).len() as u64;
        wait_for("caught up", Duration::from_secs(60), || handle.lag().acked_seq >= last);
        handle.stop();
        ship.join().unwrap().unwrap();
        check_copy(server, "closed", &dir);
        eprintln!(
            "fail-closed: outage {:?}, first refusal {first_refusal:?} after the cut (bound {BOUND:?}), \
             {accepted_during} accepted before it, {refused} refused",
            outage()
        );
    }

    pub fn alert(server: &mut dyn Server) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("trail");
        let trail = Arc::new(JsonLinesSink::open(&dir, Default::default()).unwrap());
        let mut shipper = Shipper::new(ShipperConfig::new("alert", &dir), server.sink()).unwrap();
        let handle = shipper.handle();
        let alerts: Arc<Mutex<Vec<LagAlert>>> = Arc::default();
        let seen = alerts.clone();
        let gate = LagGate::new(
            handle.clone(),
            LagBound::seconds(BOUND),
            Reaction::Alert(Arc::new(move |a: &LagAlert| seen.lock().unwrap().push(a.clone()))),
        )
        .with_sink(trail.clone())
        .start();
        let ship = std::thread::spawn(move || shipper.run(Until::Stopped));
        let map: MapWrapper<u64, u64> = MapWrapper::builder()
            .name("alert")
            .auditor(Auditor::from_arc(trail.clone()).gate(gate.clone()))
            .build()
            .unwrap();
        for i in 0..100 {
            map.insert(i, i).unwrap();
        }
        wait_for("first records shipped", Duration::from_secs(30), || handle.lag().acked_seq >= 101);
        server.kill();
        let cut = Instant::now();
        let mut i = 100u64;
        let mut max_lag = 0f64;
        while cut.elapsed() < outage() {
            map.insert(i, i).expect("alert mode never refuses");
            i += 1;
            if i % 100 == 0 {
                max_lag = max_lag.max(map.stats().audit.unwrap().ship_lag_seconds.unwrap());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(max_lag > BOUND.as_secs_f64(), "the lag in map.stats() grew past the bound: {max_lag}");
        assert!(gate.is_over());
        // The gate's thread flips `is_over` first, then calls the alert: wait for the call.
        wait_for("the over-the-bound alert", Duration::from_secs(30), || !alerts.lock().unwrap().is_empty());
        assert!(alerts.lock().unwrap().first().is_some_and(|a| a.over), "{:?}", alerts.lock().unwrap());
        server.restart();
        // Keep writing while it catches up.
        let back = Instant::now();
        while gate.is_over() {
            map.insert(i, i).expect("alert mode never refuses");
            i += 1;
            assert!(back.elapsed() < Duration::from_secs(60), "no catch-up in 60 s: {:?}", handle.lag());
            std::thread::sleep(Duration::from_millis(1));
        }
        let caught_up = back.elapsed();
        wait_for("the back-under alert", Duration::from_secs(30), || alerts.lock().unwrap().len() >= 2);
        {
            let a = alerts.lock().unwrap();
            assert_eq!(a.iter().map(|a| a.over).collect::<Vec<_>>(), [true, false], "one alert per crossing");
        }
        assert_eq!(map.len().unwrap() as u64, i);
        drop(map);
        trail.close().unwrap();
        let last = local_records(&dir).len() as u64;
        wait_for("caught up", Duration::from_secs(60), || handle.lag().acked_seq >= last);
        handle.stop();
        ship.join().unwrap().unwrap();
        check_copy(server, "alert", &dir);
        eprintln!(
            "alert: outage {:?}, {i} records, max lag {max_lag:.2} s, back under the bound {caught_up:?} after the restart",
            outage()
        );
    }
}

#[cfg(feature = "postgres")]
mod pg {
    use map_wrapper_ship::postgres::PostgresSink;

    use super::{outage, support};

    struct Pg(support::Postgres);
    impl outage::Server for Pg {
        fn kill(&mut self) {
            self.0.kill()
        }
        fn restart(&mut self) {
            self.0.restart()
        }
        fn sink(&self) -> Box<dyn map_wrapper_ship::RemoteSink + Send> {
            Box::new(PostgresSink::new(self.0.url()))
        }
    }

    fn server() -> Pg {
        let pg = support::Postgres::start();
        PostgresSink::new(pg.url()).migrate().unwrap();
        Pg(pg)
    }

    #[test]
    fn postgres_down_fail_closed_refuses_mutations_within_the_bound_then_resumes() {
        outage::fail_closed(&mut server());
    }

    #[test]
    fn postgres_down_alert_mode_loses_nothing_and_catches_up() {
        outage::alert(&mut server());
    }
}

#[cfg(feature = "nats")]
mod nats {
    use map_wrapper_ship::nats::NatsSink;

    use super::{outage, support};

    struct N(support::Nats);
    impl outage::Server for N {
        fn kill(&mut self) {
            self.0.kill()
        }
        fn restart(&mut self) {
            self.0.restart()
        }
        fn sink(&self) -> Box<dyn map_wrapper_ship::RemoteSink + Send> {
            Box::new(NatsSink::new(self.0.url()).unwrap())
        }
    }

    #[test]
    fn nats_down_fail_closed_refuses_mutations_within_the_bound_then_resumes() {
        outage::fail_closed(&mut N(support::Nats::start()));
    }

    #[test]
    fn nats_down_alert_mode_loses_nothing_and_catches_up() {
        outage::alert(&mut N(support::Nats::start()));
    }
}
