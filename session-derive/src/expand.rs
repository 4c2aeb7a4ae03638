//! Code generation.
//!
//! For `struct Visit { views: u32, .. }` the derive emits, next to the struct:
//!
//! - `__Visit_SessionView`: one `FieldState` (the stored encoding) and one `LazyField` (the
//!   value, decoded on first use) per field, and the whole struct, assembled only if `data()`
//!   is called. It stays outside the `const _` block because `SessionData::View` names it from
//!   the user's module.
//! - a `const _: () = { .. };` block with
//!   - per field, a constant `__SESSION_FIELD_i` holding the field's runtime functions
//!     (its default, `lazy_get`, `lazy_get_mut`, `lazy_collect`, `lazy_snapshot`), built
//!     after the field's `assert_field` check and spanned on the field's type. It is the one
//!     body that needs the type's traits, and rustc reports a missing impl once per body and
//!     span, so the user sees one error, at the field;
//!   - the `SessionData` and `SessionView` impls, which only call those functions;
//!   - the inherent accessors `views()`, `views_mut()` and `set_views()`.
//!
//! Locals of generated functions use mixed-site hygiene, so a `default = path` naming an item
//! called like one of them still finds the user's item.

use std::collections::HashSet;

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::{DeriveInput, LitStr};

use crate::ast::{Accessor, Field, Input};
use crate::{check, fallback};

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Vec::new();
    let input = Input::from_syn(input, &mut errors);
    check::check(&input, &mut errors);
    let combined = errors.into_iter().reduce(|mut all, error| {
        all.combine(error);
        all
    });
    match combined {
        Some(error) => fallback::expand(&input, error),
        // Without errors the input has named fields.
        None => session(&input, input.fields.as_deref().unwrap_or_default()),
    }
}

