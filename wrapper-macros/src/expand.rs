//! Code generation: the constructor, `Default`, and the accessors of each guarded map.
//!
//! Everything is named by absolute path through `<crate>::__private` (default
//! `::map_wrapper::__private`), so that a user's own `Result`, `Ok`, `Default` or `core` in
//! scope cannot change what the generated code means.

use std::collections::BTreeSet;

use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, GenericParam, Ident, Lifetime};

use crate::ast::{Container, Field, MapType, Shape};
use crate::check::{BreakerPlan, Plan, Policy};

/// The operations generated per map field, as `<field>_<suffix>`.
pub(crate) const ACCESSOR_SUFFIXES: [&str; 15] = [
    "get",
    "get_cloned",
    "contains_key",
    "insert",
    "remove",
    "update",
    "len",
    "is_empty",
    "entry",
    "keys",
    "values",
    "iter",
    "retain",
    "clear",
    "extend",
];

/// HashMap methods generated per map field, as `<field>_<suffix>`, only to be refused: each
/// has a bound no type meets (`__private::NoGetMut`, …), so a call is a compile error that says
/// what to write instead (a `&mut V` cannot leave the map's lock). Hidden from the docs.
pub(crate) const REFUSED_SUFFIXES: [&str; 3] = ["get_mut", "iter_mut", "values_mut"];

/// The associated functions generated on the struct.
pub(crate) const CONSTRUCTORS: &[&str] = &["new", "with_auditor", "attach_auditor", "try_clone"];

/// The standard traits `#[guarded_map]` implements itself when the struct derives them (it
/// takes them out of the `#[derive]`, which could not handle the maps).
#[derive(Clone, Copy, Default)]
pub(crate) struct Derives {
    pub(crate) debug: bool,
    pub(crate) clone: bool,
    pub(crate) partial_eq: bool,
    pub(crate) eq: bool,
    /// The struct derives serde's `Deserialize`: each map field is deserialized through a
    /// generated function that builds the map with its declared settings.
    pub(crate) deserialize: bool,
}

/// The hidden function that deserializes map field `field` with its declared settings.
pub(crate) fn deserializer_name(field: &Ident) -> Ident {
    format_ident!("__guarded_map_de_{}", field.unraw())
}

/// The path to the runtime crate: `crate = "…"`, or the name `Cargo.toml` gives the
/// dependency (`::map_wrapper` unless renamed; see `manifest`).
pub(crate) fn crate_path(c: &Container<'_>) -> TokenStream {
    crate_path_of(&c.opts)
}

