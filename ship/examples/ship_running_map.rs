//! Ships a running map's trail to PostgreSQL or NATS JetStream while the map works, prints the
//! lag (from `map.stats()`, through a `LagGate` in alert mode, bound 1 s) twice a second, then exports the remote copy and verifies it.
//!
//! ```sh
//! cargo run -p map-wrapper-ship --features postgres --example ship_running_map -- postgres 'postgresql://owner@127.0.0.1:5432/postgres'
//! cargo run -p map-wrapper-ship --features nats --example ship_running_map -- nats nats://127.0.0.1:4222
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use map_wrapper::audit::verify::{verify_paths, VerifyOptions};
use map_wrapper::audit::{Auditor, Durability, JsonLinesSink};
use map_wrapper::MapWrapper;
use map_wrapper_ship::{
    export, LagAlert, LagBound, LagGate, Reaction, RemoteSink, Shipper, ShipperConfig, Until,
};

fn sink(kind: &str, url: &str) -> Result<Box<dyn RemoteSink + Send>, Box<dyn std::error::Error>> {
    match kind {
        #[cfg(feature = "postgres")]
        "postgres" => {
            let mut s = map_wrapper_ship::postgres::PostgresSink::new(url);
            s.migrate()?;
            Ok(Box::new(s))
        }
        #[cfg(feature = "nats")]
        "nats" => Ok(Box::new(map_wrapper_ship::nats::NatsSink::new(url)?)),
        _ => Err(format!(
            "usage: ship_running_map (postgres|nats) URL (built with that feature); got {kind} {url}"
        )
        .into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, url) = match args.as_slice() {
        [k, u] => (k.as_str(), u.as_str()),
        _ => return Err("usage: ship_running_map (postgres|nats) URL".into()),
    };
    let dir = tempfile::tempdir()?;
    let trail = format!("example-{}", std::process::id());
    let audit = Arc::new(JsonLinesSink::open(dir.path(), Default::default())?);
    let mut shipper = Shipper::new(ShipperConfig::new(&trail, dir.path()), sink(kind, url)?)?;
    let handle = shipper.handle();
    let alert: map_wrapper_ship::AlertFn = Arc::new(|a: &LagAlert| {
        println!(
            "ALERT: over the lag bound: {}; {} records / {:.3} s behind",
            a.over, a.records, a.lag.seconds
        )
    });
    let gate =
        LagGate::new(handle.clone(), LagBound::seconds(Duration::from_secs(1)), Reaction::Alert(alert))
            .with_sink(audit.clone())
            .start();
    let auditor = Auditor::from_arc(audit.clone()).durability(Durability::Buffered).gate(gate);
    let map: MapWrapper<u64, u64> = MapWrapper::builder().name("orders").auditor(auditor).build()?;

    let running = std::thread::spawn(move || shipper.run(Until::Stopped));

    let start = Instant::now();
    let mut i = 0u64;
    let mut next_print = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(3) {
        map.insert(i % 10_000, i)?;
        i += 1;
        if start.elapsed() >= next_print {
            let audit_stats = map.stats().audit.unwrap_or_default();
            println!(
                "{:>5.1} s  written {i:>8}  lag {:>6} records {:>6.3} s",
                start.elapsed().as_secs_f64(),
                audit_stats.ship_lag_records.unwrap_or(0),
                audit_stats.ship_lag_seconds.unwrap_or(0.0)
            );
            next_print += Duration::from_millis(500);
        }
    }
    drop(map);
    audit.close()?;
    // The trail's last seq (read through once, 10 000 records at a time).
    let mut tail = map_wrapper_ship::Tailer::open(dir.path(), 0)?;
    let (mut last, mut chunk) = (0, Vec::new());
    while tail.poll(10_000, &mut chunk)? > 0 {
        last = chunk.last().map_or(last, |r| r.seq);
        chunk.clear();
    }
    while handle.lag().acked_seq < last {
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.stop();
    running.join().expect("shipper thread")?;
    println!("shipped {last} records to {kind} as trail {trail}");

    let copy = tempfile::tempdir()?;
    export(&mut sink(kind, url)?, &trail, copy.path())?;
    let report = verify_paths(&[copy.path().to_path_buf()], &VerifyOptions::default())?;
    println!("remote copy: {}", report.verdict_line());
    Ok(())
}
