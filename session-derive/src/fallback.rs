//! On error: the errors, plus a stub, so that the user sees those errors and not a cascade of
//! others caused by the missing impls (`Visit: SessionData` is not satisfied, no method
//! `views` on `Session<Visit>`, ...).

use proc_macro2::TokenStream;
use quote::quote;
use syn::Error;

use crate::ast::Input;
use crate::expand;

pub(crate) fn expand(input: &Input, error: Error) -> TokenStream {
    let error = error.to_compile_error();
    let stub = match &input.fields {
        // Only attributes or field names are wrong: the full expansion, which skips what it
        // cannot use, keeps every accessor the rest of the crate calls.
        Some(fields) if input.original.generics.params.is_empty() => expand::session(input, fields),
        _ => uninhabited(input),
    };
    quote! {
        #error
        #stub
    }
}

/// For inputs that are not a struct with named fields, or that are generic: `SessionData` with
/// a view that has no values and no accessors. Its `decode` cannot return, but it never runs:
/// the `compile_error!` emitted with it keeps the crate from building.
fn uninhabited(input: &Input) -> TokenStream {
    let private = input.private();
    let ident = input.ident();
    let vis = &input.original.vis;
    let view = input.view_ident();
    let (impl_generics, ty_generics, where_clause) = input.original.generics.split_for_impl();
    let predicates = where_clause.map(|clause| {
        let predicates = clause.predicates.iter();
        quote!(#(#predicates,)*)
    });

    quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #view<D>(
            ::core::convert::Infallible,
            ::core::marker::PhantomData<fn() -> D>,
        );

        const _: () = {
            #[automatically_derived]
            impl #impl_generics #private::SessionData for #ident #ty_generics
            where
                #predicates
                // Higher-ranked, as thiserror does, because trivial bounds are unstable: a type
                // that is not `Send` must not add an error here.
                for<'__session> Self: ::core::marker::Send,
                Self: 'static,
            {
                type View = #view<Self>;
            }

            #[automatically_derived]
            impl<D: ::core::marker::Send + 'static> #private::SessionView for #view<D> {
                type Data = D;

                const KEYS: &'static [&'static str] = &[];

                fn decode(_: &#private::Fields, _: &#private::Fields) -> Self {
                    ::core::unreachable!("`#[derive(Session)]` failed, so this crate does not compile")
                }

                fn fresh() -> Self {
                    let none = #private::Fields::new();
                    <Self as #private::SessionView>::decode(&none, &none)
                }

                fn collect(
                    &mut self,
                    _: &mut #private::Fields,
                ) -> ::core::result::Result<bool, #private::EncodeError> {
                    match self.0 {}
                }

                fn data(&self) -> &D {
                    match self.0 {}
                }

                fn into_data(self) -> D {
                    match self.0 {}
                }
            }
        };
    }
}
