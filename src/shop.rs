//! A small shop on typed sessions: a catalogue, a cart that survives reloads, a login with
//! "remember me", a flash message after each action, CSRF tokens in every form, and a logout
//! that really ends the session. Pages are server-rendered with [maud].
//!
//! | route | does |
//! |---|---|
//! | `GET /` | the catalogue, an "Add to cart" form per product |
//! | `POST /cart/add` (`slug`, `_csrf`) | adds one of a product, flash, `303` to `/` |
//! | `GET /cart` | the cart with quantities and total |
//! | `POST /cart/clear` (`_csrf`) | empties the cart, flash, `303` to `/cart` |
//! | `GET /login` | the login form (name, "remember me") |
//! | `POST /login` (`name`, optional `remember=1`, `_csrf`) | new session id, flash, `303` to `/account`; "remember me" keeps the cookie 30 days |
//! | `GET /account` | who is signed in and their sessions, this browser's marked (`303` to `/login` when nobody is) |
//! | `POST /account/sign-out-others` (`_csrf`) | ends the user's other sessions (they are signed out at their next page), flash, `303` to `/account` |
//! | `POST /logout` (`_csrf`) | destroys the session, `303` to `/?signed-out`; a new session carries the flash "You are signed out." |
//! | `GET /style.css` | the stylesheet |
//!
//! Every POST without the session's CSRF token gets `403` and changes nothing. Every page
//! shows who is signed in and their cart, so every page is sent with
//! `Cache-Control: no-store`: after a logout, the back button and a reload show nothing
//! private.
//!
//! Without "remember me" the cookie is a browser-session cookie (no `Max-Age`), and the
//! server ends a session unused for [`IDLE_TIMEOUT`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Form;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use session_core::csrf::{self, CsrfToken};
use session_core::index::SessionIndex;
use session_core::store::Store;
use session_core::{Key, Session, SessionLayer};

use crate::counter::{self, REMEMBER_ME};

/// How long a session may go unused before the server ends it (the cookie itself, without
/// "remember me", ends with the browser).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

/// What the shop keeps per visitor.
///
/// Its keys live in the `shop` namespace, so the shop can share a session store (and a
/// domain) with the counter app without either reading the other's `cart`.
#[derive(Session)]
#[session(namespace = "shop")]
pub struct Shopper {
    /// Indexed: the account page lists the user's sessions and signs out the others.
    #[session(index)]
    pub user: Option<String>,
    /// Product slug to quantity.
    cart: BTreeMap<String, u32>,
    /// A message for the next page: set by an action, shown by the page after its redirect,
    /// then gone.
    #[session(flash)]
    flash: Option<String>,
    csrf: Option<CsrfToken>,
}

/// One product of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    /// Its key in the cart and in forms.
    pub slug: &'static str,
    /// Its display name.
    pub name: &'static str,
    /// Price in cents.
    pub price: u32,
    /// One line about it.
    pub blurb: &'static str,
    /// Its swatch colour on the catalogue page.
    pub colour: &'static str,
}

/// What the shop sells.
pub const CATALOGUE: &[Product] = &[
    Product {
        slug: "sencha",
        name: "Sencha green tea",
        price: 1250,
        blurb: "Steamed Japanese leaves, grassy and bright. 100 g.",
        colour: "#7fb069",
    },
    Product {
        slug: "assam",
        name: "Assam breakfast",
        price: 890,
        blurb: "Malty black tea that takes milk well. 250 g.",
        colour: "#a4462c",
    },
    Product {
        slug: "oolong",
        name: "Milk oolong",
        price: 1640,
        blurb: "Creamy Taiwanese oolong, rolled by hand. 100 g.",
        colour: "#e0a458",
    },
    Product {
        slug: "teapot",
        name: "Cast-iron teapot",
        price: 4900,
        blurb: "Holds 800 ml and keeps it hot for an hour.",
        colour: "#3d405b",
    },
    Product {
        slug: "cups",
        name: "Stoneware cups, set of 4",
        price: 2400,
        blurb: "Glazed by hand; no two alike.",
        colour: "#81b29a",
    },
    Product {
        slug: "strainer",
        name: "Fine mesh strainer",
        price: 650,
        blurb: "Stainless steel, fits any cup.",
        colour: "#9a8c98",
    },
];

