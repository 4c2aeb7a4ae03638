//! The shop example through the real `Router`, without a browser: the HTTP facts its browser
//! tests (`tests/browser.rs`) rely on.

mod common;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use common::Client;
use session_core::store::MemoryStore;
use typed_sessions::shop;

fn client() -> Client {
    Client::new(shop::app(Arc::new(MemoryStore::new()), common::key()))
}

/// The CSRF token of the first form on a page.
fn csrf_token(html: &str) -> String {
    let start = html
        .find(r#"name="_csrf" value=""#)
        .expect("a form with a token")
        + 20;
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// Opens the login page and logs in as `name`.
async fn log_in(client: &mut Client, name: &str, remember: bool) -> common::Reply {
    let token = csrf_token(&client.get("/login").await.body);
    let remember = if remember { "&remember=1" } else { "" };
    client
        .post("/login", &format!("_csrf={token}&name={name}{remember}"))
        .await
}

#[tokio::test]
async fn every_page_is_sent_with_no_store() {
    let mut client = client();
    log_in(&mut client, "ada", false).await;
    for path in ["/", "/cart", "/login", "/account"] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(
            reply.headers.get(header::CACHE_CONTROL).unwrap(),
            "no-store",
            "{path}"
        );
    }
}

#[tokio::test]
async fn posts_without_the_sessions_csrf_token_get_403_and_change_nothing() {
    let mut client = client();
    log_in(&mut client, "ada", false).await;
    for (path, form) in [
        ("/cart/add", "slug=sencha"),
        ("/cart/add", "slug=sencha&_csrf="),
        ("/cart/add", "slug=sencha&_csrf=forged"),
        ("/logout", ""),
        ("/login", "name=mallory"),
    ] {
        let reply = client.post(path, form).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path} {form}");
        assert!(reply.set_cookie("sid").is_none(), "{path} {form}");
    }
    let account = client.get("/account").await.body;
    assert!(account.contains(r#"id="account-name">ada<"#), "{account}");
    assert!(client.get("/cart").await.body.contains("cart-empty"));
}

#[tokio::test]
async fn a_token_from_before_login_is_refused_after_it() {
    let mut client = client();
    let before = csrf_token(&client.get("/").await.body);
    log_in(&mut client, "ada", false).await;
    let reply = client
        .post("/cart/add", &format!("slug=sencha&_csrf={before}"))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let after = csrf_token(&client.get("/").await.body);
    let reply = client
        .post("/cart/add", &format!("slug=sencha&_csrf={after}"))
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn without_remember_me_the_cookie_ends_with_the_browser() {
    let mut client = client();
    let cookie = log_in(&mut client, "ada", false)
        .await
        .set_cookie("sid")
        .unwrap();
    assert!(!cookie.contains("Max-Age"), "{cookie}");
    assert!(!cookie.contains("Expires"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
}

#[tokio::test]
async fn with_remember_me_the_cookie_lasts_thirty_days() {
    let mut client = client();
    let cookie = log_in(&mut client, "ada", true)
        .await
        .set_cookie("sid")
        .unwrap();
    assert!(cookie.contains("Max-Age=2592000"), "{cookie}");
}

#[tokio::test]
async fn a_flash_shows_on_the_next_page_only() {
    let mut client = client();
    let reply = log_in(&mut client, "ada", false).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(client.get("/account").await.body.contains("Welcome, ada."));
    assert!(!client.get("/account").await.body.contains("Welcome, ada."));
}

#[tokio::test]
async fn logout_ends_the_session() {
    let mut client = client();
    log_in(&mut client, "ada", false).await;
    let signed_in = client.cookie.clone().unwrap();
    let token = csrf_token(&client.get("/account").await.body);
    let reply = client.post("/logout", &format!("_csrf={token}")).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    // The message rides a new, empty session: the cookie is replaced, not kept.
    let replaced = reply.cookie_pair("sid").unwrap();
    assert_ne!(replaced, signed_in);
    assert_eq!(reply.headers.get(header::LOCATION).unwrap(), "/?signed-out");
    let page = client.get("/?signed-out").await;
    assert!(page.body.contains("You are signed out."));
    assert!(
        !page.body.contains("ada"),
        "nothing of the old session shows"
    );
    assert!(!client.get("/").await.body.contains("You are signed out."));
    // The old cookie leads nowhere.
    client.cookie = Some(signed_in);
    let reply = client.get("/account").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.headers.get(header::LOCATION).unwrap(), "/login");
}
