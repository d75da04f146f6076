//! The options of `#[guarded_map(...)]` / `#[guard(...)]`, as written: each value with the span
//! of its token, so that later checks can point at it.
//!
//! Parsing records a mistake in the [`Ctxt`] and goes on to the next option; it stops early only
//! on a syntax error it cannot step over.

use proc_macro2::{Span, TokenTree};
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, Lit, Meta, Token};

use crate::ctxt::Ctxt;

/// The options a struct takes.
const STRUCT_OPTIONS: &str = "`audit`, `timeout_ms`, `slow_ms`, `shards`, `max_entries`, `auto_shrink`, \
     `breaker`, `no_new`, `no_default`, `crate`";
/// The options a field takes.
const FIELD_OPTIONS: &str = "`name`, `redact`, `digest`, `timeout_ms`, `max_entries`, `auto_shrink`, \
     `breaker`, `map`, `skip`";
/// The settings `breaker(...)` takes.
const BREAKER_OPTIONS: &str =
    "`failure_rate`, `slow_rate`, `combined_rate`, `min_calls`, `window`, `open_ms`";

/// `breaker` or `breaker(failure_rate = 50, …)`: a circuit breaker on the map(s), each
/// setting as written (unchecked).
#[derive(Clone, Default)]
pub(crate) struct BreakerOpts {
    /// Where `breaker` was written.
    pub(crate) span: Option<Span>,
    /// Percentages, 1 to 100.
    pub(crate) failure_rate: Option<Setting<u64>>,
    pub(crate) slow_rate: Option<Setting<u64>>,
    pub(crate) combined_rate: Option<Setting<u64>>,
    /// `min_calls`: calls the window holds before the breaker may trip.
    pub(crate) min_calls: Option<Setting<u64>>,
    /// `window`: the last N calls.
    pub(crate) window: Option<Setting<u64>>,
    /// `open_ms`: how long the breaker stays open before probing.
    pub(crate) open_ms: Option<Setting<u64>>,
}

impl BreakerOpts {
    /// Reads `breaker` / `breaker(...)`; a repeated `breaker` is an error.
    fn parse(cx: &mut Ctxt, meta: &ParseNestedMeta<'_>, slot: &mut Option<BreakerOpts>) -> syn::Result<()> {
        let span = meta.path.get_ident().map_or_else(Span::call_site, |i| i.span());
        if meta.input.peek(Token![=]) {
            skip_value(meta)?;
            cx.error_at(
                span,
                "`breaker` takes its settings in parentheses, e.g. `breaker(failure_rate = 50, open_ms = 1000)`, \
                 or none: `breaker`",
            );
            return Ok(());
        }
        let mut b = BreakerOpts { span: Some(span), ..BreakerOpts::default() };
        if meta.input.peek(syn::token::Paren) {
            meta.parse_nested_meta(|inner| {
                let name = option_name(&inner);
                let (slot, example) = match name.as_str() {
                    "failure_rate" => (&mut b.failure_rate, "failure_rate = 50"),
                    "slow_rate" => (&mut b.slow_rate, "slow_rate = 50"),
                    "combined_rate" => (&mut b.combined_rate, "combined_rate = 50"),
                    "min_calls" => (&mut b.min_calls, "min_calls = 20"),
                    "window" => (&mut b.window, "window = 100"),
                    "open_ms" => (&mut b.open_ms, "open_ms = 1000"),
                    _ => {
                        skip_value(&inner)?;
                        cx.error_spanned_by(
                            &inner.path,
                            format!("unknown breaker setting `{name}`; expected one of {BREAKER_OPTIONS}"),
                        );
                        return Ok(());
                    }
                };
                let value = int_value(cx, &inner, &name, example)?;
                set(cx, &inner, slot, value);
                Ok(())
            })?;
        }
        if slot.is_some() {
            cx.error_at(span, "duplicate option `breaker`");
        } else {
            *slot = Some(b);
        }
        Ok(())
    }
}

/// The helper attribute on fields (and, for the derive, on the struct).
pub(crate) const GUARD: &str = "guard";

/// A value and where it was written.
#[derive(Clone)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    /// The span of the value's token (what errors about the value point at).
    pub(crate) span: Span,
}

