//! Rules across the whole input, checked after the attributes are read. Each rule pushes its
//! errors and the next rule still runs, so one compile reports every problem.

use std::collections::HashMap;

use proc_macro2::Ident;
use syn::Error;

use crate::ast::{Accessor, Field, Input};

/// Methods that `Session<T>` has itself, or gets from a prelude trait, with who owns them: a
/// field of that name would get a getter that `session.name()` never reaches, because method
/// lookup finds these before auto-deref gets to the view.
const RESERVED: &[(&str, &str)] = &[
    ("id", "`Session::id`"),
    ("data", "`Session::data`"),
    ("regenerate", "`Session::regenerate`"),
    ("clear", "`Session::clear`"),
    ("destroy", "`Session::destroy`"),
    ("reload", "`Session::reload`"),
    ("save", "`Session::save`"),
    ("touch", "`Session::touch`"),
    ("cookie_max_age", "`Session::cookie_max_age`"),
    ("drop", "`Drop::drop`"),
    ("into", "`Into::into`"),
    ("try_into", "`TryInto::try_into`"),
];

pub(crate) fn check(input: &Input, errors: &mut Vec<Error>) {
    no_generics(input, errors);
    namespace_is_a_name(input, errors);
    if let Some(fields) = &input.fields {
        no_empty_rename(fields, errors);
        unique_keys(fields, errors);
        no_reserved_names(input.ident(), fields, errors);
        no_reserved_keys(fields, errors);
        flash_is_an_option(fields, errors);
        index_is_not_flash(fields, errors);
        unique_accessors(fields, errors);
    }
}

// Generated impls name the struct without parameters, and a session is decoded into an owned
// `'static` value, so neither type parameters nor lifetimes can be filled in.
fn no_generics(input: &Input, errors: &mut Vec<Error>) {
    let generics = &input.original.generics;
    if !generics.params.is_empty() {
        errors.push(Error::new_spanned(
            generics,
            "`#[derive(Session)]` does not support generic parameters; give the fields concrete, owned types",
        ));
    }
}

// A field must be stored under some key; `rename = ""` would store it under nothing.
fn no_empty_rename(fields: &[Field], errors: &mut Vec<Error>) {
    for rename in fields
        .iter()
        .filter_map(|field| field.attrs.rename.as_ref())
    {
        if rename.value().is_empty() {
            errors.push(Error::new(
                rename.span(),
                "`rename` needs a non-empty key: `#[session(rename = \"key\")]`",
            ));
        }
    }
}

// Two fields under one stored key would overwrite each other; report the later one.
fn unique_keys(fields: &[Field], errors: &mut Vec<Error>) {
    let mut owners: HashMap<String, &Field> = HashMap::new();
    for field in fields {
        let key = field.key();
        if key.is_empty() {
            continue;
        }
        match owners.get(&key) {
            Some(first) => errors.push(Error::new(
                field.key_span(),
                format!(
                    "field `{}` is stored under the key `{key}`, like field `{}`; give one of them another key with `#[session(rename = \"...\")]`",
                    field.name, first.name
                ),
            )),
            None => {
                owners.insert(key, field);
            }
        }
    }
}

// A field named like a method of `Session<T>` would have a getter nobody can call.
fn no_reserved_names(struct_ident: &Ident, fields: &[Field], errors: &mut Vec<Error>) {
    for field in fields {
        if let Some((name, owner)) = RESERVED.iter().find(|(name, _)| field.name == *name) {
            errors.push(Error::new(
                field.ident.span(),
                format!(
                    "field name `{name}` is reserved: {owner} would hide its getter on `Session<{}>`; rename the Rust field and keep its stored key with `#[session(rename = \"{}\")]`",
                    struct_ident,
                    field.key()
                ),
            ));
        }
    }
}

// A namespace becomes the prefix `name.` of every key: it must be a plain, non-empty name, so
// no namespace is the prefix of another and no key of one can be a key of another.
fn namespace_is_a_name(input: &Input, errors: &mut Vec<Error>) {
    let Some(namespace) = &input.attrs.namespace else {
        return;
    };
    let value = namespace.value();
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !plain {
        errors.push(Error::new(
            namespace.span(),
            "a namespace is a non-empty name of letters, digits, `_` and `-`: `#[session(namespace = \"prefs\")]`",
        ));
    }
}

// A flash message is there or not: the field must be an `Option<T>`, which is `None` once the
// message has been consumed.
fn flash_is_an_option(fields: &[Field], errors: &mut Vec<Error>) {
    for field in fields {
        let Some(span) = field.attrs.flash else {
            continue;
        };
        let is_option = match &field.original.ty {
            syn::Type::Path(path) => path
                .path
                .segments
                .last()
                .is_some_and(|segment| segment.ident == "Option"),
            _ => false,
        };
        if !is_option {
            errors.push(Error::new(
                span,
                format!(
                    "`flash` needs an `Option<T>` field (`None` once the message is consumed); `{}` is not an `Option`",
                    field.name
                ),
            ));
        }
    }
}

// A flash value lives for one request: indexing it would list sessions by a message.
fn index_is_not_flash(fields: &[Field], errors: &mut Vec<Error>) {
    for field in fields {
        if let (Some(index), Some(_)) = (field.attrs.index, field.attrs.flash) {
            errors.push(Error::new(
                index,
                format!(
                    "`index` and `flash` do not go together: a flash value is gone after one request; index a field that identifies the session's owner, not `{}`",
                    field.name
                ),
            ));
        }
    }
}

/// Stored keys the runtime keeps its own data under (a session's cookie lifetime).
const RESERVED_KEY_PREFIX: &str = "session-core:";

// The runtime stores its own data beside the fields; a field under one of its keys would
// overwrite it.
fn no_reserved_keys(fields: &[Field], errors: &mut Vec<Error>) {
    for field in fields {
        let key = field.key();
        if key.starts_with(RESERVED_KEY_PREFIX) {
            errors.push(Error::new(
                field.key_span(),
                format!(
                    "the stored key `{key}` is reserved: keys starting with `{RESERVED_KEY_PREFIX}` hold the session's own settings; choose another with `#[session(rename = \"...\")]`"
                ),
            ));
        }
    }
}

// Each field gets `name`, `name_mut` and `set_name`; a field named `views_mut` or
// `set_views` next to `views` would define one method twice.
fn unique_accessors(fields: &[Field], errors: &mut Vec<Error>) {
    let mut owners: HashMap<String, (&Field, Accessor)> = HashMap::new();
    for field in fields {
        for accessor in Accessor::ALL {
            let method = accessor.method(&field.name);
            match owners.get(&method) {
                Some((first, first_accessor)) => errors.push(Error::new(
                    field.ident.span(),
                    format!(
                        "the {} of field `{}` is `{method}`, which is already the {} of field `{}`; rename one of the Rust fields, keeping its stored key with `#[session(rename = \"...\")]`",
                        describe(accessor),
                        field.name,
                        describe(*first_accessor),
                        first.name
                    ),
                )),
                None => {
                    owners.insert(method, (field, accessor));
                }
            }
        }
    }
}

fn describe(accessor: Accessor) -> &'static str {
    match accessor {
        Accessor::Getter => "getter",
        Accessor::Mutable => "`_mut` accessor",
        Accessor::Setter => "setter",
    }
}
