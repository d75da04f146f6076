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
    Map(MapType<'a>),
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
    pub(crate) key: &'a Type,
    pub(crate) value: &'a Type,
    pub(crate) hasher: Option<&'a Type>,
}

impl<'a> Field<'a> {
    /// Reads the named fields of a struct, with their options.
    pub(crate) fn all(cx: &mut Ctxt, mode: Mode, fields: &'a syn::FieldsNamed) -> Vec<Field<'a>> {
        fields
            .named
            .iter()
            .filter_map(|f| {
                let ident = f.ident.as_ref()?;
                Some(Field {
                    original: f,
                    ident,
                    opts: FieldOpts::from_attrs(cx, &f.attrs),
                    shape: shape_of(mode, &f.ty),
                })
            })
            .collect()
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
    Shape::Map(MapType {
        kind,
        path: &tp.path,
        key: types[0],
        value: types[1],
        hasher: types.get(2).copied(),
    })
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
