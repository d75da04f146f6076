//! `#[derive(GuardedMap)]`: guards the struct's `MapWrapper` fields; changes no types.

use proc_macro2::TokenStream;
use syn::{Data, DeriveInput, Fields};

use crate::ast::{Container, Field, Mode};
use crate::attr::ContainerOpts;
use crate::ctxt::Ctxt;
use crate::{check, expand};

/// The impls for `input`, or every mistake found in it.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::default();
    let named = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Some(named),
            Fields::Unnamed(fields) => {
                cx.error_spanned_by(fields, TUPLE);
                None
            }
            Fields::Unit => {
                cx.error_spanned_by(&input.ident, UNIT);
                None
            }
        },
        Data::Enum(e) => {
            cx.error_spanned_by(e.enum_token, ENUM);
            None
        }
        Data::Union(u) => {
            cx.error_spanned_by(u.union_token, UNION);
            None
        }
    };
    let opts = ContainerOpts::from_attrs(&mut cx, &input.attrs);
    let Some(named) = named else {
        return cx.check().map(|()| TokenStream::new());
    };
    let krate = expand::crate_path_of(&opts);
    let fields = Field::all(&mut cx, Mode::Derive, named, &krate);
    let container = Container {
        ident: &input.ident,
        vis: &input.vis,
        generics: &input.generics,
        attrs: &input.attrs,
        opts,
        fields,
        mode: Mode::Derive,
        derives: expand::Derives::default(),
    };
    let plans = check::check(&mut cx, &container);
    if let Err(errors) = cx.check() {
        // Stand-ins for `new`, `Default` and the accessors, as `#[guarded_map]` emits: one
        // mistake in the options is one error, not one more at every call site.
        let stubs = crate::attribute::stubs(&container, &krate);
        let errors = errors.into_compile_error();
        return Ok(quote::quote!(#stubs #errors));
    }
    Ok(expand::impls(&container, &plans))
}

pub(crate) const ENUM: &str =
    "`GuardedMap` applies to a struct with named fields; an enum has no map fields to guard";
pub(crate) const UNION: &str =
    "`GuardedMap` applies to a struct with named fields; a union's fields cannot be guarded";
pub(crate) const TUPLE: &str =
    "`GuardedMap` applies to a struct with named fields: its maps are named after their fields, \
     which a tuple struct does not have";
pub(crate) const UNIT: &str =
    "`GuardedMap` applies to a struct with named fields, and a unit struct has none";
