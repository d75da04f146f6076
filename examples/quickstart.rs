//! Quickstart: a shared map under threads, a timeout and a cancellation, printed as they happen.
//!
//! Run: `cargo run --example quickstart`

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use map_wrapper::{CancelToken, ErrorKind, MapError, MapWrapper, OpContext};

fn main() -> Result<(), MapError> {
    let inventory: Arc<MapWrapper<String, u32>> =
        Arc::new(MapWrapper::builder().name("inventory").timeout(Duration::from_millis(100)).build()?);
    println!("== a shared map: {inventory:?}");

    // 1. Four threads stock items at once; each runs as its own actor.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let inventory = Arc::clone(&inventory);
            thread::spawn(move || -> Result<(), MapError> {
                let _as = OpContext::new().actor(format!("worker-{w}")).enter();
                for i in 0..250 {
                    let item = format!("item-{}", i % 50);
                    inventory.entry(item).and_modify(|n| *n += 1).or_insert(1)?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked")?;
    }
    let total: u32 = inventory.iter()?.map(|(_, n)| n).sum();
    println!("4 threads x 250 upserts: {} distinct items, {} units (expected 1000)", inventory.len()?, total);

    // 2. A timeout: one thread holds a read guard on "item-0" for a while; a writer to the
    //    same shard gives up at its deadline instead of hanging.
    let holder = {
        let inventory = Arc::clone(&inventory);
        let (tx, rx) = std::sync::mpsc::channel();
        let h = thread::spawn(move || {
            let guard = inventory.get("item-0").unwrap().unwrap();
            tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(400));
            drop(guard);
        });
        rx.recv().unwrap();
        h
    };
    let started = Instant::now();
    match inventory.insert("item-0".into(), 0) {
        Err(e) if e.kind() == ErrorKind::Timeout => {
            println!("\n== timeout after {:?} [{}]:\n   {e}", started.elapsed(), e.code())
        }
        other => println!("unexpected: {other:?}"),
    }

    // 3. A cancellation: a caller waiting on the same held shard gives up when its token is
    //    cancelled from another thread.
    let token = CancelToken::new();
    let canceller = {
        let token = token.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            token.cancel();
        })
    };
    // (A context can shorten the map's 100 ms timeout, never lengthen it.)
    let ctx = OpContext::new().cancel_token(token);
    let started = Instant::now();
    match inventory.with(&ctx).remove("item-0") {
        Err(e) if e.kind() == ErrorKind::Cancelled => {
            println!("\n== cancelled after {:?} [{}]:\n   {e}", started.elapsed(), e.code())
        }
        other => println!("unexpected: {other:?}"),
    }
    canceller.join().unwrap();
    holder.join().unwrap();

    // 4. A re-entrant call that would deadlock is refused at once.
    let guard = inventory.get("item-1")?.expect("stocked");
    match inventory.insert("item-1".into(), *guard + 1) {
        Err(e) => println!("\n== refused while holding a guard [{}]:\n   {e}", e.code()),
        Ok(_) => println!("unexpected: insert succeeded"),
    }
    drop(guard);

    println!(
        "\nafter all that, item-0 still holds {:?} units (nothing half-applied)",
        inventory.get_cloned("item-0")?
    );
    Ok(())
}
