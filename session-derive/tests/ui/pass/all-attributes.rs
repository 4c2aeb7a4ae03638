//! A session struct using every attribute, raw identifiers, `Self`, and public and private
//! fields, used the way a handler would. Warnings are errors: generated code must be clean.
#![deny(warnings)]

mod app {
    use serde::{Deserialize, Serialize};
    use session_core::Session;

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct User {
        pub name: String,
    }

    /// What the app remembers between requests.
    #[derive(Session)]
    pub struct Visit {
        /// The signed-in user, if any.
        pub user: Option<User>,
        pub(crate) views: u32,
        #[session(rename = "items", default = default_cart)]
        pub cart: Vec<String>,
        #[session(default = "self::default_theme")]
        theme: String,
        pub r#type: String,
        #[session(rename = "last")]
        #[session(default = "Vec::new")]
        pub history: Vec<String>,
        #[session(flash)]
        pub notice: Option<String>,
        #[session(index)]
        pub user_id: Option<u64>,
        #[session(index, rename = "org")]
        pub organisation: Option<OrgId>,
    }

    /// An identifier type of the app's own, usable as an index value.
    #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
    pub struct OrgId(pub u32);

    impl session_core::index::IndexValue for OrgId {}

    /// A namespaced struct with a flash field.
    #[derive(Session)]
    #[session(namespace = "prefs")]
    pub struct Prefs {
        pub theme: String,
        #[session(flash, rename = "msg")]
        pub message: ::std::option::Option<String>,
    }

    fn default_cart() -> Vec<String> {
        vec!["welcome-gift".to_owned()]
    }

    fn default_theme() -> String {
        "light".to_owned()
    }

    /// Private fields are reachable from the struct's module only.
    pub fn switch_theme(visit: &mut Session<Visit>) -> &str {
        visit.set_theme("dark".to_owned());
        visit.theme_mut().push('!');
        visit.theme()
    }

    /// `Self` in a field type means the struct, not the generated view.
    #[derive(Session, Serialize, Deserialize)]
    pub struct Trail {
        pub next: Option<Box<Self>>,
    }
}

mod reexport {
    pub use session_core as sessions;
}

/// `#[session(crate = "...")]` for a crate that re-exports `session_core`.
#[derive(session_core::Session)]
#[session(crate = "crate::reexport::sessions")]
struct Reexported {
    count: u64,
}

/// A struct without fields is allowed; it stores nothing.
#[derive(session_core::Session)]
pub struct Nothing {}

use session_core::Session;

fn handler(mut visit: Session<app::Visit>) -> String {
    *visit.views_mut() += 1;
    visit.set_user(Some(app::User {
        name: "ann".to_owned(),
    }));
    visit.cart_mut().push("tea".to_owned());
    visit.set_type("guest".to_owned());
    visit.type_mut().push('s');
    visit.history_mut().clear();
    let theme = app::switch_theme(&mut visit).to_owned();
    format!(
        "{:?} {} {} {} {} {theme}",
        visit.user(),
        visit.views(),
        visit.cart().len(),
        visit.r#type(),
        visit.history().len(),
    )
}

fn trail(mut trail: Session<app::Trail>) -> bool {
    trail.set_next(None);
    trail.next().is_none()
}

fn reexported(mut session: Session<Reexported>) -> u64 {
    *session.count_mut() += 1;
    *session.count()
}

fn nothing(session: Session<Nothing>) -> Option<session_core::SessionId> {
    session.id()
}

async fn sessions_of(index: session_core::index::SessionIndex) -> usize {
    let by_user = index.count(app::Visit::user_id_index(), &7).await.unwrap_or(0);
    let by_org = index
        .list(app::Visit::organisation_index(), &app::OrgId(3))
        .await
        .map_or(0, |sessions| sessions.len());
    by_user + by_org
}

fn main() {
    // The handlers only need to type-check.
    let _ = (handler, trail, reexported, nothing, sessions_of);
}
