//! Validation: every rule that `map_wrapper::Builder::build` enforces at run time is checked
//! here at compile time, at the token that breaks it, so that the generated `new()` and
//! `Default` cannot fail. All mistakes are collected, not just the first.

use std::collections::BTreeMap;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;

use crate::ast::{Container, Mode, Shape};
use crate::attr::{BreakerOpts, Setting, GUARD};
use crate::ctxt::Ctxt;
use crate::expand::{ACCESSOR_SUFFIXES, CONSTRUCTORS, REFUSED_SUFFIXES};

// The runtime's defaults and limits, repeated here because a proc-macro cannot read another
// crate's constants. `defaults_and_limits_are_the_runtime_ones` in `tests/macro_behaviour.rs`
// pins them to `map_wrapper::builder::{DEFAULT_TIMEOUT, MAX_SHARDS, MAX_NAME_LEN}`. The slow threshold
// is left to the runtime's default (which depends on the timeout) unless `slow_ms` is given.

/// `map_wrapper::builder::DEFAULT_TIMEOUT`, in milliseconds.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 500;
/// `map_wrapper::builder::MAX_SHARDS`.
pub(crate) const MAX_SHARDS: u64 = 1 << 16;
/// `map_wrapper::builder::MAX_NAME_LEN`, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 256;

/// How a map writes values into its audit records (`map_wrapper::audit::ValuePolicy`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    Full,
    Digest,
    Redacted,
}

/// The checked settings of one guarded map.
pub(crate) struct Plan {
    pub(crate) name: String,
    pub(crate) timeout_ms: u64,
    /// `None`: the runtime's default for the map's timeout.
    pub(crate) slow_ms: Option<u64>,
    pub(crate) shards: Option<u64>,
    pub(crate) policy: Policy,
    /// The bound on entries (`Builder::max_entries`), or none.
    pub(crate) max_entries: Option<u64>,
    /// `Builder::auto_shrink(true)`.
    pub(crate) auto_shrink: bool,
    /// A circuit breaker (checked settings), or none.
    pub(crate) breaker: Option<BreakerPlan>,
}

/// The checked settings of a map's circuit breaker; `None` leaves the runtime's default.
#[derive(Clone, Default)]
pub(crate) struct BreakerPlan {
    /// Percentages, 1 to 100. When none is given the runtime's default rule applies.
    pub(crate) failure_rate: Option<u64>,
    pub(crate) slow_rate: Option<u64>,
    pub(crate) combined_rate: Option<u64>,
    pub(crate) min_calls: Option<u64>,
    pub(crate) window: Option<u64>,
    pub(crate) open_ms: Option<u64>,
}

/// `map_wrapper::breaker::MAX_WINDOW_CALLS`.
pub(crate) const MAX_WINDOW_CALLS: u64 = 1 << 24;
/// `BreakerConfig::default()`'s window and minimum number of calls.
const DEFAULT_BREAKER_WINDOW: u64 = 100;
const DEFAULT_BREAKER_MIN_CALLS: u64 = 20;

/// Checks `breaker(...)` against the rules `BreakerConfig` applies at run time.
fn check_breaker(cx: &mut Ctxt, b: &BreakerOpts) -> BreakerPlan {
    for (name, rate) in
        [("failure_rate", &b.failure_rate), ("slow_rate", &b.slow_rate), ("combined_rate", &b.combined_rate)]
    {
        if let Some(r) = rate.as_ref().filter(|r| !(1..=100).contains(&r.value)) {
            cx.error_at(
                r.span,
                format!("`{name}` is a percentage from 1 to 100, e.g. `{name} = 50`; got {}", r.value),
            );
        }
    }
    if let Some(w) = b.window.as_ref().filter(|w| !(1..=MAX_WINDOW_CALLS).contains(&w.value)) {
        cx.error_at(
            w.span,
            format!(
                "`window` is the number of last calls the breaker weighs, 1 to {MAX_WINDOW_CALLS}; got {}",
                w.value
            ),
        );
    }
    if let Some(m) = &b.min_calls {
        let window = b.window.as_ref().map_or(DEFAULT_BREAKER_WINDOW, |w| w.value);
        if m.value == 0 {
            cx.error_at(m.span, "`min_calls` must be at least 1, e.g. `min_calls = 20`");
        } else if m.value > window {
            cx.error_at(
                m.span,
                format!("`min_calls = {}` is more than the window holds ({window} calls): the breaker could never trip; lower it or raise `window`", m.value),
            );
        }
    } else if let Some(w) = b.window.as_ref().filter(|w| w.value >= 1 && w.value < DEFAULT_BREAKER_MIN_CALLS)
    {
        cx.error_at(
            w.span,
            format!("`window = {}` holds fewer calls than the default `min_calls` ({DEFAULT_BREAKER_MIN_CALLS}): give `min_calls` too", w.value),
        );
    }
    if let Some(o) = b.open_ms.as_ref().filter(|o| o.value == 0) {
        cx.error_at(o.span, "`open_ms` must be at least 1: a breaker that reopens at once does not protect");
    }
    let v = |s: &Option<Setting<u64>>| s.as_ref().map(|s| s.value);
    BreakerPlan {
        failure_rate: v(&b.failure_rate),
        slow_rate: v(&b.slow_rate),
        combined_rate: v(&b.combined_rate),
        min_calls: v(&b.min_calls),
        window: v(&b.window),
        open_ms: v(&b.open_ms),
    }
}

