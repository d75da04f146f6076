//! The deadline timer of async waiters: one background thread for the process, started the
//! first time a task waits with a deadline.
//!
//! Why a thread of our own: the library must not depend on a runtime (tokio's timer, or
//! async-io's), and a future that only polls the clock when something else wakes it would
//! miss its deadline while the lock stays held. A user-supplied sleep would make every async
//! call take a runtime handle. One thread that sleeps until the earliest deadline and wakes
//! the waiters whose deadline passed costs nothing while no task waits, and a wake-up per
//! deadline when they do (a waiter granted the lock first removes its entry).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;
use std::task::Waker;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

struct Timer {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Deadlines in order; an entry whose id is no longer in `wakers` was cancelled and is
    /// skipped (removing from the middle of a heap is not possible).
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    wakers: HashMap<u64, Waker>,
    next_id: u64,
}

/// A registered deadline; dropping it unregisters it.
#[derive(Debug)]
pub(crate) struct TimerEntry {
    id: u64,
}

/// Wakes `waker` once `deadline` has passed, unless the returned entry is dropped first.
/// `None` if the timer thread could not be started (the caller then polls the clock itself).
pub(crate) fn register(deadline: Instant, waker: Waker) -> Option<TimerEntry> {
    let timer = timer()?;
    let mut s = timer.state.lock();
    let id = s.next_id;
    s.next_id += 1;
    let earliest = s.heap.peek().map(|Reverse((d, _))| *d);
    s.heap.push(Reverse((deadline, id)));
    s.wakers.insert(id, waker);
    // Entries of waiters that left before their deadline pile up in the heap until that
    // deadline: drop them when they outnumber the live ones.
    if s.heap.len() > 64 && s.heap.len() > 4 * s.wakers.len() {
        let State { heap, wakers, .. } = &mut *s;
        heap.retain(|Reverse((_, id))| wakers.contains_key(id));
    }
    drop(s);
    if !matches!(earliest, Some(e) if deadline >= e) {
        timer.changed.notify_one();
    }
    Some(TimerEntry { id })
}

impl Drop for TimerEntry {
    fn drop(&mut self) {
        if let Some(timer) = TIMER.get().and_then(Option::as_ref) {
            timer.state.lock().wakers.remove(&self.id);
        }
    }
}

static TIMER: OnceLock<Option<Timer>> = OnceLock::new();

fn timer() -> Option<&'static Timer> {
    TIMER
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("map-wrapper-timer".into())
                .spawn(run)
                .ok()
                .map(|_| Timer { state: Mutex::new(State::default()), changed: Condvar::new() })
        })
        .as_ref()
}

/// The timer thread: wakes the waiters whose deadline passed, then sleeps until the next.
fn run() {
    // The thread starts inside `get_or_init`; wait until the timer is published.
    let timer = loop {
        match TIMER.get() {
            Some(Some(t)) => break t,
            Some(None) => return,
            None => std::thread::yield_now(),
        }
    };
    let mut s = timer.state.lock();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(&Reverse((deadline, id))) = s.heap.peek() {
            if deadline > now {
                break;
            }
            s.heap.pop();
            if let Some(w) = s.wakers.remove(&id) {
                due.push(w);
            }
        }
        if !due.is_empty() {
            drop(s);
            due.into_iter().for_each(Waker::wake);
            s = timer.state.lock();
            continue;
        }
        match s.heap.peek() {
            None => timer.changed.wait(&mut s),
            Some(&Reverse((deadline, _))) => {
                let _ = timer.changed.wait_until(&mut s, deadline);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    struct Count(AtomicUsize, std::thread::Thread);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.unpark();
        }
    }

    #[test]
    fn wakes_after_the_deadline_and_not_before() {
        let c = Arc::new(Count(AtomicUsize::new(0), std::thread::current()));
        let deadline = Instant::now() + Duration::from_millis(30);
        let _e = register(deadline, Waker::from(c.clone())).expect("timer thread");
        let give_up = Instant::now() + Duration::from_secs(10);
        while c.0.load(Ordering::SeqCst) == 0 && Instant::now() < give_up {
            std::thread::park_timeout(Duration::from_millis(50));
        }
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        assert!(Instant::now() >= deadline, "woken before its deadline");
    }

    #[test]
    fn a_dropped_entry_never_wakes() {
        let c = Arc::new(Count(AtomicUsize::new(0), std::thread::current()));
        let e = register(Instant::now() + Duration::from_millis(20), Waker::from(c.clone())).unwrap();
        drop(e);
        // A later entry on the same thread proves the timer passed the dropped one's deadline.
        let c2 = Arc::new(Count(AtomicUsize::new(0), std::thread::current()));
        let _e2 = register(Instant::now() + Duration::from_millis(40), Waker::from(c2.clone())).unwrap();
        let give_up = Instant::now() + Duration::from_secs(10);
        while c2.0.load(Ordering::SeqCst) == 0 && Instant::now() < give_up {
            std::thread::park_timeout(Duration::from_millis(50));
        }
        assert_eq!(c2.0.load(Ordering::SeqCst), 1);
        assert_eq!(c.0.load(Ordering::SeqCst), 0);
    }
}
