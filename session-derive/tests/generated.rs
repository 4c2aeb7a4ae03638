//! What the generated view does, driven directly through `SessionView`, without HTTP: how
//! fields decode from a record, which defaults they take, and which of them are collected
//! for saving.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use session_core::__private::{Fields, SessionView};
use session_core::{Session, SessionData};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct User {
    name: String,
}

#[derive(Session)]
struct Visit {
    user: Option<User>,
    views: u32,
    #[session(rename = "items", default = default_cart)]
    cart: Vec<String>,
    #[session(default = "default_theme")]
    theme: String,
    r#type: String,
}

fn default_cart() -> Vec<String> {
    vec!["welcome-gift".to_owned()]
}

fn default_theme() -> String {
    "light".to_owned()
}

type View = <Visit as SessionData>::View;

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(key, value)| (Arc::from(*key), Arc::from(*value)))
        .collect()
}

fn decode(stored: &[(&str, &str)]) -> View {
    View::decode(&fields(stored), &Fields::new())
}

/// Collects the changed fields as `(key, json)` pairs, sorted by key.
fn collect(view: &mut View) -> Vec<(String, String)> {
    let mut out = Fields::new();
    let changed = view.collect(&mut out).expect("every field encodes");
    assert_eq!(
        changed,
        !out.is_empty(),
        "`collect` reports whether it wrote"
    );
    out.iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

#[test]
fn keys_follow_declaration_order_with_renames_and_without_raw_prefix() {
    assert_eq!(View::KEYS, ["user", "views", "items", "theme", "type"]);
}

#[test]
fn missing_fields_take_default_or_the_custom_default_function() {
    let view = decode(&[]);
    assert_eq!(view.user(), &None);
    assert_eq!(*view.views(), 0);
    assert_eq!(view.cart(), &["welcome-gift"]);
    assert_eq!(view.theme(), "light");
    assert_eq!(view.r#type(), "");
}

#[test]
fn fresh_view_holds_defaults_and_collects_nothing() {
    let mut view = View::fresh();
    assert_eq!(*view.views(), 0);
    assert_eq!(view.cart(), &["welcome-gift"]);
    assert_eq!(view.theme(), "light");
    assert_eq!(collect(&mut view), pairs(&[]));
}

#[test]
fn stored_fields_decode_under_their_keys() {
    let view = decode(&[
        ("user", r#"{"name":"ann"}"#),
        ("views", "3"),
        ("items", r#"["tea"]"#),
        ("theme", r#""dark""#),
        ("type", r#""guest""#),
    ]);
    assert_eq!(
        view.user(),
        &Some(User {
            name: "ann".to_owned()
        })
    );
    assert_eq!(*view.views(), 3);
    assert_eq!(view.cart(), &["tea"]);
    assert_eq!(view.theme(), "dark");
    assert_eq!(view.r#type(), "guest");
    assert_eq!(view.data().views, 3);
}

#[test]
fn renamed_field_is_read_and_written_under_its_new_key_only() {
    let mut view = decode(&[("cart", r#"["ignored"]"#), ("items", r#"["tea"]"#)]);
    assert_eq!(view.cart(), &["tea"]);
    view.cart_mut().push("milk".to_owned());
    assert_eq!(collect(&mut view), pairs(&[("items", r#"["tea","milk"]"#)]));
}

#[test]
fn raw_identifier_field_is_stored_without_its_prefix() {
    let mut view = View::fresh();
    view.set_type("guest".to_owned());
    view.type_mut().push('s');
    assert_eq!(collect(&mut view), pairs(&[("type", r#""guests""#)]));
}

#[test]
fn unmodified_view_collects_nothing() {
    let mut view = decode(&[("views", "3"), ("items", r#"["tea"]"#)]);
    let _ = (view.views(), view.cart(), view.user());
    assert_eq!(collect(&mut view), pairs(&[]));
}

#[test]
fn only_changed_fields_are_collected() {
    let mut view = decode(&[("views", "3"), ("items", r#"["tea"]"#)]);
    *view.views_mut() += 1;
    let _ = view.cart_mut(); // touched, not changed
    assert_eq!(collect(&mut view), pairs(&[("views", "4")]));
}

#[test]
fn every_changed_field_is_collected() {
    let mut view = decode(&[("views", "3")]);
    view.set_user(Some(User {
        name: "bob".to_owned(),
    }));
    *view.views_mut() += 1;
    view.set_theme("dark".to_owned());
    assert_eq!(
        collect(&mut view),
        pairs(&[
            ("theme", r#""dark""#),
            ("user", r#"{"name":"bob"}"#),
            ("views", "4"),
        ])
    );
}

#[test]
fn touched_but_unchanged_fields_are_not_collected() {
    let mut view = decode(&[("views", "3")]);
    let _ = view.views_mut();
    view.set_views(3);
    // Defaults count as the baseline too: writing the default back changes nothing.
    view.set_theme("light".to_owned());
    view.cart_mut().clear();
    view.cart_mut().push("welcome-gift".to_owned());
    assert_eq!(collect(&mut view), pairs(&[]));
}

#[test]
fn a_field_changed_back_before_collect_is_not_collected() {
    let mut view = decode(&[("views", "3")]);
    *view.views_mut() += 1;
    *view.views_mut() -= 1;
    assert_eq!(collect(&mut view), pairs(&[]));
}

#[test]
fn collect_starts_tracking_afresh() {
    let mut view = decode(&[("views", "3")]);
    *view.views_mut() += 1;
    assert_eq!(collect(&mut view), pairs(&[("views", "4")]));
    assert_eq!(collect(&mut view), pairs(&[]));
    let _ = view.views_mut();
    assert_eq!(collect(&mut view), pairs(&[]), "4 is the new baseline");
}

#[test]
fn undecodable_stored_value_takes_default_and_is_not_overwritten_unless_changed() {
    let mut view = decode(&[("views", r#""three""#), ("items", "42")]);
    assert_eq!(*view.views(), 0);
    assert_eq!(view.cart(), &["welcome-gift"]);
    let _ = view.views_mut();
    let _ = view.cart_mut();
    assert_eq!(collect(&mut view), pairs(&[]));

    *view.views_mut() += 1;
    assert_eq!(collect(&mut view), pairs(&[("views", "1")]));
}

#[test]
fn pending_values_take_precedence_over_stored_ones() {
    let view = View::decode(&fields(&[("views", "3")]), &fields(&[("views", "5")]));
    assert_eq!(*view.views(), 5);
}

/// `Self` in a field type names the struct, not the generated view.
#[derive(Session, Serialize, Deserialize)]
struct Trail {
    step: u32,
    next: Option<Box<Self>>,
}

#[test]
fn self_in_a_field_type_means_the_struct() {
    let mut view = <Trail as SessionData>::View::fresh();
    view.set_next(Some(Box::new(Trail {
        step: 2,
        next: None,
    })));
    let mut out = Fields::new();
    assert!(view.collect(&mut out).expect("encodes"));
    assert_eq!(
        out.get("next").map(|json| &**json),
        Some(r#"{"step":2,"next":null}"#)
    );
}

/// A struct without fields stores nothing.
#[derive(Session)]
struct Nothing {}

#[test]
fn struct_without_fields_has_no_keys_and_collects_nothing() {
    assert!(<Nothing as SessionData>::View::KEYS.is_empty());
    let mut view = <Nothing as SessionData>::View::fresh();
    let mut out = Fields::new();
    assert!(!view.collect(&mut out).expect("encodes"));
    assert!(out.is_empty());
}

/// A cart item that counts how often any of its kind is decoded.
#[derive(Serialize, Clone, Debug, PartialEq)]
struct CountedItem(String);

static ITEM_DECODES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl<'de> Deserialize<'de> for CountedItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ITEM_DECODES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        String::deserialize(deserializer).map(CountedItem)
    }
}

#[derive(Session)]
struct BigVisit {
    views: u32,
    cart: Vec<CountedItem>,
}

type BigView = <BigVisit as SessionData>::View;

fn item_decodes() -> usize {
    ITEM_DECODES.load(std::sync::atomic::Ordering::SeqCst)
}

// The one test that decodes `CountedItem`s, so the count is not shared between threads.
#[test]
fn fields_decode_on_first_read_only_and_data_follows_changes() {
    let stored = fields(&[("views", "3"), ("cart", r#"["a","b"]"#)]);
    let mut view = BigView::decode(&stored, &Fields::new());
    *view.views_mut() += 1;
    let mut out = Fields::new();
    assert!(view.collect(&mut out).unwrap());
    assert_eq!(out.get("views").map(|v| &**v), Some("4"));
    assert!(!out.contains_key("cart"));
    assert_eq!(item_decodes(), 0, "changing `views` decoded the cart");

    // The first read decodes, later reads do not.
    assert_eq!(view.cart().len(), 2);
    assert_eq!(item_decodes(), 2);
    assert_eq!(view.cart()[1], CountedItem("b".to_owned()));
    assert_eq!(item_decodes(), 2);

    // `data()` shows the current values, changed ones included, and follows later changes.
    view.set_views(7);
    view.cart_mut().push(CountedItem("c".to_owned()));
    assert_eq!(view.data().views, 7);
    assert_eq!(view.data().cart.len(), 3);
    view.set_views(8);
    assert_eq!(view.data().views, 8);
    let mut out = Fields::new();
    assert!(view.collect(&mut out).unwrap());
    assert_eq!(out.get("cart").map(|v| &**v), Some(r#"["a","b","c"]"#));
    assert_eq!(view.data().views, 8);
}

#[test]
fn data_decodes_fields_never_read() {
    let view = decode(&[("views", "5"), ("items", r#"["tea"]"#)]);
    assert_eq!(view.data().views, 5);
    assert_eq!(view.data().cart, ["tea"]);
    assert_eq!(view.data().theme, "light");
}

#[test]
fn undecodable_field_set_to_its_default_keeps_the_stored_value() {
    let mut view = decode(&[("views", r#""not a number""#)]);
    view.set_views(0);
    assert_eq!(collect(&mut view), pairs(&[]));
    let mut view = decode(&[("views", r#""not a number""#)]);
    view.set_views(2);
    assert_eq!(collect(&mut view), pairs(&[("views", "2")]));
}