fn product(slug: &str) -> Option<&'static Product> {
    CATALOGUE.iter().find(|p| p.slug == slug)
}

/// The shop's routes, without the session layer.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(catalogue))
        .route("/cart", get(cart))
        .route("/cart/add", post(add_to_cart))
        .route("/cart/clear", post(clear_cart))
        .route("/login", get(login_page).post(login))
        .route("/account", get(account))
        .route("/account/sign-out-others", post(sign_out_others))
        .route("/logout", post(logout))
        .route("/style.css", get(stylesheet))
}

/// The shop with sessions in `store`.
pub fn app(store: Arc<dyn Store>, key: Key) -> Router {
    app_with(layer(store, key))
}

/// The shop's routes behind `layer`, inside the counter app's request timeout.
pub fn app_with(layer: SessionLayer) -> Router {
    counter::within_request_timeout(routes().layer(layer))
}

/// The shop's session layer: a browser-session cookie (no `Max-Age` unless "remember me"
/// gives the session one) and a server-side idle timeout of [`IDLE_TIMEOUT`].
pub fn layer(store: Arc<dyn Store>, key: Key) -> SessionLayer {
    SessionLayer::from_arc(store, key).with_idle_timeout(IDLE_TIMEOUT)
}

/// The query string of the page a logout leads to.
const SIGNED_OUT: &str = "signed-out";

/// Leaves a message for the next page (a flash field: the page after the redirect shows it,
/// and it is gone after that request, shown or not).
fn set_flash(shopper: &mut Session<Shopper>, message: String) {
    shopper.set_flash(Some(message));
}

/// A form's CSRF token, checked before anything changes.
#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(rename = "_csrf", default)]
    csrf: Option<String>,
}

/// The `403` page for a form post without this session's token, or `None` when the token is
/// right. Handlers call it before changing anything.
fn csrf_refusal(shopper: &Session<Shopper>, submitted: Option<&str>) -> Option<Response> {
    csrf::verify(shopper.csrf().as_ref(), submitted).err().map(|error| {
        tracing::info!(%error, "refused a form post");
        // The header as on any page, but nothing taken or issued: a refusal changes nothing.
        let token = shopper.csrf().as_ref().map(CsrfToken::as_str);
        let user = shopper.user().as_deref().zip(token);
        (
            StatusCode::FORBIDDEN,
            no_store(),
            Html(
                page_shell(
                    "Forbidden",
                    user,
                    shopper.cart().values().sum(),
                    None,
                    html! {
                        h1 { "This form has expired" }
                        p { "It did not carry this session's security token, so nothing was changed. Go back, reload the page and try again." }
                        p { a.button href="/" { "Back to the shop" } }
                    },
                )
                .into_string(),
            ),
        )
            .into_response()
    })
}

/// Every page shows private data (the user and the cart): never store it, so the back
/// button after a logout cannot show it again.
fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// Renders a page for `shopper`: takes the flash and issues the CSRF token its forms need.
fn render(shopper: &mut Session<Shopper>, title: &str, body: Markup) -> Response {
    let flash = shopper.flash().clone();
    let items = shopper.cart().values().sum();
    let token = CsrfToken::issue(shopper.csrf_mut()).as_str().to_owned();
    let user = shopper.user().clone();
    let user = user.as_deref().map(|name| (name, token.as_str()));
    let markup = page_shell(title, user, items, flash.as_deref(), body);
    (no_store(), Html(markup.into_string())).into_response()
}

fn page_shell(
    title: &str,
    user: Option<(&str, &str)>,
    items: u32,
    flash: Option<&str>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Leaf & Kettle" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header.top {
                    a.brand href="/" { "Leaf " span { "&" } " Kettle" }
                    nav {
                        a href="/" { "Catalogue" }
                        a #cart-link href="/cart" { "Cart " span.badge #cart-count { (items) } }
                        @if let Some((name, token)) = user {
                            a #account-link href="/account" { "Signed in as " strong #user { (name) } }
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="_csrf" value=(token);
                                button.link #logout type="submit" { "Log out" }
                            }
                        } @else {
                            a #login-link href="/login" { "Log in" }
                        }
                    }
                }
                main {
                    @if let Some(message) = flash {
                        p.flash #flash role="status" { (message) }
                    }
                    (body)
                }
                footer { "A demo shop for typed sessions on axum. No tea is shipped." }
            }
        }
    }
}

