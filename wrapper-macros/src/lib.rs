//! Procedural macros of `map-wrapper`: the `#[guarded_map]` attribute and
//! `#[derive(GuardedMap)]`. Use them through the `map-wrapper` crate, which re-exports them
//! (and whose `__private` module the generated code names); this crate's paths are not a
//! stable interface.
//!
//! Both run the same three steps, as serde_derive does: read the struct into a small model
//! ([`ast`], [`attr`]), check it and collect every mistake with its span ([`check`]), then
//! generate (`expand`).

mod ast;
mod attr;
mod attribute;
mod check;
mod ctxt;
mod derive;
mod expand;

use proc_macro::TokenStream;

/// Guards a struct's map fields: each `HashMap<K, V>` field becomes a
/// `map_wrapper::MapWrapper<K, V>` named `"Struct.field"`, and the struct gets `new()`,
/// `Default`, and per map field an accessor `field()` plus `field_get`, `field_get_cloned`,
/// `field_contains_key`, `field_insert`, `field_remove`, `field_update` and `field_len`.
///
/// See the documentation of `map_wrapper::guarded_map` for the options and an example.
#[proc_macro_attribute]
pub fn guarded_map(args: TokenStream, input: TokenStream) -> TokenStream {
    attribute::expand(args.into(), input.into()).into()
}

/// Guards a struct's `MapWrapper` fields without changing any type: generates what
/// `#[guarded_map]` does for them (`new()`, `Default`, accessors).
///
/// See the documentation of `map_wrapper::GuardedMap` for the options and an example.
#[proc_macro_derive(GuardedMap, attributes(guard))]
pub fn derive_guarded_map(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive::expand(&input).unwrap_or_else(syn::Error::into_compile_error).into()
}