/// The options of a struct: the arguments of `#[guarded_map(...)]`, or `#[guard(...)]` on a
/// struct that derives `GuardedMap`.
#[derive(Default)]
pub(crate) struct ContainerOpts {
    /// `audit = "billing"`: the prefix of the maps' names.
    pub(crate) audit: Option<Setting<String>>,
    /// `timeout_ms = 200`.
    pub(crate) timeout_ms: Option<Setting<u64>>,
    /// `slow_ms = 20`.
    pub(crate) slow_ms: Option<Setting<u64>>,
    /// `shards = 16`.
    pub(crate) shards: Option<Setting<u64>>,
    /// `max_entries = 10_000`: every map's bound on entries (`Builder::max_entries`).
    pub(crate) max_entries: Option<Setting<u64>>,
    /// `auto_shrink`: every map gives memory back after removals (`Builder::auto_shrink`).
    pub(crate) auto_shrink: Option<Span>,
    /// `crate = "path::to::map_wrapper"`.
    pub(crate) krate: Option<Setting<syn::Path>>,
    /// `breaker` / `breaker(...)`: every map gets a circuit breaker.
    pub(crate) breaker: Option<BreakerOpts>,
    /// `no_new`: no generated `new()` (the user writes their own).
    pub(crate) no_new: Option<Span>,
    /// `no_default`: no generated `impl Default` (the user writes their own).
    pub(crate) no_default: Option<Span>,
}

/// The options of one field: `#[guard(...)]`.
#[derive(Default)]
pub(crate) struct FieldOpts {
    /// The first `#[guard]` attribute on the field, if any.
    pub(crate) marked: Option<Span>,
    /// `name = "…"`: the map's whole audit name.
    pub(crate) name: Option<Setting<String>>,
    /// `redact`.
    pub(crate) redact: Option<Span>,
    /// `digest`.
    pub(crate) digest: Option<Span>,
    /// `timeout_ms = …`.
    pub(crate) timeout_ms: Option<Setting<u64>>,
    /// `max_entries = …`: this map's bound on entries (replaces the struct's).
    pub(crate) max_entries: Option<Setting<u64>>,
    /// `auto_shrink`: this map gives memory back after removals.
    pub(crate) auto_shrink: Option<Span>,
    /// `skip`.
    pub(crate) skip: Option<Span>,
    /// `map`: guard the field although its type is not recognisably a map (a type alias,
    /// `use HashMap as Map`).
    pub(crate) map: Option<Span>,
    /// `breaker` / `breaker(...)`: this map's circuit breaker (replaces the struct's).
    pub(crate) breaker: Option<BreakerOpts>,
}

impl FieldOpts {
    /// The options other than `skip` that were given, by name and span.
    pub(crate) fn others_than_skip(&self) -> Vec<(&'static str, Span)> {
        let mut given = Vec::new();
        if let Some(s) = &self.name {
            given.push(("name", s.span));
        }
        if let Some(s) = self.redact {
            given.push(("redact", s));
        }
        if let Some(s) = self.digest {
            given.push(("digest", s));
        }
        if let Some(s) = &self.timeout_ms {
            given.push(("timeout_ms", s.span));
        }
        if let Some(s) = &self.max_entries {
            given.push(("max_entries", s.span));
        }
        if let Some(s) = self.auto_shrink {
            given.push(("auto_shrink", s));
        }
        if let Some(s) = self.map {
            given.push(("map", s));
        }
        if let Some(s) = self.breaker.as_ref().and_then(|b| b.span) {
            given.push(("breaker", s));
        }
        given
    }
}

impl ContainerOpts {
    /// Reads the arguments of `#[guarded_map(...)]`.
    pub(crate) fn from_args(cx: &mut Ctxt, args: proc_macro2::TokenStream) -> ContainerOpts {
        let mut opts = ContainerOpts::default();
        let parser = syn::meta::parser(|meta| opts.parse_one(cx, meta));
        if let Err(e) = syn::parse::Parser::parse2(parser, args) {
            cx.syn_error(e);
        }
        opts
    }