fn price(cents: u32) -> String {
    format!("€{}.{:02}", cents / 100, cents % 100)
}

async fn catalogue(mut shopper: Session<Shopper>) -> Response {
    let token = CsrfToken::issue(shopper.csrf_mut()).as_str().to_owned();
    let body = html! {
        section.hero {
            h1 { "Loose-leaf tea and things to brew it in" }
            p { "Pick what you like; your cart waits for you across reloads." }
        }
        ul.grid {
            @for p in CATALOGUE {
                li.card id=(format!("product-{}", p.slug)) {
                    div.swatch style=(format!("background:{}", p.colour)) {}
                    h2 { (p.name) }
                    p.blurb { (p.blurb) }
                    div.buy {
                        span.price { (price(p.price)) }
                        form method="post" action="/cart/add" {
                            input type="hidden" name="_csrf" value=(token);
                            input type="hidden" name="slug" value=(p.slug);
                            button.button type="submit" { "Add to cart" }
                        }
                    }
                }
            }
        }
    };
    render(&mut shopper, "Catalogue", body)
}

#[derive(Deserialize)]
struct AddForm {
    #[serde(rename = "_csrf", default)]
    csrf: Option<String>,
    slug: String,
}

async fn add_to_cart(mut shopper: Session<Shopper>, Form(form): Form<AddForm>) -> Response {
    if let Some(refused) = csrf_refusal(&shopper, form.csrf.as_deref()) {
        return refused;
    }
    let Some(product) = product(&form.slug) else {
        return (StatusCode::UNPROCESSABLE_ENTITY, "no such product").into_response();
    };
    *shopper
        .cart_mut()
        .entry(product.slug.to_owned())
        .or_default() += 1;
    set_flash(
        &mut shopper,
        format!("Added {} to your cart.", product.name),
    );
    Redirect::to("/").into_response()
}

async fn cart(mut shopper: Session<Shopper>) -> Response {
    let token = CsrfToken::issue(shopper.csrf_mut()).as_str().to_owned();
    let lines: Vec<(&Product, u32)> = shopper
        .cart()
        .iter()
        .filter_map(|(slug, &quantity)| Some((product(slug)?, quantity)))
        .collect();
    let total: u32 = lines.iter().map(|(p, q)| p.price * q).sum();
    let body = html! {
        h1 { "Your cart" }
        @if lines.is_empty() {
            p.empty #cart-empty { "Your cart is empty. " a href="/" { "Browse the catalogue" } "." }
        } @else {
            table.cart #cart {
                thead { tr { th { "Item" } th.num { "Qty" } th.num { "Price" } } }
                tbody {
                    @for (p, quantity) in &lines {
                        tr.line data-slug=(p.slug) {
                            td { (p.name) }
                            td.num.qty { (quantity) }
                            td.num { (price(p.price * quantity)) }
                        }
                    }
                }
                tfoot { tr { th colspan="2" { "Total" } th.num #total { (price(total)) } } }
            }
            form method="post" action="/cart/clear" {
                input type="hidden" name="_csrf" value=(token);
                button.button.secondary #clear-cart type="submit" { "Empty the cart" }
            }
        }
    };
    render(&mut shopper, "Cart", body)
}

async fn clear_cart(mut shopper: Session<Shopper>, Form(form): Form<CsrfOnly>) -> Response {
    if let Some(refused) = csrf_refusal(&shopper, form.csrf.as_deref()) {
        return refused;
    }
    shopper.cart_mut().clear();
    set_flash(&mut shopper, "Your cart is empty now.".to_owned());
    Redirect::to("/cart").into_response()
}

async fn login_page(mut shopper: Session<Shopper>) -> Response {
    let token = CsrfToken::issue(shopper.csrf_mut()).as_str().to_owned();
    let body = html! {
        section.panel {
            h1 { "Log in" }
            form.stack #login-form method="post" action="/login" {
                input type="hidden" name="_csrf" value=(token);
                label { "Your name" input #name type="text" name="name" required autocomplete="username"; }
                label.check { input #remember type="checkbox" name="remember" value="1"; " Remember me for 30 days" }
                button.button #login-submit type="submit" { "Log in" }
            }
            p.hint { "No password: this is a demo of sessions, not of authentication." }
        }
    };
    render(&mut shopper, "Log in", body)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(rename = "_csrf", default)]
    csrf: Option<String>,
    name: String,
    #[serde(default)]
    remember: Option<String>,
}

async fn login(mut shopper: Session<Shopper>, Form(form): Form<LoginForm>) -> Response {
    if let Some(refused) = csrf_refusal(&shopper, form.csrf.as_deref()) {
        return refused;
    }
    let name = form.name.trim();
    if name.is_empty() || name.len() > 64 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must be 1 to 64 bytes",
        )
            .into_response();
    }
    // A new id and a new CSRF token at login defeat session fixation; the cart stays.
    shopper.regenerate();
    CsrfToken::rotate(shopper.csrf_mut());
    shopper.set_user(Some(name.to_owned()));
    let remember = form.remember.as_deref() == Some("1");
    if remember {
        shopper.set_cookie_max_age(Some(REMEMBER_ME));
    }
    set_flash(
        &mut shopper,
        if remember {
            format!("Welcome, {name}. You stay signed in on this browser for 30 days.")
        } else {
            format!("Welcome, {name}.")
        },
    );
    Redirect::to("/account").into_response()
}

