//! `#[derive(Session)]` for `session-core`. Use it through `session_core::Session`.
//!
//! The derive turns a struct with named fields into session data: it implements
//! `SessionData` and generates a tracked view with one getter, `_mut` accessor and setter per
//! field. What the generated code looks like is documented in `expand.rs`.

mod ast;
mod attr;
mod check;
mod expand;
mod fallback;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

#[proc_macro_derive(Session, attributes(session))]
pub fn derive_session(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
