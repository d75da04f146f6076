//! Uncontended single-thread operations, for counting instructions with callgrind: the cost of
//! the deadlock bookkeeping (a `get` guard's held mark, an `update` closure's mark) when no
//! thread waits. Run it twice with different counts; the difference divided by the extra
//! operations is the cost per operation, free of start-up:
//!
//! ```text
//! cargo bench --bench uncontended --no-run
//! B=$(ls -t target/release/deps/uncontended-* | grep -v '\.d$' | head -1)
//! for n in 100000 200000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null $B $n 2>&1 | grep refs; done
//! ```
//!
//! Each round is one `insert`, one `get` held while a `get_cloned` of another key runs, and
//! one `update`: four operations.

use map_wrapper::MapWrapper;

fn main() {
    let rounds: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let map: MapWrapper<u32, u64> = MapWrapper::builder().shards(64).build().expect("valid settings");
    for k in 0..1024 {
        map.insert(k, 0).expect("uncontended");
    }
    let mut sum = 0u64;
    for i in 0..rounds {
        let k = i & 1023;
        map.insert(k, u64::from(i)).expect("uncontended");
        {
            let g = map.get(&k).expect("uncontended").expect("present");
            sum = sum.wrapping_add(*g);
            sum = sum.wrapping_add(map.get_cloned(&(k ^ 512)).expect("uncontended").unwrap_or(0));
        }
        map.update(&k, |v| *v += 1).expect("uncontended");
    }
    println!("{}", std::hint::black_box(sum));
}
