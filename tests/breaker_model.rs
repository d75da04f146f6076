//! The breaker's count-based window against a model: a queue of the last N outcomes, and the
//! rule "when a slow or failed call completes, with at least the minimum calls in the window,
//! open if a rate reaches its threshold". Up to 1024 calls a count window is exact, so the map
//! must agree with the model after every call.

use std::collections::VecDeque;
use std::time::Duration;

use map_wrapper::breaker::{BreakerConfig, BreakerState, OpenWait, SlidingWindow};
use map_wrapper::clock::TestClock;
use map_wrapper::MapWrapper;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// An insert: ok.
    Ok,
    /// An update whose closure moves the test clock past the slow threshold: slow.
    Slow,
    /// A `get` guard (ok) and a write to the same key while it lives: would-deadlock, failed.
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Slow,
    Failed,
}

struct Model {
    size: usize,
    minimum: usize,
    failure: Option<f64>,
    slow: Option<f64>,
    combined: Option<f64>,
    window: VecDeque<Outcome>,
    open: bool,
}

impl Model {
    fn push(&mut self, o: Outcome) {
        if self.open {
            return;
        }
        if self.window.len() == self.size {
            self.window.pop_front();
        }
        self.window.push_back(o);
        if o == Outcome::Ok || self.window.len() < self.minimum {
            return;
        }
        let calls = self.window.len() as f64;
        let share = |f: &dyn Fn(&Outcome) -> bool| self.window.iter().filter(|o| f(o)).count() as f64 / calls;
        let failed = share(&|o| *o == Outcome::Failed);
        let slow = share(&|o| *o == Outcome::Slow);
        let bad = share(&|o| *o != Outcome::Ok);
        let reached = |t: Option<f64>, r: f64| t.is_some_and(|t| r >= t);
        self.open = reached(self.failure, failed) || reached(self.slow, slow) || reached(self.combined, bad);
    }
}

fn rate() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![Just(None), (1u32..=10).prop_map(|t| Some(f64::from(t) / 10.0))]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/proptest-regressions/breaker_model.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn count_window_matches_the_model(
        size in 1usize..24,
        minimum in 1usize..24,
        failure in rate(),
        slow in rate(),
        combined in rate(),
        steps in proptest::collection::vec(prop_oneof![3 => Just(Step::Ok), 1 => Just(Step::Slow), 1 => Just(Step::Fail)], 1..80),
    ) {
        prop_assume!(failure.is_some() || slow.is_some() || combined.is_some());
        let clock = TestClock::new();
        let map: MapWrapper<u32, u32> = MapWrapper::builder()
            .shards(1)
            .clock(clock.clone())
            .latency_sampling(1)
            .breaker(
                BreakerConfig::new()
                    .window(SlidingWindow::count(size as u32))
                    .minimum_calls(minimum as u32)
                    .failure_rate(failure)
                    .slow_rate(slow)
                    .combined_rate(combined)
                    .open_wait(OpenWait::Fixed(Duration::from_secs(3600))),
            )
            .build()
            .unwrap();
        let mut model = Model { size, minimum, failure, slow, combined, window: VecDeque::new(), open: false };
        map.insert(0, 0).unwrap();
        model.push(Outcome::Ok);
        for step in steps {
            if model.open {
                prop_assert_eq!(map.insert(0, 0).unwrap_err().code(), "CIRCUIT_OPEN");
                continue;
            }
            match step {
                Step::Ok => {
                    map.insert(0, 0).unwrap();
                    model.push(Outcome::Ok);
                }
                Step::Slow => {
                    map.update(&0, |_| clock.advance(Duration::from_millis(60))).unwrap();
                    model.push(Outcome::Slow);
                }
                Step::Fail => {
                    let guard = map.get(&0).unwrap().unwrap();
                    model.push(Outcome::Ok);
                    prop_assert_eq!(map.insert(0, 1).unwrap_err().code(), "WOULD_DEADLOCK");
                    drop(guard);
                    model.push(Outcome::Failed);
                }
            }
            let want = if model.open { BreakerState::Open } else { BreakerState::Closed };
            prop_assert_eq!(map.breaker().unwrap().state(), want);
            if !model.open {
                let b = map.stats().breaker.unwrap();
                prop_assert_eq!(b.window_calls, model.window.len() as u64);
            }
        }
    }
}
