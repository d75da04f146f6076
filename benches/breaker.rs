//! What the circuit breaker and statistics cost: the same map workload with them on and off,
//! on 1 and 2 threads, in one run, printed as throughput ratios (on / off; the target is at
//! least 0.97).
//!
//! Run: `cargo bench --bench breaker` (add `-- --quick` for a shorter run). Besides criterion's
//! own figures it prints a paired comparison: short alternating rounds of "off" and "on"
//! (so both see the same machine load), and the median of the per-round ratios.
//!
//! **Time is CPU time** of the worker threads (summed over threads), not wall time: on a
//! shared machine wall time mostly measures the neighbours, while CPU time still includes
//! everything the map does, cache misses and cache-line contention between the two threads
//! included. Throughput is operations per CPU-second.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use cpu_time::ThreadTime;
use criterion::{Criterion, Throughput};
use map_wrapper::breaker::BreakerConfig;
use map_wrapper::MapWrapper;

/// A large map: 2^20 entries, so that an operation pays the cache misses a real one does.
const KEYS: u64 = 1 << 20;
/// Operations per thread per measured batch (large enough that starting threads is noise).
const BATCH: u64 = 1 << 15;

#[derive(Clone, Copy, Debug)]
enum Setup {
    /// No statistics, no breaker: the map as the core built it.
    Off,
    /// Statistics and a breaker with their defaults (1 in 64 operations timed).
    On,
    /// Statistics and a breaker, every operation timed: what sampling saves.
    OnTimeAll,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Off => "off",
            Setup::On => "on",
            Setup::OnTimeAll => "on_time_every_op",
        }
    }

    fn build(self) -> Arc<MapWrapper<u64, u64>> {
        self.build_with(KEYS)
    }

    fn build_with(self, keys: u64) -> Arc<MapWrapper<u64, u64>> {
        let b = MapWrapper::builder();
        let b = match self {
            Setup::Off => b.stats(false),
            Setup::On => b.breaker(BreakerConfig::new()),
            Setup::OnTimeAll => b.breaker(BreakerConfig::new()).latency_sampling(1),
        };
        let map = b.build().expect("valid config");
        map.extend((0..keys).map(|k| (k, k))).expect("fill");
        Arc::new(map)
    }
}

/// The workload of one thread: 7 reads to 1 write over pseudo-random keys below `keys` (all
/// present: the writes replace values).
fn work(map: &MapWrapper<u64, u64>, keys: u64, seed: u64, ops: u64) {
    let mut x = seed | 1;
    for _ in 0..ops {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = x % keys;
        if x & 7 == 0 {
            black_box(map.insert(key, x).expect("no contention to speak of"));
        } else {
            black_box(map.get_cloned(&key).expect("no contention to speak of"));
        }
    }
}

/// Runs `ops` operations on each of `threads` threads, all started together; the CPU time
/// the threads spent, summed.
fn run(map: &Arc<MapWrapper<u64, u64>>, threads: usize, ops: u64, round: u64) -> Duration {
    run_keys(map, KEYS, threads, ops, round)
}

fn run_keys(map: &Arc<MapWrapper<u64, u64>>, keys: u64, threads: usize, ops: u64, round: u64) -> Duration {
    if threads == 1 {
        let start = ThreadTime::now();
        work(map, keys, round.wrapping_mul(0x9E37_79B9_7F4A_7C15), ops);
        return start.elapsed();
    }
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (map, barrier) = (Arc::clone(map), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let start = ThreadTime::now();
                work(&map, keys, (round * 16 + t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15), ops);
                start.elapsed()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("worker")).sum()
}

fn bench(c: &mut Criterion) {
    let setups = [Setup::Off, Setup::On, Setup::OnTimeAll];
    let maps: Vec<_> = setups.iter().map(|s| (*s, s.build())).collect();
    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("breaker_{threads}t"));
        group.throughput(Throughput::Elements(BATCH * threads as u64));
        for (setup, map) in &maps {
            group.bench_function(setup.name(), |b| {
                let mut round = 0;
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        round += 1;
                        total += run(map, threads, BATCH, round);
                    }
                    total
                });
            });
        }
        group.finish();
    }
}

/// Alternating rounds of each setup against "off"; the median of the per-round ratios of
/// throughput (off time / setup time). Where a large table lands in memory changes its speed
/// by several per cent, so each setup has `INSTANCES` maps, built interleaved, and round `r`
/// pairs instance `r % INSTANCES` of each.
fn paired(rounds: usize, ops: u64) {
    const INSTANCES: usize = 3;
    let mut off = Vec::new();
    let mut others = [Setup::On, Setup::OnTimeAll].map(|s| (s, Vec::new()));
    for _ in 0..INSTANCES {
        off.push(Setup::Off.build());
        for (s, maps) in &mut others {
            maps.push(s.build());
        }
    }
    println!(
        "\npaired comparison: {rounds} alternating rounds of {ops} ops per thread over {INSTANCES} \
         instances, median ratio of CPU-time throughput"
    );
    for threads in [1usize, 2] {
        for (setup, maps) in &others {
            let mut ratios = Vec::with_capacity(rounds);
            for r in 0..rounds as u64 {
                let (off, map) = (&off[r as usize % INSTANCES], &maps[r as usize % INSTANCES]);
                // Alternate which goes first, so neither always gets the warmer cache.
                let (a, b) = if (r / INSTANCES as u64) % 2 == 0 {
                    let a = run(off, threads, ops, r);
                    (a, run(map, threads, ops, r))
                } else {
                    let b = run(map, threads, ops, r);
                    (run(off, threads, ops, r), b)
                };
                ratios.push(a.as_secs_f64() / b.as_secs_f64());
            }
            ratios.sort_by(f64::total_cmp);
            let median = ratios[rounds / 2];
            let (lo, hi) = (ratios[rounds / 4], ratios[rounds * 3 / 4]);
            println!(
                "  {threads} thread(s): {:<17} / off = {median:.3}  (quartiles {lo:.3} .. {hi:.3})",
                setup.name()
            );
        }
    }
}

/// The fixed cost per operation, where an operation is cheap: a 1024-key map that stays in
/// cache. Prints CPU nanoseconds per operation, off and on (medians of alternating rounds).
fn fixed_cost(rounds: usize, ops: u64) {
    let off = Setup::Off.build_with(1024);
    let on = Setup::On.build_with(1024);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds as u64 {
        a.push(run_keys(&off, 1024, 1, ops, r).as_nanos() as f64 / ops as f64);
        b.push(run_keys(&on, 1024, 1, ops, r).as_nanos() as f64 / ops as f64);
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    // The median, and the fastest round (the least disturbed by other processes).
    let (am, bm, a0, b0) = (a[rounds / 2], b[rounds / 2], a[0], b[0]);
    println!(
        "\nfixed cost, 1 thread, 1024-key map in cache: median off {am:.1} ns/op, on {bm:.1} ns/op \
         (+{:.1} ns); fastest round off {a0:.1}, on {b0:.1} (+{:.1} ns)",
        bm - am,
        b0 - a0
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    paired(if quick { 21 } else { 101 }, 1 << 16);
    fixed_cost(if quick { 21 } else { 101 }, 1 << 16);
}