/// The full expansion. The fallback reuses it for structs whose only problems are in their
/// attributes or field names, so it must not add errors of its own for them: an accessor name
/// that two fields would generate is emitted once, and a malformed attribute is left out.
pub(crate) fn session(input: &Input, fields: &[Field]) -> TokenStream {
    let private = input.private();
    let ident = input.ident();
    let vis = &input.original.vis;
    let view = input.view_ident();
    let count = Literal::usize_unsuffixed(fields.len());

    let stored = Ident::new("stored", Span::mixed_site());
    let pending = Ident::new("pending", Span::mixed_site());
    let out = Ident::new("out", Span::mixed_site());

    let keys: Vec<LitStr> = fields
        .iter()
        .map(|field| LitStr::new(&input.stored_key(field), Span::call_site()))
        .collect();
    let namespace = match &input.attrs.namespace {
        Some(namespace) => quote!(::core::option::Option::Some(#namespace)),
        None => quote!(::core::option::Option::None),
    };
    let flash: Vec<&LitStr> = fields
        .iter()
        .zip(&keys)
        .filter(|(field, _)| field.attrs.flash.is_some())
        .map(|(_, key)| key)
        .collect();

    // One field's runtime functions; see the module docs for why they are pointers.
    let fns_struct = (!fields.is_empty()).then(|| {
        quote! {
            struct __SessionFieldFns<F> {
                default: fn() -> F,
                get: for<'a> fn(
                    &'a #private::LazyField<F>,
                    &#private::FieldState,
                    &'static str,
                    fn() -> F,
                ) -> &'a F,
                get_mut: for<'a> fn(
                    &'a mut #private::LazyField<F>,
                    &mut #private::FieldState,
                    &'static str,
                    fn() -> F,
                ) -> &'a mut F,
                collect: fn(
                    &#private::LazyField<F>,
                    &'static str,
                    &mut #private::FieldState,
                    &mut #private::Fields,
                ) -> ::core::result::Result<bool, #private::EncodeError>,
                snapshot: fn(
                    &#private::LazyField<F>,
                    &#private::FieldState,
                    &'static str,
                    fn() -> F,
                ) -> F,
            }
        }
    });
    let fns_consts = fields
        .iter()
        .enumerate()
        .map(|(index, field)| field_fns(&private, index, field));

    let loaded = keys
        .iter()
        .map(|key| quote!(#private::load_field(#stored, #pending, #key)));
    let lazies = fields.iter().map(|field| {
        let ty = &field.ty;
        quote!(#private::LazyField<#ty>)
    });
    let fresh_values: Vec<TokenStream> = fields
        .iter()
        .map(|_| quote!(#private::LazyField::new()))
        .collect();
    // The field types must be `Send` for the view to be; stated per field, higher-ranked as
    // the struct's own bound is, so a field that is not `Send` is reported once, at the field.
    let send_bounds: Vec<TokenStream> = fields
        .iter()
        .map(|field| {
            let ty = &field.ty;
            quote!(for<'__session> #ty: ::core::marker::Send,)
        })
        .collect();

    let field_names: Vec<&Ident> = fields.iter().map(|field| field.ident).collect();
    let snapshots = fields
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(index, (field, key))| {
            let name = field.ident;
            let fns = fns_ident(index);
            let position = syn::Index::from(index);
            let index = Literal::usize_unsuffixed(index);
            quote! {
                #name: (#fns.snapshot)(&self.__values.#position, &self.__fields[#index], #key, #fns.default)
            }
        })
        .collect::<Vec<_>>();

    let collected = fields
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(index, (_, key))| {
            let fns = fns_ident(index);
            let position = syn::Index::from(index);
            let index = Literal::usize_unsuffixed(index);
            quote! {
                (#fns.collect)(&self.__values.#position, #key, &mut self.__fields[#index], #out)?
            }
        });

    let accessors = accessors(input, fields, &keys);
    let registration = registration(input, fields, &keys);
    let indexes = indexes(input, fields, &keys);

    quote! {
        /// The tracked view of the session data, generated by `#[derive(Session)]`;
        /// `Session<T>` derefs to it.
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #view {
            __fields: [#private::FieldState; #count],
            __values: (#(#lazies,)*),
            __data: ::std::sync::OnceLock<#ident>,
        }

        const _: () = {
            #fns_struct
            #(#fns_consts)*

            // Higher-ranked, as thiserror does, because trivial bounds are unstable: a field
            // that is not `Send` is reported once, by its `assert_field`, not again here.
            #[automatically_derived]
            impl #private::SessionData for #ident
            where
                for<'__session> #ident: ::core::marker::Send,
                #(#send_bounds)*
            {
                type View = #view;
            }

            #[automatically_derived]
            impl #private::SessionView for #view
            where
                for<'__session> #ident: ::core::marker::Send,
                #(#send_bounds)*
            {
                type Data = #ident;

                const KEYS: &'static [&'static str] = &[#(#keys),*];
                const NAMESPACE: ::core::option::Option<&'static str> = #namespace;
                const FLASH: &'static [&'static str] = &[#(#flash),*];

                fn decode(#stored: &#private::Fields, #pending: &#private::Fields) -> Self {
                    Self {
                        __fields: [#(#loaded),*],
                        __values: (#(#fresh_values,)*),
                        __data: ::std::sync::OnceLock::new(),
                    }
                }

                fn fresh() -> Self {
                    Self {
                        __fields: [#private::FieldState::NEW; #count],
                        __values: (#(#fresh_values,)*),
                        __data: ::std::sync::OnceLock::new(),
                    }
                }

                fn collect(
                    &mut self,
                    #out: &mut #private::Fields,
                ) -> ::core::result::Result<bool, #private::EncodeError> {
                    // `|`, not `||`: every changed field must be collected.
                    ::core::result::Result::Ok(false #(| #collected)*)
                }

                fn data(&self) -> &#ident {
                    let data = self.__data.get_or_init(|| #ident { #(#snapshots,)* });
                    // The struct's fields are read through `data()` only: say so, so that a
                    // struct whose app never calls it gets no "field is never read" warning.
                    let _ = (#(&data.#field_names,)*);
                    data
                }

                fn into_data(mut self) -> #ident {
                    match self.__data.take() {
                        ::core::option::Option::Some(data) => data,
                        ::core::option::Option::None => #ident { #(#snapshots,)* },
                    }
                }
            }

            impl #view {
                #accessors
            }

            #indexes
            #registration
        };
    }
}

/// The struct's entry in the program's registry of session structs, which the layer checks
/// when it is built: keys stored with two types, and indexed keys.
fn registration(input: &Input, fields: &[Field], keys: &[LitStr]) -> TokenStream {
    let private = input.private();
    let ident = input.ident();
    let name = LitStr::new(&ident.unraw().to_string(), ident.span());
    let namespace = match &input.attrs.namespace {
        Some(namespace) => quote!(::core::option::Option::Some(#namespace)),
        None => quote!(::core::option::Option::None),
    };
    let registered = fields.iter().zip(keys).map(|(field, key)| {
        let ty = &field.ty;
        let flash = field.attrs.flash.is_some();
        let index = field.attrs.index.is_some();
        quote! {
            #private::RegisteredField {
                key: #key,
                type_id: ::core::any::TypeId::of::<#ty>,
                type_name: ::core::any::type_name::<#ty>,
                flash: #flash,
                index: #index,
            }
        }
    });
    quote! {
        #private::inventory::submit! {
            #private::Registration {
                name: ::core::concat!(::core::module_path!(), "::", #name),
                namespace: #namespace,
                fields: &[#(#registered),*],
            }
        }
    }
}

/// `field_index()` on the struct for every `#[session(index)]` field, typed by the field's
/// `Option<T>`: a field of another type is reported at its type.
fn indexes(input: &Input, fields: &[Field], keys: &[LitStr]) -> TokenStream {
    let private = input.private();
    let ident = input.ident();
    let methods = fields
        .iter()
        .zip(keys)
        .filter(|(field, _)| field.attrs.index.is_some())
        .map(|(field, key)| {
            let vis = &field.original.vis;
            let ty = &field.ty;
            let span = field.ty_span();
            let method = format_ident!("{}_index", field.name, span = field.ident.span());
            // Every token on the field's type, the runtime's path included, so the one
            // error for a type that cannot be indexed points there.
            let value = respan(
                quote!(<#ty as #private::IndexedField>::Value),
                span,
            );
            let doc = format!(
                "The index of `{}`: list, count and revoke the sessions holding one of its values with `session_core::index::SessionIndex`.",
                field.name
            );
            let signature = respan(quote!(fn #method() -> #private::Index<#ident, #value>), span);
            let body = respan(quote!(#private::Index::new(#key)), span);
            quote! {
                #[doc = #doc]
                #vis #signature {
                    #body
                }
            }
        })
        .collect::<Vec<_>>();
    if methods.is_empty() {
        return TokenStream::new();
    }
    quote! {
        impl #ident {
            #(#methods)*
        }
    }
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let proc_macro2::TokenTree::Group(group) = &token {
                let mut group =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                group.set_span(span);
                token = proc_macro2::TokenTree::Group(group);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// The constant holding one field's functions, spanned on the field's type; a custom default
/// is spanned on the user's path, so a missing function or a wrong return type is reported
/// there.
fn field_fns(private: &TokenStream, index: usize, field: &Field) -> TokenStream {
    let ty = &field.ty;
    let span = field.ty_span();
    let name = fns_ident(index);
    let default = match &field.attrs.default {
        Some(path) => {
            // The call's parentheses get the span of the path's last token, so that an
            // error about the call covers exactly the user's path.
            let end = path
                .to_token_stream()
                .into_iter()
                .last()
                .map_or_else(Span::call_site, |token| token.span());
            let call = quote_spanned!(end=> #path());
            quote!(|| -> #ty { #call })
        }
        None => quote_spanned!(span=> <#ty as ::core::default::Default>::default),
    };
    quote_spanned! {span=>
        const #name: __SessionFieldFns<#ty> = {
            #private::assert_field::<#ty>();
            __SessionFieldFns {
                default: #default,
                get: #private::lazy_get::<#ty>,
                get_mut: #private::lazy_get_mut::<#ty>,
                collect: #private::lazy_collect::<#ty>,
                snapshot: #private::lazy_snapshot::<#ty>,
            }
        };
    }
}

/// The constant holding field `index`'s functions. Items of the `const _` block are in
/// scope for the user's tokens in it too (field types, default paths), hence the odd name.
fn fns_ident(index: usize) -> Ident {
    format_ident!("__SESSION_FIELD_{}", index)
}

/// `name()`, `name_mut()` and `set_name()` for every field, with the field's visibility.
fn accessors(input: &Input, fields: &[Field], keys: &[LitStr]) -> TokenStream {
    let mut emitted = HashSet::new();
    let mut tokens = TokenStream::new();
    for (index, field) in fields.iter().enumerate() {
        let vis = &field.original.vis;
        let name = field.ident;
        let ty = &field.ty;
        let fns = fns_ident(index);
        let key = &keys[index];
        let position = syn::Index::from(index);
        let index = Literal::usize_unsuffixed(index);
        let stem = &field.name;
        let stored_as = match (&field.attrs.rename, &input.attrs.namespace) {
            (None, None) => String::new(),
            _ => format!(" It is stored under the key `{}`.", input.stored_key(field)),
        };
        let stored_as = match field.attrs.flash {
            Some(_) => format!(
                "{stored_as} A flash field: a value set in one request is readable in that \
                 request and the next, and is removed at the end of the next, read or not."
            ),
            None => stored_as,
        };
        // The field's own docs follow the getter's, for IDE hovers.
        let field_docs: Vec<_> = field
            .original
            .attrs
            .iter()
            .filter(|attr| attr.path().is_ident("doc"))
            .collect();
        let separator = (!field_docs.is_empty()).then(|| quote!(#[doc = ""]));

        for accessor in Accessor::ALL {
            if !emitted.insert(accessor.method(stem)) {
                continue;
            }
            tokens.extend(match accessor {
                Accessor::Getter => {
                    let doc = format!("Returns `{stem}`.{stored_as}");
                    quote! {
                        #[doc = #doc]
                        #separator
                        #(#field_docs)*
                        #[inline]
                        #vis fn #name(&self) -> &#ty {
                            (#fns.get)(&self.__values.#position, &self.__fields[#index], #key, #fns.default)
                        }
                    }
                }
                Accessor::Mutable => {
                    let method = format_ident!("{}_mut", stem, span = name.span());
                    let doc = format!(
                        "Returns `{stem}` for changing in place, and marks it for saving: it is \
                         written only if its value really changes.{stored_as}"
                    );
                    quote! {
                        #[doc = #doc]
                        #[inline]
                        #vis fn #method(&mut self) -> &mut #ty {
                            // A snapshot `data()` made is out of date once the field can change.
                            self.__data.take();
                            (#fns.get_mut)(&mut self.__values.#position, &mut self.__fields[#index], #key, #fns.default)
                        }
                    }
                }
                Accessor::Setter => {
                    let method = format_ident!("set_{}", stem, span = name.span());
                    let doc = format!(
                        "Replaces `{stem}`, and marks it for saving: it is written only if its \
                         value really changes.{stored_as}"
                    );
                    quote! {
                        #[doc = #doc]
                        #[inline]
                        #vis fn #method(&mut self, value: #ty) {
                            self.__data.take();
                            *(#fns.get_mut)(&mut self.__values.#position, &mut self.__fields[#index], #key, #fns.default) = value;
                        }
                    }
                }
            });
        }
    }
    tokens
}
