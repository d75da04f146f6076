//! A linearizability checker for single-key map operations, in the style of Wing & Gong:
//! search for a sequential order of the operations that respects real time (an operation that
//! returned before another was invoked comes first) and gives every operation the result it
//! actually returned, on a model that is one `Option<u64>` per key.
//!
//! Linearizability is local (Herlihy & Wing): a history of a map is linearizable iff its
//! restriction to each key is. So histories are split by key and each key is searched alone,
//! which keeps the search tiny.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// One single-key operation and the result it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOp {
    /// `insert(k, value)`.
    Insert {
        /// The value stored.
        value: u64,
        /// The previous value it returned.
        returned: Option<u64>,
    },
    /// `remove(k)`.
    Remove {
        /// The removed value it returned.
        returned: Option<u64>,
    },
    /// `get_cloned(k)`.
    Get {
        /// The value it returned.
        returned: Option<u64>,
    },
    /// `update(k, |v| { *v += 1; *v })`.
    Increment {
        /// The new value it returned (`None`: the key was absent).
        returned: Option<u64>,
    },
}

impl KeyOp {
    /// Applies the operation to the model; `Some(next)` when its result is consistent.
    fn apply(&self, state: Option<u64>) -> Option<Option<u64>> {
        match *self {
            KeyOp::Insert { value, returned } => (returned == state).then_some(Some(value)),
            KeyOp::Remove { returned } => (returned == state).then_some(None),
            KeyOp::Get { returned } => (returned == state).then_some(state),
            KeyOp::Increment { returned } => {
                let next = state.map(|v| v + 1);
                (returned == next).then_some(next)
            }
        }
    }
}

/// An operation with its invocation and response times (from one logical clock).
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// The key it touched.
    pub key: u64,
    /// What it did and returned.
    pub op: KeyOp,
    /// Logical time at invocation.
    pub invoked: u64,
    /// Logical time at response.
    pub returned: u64,
}

/// A logical clock shared by the threads of one history: strictly increasing stamps.
#[derive(Debug, Default)]
pub struct Clock(AtomicU64);

impl Clock {
    /// The next stamp.
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

/// Whether the whole history (all keys; each key starts at `initial[key]` or absent) is
/// linearizable. On failure, returns the key whose sub-history is not.
pub fn check(history: &[Event], initial: &BTreeMap<u64, u64>) -> Result<(), u64> {
    let mut by_key: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(e.key).or_default().push(*e);
    }
    for (key, events) in by_key {
        if !check_key(&events, initial.get(&key).copied()) {
            return Err(key);
        }
    }
    Ok(())
}

/// Wing–Gong search with memoization of (set of done operations, state).
fn check_key(events: &[Event], initial: Option<u64>) -> bool {
    assert!(events.len() <= 64, "sub-histories are kept small (<= 64 ops per key)");
    let mut seen: HashSet<(u64, Option<u64>)> = HashSet::new();
    search(events, 0, initial, &mut seen)
}

fn search(events: &[Event], done: u64, state: Option<u64>, seen: &mut HashSet<(u64, Option<u64>)>) -> bool {
    if done.count_ones() as usize == events.len() {
        return true;
    }
    if !seen.insert((done, state)) {
        return false;
    }
    // An operation may go next only if no pending operation returned before it was invoked.
    let pending = || events.iter().enumerate().filter(|(i, _)| done & (1 << i) == 0);
    let earliest_return = pending().map(|(_, e)| e.returned).min().unwrap_or(u64::MAX);
    for (i, e) in pending() {
        if e.invoked > earliest_return {
            continue;
        }
        if let Some(next) = e.op.apply(state) {
            if search(events, done | (1 << i), next, seen) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: KeyOp, invoked: u64, returned: u64) -> Event {
        Event { key: 1, op, invoked, returned }
    }

    #[test]
    fn overlapping_ops_may_linearize_either_way() {
        let h = [
            ev(KeyOp::Insert { value: 5, returned: None }, 0, 3),
            ev(KeyOp::Get { returned: Some(5) }, 1, 2),
        ];
        assert!(check(&h, &BTreeMap::new()).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h =
            [ev(KeyOp::Insert { value: 5, returned: None }, 0, 1), ev(KeyOp::Get { returned: None }, 2, 3)];
        assert_eq!(check(&h, &BTreeMap::new()), Err(1));
    }

    #[test]
    fn a_double_remove_is_caught() {
        let h =
            [ev(KeyOp::Remove { returned: Some(1) }, 0, 3), ev(KeyOp::Remove { returned: Some(1) }, 1, 2)];
        let init = BTreeMap::from([(1, 1)]);
        assert_eq!(check(&h, &init), Err(1));
    }

    #[test]
    fn lost_increment_is_caught() {
        let h = [
            ev(KeyOp::Increment { returned: Some(1) }, 0, 5),
            ev(KeyOp::Increment { returned: Some(1) }, 1, 4),
        ];
        let init = BTreeMap::from([(1, 0)]);
        assert_eq!(check(&h, &init), Err(1));
    }
}
