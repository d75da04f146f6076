//! A fixed sequence of single-key operations on a default map, for instruction counts per
//! operation under callgrind (README "Performance"):
//!
//! ```text
//! cargo build --release --example op_counts
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.N target/release/examples/op_counts N
//! ```
//!
//! run for two N; (Ir(N2) − Ir(N1)) / (N2 − N1) is the cost of one insert + one get_cloned +
//! one contains_key + one update + one remove, setup excluded. Uses only the API every
//! version has, so the same file measures a change before and after.

use std::hint::black_box;

use map_wrapper::MapWrapper;

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let map: MapWrapper<u64, u64> = MapWrapper::new();
    let key = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for i in 0..n {
        black_box(map.insert(key(i), i).unwrap());
    }
    for i in 0..n {
        black_box(map.get_cloned(&key(i)).unwrap());
        black_box(map.contains_key(&key(i)).unwrap());
        black_box(map.update(&key(i), |v| *v += 1).unwrap());
    }
    for i in 0..n {
        black_box(map.remove(&key(i)).unwrap());
    }
}
