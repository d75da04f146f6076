//! Billing: a domain struct with plain `HashMap` fields, guarded by one attribute, shared by
//! checkout, settlement and reporting threads, all its maps audited into one trail. Prints
//! what happened (including a timeout and a refused deadlock), the trail, and its verdict.
//!
//! Run: `cargo run --example billing`

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use map_wrapper::audit::verify::{self, VerifyOptions};
use map_wrapper::audit::{Auditor, MemorySink};
use map_wrapper::{guarded_map, MapError, OpContext};

type InvoiceId = u64;
type CustomerId = String;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Invoice {
    customer: CustomerId,
    cents: i64,
}

/// Everything billing knows. Without the attribute this would need a lock per map (or one for
/// all), and nothing would stop a report from holding it forever.
#[guarded_map(audit = "billing", timeout_ms = 200, shards = 16)]
struct Billing {
    /// Open invoices by number.
    invoices: HashMap<InvoiceId, Invoice>,
    /// What each customer owes, in cents.
    balances: HashMap<CustomerId, i64>,
    /// The payment card token of each customer: kept out of the audit trail.
    #[guard(redact)]
    cards: HashMap<CustomerId, String>,
    /// Not a map: left as it is.
    currency: String,
}

const CUSTOMERS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
const CHECKOUTS: u64 = 4;
const INVOICES_PER_CHECKOUT: u64 = 50;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One auditor for the whole struct: every map writes to the same hash-chained trail.
    let trail = MemorySink::new();
    let auditor = Auditor::new(trail.clone()).default_actor("billing-admin");
    let billing = Arc::new(Billing { currency: "EUR".into(), ..Billing::with_auditor(&auditor)? });
    println!(
        "== {} maps, {} ms timeout: {}, {}, {}",
        billing.currency,
        billing.invoices().default_timeout().as_millis(),
        billing.invoices().name(),
        billing.balances().name(),
        billing.cards().name()
    );
    let _setup = OpContext::new().actor("billing-setup").enter();
    for (i, customer) in CUSTOMERS.iter().enumerate() {
        billing.cards_insert(customer.to_string(), format!("tok_{i:04}"))?;
        billing.balances_insert(customer.to_string(), 0)?;
    }

    drop(_setup);

    // 1. Checkout threads issue invoices and charge balances; a settlement thread pays every
    //    third invoice as soon as it sees it. All share one struct, no lock in sight.
    let checkouts: Vec<_> = (0..CHECKOUTS)
        .map(|c| {
            let billing = Arc::clone(&billing);
            thread::spawn(move || -> Result<i64, MapError> {
                let _as = OpContext::new().actor(format!("checkout-{c}")).enter();
                let mut issued = 0;
                for n in 0..INVOICES_PER_CHECKOUT {
                    let id = c * 1000 + n;
                    let customer = CUSTOMERS[(id % CUSTOMERS.len() as u64) as usize].to_string();
                    let cents = 100 + (id % 7) as i64 * 25;
                    billing.balances_update(&customer, |owed| *owed += cents)?;
                    billing.invoices_insert(id, Invoice { customer, cents })?;
                    issued += cents;
                }
                Ok(issued)
            })
        })
        .collect();
    let settlement = {
        let billing = Arc::clone(&billing);
        thread::spawn(move || -> Result<i64, MapError> {
            let _as = OpContext::new().actor("settlement").enter();
            let mut paid = 0;
            for c in 0..CHECKOUTS {
                for n in (0..INVOICES_PER_CHECKOUT).step_by(3) {
                    let id = c * 1000 + n;
                    // The invoice may not be issued yet: wait for it, boundedly.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < deadline {
                        if let Some(invoice) = billing.invoices_remove(&id)? {
                            billing.balances_update(&invoice.customer, |owed| *owed -= invoice.cents)?;
                            paid += invoice.cents;
                            break;
                        }
                        thread::yield_now();
                    }
                }
            }
            Ok(paid)
        })
    };
    let mut issued = 0;
    for c in checkouts {
        issued += c.join().expect("checkout thread")?;
    }
    let paid = settlement.join().expect("settlement thread")?;
    let open: i64 = billing.invoices().iter()?.map(|(_, inv)| inv.cents).sum();
    let owed: i64 = billing.balances().iter()?.map(|(_, cents)| cents).sum();
    println!(
        "\n== {CHECKOUTS} checkouts issued {} invoices ({issued} cents); settlement paid {paid} cents",
        CHECKOUTS * INVOICES_PER_CHECKOUT
    );
    println!(
        "   open invoices: {} worth {open} cents; balances owed: {owed} cents -> {}",
        billing.invoices_len()?,
        if open == owed && issued - paid == owed { "consistent" } else { "INCONSISTENT" }
    );
    let mut balances = billing.balances().snapshot()?;
    balances.sort();
    for (customer, cents) in balances {
        println!("   {customer:<9} owes {:>5}.{:02} {}", cents / 100, cents % 100, billing.currency);
    }

    // 2. A slow report holds a read guard on acme's balance for 500 ms. A charge to acme gives
    //    up at the struct's 200 ms deadline instead of hanging, and succeeds once retried.
    let (held_tx, held_rx) = mpsc::channel();
    let report = {
        let billing = Arc::clone(&billing);
        thread::spawn(move || -> Result<(), MapError> {
            let _as = OpContext::new().actor("monthly-report").enter();
            let owed = billing.balances_get("acme")?.expect("acme has a balance");
            held_tx.send(*owed).expect("main thread waits");
            thread::sleep(Duration::from_millis(500));
            Ok(())
        })
    };
    let seen = held_rx.recv().expect("report started");
    let started = Instant::now();
    match billing.balances_update("acme", |owed| *owed += 1) {
        Err(e) => println!(
            "\n== report holds acme ({seen} cents seen); a charge gave up after {} ms [{}]:\n   {e}",
            started.elapsed().as_millis(),
            e.code()
        ),
        Ok(_) => println!("\n== unexpected: the charge went through while the report held the shard"),
    }
    report.join().expect("report thread")?;
    billing.balances_update("acme", |owed| *owed += 1)?;
    println!("   after the report: charged, acme owes {:?} cents", billing.balances_get_cloned("acme")?);

    // 3. Calling back into the same shard from inside an update would deadlock: refused at once.
    let inner = billing.balances_update("globex", |_| billing.balances_get_cloned("globex"))?;
    match inner {
        Some(Err(e)) => println!("\n== re-entrant read inside an update refused [{}]:\n   {e}", e.code()),
        other => println!("\n== unexpected: {other:?}"),
    }

    // 4. The trail: one record per store and delete, from every thread, in one chain.
    let records = trail.records();
    let mut per_map: Vec<((String, String, String), usize)> = Vec::new();
    for r in &records {
        let id = (r.map.clone().unwrap_or_default(), r.op.clone(), r.outcome.clone());
        match per_map.iter_mut().find(|(k, _)| *k == id) {
            Some((_, n)) => *n += 1,
            None => per_map.push((id, 1)),
        }
    }
    per_map.sort();
    println!("\n== audit trail: {} records", records.len());
    for ((map, op, outcome), n) in per_map {
        println!("   {map:<17} {op:<7} {outcome:<8} x{n}");
    }
    println!("   the cards map, as the trail shows it (tokens redacted):");
    for r in records.iter().filter(|r| r.map.as_deref() == Some("billing.cards")).take(2) {
        let new = r.new.as_ref().map_or("-".to_string(), |v| v.to_string());
        println!(
            "   #{} {} key={} new={new} actor={}",
            r.seq,
            r.op,
            r.key.as_ref().map_or("-".into(), |k| k.to_string()),
            r.actor
        );
    }
    println!("   card tokens anywhere in the trail: {}", trail.text().matches("tok_").count());
    let report = verify::verify_bytes(
        &[("billing trail".into(), trail.text().into_bytes())],
        &VerifyOptions::default(),
    )?;
    println!("\n== verify the trail: {}", report.verdict_line());
    Ok(())
}