/// Checks the struct and returns, for each field in order, the settings of its map (`None`
/// for a field that is not guarded). Mistakes go to `cx`.
pub(crate) fn check(cx: &mut Ctxt, c: &Container<'_>) -> Vec<Option<Plan>> {
    check_container_attrs(cx, c);
    let struct_name = c.ident.unraw().to_string();

    let prefix = match &c.opts.audit {
        Some(audit) => {
            check_name(cx, &audit.value, audit.span, "`audit`");
            audit.value.clone()
        }
        None => struct_name.clone(),
    };
    let prefix_span = c.opts.audit.as_ref().map_or_else(|| c.ident.span(), |a| a.span);

    let timeout_ms = match &c.opts.timeout_ms {
        // Any value, 0 included (never wait: a contended shard fails at once with `Timeout`),
        // as `Builder::timeout(Duration::ZERO)`: one rule for both.
        Some(t) => t.value,
        None => DEFAULT_TIMEOUT_MS,
    };
    let slow_ms = c.opts.slow_ms.as_ref().map(|s| s.value);
    if let Some(slow) = &c.opts.slow_ms {
        if slow.value == 0 {
            cx.error_at(slow.span, "`slow_ms` must be at least 1, e.g. `slow_ms = 20`");
        } else if slow.value >= timeout_ms && timeout_ms > 0 {
            cx.error_at(
                slow.span,
                format!("`slow_ms = {}` must be below the timeout ({timeout_ms} ms): lower it", slow.value),
            );
        }
    }
    if let Some(shards) = &c.opts.shards {
        if !shards.value.is_power_of_two() || shards.value > MAX_SHARDS {
            cx.error_at(
                shards.span,
                format!("`shards` must be a power of two from 1 to {MAX_SHARDS}, e.g. `shards = 16`"),
            );
        }
    }

    let struct_breaker = c.opts.breaker.as_ref().map(|b| check_breaker(cx, b));
    if let Some(max) = &c.opts.max_entries {
        check_max_entries(cx, max);
    }
    if let (Some(_), Some(no_default)) = (c.opts.no_new, c.opts.no_default) {
        cx.error_at(
            no_default,
            "`no_new` and `no_default` together leave no way to make the struct with its maps \
             configured as declared: keep one of them (your own `new()` can call `Self::default()`)",
        );
    }

    let mut names: BTreeMap<String, &syn::Ident> = BTreeMap::new();
    let mut methods: BTreeMap<String, &syn::Ident> = BTreeMap::new();
    let mut plans = Vec::with_capacity(c.fields.len());
    for f in &c.fields {
        let field_name = f.ident.unraw().to_string();
        let skipped = f.opts.skip.is_some();
        if let Some(skip) = f.opts.skip {
            for (option, span) in f.opts.others_than_skip() {
                cx.error_at(
                    span,
                    format!(
                        "`{option}` has no effect next to `skip`, which leaves field `{field_name}` \
                         as it is: remove one of them"
                    ),
                );
            }
            if matches!(f.shape, Shape::Other) {
                cx.error_at(skip, format!("nothing to skip: field `{field_name}` is not a map"));
            }
        }
        if let (Some(_), Some(digest)) = (f.opts.redact, f.opts.digest) {
            cx.error_at(digest, "`redact` and `digest` are two value policies for one map: choose one");
        }

        match &f.shape {
            Shape::Map(_) if !skipped => {}
            Shape::Map(_) => {
                plans.push(None);
                continue;
            }
            Shape::BadMap { kind, found, span } => {
                if !skipped {
                    let k = kind.name();
                    cx.error_at(
                        *span,
                        format!(
                            "`{k}` takes a key and a value type, `{k}<K, V>` (or `{k}<K, V, S>` with a \
                             hasher); found {found} type argument{}",
                            if *found == 1 { "" } else { "s" }
                        ),
                    );
                }
                plans.push(None);
                continue;
            }
            Shape::HashMapInDerive => {
                if !skipped {
                    cx.error_spanned_by(
                        &f.original.ty,
                        format!(
                            "`#[derive(GuardedMap)]` changes no types, so it cannot guard the `HashMap` \
                             field `{field_name}`: declare it `MapWrapper<K, V>`, use `#[guarded_map]` \
                             (which rewrites `HashMap` fields), or mark it `#[guard(skip)]`"
                        ),
                    );
                }
                plans.push(None);
                continue;
            }
            Shape::Other => {
                if let (Some(marked), None) = (f.opts.marked, f.opts.skip) {
                    let expected =
                        if c.mode == Mode::Derive { "a `MapWrapper`" } else { "a `HashMap` or `MapWrapper`" };
                    let why = crate::ast::left_alone_because(&f.original.ty);
                    let hint = if f.opts.map.is_some() {
                        "`map` applies to a type path that names a `HashMap` or `MapWrapper` (an alias)"
                    } else if why.starts_with("not a map (") {
                        "if its type is an alias of a map, write `#[guard(map)]`; otherwise remove the attribute"
                    } else {
                        "remove the attribute"
                    };
                    let what = if why.starts_with("not a map") {
                        format!("not {expected}")
                    } else {
                        why.to_string()
                    };
                    cx.error_at(
                        marked,
                        format!("`#[guard]` is for map fields, and field `{field_name}` is {what}; {hint}"),
                    );
                }
                plans.push(None);
                continue;
            }
        }

        let name = match &f.opts.name {
            Some(n) => {
                check_name(cx, &n.value, n.span, "`name`");
                n.value.clone()
            }
            None => {
                let name = format!("{prefix}.{field_name}");
                if name.len() > MAX_NAME_LEN {
                    cx.error_at(
                        prefix_span,
                        format!(
                            "the audit name `{name}` of field `{field_name}` is longer than {MAX_NAME_LEN} \
                             bytes: shorten `audit`, or give the field `#[guard(name = \"…\")]`"
                        ),
                    );
                }
                name
            }
        };
        if let Some(first) = names.get(&name) {
            let at = f.opts.name.as_ref().map_or_else(|| f.ident.span(), |n| n.span);
            cx.error_at(
                at,
                format!(
                    "two maps are named `{name}` in the audit trail (fields `{}` and `{field_name}`): \
                     give one of them another `#[guard(name = \"…\")]`",
                    first.unraw()
                ),
            );
        } else {
            names.insert(name.clone(), f.ident);
        }

        for method in accessor_names(&field_name) {
            if CONSTRUCTORS.contains(&method.as_str()) {
                cx.error_spanned_by(
                    f.ident,
                    format!(
                        "the accessor `{method}()` of field `{field_name}` would clash with the generated \
                         constructor `{method}`: rename the field, or mark it `#[guard(skip)]`"
                    ),
                );
            } else if let Some(first) = methods.get(&method) {
                cx.error_spanned_by(
                    f.ident,
                    format!(
                        "the accessor `{method}()` of field `{field_name}` would clash with the one of \
                         field `{}`: rename a field, or mark one `#[guard(skip)]`",
                        first.unraw()
                    ),
                );
            } else {
                methods.insert(method, f.ident);
            }
        }

        let field_timeout = match &f.opts.timeout_ms {
            Some(t) => {
                // A zero timeout never waits: any slow threshold goes with it (as in the builder).
                if let Some(slow) =
                    c.opts.slow_ms.as_ref().filter(|s| s.value > 0 && s.value >= t.value && t.value > 0)
                {
                    cx.error_at(
                        t.span,
                        format!(
                            "the `timeout_ms = {}` of field `{field_name}` must be above the struct's \
                             `slow_ms = {}`",
                            t.value, slow.value
                        ),
                    );
                }
                t.value
            }
            None => timeout_ms,
        };
        let policy = if f.opts.redact.is_some() {
            Policy::Redacted
        } else if f.opts.digest.is_some() {
            Policy::Digest
        } else {
            Policy::Full
        };
        let breaker = match &f.opts.breaker {
            Some(b) => Some(check_breaker(cx, b)),
            None => struct_breaker.clone(),
        };
        let max_entries = match &f.opts.max_entries {
            Some(max) => {
                check_max_entries(cx, max);
                Some(max.value)
            }
            None => c.opts.max_entries.as_ref().map(|m| m.value),
        };
        plans.push(Some(Plan {
            name,
            timeout_ms: field_timeout,
            slow_ms,
            shards: c.opts.shards.as_ref().map(|s| s.value),
            policy,
            max_entries,
            auto_shrink: c.opts.auto_shrink.is_some() || f.opts.auto_shrink.is_some(),
            breaker,
        }));
    }

    if plans.iter().all(Option::is_none) && c.fields.iter().all(|f| matches!(f.shape, Shape::Other)) {
        let maps = if c.mode == Mode::Derive { "`MapWrapper`" } else { "`HashMap` or `MapWrapper`" };
        cx.error_spanned_by(c.ident, format!("`{struct_name}` has no {maps} field to guard"));
    }
    plans
}