    /// Reads `#[guard(...)]` attributes on a struct that derives `GuardedMap`.
    pub(crate) fn from_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> ContainerOpts {
        let mut opts = ContainerOpts::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident(GUARD)) {
            if let Some(list) = list_of(cx, attr, "#[guard(timeout_ms = 200)]") {
                if let Err(e) = list.parse_nested_meta(|meta| opts.parse_one(cx, meta)) {
                    cx.syn_error(e);
                }
            }
        }
        opts
    }

    fn parse_one(&mut self, cx: &mut Ctxt, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let name = option_name(&meta);
        match name.as_str() {
            "audit" => {
                let value = string_value(cx, &meta, "audit", "audit = \"billing\"")?;
                set(cx, &meta, &mut self.audit, value);
            }
            "timeout_ms" => {
                let value = int_value(cx, &meta, "timeout_ms", "timeout_ms = 200")?;
                set(cx, &meta, &mut self.timeout_ms, value);
            }
            "slow_ms" => {
                let value = int_value(cx, &meta, "slow_ms", "slow_ms = 20")?;
                set(cx, &meta, &mut self.slow_ms, value);
            }
            "shards" => {
                let value = int_value(cx, &meta, "shards", "shards = 16")?;
                set(cx, &meta, &mut self.shards, value);
            }
            "max_entries" => {
                let value = int_value(cx, &meta, "max_entries", "max_entries = 10000")?;
                set(cx, &meta, &mut self.max_entries, value);
            }
            "auto_shrink" => flag(cx, &meta, "auto_shrink", &mut self.auto_shrink)?,
            "crate" => {
                let value = string_value(cx, &meta, "crate", "crate = \"my_crate::map_wrapper\"")?;
                let path = value.and_then(|s| match syn::parse_str::<syn::Path>(&s.value) {
                    Ok(path) => Some(Setting { value: path, span: s.span }),
                    Err(_) => {
                        cx.error_at(
                            s.span,
                            format!(
                                "`crate` takes the path under which map_wrapper is reachable, e.g. \
                                 `crate = \"my_crate::map_wrapper\"`; `{}` is not a path",
                                s.value
                            ),
                        );
                        None
                    }
                });
                set(cx, &meta, &mut self.krate, path);
            }
            "breaker" => BreakerOpts::parse(cx, &meta, &mut self.breaker)?,
            "no_new" => flag(cx, &meta, "no_new", &mut self.no_new)?,
            "no_default" => flag(cx, &meta, "no_default", &mut self.no_default)?,
            "name" | "redact" | "digest" | "skip" | "map" => {
                skip_value(&meta)?;
                cx.error_spanned_by(
                    &meta.path,
                    format!("`{name}` is a field option: put it on a field, as `#[guard({name})]`"),
                );
            }
            _ => {
                skip_value(&meta)?;
                cx.error_spanned_by(
                    &meta.path,
                    format!("unknown struct option `{name}`; expected one of {STRUCT_OPTIONS}"),
                );
            }
        }
        Ok(())
    }
}

impl FieldOpts {
    /// Reads the `#[guard(...)]` attributes of a field.
    pub(crate) fn from_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> FieldOpts {
        let mut opts = FieldOpts::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident(GUARD)) {
            opts.marked.get_or_insert(attr.path().get_ident().map_or_else(Span::call_site, |i| i.span()));
            if let Some(list) = list_of(cx, attr, "#[guard(redact)]") {
                if let Err(e) = list.parse_nested_meta(|meta| opts.parse_one(cx, meta)) {
                    cx.syn_error(e);
                }
            }
        }
        opts
    }

    fn parse_one(&mut self, cx: &mut Ctxt, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let name = option_name(&meta);
        match name.as_str() {
            "name" => {
                let value = string_value(cx, &meta, "name", "name = \"billing.cards\"")?;
                set(cx, &meta, &mut self.name, value);
            }
            "timeout_ms" => {
                let value = int_value(cx, &meta, "timeout_ms", "timeout_ms = 200")?;
                set(cx, &meta, &mut self.timeout_ms, value);
            }
            "max_entries" => {
                let value = int_value(cx, &meta, "max_entries", "max_entries = 10000")?;
                set(cx, &meta, &mut self.max_entries, value);
            }
            "auto_shrink" => flag(cx, &meta, "auto_shrink", &mut self.auto_shrink)?,
            "redact" => flag(cx, &meta, "redact", &mut self.redact)?,
            "digest" => flag(cx, &meta, "digest", &mut self.digest)?,
            "skip" => flag(cx, &meta, "skip", &mut self.skip)?,
            "map" => flag(cx, &meta, "map", &mut self.map)?,
            "breaker" => BreakerOpts::parse(cx, &meta, &mut self.breaker)?,
            "audit" | "slow_ms" | "shards" | "crate" | "no_new" | "no_default" => {
                skip_value(&meta)?;
                cx.error_spanned_by(
                    &meta.path,
                    format!("`{name}` is a struct option: put it on the struct, not on a field"),
                );
            }
            _ => {
                skip_value(&meta)?;
                cx.error_spanned_by(
                    &meta.path,
                    format!("unknown field option `{name}`; expected one of {FIELD_OPTIONS}"),
                );
            }
        }
        Ok(())
    }
}

