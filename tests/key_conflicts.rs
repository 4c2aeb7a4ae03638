//! Two derived structs storing one un-namespaced key with different types are refused when
//! the layer is built, naming the key and both structs. Its own test binary: the registry the
//! derive fills is the whole program's, and this program has such a pair on purpose.

mod common;

use std::collections::BTreeMap;

use session_core::store::MemoryStore;
use session_core::{ConfigError, Session, SessionLayer};

#[derive(Session)]
pub struct Counter {
    views: u32,
    cart: Vec<String>,
}

/// The same `cart` key with another type: a mistake unless namespaced.
#[derive(Session)]
pub struct Shop {
    cart: BTreeMap<String, u32>,
}

/// Sharing a key with the same type is what un-namespaced structs are for.
#[derive(Session)]
pub struct Views {
    views: u32,
}

/// A namespaced struct may use any key with any type.
#[derive(Session)]
#[session(namespace = "prefs")]
pub struct Prefs {
    views: String,
    cart: bool,
}

#[test]
fn check_names_the_key_and_both_structs() {
    let error = SessionLayer::new(MemoryStore::new(), common::key())
        .check()
        .unwrap_err();
    let ConfigError::KeyTypeConflict { key, first, second } = &error else {
        panic!("expected a key type conflict, got {error}");
    };
    assert_eq!(*key, "cart");
    assert!(
        first.contains("key_conflicts::Counter") && first.contains("Vec<"),
        "{first}"
    );
    assert!(
        second.contains("key_conflicts::Shop") && second.contains("BTreeMap<"),
        "{second}"
    );
    let message = error.to_string();
    assert!(
        message.contains("namespace"),
        "the message names the fix: {message}"
    );
}

#[test]
#[should_panic(expected = "the session key `cart` is stored by")]
fn applying_the_layer_panics_with_the_same_message() {
    let _ = axum::Router::<()>::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(SessionLayer::new(MemoryStore::new(), common::key()));
}

#[test]
fn the_check_can_be_waived_for_structs_that_serve_different_layers() {
    assert!(SessionLayer::new(MemoryStore::new(), common::key())
        .allow_key_type_conflicts()
        .check()
        .is_ok());
}

#[test]
fn namespaced_and_same_typed_keys_are_not_conflicts() {
    // `Views.views` is `Counter.views` (both u32), and `Prefs` is namespaced: the only
    // conflict reported is `cart`.
    let error = SessionLayer::new(MemoryStore::new(), common::key())
        .check()
        .unwrap_err();
    assert!(!error.to_string().contains("`views`"), "{error}");
}
