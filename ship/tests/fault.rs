//! Fault test: a trail written while the shipper (a child process, the `map-wrapper-ship`
//! binary) and the server are SIGKILLed and restarted, plus one network cut (the server
//! stopped for a while). At the end the remote copy holds every local record exactly once,
//! in order, byte for byte, and its export verifies INTACT.
//!
//! Size: `MW_SHIP_FAULT_RECORDS` records (default 100 000, the CI size; the long run is
//! `MW_SHIP_FAULT_RECORDS=1000000 cargo test -p map-wrapper-ship --all-features --test fault --release`).

mod support;

#[cfg(any(feature = "postgres", feature = "nats"))]
mod faults {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use map_wrapper::audit::verify::Verdict;
    use map_wrapper_ship::{export, RemoteSink};

    use super::support::{
        checkpoint_options, local_checkpoints, local_records, verdict_with_checkpoints, write_trail_with,
    };

    pub trait Server {
        fn kill(&mut self);
        fn restart(&mut self);
        fn remote_arg(&self) -> [String; 2];
        fn sink(&self) -> Box<dyn RemoteSink>;
    }

    fn records() -> u64 {
        std::env::var("MW_SHIP_FAULT_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
    }

    fn spawn_shipper(dir: &Path, remote: &[String; 2], log: &Path) -> Child {
        Command::new(env!("CARGO_BIN_EXE_map-wrapper-ship"))
            .args(["ship", "--trail", "fault", "--dir"])
            .arg(dir)
            .args(remote)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
            .spawn()
            .expect("start the shipper")
    }

    /// A shipper child killed on drop (also when the test panics).
    struct ShipperProc(Option<Child>);
    impl ShipperProc {
        fn kill(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        fn check_alive(&mut self, log: &Path) {
            if let Some(c) = self.0.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "the shipper exited by itself ({status}): {}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                }
            }
        }
    }
    impl Drop for ShipperProc {
        fn drop(&mut self) {
            self.kill();
        }
    }

    pub fn run(server: &mut dyn Server) {
        let n = records();
        let started = Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("trail");
        let log = tmp.path().join("shipper.log");
        let remote = server.remote_arg();
        // The writer: n records over about 20 s, segments of 1 MiB (so the trail rotates).
        let writer = {
            let dir = dir.clone();
            let pace = (n / 20_000).max(1);
            // Signed checkpoints every 1000 records or 1 s (the default policy): shipped too.
            let cps = Some(checkpoint_options(Default::default()));
            std::thread::spawn(move || write_trail_with(&dir, n, 1 << 20, pace, cps))
        };
        let mut shipper = ShipperProc(Some(spawn_shipper(&dir, &remote, &log)));
        // 20 faults, one every 1.2 s: 10 shipper kills, 9 server kills, 1 network cut (5 s).
        let mut kills = (0, 0, 0);
        for i in 0..20 {
            std::thread::sleep(Duration::from_millis(1200));
            shipper.check_alive(&log);
            match i {
                9 => {
                    server.kill();
                    std::thread::sleep(Duration::from_secs(5));
                    server.restart();
                    kills.2 += 1;
                }
                i if i % 2 == 0 => {
                    shipper.kill();
                    shipper.0 = Some(spawn_shipper(&dir, &remote, &log));
                    kills.0 += 1;
                }
                _ => {
                    server.kill();
                    server.restart();
                    kills.1 += 1;
                }
            }
        }
        let faults_done = started.elapsed().as_secs_f64();
        writer.join().expect("writer");
        let written = started.elapsed().as_secs_f64();
        let want = local_records(&dir);
        assert_eq!(want.len() as u64, n + 2, "n records plus audit_start and audit_stop");
        // Catch up (bounded).
        let mut sink = server.sink();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            shipper.check_alive(&log);
            let newest = local_checkpoints(&dir).pop();
            if sink.last_acked("fault").ok().flatten() == Some(want.len() as u64)
                && sink.latest_checkpoint("fault").ok().flatten() == newest
            {
                break;
            }
            assert!(Instant::now() < deadline, "no catch-up in 180 s: {:?}", sink.last_acked("fault"));
            std::thread::sleep(Duration::from_millis(100));
        }
        let caught_up = started.elapsed().as_secs_f64();
        shipper.kill();
        let out = tmp.path().join("export");
        let x = export(&mut sink, "fault", &out).unwrap();
        let exported = started.elapsed().as_secs_f64();
        let got = local_records(&out);
        let lost =
            want.iter().zip(&got).filter(|(a, b)| a != b).count() + want.len().saturating_sub(got.len());
        assert_eq!(x.records, want.len() as u64, "0 lost, 0 duplicated");
        assert_eq!(lost, 0, "every record once, in order, byte for byte");
        assert!(got == want);
        // The checkpoints: every note of the trail's checkpoints.notes once, in order, and
        // the copy's records check against every one.
        let want_cps = local_checkpoints(&dir);
        assert!(want_cps.len() > 10, "{} checkpoints", want_cps.len());
        assert_eq!(x.checkpoints, want_cps.len() as u64, "0 checkpoints lost or duplicated");
        assert_eq!(
            std::fs::read(out.join(map_wrapper::audit::anchor::APPEND_FILE)).unwrap(),
            std::fs::read(dir.join(map_wrapper::audit::anchor::APPEND_FILE)).unwrap()
        );
        let report = verdict_with_checkpoints(&out, &[]);
        assert_eq!(report.verdict, Verdict::Intact, "{}", report.human());
        assert_eq!(report.records, want.len() as u64);
        assert_eq!(report.checkpoints.as_ref().map(|c| c.checked), Some(want_cps.len()));
        eprintln!(
            "fault run: {} records, {} checkpoints, {} segments, {kills:?} (shipper kills, server kills, cuts); faults done {faults_done:.1} s, \
             trail written {written:.1} s, remote caught up {caught_up:.1} s, \
             exported {exported:.1} s, verified {:.1} s",
            want.len(),
            want_cps.len(),
            report.segments,
            started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_copy_is_complete_after_shipper_and_server_kills_and_a_cut() {
    use map_wrapper_ship::postgres::PostgresSink;
    struct Pg(support::Postgres);
    impl faults::Server for Pg {
        fn kill(&mut self) {
            self.0.kill()
        }
        fn restart(&mut self) {
            self.0.restart()
        }
        fn remote_arg(&self) -> [String; 2] {
            ["--postgres".into(), self.0.url()]
        }
        fn sink(&self) -> Box<dyn map_wrapper_ship::RemoteSink> {
            Box::new(PostgresSink::new(self.0.url()))
        }
    }
    let pg = support::Postgres::start();
    PostgresSink::new(pg.url()).migrate().unwrap();
    faults::run(&mut Pg(pg));
}

#[cfg(feature = "nats")]
#[test]
fn nats_copy_is_complete_after_shipper_and_server_kills_and_a_cut() {
    use map_wrapper_ship::nats::NatsSink;
    struct N(support::Nats);
    impl faults::Server for N {
        fn kill(&mut self) {
            self.0.kill()
        }
        fn restart(&mut self) {
            self.0.restart()
        }
        fn remote_arg(&self) -> [String; 2] {
            ["--nats".into(), self.0.url()]
        }
        fn sink(&self) -> Box<dyn map_wrapper_ship::RemoteSink> {
            Box::new(NatsSink::new(self.0.url()).unwrap())
        }
    }
    faults::run(&mut N(support::Nats::start()));
}