async fn account(mut shopper: Session<Shopper>, index: SessionIndex) -> Response {
    let Some(name) = shopper.user().clone() else {
        return (no_store(), Redirect::to("/login")).into_response();
    };
    let remembered = shopper.cookie_max_age().is_some();
    let items: u32 = shopper.cart().values().sum();
    let token = CsrfToken::issue(shopper.csrf_mut()).as_str().to_owned();
    let sessions = match index.list(Shopper::user_index(), &name).await {
        Ok(sessions) => sessions,
        Err(error) => {
            tracing::error!(%error, "could not list the user's sessions");
            Vec::new()
        }
    };
    let others = sessions.iter().filter(|s| !s.current).count();
    let body = html! {
        section.panel {
            h1 { "Your account" }
            dl.facts {
                dt { "Name" } dd #account-name { (name) }
                dt { "Items in cart" } dd { (items) }
                dt { "Signed in" } dd #remembered {
                    @if remembered { "on this browser for 30 days (remember me)" }
                    @else { "until you close the browser" }
                }
            }
        }
        section.panel #your-sessions {
            h2 { "Your sessions" }
            table.cart #sessions {
                thead { tr { th { "Session" } th { "Signed in" } th { "Last used" } } }
                tbody {
                    @for session in &sessions {
                        tr.session data-current=(session.current) {
                            td {
                                code { (session.session) }
                                @if session.current { " " span.badge.this #this-session { "this browser" } }
                            }
                            td { (ago(session.created_at)) }
                            td { (ago(session.last_used)) }
                        }
                    }
                }
            }
            @if others > 0 {
                form method="post" action="/account/sign-out-others" {
                    input type="hidden" name="_csrf" value=(token);
                    button.button.secondary #sign-out-others type="submit" {
                        @if others == 1 { "Sign out the other session" }
                        @else { "Sign out the other " (others) " sessions" }
                    }
                }
            } @else {
                p.hint #no-other-sessions { "No other browser is signed in as you." }
            }
        }
    };
    render(&mut shopper, "Account", body)
}

