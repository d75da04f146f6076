//! The standard mixes, their pre-generated operation streams, and one timed run.
//!
//! Every thread owns the keys it inserted (and its share of the prefill), and its stream is
//! generated ahead of time against a model of that set: a read, update or remove always names a
//! key that is present, an insert always a key never seen before. So every operation must
//! succeed, the run checks that it did on every map, and no random number is drawn while the
//! clock runs.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::adapters::BenchMap;

/// An operation mix in percent (read, insert, remove, update), as named by the usual
/// concurrent-map benchmarks, and, for a mix with a shape of its own, its size.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub name: &'static str,
    pub read: u32,
    pub insert: u32,
    pub remove: u32,
    pub update: u32,
    /// Its own size: (entries prefilled, operations per run over all threads, the capacity
    /// the maps are built with). `None`: the run's `--prefill` and `--ops`, no capacity.
    pub size: Option<(u64, usize, usize)>,
}

pub const MIXES: [Mix; 4] = [
    Mix { name: "ReadHeavy", read: 98, insert: 1, remove: 1, update: 0, size: None },
    Mix { name: "Exchange", read: 10, insert: 40, remove: 40, update: 10, size: None },
    Mix { name: "RapidGrow", read: 5, insert: 80, remove: 5, update: 10, size: None },
    // A map that stays in cache, the shape of the seed's own benchmark: about 1,000 keys,
    // 90 % reads, 5 % inserts, 5 % removes, capacity 2^10, 2 M operations a run. Here the
    // per-operation cost of the policies shows most.
    Mix {
        name: "SmallMap",
        read: 90,
        insert: 5,
        remove: 5,
        update: 0,
        size: Some((1_000, 2_000_000, 1 << 10)),
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Read,
    Insert,
    Remove,
    Update,
}

/// A bijection on u64 (the splitmix64 finaliser): distinct ids give distinct keys, spread over
/// all bits as a hash table sees them in practice.
pub fn key_of(thread: usize, id: u64) -> u64 {
    let mut z = ((thread as u64) << 48 | id).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small deterministic generator (xorshift64*), used only while building streams.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) * n) >> 32
    }
}

/// One thread's share: how many keys it prefills, and its stream of operations.
pub struct Stream {
    prefill: u64,
    keys: Vec<u64>,
    ops: Vec<Op>,
}

/// Everything one run of one mix at one thread count needs, built once and reused for every
/// map and every repetition.
pub struct Plan {
    pub threads: usize,
    /// The capacity the maps are built with (0: none given).
    pub capacity: usize,
    streams: Vec<Stream>,
}

impl Plan {
    /// `prefill` keys in the table before the clock starts, split over the threads, then
    /// `ops_per_thread` operations per thread.
    /// A mix with its own `size` uses it instead.
    pub fn new(mix: Mix, threads: usize, prefill: u64, ops_per_thread: usize) -> Plan {
        let (prefill, ops_per_thread, capacity) = match mix.size {
            Some((prefill, total, capacity)) => (prefill, total / threads, capacity),
            None => (prefill, ops_per_thread, 0),
        };
        assert_eq!(mix.read + mix.insert + mix.remove + mix.update, 100, "{} is not in percent", mix.name);
        let streams = (0..threads)
            .map(|t| {
                let share = prefill / threads as u64 + u64::from((t as u64) < prefill % threads as u64);
                Self::stream(mix, t, share, ops_per_thread)
            })
            .collect();
        Plan { threads, capacity, streams }
    }

    fn stream(mix: Mix, thread: usize, prefill: u64, n: usize) -> Stream {
        let mut rng = Rng(key_of(thread, 1 << 40) | 1);
        let mut live: Vec<u64> = (0..prefill).map(|i| key_of(thread, i)).collect();
        let mut next = prefill;
        let mut keys = Vec::with_capacity(n);
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let r = rng.below(100) as u32;
            let mut op = if r < mix.read {
                Op::Read
            } else if r < mix.read + mix.insert {
                Op::Insert
            } else if r < mix.read + mix.insert + mix.remove {
                Op::Remove
            } else {
                Op::Update
            };
            if live.is_empty() {
                op = Op::Insert;
            }
            let key = match op {
                Op::Insert => {
                    next += 1;
                    live.push(key_of(thread, next - 1));
                    key_of(thread, next - 1)
                }
                Op::Remove => live.swap_remove(rng.below(live.len() as u64) as usize),
                Op::Read | Op::Update => live[rng.below(live.len() as u64) as usize],
            };
            keys.push(key);
            ops.push(op);
        }
        Stream { prefill, keys, ops }
    }

    pub fn total_ops(&self) -> usize {
        self.streams.iter().map(|s| s.ops.len()).sum()
    }
}

/// Prefills `map` (on every CPU, whatever the thread count of the run: it is not timed), then
/// starts all threads at once, runs each stream, and returns the wall time from the first
/// start to the last finish. Panics if any operation failed to do what the stream expected (a
/// map that loses keys must not post a figure).
pub fn run<M: BenchMap>(map: &M, plan: &Plan) -> Duration {
    prefill(map, plan);
    let barrier = Barrier::new(plan.threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .streams
            .iter()
            .enumerate()
            .map(|(t, stream)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let mut done = 0usize;
                    for (&key, &op) in stream.keys.iter().zip(&stream.ops) {
                        let ok = match op {
                            Op::Read => map.read(key),
                            Op::Insert => map.insert(key, key),
                            Op::Remove => map.remove(key),
                            Op::Update => map.update(key),
                        };
                        done += usize::from(ok);
                    }
                    let end = Instant::now();
                    assert_eq!(black_box(done), stream.ops.len(), "thread {t}: some operations missed");
                    (start, end)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread panicked")).collect()
    });
    let start = spans.iter().map(|s| s.0).min().expect("at least one thread");
    let end = spans.iter().map(|s| s.1).max().expect("at least one thread");
    end - start
}

/// Inserts every stream's prefill keys, split over as many threads as there are CPUs.
fn prefill<M: BenchMap>(map: &M, plan: &Plan) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    std::thread::scope(|s| {
        for worker in 0..cpus {
            s.spawn(move || {
                for (t, stream) in plan.streams.iter().enumerate() {
                    for i in (worker..stream.prefill).step_by(cpus as usize) {
                        assert!(map.insert(key_of(t, i), i), "prefill key {i} of thread {t} already present");
                    }
                }
            });
        }
    });
}
