//! Async operations on plain tokio tasks: a deadline, a cancel, and a dropped future.
//!
//! `cargo run --example async_tokio`
//!
//! One task holds a guard on a key's shard (a long read, say); three others try to write that
//! key with `insert_async`. Each waits in the shard's queue without blocking its worker
//! thread, and gives up in its own way: at its deadline, when its token is cancelled, or when
//! tokio drops it (`tokio::time::timeout`). None of the three writes lands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use map_wrapper::{CancelToken, MapWrapper, OpContext};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let accounts: Arc<MapWrapper<String, i64>> =
        Arc::new(MapWrapper::builder().name("accounts").timeout(Duration::from_secs(5)).build()?);
    accounts.insert_async("alice".into(), 100).await?;

    // A reader holds alice's shard until told to let go (on its own thread: a `Ref` guard
    // belongs to the thread that took it).
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held_tx, held) = tokio::sync::oneshot::channel();
    let reader = {
        let accounts = accounts.clone();
        std::thread::spawn(move || {
            let guard = accounts.get("alice").unwrap().unwrap();
            held_tx.send(*guard).unwrap();
            released.recv().ok();
        })
    };
    println!("reader holds alice's shard (balance {})", held.await?);

    // 1. A deadline: this write gives up after 50 ms.
    let deadline = {
        let accounts = accounts.clone();
        tokio::spawn(async move {
            let ctx = OpContext::new().timeout(Duration::from_millis(50)).actor("payments");
            let t = Instant::now();
            let r = accounts.with(&ctx).insert_async("alice".into(), 0).await;
            (r, t.elapsed())
        })
    };

    // 2. A cancel: this write is cancelled by another task after 20 ms.
    let token = CancelToken::new();
    let cancelled = {
        let accounts = accounts.clone();
        let ctx = OpContext::new().cancel_token(token.clone()).actor("refunds");
        tokio::spawn(ctx.scope(async move { accounts.insert_async("alice".into(), -1).await }))
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    token.cancel();

    // 3. A dropped future: tokio's timeout drops the waiting insert after 30 ms.
    let dropped =
        tokio::time::timeout(Duration::from_millis(30), accounts.insert_async("alice".into(), 7)).await;

    let (r, took) = deadline.await?;
    println!("deadline : {} after {took:?}", r.unwrap_err());
    println!("cancel   : {}", cancelled.await?.unwrap_err());
    println!(
        "dropped  : {}",
        if dropped.is_err() { "tokio::time::timeout dropped the future" } else { "finished?" }
    );

    release.send(())?;
    reader.join().unwrap();
    // None of the three writes landed; the shard is free again.
    assert_eq!(accounts.get_cloned_async("alice").await?, Some(100));
    accounts.update_async("alice", |b| *b -= 30).await?;
    println!("alice    : {:?}", accounts.get_cloned_async("alice").await?);
    Ok(())
}
