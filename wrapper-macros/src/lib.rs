//! Procedural macros of `map-wrapper`: the `#[guarded_map]` attribute and
//! `#[derive(GuardedMap)]`. Use them through the `map-wrapper` crate, which re-exports them
//! (and whose `__private` module the generated code names); this crate's paths are not a
//! stable interface.
//!
//! Both run the same three steps, as serde_derive does: read the struct into a small model
//! (modules `ast`, `attr`), check it and collect every mistake with its span (`check`), then
//! generate (`expand`).

mod ast;
mod attr;
mod attribute;
mod check;
mod ctxt;
mod derive;
mod expand;
mod manifest;

use proc_macro::TokenStream;

/// Guards a struct's map fields: each `HashMap<K, V>` (or `std::collections::HashMap<K, V>`,
/// or `HashMap<K, V, S>` with a custom hasher, kept as the map's hasher) field becomes a
/// `map_wrapper::MapWrapper<K, V, S>` named `"Struct.field"` in errors and the audit trail;
/// fields already declared `MapWrapper` are guarded as they are, a field whose type the macro
/// cannot see is a map (a type alias, `use HashMap as Map`) is guarded when marked
/// `#[guard(map)]`, and every other field is left untouched. The struct's doc gets a line
/// naming the fields guarded and those left as declared, with why (a `BTreeMap` is ordered and
/// `MapWrapper` is not; an `Option<HashMap>` is not a map). Then it generates what
/// [`GuardedMap`](derive@GuardedMap) does:
///
/// - `new()` (with the struct's visibility) and `Default`: every map empty and configured as
///   declared, every other field its `Default`. The settings are checked at compile time, so
///   neither can fail. `no_new` / `no_default` leave them out for your own `fn new(..)` or
///   `impl Default` (which can start from the other).
/// - `with_auditor(&Auditor) -> Result<Self, MapError>`: the same, with every map writing its
///   audit records to that one auditor (one sink, one chain). Keys and values must be
///   `Serialize`, except the values of `#[guard(redact)]` maps, which are never recorded.
/// - `attach_auditor(&mut self, &Auditor) -> Result<(), MapError>`: the same auditing for a
///   struct made by `new()`, `Default` or serde, keeping its contents (not recorded: the trail
///   starts there); on error nothing changed.
/// - per map field, with the field's visibility and doc comment: `field()` returning
///   `&MapWrapper<K, V>`, and the map's operations as `field_<op>`, each forwarding to the
///   `MapWrapper` method of that name with its signature (each returns `Result<_, MapError>`,
///   except `field_entry`, whose `or_*` call does): `field_get`, `field_get_cloned`,
///   `field_contains_key`, `field_insert`, `field_remove`, `field_update`, `field_len`,
///   `field_is_empty`, `field_entry`, `field_keys`, `field_values`, `field_iter`,
///   `field_retain`, `field_clear`, `field_extend`. So HashMap code ports call for call (the
///   table "Porting `HashMap` code" in the `map_wrapper` docs maps each HashMap method); every
///   other `MapWrapper` method is on `field()`.
/// - per map field, `field_get_mut`, `field_iter_mut` and `field_values_mut`, hidden, only to be
///   refused: a call is a compile error saying what to write instead (a `&mut V` would outlive
///   the map's lock and escape its audit trail).
///
/// The struct's `#[derive]`s of `Debug`, `Clone`, `PartialEq`, `Eq` and `Default` are taken
/// over (for the maps' own `Clone` and `PartialEq`, see `MapWrapper`):
///
/// - `Debug` shows each map's contents as a `HashMap` would (`{k: v, …}`), at most 64 entries
///   and a count of the rest, never waiting for a lock: the entries of the shards it could
///   read, and `<locked>: N shard(s) held for writing` for the others.
/// - `Clone` is a deep copy (also as `try_clone() -> Result<Self, MapError>`): each map copied
///   from a consistent snapshot into a new map with the same declared name and settings, **not
///   audited** (a copy's changes are not the original's history; `attach_auditor` if they
///   should be). `clone()` panics where `try_clone` fails, as `RefCell`'s does.
/// - `PartialEq` / `Eq` compare contents, as `HashMap`'s `==`; names and settings are not
///   compared.
/// - `Default` is the generated one (refused next to `no_default`).
/// - With serde's `Deserialize`, each map field is deserialized through a generated function
///   that builds the map with its declared settings, so a struct comes back from serde with its
///   names, timeouts, shards, value policies and breakers (put `#[guarded_map]` above the
///   `#[derive]`).
///
/// # Options
///
/// On the attribute: `audit = "billing"` (the maps' name prefix; default the struct's
/// name), `timeout_ms = 200` (each operation's deadline; default 500; `0` never waits, as
/// `Builder::timeout(Duration::ZERO)`: a contended shard fails at once), `slow_ms = 20` (the
/// slow-operation threshold, from 1 to below every timeout; default the runtime's: 50, or half
/// a shorter timeout), `shards = 16` (a power of two; default from the number of CPUs),
/// `max_entries = 10000` (every map's bound on entries: past it an operation that would add a
/// key fails with `CAPACITY_EXCEEDED`, not retryable, nothing changed, audited as refused; at
/// least 1; default none), `auto_shrink` (every map gives memory back after removals, as
/// `Builder::auto_shrink(true)`),
/// `breaker` or `breaker(failure_rate = 50, slow_rate = 50, combined_rate = 50, min_calls = 20,
/// window = 100, open_ms = 1000)` (a circuit breaker on every map: rates in percent, 1 to 100;
/// when a rate is given only the rates given apply; the rest the runtime's `BreakerConfig`
/// defaults), `no_new`, `no_default`, `crate = "path::to::map_wrapper"` (where the runtime
/// crate is, when it is re-exported; a dependency renamed in `Cargo.toml`, as
/// `mw = { package = "map-wrapper" }`, is found without it).
///
/// On a field, `#[guard(...)]`: `name = "…"` (the map's whole name instead of
/// `"prefix.field"`), `redact` or `digest` (how its values appear in the audit trail),
/// `timeout_ms = …` (this map's deadline), `max_entries = …` (this map's bound, instead of the
/// struct's), `auto_shrink` (this map only), `breaker` / `breaker(...)` (this map's breaker,
/// instead of the struct's), `map` (guard a field whose type is an alias of a `HashMap` or
/// `MapWrapper`), `skip` (leave the field as declared, no accessors).
///
/// Every mistake is a compile error at the offending token, all reported at once; the struct
/// is still emitted as written, with stand-ins for `new`, `with_auditor`, `Default` and the map
/// accessors, so one mistake is one error and not one more at every call site.
///
/// # Examples
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use map_wrapper::guarded_map;
///
/// #[guarded_map(timeout_ms = 200, audit = "billing")]
/// pub struct Billing {
///     /// Open invoices by number.
///     pub invoices: HashMap<u64, String>,
///     #[guard(redact)]
///     cards: HashMap<String, String>,
///     label: String, // not a map: left as it is
/// }
///
/// let billing = Billing::new();
/// billing.invoices_insert(1, "coffee".to_string())?;
/// billing.cards_insert("alice".to_string(), "tok_4242".to_string())?;
/// assert_eq!(billing.invoices_get_cloned(&1)?, Some("coffee".to_string()));
/// assert_eq!(billing.invoices().name(), "billing.invoices");
/// assert_eq!(billing.cards().default_timeout(), Duration::from_millis(200));
/// assert_eq!(billing.label, "");
///
/// // The same struct with an audit trail: every map records into one sink.
/// use map_wrapper::audit::{Auditor, MemorySink};
/// let trail = MemorySink::new();
/// let audited = Billing::with_auditor(&Auditor::new(trail.clone()))?;
/// audited.cards_insert("alice".to_string(), "tok_4242".to_string())?;
/// let record = &trail.records()[0];
/// assert_eq!(record.map.as_deref(), Some("billing.cards"));
/// assert!(!trail.text().contains("tok_4242")); // redacted
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
///
/// A bound on entries, and the HashMap idioms in accessor form:
///
/// ```
/// use std::collections::HashMap;
/// use map_wrapper::{guarded_map, ErrorKind};
///
/// #[guarded_map(max_entries = 10_000)]
/// struct Stats {
///     #[guard(max_entries = 2, auto_shrink)] // this map's own bound
///     hits: HashMap<String, u64>,
///     sizes: HashMap<u32, usize>,
/// }
///
/// let stats = Stats::new();
/// for page in ["/", "/about", "/"] {
///     // HashMap: *stats.hits.entry(page.to_string()).or_insert(0) += 1;
///     stats.hits_entry(page.to_string()).or_insert_then(0, |n| *n += 1)?;
/// }
/// let err = stats.hits_insert("/third".to_string(), 1).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::CapacityExceeded); // not retryable; nothing changed
/// assert!(!err.is_retryable());
/// assert_eq!(stats.hits_values()?.sum::<u64>(), 3);
///
/// stats.sizes_extend([(1, 10), (2, 20), (3, 30)])?;
/// stats.sizes_retain(|_, size| *size > 10)?;
/// let mut total = 0;
/// for (id, size) in stats.sizes_iter()? { // a copy: no lock held in the loop
///     total += id as usize * size;
/// }
/// assert_eq!(total, 2 * 20 + 3 * 30);
/// assert_eq!(stats.sizes_keys()?.max(), Some(3));
/// assert_eq!(stats.sizes_clear()?, 2);
/// assert!(stats.sizes_is_empty()?);
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
///
/// A `&mut V` cannot leave a guarded map: `get_mut` and friends are refused with what to write.
///
/// ```compile_fail,E0277
/// use std::collections::HashMap;
/// use map_wrapper::guarded_map;
///
/// #[guarded_map]
/// struct Stock {
///     items: HashMap<String, u32>,
/// }
///
/// let stock = Stock::new();
/// // error: a guarded map has no `get_mut` … note: change the value in place with
/// // `<field>_update(&key, |v| ...)?` …
/// if let Some(n) = stock.items_get_mut("bolt")? {
///     *n -= 1;
/// }
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
#[proc_macro_attribute]
pub fn guarded_map(args: TokenStream, input: TokenStream) -> TokenStream {
    attribute::expand(args.into(), input.into()).into()
}

