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
