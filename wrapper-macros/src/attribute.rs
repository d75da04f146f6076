//! `#[guarded_map]`: rewrites each `HashMap<K, V>` field into `MapWrapper<K, V>`, then
//! generates what `#[derive(GuardedMap)]` would.
//!
//! On a mistake it emits the struct as written (minus the `#[guard]` attributes, which only
//! this macro understands) next to the errors, so that the rest of the crate still sees the
//! struct and one mistake does not cascade into many (as dtolnay's `readonly` does).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Fields, Item, ItemStruct, PathArguments};

use crate::ast::{left_alone_because, Container, Field, MapKind, Mode, Shape};
use crate::attr::{ContainerOpts, GUARD};
use crate::ctxt::Ctxt;
use crate::derive::{ENUM, TUPLE, UNION, UNIT};
use crate::expand::Derives;
use crate::{check, expand};

/// The rewritten struct and its impls, or the struct as written and every error.
pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut cx = Ctxt::default();
    let opts = ContainerOpts::from_args(&mut cx, args);
    let item = match syn::parse2::<Item>(input.clone()) {
        Ok(item) => item,
        Err(e) => {
            cx.syn_error(e);
            return with_errors(cx, input);
        }
    };
    let item = match item {
        Item::Struct(s) => s,
        Item::Enum(e) => {
            cx.error_spanned_by(e.enum_token, ENUM.replace("`GuardedMap`", "`#[guarded_map]`"));
            return with_errors(cx, e.into_token_stream());
        }
        Item::Union(u) => {
            cx.error_spanned_by(u.union_token, UNION.replace("`GuardedMap`", "`#[guarded_map]`"));
            return with_errors(cx, u.into_token_stream());
        }
        other => {
            cx.error_spanned_by(&other, "`#[guarded_map]` applies to a struct with named fields");
            return with_errors(cx, other.into_token_stream());
        }
    };
    let named = match &item.fields {
        Fields::Named(named) => named,
        Fields::Unnamed(fields) => {
            cx.error_spanned_by(fields, TUPLE.replace("`GuardedMap`", "`#[guarded_map]`"));
            return with_errors(cx, stripped(&item).into_token_stream());
        }
        Fields::Unit => {
            cx.error_spanned_by(&item.ident, UNIT.replace("`GuardedMap`", "`#[guarded_map]`"));
            return with_errors(cx, stripped(&item).into_token_stream());
        }
    };
    let krate = expand::crate_path_of(&opts);
    let fields = Field::all(&mut cx, Mode::Attribute, named, &krate);
    let (kept_attrs, derives) = take_derives(&item.attrs);
    let container = Container {
        ident: &item.ident,
        vis: &item.vis,
        generics: &item.generics,
        attrs: &item.attrs,
        opts,
        fields,
        mode: Mode::Attribute,
        derives,
    };
    let plans = check::check(&mut cx, &container);
    if let Err(errors) = cx.check() {
        let stubs = stubs(&container, &krate);
        let (item, errors) = (stripped(&item), errors.into_compile_error());
        return quote!(#item #stubs #errors);
    }
    let impls = expand::impls(&container, &plans);

    // The new field types, and a mention of each replaced `HashMap` path so that the user's
    // `use std::collections::HashMap;` stays used (no unused-import warning).
    let mut new_types = Vec::new();
    let mut mentions = Vec::new();
    let mut guarded = Vec::new();
    let mut left_alone = Vec::new();
    for (i, (f, plan)) in container.fields.iter().zip(&plans).enumerate() {
        let name = f.ident.unraw().to_string();
        let (Shape::Map(map), Some(_)) = (&f.shape, plan) else {
            let why =
                if f.opts.skip.is_some() { "`#[guard(skip)]`" } else { left_alone_because(&f.original.ty) };
            left_alone.push(format!("`{name}` ({why})"));
            continue;
        };
        guarded.push(format!("`{name}`"));
        if map.kind != MapKind::HashMap {
            continue;
        }
        let (k, v) = (&map.key, &map.value);
        let s = map.hasher.iter();
        new_types.push((i, quote_spanned!(f.original.ty.span()=> #krate::MapWrapper<#k, #v #(, #s)*>)));
        if map.forced {
            continue; // the alias stays used, in the projections
        }
        let mut path = map.path.clone();
        if let Some(last) = path.segments.last_mut() {
            let units = (0..2 + usize::from(map.hasher.is_some())).map(|_| quote!(()));
            last.arguments = PathArguments::AngleBracketed(syn::parse_quote!(<#(#units),*>));
        }
        mentions.push(path);
    }
    let struct_ident = &item.ident;
    let mut item = stripped(&item);
    item.attrs = kept_attrs;
    let mut summary = format!("Guarded by `#[guarded_map]`: {}.", guarded.join(", "));
    if !left_alone.is_empty() {
        summary.push_str(&format!(" Left as declared: {}.", left_alone.join(", ")));
    }
    item.attrs.push(syn::parse_quote!(#[doc = ""]));
    item.attrs.push(syn::parse_quote!(#[doc = #summary]));
    if let Fields::Named(named) = &mut item.fields {
        for (i, ty) in new_types {
            if let Some(field) = named.named.iter_mut().nth(i) {
                field.ty = syn::Type::Verbatim(ty);
            }
        }
        if derives.deserialize {
            let has_type_params = container.generics.type_params().next().is_some();
            let shapes: Vec<&Shape<'_>> = container.fields.iter().map(|f| &f.shape).collect();
            for (i, (field, plan)) in named.named.iter_mut().zip(&plans).enumerate() {
                let Some(ident) = &field.ident else { continue };
                let has_own = field
                    .attrs
                    .iter()
                    .any(|a| a.path().is_ident("serde") && a.to_token_stream().to_string().contains("with"));
                if plan.is_none() || has_own {
                    continue;
                }
                let path = format!("{}::{}", struct_ident.unraw(), expand::deserializer_name(ident));
                field.attrs.push(syn::parse_quote!(#[serde(deserialize_with = #path)]));
                // serde infers no bounds for a `deserialize_with` field: give the generated
                // function's own, when the struct has type parameters they could involve.
                if let (true, Some(Shape::Map(map))) = (has_type_params, shapes.get(i)) {
                    let p = krate.to_string().replace(' ', "") + "::__private";
                    let (k, v) = (&map.key, &map.value);
                    let mut bound = format!(
                        "{}: {p}::Deserialize<'de> + {p}::Hash + {p}::Eq, {}: {p}::Deserialize<'de>",
                        quote!(#k),
                        quote!(#v)
                    );
                    if let Some(h) = &map.hasher {
                        bound.push_str(&format!(", {}: {p}::BuildHasher + {p}::Default", quote!(#h)));
                    }
                    field.attrs.push(syn::parse_quote!(#[serde(bound(deserialize = #bound))]));
                }
            }
        }
    }
    let mentions = (!mentions.is_empty()).then(|| {
        quote! {
            const _: #krate::__private::PhantomData<(#(#mentions,)*)> = #krate::__private::PhantomData;
        }
    });
    quote! {
        #item
        #mentions
        #impls
    }
}

/// The struct's attributes with `Debug`, `Clone`, `PartialEq`, `Eq` and `Default` taken out of
/// its derives (`#[guarded_map]` implements them itself, and the derives could not: the maps
/// implement none of them), and which of them, and serde's `Deserialize`, were there.
fn take_derives(attrs: &[syn::Attribute]) -> (Vec<syn::Attribute>, Derives) {
    let mut derives = Derives::default();
    let mut kept = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("derive") {
            kept.push(attr.clone());
            continue;
        }
        let Ok(paths) = attr.parse_args_with(Punctuated::<syn::Path, syn::Token![,]>::parse_terminated)
        else {
            kept.push(attr.clone());
            continue;
        };
        let mut rest: Vec<&syn::Path> = Vec::new();
        for path in &paths {
            let name = path.segments.last().map(|s| s.ident.to_string()).unwrap_or_default();
            match name.as_str() {
                "Debug" => derives.debug = true,
                "Clone" => derives.clone = true,
                "PartialEq" => derives.partial_eq = true,
                "Eq" => derives.eq = true,
                // Generated through the constructor (or refused with `no_default`, by `check`).
                "Default" => {}
                "Deserialize" => {
                    derives.deserialize = true;
                    rest.push(path);
                }
                _ => rest.push(path),
            }
        }
        if !rest.is_empty() {
            let mut attr = attr.clone();
            attr.meta = syn::parse_quote!(derive(#(#rest),*));
            kept.push(attr);
        }
    }
    // `Eq` without `PartialEq` is the user's mistake; leave it to rustc to say so.
    if derives.eq && !derives.partial_eq {
        derives.eq = false;
        kept.push(syn::parse_quote!(#[derive(Eq)]));
    }
    (kept, derives)
}

/// Next to errors: stand-ins for what the struct would have had (`new`, `with_auditor`,
/// `Default`, the map accessors), as thiserror's fallback, so that a mistake in the attribute is
/// one error, not one more at every call site. Their bodies never run: the crate does not
/// compile.
pub(crate) fn stubs(c: &Container<'_>, krate: &TokenStream) -> TokenStream {
    let ident = c.ident;
    let vis = c.vis;
    let (impl_generics, ty_generics, where_clause) = c.generics.split_for_impl();
    let never = quote!(::core::unreachable!("#[guarded_map] stand-in next to a compile error"));
    let new = c.opts.no_new.is_none().then(|| quote!(#vis fn new() -> Self { #never }));
    let has_default = c
        .attrs
        .iter()
        .any(|a| a.path().is_ident("derive") && a.to_token_stream().to_string().contains("Default"));
    let default = (c.opts.no_default.is_none() && !has_default).then(|| {
        quote! {
            impl #impl_generics ::core::default::Default for #ident #ty_generics #where_clause {
                fn default() -> Self { #never }
            }
        }
    });
    let p = quote!(#krate::__private);
    let mut methods: Vec<(String, TokenStream)> = Vec::new();
    for f in c.fields.iter().filter(|f| f.opts.skip.is_none()) {
        let Shape::Map(map) = &f.shape else { continue };
        let (field, vis, ty) = (f.ident, &f.original.vis, &f.original.ty);
        methods.push((field.unraw().to_string(), quote!(#vis fn #field(&self) -> &#ty { &self.#field })));
        if map.forced {
            continue;
        }
        // The operations too, with their real types (the key and value types are written
        // out), so that call sites type-check against them.
        let (k, v) = (&map.key, &map.value);
        let res = |ok: TokenStream| quote!(#p::Result<#ok, #p::MapError>);
        let q = quote!(__Q: ?#p::Sized);
        let (r_get, r_v, r_bool, r_r, r_len) = (
            res(quote!(#p::Option<#p::Ref<'_, #k, #v>>)),
            res(quote!(#p::Option<#v>)),
            res(quote!(bool)),
            res(quote!(#p::Option<__R>)),
            res(quote!(usize)),
        );
        let (r_keys, r_values, r_iter) = (
            res(quote!(#p::VecIntoIter<#k>)),
            res(quote!(#p::VecIntoIter<#v>)),
            res(quote!(#p::Iter<#k, #v>)),
        );
        let hasher = match &map.hasher {
            Some(s) => quote!(#s),
            None => quote!(#p::RandomState),
        };
        let signatures: [TokenStream; expand::ACCESSOR_SUFFIXES.len()] = [
            quote!(<#q>(&self, _key: &__Q) -> #r_get),
            quote!(<#q>(&self, _key: &__Q) -> #r_v),
            quote!(<#q>(&self, _key: &__Q) -> #r_bool),
            quote!((&self, _key: #k, _value: #v) -> #r_v),
            quote!(<#q>(&self, _key: &__Q) -> #r_v),
            quote!(<#q, __R, __F: #p::FnOnce(&mut #v) -> __R>(&self, _key: &__Q, _f: __F) -> #r_r),
            quote!((&self) -> #r_len),
            quote!((&self) -> #r_bool),
            quote!((&self, _key: #k) -> #p::Entry<'_, 'static, #k, #v, #hasher, fn(&mut #v)>),
            quote!((&self) -> #r_keys),
            quote!((&self) -> #r_values),
            quote!((&self) -> #r_iter),
            quote!(<__F: #p::FnMut(&#k, &#v) -> bool>(&self, _f: __F) -> #r_len),
            quote!((&self) -> #r_len),
            quote!(<__I: #p::IntoIterator<Item = (#k, #v)>>(&self, _iter: __I) -> #r_len),
        ];
        for (suffix, signature) in expand::ACCESSOR_SUFFIXES.iter().zip(signatures) {
            let name = quote::format_ident!("{}_{}", field.unraw(), suffix);
            methods.push((name.to_string(), quote!(#vis fn #name #signature { #never })));
        }
    }
    // One stand-in per name, none named like a constructor (a clash is already reported).
    let mut seen = std::collections::BTreeSet::new();
    let accessors = methods
        .into_iter()
        .filter(|(name, _)| !expand::CONSTRUCTORS.contains(&name.as_str()) && seen.insert(name.clone()))
        .map(|(_, tokens)| tokens);
    quote! {
        #[allow(dead_code, unreachable_code)]
        impl #impl_generics #ident #ty_generics #where_clause {
            #new
            #vis fn with_auditor(
                _auditor: &#krate::__private::Auditor,
            ) -> ::core::result::Result<Self, #krate::__private::MapError> {
                #never
            }
            #(#accessors)*
        }
        #default
    }
}

/// `tokens` followed by the compile errors in `cx`.
fn with_errors(cx: Ctxt, tokens: TokenStream) -> TokenStream {
    let errors = cx.check().err().map(syn::Error::into_compile_error);
    quote!(#tokens #errors)
}

/// The struct as written, without `#[guard]` attributes.
fn stripped(item: &ItemStruct) -> ItemStruct {
    let mut item = item.clone();
    item.attrs.retain(|a| !a.path().is_ident(GUARD));
    for field in item.fields.iter_mut() {
        field.attrs.retain(|a| !a.path().is_ident(GUARD));
    }
    item
}

#[cfg(test)]
mod tests {
    use quote::quote;
    use syn::{File, ImplItem, Item};

    fn expand(args: proc_macro2::TokenStream, input: proc_macro2::TokenStream) -> File {
        syn::parse2(super::expand(args, input)).expect("the expansion is valid Rust")
    }

    fn inherent_fn<'a>(file: &'a File, name: &str) -> &'a syn::ImplItemFn {
        file.items
            .iter()
            .filter_map(|i| match i {
                Item::Impl(imp) if imp.trait_.is_none() => Some(imp),
                _ => None,
            })
            .flat_map(|imp| &imp.items)
            .find_map(|item| match item {
                ImplItem::Fn(f) if f.sig.ident == name => Some(f),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no generated fn `{name}`"))
    }

    fn has_attr(attrs: &[syn::Attribute], name: &str) -> bool {
        attrs.iter().any(|a| a.path().is_ident(name))
    }

    #[test]
    fn field_docs_and_visibility_go_to_the_accessor() {
        let file = expand(
            quote!(),
            quote! {
                pub struct Billing {
                    /// Open invoices.
                    pub(crate) invoices: HashMap<u64, String>,
                }
            },
        );
        let accessor = inherent_fn(&file, "invoices");
        let docs: Vec<String> = accessor
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .map(|a| quote!(#a).to_string())
            .collect();
        assert_eq!(docs, vec![quote!(#[doc = r" Open invoices."]).to_string()]);
        assert!(has_attr(&accessor.attrs, "inline"));
        assert!(matches!(accessor.vis, syn::Visibility::Restricted(_)), "pub(crate) kept");
        let insert = inherent_fn(&file, "invoices_insert");
        assert!(matches!(insert.vis, syn::Visibility::Restricted(_)));
        assert!(has_attr(&insert.attrs, "doc") && has_attr(&insert.attrs, "inline"));
        let new = inherent_fn(&file, "new");
        assert!(matches!(new.vis, syn::Visibility::Public(_)), "new() has the struct's visibility");
        let audited = inherent_fn(&file, "with_auditor");
        assert!(matches!(audited.vis, syn::Visibility::Public(_)));
    }

    #[test]
    fn the_struct_doc_names_the_fields_guarded_and_those_left_alone_with_why() {
        let file = expand(
            quote!(),
            quote! {
                /// A store.
                struct Store {
                    orders: HashMap<u64, String>,
                    #[guard(skip)]
                    raw: HashMap<u8, u8>,
                    index: BTreeMap<u64, String>,
                    maybe: Option<HashMap<u8, u8>>,
                    aliased: Orders,
                    label: String,
                }
            },
        );
        let Some(Item::Struct(s)) = file.items.first() else { panic!("the struct comes first") };
        let docs: Vec<String> = s
            .attrs
            .iter()
            .filter_map(|a| match &a.meta {
                syn::Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(docs[0], " A store.", "the user's doc stays first");
        let summary = docs.last().expect("a summary line");
        assert!(summary.starts_with("Guarded by `#[guarded_map]`: `orders`."), "{summary}");
        for part in [
            "`raw` (`#[guard(skip)]`)",
            "`index` (a `BTreeMap`",
            "`maybe` (an `Option` of a map",
            "`aliased` (not a map (a type alias of one needs `#[guard(map)]`))",
            "`label` (not a map",
        ] {
            assert!(summary.contains(part), "{part} missing from {summary}");
        }
    }

    #[test]
    fn derived_std_traits_are_taken_over_and_the_rest_kept() {
        let file = expand(
            quote!(),
            quote! {
                #[derive(Debug, Clone, serde::Serialize, PartialEq, Eq, Default, Hash)]
                struct Store {
                    orders: HashMap<u64, String>,
                }
            },
        );
        let Some(Item::Struct(s)) = file.items.first() else { panic!("the struct comes first") };
        let derives: Vec<String> = s
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("derive"))
            .map(|a| a.meta.require_list().expect("a list").tokens.to_string())
            .collect();
        assert_eq!(derives, vec!["serde :: Serialize , Hash".to_string()]);
        let traits: Vec<String> = file
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Impl(imp) => imp.trait_.as_ref().map(|(_, p, _)| quote!(#p).to_string()),
                _ => None,
            })
            .collect();
        for t in ["Debug", "Clone", "PartialEq", "Eq", "Default"] {
            assert!(traits.iter().any(|x| x.ends_with(&format!(":: {t}"))), "{t} not in {traits:?}");
        }
    }

    #[test]
    fn every_impl_is_marked_automatically_derived() {
        let file = expand(
            quote!(),
            quote!(
                struct Billing {
                    invoices: HashMap<u64, String>,
                }
            ),
        );
        let impls: Vec<_> = file
            .items
            .iter()
            .filter_map(|i| if let Item::Impl(imp) = i { Some(imp) } else { None })
            .collect();
        assert_eq!(impls.len(), 3, "the accessors, with_auditor (its own generics), Default");
        assert!(impls.iter().all(|imp| has_attr(&imp.attrs, "automatically_derived")));
    }

    #[test]
    fn on_a_mistake_the_struct_is_emitted_as_written_with_stand_ins_next_to_the_errors() {
        let out = super::expand(
            quote!(timeout_ms = "soon"),
            quote! {
                struct Billing {
                    #[guard(colour)]
                    invoices: HashMap<u64, String>,
                }
            },
        );
        let file: File = syn::parse2(out).expect("valid Rust");
        let structs: Vec<_> =
            file.items.iter().filter_map(|i| if let Item::Struct(s) = i { Some(s) } else { None }).collect();
        assert_eq!(structs.len(), 1);
        let field = structs[0].fields.iter().next().expect("one field");
        let ty = &field.ty;
        assert_eq!(quote!(#ty).to_string(), quote!(HashMap<u64, String>).to_string(), "type unchanged");
        assert!(field.attrs.is_empty(), "#[guard] removed: it means nothing without the macro");
        let errors = file
            .items
            .iter()
            .filter(|i| matches!(i, Item::Macro(m) if m.mac.path.segments.last().is_some_and(|s| s.ident == "compile_error")))
            .count();
        assert_eq!(errors, 2, "both mistakes reported");
        // Stand-ins for what call sites use, so that the mistakes are the only errors.
        let stand_ins: Vec<String> = file
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Impl(imp) if imp.trait_.is_none() => Some(imp),
                _ => None,
            })
            .flat_map(|imp| &imp.items)
            .filter_map(|item| match item {
                ImplItem::Fn(f) => Some(f.sig.ident.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            stand_ins,
            [
                "new",
                "with_auditor",
                "invoices",
                "invoices_get",
                "invoices_get_cloned",
                "invoices_contains_key",
                "invoices_insert",
                "invoices_remove",
                "invoices_update",
                "invoices_len",
                "invoices_is_empty",
                "invoices_entry",
                "invoices_keys",
                "invoices_values",
                "invoices_iter",
                "invoices_retain",
                "invoices_clear",
                "invoices_extend"
            ]
        );
        let defaults =
            file.items.iter().filter(|i| matches!(i, Item::Impl(imp) if imp.trait_.is_some())).count();
        assert_eq!(defaults, 1, "a stand-in `Default`");
    }
}