/// Guards a struct's `MapWrapper<K, V>` fields without changing any type (so editors and
/// other tools see the struct as written): generates `new()`, `Default`, `with_auditor`,
/// `attach_auditor` and the accessors described on [`guarded_map`](macro@guarded_map) (the
/// HashMap-shaped ones and the refused `field_get_mut` / `_iter_mut` / `_values_mut`
/// included), and takes the same options (`max_entries` and `auto_shrink` included). Here the
/// struct's options go in `#[guard(...)]` on the struct. A mistake is one compile error, with
/// stand-ins for the constructor and accessors, as with the attribute.
///
/// A `HashMap` field is an error unless marked `#[guard(skip)]` (the derive cannot rewrite
/// it; use `#[guarded_map]` for that), and so is `#[guard]` on a field that is not a map.
///
/// What the attribute does and the derive does not, because a derive can only add items next
/// to the struct, never change it or its other attributes:
///
/// - it does not take over the struct's other derives. `Clone` and `PartialEq` derive as
///   usual, since `MapWrapper` implements them (a copy keeps each map's settings and entries,
///   not its auditor; `==` compares contents), and `Debug` shows each map's settings, not its
///   contents. `#[derive(Default)]` next to it conflicts with the generated `Default` (E0119):
///   leave it out.
/// - it does not hook serde: the attribute adds `#[serde(deserialize_with = …)]` to each map
///   field so that a deserialized map has its declared settings; a derive cannot add attributes
///   to fields, so a `MapWrapper` field comes back from serde with the default settings. Use
///   `#[guarded_map]` (which also guards fields already declared `MapWrapper`) for that.
///
/// # Examples
///
/// ```
/// use map_wrapper::{GuardedMap, MapWrapper};
///
/// #[derive(GuardedMap)]
/// #[guard(audit = "orders", timeout_ms = 100, max_entries = 1000)]
/// struct OrderBook<Id: std::hash::Hash + Eq> {
///     bids: MapWrapper<Id, u64>,
///     #[guard(digest)]
///     asks: MapWrapper<Id, u64>,
/// }
///
/// let book: OrderBook<u32> = OrderBook::default();
/// book.bids_insert(7, 101)?;
/// assert_eq!(book.bids_update(&7, |p| { *p += 1; *p })?, Some(102));
/// book.bids_entry(8).or_insert_then(0, |p| *p += 1)?;
/// assert_eq!(book.bids_values()?.sum::<u64>(), 103);
/// assert_eq!(book.asks().name(), "orders.asks");
/// assert_eq!(book.asks().max_entries(), Some(1000));
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
#[proc_macro_derive(GuardedMap, attributes(guard))]
pub fn derive_guarded_map(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive::expand(&input).unwrap_or_else(syn::Error::into_compile_error).into()
}
