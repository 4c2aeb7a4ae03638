//! A cart session for same-field concurrency tests: `/add` appends after a short pause, so
//! concurrent requests overlap between load and save.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use session_core::{Session, SessionLayer, Store};

use super::{get as get_req, send, Client};

#[derive(Session)]
pub struct Cart {
    /// Not `items`, which other tests' structs store as `Vec<String>`.
    #[session(rename = "numbers")]
    items: Vec<u32>,
}

pub fn cart_app(store: Arc<dyn Store>, lock: Option<Duration>) -> Router {
    // Some tests wrap the memory store in a store of their own, which keeps no indexes.
    let indexes = store.supports_index();
    let mut layer = SessionLayer::from_arc(store, super::key());
    if !indexes {
        layer = layer.without_indexes();
    }
    if let Some(wait) = lock {
        layer = layer.with_session_lock(wait);
    }
    Router::new()
        .route(
            "/add",
            get(|mut cart: Session<Cart>| async move {
                // Overlap with the other requests between load and save.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let next = cart.items().len() as u32;
                cart.items_mut().push(next);
                "ok"
            }),
        )
        .route(
            "/count",
            get(|cart: Session<Cart>| async move { cart.items().len().to_string() }),
        )
        .route(
            "/hold",
            get(|mut cart: Session<Cart>| async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                cart.items_mut().push(0);
                "held"
            }),
        )
        .layer(layer)
}

/// Sends `n` concurrent `/add` requests with `cookie`; returns how many items are stored.
pub async fn concurrent_appends(app: &Router, cookie: &str, n: usize) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let app = app.clone();
            let cookie = cookie.to_owned();
            tokio::spawn(async move { send(&app, get_req("/add", Some(&cookie))).await })
        })
        .collect();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    send(app, get_req("/count", Some(cookie)))
        .await
        .body
        .parse()
        .unwrap()
}

pub async fn session_with_one_item(app: &Router) -> String {
    let mut client = Client::new(app.clone());
    client.get("/add").await;
    client.cookie.clone().unwrap()
}
