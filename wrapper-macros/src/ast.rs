//! The struct as the macros see it: its fields sorted into maps (with their key, value and
//! hasher types) and other fields, each with its options.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, GenericArgument, Generics, Ident, PathArguments, Type, Visibility};

use crate::attr::{ContainerOpts, FieldOpts};
use crate::ctxt::Ctxt;

/// Which entry point is expanding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `#[derive(GuardedMap)]`: only `MapWrapper` fields are maps; no type changes.
    Derive,
    /// `#[guarded_map]`: `HashMap` fields become `MapWrapper`, `MapWrapper` fields stay.
    Attribute,
}

/// A struct with named fields.
pub(crate) struct Container<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a Visibility,
    pub(crate) generics: &'a Generics,
    pub(crate) attrs: &'a [Attribute],
    pub(crate) opts: ContainerOpts,
    pub(crate) fields: Vec<Field<'a>>,
    pub(crate) mode: Mode,
    /// The standard traits to implement for the struct (taken out of its `#[derive]`).
    pub(crate) derives: crate::expand::Derives,
}

/// One named field.
pub(crate) struct Field<'a> {
    pub(crate) original: &'a syn::Field,
    pub(crate) ident: &'a Ident,
    pub(crate) opts: FieldOpts,
    pub(crate) shape: Shape<'a>,
}

/// What a field's type is, as far as the macros care.
pub(crate) enum Shape<'a> {
    /// `HashMap<K, V>` / `MapWrapper<K, V>` (with an optional hasher type `S`).
    Map(Box<MapType<'a>>),
    /// A `HashMap` or `MapWrapper` with a number of type arguments other than 2 or 3.
    BadMap { kind: MapKind, found: usize, span: Span },
    /// A `HashMap` in a derive: the derive changes no types, so it cannot guard one.
    HashMapInDerive,
    /// Anything else: left as it is.
    Other,
}

/// Which map type a field was declared with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapKind {
    HashMap,
    MapWrapper,
}

impl MapKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MapKind::HashMap => "HashMap",
            MapKind::MapWrapper => "MapWrapper",
        }
    }
}

/// A map field's type, taken apart.
pub(crate) struct MapType<'a> {
    pub(crate) kind: MapKind,
    /// The type path as the user wrote it, arguments included.
    pub(crate) path: &'a syn::Path,
    pub(crate) key: Type,
    pub(crate) value: Type,
    pub(crate) hasher: Option<Type>,
    /// `#[guard(map)]` on a type the macro cannot take apart (an alias): key, value and
    /// hasher are projections `<T as __private::MapParts>::…`, resolved by the compiler.
    pub(crate) forced: bool,
}

impl<'a> Field<'a> {
    /// Reads the named fields of a struct, with their options.
    pub(crate) fn all(
        cx: &mut Ctxt,
        mode: Mode,
        fields: &'a syn::FieldsNamed,
        krate: &proc_macro2::TokenStream,
    ) -> Vec<Field<'a>> {
        fields
            .named
            .iter()
            .filter_map(|f| {
                let ident = f.ident.as_ref()?;
                let opts = FieldOpts::from_attrs(cx, &f.attrs);
                let mut shape = shape_of(mode, &f.ty);
                if opts.map.is_some() {
                    if let (Shape::Other, Type::Path(tp)) = (&shape, ungroup(&f.ty)) {
                        shape = forced(ungroup(&f.ty), tp, krate);
                    }
                }
                Some(Field { original: f, ident, opts, shape })
            })
            .collect()
    }
}

/// `#[guard(map)]` on a path type the macro does not recognise: its parts are asked of the
/// compiler through `__private::MapParts` (implemented for `HashMap` and `MapWrapper`).
fn forced<'a>(ty: &'a Type, tp: &'a syn::TypePath, krate: &proc_macro2::TokenStream) -> Shape<'a> {
    let part = |name: &str| -> Type {
        let name = syn::Ident::new(name, ty.span());
        syn::parse_quote_spanned!(ty.span()=> <#ty as #krate::__private::MapParts>::#name)
    };
    Shape::Map(Box::new(MapType {
        kind: MapKind::HashMap,
        path: &tp.path,
        key: part("Key"),
        value: part("Value"),
        hasher: Some(part("Hasher")),
        forced: true,
    }))
}

/// Why a field that is not guarded was left alone, for the struct's doc line.
pub(crate) fn left_alone_because(ty: &Type) -> &'static str {
    let Type::Path(tp) = ungroup(ty) else { return "not a map" };
    let Some(last) = tp.path.segments.last() else { return "not a map" };
    match last.ident.to_string().as_str() {
        "BTreeMap" => "a `BTreeMap`: ordered, and `MapWrapper` is a hash map",
        "Option" => {
            let inner = match &last.arguments {
                PathArguments::AngleBracketed(a) => a.args.iter().find_map(|a| match a {
                    GenericArgument::Type(t) => Some(t),
                    _ => None,
                }),
                _ => None,
            };
            match inner.map(|t| shape_of(Mode::Attribute, t)) {
                Some(Shape::Map(_)) => {
                    "an `Option` of a map: declare the map itself (an empty map stands for `None`)"
                }
                _ => "not a map",
            }
        }
        _ => "not a map (a type alias of one needs `#[guard(map)]`)",
    }
}

/// Sorts a field type into map / not a map.
fn shape_of(mode: Mode, ty: &Type) -> Shape<'_> {
    let ty = ungroup(ty);
    let Type::Path(tp) = ty else {
        return Shape::Other;
    };
    if tp.qself.is_some() {
        return Shape::Other;
    }
    let Some(last) = tp.path.segments.last() else {
        return Shape::Other;
    };
    let kind = if last.ident == "HashMap" {
        MapKind::HashMap
    } else if last.ident == "MapWrapper" {
        MapKind::MapWrapper
    } else {
        return Shape::Other;
    };
    if mode == Mode::Derive && kind == MapKind::HashMap {
        return Shape::HashMapInDerive;
    }
    let args: Vec<&GenericArgument> = match &last.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().collect(),
        PathArguments::None => Vec::new(),
        PathArguments::Parenthesized(p) => return Shape::BadMap { kind, found: 0, span: p.span() },
    };
    let types: Vec<&Type> = args
        .iter()
        .filter_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    let span = match &last.arguments {
        PathArguments::None => last.ident.span(),
        other => other.span(),
    };
    if types.len() != args.len() || !(2..=3).contains(&types.len()) {
        return Shape::BadMap { kind, found: types.len(), span };
    }
    Shape::Map(Box::new(MapType {
        kind,
        path: &tp.path,
        key: types[0].clone(),
        value: types[1].clone(),
        hasher: types.get(2).map(|t| (*t).clone()),
        forced: false,
    }))
}

/// `ty` without the invisible groups and parentheses that macro_rules and users put around
/// types.
fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(g) => ty = &g.elem,
            Type::Paren(p) => ty = &p.elem,
            _ => return ty,
        }
    }
}
