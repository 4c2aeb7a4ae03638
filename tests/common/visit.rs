//! A visit session (a count and a name) with routes to count, read, log in and log out.

use axum::routing::get;
use axum::Router;
use session_core::Session;

#[derive(Session)]
pub struct Visit {
    pub views: u32,
    pub name: Option<String>,
}

/// `/incr` and `/read` answer `views: N`, `/name` answers `name: NAME` (or `none`),
/// `/login` regenerates the id and sets the name `ada`, `/logout` destroys the session.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/incr",
            get(|mut v: Session<Visit>| async move {
                *v.views_mut() += 1;
                format!("views: {}", v.views())
            }),
        )
        .route(
            "/read",
            get(|v: Session<Visit>| async move { format!("views: {}", v.views()) }),
        )
        .route(
            "/name",
            get(|v: Session<Visit>| async move {
                format!("name: {}", v.name().as_deref().unwrap_or("none"))
            }),
        )
        .route(
            "/login",
            get(|mut v: Session<Visit>| async move {
                v.regenerate();
                v.set_name(Some("ada".to_owned()));
                "ok"
            }),
        )
        .route(
            "/logout",
            get(|mut v: Session<Visit>| async move {
                v.destroy();
                "bye"
            }),
        )
}