/// The rule of `Builder::max_entries`: at least 1.
fn check_max_entries(cx: &mut Ctxt, max: &Setting<u64>) {
    if max.value == 0 {
        cx.error_at(
            max.span,
            "`max_entries` must be at least 1 (a map that can hold nothing refuses every insert), \
             e.g. `max_entries = 10000`",
        );
    }
}

/// The method names generated for a map field (the refused ones included: they exist, hidden).
fn accessor_names(field: &str) -> impl Iterator<Item = String> + '_ {
    std::iter::once(field.to_string())
        .chain(ACCESSOR_SUFFIXES.iter().chain(&REFUSED_SUFFIXES).map(move |s| format!("{field}_{s}")))
}

/// The rules of `Builder::name`: 1 to 256 bytes, no control characters.
fn check_name(cx: &mut Ctxt, name: &str, span: Span, what: &str) {
    if name.is_empty() {
        cx.error_at(span, format!("{what} must not be empty"));
    } else if name.len() > MAX_NAME_LEN {
        cx.error_at(span, format!("{what} must be at most {MAX_NAME_LEN} bytes long, got {}", name.len()));
    } else if name.chars().any(char::is_control) {
        cx.error_at(span, format!("{what} must not contain control characters, got {name:?}"));
    }
}

/// Struct-level attributes the attribute cannot take: `#[guard]` (its options go in
/// `#[guarded_map(...)]`) and derives of what it generates.
fn check_container_attrs(cx: &mut Ctxt, c: &Container<'_>) {
    for attr in c.attrs {
        if c.mode == Mode::Attribute && attr.path().is_ident(GUARD) {
            cx.error_spanned_by(
                attr,
                "with `#[guarded_map]`, struct options go in its parentheses, e.g. \
                 `#[guarded_map(timeout_ms = 200)]`, not in `#[guard]`",
            );
        }
        if !attr.path().is_ident("derive") {
            continue;
        }
        let Ok(paths) = attr.parse_args_with(Punctuated::<syn::Path, syn::Token![,]>::parse_terminated)
        else {
            continue;
        };
        for path in paths {
            let Some(last) = path.segments.last() else { continue };
            let derived = last.ident.to_string();
            if derived == "Default" && (c.mode == Mode::Derive || c.opts.no_default.is_some()) {
                cx.error_spanned_by(
                    &path,
                    if c.mode == Mode::Derive {
                        "`GuardedMap` implements `Default` (by calling the generated `new()`): remove \
                         `Default` from this derive"
                    } else {
                        "`no_default` asks for no generated `Default`, and a derived one would make every map \
                         with the default settings, not the declared ones: remove `Default` from this derive \
                         and write your own `impl Default` (it can start from `Self::new()`)"
                    },
                );
            } else if c.mode == Mode::Derive && ["Clone", "PartialEq", "Eq"].contains(&derived.as_str()) {
                cx.error_spanned_by(
                    &path,
                    format!(
                        "`MapWrapper` does not implement `{derived}`, so it cannot be derived here: \
                         `#[guarded_map]` generates `{derived}` for a guarded struct (a copy or comparison \
                         of the maps' contents)"
                    ),
                );
            } else if last.ident == "GuardedMap" && c.mode == Mode::Attribute {
                cx.error_spanned_by(
                    &path,
                    "`#[guarded_map]` already derives `GuardedMap`: remove it from this derive",
                );
            }
        }
    }
}