/// The path to the runtime crate given the struct's options.
pub(crate) fn crate_path_of(opts: &crate::attr::ContainerOpts) -> TokenStream {
    match &opts.krate {
        Some(k) => k.value.to_token_stream(),
        None => match crate::manifest::renamed_runtime().and_then(|n| syn::parse_str::<Ident>(&n).ok()) {
            Some(name) => quote!(::#name),
            None => quote!(::map_wrapper),
        },
    }
}

/// The impls for a checked struct; `plans` is aligned with `c.fields`.
pub(crate) fn impls(c: &Container<'_>, plans: &[Option<Plan>]) -> TokenStream {
    let krate = crate_path(c);
    let private = quote!(#krate::__private);
    let ident = c.ident;
    let (impl_generics, ty_generics, where_clause) = c.generics.split_for_impl();
    // Doc links are resolved from the user's crate, where `map_wrapper` is in the extern prelude.
    let docs_krate = krate.to_string().replace(' ', "");
    let docs_krate = docs_krate.trim_start_matches("::");
    let fresh = Fresh::new(c);

    let mut inits = Vec::new();
    let mut audited_inits = Vec::new();
    let mut audit_bounds: Vec<TokenStream> = Vec::new();
    let mut default_bounds: Vec<TokenStream> = Vec::new();
    let mut accessors = Vec::new();
    let mut summary = Vec::new();
    // The extra trait impls: per field, its part of `fmt`, `clone`, `eq`, and their bounds.
    let mut debug_fields = Vec::new();
    let mut clone_fields = Vec::new();
    let mut eq_fields = Vec::new();
    let mut debug_bounds: Vec<TokenStream> = Vec::new();
    let mut clone_bounds: Vec<TokenStream> = Vec::new();
    let mut eq_bounds: Vec<TokenStream> = Vec::new();
    let mut attach_builds = Vec::new();
    let mut attach_moves = Vec::new();
    let mut deserializers = Vec::new();
    for (f, plan) in c.fields.iter().zip(plans) {
        let field = f.ident;
        let cfgs = attrs_named(&f.original.attrs, "cfg");
        match (plan, &f.shape) {
            (Some(plan), Shape::Map(map)) => {
                let builder = builder_of(&private, map, plan);
                inits.push(quote!(#(#cfgs)* #field: #private::built_checked(#builder.build())));
                let (k, v) = (&map.key, &map.value);
                let s = map.hasher.iter().collect::<Vec<_>>();
                let map_ty = quote!(#krate::MapWrapper<#k, #v #(, #s)*>);
                let hash_bounds: Vec<TokenStream> =
                    std::iter::once(fresh.deferred(quote!(#k: #private::Hash + #private::Eq), k.span()))
                        .chain(s.iter().map(|s| fresh.deferred(quote!(#s: #private::BuildHasher), s.span())))
                        .collect();
                let field_name = syn::LitStr::new(&field.unraw().to_string(), field.span());
                debug_fields.push(quote! {
                    #(#cfgs)* __d.field(#field_name, &#private::DebugContents(&self.#field));
                });
                debug_bounds.push(fresh.deferred(quote!(#k: #private::Debug), k.span()));
                debug_bounds.push(fresh.deferred(quote!(#v: #private::Debug), v.span()));
                debug_bounds.extend(hash_bounds.iter().cloned());
                clone_fields.push(quote! {
                    #(#cfgs)* #field: #private::clone_contents(&self.#field, #private::built_checked(#builder.build()))?
                });
                clone_bounds.push(fresh.deferred(quote!(#k: #private::Clone), k.span()));
                clone_bounds.push(fresh.deferred(quote!(#v: #private::Clone), v.span()));
                clone_bounds.extend(hash_bounds.iter().cloned());
                eq_fields.push(quote!(#(#cfgs)* if !#private::same_contents(&self.#field, &other.#field) { return false; }));
                eq_bounds.push(fresh.deferred(quote!(#v: #private::PartialEq), v.span()));
                eq_bounds.extend(hash_bounds.iter().cloned());
                let de = deserializer_name(field);
                deserializers.push(quote! {
                    #(#cfgs)*
                    #[doc(hidden)]
                    fn #de<'__de, __D>(deserializer: __D) -> #private::Result<#map_ty, __D::Error>
                    where
                        __D: #private::Deserializer<'__de>,
                        #k: #private::Deserialize<'__de> + #private::Hash + #private::Eq,
                        #v: #private::Deserialize<'__de>,
                        #(#s: #private::BuildHasher + #private::Default,)*
                    {
                        #private::deserialize_into(deserializer, #private::built_checked(#builder.build()))
                    }
                });
                // Keys are always recorded; values not when redacted (then `V` needs no
                // `Serialize`). Deferred, so that a struct whose values cannot be serialized
                // still has everything but `with_auditor`.
                let serialize = |ty: &syn::Type| {
                    let bound = fresh.to_static(quote!(#ty: #private::Serialize + 'static));
                    fresh.deferred(bound, ty.span())
                };
                audit_bounds.push(serialize(k));
                let audit = if plan.policy == Policy::Redacted {
                    quote!(auditor_redacted)
                } else {
                    audit_bounds.push(serialize(v));
                    quote!(auditor)
                };
                audited_inits.push(quote! {
                    #(#cfgs)* #field: #builder.#audit(#private::Clone::clone(auditor)).build()?
                });
                attach_builds.push(quote! {
                    #(#cfgs)* let #field = #builder.#audit(#private::Clone::clone(auditor)).build()?;
                });
                attach_moves.push(quote!(#(#cfgs)* #private::attach_audit(&mut self.#field, #field);));
                if let Some(hasher) = &map.hasher {
                    default_bounds.push(fresh.deferred(quote!(#hasher: #private::Default), hasher.span()));
                }
                accessors.push(accessors_of(&krate, &private, docs_krate, &fresh, f, map, plan));
                summary.push(format!(
                    "- `{}`: timeout {} ms, {}, {}{}{}{}",
                    plan.name,
                    plan.timeout_ms,
                    match plan.slow_ms {
                        Some(ms) => format!("slow above {ms} ms"),
                        None => "the default slow threshold".to_string(),
                    },
                    match plan.shards {
                        Some(n) => format!("{n} shards"),
                        None => "the default number of shards".to_string(),
                    },
                    match plan.max_entries {
                        Some(n) => format!(", at most {n} entries"),
                        None => String::new(),
                    },
                    if plan.auto_shrink { ", shrinks automatically" } else { "" },
                    match plan.policy {
                        Policy::Full => "",
                        Policy::Digest => ", values audited as digests",
                        Policy::Redacted => ", values redacted from the audit trail",
                    }
                ));
            }
            _ => {
                let ty = &f.original.ty;
                // Deferred (see `Fresh::deferred`): a field type without `Default` makes `new()`
                // and `Default` unavailable instead of failing the whole struct. Not for a
                // `#[cfg]` field, whose type may not exist when the field does not.
                if cfgs.is_empty() {
                    default_bounds.push(fresh.deferred(quote!(#ty: #private::Default), ty.span()));
                }
                let init = quote_spanned!(ty.span()=> <#ty as #private::Default>::default());
                inits.push(quote!(#(#cfgs)* #field: #init));
                let field_name = syn::LitStr::new(&field.unraw().to_string(), field.span());
                debug_fields.push(quote!(#(#cfgs)* __d.field(#field_name, &self.#field);));
                clone_fields.push(quote!(#(#cfgs)* #field: #private::Clone::clone(&self.#field)));
                eq_fields.push(quote!(#(#cfgs)* if self.#field != other.#field { return false; }));
                if cfgs.is_empty() {
                    debug_bounds.push(fresh.deferred(quote!(#ty: #private::Debug), ty.span()));
                    clone_bounds.push(fresh.deferred(quote!(#ty: #private::Clone), ty.span()));
                    eq_bounds.push(fresh.deferred(quote!(#ty: #private::PartialEq), ty.span()));
                }
                let static_init = fresh.to_static(init);
                audited_inits.push(quote!(#(#cfgs)* #field: #static_init));
            }
        }
    }

    dedup(&mut default_bounds);
    dedup(&mut audit_bounds);
    dedup(&mut debug_bounds);
    dedup(&mut clone_bounds);
    dedup(&mut eq_bounds);
    let vis = c.vis;
    let struct_name = ident.unraw().to_string();
    let new_doc = format!(
        "Makes a `{struct_name}` whose maps are empty and configured as declared:\n\n{}\n\n\
         Every other field gets its `Default`. The settings were checked when this code was \
         generated, so this cannot fail.",
        summary.join("\n")
    );
    let mut default_where = c.generics.where_clause.clone().unwrap_or_else(|| syn::parse_quote!(where));
    for bound in &default_bounds {
        default_where.predicates.push(syn::parse_quote!(#bound));
    }
    let new_where = (!default_bounds.is_empty()).then(|| quote!(where #(#default_bounds,)*));
    let (static_impl_generics, static_ty_generics, static_where) = fresh.static_generics(c.generics);
    // Under `no_new`, `new` is the user's (or absent): no link to it.
    let like = if c.opts.no_new.is_none() { "[`new`](Self::new)" } else { "the generated `Default`" };
    let with_auditor_doc = format!(
        "Makes a `{struct_name}` like {like}, whose maps all write their audit records \
         to `auditor`: one sink, so one total order and one hash chain for the whole struct. Maps \
         marked `#[guard(redact)]` record no values (their value type needs no `Serialize`).\n\n\
         # Errors\n\n`MapError::InvalidConfig` when a map is marked `#[guard(digest)]` and \
         `auditor` has no digest key."
    );

    let derives = c.derives;
    let with_where = |bounds: &[TokenStream]| {
        let mut w = c.generics.where_clause.clone().unwrap_or_else(|| syn::parse_quote!(where));
        for bound in bounds {
            w.predicates.push(syn::parse_quote!(#bound));
        }
        w
    };
    // `no_new`: no constructor (the user writes their own `new`); `Default` does not call it.
    let constructor = c.opts.no_new.is_none().then(|| {
        quote! {
            #[doc = #new_doc]
            #vis fn new() -> Self #new_where {
                Self { #(#inits,)* }
            }
        }
    });
    let default_impl = c.opts.no_default.is_none().then(|| {
        quote! {
            #[automatically_derived]
            impl #impl_generics #private::Default for #ident #ty_generics #default_where {
                /// The maps empty and configured as declared (the generated constructor's body,
                /// so that a user's own `new` does not make this call ambiguous).
                #[inline]
                fn default() -> Self {
                    Self { #(#inits,)* }
                }
            }
        }
    });
    let debug_impl = derives.debug.then(|| {
        let w = with_where(&debug_bounds);
        quote! {
            #[automatically_derived]
            impl #impl_generics #private::Debug for #ident #ty_generics #w {
                /// The fields as `#[derive(Debug)]` shows them, each map as its contents (see
                /// `map_wrapper::__private::DebugContents`): bounded, and never waiting for a lock.
                fn fmt(&self, f: &mut #private::Formatter<'_>) -> #private::FmtResult {
                    let mut __d = f.debug_struct(#struct_name);
                    #(#debug_fields)*
                    __d.finish()
                }
            }
        }
    });
    let try_clone_doc = format!(
        "A deep copy of this `{struct_name}`: every map copied entry by entry (a consistent \
         snapshot of each) into a new map with the same declared name and settings, every other \
         field cloned. The copy is **not audited**, whatever this one is: its changes are not \
         this struct's history; give it an auditor with `attach_auditor` if they should be \
         recorded.\n\n# Errors\n\nAs `MapWrapper::snapshot`: `Timeout` when a map stays locked \
         past its timeout, `WouldDeadlock` when this thread holds a write guard on one of them."
    );
    let clone_impl = derives.clone.then(|| {
        let w = with_where(&clone_bounds);
        quote! {
            #[automatically_derived]
            #[allow(dead_code)]
            impl #impl_generics #ident #ty_generics #w {
                #[doc = #try_clone_doc]
                #vis fn try_clone(&self) -> #private::Result<Self, #private::MapError> {
                    #private::Result::Ok(Self { #(#clone_fields,)* })
                }
            }

            #[automatically_derived]
            impl #impl_generics #private::Clone for #ident #ty_generics #w {
                /// [`try_clone`](Self::try_clone), which see.
                ///
                /// # Panics
                ///
                /// When `try_clone` fails (a map locked past its timeout, or a write guard on
                /// one held by this thread), as `RefCell::clone` panics when mutably borrowed.
                fn clone(&self) -> Self {
                    #private::cloned(self.try_clone())
                }
            }
        }
    });
    let eq_impl = derives.partial_eq.then(|| {
        let w = with_where(&eq_bounds);
        let eq = derives.eq.then(|| {
            quote! {
                #[automatically_derived]
                impl #impl_generics #private::Eq for #ident #ty_generics #w {}
            }
        });
        quote! {
            #[automatically_derived]
            impl #impl_generics #private::PartialEq for #ident #ty_generics #w {
                /// Equal when every field is: maps by contents (same keys, equal values), as
                /// `HashMap`'s `==`; names and settings are not compared.
                ///
                /// # Panics
                ///
                /// When a map cannot be read (locked past its timeout, or a write guard on it
                /// held by this thread), as `RefCell`'s `==` panics when mutably borrowed.
                fn eq(&self, other: &Self) -> bool {
                    #(#eq_fields)*
                    true
                }
            }
            #eq
        }
    });
    let deserializers = derives.deserialize.then(|| {
        quote! {
            #[automatically_derived]
            #[allow(non_snake_case)]
            impl #impl_generics #ident #ty_generics #where_clause {
                #(#deserializers)*
            }
        }
    });
    let attach_doc = format!(
        "Starts auditing this `{struct_name}` into `auditor`, keeping its contents: for a struct \
         that came from `new()`, `Default` or serde. From now on every map records each change as \
         [`with_auditor`](Self::with_auditor)'s do (one sink, one chain; `#[guard(redact)]` maps \
         record no values). The entries already there are not recorded: the trail starts here.\n\n\
         Each map gets the audit settings its declaration gives (value policy included), whatever \
         map was put in a public field since.\n\n\
         # Errors\n\n`MapError::InvalidConfig` when a map is marked `#[guard(digest)]` and \
         `auditor` has no digest key; then nothing changed."
    );

    quote! {
        #[automatically_derived]
        // The accessors are generated whether or not the program uses them.
        #[allow(dead_code)]
        impl #impl_generics #ident #ty_generics #where_clause {
            #constructor

            #(#accessors)*
        }

        #debug_impl
        #clone_impl
        #eq_impl
        #deserializers

        // Audit records outlive the operation, so audited keys and values are `'static`: the
        // struct's lifetimes are `'static` here (which also keeps rustc from seeing two
        // bounds that differ only in lifetimes as ambiguous).
        #[automatically_derived]
        #[allow(dead_code)]
        impl #static_impl_generics #ident #static_ty_generics #static_where {
            #[doc = #with_auditor_doc]
            #vis fn with_auditor(
                auditor: &#private::Auditor,
            ) -> #private::Result<Self, #private::MapError>
            where
                #(#audit_bounds,)*
                #(#default_bounds,)*
            {
                #private::Result::Ok(Self { #(#audited_inits,)* })
            }

            #[doc = #attach_doc]
            #vis fn attach_auditor(
                &mut self,
                auditor: &#private::Auditor,
            ) -> #private::Result<(), #private::MapError>
            where
                #(#audit_bounds,)*
            {
                // Every map is built before any is touched: an error leaves the struct as it was.
                #(#attach_builds)*
                #(#attach_moves)*
                #private::Result::Ok(())
            }
        }

        #default_impl
    }
}

/// `MapWrapper::builder()` with the map's checked settings, not yet built.
fn builder_of(private: &TokenStream, map: &MapType<'_>, plan: &Plan) -> TokenStream {
    let name = syn::LitStr::new(&plan.name, map.path.span());
    let timeout = Literal::u64_unsuffixed(plan.timeout_ms);
    let slow = plan.slow_ms.map(|ms| {
        let ms = Literal::u64_unsuffixed(ms);
        quote!(.slow_threshold(#private::Duration::from_millis(#ms)))
    });
    let shards = plan.shards.map(|n| {
        let n = Literal::u64_unsuffixed(n);
        quote!(.shards(#n))
    });
    let policy = match plan.policy {
        Policy::Full => quote!(Full),
        Policy::Digest => quote!(Digest),
        Policy::Redacted => quote!(Redacted),
    };
    let hasher =
        map.hasher.as_ref().map(|s| quote_spanned!(s.span()=> .hasher(<#s as #private::Default>::default())));
    let breaker = plan.breaker.as_ref().map(|b| {
        let config = breaker_config(private, b);
        quote!(.breaker(#config))
    });
    let max_entries = plan.max_entries.map(|n| {
        let n = Literal::u64_unsuffixed(n);
        quote!(.max_entries(#n))
    });
    let auto_shrink = plan.auto_shrink.then(|| quote!(.auto_shrink(true)));
    quote! {
        #private::MapWrapper::builder()
            .name(#name)
            .timeout(#private::Duration::from_millis(#timeout))
            #slow
            #shards
            .value_policy(#private::ValuePolicy::#policy)
            #max_entries
            #auto_shrink
            #breaker
            #hasher
    }
}

/// `BreakerConfig` with the checked settings of `breaker(...)`; the runtime's defaults for the
/// rest. When any rate is given, only the rates given apply.
fn breaker_config(private: &TokenStream, b: &BreakerPlan) -> TokenStream {
    let mut calls = Vec::new();
    if let Some(w) = b.window {
        let w = Literal::u32_unsuffixed(u32::try_from(w).unwrap_or(u32::MAX));
        calls.push(quote!(.window(#private::SlidingWindow::count(#w))));
    }
    if let Some(m) = b.min_calls {
        let m = Literal::u32_unsuffixed(u32::try_from(m).unwrap_or(u32::MAX));
        calls.push(quote!(.minimum_calls(#m)));
    }
    let rates =
        [("failure_rate", b.failure_rate), ("slow_rate", b.slow_rate), ("combined_rate", b.combined_rate)];
    if rates.iter().any(|(_, r)| r.is_some()) {
        for (name, rate) in rates {
            let method = format_ident!("{}", name);
            calls.push(match rate {
                Some(r) => {
                    let fraction = Literal::f64_unsuffixed(r as f64 / 100.0);
                    quote!(.#method(#private::Option::Some(#fraction)))
                }
                None => quote!(.#method(#private::Option::None)),
            });
        }
    }
    if let Some(ms) = b.open_ms {
        let ms = Literal::u64_unsuffixed(ms);
        calls.push(quote!(.open_wait(#private::OpenWait::Fixed(#private::Duration::from_millis(#ms)))));
    }
    quote!(#private::BreakerConfig::new() #(#calls)*)
}

/// `field()` and the `field_<op>` methods of one map field.
fn accessors_of(
    krate: &TokenStream,
    p: &TokenStream,
    docs_krate: &str,
    fresh: &Fresh,
    f: &Field<'_>,
    map: &MapType<'_>,
    plan: &Plan,
) -> TokenStream {
    let field = f.ident;
    let base = field.unraw();
    let vis = &f.original.vis;
    let cfgs = attrs_named(&f.original.attrs, "cfg");
    let docs = attrs_named(&f.original.attrs, "doc");
    let name = &plan.name;
    let (k, v) = (&map.key, &map.value);
    let s = map.hasher.iter().collect::<Vec<_>>();
    let map_ty = quote!(#krate::MapWrapper<#k, #v #(, #s)*>);
    let hasher_bound = quote!(#(#s: #p::BuildHasher,)*);
    let (q, r, func) = (&fresh.q, &fresh.r, &fresh.f);
    // Bounds spanned at the key type, every token of them, so that a key that is not
    // `Hash + Eq` is reported there rather than at the attribute.
    let key_bound = respan(quote!(#k: #p::Hash + #p::Eq), k.span());
    let borrowed = respan(
        quote!(#k: #p::Borrow<#q> + #p::Hash + #p::Eq, #q: #p::Hash + #p::Eq + ?#p::Sized, #hasher_bound),
        k.span(),
    );
    let value_clone = fresh.deferred(quote!(#v: #p::Clone), v.span());
    let op_doc = |what: &str, op: &str| {
        format!(
            "{what} in the `{name}` map (field [`{base}`](Self::{base})); see \
             [`MapWrapper::{op}`]({docs_krate}::MapWrapper::{op}), which says what it locks.\n\n\
             # Errors\n\n`Timeout`, `Cancelled`, `WouldDeadlock`, … as \
             [`MapWrapper::{op}`]({docs_krate}::MapWrapper::{op}); on error nothing changed, unless \
             the error says it was applied (`MapError::applied`: its audit record failed)."
        )
    };
    let field_doc = (docs.is_empty()).then(|| {
        let text = format!("The `{name}` map.");
        quote!(#[doc = #text])
    });
    let get_doc = op_doc("A read guard on the value under `key`, or `None`. The guard keeps the key's shard read-locked while it lives", "get");
    let get_cloned_doc = op_doc("A clone of the value under `key`, or `None`", "get_cloned");
    let contains_doc = op_doc("Whether `key` is present", "contains_key");
    let insert_doc = op_doc("Inserts `value` under `key` and returns the value it replaced", "insert");
    let remove_doc = op_doc("Removes `key` and returns its value", "remove");
    let update_doc = op_doc("Changes the value under `key` in place with `f` (under the shard's write lock); returns what `f` returns, or `None` when the key is absent", "update");
    let len_doc = op_doc("The number of entries", "len");
    let is_empty_doc = op_doc("Whether the map has no entries", "is_empty");
    let entry_doc = op_doc(
        "Starts an upsert of `key`, run in one write lock of its shard. HashMap's \
         `*map.entry(k).or_insert(0) += 1` is `entry(k).or_insert_then(0, |n| *n += 1)?` here (a \
         `&mut V` cannot leave the lock, so the change is a closure). Errors come from the `or_*` \
         call that runs it",
        "entry",
    );
    let keys_doc = op_doc("A copy of every key, as an iterator that holds no lock", "keys");
    let values_doc = op_doc("A copy of every value, as an iterator that holds no lock", "values");
    let iter_doc = op_doc(
        "An iterator over a copy of every entry (owned pairs; it holds no lock, so the loop body \
         may use the map): HashMap's `for (k, v) in &map` is `for (k, v) in field_iter()?`",
        "iter",
    );
    let retain_doc = op_doc(
        "Keeps only the entries for which `f` returns `true`; returns how many were removed",
        "retain",
    );
    let clear_doc = op_doc("Removes every entry; returns how many there were", "clear");
    let extend_doc =
        op_doc("Inserts every pair of `iter`, in order; returns how many were inserted", "extend");
    let [get, get_cloned, contains_key, insert, remove, update, len, is_empty, entry, keys, values, iter, retain, clear, extend] =
        ACCESSOR_SUFFIXES.map(|suffix| format_ident!("{}_{}", base, suffix, span = field.span()));
    let hasher_ty = match &map.hasher {
        Some(s) => quote!(#s),
        None => quote!(#p::RandomState),
    };
    let key_clone = fresh.deferred(quote!(#k: #p::Clone), k.span());
    let it = &fresh.i;
    let [get_mut, iter_mut, values_mut] =
        REFUSED_SUFFIXES.map(|suffix| format_ident!("{}_{}", base, suffix, span = field.span()));
    let refused = |name: &str| {
        let lifetime = &fresh.lifetime;
        let bound = format_ident!("{}", name);
        // At the field, where rustc's "required by this bound" note points.
        respan(quote!(for<#lifetime> &#lifetime Self: #p::#bound), field.span())
    };
    let (no_get_mut, no_iter_mut, no_values_mut) =
        (refused("NoGetMut"), refused("NoIterMut"), refused("NoValuesMut"));
    let never = quote!(::core::unreachable!("a refused accessor of a guarded map cannot be called"));
    let mw = quote!(#krate::MapWrapper);
    let res = |ok: TokenStream| quote!(#p::Result<#ok, #p::MapError>);
    let (r_get, r_opt_v, r_bool, r_opt_r, r_len) = (
        res(quote!(#p::Option<#p::Ref<'_, #k, #v>>)),
        res(quote!(#p::Option<#v>)),
        res(quote!(bool)),
        res(quote!(#p::Option<#r>)),
        res(quote!(usize)),
    );
    let (r_keys, r_values, r_iter) =
        (res(quote!(#p::VecIntoIter<#k>)), res(quote!(#p::VecIntoIter<#v>)), res(quote!(#p::Iter<#k, #v>)));
    // Spanned at the field, so that "defined here" and unmet bounds (a key type that is not
    // `Hash`) point at the field rather than at the attribute.
    quote_spanned! {field.span()=>
        #(#cfgs)*
        #(#docs)*
        #field_doc
        #[inline]
        #vis fn #field(&self) -> &#map_ty {
            &self.#field
        }

        #(#cfgs)*
        #[doc = #get_doc]
        #[inline]
        #vis fn #get<#q>(&self, key: &#q) -> #r_get where #borrowed {
            #mw::get(&self.#field, key)
        }

        #(#cfgs)*
        #[doc = #get_cloned_doc]
        #[inline]
        #vis fn #get_cloned<#q>(&self, key: &#q) -> #r_opt_v where #borrowed #value_clone {
            #mw::get_cloned(&self.#field, key)
        }

        #(#cfgs)*
        #[doc = #contains_doc]
        #[inline]
        #vis fn #contains_key<#q>(&self, key: &#q) -> #r_bool where #borrowed {
            #mw::contains_key(&self.#field, key)
        }

        #(#cfgs)*
        #[doc = #insert_doc]
        #[inline]
        #vis fn #insert(&self, key: #k, value: #v) -> #r_opt_v where #key_bound, #hasher_bound {
            #mw::insert(&self.#field, key, value)
        }

        #(#cfgs)*
        #[doc = #remove_doc]
        #[inline]
        #vis fn #remove<#q>(&self, key: &#q) -> #r_opt_v where #borrowed {
            #mw::remove(&self.#field, key)
        }

        #(#cfgs)*
        #[doc = #update_doc]
        #[inline]
        #vis fn #update<#q, #r, #func>(&self, key: &#q, f: #func) -> #r_opt_r
        where
            #borrowed
            #func: #p::FnOnce(&mut #v) -> #r,
        {
            #mw::update(&self.#field, key, f)
        }

        #(#cfgs)*
        #[doc = #len_doc]
        #[inline]
        #vis fn #len(&self) -> #r_len where #key_bound, #hasher_bound {
            #mw::len(&self.#field)
        }

        #(#cfgs)*
        #[doc = #is_empty_doc]
        #[inline]
        #vis fn #is_empty(&self) -> #r_bool where #key_bound, #hasher_bound {
            #mw::is_empty(&self.#field)
        }

        #(#cfgs)*
        #[doc = #entry_doc]
        #[inline]
        #vis fn #entry(&self, key: #k) -> #p::Entry<'_, 'static, #k, #v, #hasher_ty, fn(&mut #v)>
        where
            #key_bound, #hasher_bound
        {
            #mw::entry(&self.#field, key)
        }

        #(#cfgs)*
        #[doc = #keys_doc]
        #[inline]
        #vis fn #keys(&self) -> #r_keys where #key_bound, #hasher_bound #key_clone {
            #mw::keys(&self.#field)
        }

        #(#cfgs)*
        #[doc = #values_doc]
        #[inline]
        #vis fn #values(&self) -> #r_values where #key_bound, #hasher_bound #value_clone {
            #mw::values(&self.#field)
        }

        #(#cfgs)*
        #[doc = #iter_doc]
        #[inline]
        #vis fn #iter(&self) -> #r_iter where #key_bound, #hasher_bound #key_clone, #value_clone {
            #mw::iter(&self.#field)
        }

        #(#cfgs)*
        #[doc = #retain_doc]
        #[inline]
        #vis fn #retain<#func>(&self, f: #func) -> #r_len
        where
            #key_bound, #hasher_bound
            #func: #p::FnMut(&#k, &#v) -> bool,
        {
            #mw::retain(&self.#field, f)
        }

        #(#cfgs)*
        #[doc = #clear_doc]
        #[inline]
        #vis fn #clear(&self) -> #r_len where #key_bound, #hasher_bound {
            #mw::clear(&self.#field)
        }

        #(#cfgs)*
        #[doc = #extend_doc]
        #[inline]
        #vis fn #extend<#it>(&self, iter: #it) -> #r_len
        where
            #key_bound, #hasher_bound
            #it: #p::IntoIterator<Item = (#k, #v)>,
        {
            #mw::extend(&self.#field, iter)
        }

        // Refused: declared with HashMap's return types (wrapped in `Result`, as every accessor
        // is) so that the code around a call type-checks and the refusal is its only error.
        #(#cfgs)*
        #[doc(hidden)]
        #vis fn #get_mut<#q: ?#p::Sized>(&self, _key: &#q) -> #p::Result<#p::Option<&mut #v>, #p::MapError>
        where
            #no_get_mut
        {
            #never
        }

        #(#cfgs)*
        #[doc(hidden)]
        #vis fn #iter_mut(&self) -> #p::Result<#p::IterMut<'_, #k, #v>, #p::MapError>
        where
            #no_iter_mut
        {
            #never
        }

        #(#cfgs)*
        #[doc(hidden)]
        #vis fn #values_mut(&self) -> #p::Result<#p::ValuesMut<'_, #k, #v>, #p::MapError>
        where
            #no_values_mut
        {
            #never
        }
    }
}

/// Removes repeated bounds (two fields of one type), keeping the first.
fn dedup(bounds: &mut Vec<TokenStream>) {
    let mut seen = BTreeSet::new();
    bounds.retain(|b| seen.insert(b.to_string()));
}

/// `tokens` with every token, nested ones included, at `span`: rustc reports an unmet bound at
/// the span of the whole predicate, which is the call site as soon as one token comes from it.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut t| {
            if let TokenTree::Group(g) = &t {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                t = TokenTree::Group(group);
            } else {
                t.set_span(span);
            }
            t
        })
        .collect()
}

/// The attributes of `attrs` whose path is `name`.
fn attrs_named<'a>(attrs: &'a [Attribute], name: &str) -> Vec<&'a Attribute> {
    attrs.iter().filter(|a| a.path().is_ident(name)).collect()
}

/// Names for the generic parameters of the accessors that do not collide with the struct's.
struct Fresh {
    q: Ident,
    r: Ident,
    f: Ident,
    i: Ident,
    lifetime: Lifetime,
    /// The struct's lifetime parameters, without the quote.
    struct_lifetimes: BTreeSet<String>,
}

impl Fresh {
    fn new(c: &Container<'_>) -> Fresh {
        let taken: BTreeSet<String> = c
            .generics
            .params
            .iter()
            .map(|p| match p {
                GenericParam::Type(t) => t.ident.to_string(),
                GenericParam::Const(k) => k.ident.to_string(),
                GenericParam::Lifetime(l) => l.lifetime.ident.to_string(),
            })
            .collect();
        let pick = |base: &str| {
            let name = std::iter::once(base.to_string())
                .chain((1..).map(|n| format!("{base}{n}")))
                .find(|n| !taken.contains(n))
                .unwrap_or_else(|| base.to_string());
            format_ident!("{}", name)
        };
        let lifetime = Lifetime::new(&format!("'{}", pick("__guarded")), Span::call_site());
        let struct_lifetimes = c.generics.lifetimes().map(|l| l.lifetime.ident.to_string()).collect();
        Fresh { q: pick("Q"), r: pick("R"), f: pick("F"), i: pick("I"), lifetime, struct_lifetimes }
    }

    /// `tokens` with each of the struct's lifetimes replaced by `to`.
    fn replace_lifetimes(&self, tokens: TokenStream, to: &Lifetime) -> TokenStream {
        let mut out = Vec::new();
        let mut tokens = tokens.into_iter().peekable();
        while let Some(t) = tokens.next() {
            match t {
                TokenTree::Punct(p) if p.as_char() == '\'' => {
                    let is_ours = matches!(tokens.peek(), Some(TokenTree::Ident(i)) if self.struct_lifetimes.contains(&i.to_string()));
                    if is_ours {
                        tokens.next();
                        out.extend(to.to_token_stream());
                    } else {
                        out.push(TokenTree::Punct(p));
                    }
                }
                TokenTree::Group(g) => {
                    let mut group = Group::new(g.delimiter(), self.replace_lifetimes(g.stream(), to));
                    group.set_span(g.span());
                    out.push(TokenTree::Group(group));
                }
                other => out.push(other),
            }
        }
        out.into_iter().collect()
    }

    /// `tokens` with the struct's lifetimes made `'static`.
    fn to_static(&self, tokens: TokenStream) -> TokenStream {
        self.replace_lifetimes(tokens, &Lifetime::new("'static", Span::call_site()))
    }

    /// The struct's generics with its lifetimes made `'static`: impl parameters (no
    /// lifetimes, no defaults), type arguments, and where clause.
    fn static_generics(&self, generics: &syn::Generics) -> (TokenStream, TokenStream, TokenStream) {
        let mut params = Vec::new();
        let mut args = Vec::new();
        for p in &generics.params {
            match p {
                GenericParam::Lifetime(_) => args.push(quote!('static)),
                GenericParam::Type(t) => {
                    let mut t = t.clone();
                    (t.eq_token, t.default) = (None, None);
                    args.push(t.ident.to_token_stream());
                    params.push(self.to_static(t.to_token_stream()));
                }
                GenericParam::Const(k) => {
                    let mut k = k.clone();
                    (k.eq_token, k.default) = (None, None);
                    args.push(k.ident.to_token_stream());
                    params.push(self.to_static(k.to_token_stream()));
                }
            }
        }
        let where_clause = generics.where_clause.as_ref().map(|w| self.to_static(w.to_token_stream()));
        let impl_params = (!params.is_empty()).then(|| quote!(<#(#params),*>));
        let ty_args = (!args.is_empty()).then(|| quote!(<#(#args),*>));
        (quote!(#impl_params), quote!(#ty_args), quote!(#where_clause))
    }

    /// `bound` as a where-predicate that rustc checks where the method is called, not where it
    /// is defined: a bound on a concrete type (`Clock: Default`) that does not hold is an error
    /// at its definition, but under a `for<'x>` binder it only makes the method unavailable.
    /// So a value type that is not `Clone` loses `field_get_cloned`, not the whole struct.
    /// Spanned at `span` (the type), where rustc's "required by this bound" note points.
    ///
    /// The struct's own lifetimes in `bound` are replaced by the binder's: two bounds that
    /// differ only in lifetimes (`&'a str: Default`, `&'b str: Default`) would make rustc's
    /// choice between them ambiguous, while `for<'x> &'x str: Default` is one bound.
    fn deferred(&self, bound: TokenStream, span: Span) -> TokenStream {
        let lifetime = &self.lifetime;
        let bound = self.replace_lifetimes(bound, lifetime);
        respan(quote!(for<#lifetime> #bound), span)
    }
}