/// The option's name as written (`crate` included: syn parses keywords here).
fn option_name(meta: &ParseNestedMeta<'_>) -> String {
    match meta.path.get_ident() {
        Some(ident) => ident.to_string(),
        None => {
            let path = &meta.path;
            quote::quote!(#path).to_string().replace(' ', "")
        }
    }
}

/// The `(...)` list of `attr`, or an error when it is written `#[guard]` or `#[guard = ..]`.
fn list_of<'a>(cx: &mut Ctxt, attr: &'a Attribute, example: &str) -> Option<&'a syn::MetaList> {
    match &attr.meta {
        Meta::List(list) => Some(list),
        other => {
            cx.error_spanned_by(
                other,
                format!("`#[guard]` takes its options in parentheses, e.g. `{example}`"),
            );
            None
        }
    }
}

/// Records `value` in `slot`, or an error when the option was already given.
fn set<T>(
    cx: &mut Ctxt,
    meta: &ParseNestedMeta<'_>,
    slot: &mut Option<Setting<T>>,
    value: Option<Setting<T>>,
) {
    if slot.is_some() {
        cx.error_spanned_by(&meta.path, format!("duplicate option `{}`", option_name(meta)));
    } else if value.is_some() {
        *slot = value;
    }
}

/// A flag option (`redact`): records its span, or an error when it is given twice or with a
/// value.
fn flag(cx: &mut Ctxt, meta: &ParseNestedMeta<'_>, name: &str, slot: &mut Option<Span>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        skip_value(meta)?;
        cx.error_spanned_by(&meta.path, format!("`{name}` takes no value: write `#[guard({name})]`"));
        return Ok(());
    }
    let span = meta.path.get_ident().map_or_else(Span::call_site, |i| i.span());
    if slot.is_some() {
        cx.error_at(span, format!("duplicate option `{name}`"));
    } else {
        *slot = Some(span);
    }
    Ok(())
}

/// Steps over whatever value an option has (`= expr` or `(...)`), so that parsing can go on
/// after an option that is reported as wrong.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// The value of `option = <expr>`, or `None` (and nothing recorded) when there is no `=`.
fn expr_value(
    cx: &mut Ctxt,
    meta: &ParseNestedMeta<'_>,
    option: &str,
    example: &str,
) -> syn::Result<Option<Expr>> {
    if !meta.input.peek(Token![=]) {
        skip_value(meta)?;
        cx.error_spanned_by(&meta.path, format!("`{option}` needs a value, e.g. `{example}`"));
        return Ok(None);
    }
    Ok(Some(meta.value()?.parse::<Expr>()?))
}

/// The value of `option = "text"`.
fn string_value(
    cx: &mut Ctxt,
    meta: &ParseNestedMeta<'_>,
    option: &str,
    example: &str,
) -> syn::Result<Option<Setting<String>>> {
    Ok(match expr_value(cx, meta, option, example)? {
        Some(Expr::Lit(ExprLit { lit: Lit::Str(s), .. })) => {
            Some(Setting { value: s.value(), span: s.span() })
        }
        Some(other) => {
            cx.error_spanned_by(other, format!("`{option}` takes a string literal, e.g. `{example}`"));
            None
        }
        None => None,
    })
}

/// The value of `option = 123` (a plain, unsuffixed integer literal).
fn int_value(
    cx: &mut Ctxt,
    meta: &ParseNestedMeta<'_>,
    option: &str,
    example: &str,
) -> syn::Result<Option<Setting<u64>>> {
    Ok(match expr_value(cx, meta, option, example)? {
        Some(Expr::Lit(ExprLit { lit: Lit::Int(i), .. })) if i.suffix().is_empty() => {
            match i.base10_parse::<u64>() {
                Ok(value) => Some(Setting { value, span: i.span() }),
                Err(_) => {
                    cx.error_spanned_by(&i, format!("`{option}` is too large: at most {}", u64::MAX));
                    None
                }
            }
        }
        Some(other) => {
            cx.error_spanned_by(
                other,
                format!("`{option}` takes a whole number without suffix or quotes, e.g. `{example}`"),
            );
            None
        }
        None => None,
    })
}
