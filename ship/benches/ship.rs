//! Shipping lag at an audited map's full `Buffered` throughput, on loopback, against real
//! servers (PostgreSQL and nats-server started here, as the tests do).
//!
//! For each sink: a map writes `MW_SHIP_BENCH_RECORDS` records (default 200 000) as fast as it
//! can while a shipper thread follows the trail; a sampler reads the shipper's
//! `ShipperHandle::lag()` every millisecond. A record's lag is the time from its `ts` to the
//! first sample whose acknowledged seq covers it. Printed side by side: the writer's and the
//! shipper's throughput, lag p50 / p99 / max, and the same at a paced rate (half the
//! shipper's measured throughput), where the remote keeps up.
//!
//! Run: `cargo bench -p map-wrapper-ship --all-features --bench ship` (`MW_SHIP_BENCH_BATCH=N`:
//! records per send, default 5000; `MW_SHIP_BENCH_ONLY=postgres|nats`).

#[path = "../tests/support/mod.rs"]
mod support;

#[cfg(any(feature = "postgres", feature = "nats"))]
fn measure(name: &str, sink: Box<dyn map_wrapper_ship::RemoteSink + Send>, records: u64, pace: u64) -> f64 {
    use map_wrapper_ship::{Record, Shipper, ShipperConfig, Until};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let trail = format!("bench{pace}");
    let mut cfg = ShipperConfig::new(trail, dir.path());
    cfg.batch_records =
        std::env::var("MW_SHIP_BENCH_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(cfg.batch_records);
    cfg.read_ahead = cfg.read_ahead.max(cfg.batch_records);
    let batch = cfg.batch_records;
    let mut shipper = Shipper::new(cfg, sink).unwrap();
    let handle = shipper.handle();
    let ship = std::thread::spawn(move || shipper.run(Until::Stopped).map(|_| ()));
    let sampler_handle = handle.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut samples: Vec<(i64, u64)> = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            samples.push((chrono::Utc::now().timestamp_micros(), sampler_handle.lag().acked_seq));
            std::thread::sleep(Duration::from_millis(1));
        }
        samples
    });
    let t0 = Instant::now();
    support::write_trail(dir.path(), records, 64 << 20, pace);
    let write_s = t0.elapsed().as_secs_f64();
    let total = records + 2;
    while handle.lag().acked_seq < total {
        assert!(!ship.is_finished(), "the shipper stopped: {:?}", ship.join());
        std::thread::sleep(Duration::from_millis(1));
    }
    let ship_s = t0.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut samples = sampler.join().unwrap();
    samples.push((chrono::Utc::now().timestamp_micros(), handle.lag().acked_seq));
    handle.stop();
    ship.join().unwrap().unwrap();
    // Lag per record.
    let mut lags: Vec<f64> = Vec::with_capacity(total as usize);
    for (i, line) in support::local_records(dir.path()).into_iter().enumerate() {
        let seq = i as u64 + 1;
        let ts = Record::new(seq, vec![], line).ts().unwrap().timestamp_micros();
        let k = samples.partition_point(|s| s.1 < seq);
        let acked_at = samples.get(k).map_or(i64::MAX, |s| s.0);
        lags.push((acked_at - ts).max(0) as f64 / 1e6);
    }
    lags.sort_by(f64::total_cmp);
    let q = |p: f64| lags[((lags.len() as f64 - 1.0) * p) as usize];
    let rate = if pace == 0 { "full speed".to_string() } else { format!("paced {} rec/s", pace * 1000) };
    println!(
        "{name:<9} batch {batch:<6} {rate:<20} records {total:>8}  write {:>9.0} rec/s  shipped {:>8.0} rec/s  lag p50 {:>7.3} s  p99 {:>7.3} s  max {:>7.3} s",
        total as f64 / write_s,
        total as f64 / ship_s,
        q(0.5),
        q(0.99),
        q(1.0)
    );
    total as f64 / ship_s
}

fn main() {
    let records: u64 =
        std::env::var("MW_SHIP_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let _ = records;
    let only = std::env::var("MW_SHIP_BENCH_ONLY").unwrap_or_default();
    let _ = &only;
    #[cfg(feature = "postgres")]
    if only.is_empty() || only == "postgres" {
        let pg = support::Postgres::start();
        let mut s = map_wrapper_ship::postgres::PostgresSink::new(pg.url());
        s.migrate().unwrap();
        let full = measure("postgres", Box::new(s), records, 0);
        let pace = ((full / 2.0) / 1000.0).max(1.0) as u64;
        let paced = map_wrapper_ship::postgres::PostgresSink::new(pg.url());
        measure("postgres", Box::new(paced), records.min(pace * 1000 * 20), pace);
    }
    #[cfg(feature = "nats")]
    if only.is_empty() || only == "nats" {
        let nats = support::Nats::start();
        let full =
            measure("nats", Box::new(map_wrapper_ship::nats::NatsSink::new(nats.url()).unwrap()), records, 0);
        let pace = ((full / 2.0) / 1000.0).max(1.0) as u64;
        let paced = map_wrapper_ship::nats::NatsSink::new(nats.url()).unwrap();
        measure("nats", Box::new(paced), records.min(pace * 1000 * 20), pace);
    }
    #[cfg(not(any(feature = "postgres", feature = "nats")))]
    println!("build with --features postgres,nats (or --all-features) to measure");
}
