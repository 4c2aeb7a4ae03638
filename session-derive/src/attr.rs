//! `#[session(...)]` attributes, parsed with `parse_nested_meta`.
//!
//! Every problem is pushed to the caller's error list and parsing goes on with the next key,
//! so one compile reports all of them. Unknown and duplicate keys are reported on the key.

use proc_macro2::TokenTree;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Error, ExprPath, LitStr, Path, Result, Token};

/// Attributes on the struct.
#[derive(Default)]
pub(crate) struct Container {
    /// `crate = "path"`: where generated code finds `session_core`.
    pub(crate) crate_path: Option<Path>,
    /// `namespace = "name"`: the struct's fields are stored as `name.key`.
    pub(crate) namespace: Option<LitStr>,
}

/// Attributes on a field.
#[derive(Default)]
pub(crate) struct Field {
    /// `rename = "key"`: the key the field is stored under.
    pub(crate) rename: Option<LitStr>,
    /// `default = path` or `default = "path"`: the function giving the value when the store
    /// has none.
    pub(crate) default: Option<ExprPath>,
    /// `flash`: the field is a flash message, consumed the request after it is set.
    pub(crate) flash: Option<proc_macro2::Span>,
    /// `index`: the layer keeps the set of sessions holding each value of the field.
    pub(crate) index: Option<proc_macro2::Span>,
}

pub(crate) fn container(attrs: &[Attribute], errors: &mut Vec<Error>) -> Container {
    let mut container = Container::default();
    for attr in session_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            let key = key_text(&meta.path);
            let outcome = match key.as_str() {
                "crate" if container.crate_path.is_some() => Err(duplicate(&meta, &key)),
                "crate" => path_value(&meta, &key).map(|path| container.crate_path = Some(path)),
                "namespace" if container.namespace.is_some() => Err(duplicate(&meta, &key)),
                "namespace" => {
                    string_value(&meta, &key).map(|lit| container.namespace = Some(lit))
                }
                "rename" | "default" => Err(meta.error(format!(
                    "`{key}` is a field attribute: put `#[session({key} = ...)]` on a field, not on the struct"
                ))),
                "flash" | "index" => Err(meta.error(format!(
                    "`{key}` is a field attribute: put `#[session({key})]` on an `Option<T>` field, not on the struct"
                ))),
                _ => Err(meta.error(format!(
                    "unknown session attribute `{key}`, expected `crate` or `namespace` on the struct"
                ))),
            };
            recover(&meta, outcome, errors)
        });
        errors.extend(result.err());
    }
    container
}

pub(crate) fn field(attrs: &[Attribute], errors: &mut Vec<Error>) -> Field {
    let mut field = Field::default();
    for attr in session_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            let key = key_text(&meta.path);
            let outcome = match key.as_str() {
                "rename" if field.rename.is_some() => Err(duplicate(&meta, &key)),
                "rename" => string_value(&meta, &key).map(|lit| field.rename = Some(lit)),
                "default" if field.default.is_some() => Err(duplicate(&meta, &key)),
                "default" => function_value(&meta).map(|path| field.default = Some(path)),
                "flash" if field.flash.is_some() => Err(duplicate(&meta, &key)),
                "flash" if meta.input.peek(Token![=]) => Err(meta.error(
                    "`flash` takes no value: `#[session(flash)]`",
                )),
                "flash" => {
                    field.flash = Some(meta.path.span());
                    Ok(())
                }
                "index" if field.index.is_some() => Err(duplicate(&meta, &key)),
                "index" if meta.input.peek(Token![=]) => Err(meta.error(
                    "`index` takes no value: `#[session(index)]`",
                )),
                "index" => {
                    field.index = Some(meta.path.span());
                    Ok(())
                }
                "crate" | "namespace" => Err(meta.error(format!(
                    "`{key}` is a struct attribute: put `#[session({key} = \"...\")]` on the struct, not on a field"
                ))),
                _ => Err(meta.error(format!(
                    "unknown session attribute `{key}`, expected `rename`, `default`, `flash` or `index`"
                ))),
            };
            recover(&meta, outcome, errors)
        });
        errors.extend(result.err());
    }
    field
}

fn session_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|attr| attr.path().is_ident("session"))
}

/// Records a failed key and skips the rest of its value, so the keys after it are still read.
fn recover(meta: &ParseNestedMeta, outcome: Result<()>, errors: &mut Vec<Error>) -> Result<()> {
    if let Err(error) = outcome {
        errors.push(error);
        while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
            meta.input.parse::<TokenTree>()?;
        }
    }
    Ok(())
}

fn duplicate(meta: &ParseNestedMeta, key: &str) -> Error {
    meta.error(format!("duplicate session attribute `{key}`"))
}

/// `key = "text"`.
fn string_value(meta: &ParseNestedMeta, key: &str) -> Result<LitStr> {
    let expected = || format!("expected a string: `{key} = \"...\"`");
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(expected()));
    }
    let value = meta.value()?;
    if value.peek(LitStr) {
        value.parse()
    } else {
        Err(value.error(expected()))
    }
}

/// `key = path` or `key = "path"`, a path without generic arguments (a crate or module).
fn path_value(meta: &ParseNestedMeta, key: &str) -> Result<Path> {
    let expected = || format!("expected a path: `{key} = \"path\"`");
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(expected()));
    }
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        lit.parse_with(Path::parse_mod_style)
            .map_err(|_| Error::new(lit.span(), expected()))
    } else {
        Path::parse_mod_style(value).map_err(|error| Error::new(error.span(), expected()))
    }
}

/// `default = path` or `default = "path"` (serde's spelling): a function path, which may
/// carry a turbofish or a qualified self type.
fn function_value(meta: &ParseNestedMeta) -> Result<ExprPath> {
    let expected = "expected a function: `default = path` or `default = \"path\"`";
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(
            "`default` needs a function, `#[session(default = path)]`; without this attribute the field already takes `Default::default()`",
        ));
    }
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        lit.parse::<ExprPath>()
            .map_err(|_| Error::new(lit.span(), expected))
    } else {
        value
            .parse::<ExprPath>()
            .map_err(|error| Error::new(error.span(), expected))
    }
}

/// A key as the user wrote it: `renam`, or `a::b` for a path.
fn key_text(path: &Path) -> String {
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    let leading = if path.leading_colon.is_some() {
        "::"
    } else {
        ""
    };
    format!("{leading}{}", segments.join("::"))
}
