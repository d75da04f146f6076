//! Helpers shared by the integration tests, examples and benchmarks of the map-wrapper
//! workspace (the suite package's library; not published).

use std::sync::{Arc, Barrier};
use std::thread;

/// Starts `threads` threads that all begin `work` at the same instant (behind one barrier)
/// and returns their results in thread order. A panic in a thread is re-raised here.
pub fn storm<T, F>(threads: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    let barrier = Arc::new(Barrier::new(threads));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            let work = Arc::clone(&work);
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    work(t)
                })
                .expect("spawn storm thread")
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
}

pub mod linearizability;

/// Whether the long reliability run was asked for (`MAPWRAPPER_LONG=1`); tests then use their
/// long-run sizes instead of the CI sizes.
pub fn long_run() -> bool {
    std::env::var_os("MAPWRAPPER_LONG").is_some_and(|v| v != "0")
}

/// `ci` normally, `long` in the long run.
pub fn scale(ci: usize, long: usize) -> usize {
    if long_run() {
        long
    } else {
        ci
    }
}

/// Runs `f` on a helper thread and fails (instead of hanging CI) if it does not finish
/// within `limit`.
pub fn within<T: Send + 'static>(limit: std::time::Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("did not finish within {limit:?}: a hang"),
    }
}

/// With the `deadlock-detection` feature: starts a thread that asks parking_lot's detector
/// every 100 ms and panics the process with the cycle if it finds one. Without the feature,
/// does nothing (the detector is compiled out).
pub fn watch_for_deadlocks() {
    #[cfg(feature = "deadlock-detection")]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            thread::spawn(|| loop {
                thread::sleep(std::time::Duration::from_millis(100));
                let cycles = parking_lot::deadlock::check_deadlock();
                if !cycles.is_empty() {
                    eprintln!("parking_lot found {} deadlock cycle(s):", cycles.len());
                    for t in cycles.iter().flatten() {
                        eprintln!("thread {:?}:\n{:?}", t.thread_id(), t.backtrace());
                    }
                    std::process::abort();
                }
            });
        });
    }
}
