//! The typed model of the input. It borrows from the syn tree, so that every error can point
//! at the user's own tokens.

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Error, Fields};

use crate::attr;

pub(crate) struct Input<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: attr::Container,
    /// `None` when the input is not a struct with named fields (an error says so).
    pub(crate) fields: Option<Vec<Field<'a>>>,
}

pub(crate) struct Field<'a> {
    pub(crate) original: &'a syn::Field,
    pub(crate) ident: &'a Ident,
    /// The Rust name without `r#`: the stem of accessor names and the default key.
    pub(crate) name: String,
    /// The field's type, with `Self` spelled as the struct's name, since generated code
    /// names it from inside other impls.
    pub(crate) ty: TokenStream,
    pub(crate) attrs: attr::Field,
}

impl<'a> Input<'a> {
    pub(crate) fn from_syn(input: &'a DeriveInput, errors: &mut Vec<Error>) -> Self {
        let attrs = attr::container(&input.attrs, errors);
        let fields = match named_fields(input) {
            Ok(fields) => Some(
                fields
                    .named
                    .iter()
                    .filter_map(|field| {
                        let ident = field.ident.as_ref()?;
                        Some(Field::from_syn(field, ident, &input.ident, errors))
                    })
                    .collect(),
            ),
            Err(error) => {
                errors.push(error);
                None
            }
        };
        Input {
            original: input,
            attrs,
            fields,
        }
    }

    pub(crate) fn ident(&self) -> &'a Ident {
        &self.original.ident
    }

    /// The runtime's `__private` module, through `#[session(crate = "...")]` if given.
    pub(crate) fn private(&self) -> TokenStream {
        match &self.attrs.crate_path {
            Some(path) => quote!(#path::__private),
            None => quote!(::session_core::__private),
        }
    }

    /// The key `field` is stored under: its key, after the struct's namespace if it has one.
    pub(crate) fn stored_key(&self, field: &Field) -> String {
        match &self.attrs.namespace {
            Some(namespace) => format!("{}.{}", namespace.value(), field.key()),
            None => field.key(),
        }
    }

    /// The name of the generated view; it stays outside the `const _` block because
    /// `SessionData::View` names it in the user's module.
    pub(crate) fn view_ident(&self) -> Ident {
        Ident::new(
            &format!("__{}_SessionView", self.ident().unraw()),
            Span::call_site(),
        )
    }
}

impl<'a> Field<'a> {
    fn from_syn(
        field: &'a syn::Field,
        ident: &'a Ident,
        struct_ident: &Ident,
        errors: &mut Vec<Error>,
    ) -> Self {
        Field {
            original: field,
            ident,
            name: ident.unraw().to_string(),
            ty: replace_self(field.ty.to_token_stream(), struct_ident),
            attrs: attr::field(&field.attrs, errors),
        }
    }

    /// Where to report a problem with the field's type.
    pub(crate) fn ty_span(&self) -> Span {
        self.original.ty.span()
    }

    /// The key the field is stored under.
    pub(crate) fn key(&self) -> String {
        match &self.attrs.rename {
            Some(rename) => rename.value(),
            None => self.name.clone(),
        }
    }

    /// Where to report a problem with the stored key: the `rename` string, else the field.
    pub(crate) fn key_span(&self) -> Span {
        match &self.attrs.rename {
            Some(rename) => rename.span(),
            None => self.ident.span(),
        }
    }
}

/// The named fields of a struct, or an error on what makes the input something else.
fn named_fields(input: &DeriveInput) -> Result<&syn::FieldsNamed, Error> {
    const NEEDS: &str = "`#[derive(Session)]` needs a struct with named fields";
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => Ok(fields),
            Fields::Unnamed(fields) => Err(Error::new_spanned(
                fields,
                format!(
                    "{NEEDS}, each stored under its name; name them: `struct {} {{ name: Type, .. }}`",
                    input.ident
                ),
            )),
            Fields::Unit => Err(Error::new_spanned(
                {
                    let (keyword, ident) = (&data.struct_token, &input.ident);
                    quote!(#keyword #ident)
                },
                format!(
                    "{NEEDS}, each stored under its name; add them: `struct {} {{ name: Type, .. }}`",
                    input.ident
                ),
            )),
        },
        Data::Enum(data) => Err(Error::new(
            data.enum_token.span,
            format!("{NEEDS}, not an enum; keep the enum in a field of such a struct"),
        )),
        Data::Union(data) => Err(Error::new(
            data.union_token.span,
            format!("{NEEDS}, not a union"),
        )),
    }
}

/// Replaces `Self` with the struct's name, keeping the user's spans.
fn replace_self(tokens: TokenStream, struct_ident: &Ident) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Ident(ident) if ident == "Self" => {
                let mut replaced = struct_ident.clone();
                replaced.set_span(ident.span());
                TokenTree::Ident(replaced)
            }
            TokenTree::Group(group) => {
                let mut replaced = Group::new(
                    group.delimiter(),
                    replace_self(group.stream(), struct_ident),
                );
                replaced.set_span(group.span());
                TokenTree::Group(replaced)
            }
            other => other,
        })
        .collect()
}

/// The three methods generated per field.
#[derive(Clone, Copy)]
pub(crate) enum Accessor {
    Getter,
    Mutable,
    Setter,
}

impl Accessor {
    pub(crate) const ALL: [Accessor; 3] = [Accessor::Getter, Accessor::Mutable, Accessor::Setter];

    /// The method's name for a field named `name` (without `r#`).
    pub(crate) fn method(self, name: &str) -> String {
        match self {
            Accessor::Getter => name.to_owned(),
            Accessor::Mutable => format!("{name}_mut"),
            Accessor::Setter => format!("set_{name}"),
        }
    }
}