/// `just now`, `5 min ago`, `3 h ago` or `2 days ago`.
fn ago(time: std::time::SystemTime) -> String {
    let seconds = time.elapsed().unwrap_or_default().as_secs();
    match seconds {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86_400 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

async fn sign_out_others(
    mut shopper: Session<Shopper>,
    index: SessionIndex,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(refused) = csrf_refusal(&shopper, form.csrf.as_deref()) {
        return refused;
    }
    let Some(name) = shopper.user().clone() else {
        return Redirect::to("/login").into_response();
    };
    let message = match index.revoke_others(Shopper::user_index(), &name).await {
        Ok(1) => "Signed out 1 other session.".to_owned(),
        Ok(ended) => format!("Signed out {ended} other sessions."),
        Err(error) => {
            tracing::error!(%error, "could not sign out the user's other sessions");
            "Could not sign out the other sessions; try again.".to_owned()
        }
    };
    set_flash(&mut shopper, message);
    Redirect::to("/account").into_response()
}

async fn logout(mut shopper: Session<Shopper>, Form(form): Form<CsrfOnly>) -> Response {
    if let Some(refused) = csrf_refusal(&shopper, form.csrf.as_deref()) {
        return refused;
    }
    shopper.destroy();
    // Written after `destroy()`: a new, empty session carries the message to the next page.
    set_flash(&mut shopper, "You are signed out.".to_owned());
    Redirect::to(&format!("/?{SIGNED_OUT}")).into_response()
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

const STYLESHEET: &str = r#"
:root { --ink: #2b2d42; --muted: #6c757d; --accent: #2a9d8f; --paper: #fbf8f3; --line: #e6dfd3; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--paper); }
header.top { display: flex; align-items: center; justify-content: space-between; padding: 14px 32px; background: #fff; border-bottom: 1px solid var(--line); }
.brand { font: 700 22px/1 Georgia, serif; color: var(--ink); text-decoration: none; }
.brand span { color: var(--accent); }
nav { display: flex; gap: 20px; align-items: center; }
nav a { color: var(--ink); text-decoration: none; }
nav a:hover { color: var(--accent); }
.badge { display: inline-block; min-width: 22px; padding: 0 7px; border-radius: 11px; background: var(--accent); color: #fff; font-size: 13px; text-align: center; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 32px 48px; }
.flash { padding: 12px 16px; border-radius: 8px; background: #e3f4f1; border: 1px solid #b5e0d9; color: #1d6b62; }
.hero h1 { font: 700 30px/1.2 Georgia, serif; margin: 8px 0 4px; }
.hero p { color: var(--muted); margin: 0 0 20px; }
.grid { list-style: none; padding: 0; margin: 0; display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 20px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 12px; overflow: hidden; display: flex; flex-direction: column; }
.swatch { height: 110px; }
.card h2 { font-size: 18px; margin: 14px 16px 4px; }
.blurb { color: var(--muted); margin: 0 16px; flex: 1; }
.buy { display: flex; justify-content: space-between; align-items: center; padding: 14px 16px; }
.price { font-weight: 700; }
.button { border: 0; border-radius: 8px; padding: 9px 16px; background: var(--accent); color: #fff; font: inherit; cursor: pointer; text-decoration: none; }
.button:hover { filter: brightness(1.08); }
.button.secondary { background: #fff; color: var(--ink); border: 1px solid var(--line); }
form.inline { display: inline; margin: 0; }
button.link { border: 0; background: none; font: inherit; color: var(--ink); cursor: pointer; padding: 0; }
button.link:hover { color: var(--accent); }
.panel { max-width: 460px; background: #fff; border: 1px solid var(--line); border-radius: 12px; padding: 24px 28px; }
.panel + .panel { margin-top: 20px; }
.badge.this { background: var(--accent); color: #fff; }
.stack { display: grid; gap: 14px; }
.stack label { display: grid; gap: 4px; }
.stack input[type=text] { padding: 9px 10px; border: 1px solid var(--line); border-radius: 8px; font: inherit; }
.stack label.check { display: flex; gap: 8px; align-items: center; }
.hint { color: var(--muted); font-size: 14px; }
table.cart { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line); border-radius: 12px; margin-bottom: 16px; }
table.cart th, table.cart td { padding: 10px 14px; border-bottom: 1px solid var(--line); text-align: left; }
table.cart .num { text-align: right; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 6px 16px; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; }
footer { text-align: center; color: var(--muted); font-size: 13px; padding: 24px; }
"#;
